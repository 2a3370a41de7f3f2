//! What a `cargo mutants` pass over `src/store/commitlog.rs` from `CommitLog::stop` on (78
//! of those 116 mutants run, up to `check_contiguous`) found untested (issue 9), and tests
//! written ahead for a few mutants after it. Each test says which mutants it kills.

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig, StoreError};

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open store")
}

/// A store (this file's `config`) whose topic "t" holds lines `0..count`, closed.
fn closed_store_with_lines(dir: &Path, count: u64) {
    let store = open(dir);
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, count);
    store.close().unwrap();
}

/// Every message of a partition, oldest first.
#[cfg(feature = "failpoints")]
fn messages(store: &Store, partition: &commitfs::store::Partition) -> Vec<String> {
    (partition.start_offset()..partition.end_offset())
        .map(|offset| {
            let bytes = store.read_message(partition, offset).expect("stored");
            String::from_utf8(bytes).expect("UTF-8")
        })
        .collect()
}

/// Kills `-` -> `+` in `Appender::discard_unpublished`'s `from.max(file.base) - file.base`
/// and `+` -> `-` and `-` -> `+` in its `to.min(file.base + file_bytes) - file.base`: a
/// failed write that stored part of an append's batches (a `short` write) in the log's
/// second file fails the append, and after a reopen none of that append's messages is
/// there, though the first of its batches reached the file whole. The existing test fails
/// the write in the first file, where `file.base` is 0 and these agree.
#[cfg(feature = "failpoints")]
#[test]
fn a_failed_write_in_a_later_log_file_leaves_none_of_its_append_after_a_reopen() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    // About 100 bytes a message: 1,000 take the log well into its second 64 KiB file.
    let earlier: Vec<String> = (0..1000)
        .map(|i| format!("k{}:earlier {i:080}\n", i % 5))
        .collect();
    for chunk in earlier.chunks(10) {
        store
            .append_batch(&partition, &fixtures::keyed_messages(chunk))
            .unwrap();
    }
    let second = dir
        .path()
        .join("commitlog")
        .join(format!("{:020}", 64 * 1024));
    let holding = fixtures::batch_starts(&std::fs::read(&second).unwrap());
    assert!(!holding.is_empty(), "the log goes on in its second file");

    // 40 messages, 10 to a segment: four batches, one `pwrite` that stores half of them.
    let failed: Vec<String> = (0..40)
        .map(|i| format!("k{}:failed {i}\n", i % 5))
        .collect();
    fail::cfg("mapped::write_at", "1*return(short@commitlog)").unwrap();
    let refused = store.append_batch(&partition, &fixtures::keyed_messages(&failed));
    fail::remove("mapped::write_at");
    assert!(
        matches!(
            &refused,
            Err(StoreError::Io { .. } | StoreError::DiskFull(_))
        ),
        "{refused:?}"
    );
    assert_eq!(partition.end_offset(), 1000);
    drop((partition, store));

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(
        partition.end_offset(),
        1000,
        "the reopened store recovered messages of the failed append"
    );
    assert_eq!(messages(&store, &partition), earlier);
    let next = store
        .append(&partition, b"k0:after the reopen\n", Some(2))
        .unwrap();
    assert_eq!(next.first_offset, 1000);
    store.close().unwrap();
}

/// Kills `Appender::position` -> `0`: a key-index file is named by the commit-log offset
/// where the next batch went when it was started (README "Key-index files"), not by one
/// past the previous file's name.
#[test]
fn key_index_files_are_named_by_the_log_offset_of_their_first_batch() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // Three entries a file (entry 0 is the null entry).
    let config = StoreConfig {
        index_entries: 4,
        ..config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    for i in 0..7 {
        let line = format!("k{i}:message {i}\n");
        store.append(&partition, line.as_bytes(), Some(2)).unwrap();
    }
    let log = std::fs::read(dir.path().join("commitlog").join(format!("{:020}", 0))).unwrap();
    let batches = fixtures::batch_starts(&log);
    assert_eq!(batches.len(), 7, "one batch an append");

    let mut names: Vec<u64> = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    names.sort_unstable();
    let started_at: Vec<u64> = [0, 3, 6].iter().map(|&i| batches[i] as u64).collect();
    assert_eq!(
        names, started_at,
        "index files are named by the log offsets of batches 0, 3 and 6"
    );
    let topic = store.topic("t").unwrap();
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k4"),
        [(0, 4, "k4:message 4\n".to_owned())]
    );
    store.close().unwrap();
}

/// Kills `+=` -> `*=` in `Appender::reserve`'s `local += size`: one append whose batches
/// fill three commit-log files (it starts at the log's first byte) stores and reads back
/// every message, and a clean close leaves no commit-log file that holds no batch (a file
/// past the log's end would look like a log past its end). With `*=` the later files are
/// never obtained (the append panics); with `-=` (which other tests catch too) batches
/// obtain files ahead of need, and those stay behind empty.
#[test]
fn one_append_over_three_log_files_stores_it_whole_and_leaves_no_empty_file() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // 3,000-byte messages, 10 a segment: 180 KB in batches cut at segments and file ends.
    let lines: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("{i:02999}\n").into_bytes())
        .collect();
    let batch: Vec<commitfs::store::NewMessage<'_>> = lines
        .iter()
        .map(|line| commitfs::store::NewMessage {
            payload: line,
            key_len: None,
        })
        .collect();
    assert_eq!(
        store.append_batch(&partition, &batch).unwrap().first_offset,
        0
    );
    for (offset, line) in lines.iter().enumerate() {
        assert_eq!(
            &store.read_message(&partition, offset as u64).unwrap(),
            line
        );
    }
    store.close().unwrap();
    drop((partition, store));

    let mut files: Vec<(String, usize)> = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let batches = fixtures::batch_starts(&std::fs::read(&path).unwrap()).len();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                batches,
            )
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "three files hold the append: {files:?}");
    assert!(
        files.iter().all(|&(_, batches)| batches > 0),
        "a commit-log file without a batch: {files:?}"
    );

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 60);
    assert_eq!(store.read_message(&partition, 59).unwrap(), lines[59]);
    store.close().unwrap();
}

/// Where the batches at the start of a commit-log file's `bytes` end.
fn log_end(bytes: &[u8]) -> u64 {
    fixtures::batch_starts(bytes).last().map_or(0, |&start| {
        (start + u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize) as u64
    })
}

/// Kills `-` -> `+` and `-` -> `/` in `create_end_file`'s error offset `end - write_base`:
/// a store whose commit-log file holding the log's end is missing is refused with an error
/// naming that file and the byte in it where the log ends.
#[test]
fn a_missing_log_file_holding_the_end_is_refused_naming_it_and_the_byte() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 1500);

    let second = dir
        .path()
        .join("commitlog")
        .join(format!("{:020}", 64 * 1024));
    let end = log_end(&std::fs::read(&second).unwrap());
    assert!(end > 0, "the log ends in its second file");
    std::fs::remove_file(&second).unwrap();

    match Store::open(dir.path(), config()) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, second, "the error names the missing file");
            assert_eq!(offset, end, "and the byte in it where the log ends");
        }
        Err(other) => panic!("refused, but as {other:?}"),
        Ok(_) => panic!("a store without the file holding its end opened"),
    }
}

/// Kills `-` -> `+` in `open_files_to`'s `end - write_base`, the byte of the file being
/// written from which the open allocates its blocks: a data directory copied sparsely
/// (holes where the file being written was never written) gets those holes filled when it
/// is opened (README: a sparse copy's holes are allocated before use, so a full disk is
/// `ENOSPC`, never a `SIGBUS`), also when the log ends in a later file. The existing sparse
/// copy test ends in the first file, where `end + 0` and `end - 0` agree.
#[test]
fn opening_a_sparse_copy_fills_the_holes_of_a_later_log_file_being_written() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 1000);

    // The second file as a sparse copy leaves it: its written 4 KiB blocks, then a hole.
    let second = dir
        .path()
        .join("commitlog")
        .join(format!("{:020}", 64 * 1024));
    let bytes = std::fs::read(&second).unwrap();
    let end = log_end(&bytes);
    assert!(
        end > 0 && end < 32 * 1024,
        "the log ends early in its second file"
    );
    let written = end.div_ceil(4096) * 4096;
    std::fs::remove_file(&second).unwrap();
    let file = std::fs::File::create(&second).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes[..written as usize], 0).unwrap();
    file.set_len(64 * 1024).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let blocks = |path: &Path| std::fs::metadata(path).unwrap().blocks() * 512;
    assert!(
        blocks(&second) < 64 * 1024,
        "the copy of the second file is sparse"
    );

    let store = open(dir.path());
    assert!(
        blocks(&second) >= 64 * 1024,
        "the open left holes in the file being written: {} of 65536 bytes allocated",
        blocks(&second)
    );
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 990, 1000);
    fixtures::append_lines(&store, &partition, 1000, 1100);
    fixtures::assert_reads(&store, &partition, 1000, 1100);
    store.close().unwrap();
}

/// Kills `check_contiguous` -> `Ok(())`: a store whose commit log lacks a file between two
/// others is refused with an error naming the missing file.
#[test]
fn a_log_file_missing_in_the_middle_is_refused_naming_it() {
    // Failpoints are global: every test of this binary takes the scenario lock.
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_lines(dir.path(), 2000);

    let log = dir.path().join("commitlog");
    assert!(
        log.join(format!("{:020}", 2 * 64 * 1024)).exists(),
        "three files"
    );
    let middle = log.join(format!("{:020}", 64 * 1024));
    std::fs::remove_file(&middle).unwrap();

    match Store::open(dir.path(), config()) {
        Err(StoreError::Corrupt { path, .. }) => {
            assert_eq!(path, middle, "the error names the missing file")
        }
        Err(other) => panic!("refused, but as {other:?}"),
        Ok(_) => panic!("a store without its middle commit-log file opened"),
    }
}
