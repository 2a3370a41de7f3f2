//! Key-index entries go into the index files on a thread of their own, off the appending
//! thread (issue 7): an append hands its entries over once the log has published its
//! messages. These tests hold that thread back (failpoint `index::thread-held-back`), as a
//! busy machine might, and check what a user relies on: a key is found the moment its append
//! returns, a checkpoint counts every key before it, and a crash loses no key. Every test
//! holds `FailScenario` (failpoints are global).
#![cfg(feature = "failpoints")]

mod fixtures;

use commitfs::store::check::{check, CheckOptions};
use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Partition, Store, TopicSettings};

/// `count` keyed lines `key<N % keys>:line <N>`, N from `from`.
fn keyed_lines(from: u64, count: u64, keys: u64) -> Vec<String> {
    (from..from + count)
        .map(|n| format!("key{}:line {n}\n", n % keys))
        .collect()
}

/// A store in `dir` with topic `t` of `settings` (one partition), the key-index thread held
/// back before any entry is handed over: it never inserts while a test's append hands its
/// entries over.
fn held_back(dir: &Path, settings: TopicSettings) -> (Arc<Store>, Arc<Partition>) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", settings);
    fail::cfg("index::thread-held-back", "return").unwrap();
    (store, partition)
}

fn append_keyed<S: AsRef<[u8]>>(store: &Store, partition: &Partition, lines: &[S]) {
    store
        .append_batch(partition, &fixtures::keyed_messages(lines))
        .unwrap();
}

/// Offsets of the messages with `key` in partition 0 of `topic`, newest first.
fn offsets_of(store: &Store, topic: &str, key: &str) -> Vec<u64> {
    let topic = store.topic(topic).unwrap();
    fixtures::key_matches(store, &topic, key)
        .into_iter()
        .map(|(_, offset, _)| offset)
        .collect()
}

/// Kills `hand_over`'s call in `append::commit` and its `has_waiting` store (the lookup
/// would not insert the waiting entries first, and find nothing).
#[test]
fn a_key_is_found_the_moment_its_append_returns_while_the_index_thread_is_held_back() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = held_back(dir.path(), fixtures::keyed_topic(1));
    let lines = keyed_lines(0, 6, 3);
    append_keyed(&store, &partition, &lines);
    assert_eq!(offsets_of(&store, "t", "key1"), [4, 1]);
    store.append(&partition, b"key1:again\n", Some(4)).unwrap();
    assert_eq!(offsets_of(&store, "t", "key1"), [6, 4, 1]);
    assert_eq!(offsets_of(&store, "t", "key2"), [5, 2]);
    fail::remove("index::thread-held-back");
    store.close().unwrap();
}

/// Kills `KeyIndex::reserve` reserving without inserting the waiting entries first: it
/// would count the files' room without them, and their inserts would run out of room
/// (`small_store_config`'s index files hold 1,000 entries; 3,000 keys go in here).
#[test]
fn keys_held_back_from_the_index_thread_across_full_index_files_are_all_found() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = held_back(dir.path(), fixtures::keyed_topic(1));
    for batch in 0..30 {
        let lines = keyed_lines(batch * 100, 100, 1000);
        append_keyed(&store, &partition, &lines);
    }
    for key in [0, 1, 499, 999] {
        let expected: Vec<u64> = (0..3).rev().map(|round| round * 1000 + key).collect();
        assert_eq!(offsets_of(&store, "t", &format!("key{key}")), expected);
    }
    let index_files = std::fs::read_dir(dir.path().join("index")).unwrap().count();
    assert!(index_files >= 3, "{index_files} index files");
    fail::remove("index::thread-held-back");
    store.close().unwrap();
}

/// Kills `KeyIndex::mark` marking without inserting the waiting entries first: the
/// checkpoint would count the keys' messages as written but not their index entries, and
/// the recovery after a crash, which rebuilds entries only after the checkpoint, would
/// never find them.
#[test]
fn a_checkpoint_while_the_index_thread_is_held_back_counts_every_key() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = held_back(dir.path(), fixtures::keyed_topic(1));
    let lines = keyed_lines(0, 50, 10);
    append_keyed(&store, &partition, &lines);
    store.checkpoint().unwrap();
    store.halt_without_cleanup();
    drop(store);
    fail::remove("index::thread-held-back");
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert_eq!(offsets_of(&store, "t", "key7"), [47, 37, 27, 17, 7]);
    store.close().unwrap();
}

/// Entries still waiting for the index thread when the process dies are lost with it; the
/// next open rebuilds them from the log. Kills `hand_over`'s call in recovery (the rebuilt
/// entries would never go in).
#[test]
fn keys_waiting_for_the_index_thread_at_a_crash_are_found_after_recovery() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = held_back(dir.path(), fixtures::keyed_topic(1));
    let lines = keyed_lines(0, 50, 10);
    append_keyed(&store, &partition, &lines);
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert_eq!(offsets_of(&store, "t", "key3"), [43, 33, 23, 13, 3]);
    fail::remove("index::thread-held-back");
    store.close().unwrap();
}

/// Keys are hashed four at a time (`format::key_hashes`); lines without a key among them get
/// no index entry. `commitfs check` counts the entries: one per keyed line of the nine,
/// none damaged.
/// Kills `Staged::hash_keys` giving a keyless line in a group of four the hash of an empty
/// key.
#[test]
fn a_batch_mixing_keyed_and_keyless_lines_indexes_only_the_keyed_ones() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let lines = [
        "a:1\n",
        "no key\n",
        "b:2\n",
        "c:3\n",
        "d:4\n",
        "e:5\n",
        "also none\n",
        "f:6\n",
        "g:7\n",
    ];
    append_keyed(&store, &partition, &lines);
    assert_eq!(offsets_of(&store, "t", "d"), [4]);
    assert_eq!(offsets_of(&store, "t", "g"), [8]);
    store.close().unwrap();
    drop(store);
    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    assert!(!report.damaged(), "{:?}", report.findings);
    assert_eq!((report.records, report.index_entries), (9, 7));
}

/// Retention removes index files whose every entry points at removed data, but not before
/// the entries still waiting for the thread went in: an append whose entries straddle a
/// file of old entries and a new file must not lose the half that goes to the old file.
/// Retention writes a checkpoint (which inserts what waits, `KeyIndex::mark`) before it
/// removes index files, and `remove_before` inserts what waits too: this fails with both
/// taken out (each alone is covered by the other).
#[test]
fn retention_keeps_an_old_index_file_that_keys_waiting_for_the_thread_go_to() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let settings = TopicSettings {
        retention_bytes: Some(2000),
        ..fixtures::keyed_topic(1)
    };
    let (store, partition) = held_back(dir.path(), settings);
    // 990 of the first index file's 1,000 entries, then 3,000 keyless lines: the next
    // commit-log files.
    for batch in 0..10 {
        let lines = keyed_lines(batch * 99, 99, 990);
        append_keyed(&store, &partition, &lines);
    }
    let filler: Vec<String> = (0..3000).map(|n| format!("filler {n}\n")).collect();
    for lines in filler.chunks(500) {
        store
            .append_batch(&partition, &fixtures::unkeyed_messages(lines))
            .unwrap();
    }
    let new: Vec<String> = (0..20).map(|n| format!("new{n}:kept\n")).collect();
    let first_new = store
        .append_batch(&partition, &fixtures::keyed_messages(&new))
        .unwrap()
        .first_offset;
    store.enforce_retention().unwrap();
    assert!(
        partition.start_offset() > 990,
        "retention removed the old keys"
    );
    assert!(offsets_of(&store, "t", "key5").is_empty());
    for n in 0..20 {
        assert_eq!(
            offsets_of(&store, "t", &format!("new{n}")),
            [first_new + n],
            "new{n}"
        );
    }
    fail::remove("index::thread-held-back");
    store.close().unwrap();
}
