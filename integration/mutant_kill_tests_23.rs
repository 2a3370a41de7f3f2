//! What a `cargo mutants` pass over `src/store/queue.rs` (lines 285–493, then 686–857) found
//! untested (issue 9). Each test says which mutants it kills. Every test holds a
//! `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::{Store, StoreConfig, StoreError};
use fail::FailScenario;

/// A closed store (`small_store_config`) whose partition 0 of lines topic `t` (id 1) holds
/// `line(0..3)`; the path of that partition's consume-queue file.
fn closed_store_of_three_lines(dir: &Path) -> PathBuf {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.close().unwrap();
    fixtures::queue_file(dir, 0)
}

/// A change made to a consume-queue file.
type Change = fn(&Path);

/// Opens the store at `dir` with `change` applied to its consume-queue file `queue_file`
/// once recovery has checked the queues and before the partitions read back their last
/// message (at the `recovery::build_topic` failpoint); the open's error.
fn open_after(dir: &Path, queue_file: PathBuf, change: Change) -> StoreError {
    fail::cfg_callback("recovery::build_topic", move || change(&queue_file)).unwrap();
    let opened = Store::open(dir, fixtures::small_store_config());
    fail::remove("recovery::build_topic");
    match opened {
        Ok(_) => panic!("the store opened"),
        Err(error) => error,
    }
}

/// The message last stored, whose consume-queue file is gone (or too short to hold its
/// entry) when the store reads it back at open, is reported as damage: its entry is
/// missing, at that file and byte. Kills, in `ConsumeQueue::read_entry_from_disk`, the
/// `NotFound` match guard replaced with `false` and its `==` with `!=` (line 363), and the
/// `UnexpectedEof` match guard replaced with `false` and its `==` with `!=` (line 370): a
/// missing entry became an I/O error.
#[test]
fn a_missing_or_short_queue_file_at_open_is_reported_as_a_missing_entry() {
    let _scenario = FailScenario::setup();
    let changes: [(&str, Change); 2] = [
        ("removed", |file| std::fs::remove_file(file).unwrap()),
        ("cut to two entries", |file| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .unwrap()
                .set_len(40)
                .unwrap()
        }),
    ];
    for (what, change) in changes {
        let dir = tempfile::tempdir().unwrap();
        let queue_file = closed_store_of_three_lines(dir.path());
        let error = open_after(dir.path(), queue_file.clone(), change);
        let text = error.to_string();
        match error {
            StoreError::Corrupt { path, offset, .. } => {
                assert_eq!((path, offset), (queue_file, 40), "{what}: {text}")
            }
            _ => panic!("{what}: {text}"),
        }
        assert!(
            text.contains("message 2: its consume-queue entry is missing"),
            "{what}: {text}"
        );
    }
}

/// A consume-queue file that cannot be opened (a socket in its place) or read (a
/// directory) when the store reads back its last message at open fails the open with an
/// I/O error naming the file, not as a missing entry: the disk, not the store, is at
/// fault. Kills, in `ConsumeQueue::read_entry_from_disk`, the `NotFound` match guard
/// replaced with `true` and its `==` with `!=` (line 363), and the `UnexpectedEof` match
/// guard replaced with `true` and its `==` with `!=` (line 370): the error became "its
/// consume-queue entry is missing".
#[test]
fn an_unreadable_queue_file_at_open_is_an_io_error() {
    let _scenario = FailScenario::setup();
    let changes: [(&str, &str, Change); 2] = [
        ("a socket", "opening", |file| {
            std::fs::remove_file(file).unwrap();
            std::os::unix::net::UnixListener::bind(file).unwrap();
        }),
        ("a directory", "reading byte 40 of", |file| {
            std::fs::remove_file(file).unwrap();
            std::fs::create_dir(file).unwrap();
        }),
    ];
    for (what, says, change) in changes {
        let dir = tempfile::tempdir().unwrap();
        let queue_file = closed_store_of_three_lines(dir.path());
        let error = open_after(dir.path(), queue_file.clone(), change);
        let text = error.to_string();
        assert!(matches!(error, StoreError::Io { .. }), "{what}: {text}");
        let expected = format!("{says} {}", queue_file.display());
        assert!(text.contains(&expected), "{what}: {text}");
    }
}

/// The disk ceiling removes the oldest commit-log file, which holds only the first message
/// of a partition whose one active segment goes on in the next (and last) file: the partition then
/// starts at its second message (found by a binary search over its consume queue), and
/// every message from there reads back. Kills `-` replaced with `/` in
/// `ConsumeQueue::first_at_or_after`'s search (line 391: from offset 0 it narrowed to
/// offsets 1 and 2 and then probed offset 2 forever).
#[test]
fn the_disk_ceiling_starts_a_partition_at_the_first_message_it_keeps() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 1000,
        // Over it, whatever is left: every sealed commit-log file goes.
        max_disk_bytes: Some(1),
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let filler = fixtures::new_partition(&store, "filler", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 1);
    // 70 KB: on into the second 64 KiB commit-log file.
    for _ in 0..70 {
        store.append(&filler, &[b'f'; 1000], None).unwrap();
    }
    fixtures::append_lines(&store, &partition, 1, 10);
    {
        let store = store.clone();
        fixtures::finishes("retention", move || store.enforce_retention()).unwrap();
    }
    assert_eq!(
        fixtures::log_bases(dir.path())[0],
        64 * 1024,
        "the first file went"
    );
    assert_eq!((partition.start_offset(), partition.end_offset()), (1, 10));
    fixtures::assert_reads(&store, &partition, 1, 10);
    store.close().unwrap();
}

/// A partition that ends at a segment's end (10 messages, 10-message segments) and was
/// stopped cleanly opens from its checkpoint, keeping its consume-queue files (no rebuild
/// from the whole commit log, which would make them again), and reads back. Kills `<`
/// replaced with `<=` in `ConsumeQueue::covers`'s loop (line 409: it asked for a file of the
/// next, unwritten segment too, so recovery took the queue for one with files missing).
#[test]
fn a_clean_reopen_keeps_the_queue_file_of_a_partition_that_ends_at_a_segment_end() {
    use std::os::unix::fs::MetadataExt;
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 10);
    store.close().unwrap();
    drop((store, partition));
    let queue_file = fixtures::queue_file(dir.path(), 0);
    // Opening a file re-establishes its allocation (which sets its modification time), so
    // only its inode tells a kept file from one made again.
    let inode = std::fs::metadata(&queue_file).unwrap().ino();

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert_eq!(
        std::fs::metadata(&queue_file).unwrap().ino(),
        inode,
        "the queue file was made again"
    );
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 10);
    fixtures::assert_reads(&store, &partition, 0, 10);
    store.close().unwrap();
}

/// A consume-queue file cut short while the store was stopped cleanly (one entry left of
/// three) is rebuilt from the commit log at the next open, and every message reads back.
/// Kills `/` replaced with `*` in `ConsumeQueue::covers` (line 415: a file's allocated
/// bytes counted for 400 times as many entries as they hold, so the short file was trusted
/// and the open failed on the last message's missing entry).
#[test]
fn a_queue_file_cut_short_after_a_clean_stop_is_rebuilt_from_the_log() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let queue_file = closed_store_of_three_lines(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&queue_file)
        .unwrap()
        .set_len(20)
        .unwrap();

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 3);
    fixtures::assert_reads(&store, &partition, 0, 3);
    store.close().unwrap();
}

/// A consume-queue file that grew past its first chunk and that the budget of open files
/// then closed still counts with all its allocated bytes in the store's disk usage: reading
/// other partitions (which closes it) does not lower the usage. Kills `>` replaced with
/// `==` and with `<` in `ConsumeQueue::reserve`'s growth check (line 458: the file's
/// recorded size was not updated by the append that grew it, so once closed it counted its
/// first 4 KiB).
#[test]
fn a_grown_queue_file_closed_by_the_budget_keeps_counting_in_the_disk_usage() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 1000,
        // The fewest the store allows: reading a few partitions closes the other files.
        max_open_files: 16,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let others = store
        .create_topic("others", fixtures::lines_topic(40))
        .unwrap();
    for index in 0..40 {
        let partition = others.partition(index).unwrap();
        fixtures::append_lines(&store, &partition, 0, 1);
    }
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 1);
    // One batch of 20,000 bytes of entries: its append grows the queue file from its first
    // 4 KiB to its whole segment, and no append comes after it.
    let lines: Vec<Vec<u8>> = (1..1000).map(fixtures::line).collect();
    store
        .append_batch(&partition, &fixtures::unkeyed_messages(&lines))
        .unwrap();
    drop(partition);
    let before = store.disk_usage();
    for index in 0..40 {
        let partition = others.partition(index).unwrap();
        fixtures::assert_reads(&store, &partition, 0, 1);
    }
    let after = store.disk_usage();
    assert!(after >= before, "disk usage {before} -> {after}");
    store.close().unwrap();
}
