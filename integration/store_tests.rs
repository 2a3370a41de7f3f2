//! The storage engine in-process: appends, segment reads, clean and unclean reopening,
//! crash damage of every kind, key lookups and retention.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use commitfs::store::{
    Framing, NewMessage, Partition, Store, StoreConfig, StoreError, TopicSettings,
};

mod fixtures;

fn small_config() -> StoreConfig {
    fixtures::small_store_config()
}

fn settings(partitions: u32) -> TopicSettings {
    fixtures::keyed_topic(partitions)
}

fn message(i: usize) -> Vec<u8> {
    format!("key-{}:message number {i} {}\n", i % 7, "x".repeat(i % 50)).into_bytes()
}

fn append_keyed(store: &Store, partition: &Partition, payload: &[u8]) -> u64 {
    let key_len = payload.iter().position(|&b| b == b':');
    store
        .append(partition, payload, key_len)
        .expect("append")
        .first_offset
}

/// Every byte of every segment of a partition, in order.
fn partition_bytes(store: &Store, partition: &Arc<Partition>) -> Vec<u8> {
    let mut all = Vec::new();
    for segment in partition.segments().expect("segments") {
        let reader = store
            .open_segment(partition, segment.base_offset)
            .expect("open segment");
        let mut bytes = vec![0u8; segment.bytes as usize];
        assert_eq!(reader.read_at(0, &mut bytes).expect("read"), bytes.len());
        let mut extra = [0u8; 16];
        assert_eq!(
            reader
                .read_at(segment.bytes, &mut extra)
                .expect("read at end"),
            0
        );
        all.extend_from_slice(&bytes);
    }
    all
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, small_config()).expect("open store")
}

#[test]
fn appended_messages_read_back_in_order_across_segments_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("orders", settings(3)).unwrap();
    let mut expected: Vec<Vec<u8>> = vec![Vec::new(); 3];
    for i in 0..1000 {
        let p = (i % 3) as u32;
        let payload = message(i);
        let offset = append_keyed(&store, &topic.partition(p).unwrap(), &payload);
        assert_eq!(
            offset,
            (i / 3) as u64,
            "offsets are consecutive per partition"
        );
        expected[p as usize].extend_from_slice(&payload);
    }
    assert!(
        dir.path().join("commitlog").read_dir().unwrap().count() > 1,
        "the log rolled"
    );
    for (p, expected) in expected.iter().enumerate() {
        let partition = topic.partition(p as u32).unwrap();
        assert_eq!(partition.end_offset(), if p == 0 { 334 } else { 333 });
        let segments = partition.segments().expect("segments");
        assert_eq!(segments.len(), 34);
        assert!(segments[..33].iter().all(|s| s.sealed && s.messages == 10));
        assert!(!segments[33].sealed);
        assert_eq!(&partition_bytes(&store, &partition), expected);
    }
}

#[test]
fn reads_at_any_byte_position_return_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", settings(1));
    let mut expected = Vec::new();
    for i in 0..10 {
        let payload = message(i * 13);
        append_keyed(&store, &partition, &payload);
        expected.extend_from_slice(&payload);
    }
    let reader = store.open_segment(&partition, 0).unwrap();
    assert!(reader.info().expect("info").sealed);
    for position in 0..expected.len() {
        for len in [1, 3, 17, 200] {
            let mut buf = vec![0u8; len];
            let n = reader.read_at(position as u64, &mut buf).unwrap();
            let want = &expected[position..(position + len).min(expected.len())];
            assert_eq!(&buf[..n], want, "position {position} length {len}");
        }
    }
}

#[test]
fn locate_time_and_key_lookups_find_the_right_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", settings(2)).unwrap();
    let mut positions = Vec::new();
    let before = commitfs_now();
    for i in 0..60 {
        let partition = topic.partition((i % 2) as u32).unwrap();
        let payload = message(i);
        let offset = append_keyed(&store, &partition, &payload);
        positions.push(((i % 2) as u32, offset, payload));
    }
    for (p, offset, payload) in &positions {
        let partition = topic.partition(*p).unwrap();
        let location = store.locate(&partition, *offset).unwrap();
        let reader = store
            .open_segment(&partition, location.segment_base)
            .unwrap();
        let mut buf = vec![0u8; location.len as usize];
        reader.read_at(location.position, &mut buf).unwrap();
        assert_eq!(&buf, payload);
        assert_eq!(&store.read_message(&partition, *offset).unwrap(), payload);
    }
    let partition = topic.partition(0).unwrap();
    assert_eq!(store.offset_for_time(&partition, before).unwrap(), Some(0));
    assert_eq!(store.offset_for_time(&partition, i64::MAX).unwrap(), None);
    // key-3 is the key of messages 3, 10, 17, ... (i % 7 == 3).
    let mut found = Vec::new();
    store
        .for_each_key_match(&topic, None, b"key-3", |m| {
            found.push((m.partition, m.offset, m.payload().unwrap().to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    let mut expected: Vec<_> = positions
        .iter()
        .filter(|(_, _, m)| m.starts_with(b"key-3:"))
        .cloned()
        .collect();
    expected.reverse();
    assert_eq!(found, expected, "newest first, every occurrence");
    let mut in_partition_1 = Vec::new();
    store
        .for_each_key_match(&topic, Some(1), b"key-3", |m| {
            in_partition_1.push(m.offset);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(in_partition_1
        .iter()
        .all(|o| positions.iter().any(|(p, off, _)| *p == 1 && off == o)));
    assert!(!in_partition_1.is_empty());
    let mut none = 0;
    store
        .for_each_key_match(&topic, None, b"key-30", |_| {
            none += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(none, 0, "a key never written has no match");
}

fn commitfs_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_clean_reopen_keeps_everything_without_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let store = open(dir.path());
        let partition = fixtures::new_partition(&store, "t", settings(1));
        for i in 0..25 {
            let payload = message(i);
            append_keyed(&store, &partition, &payload);
            expected.extend_from_slice(&payload);
        }
        store.close().unwrap();
    }
    assert!(
        !dir.path().join("abort").exists(),
        "a clean stop removes the abort marker"
    );
    // Damage a record that the checkpoint covers: a clean open does not scan, so the store
    // opens with every offset; the damaged message is refused when read, never served.
    let log = dir.path().join("commitlog").join("00000000000000000000");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[KEYED_BATCH_OVERHEAD + 3] ^= 0x20; // inside the first message's payload
    std::fs::write(&log, &bytes).unwrap();
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset(), 25);
    let error = store.read_message(&partition, 0).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert_eq!(store.read_message(&partition, 1).unwrap(), message(1));
    let reader = store.open_segment(&partition, 10).unwrap();
    let mut buf = vec![0u8; reader.info().expect("info").bytes as usize];
    reader.read_at(0, &mut buf).unwrap();
    let first_segment_len: usize = (0..10).map(|i| message(i).len()).sum();
    assert_eq!(
        buf,
        expected[first_segment_len..first_segment_len + buf.len()]
    );
}

/// Commit-log bytes of one keyed message in a batch of its own besides its payload (README
/// "On-disk format"): the batch header, then its end and key-length slots.
const KEYED_BATCH_OVERHEAD: usize = 60 + 8;

/// Writes `count` messages to one partition, then stops as a crashed process would.
/// Returns the messages and each one's batch's (start, end) byte range in the commit log.
fn crashed_store(dir: &Path, count: usize) -> (Vec<Vec<u8>>, Vec<(usize, usize)>) {
    let store = open(dir);
    let partition = fixtures::new_partition(&store, "t", settings(1));
    let mut messages = Vec::new();
    let mut ranges = Vec::new();
    let mut position = 0;
    for i in 0..count {
        let payload = message(i);
        append_keyed(&store, &partition, &payload);
        ranges.push((position, position + KEYED_BATCH_OVERHEAD + payload.len()));
        position += KEYED_BATCH_OVERHEAD + payload.len();
        messages.push(payload);
    }
    store.halt_without_cleanup();
    (messages, ranges)
}

fn assert_holds_exactly(dir: &Path, messages: &[Vec<u8>]) {
    let store = open(dir);
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset(), messages.len() as u64);
    for (offset, payload) in messages.iter().enumerate() {
        assert_eq!(
            &store.read_message(&partition, offset as u64).unwrap(),
            payload
        );
    }
    assert_eq!(partition_bytes(&store, &partition), messages.concat());
    // The store takes new messages right after the recovered ones.
    let next = append_keyed(&store, &partition, b"k:after recovery\n");
    assert_eq!(next, messages.len() as u64);
    let mut latest = None;
    store
        .for_each_key_match(&topic, None, b"k", |m| {
            latest = Some(m.offset);
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(latest, Some(next), "the index works after recovery");
}

#[test]
fn an_unclean_stop_loses_nothing_that_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let (messages, _) = crashed_store(dir.path(), 40);
    assert!(dir.path().join("abort").exists());
    assert_holds_exactly(dir.path(), &messages);
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_position() {
    let template = tempfile::tempdir().unwrap();
    let (messages, ranges) = crashed_store(template.path(), 12);
    let (start, end) = *ranges.last().unwrap();
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        fixtures::copy_dir(template.path(), dir.path());
        let log = dir.path().join("commitlog").join("00000000000000000000");
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[cut..end].fill(0);
        std::fs::write(&log, &bytes).unwrap();
        assert_holds_exactly(dir.path(), &messages[..messages.len() - 1]);
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_cuts_it_and_elsewhere_refuses_the_open() {
    let template = tempfile::tempdir().unwrap();
    let (messages, ranges) = crashed_store(template.path(), 12);
    for damaged in [3, 11] {
        let (start, end) = ranges[damaged];
        for bit in [0, 37, 8 * (end - start) - 1] {
            let dir = tempfile::tempdir().unwrap();
            fixtures::copy_dir(template.path(), dir.path());
            let log = dir.path().join("commitlog").join("00000000000000000000");
            let mut bytes = std::fs::read(&log).unwrap();
            bytes[start + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&log, &bytes).unwrap();
            if damaged == 11 {
                // Nothing valid follows: a torn tail, which a crash can leave.
                assert_holds_exactly(dir.path(), &messages[..damaged]);
                continue;
            }
            // Valid records follow the damage: not a crash's tail, so nothing is cut.
            let error = Store::open(dir.path(), small_config())
                .err()
                .expect("damage in the middle of the log refuses the open");
            fixtures::assert_needs_repair(error, &format!("{} byte {start}:", log.display()));
            assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log is untouched");
        }
    }
}

#[test]
fn garbage_after_the_last_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (messages, ranges) = crashed_store(dir.path(), 5);
    let log = dir.path().join("commitlog").join("00000000000000000000");
    let mut bytes = std::fs::read(&log).unwrap();
    let end = ranges.last().unwrap().1;
    for (i, byte) in bytes[end..end + 500].iter_mut().enumerate() {
        *byte = (i * 31 + 7) as u8;
    }
    std::fs::write(&log, &bytes).unwrap();
    assert_holds_exactly(dir.path(), &messages);
}

#[test]
fn deleted_consume_queues_and_index_are_rebuilt() {
    for unclean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (messages, _) = crashed_store(dir.path(), 35);
        if !unclean {
            open(dir.path()).close().unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("queues")).unwrap();
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        assert_holds_exactly(dir.path(), &messages);
    }
}

#[test]
fn a_left_abort_marker_after_a_clean_stop_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (messages, _) = crashed_store(dir.path(), 8);
    open(dir.path()).close().unwrap();
    std::fs::write(dir.path().join("abort"), b"1\n").unwrap();
    assert_holds_exactly(dir.path(), &messages);
}

#[test]
fn a_second_process_cannot_open_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let error = Store::open(dir.path(), small_config())
        .err()
        .expect("second open refused");
    assert!(matches!(error, StoreError::Locked(_)), "{error}");
}

#[test]
fn oversize_messages_and_bad_names_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", settings(1));
    let big = vec![b'x'; 4097];
    assert!(matches!(
        store.append(&partition, &big, None),
        Err(StoreError::MessageTooLarge { .. })
    ));
    let batch = [
        NewMessage {
            payload: b"ok\n",
            key_len: None,
        },
        NewMessage {
            payload: &big,
            key_len: None,
        },
    ];
    assert!(matches!(
        store.append_batch(&partition, &batch),
        Err(StoreError::MessageTooLarge { .. })
    ));
    assert_eq!(partition.end_offset(), 0);
    assert!(matches!(
        store.create_topic("t", settings(1)),
        Err(StoreError::TopicExists(_))
    ));
    assert!(matches!(
        store.create_topic("bad/name", settings(1)),
        Err(StoreError::InvalidTopicName(_))
    ));
    assert!(matches!(
        store.create_topic("z", settings(0)),
        Err(StoreError::InvalidSetting(_))
    ));
}

#[test]
fn topic_settings_persist_and_partitions_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let topic = store.create_topic("t", settings(2)).unwrap();
        append_keyed(&store, &topic.partition(1).unwrap(), b"a:1\n");
        let mut grown = topic.settings();
        grown.partitions = 5;
        grown.framing = Framing::Raw;
        grown.retention_ms = Some(60_000);
        store.update_topic(&topic, grown.clone()).unwrap();
        assert_eq!(topic.partitions().len(), 5);
        let mut shrunk = grown;
        shrunk.partitions = 4;
        assert!(matches!(
            store.update_topic(&topic, shrunk),
            Err(StoreError::InvalidSetting(_))
        ));
        append_keyed(&store, &topic.partition(4).unwrap(), b"b:2\n");
    }
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let settings = topic.settings();
    assert_eq!(
        (settings.partitions, settings.framing, settings.retention_ms),
        (5, Framing::Raw, Some(60_000))
    );
    assert_eq!(topic.partition(1).unwrap().end_offset(), 1);
    assert_eq!(topic.partition(4).unwrap().end_offset(), 1);
}

#[test]
fn a_deleted_topic_is_gone_and_its_name_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", settings(1)).unwrap();
    let old_partition = topic.partition(0).unwrap();
    append_keyed(&store, &old_partition, b"k:old\n");
    store.delete_topic("t").unwrap();
    assert!(store.topic("t").is_none());
    assert!(matches!(
        store.append(&old_partition, b"late\n", None),
        Err(StoreError::NoSuchTopic(_))
    ));
    let topic = store.create_topic("t", settings(1)).unwrap();
    assert_eq!(topic.partition(0).unwrap().end_offset(), 0);
    let mut found = 0;
    store
        .for_each_key_match(&topic, None, b"k", |_| {
            found += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        found, 0,
        "the old topic's keys do not leak into the new one"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.topic("t").unwrap().partition(0).unwrap().end_offset(),
        0
    );
}

#[test]
fn retention_by_bytes_and_time_moves_the_start_in_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut by_bytes = settings(1);
    by_bytes.retention_bytes = Some(200);
    let topic = store.create_topic("t", by_bytes).unwrap();
    let partition = topic.partition(0).unwrap();
    for i in 0..45 {
        append_keyed(&store, &partition, format!("k:{i:08}\n").as_bytes()); // 11 bytes each
    }
    let reader_of_oldest = store.open_segment(&partition, 0).unwrap();
    store.enforce_retention().unwrap();
    // Segments of 110 bytes; 495 in all; removing 0 and 10 keeps 275 >= 200, removing 20 would
    // keep 165 < 200.
    assert_eq!(partition.start_offset(), 20);
    assert_eq!(
        partition
            .segments()
            .expect("segments")
            .first()
            .unwrap()
            .base_offset,
        20
    );
    assert!(store.read_message(&partition, 19).is_err());
    let mut kept = vec![0u8; 110];
    assert_eq!(
        reader_of_oldest.read_at(0, &mut kept).unwrap(),
        110,
        "an open reader keeps its segment"
    );
    assert!(kept.starts_with(b"k:00000000\n"));

    let mut by_time = settings(1);
    by_time.retention_ms = Some(1);
    let timed = fixtures::new_partition(&store, "timed", by_time);
    for i in 0..25 {
        append_keyed(&store, &timed, format!("k:{i}\n").as_bytes());
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.enforce_retention().unwrap();
    assert_eq!(
        timed.start_offset(),
        20,
        "both sealed segments expired; the active one stays"
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store
            .topic("timed")
            .unwrap()
            .partition(0)
            .unwrap()
            .start_offset(),
        20
    );
    assert_eq!(
        store
            .topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .start_offset(),
        20
    );
}

#[test]
fn commit_log_files_go_when_no_partition_needs_them_or_the_disk_ceiling_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_disk_bytes: Some(400 * 1024),
        ..small_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let mut short = settings(1);
    short.retention_bytes = Some(1);
    let kept = fixtures::new_partition(&store, "kept", settings(1));
    let trimmed = fixtures::new_partition(&store, "trimmed", short);
    let payload = vec![b'y'; 1000];
    for _ in 0..600 {
        store.append(&kept, &payload, None).unwrap();
        store.append(&trimmed, &payload, None).unwrap();
    }
    let files_before = dir.path().join("commitlog").read_dir().unwrap().count();
    store.enforce_retention().unwrap();
    let files_after = dir.path().join("commitlog").read_dir().unwrap().count();
    assert!(
        files_after < files_before,
        "{files_before} -> {files_after}"
    );
    assert!(
        store.disk_usage() <= 400 * 1024,
        "disk usage {}",
        store.disk_usage()
    );
    let start = kept.start_offset();
    assert!(
        start > 0 && start % 10 == 0,
        "the ceiling removed whole sealed segments: start {start}"
    );
    for offset in start..kept.end_offset() {
        assert_eq!(
            store.read_message(&kept, offset).unwrap(),
            payload,
            "offset {offset}"
        );
    }
}

#[test]
fn appends_from_many_threads_keep_every_partition_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", settings(4)).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let (store, topic) = (&store, &topic);
            scope.spawn(move || {
                for i in 0..500 {
                    let partition = topic.partition((i % 4) as u32).unwrap();
                    store
                        .append(&partition, format!("t{thread}-{i}\n").as_bytes(), None)
                        .unwrap();
                }
            });
        }
    });
    let mut lines = Vec::new();
    for partition in topic.partitions() {
        assert_eq!(partition.end_offset(), 1000);
        let bytes = partition_bytes(&store, &partition);
        lines.extend(String::from_utf8(bytes).unwrap().lines().map(str::to_owned));
    }
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 4000, "every message exactly once");
    store.halt_without_cleanup();
    drop(store);
    let store = open(dir.path());
    for partition in store.topic("t").unwrap().partitions() {
        assert_eq!(partition.end_offset(), 1000);
    }
}

#[test]
fn a_full_disk_refuses_appends_with_enospc_and_keeps_what_was_stored() {
    let disk = fixtures::SmallDisk::new(2 * 1024 * 1024);
    let data = disk.dir.path().join("data");
    let config = StoreConfig {
        commit_log_file_bytes: 256 * 1024,
        ..small_config()
    };
    let store = Store::open(&data, config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", settings(1));
    let payload = vec![b'z'; 3000];
    // Append until the disk refuses three times in a row. A refusal may be transient while the
    // preparer thread's allocation of the next file holds the last free blocks, so refusals
    // and successes may alternate for a while; every success gets the next offset.
    let mut stored = 0u64;
    let mut refusals_in_a_row = 0;
    while refusals_in_a_row < 3 {
        match store.append(&partition, &payload, None) {
            Ok(outcome) => {
                assert_eq!(outcome.first_offset, stored);
                stored += 1;
                refusals_in_a_row = 0;
            }
            Err(error) => {
                assert!(matches!(error, StoreError::DiskFull(_)), "{error}");
                refusals_in_a_row += 1;
            }
        }
        assert!(stored < 10_000, "a 2 MiB disk cannot hold this much");
    }
    assert!(stored > 0);
    assert_eq!(
        partition.end_offset(),
        stored,
        "refused messages left nothing behind"
    );
    for offset in 0..stored {
        assert_eq!(store.read_message(&partition, offset).unwrap(), payload);
    }
    // After a crash everything stored is recovered.
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(&data, config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), stored);
    assert_eq!(store.read_message(&partition, stored - 1).unwrap(), payload);
}

/// A store where topic `quiet` has 3 messages in the first commit-log file, followed by
/// 300 KB of topic `busy`: the disk ceiling then removes that file from under `quiet`.
fn a_quiet_topic_behind_a_busy_one(
    dir: &Path,
    config: StoreConfig,
) -> (Arc<Store>, Arc<Partition>) {
    let store = Store::open(dir, config).unwrap();
    let quiet = fixtures::new_partition(&store, "quiet", settings(1));
    let busy = fixtures::new_partition(&store, "busy", settings(1));
    for _ in 0..3 {
        store.append(&quiet, b"old\n", None).unwrap();
    }
    let payload = vec![b'b'; 1000];
    for _ in 0..300 {
        store.append(&busy, &payload, None).unwrap();
    }
    (store, quiet)
}

#[test]
fn a_reader_of_an_active_segment_the_disk_ceiling_emptied_serves_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_disk_bytes: Some(256 * 1024),
        ..small_config()
    };
    let (store, quiet) = a_quiet_topic_behind_a_busy_one(dir.path(), config);
    store.enforce_retention().unwrap();
    assert_eq!(
        (quiet.start_offset(), quiet.end_offset()),
        (3, 3),
        "the ceiling took the first commit-log file and all of `quiet`"
    );
    // `tail -F active`: opened while the segment is empty, read after the next message.
    let reader = store.open_segment(&quiet, 0).unwrap();
    store.append(&quiet, b"new\n", None).unwrap();
    assert_eq!(reader.info().expect("info").bytes, 4);
    let mut buf = [0u8; 16];
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"new\n");
}

#[test]
fn a_key_lookup_during_appends_of_that_key_always_finds_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 1_000_000,
        index_entries: 1_000_000,
        ..small_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.create_topic("t", settings(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    append_keyed(&store, &partition, b"k:0\n");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut lookups, mut stale) = (0u64, 0u64);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Stops the lookups however this thread ends.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            let _done = Done(&done);
            for _ in 0..300_000 {
                append_keyed(&store, &partition, b"k:v\n");
            }
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            // Every message has key `k`, so the newest match is at least the last published.
            let newest_published = partition.end_offset() - 1;
            let mut found = None;
            store
                .for_each_key_match(&topic, None, b"k", |m| {
                    found = Some(m.offset);
                    ControlFlow::Break(())
                })
                .unwrap();
            lookups += 1;
            if found.is_none_or(|offset| offset < newest_published) {
                stale += 1;
            }
        }
    });
    assert!(lookups > 0);
    assert_eq!(
        stale, 0,
        "{stale} of {lookups} lookups missed the newest message"
    );
}

#[test]
fn a_damaged_layout_in_store_toml_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store(dir.path(), 3);
    open(dir.path()).close().unwrap();
    let meta = dir.path().join("store.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains("segment_messages = 10"));
    std::fs::write(
        &meta,
        text.replace("segment_messages = 10", "segment_messages = 0"),
    )
    .unwrap();
    let error = Store::open(dir.path(), small_config())
        .err()
        .expect("a zero segment size is refused");
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{error}");
}

#[test]
fn a_deleted_key_index_alone_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (messages, _) = crashed_store(dir.path(), 35);
    open(dir.path()).close().unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let mut newest = None;
    store
        .for_each_key_match(&topic, None, b"key-3", |m| {
            newest = Some(m.offset);
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(
        newest,
        Some(31),
        "key-3 is the key of messages 3, 10, ..., 31"
    );
    drop(store);
    assert_holds_exactly(dir.path(), &messages);
}

#[test]
fn recovery_keeps_the_log_when_retention_removed_the_checkpoints_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut short = settings(1);
    short.retention_bytes = Some(1);
    let partition = fixtures::new_partition(&store, "t", short);
    let payload = vec![b'r'; 1000];
    for _ in 0..100 {
        store.append(&partition, &payload, None).unwrap();
    }
    store.checkpoint().unwrap(); // its log end is in the second commit-log file
    for _ in 0..200 {
        store.append(&partition, &payload, None).unwrap();
    }
    // Retention removes files, then the checkpoint after it fails (as on a full disk).
    std::fs::create_dir(dir.path().join("checkpoint.tmp")).unwrap();
    assert!(store.enforce_retention().is_err());
    let second_file = dir.path().join("commitlog").join("00000000000000065536");
    assert!(!second_file.exists());
    let start = partition.start_offset();
    assert!(start > 100);
    store.halt_without_cleanup();
    drop(store);
    std::fs::remove_dir(dir.path().join("checkpoint.tmp")).unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(
        partition.end_offset(),
        300,
        "nothing after the checkpoint lost"
    );
    assert!(partition.start_offset() <= start);
    for offset in start..300 {
        assert_eq!(store.read_message(&partition, offset).unwrap(), payload);
    }
}

#[test]
fn a_queue_entry_pointing_at_another_topics_message_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let a = store.create_topic("a", settings(1)).unwrap();
        let b = store.create_topic("b", settings(1)).unwrap();
        let (a, b) = (a.partition(0).unwrap(), b.partition(0).unwrap());
        store.append(&a, b"aaaa\n", None).unwrap();
        store.append(&a, b"aaaa\n", None).unwrap();
        // The last message stays intact: a damaged last record refuses the open instead.
        store.append(&a, b"aaaa\n", None).unwrap();
        store.append(&b, b"secret\n", None).unwrap();
        store.close().unwrap();
    }
    // Message 1 of `a` now names `b`'s message in the commit log.
    let queue = |topic: u32| {
        dir.path()
            .join("queues")
            .join(topic.to_string())
            .join("0")
            .join("00000000000000000000")
    };
    let of_b = std::fs::read(queue(2)).unwrap();
    let mut of_a = std::fs::read(queue(1)).unwrap();
    of_a[20..28].copy_from_slice(&of_b[0..8]);
    std::fs::write(queue(1), &of_a).unwrap();
    let store = open(dir.path());
    let a = store.topic("a").unwrap().partition(0).unwrap();
    let reader = store.open_segment(&a, 0).unwrap();
    let mut buf = [0u8; 64];
    let read = reader.read_at(0, &mut buf);
    assert!(
        read.is_err(),
        "served {:?}",
        String::from_utf8_lossy(&buf[..*read.as_ref().unwrap()])
    );
}

#[test]
fn recovery_starts_a_partition_where_the_disk_ceiling_cut_it_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        max_disk_bytes: Some(300 * 1024),
        ..small_config()
    };
    let (store, quiet) = a_quiet_topic_behind_a_busy_one(dir.path(), config.clone());
    for _ in 0..3 {
        store.append(&quiet, b"new\n", None).unwrap();
    }
    store.checkpoint().unwrap();
    // The ceiling cuts `quiet`'s active segment; the checkpoint after it fails.
    std::fs::create_dir(dir.path().join("checkpoint.tmp")).unwrap();
    assert!(store.enforce_retention().is_err());
    assert_eq!(quiet.start_offset(), 3);
    store.halt_without_cleanup();
    drop(store);
    std::fs::remove_dir(dir.path().join("checkpoint.tmp")).unwrap();

    let store = Store::open(dir.path(), config).unwrap();
    let quiet = store.topic("quiet").unwrap().partition(0).unwrap();
    assert_eq!((quiet.start_offset(), quiet.end_offset()), (3, 6));
    assert_eq!(
        quiet.segments().expect("segments")[0].bytes,
        12,
        "the segment holds the kept messages"
    );
    assert_eq!(partition_bytes(&store, &quiet), b"new\nnew\nnew\n");
}
