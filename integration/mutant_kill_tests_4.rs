//! What a `cargo mutants` pass over `src/store/checkpoint.rs` and `src/store/released.rs`
//! found untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::{NewMessage, Store, StoreConfig};

/// Messages per append: each append is one batch of 10,000 bytes of messages, one segment.
const PER_APPEND: usize = 10;
const MESSAGE_BYTES: usize = 1000;

fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 1 << 20,
        ..fixtures::small_store_config()
    }
}

/// Message `i`: key `k<i>`, then `:`, then a letter that changes with `i`.
fn message(i: usize) -> Vec<u8> {
    let mut bytes = format!("k{i}:").into_bytes();
    bytes.resize(MESSAGE_BYTES, b'a' + (i % 26) as u8);
    bytes
}

/// A store with `messages` messages in partition 0 of keyed topic `t`, one batch (and one
/// segment) per ten.
fn store_with(dir: &Path, messages: usize) -> Arc<Store> {
    let store = Store::open(dir, config()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    for first in (0..messages).step_by(PER_APPEND) {
        append_batch(&store, first, messages.min(first + PER_APPEND));
    }
    store
}

fn segment_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("segments/1/0").join(format!("{base:020}.log"))
}

/// Kills `&&` -> `||` in `release_materialized_log`'s choice of segments, which took every
/// segment with a file again: a second release gives back only what a newly sealed segment
/// holds, and nothing when there is none.
#[test]
fn a_release_counts_only_the_segments_not_released_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 25);
    assert_eq!(store.materialize_sealed().unwrap(), 2);
    let segment_bytes = (PER_APPEND * MESSAGE_BYTES) as u64;
    assert_eq!(store.release_materialized_log().unwrap(), 2 * segment_bytes);
    assert_eq!(store.release_materialized_log().unwrap(), 0);

    // Messages 25..30 fill and seal segment 20.
    append_batch(&store, 25, 30);
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    assert_eq!(store.release_materialized_log().unwrap(), segment_bytes);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    for i in 0..30 {
        let read = store.read_message(&partition, i as u64);
        assert_eq!(read.ok(), Some(message(i)), "message {i}");
    }
    store.close().unwrap();
}

/// Appends messages `from..to` to partition 0 of topic `t` as one batch.
fn append_batch(store: &Store, from: usize, to: usize) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let bytes: Vec<Vec<u8>> = (from..to).map(message).collect();
    let batch: Vec<NewMessage<'_>> = bytes
        .iter()
        .enumerate()
        .map(|(n, payload)| NewMessage {
            payload,
            key_len: Some(format!("k{}", from + n).len()),
        })
        .collect();
    store.append_batch(&partition, &batch).unwrap();
}

/// Kills `segment_file_shift` -> `Ok(0)`: the disk ceiling took the oldest messages of the
/// then active segment, so once sealed its file starts part way into it; its messages still
/// read once the log gave their bytes back.
#[test]
fn a_segment_the_disk_ceiling_cut_into_reads_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 16 * 1024,
        segment_messages: 20,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    append_batch(&store, 0, 10);
    append_batch(&store, 10, 15);
    // A 16 KiB log file holds the first two batches: this one starts the next file.
    append_batch(&store, 15, 18);
    store.close().unwrap();
    drop(store);

    let ceiling = StoreConfig {
        max_disk_bytes: Some(1),
        ..config.clone()
    };
    let store = Store::open(dir.path(), ceiling).unwrap();
    store.enforce_retention().unwrap();
    let start = store
        .topic("t")
        .unwrap()
        .partition(0)
        .unwrap()
        .start_offset();
    assert!(
        start > 0 && start < 20,
        "the ceiling kept messages from {start}"
    );
    store.close().unwrap();
    drop(store);

    let store = Store::open(dir.path(), config).unwrap();
    append_batch(&store, 18, 20);
    append_batch(&store, 20, 25);
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    assert!(store.release_materialized_log().unwrap() > 0);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    for i in start..25 {
        let read = store.read_message(&partition, i);
        assert_eq!(read.ok(), Some(message(i as usize)), "message {i}");
    }
    store.close().unwrap();
}

/// Kills `&&` -> `||` in `release_segment`'s marking, which marked the segment released after
/// checking only its first batch against the file: a segment whose file is damaged in its
/// second batch keeps its bytes in the log, and every message still reads.
#[test]
fn a_segment_whose_file_is_damaged_in_a_later_batch_keeps_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    for first in (0..25).step_by(5) {
        append_batch(&store, first, first + 5);
    }
    assert_eq!(store.materialize_sealed().unwrap(), 2);
    // Byte 7000 of segment 0's file is in its second batch (messages 5..10).
    let damaged = segment_file(dir.path(), 0);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[7000] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();

    assert_eq!(
        store.release_materialized_log().unwrap(),
        (PER_APPEND * MESSAGE_BYTES) as u64
    );
    assert!(!damaged.with_extension("log.released").exists());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    for i in 0..25 {
        let read = store.read_message(&partition, i as u64);
        assert_eq!(read.ok(), Some(message(i)), "message {i}");
    }
    store.close().unwrap();
}
