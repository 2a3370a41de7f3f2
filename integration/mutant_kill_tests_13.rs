//! What a `cargo mutants` pass over `src/store/partition.rs` (from `Partition::read_message`
//! on: the `stream`, segment readers) found untested (issue 9), and mutants of
//! `src/store/materialize.rs` picked by reading it, ahead of a `cargo mutants` pass over that
//! file (not run yet). Each test says which mutants it kills; each was seen failing with them
//! applied by hand.

mod fixtures;

use std::path::Path;

use commitfs::store::{Store, StoreError};

/// A store with `segments` sealed segments of 1,000-byte messages in partition 0 of keyed
/// Whether each of the partition's segments, oldest first, has a file of its own.
fn copied_segments(partition: &commitfs::store::Partition) -> Vec<bool> {
    partition
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.materialized)
        .collect()
}

/// topic `t` (id 1), each copied to its own file, closed.
fn closed_store_with_copies(dir: &Path, segments: usize) {
    let store = fixtures::released::store_with(dir, segments * 10 + 5);
    assert_eq!(store.materialize_sealed().unwrap(), segments);
    store.close().unwrap();
}

/// A partition whose directory of segment files cannot be listed (something that is not a
/// directory stands in its place) refuses the open naming that path, rather than opening as
/// if the partition had no segment files. Kills the match guard `e.kind() == NotFound` ->
/// `true` in `SegmentFiles::open`.
#[test]
fn a_segment_directory_that_cannot_be_listed_refuses_the_open_naming_it() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_copies(dir.path(), 1);
    let partition_dir = dir.path().join("segments/1/0");
    std::fs::remove_dir_all(&partition_dir).unwrap();
    std::fs::write(&partition_dir, b"not a directory").unwrap();

    let error = Store::open(dir.path(), fixtures::released::config())
        .map(|_| ())
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&partition_dir.display().to_string()),
        "{text}"
    );
}

/// At an open, segment files of topics the store no longer has are removed (a topic
/// directory under `segments/` whose id no topic has); what is not a topic's directory is
/// left alone, and the store's own topic keeps its files. Kills `remove_orphans` ->
/// `Ok(())`.
#[test]
fn an_open_removes_the_segment_files_of_topics_the_store_no_longer_has() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_copies(dir.path(), 2);
    let segments = dir.path().join("segments");
    let orphan = segments.join("7/0");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::copy(
        fixtures::released::segment_file(dir.path(), 0),
        orphan.join(format!("{:020}.log", 0)),
    )
    .unwrap();
    std::fs::write(segments.join("8"), b"a file, not a topic's directory").unwrap();
    std::fs::create_dir(segments.join("notes")).unwrap();

    let store = Store::open(dir.path(), fixtures::released::config()).unwrap();
    assert!(
        !segments.join("7").exists(),
        "topic 7's files are still there"
    );
    assert!(segments.join("8").exists() && segments.join("notes").exists());
    for base in [0, 10] {
        assert!(fixtures::released::segment_file(dir.path(), base).exists());
    }
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let copied = copied_segments(&partition);
    assert_eq!(copied, [true, true, false]);
    store.close().unwrap();
}

/// At an open, a segment file that does not match its segment goes and the segment reads
/// from the log until it is copied again: a file shorter than its sealed segment, and a file
/// of the active segment (not sealed). The file that matches stays. Kills
/// `Partition::check_segment_files` -> `Ok(())`, its `base >= first` -> `<`, the match guard
/// `info.sealed && info.bytes == len` -> `true` and its `&&` -> `||` and `==` -> `!=`, and
/// `SegmentFiles::discard` -> `Ok(())`; and `SegmentReader::materialized_file` -> `None` (a
/// reader of the copied segment has its file) and `&&` -> `||` in `SegmentReader::info`'s
/// `sealed && contains` (a reader describes its segment as the partition does).
#[test]
fn an_open_drops_segment_files_that_do_not_match_their_segments() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    use fixtures::released::{config, message, segment_file};
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_copies(dir.path(), 2);
    let short = segment_file(dir.path(), 0);
    let bytes = std::fs::read(&short).unwrap();
    std::fs::write(&short, &bytes[..bytes.len() / 2]).unwrap();
    let active = segment_file(dir.path(), 20);
    std::fs::copy(segment_file(dir.path(), 10), &active).unwrap();

    let store = Store::open(dir.path(), config()).unwrap();
    assert!(!short.exists(), "the short file was kept");
    assert!(!active.exists(), "the active segment's file was kept");
    assert!(segment_file(dir.path(), 10).exists());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let copied = copied_segments(&partition);
    assert_eq!(copied, [false, true, false]);
    // A segment's reader describes it as the partition does.
    for segment in partition.segments().unwrap() {
        let reader = partition.open_segment(segment.base_offset).unwrap();
        assert_eq!(reader.info().unwrap(), segment);
    }
    for i in 0..25 {
        assert_eq!(
            store.read_message(&partition, i as u64).unwrap(),
            message(i),
            "message {i}"
        );
    }
    let reader = partition.open_segment(0).unwrap();
    assert!(reader.materialized_file().is_none());
    let info = reader.info().unwrap();
    assert!(info.sealed && !info.materialized, "{info:?}");
    let mut segment = vec![0u8; bytes.len()];
    assert_eq!(reader.read_at(0, &mut segment).unwrap(), bytes.len());
    assert!(segment == bytes, "segment 0 reads other bytes");
    drop(reader);
    let copy = partition.open_segment(10).unwrap();
    let file = copy
        .materialized_file()
        .expect("segment 10 reads from its own file");
    let own = std::fs::read(segment_file(dir.path(), 10)).unwrap();
    assert_eq!(file.metadata().unwrap().len(), own.len() as u64);
    let info = copy.info().unwrap();
    assert!(info.sealed && info.materialized, "{info:?}");
    drop(copy);
    assert_eq!(
        store.materialize_sealed().unwrap(),
        1,
        "segment 0 is copied again"
    );
    assert_eq!(std::fs::read(&short).unwrap(), bytes);
    store.close().unwrap();
}

/// Retention that removes sealed segments removes their own files and the markers of
/// segments whose bytes the log gave back, and only theirs: the segments still stored keep
/// theirs and read back. Kills `SegmentFiles::remove_before` -> `Ok(())`.
#[test]
fn retention_removes_the_files_and_markers_of_the_segments_it_removes() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    use fixtures::released::{message, segment_file, store_with_copies_under_retention};
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_copies_under_retention(dir.path());
    assert!(store.release_materialized_log().unwrap() > 0);
    let marker = |base: u64| segment_file(dir.path(), base).with_extension("log.released");
    for base in [0, 10, 20] {
        assert!(segment_file(dir.path(), base).exists() && marker(base).exists());
    }

    store.enforce_retention().unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let start = partition.start_offset();
    assert!(start > 0 && start % 10 == 0 && start <= 20, "start {start}");
    for base in [0, 10, 20] {
        let kept = base >= start;
        assert_eq!(
            segment_file(dir.path(), base).exists(),
            kept,
            "segment {base}'s file"
        );
        assert_eq!(marker(base).exists(), kept, "segment {base}'s marker");
    }
    for i in start as usize..35 {
        assert_eq!(
            store.read_message(&partition, i as u64).unwrap(),
            message(i)
        );
    }
    store.close().unwrap();
}

/// Copying sealed segments first makes the commit log durable: a power loss right after the
/// copies (with the log's own write-back an hour away) finds every message the copies hold,
/// and the copies stand. Kills `delete !` in `Store::materialize_pass`'s `if !flushed`, which
/// never flushed the log: the copies outlived the messages they copy, and the next open
/// found neither. (`failpoints` build: its record of what each fsync made durable.)
#[cfg(feature = "failpoints")]
#[test]
fn a_power_loss_after_a_copy_keeps_the_messages_it_copied() {
    use fixtures::power_loss::{crash_copy, Fill, PowerLoss};
    use fixtures::released::{append_batch, message};
    let _scenario = fail::FailScenario::setup();
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let config = commitfs::store::StoreConfig {
        flush: commitfs::store::FlushPolicy::Async {
            interval_ms: 3_600_000,
        },
        ..fixtures::released::config()
    };
    let store = Store::open(&data, config.clone()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    for first in [0, 10, 20] {
        append_batch(&store, first, first + 10);
    }
    assert_eq!(store.materialize_sealed().unwrap(), 3);
    let loss = PowerLoss {
        fill: Fill::Zeros,
        unsynced_names_survive: true,
    };
    crash_copy(&data, &copy, loss);
    store.halt_without_cleanup();

    let store = Store::open(&copy, config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 30, "messages were lost");
    let copied = copied_segments(&partition);
    assert_eq!(copied, [true, true, true, false]);
    for i in 0..30 {
        assert_eq!(
            store.read_message(&partition, i as u64).unwrap(),
            message(i)
        );
    }
    store.close().unwrap();
}

/// A sealed segment whose bytes in the commit log are damaged is not copied, and its
/// abandoned copy leaves nothing behind (no `.partial` file, no file under its name); the
/// other segments are copied, and its messages stay refused. Kills `delete !` in
/// `Partition::materialize`'s `if !matches!(made, Ok(true))`, which kept the half-made copy
/// of a refused segment and removed nothing.
#[test]
fn a_segment_whose_log_is_damaged_leaves_no_copy_behind() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    use fixtures::released::{message, segment_file, store_with};
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 25);
    store.sync().unwrap();
    let log = dir.path().join("commitlog").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&log).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 3, "one batch an append");
    // Message 15's bytes, in the batch of segment 10.
    let at = starts[1]
        + bytes[starts[1]..starts[2]]
            .windows(message(15).len())
            .position(|w| w == message(15))
            .unwrap();
    bytes[at + 500] ^= 1;
    std::fs::write(&log, &bytes).unwrap();

    assert_eq!(store.materialize_sealed().unwrap(), 1);
    assert!(segment_file(dir.path(), 0).exists());
    let left: Vec<String> = std::fs::read_dir(dir.path().join("segments/1/0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [format!("{:020}.log", 0)]);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let error = store.read_message(&partition, 15).unwrap_err();
    assert!(error.to_string().contains("CRC32C"), "{error}");
    assert_eq!(store.read_message(&partition, 5).unwrap(), message(5));
    store.close().unwrap();
}

/// A garbled consume-queue entry spoils only its own message's bytes in the `stream`: a
/// read of a later message finds it by a search that never looks at the damaged entry, and
/// answers; a read of the damaged message is refused naming the queue file and byte. Kills
/// `>` -> `<` and `>` -> `==` in `last_starting_at_or_before`'s `while high - low > 1`, which
/// skipped the search and walked every message from the partition's first, into the
/// damaged one.
#[test]
fn a_stream_read_past_a_garbled_queue_entry_finds_its_message() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let line = |i: usize| format!("k{}:{:0>1000}\n", i % 5, i).into_bytes();
    {
        let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
        for i in 0..25 {
            store.append(&partition, &line(i), Some(2)).unwrap();
        }
        store.close().unwrap();
    }
    let queue = fixtures::queue_file(dir.path(), 0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&queue)
        .unwrap();
    file.write_all_at(&[0xab; 20], 2 * 20).unwrap();
    drop(file);

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let size = line(0).len();
    let mut buf = vec![0u8; size];
    for i in [20, 24, 3] {
        assert_eq!(
            partition.read_stream((i * size) as u64, &mut buf).unwrap(),
            size,
            "message {i}"
        );
        assert_eq!(buf, line(i), "message {i}");
    }
    match partition.read_stream((2 * size) as u64, &mut buf) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (queue, 2 * 20));
        }
        other => panic!("the garbled message read as {other:?}"),
    }
    store.close().unwrap();
}

/// A reader of a partition's empty active segment (the one after a full segment, with no
/// message yet) names its segment and describes it as empty and not sealed, rather than
/// failing on the records of messages it does not hold. Kills `SegmentReader::base_offset`
/// -> `0` and -> `1`, and `>` -> `>=` in `SegmentReader::info`'s `messages > 0`.
#[test]
fn a_reader_of_an_empty_active_segment_describes_it() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 10);
    let reader = store.open_segment(&partition, 10).unwrap();
    assert_eq!(reader.base_offset(), 10);
    let info = reader.info().unwrap();
    assert_eq!((info.base_offset, info.messages), (10, 0), "{info:?}");
    assert!(!info.sealed && !info.materialized, "{info:?}");
    assert_eq!(partition.segments().unwrap().last(), Some(&info));
    let mut buf = [0u8; 16];
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 0);
    drop(reader);
    store.close().unwrap();
}
