//! What a `cargo mutants` pass over `src/store/partition.rs` (from `SegmentReader::info` on)
//! and `src/store/commitlog.rs` (from `prepare_files` on) found untested (issue 9). Each test
//! says which mutants it kills; each was seen failing with them applied by hand.

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::{Store, StoreError};

/// The file, byte and reason of the `Corrupt` error that refuses to open the store in
/// `dir`; fails the test if the open succeeds (`accepted` says what it took) or fails
/// otherwise.
fn refused_as_corrupt(dir: &Path, accepted: &str) -> (PathBuf, u64, String) {
    match Store::open(dir, fixtures::small_store_config()) {
        Err(StoreError::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("{accepted} was accepted"),
    }
}
/// A read of a segment whose own file cannot be read (a directory stands in its place, as
/// a damaged data directory may have it) fails with an error naming the segment and the
/// reason, rather than retrying the failed read forever. Kills the match guard
/// `e.kind() == std::io::ErrorKind::Interrupted` replaced with `true`, and its `==` replaced
/// with `!=`, in `read_file_at` (every failed read was retried).
#[test]
fn a_read_of_a_segment_file_that_cannot_be_read_fails_naming_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    // Messages 0..15: segment 0 sealed and copied to its own file, segment 10 active.
    let store = fixtures::released::store_with(dir.path(), 15);
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let file = fixtures::released::segment_file(dir.path(), 0);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();

    let reader = store.open_segment(&partition, 0).unwrap();
    assert!(reader.materialized_file().is_some(), "served from its file");
    let read = fixtures::finishes("the read of the segment", move || {
        let mut buf = vec![0u8; 4096];
        reader.read_at(0, &mut buf)
    });
    match read {
        Err(error @ StoreError::Io { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("reading segment 0 of t partition 0's own file"),
                "{text}"
            );
            assert!(text.contains("Is a directory"), "{text}");
        }
        other => panic!("a segment file that cannot be read read as {other:?}"),
    }

    // The active segment, read from the commit log, is untouched.
    let reader = store.open_segment(&partition, 10).unwrap();
    let mut buf = vec![0u8; 5 * fixtures::released::MESSAGE_BYTES];
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), buf.len());
    assert_eq!(
        &buf[..fixtures::released::MESSAGE_BYTES],
        &fixtures::released::message(10)[..]
    );
    drop(reader);
    store.close().unwrap();
}

/// The small store's commit-log file size.
const FILE_BYTES: u64 = 64 * 1024;

/// A store (`small_store_config`) whose lines topic "t" holds lines `0..count`, closed.
fn closed_store_with_lines(dir: &Path, count: u64) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, count);
    store.close().unwrap();
}

fn log_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// An open refuses a store whose older commit-log file (not the one the log ends in) was
/// cut short, naming the file and its length, rather than serving the messages it held
/// from beyond the file's end. Kills `check_file` -> `Ok(())` and `check_length` ->
/// `Ok(())`.
#[test]
fn an_open_refuses_a_commit_log_file_cut_short_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 2000);
    fixtures::assert_several_log_files(dir.path());
    let cut = log_file(dir.path(), 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(4096)
        .unwrap();

    let (path, offset, reason) = refused_as_corrupt(dir.path(), "a commit-log file cut short");
    assert_eq!(path, cut);
    assert_eq!(offset, 4096, "the file's length");
    assert!(reason.contains("is not 65536 bytes long"), "{reason}");
}

/// An open refuses a store whose commit-log directory holds a file, between the log's
/// files, whose name is not the start of a file (a multiple of the file size), naming that
/// file and saying so. Kills `check_name` -> `Ok(())` (the open was refused, but as a file
/// missing from the middle of the log, naming another file).
#[test]
fn an_open_refuses_a_commit_log_file_whose_name_is_not_a_files_start() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 2000);
    fixtures::assert_several_log_files(dir.path());
    let stray = log_file(dir.path(), 100);
    std::fs::write(&stray, vec![0u8; FILE_BYTES as usize]).unwrap();

    let (path, _, reason) = refused_as_corrupt(dir.path(), "a misnamed commit-log file");
    assert_eq!(path, stray, "{reason}");
    assert!(
        reason.contains("name is not a multiple of the file size 65536"),
        "{reason}"
    );
}

/// A commit-log file past the log's end that holds no record (the next file, made ahead of
/// need, left behind by a crash) is removed at open, and the log later rolls into a file of
/// that name: every message appended then reads back. Kills `remove_unused_file` ->
/// `Ok(())` (the file stayed, and the roll failed to make it: it exists).
#[test]
fn an_empty_commit_log_file_past_the_logs_end_is_removed_and_the_log_rolls_into_its_place() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 100);
    assert_eq!(fixtures::log_bases(dir.path()), [0]);
    let left_behind = log_file(dir.path(), FILE_BYTES);
    std::fs::write(&left_behind, vec![0u8; FILE_BYTES as usize]).unwrap();

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::append_lines(&store, &partition, 100, 2000);
    fixtures::assert_reads(&store, &partition, 0, 2000);
    store.close().unwrap();
    fixtures::assert_several_log_files(dir.path());
}

/// A commit-log file past the log's end that holds a valid record is refused, naming the
/// file and the byte of the record, rather than removed (it may be messages a repair can
/// keep). Kills `remove_unused_file` -> `Ok(())` (the open went on, the file left alone).
#[test]
fn a_commit_log_file_past_the_logs_end_holding_a_record_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 100);
    assert_eq!(fixtures::log_bases(dir.path()), [0]);
    let past_end = log_file(dir.path(), FILE_BYTES);
    std::fs::copy(log_file(dir.path(), 0), &past_end).unwrap();

    let (path, offset, reason) = refused_as_corrupt(dir.path(), "a record past the log's end");
    assert_eq!(path, past_end, "{reason}");
    assert_eq!(offset, 0, "the record's byte");
    assert!(
        reason.contains("a valid record lies past the log's end"),
        "{reason}"
    );
    assert!(reason.contains("commitfs check --repair"), "{reason}");
    assert!(
        past_end.exists(),
        "the refused open left the file for a repair"
    );
}
