//! What a `cargo mutants` pass over `src/store/queue.rs` (its mutants up to line 276 of the
//! first 499 lines: 54 of 162) found untested, and `ConsumeQueue::reopen`'s capacity, run on
//! its own (issue 9). Each test says which mutants it kills. Every test holds a
//! `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

mod fixtures;

use commitfs::store::{Partition, Store, StoreConfig, StoreError};
use fail::FailScenario;

/// [`fixtures::small_store_config`] with 10,000-message segments: a consume-queue file
/// (200,000 bytes whole) is allocated a few KiB at a time.
fn big_segments() -> StoreConfig {
    StoreConfig {
        segment_messages: 10_000,
        ..fixtures::small_store_config()
    }
}

/// Appends `line(offset)` one message at a time from `from` until an append fails (none
/// past `limit`); returns the error and the partition's end.
fn append_until_refused(
    store: &Store,
    partition: &Partition,
    from: u64,
    limit: u64,
) -> (StoreError, u64) {
    let mut end = from;
    loop {
        assert!(end < limit, "no append was refused up to offset {limit}");
        match store.append(partition, &fixtures::line(end), None) {
            Ok(_) => end += 1,
            Err(error) => return (error, end),
        }
    }
}

/// With the disk full for consume-queue files, single-message appends (whose entries wait
/// in memory a few at a time) go on only as far as the queue file's allocated bytes hold
/// their entries: the first past them is refused as a full disk, nothing is lost, and once
/// space is back appends go on from there; everything reads back after a reopen. Kills `/`
/// replaced with `*` in `QueueFile::allocated_entries` (the room the append path may defer
/// entries into became the whole segment: appends were acknowledged whose entries had no
/// allocated bytes).
#[test]
fn appends_whose_entries_wait_in_memory_stop_at_the_queue_files_allocated_room() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), big_segments()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 1);
    fail::cfg("mapped::allocate", "return(enospc@/queues/)").unwrap();
    let (refused, end) = append_until_refused(&store, &partition, 1, 10_000);
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused:?}");
    assert_eq!(partition.end_offset(), end);
    let queue_bytes = std::fs::metadata(fixtures::queue_file(dir.path(), 0))
        .unwrap()
        .len();
    assert!(
        end * 20 <= queue_bytes,
        "{end} messages acknowledged, their queue file holds {queue_bytes} bytes"
    );
    fixtures::assert_reads(&store, &partition, 0, end);
    fail::remove("mapped::allocate");
    fixtures::append_lines(&store, &partition, end, end + 100);
    store.close().unwrap();
    let store = Store::open(dir.path(), big_segments()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), end + 100);
    fixtures::assert_reads(&store, &partition, 0, end + 100);
}

/// Appends `line(offset)` for `from..to`, `batch` messages an append.
fn append_lines_in_batches(store: &Store, partition: &Partition, from: u64, to: u64, batch: u64) {
    let mut first = from;
    while first < to {
        let last = (first + batch).min(to);
        let lines: Vec<Vec<u8>> = (first..last).map(fixtures::line).collect();
        store
            .append_batch(partition, &fixtures::unkeyed_messages(&lines))
            .unwrap();
        first = last;
    }
}

/// A consume-queue file mapped again after a reopen (its first few KiB allocated) grows
/// to hold its whole segment: 5,000 more messages go into the segment of 10,000 and read
/// back, before and after another reopen. Kills `*` replaced with `+` in
/// `ConsumeQueue::reopen` (the file was mapped again with room for 10,020 bytes of entries,
/// not 200,000: the append past them panicked); fails with `/` too, which the queue's fuzz
/// test already catches.
#[test]
fn a_queue_file_mapped_again_after_a_reopen_grows_to_its_whole_segment() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), big_segments()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 1);
    store.close().unwrap();
    let first_bytes = std::fs::metadata(fixtures::queue_file(dir.path(), 0))
        .unwrap()
        .len();
    assert!(
        first_bytes < 10_000,
        "{first_bytes} bytes allocated at first"
    );

    let store = Store::open(dir.path(), big_segments()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    append_lines_in_batches(&store, &partition, 1, 5001, 100);
    assert_eq!(partition.end_offset(), 5001);
    fixtures::assert_reads(&store, &partition, 0, 5001);
    store.close().unwrap();

    let store = Store::open(dir.path(), big_segments()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 5001);
    fixtures::assert_reads(&store, &partition, 0, 5001);
}
