//! What a `cargo mutants` pass over `src/store/partition.rs` found untested (issue 9). Each
//! test says which mutants it kills.

mod fixtures;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use commitfs::store::Store;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

/// A topic's creation time (what its directory shows as its times until it holds a message)
/// is the wall-clock time of its creation, and stays that across a reopen. Kills the mutants
/// that make `Topic::created_ms` 0, 1 or -1.
#[test]
fn a_topic_keeps_the_time_it_was_created_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = now_ms();
    let created = store
        .create_topic("t", fixtures::keyed_topic(1))
        .unwrap()
        .created_ms();
    let after = now_ms();
    assert!(
        (before..=after).contains(&created),
        "created at {created}, not within {before}..={after}"
    );
    store.close().unwrap();

    let store = open(dir.path());
    assert_eq!(store.topic("t").unwrap().created_ms(), created);
    store.close().unwrap();
}
