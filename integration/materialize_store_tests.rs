//! Copying sealed segments to files of their own, in-process (issue 8): a copy that would take
//! the store past `max_disk_bytes` is not made, since the ceiling would then delete messages to
//! make room for a second copy of others.

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{NewMessage, Store, StoreConfig};

/// Ten 1,000-byte messages per segment.
fn config(max_disk_bytes: Option<u64>) -> StoreConfig {
    StoreConfig {
        max_disk_bytes,
        ..fixtures::small_store_config()
    }
}

/// A store holding three sealed segments of 10,000 bytes in partition 0 of topic `t`, copied
/// to no file yet; returns what it occupies.
fn three_sealed_segments(dir: &Path) -> u64 {
    let store = Store::open(dir, config(None)).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let payload = vec![b'x'; 1000];
    for _ in 0..30 {
        let message = NewMessage {
            payload: &payload,
            key_len: None,
        };
        store.append_batch(&partition, &[message]).unwrap();
    }
    let usage = store.disk_usage();
    store.close().unwrap();
    usage
}

fn reopen(dir: &Path, max_disk_bytes: Option<u64>) -> Arc<Store> {
    Store::open(dir, config(max_disk_bytes)).unwrap()
}

#[test]
fn a_copy_that_would_pass_the_disk_ceiling_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let usage = three_sealed_segments(dir.path());
    // Room for one copy (and a consume-queue file made meanwhile), not two.
    let store = reopen(dir.path(), Some(usage + 15_000));
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), 0, "messages were dropped");
    let copied: Vec<bool> = partition
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.materialized)
        .collect();
    assert_eq!(copied, [true, false, false, false]);
    store.close().unwrap();
    drop(store);

    let store = reopen(dir.path(), None);
    assert_eq!(store.materialize_sealed().unwrap(), 2);
    store.close().unwrap();
}
