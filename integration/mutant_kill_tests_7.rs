//! What a `cargo mutants` pass over `src/store/consumers.rs` and `maintenance.rs`
//! found untested (issue 9). Each test says which mutants it kills. Every test here holds a
//! `FailScenario` (some configure failpoints).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitfs::store::{Store, StoreConfig, StoreError, TopicSettings};
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

/// A store closed while something still holds it (a reader's handle, say) writes nothing
/// more: the next process to open the directory owns it. Here the next one appends and
/// closes, and the first one's background thread, had it kept its schedule, would write a
/// checkpoint of its own older state over the newer one. Kills `maintenance::Handle::stop`
/// replaced with `()`.
#[test]
fn a_closed_store_that_is_still_held_leaves_the_directory_to_the_next_one() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        checkpoint_interval_ms: 10,
        retention_check_interval_ms: 10,
        ..fixtures::small_store_config()
    };
    let first = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&first, "t", fixtures::keyed_topic(1));
    fixtures::append_lines(&first, &partition, 0, 10);
    first.close().unwrap();

    let second = Store::open(dir.path(), config).unwrap();
    let partition = second.topic("t").unwrap().partition(0).unwrap();
    fixtures::append_lines(&second, &partition, 10, 20);
    second.close().unwrap();
    drop((partition, second));
    // Many of the first store's checkpoint intervals.
    std::thread::sleep(Duration::from_millis(300));

    let third = open(dir.path());
    let partition = third.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 20);
    fixtures::assert_reads(&third, &partition, 0, 20);
    drop(first);
    third.close().unwrap();
}

/// A fenced store (a panic in its write path) keeps its state for the recovery of the next
/// open: its background thread enforces no retention, though segments fall due; the same
/// store reopened does. Kills `&&` replaced with `||` in `maintenance::run`'s retention
/// condition.
#[test]
fn a_fenced_store_enforces_no_retention_until_it_is_reopened() {
    let _scenario = FailScenario::setup();
    // The store is fenced once the panic unwinds, after the panic hook printed its message
    // (and, under RUST_BACKTRACE, resolved a backtrace: seconds on a busy machine). The
    // messages must not fall due before that.
    const RETENTION: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        retention_check_interval_ms: 10,
        ..fixtures::small_store_config()
    };
    let settings = TopicSettings {
        retention_ms: Some(RETENTION.as_millis() as u64),
        ..fixtures::keyed_topic(1)
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", settings);
    // Two sealed segments; the interrupted append goes to the active one.
    fixtures::append_lines(&store, &partition, 0, 25);
    let written = Instant::now();
    fail::cfg("append::after-log-publish", "panic").unwrap();
    let interrupted = catch_unwind(AssertUnwindSafe(|| {
        store.append(&partition, b"interrupted\n", None)
    }));
    fail::remove("append::after-log-publish");
    assert!(interrupted.is_err(), "the failpoint panicked the append");
    assert!(
        written.elapsed() < RETENTION,
        "the panic took {:?}: the segments fell due before the fence",
        written.elapsed()
    );
    // The sealed segments' messages fall due, and the background thread looks at them a
    // hundred times more.
    std::thread::sleep(RETENTION + Duration::from_secs(1) - written.elapsed());
    assert_eq!(partition.start_offset(), 0);
    drop((partition, store));

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while partition.start_offset() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(partition.start_offset() > 0, "retention after the reopen");
}
