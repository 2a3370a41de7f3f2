//! What an in-order `cargo mutants` pass over `src/store/index.rs` lines 1–398 found
//! untested (issue 9): how an index file takes disk blocks for its entries (a chunk of
//! 65,536 entries at a time, the next one once half of the last is used) and a lookup
//! through a damaged slot. Each test says which mutants it kills.

#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::Path;

use commitfs::store::{Partition, Store, StoreConfig, StoreError, Topic};
use fail::FailScenario;

/// Entries an index file allocates at a time (`ENTRY_CHUNK` in `index.rs`).
const CHUNK: u64 = 65_536;
const ENTRY_BYTES: u64 = 24;
const HEADER_BYTES: u64 = 64;
const SLOTS: u64 = 1024;
const KEYS: u64 = 1000;

/// One index file of a million entries (none of these tests fills it), big commit-log files
/// and segments so that a few hundred thousand messages stay a handful of files.
fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 64 << 20,
        segment_messages: 1 << 20,
        index_slots: SLOTS as u32,
        index_entries: 1_000_000,
        ..fixtures::small_store_config()
    }
}

fn message(number: u64) -> String {
    format!("k{}:message {number}\n", number % KEYS)
}

/// Appends messages `from..to` in one batch.
fn append(store: &Store, partition: &Partition, from: u64, to: u64) -> Result<(), StoreError> {
    let lines: Vec<String> = (from..to).map(message).collect();
    store
        .append_batch(partition, &fixtures::keyed_messages(&lines))
        .map(|_| ())
}

/// Appends messages `from..to` in batches of 1,000 (the last one shorter).
fn append_in_batches(store: &Store, partition: &Partition, from: u64, to: u64) {
    for start in (from..to).step_by(1000) {
        append(store, partition, start, (start + 1000).min(to))
            .unwrap_or_else(|error| panic!("appending messages from {start}: {error}"));
    }
}

/// Asserts that a sample of the keys finds exactly its messages among the first `count`,
/// newest first.
#[track_caller]
fn assert_keys_found(store: &Store, topic: &Topic, count: u64) {
    for key in [0, 1, 499, 998, 999, (count - 1) % KEYS] {
        let expected: Vec<(u32, u64, String)> = (0..count)
            .rev()
            .filter(|number| number % KEYS == key)
            .map(|number| (0, number, message(number)))
            .collect();
        let found = fixtures::key_matches(store, topic, &format!("k{key}"));
        assert_eq!(found, expected, "messages of k{key}");
    }
}

/// Bytes allocated on disk for the key index, as `du` counts them.
fn index_blocks(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|entry| {
            std::os::unix::fs::MetadataExt::blocks(&entry.unwrap().metadata().unwrap()) * 512
        })
        .sum()
}

/// Kills, in `IndexFile::reserve`: `entry_end > had` as `>=`, `==` or `<` (an allocation
/// asked for although the entries fit, failing the append on a full disk, or none asked
/// for when they do not), the chunk's size (`ENTRY_CHUNK * ENTRY_BYTES` as `+` or `/`), the
/// arithmetic of `entry_end` (`+` as `-` or `*`, twice) and `had + chunk` as `had * chunk`;
/// in `IndexFile::create`, the size of the first allocation (`+` as `*`, `*` as `+` or `/`).
///
/// On a full disk keyed messages go on while their entries fit the blocks the index file
/// has (the first chunk, and the next one allocated once half of the first was used); the
/// first that does not fit is refused as a full disk with nothing stored, and once there
/// is room again it goes in, and a batch of more entries than a chunk takes what it needs
/// and a chunk more, never the file's whole capacity.
#[test]
fn on_a_full_disk_keys_fill_the_index_blocks_allocated_ahead_and_the_next_is_refused_whole() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();

    // Entry 0 is the file's null entry: entry n is message n - 1. Past entry 32,768 less
    // than half of the first chunk is left, so the second chunk is allocated ahead.
    append_in_batches(&store, &partition, 0, 40_000);
    let allocated = 2 * CHUNK;

    fail::cfg("mapped::allocate", "return(enospc@/index/)").unwrap();
    append_in_batches(&store, &partition, 40_000, allocated - 1);
    let refused = append(&store, &partition, allocated - 1, allocated);
    assert!(
        matches!(refused, Err(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!(
        partition.end_offset(),
        allocated - 1,
        "the refused message is not stored"
    );
    assert_keys_found(&store, &topic, allocated - 1);

    fail::remove("mapped::allocate");
    append(&store, &partition, allocated - 1, allocated).unwrap();
    let count = allocated + 70_000;
    append(&store, &partition, allocated, count).unwrap();
    store.checkpoint().unwrap();
    let entries_at = HEADER_BYTES + SLOTS * 4;
    let most = entries_at + (count + 2 * CHUNK) * ENTRY_BYTES;
    let blocks = index_blocks(dir.path());
    assert!(
        blocks <= most,
        "{count} key entries take {blocks} bytes of disk, more than their own and two chunks' ({most})"
    );
    assert_keys_found(&store, &topic, count);
    store.close().unwrap();
}

/// The index file of [`config`] but 16 entries a file: a few hundred keyed messages make
/// many full files.
fn small_files_config() -> StoreConfig {
    StoreConfig {
        index_slots: 4,
        index_entries: 16,
        ..fixtures::small_store_config()
    }
}

/// Kills `number < count` as `<=` in `IndexFile::walk`: a slot that names the entry at its
/// file's count (damage; no insert stores one) made a lookup read past the file's entries,
/// beyond its allocated blocks in a full file, and panic. Now such a file's chains end
/// there: lookups answer only messages of the key, and `commitfs check` reports the slots.
#[test]
fn a_slot_naming_the_entry_past_its_files_last_makes_no_lookup_read_past_the_file() {
    // Failpoints are global: without this, the other test's full index disk reaches this
    // one's appends when the two run at once.
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = small_files_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let lines: Vec<String> = (0..100)
        .map(|n| format!("k{}:message {n}\n", n % 3))
        .collect();
    for line in &lines {
        store
            .append_batch(&partition, &fixtures::keyed_messages(&[line]))
            .unwrap();
    }
    store.close().unwrap();

    // The oldest index file is full: 16 entries, 16 allocated. Every slot names entry 16.
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 2, "{files:?}");
    let oldest = &files[0];
    let mut bytes = std::fs::read(oldest).unwrap();
    assert_eq!(
        bytes[16..20],
        16u32.to_le_bytes(),
        "the oldest file is full"
    );
    for slot in 0..4 {
        let at = HEADER_BYTES as usize + slot * 4;
        bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    }
    std::fs::write(oldest, &bytes).unwrap();

    let report =
        commitfs::store::check::check(dir.path(), &commitfs::store::check::CheckOptions::default())
            .unwrap();
    assert!(report.damaged(), "{:?}", report.findings);
    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.topic("t").unwrap();
    for key in 0..3 {
        let found = fixtures::key_matches(&store, &topic, &format!("k{key}"));
        assert!(!found.is_empty(), "k{key} found nothing");
        for (partition, offset, payload) in found {
            assert_eq!(
                (partition, payload.as_str()),
                (0, lines[offset as usize].as_str())
            );
            assert_eq!(offset % 3, key, "k{key} answered message {offset}");
        }
    }
    store.close().unwrap();
}
