//! What the second `cargo mutants` pass over `src/store/partition.rs` found untested (issue 9):
//! the mutants the first pass (`mutant_kill_tests_9`) did not reach. Each test says which
//! mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::{Store, StoreError};

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

fn log_file(dir: &Path) -> PathBuf {
    dir.join("commitlog").join(format!("{:020}", 0))
}

/// Asserts that `error` refuses the open as damage at byte `at` of commit-log file `file`, in
/// the record of message `offset`.
#[track_caller]
fn assert_damage_at(error: StoreError, file: &Path, at: usize, offset: u64) {
    match error {
        StoreError::Corrupt {
            path,
            offset: byte,
            reason,
        } => {
            assert_eq!(path, file, "{reason}");
            assert_eq!(byte, at as u64, "{reason}");
            assert!(reason.contains(&format!("message {offset}")), "{reason}");
        }
        other => panic!("the open failed with {other}, not as damage at byte {at}"),
    }
}

/// A store whose last batch claims (in its size field) to run past the end of its commit-log
/// file is refused as damage to that batch, naming the file and the byte it starts at, not
/// as a failed read of bytes the file never had. Kills `-` -> `+` in the room left in the
/// file in `Partition::read_record_from_disk`.
#[test]
fn a_last_batch_whose_size_runs_past_its_file_refuses_the_open_naming_its_byte() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 3);

    let log = log_file(dir.path());
    let mut bytes = std::fs::read(&log).unwrap();
    let last = *fixtures::batch_starts(&bytes).last().unwrap();
    bytes[last..last + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&log, &bytes).unwrap();

    let error = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("the open is refused");
    assert_damage_at(error, &log, last, 2);
}

/// The last message's queue entry copied whole from another topic's last message (a batch
/// that holds that offset, and whose table agrees with the entry) refuses the open: the
/// store never takes another topic's message as this partition's newest. Kills the
/// `owns(..)` match guard -> `true` in `Partition::read_record_from_disk`, which opened the
/// store with the other topic's message as partition `a`'s last.
#[test]
fn a_last_queue_entry_copied_from_another_topic_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    // Message 2 of `a` (topic id 1) gets the queue entry of message 2 of `b` (topic id 2).
    fixtures::store_with_a_queue_entry_of_b_copied_into_a(dir.path(), 2);

    let error = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("the open is refused");
    let text = error.to_string();
    assert!(
        text.contains("message 2") && text.contains("topic id 2"),
        "{text}"
    );
}

/// A partition says which topic it belongs to and which of its partitions it is: each
/// topic's partitions carry its id (ids start at 1 and are never reused) and their index,
/// also after a reopen. Kills `Partition::topic_id` -> 0 and -> 1 (the method has no caller
/// inside the crate) and `Partition::index` -> 0 and -> 1.
#[test]
fn a_partition_carries_its_topics_id_and_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in ["a", "b", "c"] {
        let topic = store.create_topic(name, fixtures::lines_topic(3)).unwrap();
        let found: Vec<(u32, u32)> = topic
            .partitions()
            .iter()
            .map(|partition| (partition.topic_id(), partition.index()))
            .collect();
        let id = topic.id();
        assert_eq!(found, [(id, 0), (id, 1), (id, 2)], "topic {name}");
    }
    store.close().unwrap();

    let store = open(dir.path());
    let found: Vec<(u32, u32)> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let partition = store.topic(name).unwrap().partition(2).unwrap();
            (partition.topic_id(), partition.index())
        })
        .collect();
    assert_eq!(found, [(1, 2), (2, 2), (3, 2)]);
    store.close().unwrap();
}

/// A garbled consume-queue entry spoils only its own message. The segment whose first
/// message it is is an error naming the queue file and byte (`EIO` through the mount),
/// never a segment that does not exist; every other message of the partition, also in
/// the segment whose first message is the partition's first and damaged, is still found.
/// Kills `+` -> `-` in `Partition::segment`'s "removed meanwhile" guard (which took the
/// damaged segment 10 for one retention removed) and `>` -> `>=` in `Partition::locate`
/// (which read the partition's first message to place every message of its segment).
#[test]
fn a_garbled_first_entry_of_a_segment_spoils_only_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 25);

    let queue = |base: u64| fixtures::queue_file(dir.path(), base);
    for base in [0, 10] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(queue(base))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xab; 20], 0).unwrap();
    }

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let names_entry_10 = |error: StoreError| match error {
        StoreError::Corrupt { path, offset, .. } => {
            assert_eq!((path, offset), (queue(10), 0));
        }
        other => panic!("segment 10 failed with {other}, not as a damaged queue entry"),
    };
    names_entry_10(partition.segment(10).unwrap_err());
    names_entry_10(store.open_segment(&partition, 10).err().unwrap());
    assert_eq!(partition.segment(20).unwrap().unwrap().messages, 5);

    // `line(n)` is 7 bytes below 10 and 8 from 10 on: message 3 starts at byte 21 of
    // segment 0, message 13 at byte 24 of segment 10.
    let location = partition.locate(3).unwrap();
    assert_eq!(
        (location.segment_base, location.position, location.len),
        (0, 21, 7)
    );
    let location = partition.locate(13).unwrap();
    assert_eq!(
        (location.segment_base, location.position, location.len),
        (10, 24, 8)
    );
    assert_eq!(
        store.read_message(&partition, 13).unwrap(),
        fixtures::line(13)
    );
    store.close().unwrap();
}
