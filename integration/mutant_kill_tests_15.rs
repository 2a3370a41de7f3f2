//! What a `cargo mutants` pass over `src/store/dump.rs` found untested (issue 9). Each test
//! says which mutants it kills.

mod fixtures;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use commitfs::store::dump::{dump, DumpOptions, DumpReport};
use commitfs::store::{Store, TopicSettings};

/// Lines `line 0` … `line 2999` in topic "t" (one partition), one append each: with the
/// small store's 64 KiB commit-log files they fill several files. Retention runs once, then
/// the store closes cleanly.
fn store_with_lines(dir: &Path, settings: TopicSettings) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", settings);
    fixtures::append_lines(&store, &partition, 0, 3000);
    store.enforce_retention().unwrap();
    store.close().unwrap();
}

fn dumped(dir: &Path) -> (DumpReport, String) {
    let mut out = Vec::new();
    let report = dump(dir, &DumpOptions::default(), &mut out).unwrap();
    (report, String::from_utf8(out).unwrap())
}

/// A dump walks every commit-log file, not only the first: each of 3,000 messages spread
/// over several 64 KiB files is printed once, in order. Kills `<` replaced with `==` and
/// with `>` in `Walk::run` (`i + 1 < bases.len()`: the walk stopped after the first file).
#[test]
fn a_dump_prints_the_messages_of_every_commit_log_file() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), fixtures::lines_topic(1));
    fixtures::assert_several_log_files(dir.path());
    let (report, text) = dumped(dir.path());
    assert_eq!(
        fixtures::dumped_offsets(&text),
        (0..3000).collect::<Vec<_>>()
    );
    assert_eq!(report.messages, 3000);
    assert!(!report.damaged, "{:?}", report.notes);
    assert!(
        text.ends_with("payload=line 2999\\n\n"),
        "{}",
        &text[text.len() - 200..]
    );
}

/// Without `store.toml` a dump still shows every message, by topic id, the commit-log files'
/// length read from the files themselves.
#[test]
fn without_store_toml_a_dump_shows_every_message_by_topic_id() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), fixtures::lines_topic(1));
    fixtures::assert_several_log_files(dir.path());
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    let (report, text) = dumped(dir.path());
    assert_eq!(
        fixtures::dumped_offsets(&text),
        (0..3000).collect::<Vec<_>>()
    );
    assert!(
        text.lines()
            .all(|line| line.starts_with("topic=#1 partition=0 ")),
        "{}",
        &text[..200]
    );
    assert!(!report.damaged, "{:?}", report.notes);
    assert!(
        report
            .notes
            .iter()
            .any(|note| note.contains("store.toml is missing")),
        "{:?}",
        report.notes
    );
}

/// The commit-log files' allocated blocks, summed.
fn log_blocks(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().blocks())
        .sum()
}

/// A dump writes nothing, also without `store.toml`: the blocks the commit log gave back
/// once sealed segments were copied to files of their own stay given back (a dump that
/// took the files' length as 0 or 1 byte allocated every file whole again, from its start).
/// Kills `file_length` replaced with `Ok(0)` and with `Ok(1)`.
#[test]
fn without_store_toml_a_dump_leaves_the_logs_given_back_blocks_unallocated() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::released::closed_released_store(dir.path());
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    let before = log_blocks(dir.path());
    let (report, _) = dumped(dir.path());
    assert!(report.messages > 0, "{report:?}");
    assert_eq!(log_blocks(dir.path()), before, "{report:?}");
}

/// Batches that retention removed (below their partition's start) but whose commit-log file
/// is still there are not shown, and the dump says how many and why. Kills `>` replaced with
/// `<` in `dump` (`removed_batches > 0`: the note was never given) and `+=` replaced with
/// `-=` and `*=` where `Walk::file` counts them.
#[test]
fn a_dump_says_that_batches_below_a_partitions_start_were_removed_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let settings = TopicSettings {
        retention_bytes: Some(200),
        ..fixtures::lines_topic(1)
    };
    store_with_lines(dir.path(), settings);
    let start = fixtures::start_after_open(dir.path(), fixtures::small_store_config());
    assert!(start > 0, "retention moved the start");
    // One message a batch: the batches left in the log below the start, by their first
    // offset (README "Commit-log files": bytes 24..32 of a batch).
    let below_start = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            fixtures::batch_starts(&bytes)
                .into_iter()
                .filter(|&at| fixtures::batch_first_offset(&bytes, at) < start)
                .count() as u64
        })
        .sum::<u64>();
    assert!(
        below_start > 0,
        "the log still holds batches below the start"
    );
    let (report, text) = dumped(dir.path());
    assert_eq!(
        fixtures::dumped_offsets(&text),
        (start..3000).collect::<Vec<_>>()
    );
    assert_eq!(report.removed_batches, below_start, "{report:?}");
    let note = format!(
        "note: {below_start} batches below their partitions' starts are not shown: retention removed them"
    );
    assert!(report.notes.contains(&note), "{:?}", report.notes);
}

/// A batch whose bytes the log gave back and whose segment file is damaged is reported as
/// damage, and the walk goes on past it: the messages after it are all shown. Kills `+=`
/// replaced with `-=` and `*=` where `Walk::file` steps over such a batch.
#[test]
fn a_dump_goes_on_past_a_given_back_batch_whose_segment_file_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::released::closed_released_store(dir.path());
    let segment = fixtures::released::segment_file(dir.path(), 10);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (report, text) = dumped(dir.path());
    assert!(report.damaged, "{report:?}");
    assert!(
        report.notes.iter().any(|note| note.starts_with("damage: ")),
        "{:?}",
        report.notes
    );
    let shown: Vec<u64> = (0..10).chain(20..35).collect();
    assert_eq!(fixtures::dumped_offsets(&text), shown);
}
