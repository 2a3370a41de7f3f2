//! What an in-order `cargo mutants` pass over `src/store/commitlog.rs` lines 1–745 (up to
//! `check_contiguous`) found untested (issue 9). Each test says which mutants it kills. Every
//! test holds `FailScenario` (failpoints are global: a one-shot failpoint is taken by
//! whichever test's store reaches it first).

mod fixtures;

use std::ops::ControlFlow;

use commitfs::store::{Store, StoreError};

/// After retention removed the commit-log files holding a key's older messages, a lookup of
/// that key finds its messages still stored and takes the index entries of the removed ones
/// for what they are (gone), not for damage. Kills `CommitLog::min_offset` as `0` (line 243:
/// every index entry below the written end taken as stored, so a removed one is reported as
/// a key index pointing at no batch) and as `1` (the same for every entry but one at 0).
#[test]
fn a_key_lookup_after_retention_removed_log_files_finds_the_kept_messages() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let mut settings = fixtures::keyed_topic(1);
    settings.retention_bytes = Some(1);
    let topic = store.create_topic("t", settings).unwrap();
    let partition = topic.partition(0).unwrap();
    let padding = "x".repeat(1000);
    for i in 0..200 {
        let line = format!("k:{i} {padding}\n");
        store.append(&partition, line.as_bytes(), Some(1)).unwrap();
    }
    fixtures::assert_several_log_files(dir.path());
    store.enforce_retention().unwrap();
    assert_ne!(
        fixtures::log_bases(dir.path())[0],
        0,
        "retention removed the first file"
    );
    let start = partition.start_offset();
    assert!(start > 0, "retention moved the start");

    let mut found = Vec::new();
    let lookup = store.for_each_key_match(&topic, None, b"k", |m| {
        found.push(m.offset);
        ControlFlow::Continue(())
    });
    assert!(lookup.is_ok(), "{lookup:?}");
    let stored: Vec<u64> = (start..partition.end_offset()).rev().collect();
    assert_eq!(found, stored);
    store.close().unwrap();
}

/// A read of a message whose batch header in a later commit-log file is damaged fails naming
/// that file and the byte of it where the batch starts. Kills `CommitLog::path_of` as
/// `Default::default()` and its `-` as `+` and as `/` and its `%` as `/` and as `+` (line
/// 337: the error named no file, or a file the batch is not in).
#[test]
fn a_damaged_batch_header_in_a_later_log_file_is_reported_in_that_file() {
    use std::os::unix::fs::FileExt;
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let padding = "x".repeat(1000);
    for i in 0..100 {
        let line = format!("{i} {padding}\n");
        store.append(&partition, line.as_bytes(), None).unwrap();
    }
    store.sync().unwrap();
    let file_bytes = fixtures::small_store_config().commit_log_file_bytes;
    let base = fixtures::log_bases(dir.path())[1];
    assert_eq!(base, file_bytes, "the log goes on into a second file");
    let log_file = dir.path().join("commitlog").join(format!("{base:020}"));
    let bytes = std::fs::read(&log_file).unwrap();
    let at = fixtures::batch_starts(&bytes)[1];
    let offset = fixtures::batch_first_offset(&bytes, at);
    // The batch's magic (README "On-disk format": bytes 4..8), through the store's mapping.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .unwrap();
    file.write_at(&[0; 4], at as u64 + 4).unwrap();

    match store.read_message(&partition, offset) {
        Err(StoreError::Corrupt {
            path,
            offset: byte,
            reason,
        }) => {
            assert_eq!(path, log_file, "{reason}");
            assert_eq!(byte, at as u64, "{reason}");
        }
        other => panic!("{other:?}"),
    }
    store.close().unwrap();
}

/// Once the log rolls into its second file, the third is made ahead of need by the preparer
/// thread, off the write path, before any append needs it. Kills `request_next` as `()`
/// (`src/store/commitlog.rs` line 437: nothing made ahead) and `+` as `-` in `next_file`
/// (line 468: the file before the new one asked for, which exists already).
#[test]
fn the_commit_log_file_after_the_next_is_made_ahead_of_need() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::released::small_files_config();
    let file_bytes = config.commit_log_file_bytes;
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // One message per batch: 400 batches fill the first 16 KiB log file, not the second.
    fixtures::append_lines(&store, &partition, 0, 400);
    fixtures::made_ahead(&dir.path().join(format!("commitlog/{:020}", 2 * file_bytes)));
    assert_eq!(partition.end_offset(), 400);
    store.close().unwrap();
}
