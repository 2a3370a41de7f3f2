//! What a `cargo mutants` pass over `src/store/consumers.rs` and `maintenance.rs`
//! found untested (issue 9). Each test says which mutants it kills. Every test here holds a
//! `FailScenario` (some configure failpoints).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitfs::store::{Store, StoreConfig, StoreError};
use fail::FailScenario;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

/// A positions file that exists but cannot be read (here: a directory in its place) is an
/// error for its groups, not "no position": a consumer would otherwise start again from the
/// partition's start. Kills the mutant that makes every read error in `consumers::read` mean
/// "no file" (its `NotFound` match guard replaced with `true`).
#[test]
fn a_positions_file_that_cannot_be_read_is_an_error_not_no_position() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.close().unwrap();
    let queue_dir = dir.path().join("queues/1/0");
    assert!(
        queue_dir.is_dir(),
        "the partition's consume-queue directory"
    );
    std::fs::create_dir(queue_dir.join("consumers")).unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let refused = partition.consumer_position("g").unwrap_err();
    assert!(matches!(refused, StoreError::Io { .. }), "{refused}");
    assert!(refused.to_string().contains("consumers"), "{refused}");
    partition.consumer_positions().unwrap_err();
    store.close().unwrap();
}

/// The end offset the checkpoint in `dir` records for the first partition it names (README
/// "On-disk format": 32-byte marks after a 36-byte head; a mark's end offset at bytes 8..16).
fn first_checkpoint_mark_end(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("checkpoint")).ok()?;
    let count = u32::from_le_bytes(bytes.get(32..36)?.try_into().unwrap());
    if count == 0 {
        return None;
    }
    Some(u64::from_le_bytes(bytes.get(44..52)?.try_into().unwrap()))
}

/// The background thread writes a checkpoint every `checkpoint_interval_ms` without being
/// asked (README "Recovery"): a store left open records what was appended. Kills the
/// mutants in `maintenance::run` that never let a checkpoint fall due (`>=` to `<`, and the
/// deleted `!` before `fenced`).
#[test]
fn the_background_thread_writes_checkpoints_on_its_schedule() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        checkpoint_interval_ms: 20,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    fixtures::append_lines(&store, &partition, 0, 30);
    let deadline = Instant::now() + Duration::from_secs(20);
    while first_checkpoint_mark_end(dir.path()) != Some(30) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(first_checkpoint_mark_end(dir.path()), Some(30));
    store.close().unwrap();
}
