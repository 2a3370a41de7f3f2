//! What a `cargo mutants` pass over `src/store/recovery.rs` found untested (issue 9). Each
//! test says which mutants it kills.

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Partition, Store, StoreConfig, StoreError};

mod fixtures;

#[cfg(feature = "failpoints")]
use fixtures::power_loss::{crash_copy, Fill, PowerLoss};
use fixtures::{append_lines, assert_reads, batch_starts};

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open store")
}

/// Replaces the first `from` in the metadata file `name` under `dir`.
fn edit_meta_file(dir: &Path, name: &str, from: &str, to: &str) {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// A closed store whose topic `t` has `partitions` partitions, five lines in each of 0 and 1.
fn closed_store_with_two_filled_partitions(dir: &Path, partitions: u32) {
    let store = open(dir);
    let topic = store
        .create_topic("t", fixtures::keyed_topic(partitions))
        .unwrap();
    append_lines(&store, &topic.partition(0).unwrap(), 0, 5);
    append_lines(&store, &topic.partition(1).unwrap(), 0, 5);
    drop(topic);
    store.close().unwrap();
}

/// Damages 4 bytes from `at` (each XORed with 0xA5).
fn flip_four_bytes(bytes: &mut [u8], at: usize) {
    for byte in &mut bytes[at..at + 4] {
        *byte ^= 0xA5;
    }
}

/// Runs `commitfs check --repair` on `dir`, which must report damage it repaired (exit
/// status 1); returns its report.
fn repair(dir: &Path) -> String {
    let repaired = std::process::Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .args(["check", "--repair"])
        .arg(dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&repaired.stdout).into_owned();
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    report
}

/// The lines of a repair's report that name offsets lost in a damaged span.
fn lost_spans(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|line| line.contains(" lost in a damaged span"))
        .collect()
}

/// Kills `>` -> `==`, `<` and `>=` in `check_data_against_meta`'s checkpoint check: when
/// only the checkpoint still counts the messages of a partition the metadata dropped, the
/// open is refused; a dropped partition that never held a message is no disagreement.
#[test]
fn a_checkpoint_counting_messages_of_a_dropped_partition_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_two_filled_partitions(dir.path(), 3);

    // Partition 2 never held a message: dropping it from the count opens.
    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 3",
        "partitions = 2",
    );
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.partitions().len(), 2);
    assert_reads(&store, &topic.partition(1).unwrap(), 0, 5);
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Partition 1 held five: with its consume queue gone, the checkpoint still says so.
    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 2",
        "partitions = 1",
    );
    std::fs::remove_dir_all(dir.path().join("queues/1/1")).unwrap();
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open is refused");
    fixtures::assert_needs_repair(
        error,
        "the checkpoint counts 5 messages of partition 1 of topic \"t\"",
    );
}

/// The soft and hard limits of open files of this process.
fn open_file_limits() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall with a valid pointer to a local.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

fn set_open_file_limits(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a plain syscall with a valid pointer to a local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Kills `raise_open_file_limit -> ()`, and `==` -> `!=` and `<` -> `==`/`>` in it: opening
/// a store takes the hard limit of open files as the soft one, so a store of thousands of
/// partitions does not run out at the usual soft limit.
#[test]
fn opening_a_store_raises_the_soft_open_file_limit_to_the_hard_limit() {
    let (_, hard) = open_file_limits();
    // A finite hard limit the soft one can be raised to (an unlimited one cannot be).
    let hard = hard.min(65_536);
    set_open_file_limits(256, hard);
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (soft, _) = open_file_limits();
    store.close().unwrap();
    assert_eq!(soft, hard, "the soft limit after the open");
}

/// Kills `fit_max_message -> ()`, `>` -> `==`/`<` and `+` -> `-`/`*` in it: a store of
/// 64 KiB commit-log files lowers a configured maximum of 1 MiB to what fits in one file
/// (README "On-disk format": a 60-byte batch header, 8 table bytes for one keyed message,
/// the 8-byte end-of-file marker); the largest message it allows is stored and reads back,
/// one byte more is refused; a maximum that fits stays as configured.
#[test]
fn the_largest_message_is_what_fits_in_one_commit_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            max_message_bytes: 1 << 20,
            ..config()
        },
    )
    .unwrap();
    let largest = 64 * 1024 - 60 - 8 - 8;
    assert_eq!(store.config().max_message_bytes, largest);
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let mut message = vec![b'x'; largest];
    message[..2].copy_from_slice(b"k:");
    store.append(&partition, &message, Some(1)).unwrap();
    store.append(&partition, b"k:after\n", Some(1)).unwrap();
    message.push(b'x');
    let error = store.append(&partition, &message, Some(1)).unwrap_err();
    assert!(
        matches!(error, StoreError::MessageTooLarge { .. }),
        "{error}"
    );
    assert_eq!(store.read_message(&partition, 0).unwrap().len(), largest);
    assert_eq!(store.read_message(&partition, 1).unwrap(), b"k:after\n");
    drop(partition);
    store.close().unwrap();
    drop(store);

    // 4096 (the fixtures' maximum) fits: it stays.
    let store = open(dir.path());
    assert_eq!(store.config().max_message_bytes, 4096);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let error = store
        .append(&partition, &vec![b'y'; 4097], None)
        .unwrap_err();
    assert!(
        matches!(error, StoreError::MessageTooLarge { .. }),
        "{error}"
    );
    assert_eq!(store.read_message(&partition, 0).unwrap().len(), largest);
}

/// Rewrites the checkpoint without the mark of `partition` of topic `topic_id`.
fn checkpoint_without_partition(dir: &Path, topic_id: u32, partition: u32) {
    let dropped =
        fixtures::rewrite_checkpoint_without(dir, |id, index| (id, index) == (topic_id, partition));
    assert_eq!(dropped, 1);
}

/// Kills `holds_queue_files -> false`: when only the consume queue of a partition the
/// metadata dropped still holds its messages (the checkpoint forgot it, and a clean stop
/// scans nothing), the open is refused naming that queue, not opened without them.
#[test]
fn a_consume_queue_holding_messages_of_a_dropped_partition_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_two_filled_partitions(dir.path(), 2);

    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 2",
        "partitions = 1",
    );
    checkpoint_without_partition(dir.path(), 1, 1);
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open is refused");
    let text = error.to_string();
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
    let queue = dir.path().join("queues/1/1");
    assert!(
        text.contains(&format!(
            "{} holds messages of partition 1 of topic \"t\"",
            queue.display()
        )),
        "{text}"
    );
}

/// Copies the directory `from` to a new directory `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    fixtures::copy_dir(from, to);
}

/// A store in `dir` with topics "gone" (id 1) and "kept" of 25 messages each, "gone" deleted
/// as a crash leaves a deletion: its metadata removed, its queue files not yet. Returns
/// the directory of "gone"'s queues.
fn queues_left_by_a_deletion(dir: &Path) -> std::path::PathBuf {
    let store = open(dir);
    for name in ["gone", "kept"] {
        let topic = store.create_topic(name, fixtures::keyed_topic(1)).unwrap();
        append_lines(&store, &topic.partition(0).unwrap(), 0, 25);
    }
    store.close().unwrap();
    drop(store);
    let queues = dir.join("queues/1");
    let aside = dir.join("queues-of-gone");
    copy_tree(&queues, &aside);
    let store = open(dir);
    store.delete_topic("gone").unwrap();
    store.close().unwrap();
    drop(store);
    copy_tree(&aside, &queues);
    queues
}

/// Kills `remove_orphan_queues -> Ok(())`: the consume queues of a topic whose deletion was
/// cut short (its metadata gone, its queues still there) are removed at the next open, so
/// the disk space comes back; the other topic keeps its messages.
#[test]
fn the_queues_of_a_topic_deleted_before_a_crash_are_removed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let queues = queues_left_by_a_deletion(dir.path());
    assert!(queues.join("0").read_dir().unwrap().next().is_some());

    let store = open(dir.path());
    assert!(
        !queues.exists(),
        "the deleted topic's queues are still there"
    );
    assert!(store.topic("gone").is_none());
    assert_reads(
        &store,
        &store.topic("kept").unwrap().partition(0).unwrap(),
        0,
        25,
    );
}

/// Kills `remove_dir`'s `NotFound` guard as `true` (which took every failure to remove a
/// directory for one already gone): a deleted topic's queues that cannot be removed at the
/// next open refuse it, naming them, and are removed once they can be.
#[test]
fn queues_of_a_deleted_topic_that_cannot_be_removed_refuse_the_open_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let queues = queues_left_by_a_deletion(dir.path());
    let partition_queue = queues.join("0");
    {
        let _stuck = fixtures::Immutable::new(&partition_queue);
        let Err(error) = Store::open(dir.path(), config()) else {
            panic!("opened although the deleted topic's queues could not be removed");
        };
        let error = error.to_string();
        assert!(
            error.contains(&format!("removing {}", queues.display())),
            "{error}"
        );
    }
    let store = open(dir.path());
    assert!(
        !queues.exists(),
        "the deleted topic's queues are still there"
    );
    assert_reads(
        &store,
        &store.topic("kept").unwrap().partition(0).unwrap(),
        0,
        25,
    );
}

/// Kills `Scanner::path_of`'s arithmetic and `Default`: a record after the checkpoint of a
/// partition the metadata no longer has refuses the open naming its commit-log file and
/// byte (the record lies inside the file, after another partition's).
#[test]
fn a_record_of_a_partition_the_metadata_lost_is_refused_naming_its_file_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("b", fixtures::keyed_topic(3)).unwrap();
    for index in 0..3 {
        append_lines(&store, &topic.partition(index).unwrap(), 0, 5);
    }
    // A crash: the checkpoint is the empty store's, so the open scans every record.
    store.halt_without_cleanup();
    drop((topic, store));
    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 3",
        "partitions = 2",
    );
    std::fs::remove_dir_all(dir.path().join("queues/1/2")).unwrap();

    let Err(error) = Store::open(dir.path(), config()) else {
        panic!("opened a log holding records of a partition the metadata does not have");
    };
    let error = error.to_string();
    let log_file = dir.path().join("commitlog").join(format!("{:020}", 0));
    assert!(
        error.contains(&format!("{} byte ", log_file.display())),
        "{error}"
    );
    assert!(!error.contains(" byte 0:"), "{error}");
}

/// Kills deleting `settle_offsets`'s `Plan::Rebuild` arm (which counted the rebuilt
/// consume-queue entries below the checkpoint's end as already on disk): the entries an
/// open rebuilds are made durable by the checkpoint it writes, so a power loss right after
/// that open still serves every message.
#[cfg(feature = "failpoints")]
#[test]
fn consume_queue_entries_rebuilt_at_an_open_survive_a_power_loss_right_after_it() {
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    append_lines(&store, &topic.partition(0).unwrap(), 0, 30);
    drop(topic);
    store.close().unwrap();
    drop(store);
    // A lost consume-queue file: the open rebuilds every queue from the log.
    std::fs::remove_file(dir.path().join("queues/1/0/00000000000000000010")).unwrap();
    let store = open(dir.path());
    store.halt_without_cleanup();
    drop(store);

    let copy = tempfile::tempdir().unwrap();
    crash_copy(
        dir.path(),
        copy.path(),
        PowerLoss {
            fill: Fill::Zeros,
            unsynced_names_survive: true,
        },
    );
    let store = open(copy.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 30);
    assert_reads(&store, &partition, 0, 30);
}

/// A line of about 100 bytes, so that 1,500 of them fill several 64 KiB commit-log files.
fn long_line(number: u64) -> Vec<u8> {
    format!("line {number} {}\n", "x".repeat(90)).into_bytes()
}

/// Asserts that each of `numbers` reads back as `long_line(number)`.
fn assert_long_lines(store: &Store, partition: &Partition, numbers: impl Iterator<Item = u64>) {
    for number in numbers {
        let read = store.read_message(partition, number);
        assert_eq!(read.ok(), Some(long_line(number)), "offset {number}");
    }
}

/// A store of one single-partition topic `t` holding `count` long lines, closed cleanly,
/// with its checkpoint removed (the next open rebuilds from the whole log); the commit-log
/// files, oldest first.
fn filled_without_checkpoint(dir: &Path, count: u64) -> Vec<std::path::PathBuf> {
    let store = open(dir);
    let partition = store
        .create_topic("t", fixtures::keyed_topic(1))
        .unwrap()
        .partition(0)
        .unwrap();
    for number in 0..count {
        store.append(&partition, &long_line(number), None).unwrap();
    }
    drop(partition);
    store.close().unwrap();
    drop(store);
    std::fs::remove_file(dir.join("checkpoint")).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Kills `offset > next && !after_skip` -> `false` and `>` -> `<` in `Recovering::dispatch`:
/// a span of records gone from the middle of the log without a skip marker (here an
/// end-of-file marker written over the middle of the first file) leaves a gap in the
/// partition's offsets; the open refuses, naming it, rather than serving the partition
/// with the gap as lost messages.
#[test]
fn a_gap_in_a_partitions_offsets_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    assert!(files.len() >= 3, "{} commit-log files", files.len());
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let starts = batch_starts(&bytes);
    let at = starts[starts.len() / 2];
    let rest = (bytes.len() - at) as u32;
    bytes[at..at + 4].copy_from_slice(&rest.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&0xC0F5_B1A4u32.to_le_bytes());
    std::fs::write(&files[0], &bytes).unwrap();

    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open is refused");
    let text = error.to_string();
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
    assert!(text.contains("was expected"), "{text}");
    assert!(text.contains(&files[1].display().to_string()), "{text}");
}

/// Kills `>` -> `==` and `<` in `Recovering::dispatch`'s check of a rebuilt partition's
/// first record: when the oldest commit-log file is gone (as retention leaves it) and the
/// checkpoint too, the partition starts at the first message still in the log, and every
/// message from there reads back.
#[test]
fn a_rebuilt_partition_starts_at_its_first_message_still_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    assert!(files.len() >= 3, "{} commit-log files", files.len());
    std::fs::remove_file(&files[0]).unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let start = partition.start_offset();
    assert!(start > 0, "the partition starts at {start}");
    assert_eq!(partition.end_offset(), 1500);
    assert_long_lines(&store, &partition, start..1500);
    assert!(store.read_message(&partition, start - 1).is_err());
}

/// Kills `offset < self.start` -> `false` in `Recovering::dispatch`: a rebuild (here for a
/// lost consume-queue file) skips the records of messages that retention removed, which
/// the commit log still holds: their consume-queue files do not come back.
#[test]
fn a_rebuild_does_not_bring_back_queue_files_that_retention_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut settings = fixtures::keyed_topic(1);
    settings.retention_ms = Some(1);
    let partition = store
        .create_topic("t", settings)
        .unwrap()
        .partition(0)
        .unwrap();
    // Three sealed segments of ten, and the active one: one commit-log file holds them all.
    append_lines(&store, &partition, 0, 35);
    std::thread::sleep(std::time::Duration::from_millis(20));
    store.enforce_retention().unwrap();
    assert_eq!(partition.start_offset(), 30);
    drop(partition);
    store.close().unwrap();
    drop(store);
    let queue = dir.path().join("queues/1/0");
    let kept = queue_files(&queue);
    assert_eq!(kept, ["00000000000000000030"]);
    std::fs::remove_file(queue.join(&kept[0])).unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), 30);
    assert_reads(&store, &partition, 30, 35);
    assert_eq!(queue_files(&queue), kept);
}

fn queue_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Kills `offset > next` -> `true` in `Recovering::dispatch`, and `+` -> `*` in
/// `Scanner::scan_file`'s end after a skip marker (which misplaced a skip in the first
/// file): after `commitfs check --repair` skips a damaged span, in the first commit-log
/// file or a later one, its report names the offsets lost in it, each a non-empty range,
/// and no record that was kept; the store then serves every other message.
#[test]
fn a_repair_reports_only_offsets_that_were_lost() {
    for damaged in [0, 1] {
        repair_reports_only_offsets_that_were_lost(damaged);
    }
}

fn repair_reports_only_offsets_that_were_lost(damaged: usize) {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    let mut bytes = std::fs::read(&files[damaged]).unwrap();
    let middle = bytes.len() / 2;
    flip_four_bytes(&mut bytes, middle);
    std::fs::write(&files[damaged], &bytes).unwrap();

    let report = repair(dir.path());
    let lost = lost_spans(&report);
    assert_eq!(lost.len(), 1, "{report}");
    let range = lost[0].split(" offsets ").nth(1).unwrap();
    let (from, to) = range
        .split_whitespace()
        .next()
        .unwrap()
        .split_once("..")
        .unwrap();
    let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
    assert!(from < to && to - from <= 2, "{report}");

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_long_lines(
        &store,
        &partition,
        (0..1500).filter(|n| !(from..to).contains(n)),
    );
}

/// Kills `>` -> `>=` in `Scanner::scan`'s choice of files: after an unclean stop whose
/// checkpoint ends exactly where a commit-log file begins, recovery scans from that file
/// on and gets back every message written after the checkpoint.
#[test]
fn recovery_from_a_checkpoint_ending_at_a_file_boundary_keeps_every_later_message() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    assert!(files.len() >= 3, "{} commit-log files", files.len());
    // Write the checkpoint again, then move it back to the end of the first file.
    let store = open(dir.path());
    store.close().unwrap();
    drop(store);
    let in_first = batch_starts(&std::fs::read(&files[0]).unwrap()).len() as u64;
    let first_file_bytes = std::fs::metadata(&files[0]).unwrap().len();
    let path = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&path).unwrap();
    // README "On-disk format": the log end at bytes 8..16; one 32-byte partition mark after
    // the 36-byte head: topic id, partition, end, start, stream size.
    bytes[8..16].copy_from_slice(&first_file_bytes.to_le_bytes());
    let stream_end: u64 = (0..in_first).map(|n| long_line(n).len() as u64).sum();
    bytes[44..52].copy_from_slice(&in_first.to_le_bytes());
    bytes[60..68].copy_from_slice(&stream_end.to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    // The store was not closed since that checkpoint.
    std::fs::write(dir.path().join("abort"), b"").unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 1500);
    assert_long_lines(&store, &partition, 0..1500);
}

/// Kills `+` -> `*` in `Scanner::scan_file` where a skip marker reaches the end of a
/// file: damage in the newest record of a commit-log file that later files follow is
/// skipped by `commitfs check --repair` up to that file's end; the store then opens and
/// serves every message but the lost one.
#[test]
fn a_repaired_span_reaching_the_end_of_a_file_opens_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    assert!(files.len() >= 3, "{} commit-log files", files.len());
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let newest = *batch_starts(&bytes).last().unwrap();
    flip_four_bytes(&mut bytes, newest + 70);
    std::fs::write(&files[1], &bytes).unwrap();

    let report = repair(dir.path());

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 1500);
    let unreadable: Vec<u64> = (0..1500)
        .filter(|&number| store.read_message(&partition, number).ok() != Some(long_line(number)))
        .collect();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}\n{report}");
}

/// Kills `+` -> `-` in `Scanner::next_valid_record` (which, for damage at a file's first
/// byte, looked for valid records from past the file's end): damage at the very start of
/// the newest commit-log file, with valid records after it in that file, refuses the open
/// and keeps the file, rather than cutting the log there as a torn tail.
#[test]
fn damage_at_the_first_byte_of_the_newest_file_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let files = filled_without_checkpoint(dir.path(), 1500);
    let newest = files.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    assert!(batch_starts(&bytes).len() > 2);
    flip_four_bytes(&mut bytes, 8);
    std::fs::write(newest, &bytes).unwrap();

    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open is refused");
    fixtures::assert_needs_repair(error, &format!("{} byte 0:", newest.display()));
    assert_eq!(std::fs::read(newest).unwrap(), bytes, "nothing cut");
}

/// Kills `>` -> `>=` in `Recovering::dispatch`'s check of a rebuilt partition's first
/// record (which reported an empty lost range): a partition whose first message lies after
/// a span `commitfs check --repair` skipped lost nothing, and the report says so.
#[test]
fn a_partition_starting_after_a_repaired_span_is_not_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    let first = topic.partition(0).unwrap();
    for number in 0..1500 {
        store.append(&first, &long_line(number), None).unwrap();
    }
    store
        .append(&topic.partition(1).unwrap(), &long_line(0), None)
        .unwrap();
    drop((topic, first));
    store.close().unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = dir.path().join("commitlog/00000000000000065536");
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    flip_four_bytes(&mut bytes, middle);
    std::fs::write(&log, &bytes).unwrap();

    let report = repair(dir.path());
    let lost = lost_spans(&report);
    assert_eq!(lost.len(), 1, "{report}");
    assert!(lost[0].contains(" partition 0: "), "{report}");
    let store = open(dir.path());
    let second = store.topic("t").unwrap().partition(1).unwrap();
    assert_eq!(store.read_message(&second, 0).ok(), Some(long_line(0)));
}
