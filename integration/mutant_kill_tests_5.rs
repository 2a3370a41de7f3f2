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
    keyed_store_with(dir, config(), count);
}

/// [`keyed_store`] with `config`.
fn keyed_store_with(dir: &Path, config: StoreConfig, count: u64) {
    let store = Store::open(dir, config).unwrap();
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

/// Kills `||` -> `&&` in `IndexFile::open`'s size check, which let a header whose slot
/// count reads 0 through (a lookup then divides by it): with index files larger than what
/// they allocate at first (100,000 entries), the file is not longer than such a header says,
/// so only that check refuses it; the index is rebuilt from the log and every key is found.
#[test]
fn an_index_file_whose_header_counts_no_slots_is_rebuilt_and_every_key_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_entries: 100_000,
        ..config()
    };
    keyed_store_with(dir.path(), config.clone(), 40);
    for path in index_files(dir.path()) {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
    }
    let store = Store::open(dir.path(), config).unwrap();
    assert_every_key_found(&store, 40);
    store.close().unwrap();
}

/// Kills `<` -> `<=` and `<` -> `==` in `IndexFile::open`'s size check, which refused the
/// files of the smallest index a store may have (`index_entries = 2`, one entry a file) as
/// damaged: a clean reopen keeps those files (no rebuild of the whole index) and finds every
/// key.
#[test]
fn a_clean_reopen_keeps_the_files_of_the_smallest_index() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_entries: 2,
        ..config()
    };
    keyed_store_with(dir.path(), config.clone(), 10);
    // Opening a file re-establishes its allocation (which sets its modification time), so
    // only its inode tells a kept file from one made again.
    let inodes = |dir: &Path| -> Vec<u64> {
        use std::os::unix::fs::MetadataExt;
        index_files(dir)
            .iter()
            .map(|path| std::fs::metadata(path).unwrap().ino())
            .collect()
    };
    let before = inodes(dir.path());
    assert_eq!(before.len(), 10, "one index file a keyed message");
    let store = Store::open(dir.path(), config).unwrap();
    assert_eq!(
        inodes(dir.path()),
        before,
        "the index files were made again"
    );
    assert_every_key_found(&store, 10);
    store.close().unwrap();
}

/// A bug the survivor `<` -> `<=` in `IndexFile::open`'s slot-table check led to: an older
/// index file cut back (damage: room is allocated before any entry goes in, so a crash never
/// shortens one) was opened with the entries that still fit, and the lost ones were never
/// rebuilt, so key lookups silently missed stored messages. It is now refused as damaged
/// and the index rebuilt from the log: every key is found.
#[test]
fn an_older_index_file_cut_short_is_rebuilt_and_every_key_is_found() {
    for kept_entries in [0u64, 3] {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            index_entries: 10,
            ..config()
        };
        keyed_store_with(dir.path(), config.clone(), 40);
        let files = index_files(dir.path());
        assert!(files.len() > 2, "{} index files", files.len());
        let slot_table_end = 64 + u64::from(config.index_slots) * 4;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&files[0])
            .unwrap();
        file.set_len(slot_table_end + kept_entries * 24).unwrap();
        let store = Store::open(dir.path(), config).unwrap();
        assert_every_key_found(&store, 40);
        store.close().unwrap();
    }
}

/// Kills `==` -> `!=` in `Staged::plan`'s choice of bound, which held a batch's first
/// message to the 2 MiB batch limit: a message over 2 MiB that `max_message_bytes` allows
/// was refused. It starts a batch of its own and reads back, as do the messages around it.
#[test]
fn a_message_larger_than_the_batch_limit_is_stored_when_max_message_bytes_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 8 << 20,
        max_message_bytes: 3 << 20,
        ..config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let mut large = vec![b'x'; (5 << 20) / 2];
    large[..6].copy_from_slice(b"large:");
    let lines: Vec<&[u8]> = vec![b"a:before\n", &large, b"b:after\n"];
    store
        .append_batch(&partition, &fixtures::keyed_messages(&lines[..1]))
        .unwrap();
    store
        .append_batch(&partition, &fixtures::keyed_messages(&lines[1..]))
        .unwrap();
    for (offset, line) in lines.iter().enumerate() {
        let read = store.read_message(&partition, offset as u64).unwrap();
        assert!(read == *line, "message {offset} reads back other bytes");
    }
    store.close().unwrap();
}

/// Kills `+` -> `*` in `IndexFile::reserve`, which reserved one entry too few in a new index
/// file: with index files of more entries than they allocate at first (65,536 with the null
/// entry), one append of as many keyed messages as that first allocation holds, and then more,
/// stores them all and every key finds its messages.
#[test]
fn appends_past_an_index_files_first_allocation_keep_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 4 << 20,
        segment_messages: 100_000,
        index_entries: 200_000,
        ..config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let lines: Vec<String> = (0..70_000).map(|n| format!("k{n}:{n}\n")).collect();
    for batch in [&lines[..65_536], &lines[65_536..]] {
        store
            .append_batch(&partition, &fixtures::keyed_messages(batch))
            .unwrap();
    }
    let topic = store.topic("t").unwrap();
    for n in (0..70_000)
        .step_by(997)
        .chain([65_534, 65_535, 65_536, 69_999])
    {
        let found = fixtures::key_matches(&store, &topic, &format!("k{n}"));
        assert_eq!(found, vec![(0, n as u64, lines[n].clone())], "key k{n}");
    }
    store.close().unwrap();
}

/// Kills `+=` -> `*=` in `Staged::plan`'s running position, which lost where the previous
/// partition's batches ended in an append to several partitions: the next partition's first
/// batch was cut for a whole file, did not fit after them and went to the next file, leaving
/// the rest of this one empty. 120 KB of messages appended at once fill two 64 KiB
/// commit-log files, not three.
#[test]
fn an_append_to_several_partitions_fills_each_commit_log_file_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 2000,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(2)).unwrap();
    let line = |n: usize| format!("{n:099}\n");
    let first: Vec<String> = (0..100).map(line).collect();
    let second: Vec<String> = (100..1200).map(line).collect();
    let payload_bytes: usize = first.iter().chain(&second).map(String::len).sum();
    assert!(payload_bytes < 2 * config.commit_log_file_bytes as usize * 19 / 20);
    let batches = [
        (topic.partition(0).unwrap(), first.clone()),
        (topic.partition(1).unwrap(), second.clone()),
    ];
    fixtures::append_to_partitions(&store, &batches).unwrap();
    store.sync().unwrap();
    // The store makes the next file ahead of need, empty: count the files holding records.
    let files_with_records = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .filter(|bytes| bytes.iter().any(|&b| b != 0))
        .count();
    assert_eq!(
        files_with_records, 2,
        "commit-log files holding {payload_bytes} bytes of messages"
    );
    let partition = topic.partition(1).unwrap();
    for (offset, line) in second.iter().enumerate().step_by(99) {
        let read = store.read_message(&partition, offset as u64).unwrap();
        assert_eq!(read, line.as_bytes(), "message {offset} of partition 1");
    }
    store.close().unwrap();
}

/// Kills `+` -> `*` in `KeyIndex::start_file`'s naming, which gave the second new file of one
/// append the first one's name: one append of more keyed messages than two index files hold
/// (1,000 entries each here) is stored and every key finds its message.
#[test]
fn one_append_filling_several_index_files_keeps_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let lines: Vec<String> = (0..2_500).map(|n| format!("k{n}:{n}\n")).collect();
    store
        .append_batch(&partition, &fixtures::keyed_messages(&lines))
        .unwrap();
    assert!(index_files(dir.path()).len() >= 3);
    let topic = store.topic("t").unwrap();
    for (n, line) in lines.iter().enumerate().step_by(7) {
        let found = fixtures::key_matches(&store, &topic, &format!("k{n}"));
        assert_eq!(found, vec![(0, n as u64, line.clone())], "key k{n}");
    }
    store.close().unwrap();
}
