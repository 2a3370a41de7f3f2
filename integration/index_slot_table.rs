//! The key index's slot table in memory (issue 7: keyed appends waited for a TLB miss per
//! key in the file's 20 MB table): the newest index file's slots live in anonymous memory,
//! are written back into the file at each flush and when the file fills, and let go then.
//! These tests check what a user sees: every key found across index files and a clean
//! reopen, and memory that does not grow with the number of index files.

mod fixtures;

use commitfs::store::{Store, StoreConfig};
use fixtures::{key_matches, keyed_messages, keyed_topic, proc_status_kib, small_store_config};

/// Keys `k0`..`k{keys}`, round after round: message `n` is `k{n % keys}:{n}`.
fn line(n: usize, keys: usize) -> String {
    format!("k{}:{n}", n % keys)
}

fn append_rounds(store: &Store, from: usize, to: usize, keys: usize) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    for first in (from..to).step_by(10) {
        let lines: Vec<String> = (first..to.min(first + 10)).map(|n| line(n, keys)).collect();
        store
            .append_batch(&partition, &keyed_messages(&lines))
            .unwrap();
    }
}

/// Every key's messages, newest first, as `user.offsets.<KEY>` lists them (reversed).
fn assert_every_key_found(store: &Store, keys: usize, messages: usize) {
    let topic = store.topic("t").unwrap();
    for key in 0..keys {
        let want: Vec<(u32, u64, String)> = (0..messages)
            .rev()
            .filter(|n| n % keys == key)
            .map(|n| (0, n as u64, line(n, keys)))
            .collect();
        assert_eq!(
            key_matches(store, &topic, &format!("k{key}")),
            want,
            "key k{key}"
        );
    }
}

#[test]
fn keys_are_found_across_filled_index_files_and_after_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // 100-entry index files: the 1,000 messages fill nine and start a tenth.
    let config = StoreConfig {
        index_entries: 100,
        ..small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", keyed_topic(1)).unwrap();
    append_rounds(&store, 0, 1000, 37);
    assert_every_key_found(&store, 37, 1000);
    store.close().unwrap();
    drop(store);

    let store = Store::open(dir.path(), config).unwrap();
    assert_every_key_found(&store, 37, 1000);
    // The slots of the reopened newest file are in memory again for the next appends.
    append_rounds(&store, 1000, 1300, 37);
    assert_every_key_found(&store, 37, 1300);
    store.close().unwrap();
}

#[test]
fn a_filled_index_files_slot_table_leaves_memory() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB slot tables and 1,024-entry files: each file's keys touch most pages of its
    // table, so 20 tables kept would hold about 40 MiB.
    let config = StoreConfig {
        index_slots: 1 << 19,
        index_entries: 1024,
        ..small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    store.create_topic("t", keyed_topic(1)).unwrap();
    append_rounds(&store, 0, 1023, 1_000_000);
    let before = proc_status_kib("RssAnon") * 1024;
    append_rounds(&store, 1023, 21 * 1023, 1_000_000);
    let grown = (proc_status_kib("RssAnon") * 1024).saturating_sub(before);
    assert!(
        grown < 12 << 20,
        "anonymous memory grew by {grown} bytes over 20 filled index files"
    );
    let topic = store.topic("t").unwrap();
    for n in (0..21 * 1023).step_by(397) {
        assert_eq!(
            key_matches(&store, &topic, &format!("k{n}")),
            [(0, n as u64, line(n, 1_000_000))]
        );
    }
    store.close().unwrap();
}
