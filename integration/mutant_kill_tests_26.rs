//! What `cargo mutants` passes over `src/store/queue.rs` (from line 691 on) and
//! `src/store/check.rs` (from line 698 on) found untested (issue 9). Each test says which
//! mutants it kills; each was seen failing with them applied by hand. Every test holds a
//! `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

mod fixtures;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::check::{check, CheckOptions, CheckReport};
use commitfs::store::{FlushPolicy, Partition, Store, StoreConfig};
use fail::FailScenario;
use fixtures::power_loss::{crash_copy, Fill, PowerLoss};

/// The sum of `size` over the files directly in `dir`.
fn bytes_of_files(dir: &Path, size: fn(&std::fs::Metadata) -> u64) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| size(&metadata))
        .sum()
}

/// The name of the file made ahead of need for the segment at `base` of partition 0 of
/// topic id 1.
fn prepared_queue_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("queues/1/0/{base:020}.prepared"))
}

/// A store of one partition past the middle of its first segment, with the file of the next
/// segment (at offset 10) made ahead of need.
fn store_with_the_next_queue_file_made(dir: &Path) -> (Arc<Store>, Arc<Partition>) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 6);
    fixtures::made_ahead(&prepared_queue_file(dir, 10));
    (store, partition)
}

/// Retention that moves a partition's start past two whole segments removes their
/// consume-queue files, closing them, and keeps those of the segments still stored. Kills
/// `ConsumeQueue::remove_before` replaced with `Ok(())`, its `>` replaced with `>=` and its
/// `+` replaced with `-` (`src/store/queue.rs` lines 703–705: the files of removed segments,
/// or the last of them, stayed on disk), and `Shared::forget` replaced with `()` (line 771:
/// the budget of open files kept the removed files open).
#[test]
fn retention_removes_the_consume_queue_files_of_the_segments_it_takes() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_under_retention(dir.path());
    for base in [0, 10, 20, 30] {
        assert!(fixtures::queue_file(dir.path(), base).exists(), "{base}");
    }
    store.enforce_retention().unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), 20);
    for base in [0, 10] {
        assert!(
            !fixtures::queue_file(dir.path(), base).exists(),
            "the queue file of removed segment {base} is left"
        );
    }
    for base in [20, 30] {
        assert!(fixtures::queue_file(dir.path(), base).exists(), "{base}");
    }
    assert_eq!(fixtures::removed_but_open(dir.path()), Vec::<String>::new());
    store.close().unwrap();
}

/// The store's disk usage counts its consume-queue files with exactly the bytes they hold,
/// the one made ahead of need for the next segment included: it is the blocks of the
/// commit-log file in use plus the lengths of the queue and key-index files. Kills
/// `ConsumeQueue::disk_bytes` replaced with 0 and with 1, its `*` replaced with `+` and
/// with `/`, and its `+` replaced with `-` and with `*` (`src/store/queue.rs` lines 747–754:
/// the queue files, or the prepared one, counted wrong), and `*` replaced with `+` and with
/// `/` in `Shared::prepare` (line 792: the prepared file made shorter than a segment's
/// entries or its first 4 KiB).
#[test]
fn the_disk_usage_counts_every_consume_queue_file_with_its_length() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, _partition) = store_with_the_next_queue_file_made(dir.path());
    let queues = dir.path().join("queues/1/0");
    // Waits for the preparation to finish (it holds what the usage reads meanwhile).
    let usage = store.disk_usage();
    let queue_bytes = bytes_of_files(&queues, |m| m.len());
    assert_eq!(queue_bytes, 2 * 200, "two files of 10 entries of 20 bytes");
    // The log's one file (the next one, made ahead of need, counts once it is used).
    let log_file = dir.path().join(format!("commitlog/{:020}", 0));
    let log_bytes = std::fs::metadata(log_file).unwrap().blocks() * 512;
    let index_bytes = bytes_of_files(&dir.path().join("index"), |m| m.len());
    assert_eq!(usage, log_bytes + queue_bytes + index_bytes);
    store.close().unwrap();
}

/// A power loss after a checkpoint loses the messages written after it, whose segment's
/// consume-queue file had been made (its name survived): recovery removes that file, past
/// the partition's recovered end, and the partition goes on from its end. Kills
/// `ConsumeQueue::remove_from` replaced with `Ok(())` (`src/store/queue.rs` line 731: the
/// file of a segment the partition no longer has stayed on disk).
#[test]
fn recovery_removes_the_queue_file_of_a_segment_a_power_loss_took() {
    let _scenario = FailScenario::setup();
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let config = StoreConfig {
        // The messages after the checkpoint are never written out.
        flush: FlushPolicy::Async {
            interval_ms: 3_600_000,
        },
        ..fixtures::small_store_config()
    };
    let store = Store::open(&data, config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 5);
    store.checkpoint().unwrap();
    fixtures::append_lines(&store, &partition, 5, 15);
    assert!(fixtures::queue_file(&data, 10).exists());
    let names_survive = PowerLoss {
        fill: Fill::Zeros,
        unsynced_names_survive: true,
    };
    crash_copy(&data, &copy, names_survive);
    store.halt_without_cleanup();
    assert!(fixtures::queue_file(&copy, 10).exists());

    let store = Store::open(&copy, config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(
        partition.end_offset(),
        5,
        "the messages after the checkpoint are lost"
    );
    assert!(
        !fixtures::queue_file(&copy, 10).exists(),
        "segment 10's queue file outlived its messages"
    );
    fixtures::assert_reads(&store, &partition, 0, 5);
    fixtures::append_lines(&store, &partition, 5, 15);
    fixtures::assert_reads(&store, &partition, 0, 15);
    store.close().unwrap();
}

/// A deleted topic's consume-queue files are closed with it: no removed file stays open
/// (its blocks would stay allocated until the store closes). Kills `Drop for Shared`'s
/// `drop` replaced with `()` (`src/store/queue.rs` line 816: the budget of open files kept
/// the deleted partitions' files open).
#[test]
fn a_deleted_topics_queue_files_are_closed_with_it() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(3)).unwrap();
    for partition in topic.partitions().iter() {
        fixtures::append_lines(&store, partition, 0, 25);
    }
    drop(topic);
    store.delete_topic("t").unwrap();
    assert!(!dir.path().join("queues/1").exists());
    assert_eq!(fixtures::removed_but_open(dir.path()), Vec::<String>::new());
    store.close().unwrap();
}

/// A file made ahead of need for the next segment, left by a clean stop, is kept by the
/// next open and taken by the append that reaches that segment: on a disk that then has
/// no room for a new queue file, the append still succeeds. Kills `%` replaced with `/` in
/// `keep_one_prepared` (`src/store/queue.rs` line 857: the file of segment 10 was taken for
/// one no segment can have and removed, and the append had to make it).
#[test]
fn a_queue_file_made_ahead_of_need_before_a_stop_serves_the_append_after_the_reopen() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = store_with_the_next_queue_file_made(dir.path());
    store.close().unwrap();
    drop((store, partition));

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert!(prepared_queue_file(dir.path(), 10).exists());
    fail::cfg("mapped::create", "return(enospc@/queues/)").unwrap();
    let appended = (6..16).try_for_each(|n| {
        store
            .append(&partition, &fixtures::line(n), None)
            .map(|_| ())
    });
    fail::remove("mapped::create");
    appended.unwrap();
    fixtures::assert_reads(&store, &partition, 0, 16);
    assert!(!prepared_queue_file(dir.path(), 10).exists());
    store.close().unwrap();
}

/// A file made ahead of need for a segment that has its queue file already (a leftover,
/// here put there by hand) is removed by the next open; the partition reads and takes
/// appends as before. Kills `||` replaced with `&&` in `keep_one_prepared`
/// (`src/store/queue.rs` line 857: the leftover was kept for reuse and stayed on disk).
#[test]
fn a_leftover_prepared_file_of_a_segment_with_its_file_is_removed_at_open() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.close().unwrap();
    drop((store, partition));
    let leftover = prepared_queue_file(dir.path(), 0);
    std::fs::write(&leftover, [0u8; 200]).unwrap();

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert!(!leftover.exists(), "the leftover is still there");
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 3);
    fixtures::append_lines(&store, &partition, 3, 12);
    fixtures::assert_reads(&store, &partition, 0, 12);
    store.close().unwrap();
}

/// `commitfs check` (`--repair` if `repair`), without progress output.
fn check_store(dir: &Path, repair: bool) -> CheckReport {
    let options = CheckOptions {
        repair,
        ..CheckOptions::default()
    };
    check(dir, &options).unwrap()
}

/// `commitfs check --repair` of a store that lost `store.toml`, told its segments'
/// length (`--segment-messages`), without progress output.
fn repair_lost_layout(dir: &Path, segment_messages: u32) -> CheckReport {
    let options = CheckOptions {
        repair: true,
        segment_messages: Some(segment_messages),
        ..CheckOptions::default()
    };
    check(dir, &options).unwrap()
}

/// The report's findings as text, for messages.
fn findings(report: &CheckReport) -> Vec<String> {
    report.findings.iter().map(ToString::to_string).collect()
}

/// A partition whose start the disk ceiling moved inside a segment passes `commitfs check`,
/// which checks the consume-queue entry of each message it still has and nothing else.
/// Kills `-` replaced with `+` in `check_queue` (`src/store/check.rs` line 721: the entries
/// were looked for in the next segment's file, and the check saw none of them), and `<`
/// replaced with `==` and with `>` in `check_index` (line 855: the key-index entries of
/// messages in the removed log file reported as damage).
#[test]
fn check_passes_a_partition_that_starts_inside_a_segment() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_the_ceiling_cut_into(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let (start, end) = (partition.start_offset(), partition.end_offset());
    assert!(start % 20 != 0 && start < end, "{start}..{end}");
    store.close().unwrap();
    drop((store, partition));

    let report = check_store(dir.path(), false);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.queue_entries, end - start);
}

/// After `commitfs check --repair` skipped the damaged batch of line 1, the next check notes
/// that one offset of the partition was lost, and finds no damage. Kills `+=` replaced with
/// `-=` and with `*=` where `check_queue` counts lost offsets (`src/store/check.rs` line 746:
/// the note counted 2^64 - 1 offsets, or was not made).
#[test]
fn check_after_a_repair_notes_how_many_offsets_were_lost() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let altered = fixtures::store_with_line_1_altered_in_the_log(dir.path());
    altered.store.close().unwrap();
    drop(altered);
    assert!(check_store(dir.path(), true).damaged());

    let report = check_store(dir.path(), false);
    assert!(!report.damaged(), "{:?}", findings(&report));
    let lost =
        "note: topic \"t\" partition 0: 1 offsets were lost in damaged spans (reading them fails)";
    assert!(
        findings(&report).iter().any(|finding| finding == lost),
        "{:?}",
        findings(&report)
    );
}

/// The disk ceiling removed the first commit-log file while no checkpoint could be written
/// (the checkpoint still counts the messages in it), then the store stopped uncleanly:
/// `commitfs check` notes the consume-queue entries that point into the removed file, which
/// the next mount skips, and finds no damage. Kills `<` replaced with `==` where
/// `check_queue` tells such entries from wrong ones (`src/store/check.rs` line 747: each was
/// reported as damage, pointing at no stored file), and `+=` replaced with `-=` and with `*=`
/// where it counts them (line 748).
#[test]
fn check_notes_entries_in_log_files_the_ceiling_removed_before_a_crash() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::released::small_files_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    // Two batches fill the first 16 KiB log file; the third starts the next one.
    for (from, to) in [(0, 10), (10, 15), (15, 18)] {
        fixtures::released::append_batch(&store, from, to);
    }
    store.close().unwrap();
    drop(store);
    let ceiling = StoreConfig {
        max_disk_bytes: Some(1),
        ..config
    };
    let store = Store::open(dir.path(), ceiling).unwrap();
    fail::cfg("meta::write_atomically", "return(eio@checkpoint)").unwrap();
    let removed = store.enforce_retention();
    fail::remove("meta::write_atomically");
    assert!(removed.is_err(), "no checkpoint was written");
    assert_eq!(
        fixtures::log_bases(dir.path())[0],
        16 * 1024,
        "the first log file went"
    );
    store.halt_without_cleanup();
    drop(store);

    let report = check_store(dir.path(), false);
    assert!(!report.damaged(), "{:?}", findings(&report));

    // As many as the next mount then skips.
    let start = fixtures::start_after_open(dir.path(), fixtures::released::small_files_config());
    assert!(start > 0);
    let note = format!(
        "note: topic \"t\" partition 0: {start} entries point into commit-log files already removed; the next mount moves the partition's start past them"
    );
    assert!(findings(&report).contains(&note), "{:?}", findings(&report));
}

/// The report of `commitfs check` on a store whose topic `a`'s consume-queue files of the
/// segments at `bases` were replaced by topic `b`'s: each of these entries is wrong. Both
/// topics have 15 messages (two files each).
fn check_with_queue_files_of_b_in_a(bases: &[u64]) -> (CheckReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let a = fixtures::new_partition(&store, "a", fixtures::lines_topic(1));
    let b = fixtures::new_partition(&store, "b", fixtures::lines_topic(1));
    for n in 0..15 {
        fixtures::append_lines(&store, &a, n, n + 1);
        fixtures::append_lines(&store, &b, n, n + 1);
    }
    store.close().unwrap();
    drop((a, b, store));
    for base in bases {
        let name = format!("{base:020}");
        let of_b = dir.path().join("queues/2/0").join(&name);
        std::fs::copy(of_b, dir.path().join("queues/1/0").join(&name)).unwrap();
    }
    (check_store(dir.path(), false), dir)
}

/// A partition with 15 wrong consume-queue entries (another topic's): `commitfs check`
/// reports the first ten one by one and the other five in one line; with exactly ten, it
/// reports those ten and no such line. Kills `+=` replaced with `-=` and with `*=` where
/// `check_queue` counts wrong entries, and `<=` replaced with `>` where it reports them
/// (`src/store/check.rs` lines 751–752: none reported one by one, every one and no closing
/// count, or only those past ten), and `>` replaced with `==`, `<` and `>=` where it adds the
/// closing count (line 763: no count of the rest, or a count of 0 more); `entry_problem` and
/// `batch_problem` replaced with `None` (lines 793 and 813: no wrong entry found at all).
#[test]
fn check_reports_ten_wrong_queue_entries_one_by_one_and_counts_the_rest() {
    let _scenario = FailScenario::setup();
    for (bases, rest) in [(&[0, 10][..], Some(5)), (&[0][..], None)] {
        let (report, dir) = check_with_queue_files_of_b_in_a(bases);
        let found = findings(&report);
        let queues_of_a = format!("damage: {}", dir.path().join("queues/1/0").display());
        let one_by_one = found.iter().filter(|f| f.starts_with(&queues_of_a)).count();
        assert_eq!(one_by_one, 10, "{found:?}");
        let more: Vec<&String> = found.iter().filter(|f| f.contains(" more ")).collect();
        let expected = rest.map(|n| {
            format!("damage: topic \"a\" partition 0: {n} more consume-queue entries are wrong")
        });
        assert_eq!(more, expected.iter().collect::<Vec<_>>(), "{found:?}");
    }
}

/// A consume-queue entry that names its own batch but the wrong byte of its message, or the
/// wrong length, is damage `commitfs check` reports at that entry, once each. Kills `&&`
/// replaced with `||` in `batch_problem` (`src/store/check.rs` line 821: an entry with
/// either one right passed).
#[test]
fn check_reports_an_entry_with_a_wrong_message_position_or_length() {
    let _scenario = FailScenario::setup();
    // The entry of offset 1: its message's log offset (bytes 0..8), its length (8..12).
    for (what, field) in [("position", 20..28), ("length", 28..32)] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
        fixtures::append_lines(&store, &partition, 0, 3);
        store.close().unwrap();
        drop((store, partition));
        let queue_file = fixtures::queue_file(dir.path(), 0);
        let mut bytes = std::fs::read(&queue_file).unwrap();
        bytes[field.start] += 1;
        std::fs::write(&queue_file, &bytes).unwrap();

        let report = check_store(dir.path(), false);
        let found = findings(&report);
        let at = format!(
            "damage: {} byte 20: the entry of offset 1 points at",
            queue_file.display()
        );
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        assert!(found[0].starts_with(&at), "{what}: {found:?}");
    }
}

/// `commitfs check` verifies the key index, every file of it (eight entries a file here):
/// its summary counts one index entry per keyed message. Kills `check_index` replaced with
/// `Ok(())` (`src/store/check.rs` line 841: the index was not checked), `>` replaced with
/// `==`, `<` and `>=` where it picks the files the checkpoint covers (line 847: the last
/// file, or the ones before it, left out), `==` replaced with `!=` where it takes the
/// checkpoint's count for the last file (line 853) and `+=` replaced with `-=` and `*=` where
/// it counts the entries (line 875).
#[test]
fn check_counts_an_index_entry_per_keyed_message() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_entries: 8,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let lines: Vec<String> = (0..12).map(|n| format!("k{n}:{n}\n")).collect();
    for line in &lines {
        store
            .append_batch(&partition, &fixtures::keyed_messages(&[line]))
            .unwrap();
    }
    store.close().unwrap();
    drop((store, partition));
    let index_files = std::fs::read_dir(dir.path().join("index")).unwrap().count();
    assert!(index_files >= 2, "{index_files} index files");

    let report = check_store(dir.path(), false);
    assert!(report.findings.is_empty(), "{:?}", findings(&report));
    assert_eq!(
        (report.queue_entries, report.index_entries),
        (12, 12),
        "{}",
        report.summary()
    );
}

/// A key-index entry of the log's very first message (commit-log offset 0) whose key hash
/// is wrong is damage `commitfs check` reports. Kills `<` replaced with `<=` in
/// `check_index` (`src/store/check.rs` line 855: a message at the first stored log offset was
/// taken for one in a removed file, and its entry went unchecked), and the match guard
/// `removed_by_retention` replaced with `true` (line 861: every entry taken for one of a
/// message retention removed, and left unchecked).
#[test]
fn check_reports_a_wrong_index_entry_of_the_first_message_in_the_log() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    store
        .append_batch(&partition, &fixtures::keyed_messages(&["k0:first\n"]))
        .unwrap();
    store.close().unwrap();
    drop((store, partition));
    let index_file = dir.path().join(format!("index/{:020}", 0));
    let mut bytes = std::fs::read(&index_file).unwrap();
    // Entry 1 (entry 0 is never used) after the 64-byte header and 4-byte slots; its first
    // 8 bytes are the key's hash.
    let slots = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let entry = 64 + slots * 4 + 24;
    bytes[entry] ^= 1;
    std::fs::write(&index_file, &bytes).unwrap();

    let report = check_store(dir.path(), false);
    let damage = format!(
        "damage: {} byte {entry}: entry 1 names message 0 of the batch at commit-log offset 0, which holds no message with its key",
        index_file.display()
    );
    assert_eq!(findings(&report), [damage]);
}

/// A topic file edited by hand to a count of partitions below those that hold messages:
/// `commitfs check` reports its first record in the log, the queue directory of the
/// partition past the count and the checkpoint's count of its messages, and nothing about an
/// empty partition past it. Kills
/// `check_ownership` replaced with `Ok(())` (`src/store/check.rs` line 949: neither was
/// reported) and `>` replaced with `==`, `<` and `>=` where it looks at the checkpoint's
/// marks (line 961: the messages counted went unreported, or the empty partition was
/// reported).
#[test]
fn check_reports_messages_of_a_partition_past_its_topics_count() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(3)).unwrap();
    fixtures::append_lines(&store, &topic.partition(1).unwrap(), 0, 3);
    store.close().unwrap();
    drop((store, topic));
    let topic_file = dir.path().join("topics/1.toml");
    let text = std::fs::read_to_string(&topic_file).unwrap();
    assert!(text.contains("partitions = 3"), "{text}");
    std::fs::write(
        &topic_file,
        text.replace("partitions = 3", "partitions = 1"),
    )
    .unwrap();

    let report = check_store(dir.path(), false);
    let why = "partition 1 of topic \"t\" (id 1), which topics/1.toml says has 1 partitions";
    let damage: Vec<String> = findings(&report)
        .into_iter()
        .filter(|finding| finding.starts_with("damage"))
        .collect();
    assert_eq!(
        damage,
        [
            format!(
                "damage: {} byte 0: message 0 of {why}",
                dir.path().join(format!("commitlog/{:020}", 0)).display()
            ),
            format!(
                "damage: {} holds messages of {why}",
                dir.path().join("queues/1/1").display()
            ),
            format!("damage: the checkpoint counts 3 messages of {why}"),
        ]
    );
}

/// `commitfs check --repair` of a store that lost `store.toml` and its topic files gives
/// the rebuilt topic as many partitions as hold messages: partition 0 of 3 here, so one.
/// Kills `>` replaced with `>=` and with `==` in `partitions_with_data` (`src/store/check.rs`
/// line 994: the checkpoint's empty partitions were counted as holding messages).
#[test]
fn a_repair_after_lost_metadata_gives_a_topic_the_partitions_that_hold_messages() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("a", fixtures::lines_topic(3)).unwrap();
    fixtures::append_lines(&store, &topic.partition(0).unwrap(), 0, 3);
    store.close().unwrap();
    drop((store, topic));
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    std::fs::remove_dir_all(dir.path().join("topics")).unwrap();

    assert!(repair_lost_layout(dir.path(), 10).damaged());
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.topic("topic-1").unwrap();
    assert_eq!(topic.partitions().len(), 1);
    fixtures::assert_reads(&store, &topic.partition(0).unwrap(), 0, 3);
    store.close().unwrap();
}

/// `commitfs check --repair` of damage in one topic's messages does not bring back a topic
/// deleted before, whose messages are still in the log, and reports no offset gone past the
/// end of the damaged topic, which still ends where it did. Kills the match guard
/// `id >= known_below || found.damaged_topics.contains(&id)` replaced with `true` in
/// `repaired_meta` (`src/store/check.rs` line 1018: the deleted topic came back as
/// `topic-1`), and `<` replaced with `<=` in `report_losses` (line 1172: "offsets 3..3 are
/// gone").
#[test]
fn a_repair_does_not_bring_back_a_deleted_topic() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let gone = fixtures::new_partition(&store, "gone", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &gone, 0, 3);
    drop(gone);
    store.delete_topic("gone").unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.close().unwrap();
    drop((store, partition));
    // Line 1 of `t`, in the fifth batch of the log, altered.
    let log_file = dir.path().join(format!("commitlog/{:020}", 0));
    let mut bytes = std::fs::read(&log_file).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 6, "one batch an append");
    let line_1 = starts[4]
        + bytes[starts[4]..starts[5]]
            .windows(7)
            .position(|w| w == b"line 1\n")
            .unwrap();
    bytes[line_1] ^= 0x20;
    std::fs::write(&log_file, &bytes).unwrap();

    let repaired = findings(&check_store(dir.path(), true));
    assert!(
        repaired.iter().any(|f| f.starts_with("damage")),
        "{repaired:?}"
    );
    // Offset 1 is lost in the span; `t` still ends at 3, so no offset is gone past its end.
    assert!(
        !repaired.iter().any(|f| f.contains("are gone")),
        "{repaired:?}"
    );
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let names: Vec<String> = store.topics().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(names, ["t"]);
    store.close().unwrap();
}

/// A consume-queue entry the checkpoint vouches for, zeroed (a page lost), in a store that
/// stopped uncleanly with the commit log starting at offset 0: `commitfs check` reports it
/// as damage, not as an entry into a removed log file that the next mount would skip. Kills
/// `<` replaced with `<=` in `check_queue` (`src/store/check.rs` line 747: an entry naming
/// offset 0 was taken for one into a removed file, and only noted).
#[test]
fn check_reports_a_zeroed_queue_entry_as_damage_after_an_unclean_stop() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.checkpoint().unwrap();
    store.halt_without_cleanup();
    drop((store, partition));
    let queue_file = fixtures::queue_file(dir.path(), 0);
    let mut bytes = std::fs::read(&queue_file).unwrap();
    bytes[20..40].fill(0);
    std::fs::write(&queue_file, &bytes).unwrap();

    let report = check_store(dir.path(), false);
    let at = format!(
        "damage: {} byte 20: the entry of offset 1 points at",
        queue_file.display()
    );
    assert!(
        findings(&report).iter().any(|f| f.starts_with(&at)),
        "{:?}",
        findings(&report)
    );
}

/// `commitfs check --repair` of a store whose `store.toml` is garbage writes a new one and
/// keeps the damaged file beside it as `store.toml.damaged`. Kills `!` deleted in `repair`
/// (`src/store/check.rs` line 1104: the damaged file was overwritten, not kept).
#[test]
fn a_repair_keeps_a_damaged_store_toml_beside_the_new_one() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "a", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.close().unwrap();
    drop((store, partition));
    std::fs::write(dir.path().join("store.toml"), b"garbage").unwrap();

    assert!(repair_lost_layout(dir.path(), 10).damaged());
    let kept = std::fs::read(dir.path().join("store.toml.damaged")).unwrap();
    assert_eq!(kept, b"garbage");
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("a").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 3);
    store.close().unwrap();
}

/// `commitfs check --repair` of a store that lost `store.toml` and its topic files brings
/// back the newest topic although the disk ceiling removed all its messages and no
/// consume-queue file of it is left: only the checkpoint still counts them. The repair
/// says those offsets are gone, and the topic's id is never given to a new topic. Kills `>` replaced with `<` in `partitions_with_data`
/// (`src/store/check.rs` line 994: no checkpoint mark counted, the topic was not rebuilt,
/// and the next topic created got its id).
#[test]
fn a_repair_after_lost_metadata_keeps_a_topic_whose_messages_retention_removed() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::released::small_files_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let kept = store
        .create_topic("kept", fixtures::lines_topic(1))
        .unwrap();
    let gone = store
        .create_topic("gone", fixtures::lines_topic(1))
        .unwrap();
    assert_eq!(gone.id(), 2);
    fixtures::append_lines(&store, &gone.partition(0).unwrap(), 0, 20);
    // One message per batch: 400 batches fill more than one 16 KiB log file.
    fixtures::append_lines(&store, &kept.partition(0).unwrap(), 0, 400);
    store.close().unwrap();
    drop((store, gone, kept));
    let ceiling = StoreConfig {
        max_disk_bytes: Some(1),
        ..config.clone()
    };
    let store = Store::open(dir.path(), ceiling).unwrap();
    store.enforce_retention().unwrap();
    let gone = store.topic("gone").unwrap().partition(0).unwrap();
    assert_eq!((gone.start_offset(), gone.end_offset()), (20, 20));
    store.close().unwrap();
    drop((store, gone));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("queues/2/0")).map_or(vec![], |entries| {
        entries.map(|entry| entry.unwrap().file_name()).collect()
    });
    assert!(
        left.iter()
            .all(|name| name.to_string_lossy().ends_with(".prepared")),
        "{left:?}"
    );
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    std::fs::remove_dir_all(dir.path().join("topics")).unwrap();

    let repaired = findings(&repair_lost_layout(dir.path(), 20));
    assert!(
        repaired.iter().any(|f| f.contains(
            "topic \"topic-2\" (id 2) partition 0: offsets 0..20 are gone (the checkpoint counted them"
        )),
        "{repaired:?}"
    );
    let store = Store::open(dir.path(), config).unwrap();
    assert_eq!(store.topic("topic-2").unwrap().partitions().len(), 1);
    let created = store.create_topic("new", fixtures::lines_topic(1)).unwrap();
    assert_eq!(created.id(), 3, "a topic id given out again");
    store.close().unwrap();
}
