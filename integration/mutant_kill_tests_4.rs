//! What a `cargo mutants` pass over `src/store/checkpoint.rs` and `src/store/released.rs`
//! found untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use fixtures::released::{
    append_batch, config, message, segment_file, small_files_config, store_the_ceiling_cut_into,
    store_with, MESSAGE_BYTES, PER_APPEND,
};

use commitfs::store::Store;

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

/// Kills `segment_file_shift` -> `Ok(0)`: the disk ceiling took the oldest messages of the
/// then active segment, so once sealed its file starts part way into it; its messages still
/// read once the log gave their bytes back.
#[test]
fn a_segment_the_disk_ceiling_cut_into_reads_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_the_ceiling_cut_into(dir.path());
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

    let store = Store::open(dir.path(), small_files_config()).unwrap();
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
