//! Behaviour that `cargo mutants` over `src/store/` found untested (issue 9): each test here
//! fails with the mutant it is named after in the report, in-process, without a mount.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig, StoreError, TopicSettings};

mod fixtures;

fn small_config() -> StoreConfig {
    fixtures::small_store_config()
}

fn settings(partitions: u32) -> TopicSettings {
    fixtures::keyed_topic(partitions)
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, small_config()).expect("open store")
}

fn message(offset: u64) -> Vec<u8> {
    format!("key-{}:message {offset}\n", offset % 5).into_bytes()
}

/// A store with topic "t" (one partition) holding `count` keyed messages, closed cleanly.
fn filled_store(dir: &Path, count: u64) {
    let store = open(dir);
    let topic = store.create_topic("t", settings(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for offset in 0..count {
        let payload = message(offset);
        let key_len = payload.iter().position(|&b| b == b':');
        store.append(&partition, &payload, key_len).unwrap();
    }
    store.close().unwrap();
}

fn assert_messages(store: &Store, count: u64) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), count);
    for offset in 0..count {
        assert_eq!(
            store.read_message(&partition, offset).unwrap(),
            message(offset)
        );
    }
}

/// A checkpoint file cut short (a damaged disk, a copy that stopped) is ignored, never a
/// panic: the store rebuilds from the log and keeps every message. Shorter than its 8-byte
/// magic it must not even be looked at (mutant: `||` → `&&` in `Checkpoint::decode`).
#[test]
fn a_checkpoint_cut_short_is_ignored_and_every_message_stays() {
    for kept_bytes in [0, 3, 7, 8, 20, 39] {
        let dir = tempfile::tempdir().unwrap();
        filled_store(dir.path(), 25);
        let checkpoint = dir.path().join("checkpoint");
        let bytes = std::fs::read(&checkpoint).unwrap();
        std::fs::write(&checkpoint, &bytes[..kept_bytes]).unwrap();
        let store = open(dir.path());
        assert_messages(&store, 25);
        store.close().unwrap();
    }
}

/// In a store of 25 messages, `name` made unreadable (a directory in its place: EISDIR,
/// which root cannot bypass as it does permissions): asserts that the open is refused and
/// changes nothing, and that with the file back the store opens whole. Returns the refusal.
fn refusal_with_unreadable(name: &str) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 25);
    let file = dir.path().join(name);
    let saved = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let before = fixtures::tree(dir.path());
    let error = Store::open(dir.path(), small_config())
        .err()
        .unwrap_or_else(|| panic!("an unreadable {name} must refuse the open"));
    assert!(
        fixtures::tree(dir.path()) == before,
        "the failed open changed the directory"
    );
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, saved).unwrap();
    let store = open(dir.path());
    assert_messages(&store, 25);
    store.close().unwrap();
    error
}

/// A checkpoint that exists but cannot be read (here a directory: EISDIR, which root cannot
/// bypass as it does permissions) refuses the open with the file named, rather than being
/// taken for absent: it may vouch for messages a rebuild would not know were lost. Nothing
/// is changed, so the store opens whole once the file is readable again (mutant: the
/// `NotFound` guard in `Checkpoint::load` → `true`).
#[test]
fn an_unreadable_checkpoint_refuses_the_open_and_changes_nothing() {
    let error = refusal_with_unreadable("checkpoint");
    assert!(
        error.to_string().contains("checkpoint"),
        "the error names the checkpoint: {error}"
    );
}

/// A key may be the whole message (the store API allows it, and recovery reads such a record
/// back): it is stored, read back, found by its key, and survives a reopen. One byte longer
/// than the message is refused (mutant: `>` → `>=` or `==` in `check_messages`).
#[test]
fn a_key_as_long_as_its_message_is_stored_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", settings(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let whole_key = b"all-key";
    let outcome = store
        .append(&partition, whole_key, Some(whole_key.len()))
        .expect("a key as long as the message is accepted");
    assert!(store
        .append(&partition, whole_key, Some(whole_key.len() + 1))
        .is_err());
    store.close().unwrap();
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset(), 1);
    assert_eq!(
        store
            .read_message(&partition, outcome.first_offset)
            .unwrap(),
        whole_key
    );
    let mut found = Vec::new();
    store
        .for_each_key_match(&topic, None, whole_key, |m| {
            found.push((m.offset, m.payload().unwrap().to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(found, vec![(outcome.first_offset, whole_key.to_vec())]);
    store.close().unwrap();
}

/// A `store.toml` that exists but cannot be read (a directory: EISDIR) is an I/O error
/// naming it, and changes nothing; never "store.toml is missing … run `commitfs check
/// --repair`", whose rebuild would lose every topic name (mutant: the `NotFound` guard in
/// `Meta::load` → `true`).
#[test]
fn an_unreadable_store_toml_is_an_io_error_not_a_missing_file() {
    let error = refusal_with_unreadable("store.toml");
    let text = error.to_string();
    assert!(matches!(error, StoreError::Io { .. }), "{text}");
    assert!(text.contains("store.toml"), "{text}");
}

/// A `store.toml` whose `next_topic_id` is not above every topic's id would give the next
/// topic an id in use, mixing two topics' messages: the open refuses it (mutant: `||` → `&&`
/// in `Meta::validate`). The topic is empty: one holding messages is refused anyway, as
/// data of an id not given out.
#[test]
fn a_topic_id_at_next_topic_id_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 0);
    let meta = dir.path().join("store.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains("next_topic_id = 2"), "{text}");
    std::fs::write(
        &meta,
        text.replacen("next_topic_id = 2", "next_topic_id = 1", 1),
    )
    .unwrap();
    let error = Store::open(dir.path(), small_config())
        .err()
        .expect("a topic id at next_topic_id must refuse the open");
    let text = error.to_string();
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
    assert!(text.contains("next_topic_id"), "{text}");
}

/// An empty message (the store API allows one) is a record of the header alone: stored,
/// read back, and passed over by recovery after a crash, which must not take it for damage
/// (mutant: `<` → `<=` at the record-size check in `decode_header`).
#[test]
fn an_empty_message_survives_a_crash_and_reads_back_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", settings(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for payload in [&b"before\n"[..], b"", b"after\n"] {
        store.append(&partition, payload, None).unwrap();
    }
    store.halt_without_cleanup();
    drop(store);
    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 3);
    assert_eq!(store.read_message(&partition, 0).unwrap(), b"before\n");
    assert_eq!(store.read_message(&partition, 1).unwrap(), b"");
    assert_eq!(store.read_message(&partition, 2).unwrap(), b"after\n");
    store.close().unwrap();
}

/// The consume-queue file of topic 1, partition 0, holding offset 0.
fn first_queue_file(dir: &Path) -> PathBuf {
    let wanted = Path::new("queues/1/0").join("0".repeat(20));
    assert!(
        fixtures::tree(dir).contains_key(&wanted),
        "{wanted:?} not found"
    );
    dir.join(wanted)
}

/// A garbled consume-queue entry pointing into the last bytes of a commit-log file makes
/// the read of that message fail (EIO at the mount), never panic the daemon, and the other
/// messages read on (mutant: `<` → `==` at the length check in `decode_header`).
#[test]
fn a_queue_entry_pointing_at_a_files_last_bytes_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 25);
    let queue = first_queue_file(dir.path());
    let mut bytes = std::fs::read(&queue).unwrap();
    let near_the_end = small_config().commit_log_file_bytes - 4;
    bytes[0..8].copy_from_slice(&near_the_end.to_le_bytes());
    std::fs::write(&queue, bytes).unwrap();
    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert!(store.read_message(&partition, 0).is_err());
    for offset in 1..25 {
        assert_eq!(
            store.read_message(&partition, offset).unwrap(),
            message(offset)
        );
    }
    store.close().unwrap();
}

/// A record whose size field was damaged to less than a header, reached by a key lookup
/// (which reads the key before the CRC), is an error naming the damage, never a panic
/// (mutant: `<` → `==` at the record-size check in `decode_header`).
#[test]
fn a_key_lookup_reaching_a_record_with_a_too_small_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 25);
    // The first record of the log, message 0 (key "key-0"), starts at byte 0.
    let log_file = dir.path().join("commitlog").join("0".repeat(20));
    let mut bytes = std::fs::read(&log_file).unwrap();
    bytes[0..4].copy_from_slice(&10u32.to_le_bytes());
    std::fs::write(&log_file, bytes).unwrap();
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let result = store.for_each_key_match(&topic, None, b"key-0", |_| ControlFlow::Continue(()));
    assert!(result.is_err(), "the damaged record went unnoticed");
    store.close().unwrap();
}

/// Appends raw payloads of the given sizes to topic "t" and stops the way a crash does.
fn crashed_store_with_sizes(dir: &Path, payload_sizes: &[usize]) {
    let store = open(dir);
    let topic = store.create_topic("t", settings(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for (i, &size) in payload_sizes.iter().enumerate() {
        let payload = vec![b'a' + (i % 26) as u8; size];
        store.append(&partition, &payload, None).unwrap();
    }
    store.halt_without_cleanup();
}

/// A commit-log file filled to its last 8 bytes ends with an end-of-file marker exactly 8
/// bytes long; recovery after a crash must read it as the end of the file, not as damage
/// before the next file's records (mutant: `<` → `<=` at the length check in `scan_record`).
#[test]
fn a_file_filled_to_its_last_eight_bytes_recovers_after_a_crash() {
    // An unkeyed message in a batch of its own: the batch header and its end slot.
    const HEADER: usize = 60 + 4;
    let file_bytes = small_config().commit_log_file_bytes as usize;
    // Sixteen records of 4,000 bytes and one of 1,528: 65,528 bytes, the file less 8.
    let mut sizes = vec![4000 - HEADER; 16];
    sizes.push(file_bytes - 8 - 16 * 4000 - HEADER);
    sizes.extend([100, 200]);
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_sizes(dir.path(), &sizes);
    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), sizes.len() as u64);
    for (offset, &size) in sizes.iter().enumerate() {
        let read = store.read_message(&partition, offset as u64).unwrap();
        assert_eq!(read, vec![b'a' + (offset % 26) as u8; size]);
    }
    store.close().unwrap();
}

/// An end-of-file marker whose size does not reach the end of its file is damage, not the
/// end of the file: the records after it (here in the next file) must not be passed over,
/// so after a crash the open refuses (mutant: the `size == rest.len()` guard → `true`).
#[test]
fn an_end_of_file_marker_with_a_wrong_size_refuses_the_open() {
    let sizes = vec![4000 - (60 + 4); 20];
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_sizes(dir.path(), &sizes);
    // Over the third record of the first file: an end-of-file marker 100 bytes long.
    let log_file = dir.path().join("commitlog").join("0".repeat(20));
    let mut bytes = std::fs::read(&log_file).unwrap();
    let at = 2 * 4000;
    bytes[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&0xC0F5_B1A4u32.to_le_bytes());
    std::fs::write(&log_file, bytes).unwrap();
    let error = Store::open(dir.path(), small_config())
        .err()
        .expect("damage before the log's end must refuse the open");
    assert!(
        error.to_string().contains("00000000000000000000"),
        "the error names the file: {error}"
    );
}

/// FNV-1a 64, written out from its definition, as README "On-disk format" specifies the
/// key hash: over the topic id (4 bytes, little-endian), then the key bytes.
fn fnv1a_64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The key hash is part of the on-disk format (index files keep it), so files written by one
/// build must be read by the next: each index entry holds FNV-1a 64 of its topic id and key
/// (mutants: `key_hash` → 1, `^=` → `|=` or `&=`).
#[test]
fn index_entries_hold_the_documented_fnv1a_key_hash() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), 25);
    let index_dir = dir.path().join("index");
    let first = std::fs::read_dir(&index_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let bytes = std::fs::read(first.path()).unwrap();
    // README "On-disk format": a 64-byte header, 4 bytes per slot, then 24-byte entries
    // from entry 1 on, in the order the messages were stored; the hash is an entry's first
    // 8 bytes.
    let entries_at = 64 + 4 * small_config().index_slots as usize;
    for offset in 0..25u64 {
        let at = entries_at + (offset as usize + 1) * 24;
        let stored = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let key = format!("key-{}", offset % 5).into_bytes();
        let topic_id = 1u32.to_le_bytes();
        let expected = fnv1a_64(topic_id.into_iter().chain(key)).max(1);
        assert_eq!(stored, expected, "key hash of offset {offset}");
    }
}
