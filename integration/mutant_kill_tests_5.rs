//! What a `cargo mutants` pass over `src/store/index.rs` and `src/store/append.rs` found
//! untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig};

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open store")
}

/// Message `number` of the keyed stores here: five keys, each used again and again.
fn message(number: u64) -> String {
    format!("key-{}:message {number}\n", number % 5)
}

/// A store with topic "t" (one partition) holding `count` keyed messages, closed cleanly.
fn keyed_store(dir: &Path, count: u64) {
    let store = open(dir);
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    for number in 0..count {
        let payload = message(number);
        store
            .append(&partition, payload.as_bytes(), payload.find(':'))
            .unwrap();
    }
    store.close().unwrap();
}

/// Asserts that every key of a [`keyed_store`] of `count` messages finds all its messages,
/// newest first.
#[track_caller]
fn assert_every_key_found(store: &Store, count: u64) {
    let topic = store.topic("t").unwrap();
    for key in 0..5 {
        let expected: Vec<(u32, u64, String)> = (0..count)
            .rev()
            .filter(|number| number % 5 == key)
            .map(|number| (0, number, message(number)))
            .collect();
        let found = fixtures::key_matches(store, &topic, &format!("key-{key}"));
        assert_eq!(found, expected, "messages of key-{key}");
    }
}

/// The key-index files of the store at `dir`.
fn index_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the store has no key-index file");
    files
}

/// Kills `||` -> `&&` in `IndexFile::open`'s header check, which took a file whose version
/// field differs as one of this version: an index file of another format (here a version
/// 3 whose slot table is not where this version's is) is rebuilt from the log at the next
/// open, so every key still finds every one of its messages.
#[test]
fn an_index_file_of_another_version_is_rebuilt_and_every_key_is_found() {
    let dir = tempfile::tempdir().unwrap();
    keyed_store(dir.path(), 40);
    let slots = config().index_slots as usize;
    for path in index_files(dir.path()) {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        bytes[64..64 + slots * 4].fill(0);
        std::fs::write(&path, bytes).unwrap();
    }
    let store = open(dir.path());
    assert_every_key_found(&store, 40);
    store.close().unwrap();
}
