//! What a `cargo mutants` pass over `src/store/commitlog.rs` (131 of its 247 mutants run)
//! found untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig, StoreError};

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open store")
}

/// The commit-log file of the store at `dir` that starts at log offset `base`.
fn log_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// Kills `Record::path` -> `Default::default()`: a message whose bytes in the log were
/// damaged is refused with an error that names the commit-log file and the byte where its
/// batch starts (README: a message the store cannot serve names file and byte), and the
/// messages around it still read.
#[test]
fn a_damaged_message_is_refused_naming_its_commit_log_file_and_byte() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures::AlteredLine {
        store,
        partition,
        log_file,
        batch_at,
    } = fixtures::store_with_line_1_altered_in_the_log(dir.path());

    match store.read_message(&partition, 1) {
        Err(StoreError::Corrupt {
            path: named,
            offset,
            ..
        }) => {
            assert_eq!(named, log_file, "the error names the commit-log file");
            assert_eq!(offset, batch_at, "and the byte its batch starts at");
        }
        other => panic!("a damaged message read as {other:?}"),
    }
    fixtures::assert_reads(&store, &partition, 0, 1);
    fixtures::assert_reads(&store, &partition, 2, 3);
    store.close().unwrap();
}

/// Kills `-` -> `+` in both of `CommitLog::open`'s `end - write_base` where it cuts a torn
/// tail (zeroing from, and flushing from, that byte of the file being written): a torn batch
/// after the log's end in its second file is zeroed at the next open (README: bytes after the
/// log's end are zeroes), durably — a power loss after that open does not bring it back —
/// and every message still reads. The cut must be in a file other than the first, where
/// `end - base` and `end + base` are the same.
#[cfg(feature = "failpoints")]
#[test]
fn a_torn_tail_in_a_later_log_file_is_zeroed_durably_at_open() {
    use fixtures::power_loss::{crash_copy, PowerLoss};

    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 1000);
    store.sync().unwrap();
    store.halt_without_cleanup();
    drop((partition, store));

    // A batch the crash tore: its header reached the disk, its CRC is wrong.
    let path = log_file(dir.path(), 64 * 1024);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = log_end(&bytes);
    assert!(end > 0, "the log goes on into its second file");
    let torn = torn_batch();
    bytes[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&path, &bytes).unwrap();
    commitfs::store::faults::assume_durable(&path);

    let store = open(dir.path());
    let after_open = std::fs::read(&path).unwrap();
    assert!(
        after_open[end..].iter().all(|&b| b == 0),
        "the torn batch past the log's end (byte {end}) is still there after the open"
    );
    store.halt_without_cleanup();
    drop(store);

    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path(), PowerLoss::NAMES_LOST);
    let after_loss = std::fs::read(log_file(copy.path(), 64 * 1024)).unwrap();
    assert!(
        after_loss[end..].iter().all(|&b| b == 0),
        "a power loss after the open brought the torn batch back: its zeroing was not made durable"
    );
    let store = open(copy.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 1000);
    fixtures::assert_reads(&store, &partition, 0, 1000);
    store.close().unwrap();
}

/// Kills `*` -> `+` (and `/`) in `CommitLog::disk_bytes`'s `blocks * 512`, its count of a
/// file not mapped now (a sealed file after a restart, until read): after a restart, the
/// store's disk usage still counts every commit-log file holding messages, as `du` would.
#[test]
fn after_a_restart_disk_usage_counts_the_sealed_log_files_it_has_not_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // 2,000-byte messages: about 30 a file, so the log's files outweigh its queue.
    let message = |i: u64| format!("{i:01999}\n").into_bytes();
    for i in 0..600 {
        store.append(&partition, &message(i), None).unwrap();
    }
    store.close().unwrap();
    drop((partition, store));

    let store = open(dir.path());
    let holding_messages: Vec<PathBuf> = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !fixtures::batch_starts(&std::fs::read(path).unwrap()).is_empty())
        .collect();
    assert!(holding_messages.len() >= 15, "{holding_messages:?}");
    let log_blocks: u64 = holding_messages.iter().map(|path| disk_bytes(path)).sum();
    let usage = store.disk_usage();
    assert!(
        usage >= log_blocks,
        "disk usage {usage} after a restart is less than the {log_blocks} bytes of the commit-log files holding messages"
    );
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(store.read_message(&partition, 599).unwrap(), message(599));
    store.close().unwrap();
}

/// Kills `>` -> `>=` and `+` -> `-` in `CommitLog::files_between`'s `f.base + file_bytes >
/// from`, which had a reader of a segment starting exactly at a file's start pin the file
/// before it (`>=`) or, instead of the segment's files, the first one of the log (`-`, its
/// `0 - file_bytes` wrapping): once retention removes the older files, the open reader holds
/// none of them, so the disk usage is the same with the reader open as without (issue 9:
/// "pin only what the segment needs").
#[test]
fn a_reader_of_a_segment_starting_a_file_holds_no_earlier_file_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 3,150-byte messages, one batch of 3,214 bytes each: exactly 20 to a 64 KiB file, so
    // segment 40 (10 messages a segment) starts file 2 at its first byte.
    let message = |i: u64| format!("{i:03149}\n").into_bytes();
    let segment_bytes = 10 * message(0).len() as u64;
    let settings = commitfs::store::TopicSettings {
        // Keeps the six newest segments: retention drops segments 0 to 30, files 0 and 1.
        retention_bytes: Some(6 * segment_bytes),
        ..fixtures::lines_topic(1)
    };
    let partition = fixtures::new_partition(&store, "t", settings);
    for i in 0..100 {
        store.append(&partition, &message(i), None).unwrap();
    }
    let file_2 = std::fs::read(log_file(dir.path(), 2 * 64 * 1024)).unwrap();
    let at_start = &file_2[64..64 + message(40).len()];
    assert_eq!(at_start, message(40), "message 40 opens file 2");

    let reader = store.open_segment(&partition, 40).unwrap();
    store.enforce_retention().unwrap();
    assert_eq!(partition.start_offset(), 40);
    assert!(
        !log_file(dir.path(), 64 * 1024).exists(),
        "file 1 was removed"
    );
    let with_reader = store.disk_usage();
    let mut bytes = vec![0u8; segment_bytes as usize];
    assert_eq!(reader.read_at(0, &mut bytes).unwrap(), bytes.len());
    assert_eq!(bytes, (40..50).flat_map(message).collect::<Vec<u8>>());
    drop(reader);
    assert_eq!(
        with_reader,
        store.disk_usage(),
        "the reader of segment 40 kept a removed commit-log file on disk"
    );
    store.close().unwrap();
}

/// The blocks `path` occupies, in bytes (what `du` counts).
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Where the batches at the start of a commit-log file's `bytes` end.
#[cfg(feature = "failpoints")]
fn log_end(bytes: &[u8]) -> usize {
    fixtures::batch_starts(bytes).last().map_or(0, |&start| {
        start + u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize
    })
}

/// 200 bytes that start like a batch (size, magic: README "On-disk format") but whose CRC
/// and contents are garbage.
#[cfg(feature = "failpoints")]
fn torn_batch() -> Vec<u8> {
    let mut bytes = vec![0xAB; 200];
    bytes[0..4].copy_from_slice(&200u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&0xC0F5_BA7Cu32.to_le_bytes());
    bytes
}
