//! What a `cargo mutants` pass over `src/store/partition.rs` found untested (issue 9). Each
//! test says which mutants it kills.

mod fixtures;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use commitfs::store::{Store, StoreError};
use fixtures::released::{append_batch, message, small_files_config, store_the_ceiling_cut_into};

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

/// A topic's creation time (what its directory shows as its times until it holds a message)
/// is the wall-clock time of its creation, and stays that across a reopen. Kills the mutants
/// that make `Topic::created_ms` 0, 1 or -1.
#[test]
fn a_topic_keeps_the_time_it_was_created_at() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = now_ms();
    let created = store
        .create_topic("t", fixtures::keyed_topic(1))
        .unwrap()
        .created_ms();
    let after = now_ms();
    assert!(
        (before..=after).contains(&created),
        "created at {created}, not within {before}..={after}"
    );
    store.close().unwrap();

    let store = open(dir.path());
    assert_eq!(store.topic("t").unwrap().created_ms(), created);
    store.close().unwrap();
}

/// A segment read through a reader (what `cat` of a segment file does) checks each batch it
/// serves against its CRC32C: a flipped bit in a message's bytes in the log is an error
/// naming the commit-log file and the byte its batch starts at, never the altered bytes,
/// while the bytes of the messages before it still read. Kills
/// `SegmentReader::verify_once` -> `Ok(())`.
#[test]
fn a_segment_reader_refuses_a_message_whose_bytes_were_altered() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures::AlteredLine {
        store,
        partition,
        log_file,
        batch_at,
    } = fixtures::store_with_line_1_altered_in_the_log(dir.path());

    let reader = store.open_segment(&partition, 0).unwrap();
    let mut segment = vec![0u8; 100];
    match reader.read_at(0, &mut segment) {
        Err(StoreError::Corrupt {
            path: named,
            offset,
            ..
        }) => {
            assert_eq!(named, log_file, "the error names the commit-log file");
            assert_eq!(offset, batch_at, "and the byte its batch starts at");
        }
        other => panic!("a segment with an altered message read as {other:?}"),
    }
    let first = fixtures::line(0);
    let mut head = vec![0u8; first.len()];
    assert_eq!(reader.read_at(0, &mut head).unwrap(), first.len());
    assert_eq!(head, first);
    drop(reader);
    store.close().unwrap();
}

/// A partition's last timestamp (the time its directory and active segment show as
/// modified) is its newest message's: none while it holds none, then the time of the last
/// append, also after a reopen. Kills `Partition::last_timestamp` -> `Some(1)`.
#[test]
fn a_partitions_last_timestamp_is_its_newest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    assert_eq!(partition.last_timestamp(), None, "no message yet");
    let before = now_ms();
    fixtures::append_lines(&store, &partition, 0, 3);
    let after = now_ms();
    let last = partition
        .last_timestamp()
        .expect("a timestamp once it holds messages");
    assert!(
        (before..=after).contains(&last),
        "last timestamp {last}, not within {before}..={after}"
    );
    store.close().unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.last_timestamp(), Some(last));
    store.close().unwrap();
}

/// Once the disk ceiling took the oldest messages of a segment, so that the partition starts
/// part way into it, `locate` (what `user.offset.<N>` answers) still gives each message's
/// byte in its segment as a reader serves it, whose first byte is the first message still
/// stored: the bytes there are the message, in the cut segment and in the next. Kills `>` ->
/// `<` in `Partition::locate`'s choice of the shift.
#[test]
fn locations_in_a_segment_the_disk_ceiling_cut_into_point_at_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_the_ceiling_cut_into(dir.path());
    store.close().unwrap();
    drop(store);

    let store = Store::open(dir.path(), small_files_config()).unwrap();
    append_batch(&store, 18, 25);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let start = partition.start_offset();
    assert!(
        start > 0 && start < 20,
        "the ceiling kept messages from {start}"
    );
    for offset in start..25 {
        let location = store.locate(&partition, offset).unwrap();
        assert_eq!(location.segment_base, offset / 20 * 20, "offset {offset}");
        let reader = store
            .open_segment(&partition, location.segment_base)
            .unwrap();
        let mut bytes = vec![0u8; location.len as usize];
        assert_eq!(
            reader.read_at(location.position, &mut bytes).unwrap(),
            bytes.len()
        );
        assert_eq!(bytes, message(offset as usize), "offset {offset}");
    }
    store.close().unwrap();
}

/// A consume-queue entry copied whole from another topic's queue, pointing at that topic's
/// message of the same offset (a batch that does hold that offset, and whose table agrees
/// with the entry), is refused: a damaged queue never serves another topic's message. Kills
/// the second `&&` -> `||` in `Partition::owns`, which took any batch of a partition with
/// the same index (here 0 in both topics) as this partition's.
#[test]
fn a_queue_entry_copied_from_another_topic_at_the_same_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Message 1 of `a` (not the last: a damaged last message refuses the open) gets the
    // queue entry of message 1 of `b` (topic id 2).
    fixtures::store_with_a_queue_entry_of_b_copied_into_a(dir.path(), 1);

    let store = open(dir.path());
    let a = store.topic("a").unwrap().partition(0).unwrap();
    match store.read_message(&a, 1) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("message 1"), "{reason}");
        }
        other => panic!("message 1 of a read as {other:?}"),
    }
    assert_eq!(store.read_message(&a, 0).unwrap(), b"public\n");
    assert_eq!(store.read_message(&a, 2).unwrap(), b"public\n");
    store.close().unwrap();
}

/// `offset_for_time` (what `user.time.<T>` answers) finds the first message at or after a
/// time wherever it lies: five segments appended at five distinct times, and each
/// segment's first timestamp finds its first message, one millisecond after its last
/// timestamp the next segment's first. Kills `-` -> `+` in the middle of
/// `Partition::offset_for_time`'s binary search (`low + (high + low) / 2` overshoots once
/// `low` has moved: the search then never ends, so with that mutant this test hangs).
#[test]
fn a_time_lookup_finds_the_first_message_at_or_after_the_time_in_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let segments = 5;
    for segment in 0..segments {
        // Each segment at a later millisecond than the one before.
        while partition
            .last_timestamp()
            .is_some_and(|last| now_ms() <= last)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        fixtures::append_lines(&store, &partition, segment * 10, segment * 10 + 10);
    }
    let infos = partition.segments().unwrap();
    let times: Vec<(i64, i64)> = infos
        .iter()
        .take(segments as usize)
        .map(|info| (info.first_timestamp.unwrap(), info.last_timestamp.unwrap()))
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0].1 < pair[1].0),
        "segments at distinct times: {times:?}"
    );
    for (segment, (first, last)) in times.iter().enumerate() {
        let base = segment as u64 * 10;
        assert_eq!(
            store.offset_for_time(&partition, *first).unwrap(),
            Some(base),
            "the first timestamp of segment {base}"
        );
        let next = Some(base + 10).filter(|&next| next < segments * 10);
        assert_eq!(
            store.offset_for_time(&partition, last + 1).unwrap(),
            next,
            "just after the last timestamp of segment {base}"
        );
    }
    store.close().unwrap();
}

/// Only the segments from the oldest stored to the active one exist: a segment base past the
/// active segment is no segment (a lookup of its file name finds nothing), nor is a base
/// that is not a multiple of the segment size. Kills the first `&&` -> `||` in
/// `Partition::segment`, which took any aligned base as a segment.
#[test]
fn segments_past_the_active_one_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 15);
    assert_eq!(partition.segment(10).unwrap().unwrap().messages, 5);
    assert_eq!(
        partition.segment(20).unwrap(),
        None,
        "past the active segment"
    );
    assert_eq!(partition.segment(5).unwrap(), None, "not a segment's base");
    assert!(matches!(
        store.open_segment(&partition, 20),
        Err(StoreError::NoSuchSegment { .. })
    ));
    store.close().unwrap();
}

/// A topic deleted while someone holds it says so, and its settings can no longer change
/// (a `setxattr` on a directory removed meanwhile): the store refuses rather than bringing
/// the topic back. Kills `Topic::is_deleted` -> `false`.
#[test]
fn a_deleted_topic_held_by_a_reader_says_so_and_refuses_new_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    assert!(!topic.is_deleted());
    store.delete_topic("t").unwrap();
    assert!(topic.is_deleted());
    let mut settings = topic.settings();
    settings.retention_ms = Some(1000);
    assert!(store.update_topic(&topic, settings).is_err());
    assert!(store.topic("t").is_none());
    store.close().unwrap();
}

/// Keyed messages go to partition `(murmur2(key) & 0x7fffffff) % n` (Kafka's Java client),
/// keyless ones to each partition in turn. Kills `Topic::choose_partition` -> 0 and -> 1.
#[test]
fn keys_choose_kafkas_partition_and_keyless_messages_go_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", fixtures::keyed_topic(4)).unwrap();
    for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let kafka = (commitfs::store::murmur2(key.as_bytes()) & 0x7fff_ffff) % 4;
        assert_eq!(
            topic.choose_partition(Some(key.as_bytes())),
            kafka,
            "key {key}"
        );
    }
    let keyless: Vec<u32> = (0..8).map(|_| topic.choose_partition(None)).collect();
    let first = keyless[0];
    let in_turn: Vec<u32> = (0..8).map(|n| (first + n) % 4).collect();
    assert_eq!(keyless, in_turn);
    store.close().unwrap();
}
