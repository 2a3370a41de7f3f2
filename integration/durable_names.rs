//! A checkpoint makes the names of the consume-queue and key-index files it counts on durable
//! (one sync of the file system): a power loss after it finds them, and recovery starts from
//! the checkpoint instead of rebuilding every queue and the index from the whole log. Uses the
//! power-loss record of the `failpoints` build (`commitfs::store::faults`).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::Path;

use commitfs::store::{Store, StoreError};
use fail::FailScenario;
use fixtures::power_loss::{crash_copy, PowerLoss};

/// Two partitions of 250 keyed messages (three queue files each, with 100-message segments)
/// and a checkpoint; left open, as a power loss finds it.
fn store_with_a_checkpoint(dir: &Path) -> std::sync::Arc<Store> {
    let store = Store::open(dir, fixtures::recovery_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    for index in 0..2 {
        let partition = topic.partition(index).unwrap();
        let lines: Vec<String> = (0..250).map(|n| format!("k{n}:{index}/{n}\n")).collect();
        store
            .append_batch(&partition, &fixtures::keyed_messages(&lines))
            .unwrap();
    }
    store
}

fn assert_holds_every_message(store: &Store) {
    let topic = store.topic("t").unwrap();
    for index in 0..2 {
        let partition = topic.partition(index).unwrap();
        assert_eq!(partition.end_offset(), 250);
        for n in [0, 99, 100, 249] {
            let message = store.read_message(&partition, n).unwrap();
            assert_eq!(message, format!("k{n}:{index}/{n}\n").as_bytes());
        }
    }
    let found = fixtures::key_matches(store, &topic, "k249");
    assert_eq!(found.len(), 2, "{found:?}");
}

/// Copies `data` to `copy` as a power loss now would leave it (every name never synced
/// lost), stops `store` as the power loss does, and opens the copy: every message is there,
/// and nothing was rebuilt from the log.
fn assert_a_power_loss_now_needs_no_rebuild(store: &Store, data: &Path, copy: &Path) {
    crash_copy(data, copy, PowerLoss::NAMES_LOST);
    store.halt_without_cleanup();
    let logs = fixtures::logs_of(|| {
        let store = Store::open(copy, fixtures::recovery_store_config()).unwrap();
        assert_holds_every_message(&store);
        store.close().unwrap();
    });
    assert!(!logs.contains("rebuilding"), "{logs}");
}

#[test]
fn after_a_checkpoint_a_power_loss_keeps_the_queue_and_index_files() {
    let _scenario = FailScenario::setup();
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let store = store_with_a_checkpoint(&data);
    store.checkpoint().unwrap();
    assert_a_power_loss_now_needs_no_rebuild(&store, &data, &copy);
}

/// A checkpoint whose sync of the file system fails fails as a whole: the checkpoint on disk
/// stays the older one, and the names are synced by the next checkpoint that succeeds.
#[test]
fn a_checkpoint_whose_sync_of_the_names_fails_is_not_written() {
    let _scenario = FailScenario::setup();
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let store = store_with_a_checkpoint(&data);
    let older = std::fs::read(data.join("checkpoint")).ok();
    fail::cfg("meta::sync_file_system", "1*return(eio)").unwrap();
    let failed = store.checkpoint();
    assert!(matches!(failed, Err(StoreError::Io { .. })), "{failed:?}");
    assert_eq!(std::fs::read(data.join("checkpoint")).ok(), older);
    store.checkpoint().unwrap();
    fail::remove("meta::sync_file_system");
    assert_a_power_loss_now_needs_no_rebuild(&store, &data, &copy);
}
