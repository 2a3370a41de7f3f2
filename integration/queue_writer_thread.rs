//! Consume-queue entries that wait in memory go into their files on a thread of their own,
//! the queue writer, off the appending thread (issue 7): an append asks for it once three
//! quarters of a partition's room for waiting entries is used. These tests check what a user
//! relies on: the entries reach the files without waiting for a checkpoint, readers find every
//! message meanwhile, and with the thread held back (failpoint `queue-writer::held-back`, as a
//! busy machine might) appends, checkpoints and recovery still keep every message. Every test
//! holds `FailScenario` (failpoints are global).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Partition, Store, StoreConfig};

/// Segments long enough that single-message appends leave entries waiting in memory (a
/// partition's room for them ends with its segment), and no checkpoint on its own.
fn config() -> StoreConfig {
    StoreConfig {
        segment_messages: 1000,
        ..fixtures::small_store_config()
    }
}

/// The sizes of entries `0..count` in the consume-queue file of partition 0's first segment,
/// as a process reading the file sees them (0 where none was written).
fn entry_sizes_on_disk(dir: &Path, count: usize) -> Vec<usize> {
    let bytes = std::fs::read(fixtures::queue_file(dir, 0)).unwrap();
    (0..count)
        .map(|n| {
            let size = &bytes[n * 20 + 8..n * 20 + 12];
            u32::from_le_bytes(size.try_into().unwrap()) as usize
        })
        .collect()
}

/// A store in `dir` with topic `t` of one partition, `lines` framing.
fn open_with_topic(dir: &Path) -> (Arc<Store>, Arc<Partition>) {
    let store = Store::open(dir, config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    (store, partition)
}

/// Opens the store in `dir` again, asserts that `t` holds `line(0)..line(end)`, and closes it.
fn reopen_and_read_all(dir: &Path, end: u64) {
    let store = Store::open(dir, config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_reads(&store, &partition, 0, end);
    store.close().unwrap();
}

fn line_sizes(from: u64, to: u64) -> Vec<usize> {
    (from..to).map(|n| fixtures::line(n).len()).collect()
}

/// Waits (a minute at most) until the queue file in `dir` holds the entries of
/// `line(0)..line(end)`: the queue writer wrote them out.
fn wait_for_entries_on_disk(dir: &Path, end: u64) {
    let dir = dir.to_owned();
    fixtures::finishes("writing waiting entries out", move || {
        while entry_sizes_on_disk(&dir, end as usize) != line_sizes(0, end) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
}

#[test]
fn waiting_entries_reach_their_file_without_a_checkpoint() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = open_with_topic(dir.path());
    // Offset 0 goes to the file with its append (the first reserves the file's room); 1..=24
    // wait in memory, and the twenty-fourth asks the queue writer for them.
    fixtures::append_lines(&store, &partition, 0, 25);
    wait_for_entries_on_disk(dir.path(), 25);
    fixtures::assert_reads(&store, &partition, 0, 25);
    store.close().unwrap();
}

#[test]
fn with_the_queue_writer_held_back_appends_and_a_close_write_every_entry() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("queue-writer::held-back", "return").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = open_with_topic(dir.path());
    fixtures::append_lines(&store, &partition, 0, 90);
    // An append that finds the room full writes the waiting entries out itself: 1..=32 went
    // when offset 33 came, 34..=65 when 66 came; 67..90 wait in memory.
    let mut expected = line_sizes(0, 67);
    expected.resize(90, 0);
    assert_eq!(entry_sizes_on_disk(dir.path(), 90), expected);
    fixtures::assert_reads(&store, &partition, 0, 90);
    store.close().unwrap();
    drop(store);
    assert_eq!(entry_sizes_on_disk(dir.path(), 90), line_sizes(0, 90));
    reopen_and_read_all(dir.path(), 90);
}

#[test]
fn a_crash_with_the_queue_writer_held_back_loses_no_message() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("queue-writer::held-back", "return").unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, partition) = open_with_topic(dir.path());
        fixtures::append_lines(&store, &partition, 0, 50);
        store.halt_without_cleanup();
    }
    fail::remove("queue-writer::held-back");
    reopen_and_read_all(dir.path(), 50);
}

#[test]
fn readers_find_every_message_while_the_queue_writer_writes_entries_out() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(40)).unwrap();
    let line = |partition: u32, offset: u64| format!("p{partition}-m{offset}\n");
    fixtures::readers_check_while(&store, &topic, line, || {
        for offset in 0..300 {
            for partition in topic.partitions() {
                let text = line(partition.index(), offset);
                store.append(&partition, text.as_bytes(), None).unwrap();
            }
        }
    });
    for partition in topic.partitions() {
        for offset in 0..300 {
            let got = store.read_message(&partition, offset).unwrap();
            assert_eq!(got, line(partition.index(), offset).as_bytes());
        }
    }
    store.close().unwrap();
}

/// The queue writer grows a partition's consume-queue file ahead of its writer (issue 7: at
/// 10,000 partitions the writer's own `fallocate`s, and the page faults of its stores into
/// the new pages, were a sixth of the appending thread's CPU). Once the entries it wrote out
/// pass the middle of the file's first 4 KiB, the file holds the next 4 KiB before any
/// append needs them, and appends leave their entries in memory there as well; with the disk
/// full from then on, single-message appends go on into that room and are refused as a full
/// disk only where it ends, and nothing acknowledged is lost.
#[test]
fn the_queue_writer_grows_the_file_ahead_and_appends_fill_that_room_on_a_full_disk() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = open_with_topic(dir.path());
    // Offset 0 reserves the file's first 4 KiB (204 entries); then 24 at a time, each time
    // waiting for the queue writer to write them out, so that the appends never find all
    // 32 places for waiting entries taken and write out (and grow the file) themselves.
    fixtures::append_lines(&store, &partition, 0, 1);
    for end in (25..=193).step_by(24) {
        fixtures::append_lines(&store, &partition, end - 24, end);
        wait_for_entries_on_disk(dir.path(), end);
    }
    let queue_bytes = std::fs::metadata(fixtures::queue_file(dir.path(), 0))
        .unwrap()
        .len();
    assert_eq!(
        queue_bytes, 8192,
        "193 entries written out into a 4 KiB file"
    );

    // The appends past the room the writer reserved itself (204) use the room grown ahead:
    // their entries go on waiting in memory, and the file is not touched on their thread.
    fail::cfg("queue-writer::held-back", "return").unwrap();
    fixtures::append_lines(&store, &partition, 193, 210);
    assert_eq!(
        entry_sizes_on_disk(dir.path(), 210)[193..],
        [0; 17],
        "an append wrote entries into the file itself"
    );
    fixtures::assert_reads(&store, &partition, 0, 210);
    fail::remove("queue-writer::held-back");

    fail::cfg("mapped::allocate", "return(enospc@/queues/)").unwrap();
    let mut end = 210;
    let refused = loop {
        assert!(end < 1000, "no append refused with the disk full");
        match store.append(&partition, &fixtures::line(end), None) {
            Ok(_) => end += 1,
            Err(error) => break error,
        }
    };
    fail::remove("mapped::allocate");
    assert!(
        matches!(refused, commitfs::store::StoreError::DiskFull(_)),
        "{refused:?}"
    );
    assert_eq!(
        end,
        8192 / 20,
        "appends stopped short of the room grown ahead"
    );
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_reads(&store, &partition, 0, end);
    store.close().unwrap();
    reopen_and_read_all(dir.path(), end);
}
