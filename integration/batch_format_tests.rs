//! On-disk format 2: a write's messages are stored in batches (one header and CRC32C per
//! batch). Batches of every shape read back, recover and are found by key; a crash that
//! tears or damages the last batch loses that batch whole and nothing else; damage to an
//! earlier one refuses the open; the log costs little more than the messages' bytes; a
//! store of the older format is refused untouched.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use commitfs::store::{NewMessage, Partition, Store, StoreConfig, StoreError};

mod fixtures;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

/// Message `n` of batch `b`: keyed when `n` is even, lengths from empty to a few hundred
/// bytes.
fn message(b: usize, n: usize) -> Vec<u8> {
    let filler = "x".repeat((b * 37 + n * 11) % 300);
    match n % 2 {
        0 => format!("key-{}:b{b} n{n} {filler}\n", (b + n) % 9).into_bytes(),
        _ => format!("b{b} n{n} {filler}\n").into_bytes(),
    }
}

/// Appends `batches` writes of `sizes[b]` messages each, as the mount does: each write is
/// one `append_batch`. Returns every message in offset order.
fn append_batches(store: &Store, partition: &Partition, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for (b, &count) in sizes.iter().enumerate() {
        let payloads: Vec<Vec<u8>> = (0..count).map(|n| message(b, n)).collect();
        let messages = fixtures::keyed_messages(&payloads);
        store.append_batch(partition, &messages).expect("append");
        all.extend(payloads);
    }
    all
}

/// Asserts the store in `dir` holds exactly `messages` in partition 0 of topic "t": each one
/// by offset, every segment's bytes, each message's place, and the newest offset of every
/// key; then that it takes a new message after them.
fn assert_holds_exactly(dir: &Path, messages: &[Vec<u8>]) {
    let store = open(dir);
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset(), messages.len() as u64);
    let mut newest_of_key = BTreeMap::new();
    let mut segments: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (offset, payload) in messages.iter().enumerate() {
        let offset = offset as u64;
        assert_eq!(&store.read_message(&partition, offset).unwrap(), payload);
        let segment = segments.entry(partition.segment_base(offset)).or_default();
        let place = store.locate(&partition, offset).unwrap();
        assert_eq!(
            (place.position, place.len as usize),
            (segment.len() as u64, payload.len())
        );
        segment.extend_from_slice(payload);
        if let Some(colon) = payload.iter().position(|&b| b == b':') {
            newest_of_key.insert(payload[..colon].to_vec(), offset);
        }
    }
    for (base, expected) in &segments {
        let reader = store.open_segment(&partition, *base).unwrap();
        let mut bytes = vec![0u8; expected.len() + 10];
        // Odd-sized reads from odd positions, crossing messages and batches.
        let mut filled = 0;
        while filled < bytes.len() {
            let end = (filled + 97).min(bytes.len());
            let n = reader
                .read_at(filled as u64, &mut bytes[filled..end])
                .unwrap();
            if n == 0 {
                break;
            }
            filled += n;
        }
        assert_eq!(&bytes[..filled], &expected[..], "segment {base}");
    }
    for (key, newest) in &newest_of_key {
        let mut found = None;
        store
            .for_each_key_match(&topic, None, key, |m| {
                found = Some(m.offset);
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(found, Some(*newest), "key {}", String::from_utf8_lossy(key));
    }
    let next = store.append(&partition, b"key-0:after\n", Some(5)).unwrap();
    assert_eq!(next.first_offset, messages.len() as u64);
}

/// A crashed store whose topic "t" got one write per entry of `sizes`.
fn crashed_store(dir: &Path, sizes: &[usize]) -> Vec<Vec<u8>> {
    let store = open(dir);
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let messages = append_batches(&store, &partition, sizes);
    store.halt_without_cleanup();
    messages
}

fn log_file(dir: &Path) -> PathBuf {
    dir.join("commitlog").join("0".repeat(20))
}

/// (start, end) of every batch in a commit-log file (README "On-disk format": a batch
/// starts with its size and magic).
fn batch_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let magic = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if magic != 0xC0F5_BA7C {
            break;
        }
        ranges.push((at, at + size));
        at += size;
    }
    ranges
}

fn commitfs_check(dir: &Path) -> (Option<i32>, String) {
    let output = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("run commitfs check");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), text)
}

#[test]
fn batches_of_every_shape_read_back_recover_and_are_found_by_key() {
    let dir = tempfile::tempdir().unwrap();
    // With 10-message segments and 64 KiB files: batches cut at segments and files, one
    // message alone, a write bigger than a file.
    let sizes = [1, 3, 10, 27, 1, 250, 9, 640, 2, 33];
    let messages = crashed_store(dir.path(), &sizes);
    let files = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .count();
    assert!(files >= 3, "the writes span {files} commit-log files");
    // Recovered after the crash, from the log.
    assert_holds_exactly(dir.path(), &messages);
    // Consume queues and index rebuilt from the batches alone.
    std::fs::remove_dir_all(dir.path().join("queues")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let mut with_after = messages.clone();
    with_after.push(b"key-0:after\n".to_vec());
    assert_holds_exactly(dir.path(), &with_after);
    let (code, report) = commitfs_check(dir.path());
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn a_torn_last_batch_is_cut_whole_at_every_byte() {
    let template = tempfile::tempdir().unwrap();
    let messages = crashed_store(template.path(), &[5, 5, 5, 5, 5, 5]);
    let bytes = std::fs::read(log_file(template.path())).unwrap();
    let ranges = batch_ranges(&bytes);
    assert_eq!(ranges.len(), 6, "one batch per write of 5 messages");
    let (start, end) = ranges[5];
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        fixtures::copy_dir(template.path(), dir.path());
        let mut torn = bytes.clone();
        torn[cut..end].fill(0);
        std::fs::write(log_file(dir.path()), &torn).unwrap();
        assert_holds_exactly(dir.path(), &messages[..25]);
    }
}

#[test]
fn a_flipped_bit_in_the_last_batch_cuts_it_whole_and_in_an_earlier_one_refuses_the_open() {
    let template = tempfile::tempdir().unwrap();
    let messages = crashed_store(template.path(), &[5, 5, 5, 5, 5, 5]);
    let bytes = std::fs::read(log_file(template.path())).unwrap();
    let ranges = batch_ranges(&bytes);
    let damage = |byte: usize| {
        let dir = tempfile::tempdir().unwrap();
        fixtures::copy_dir(template.path(), dir.path());
        let mut damaged = bytes.clone();
        damaged[byte] ^= 1 << (byte % 8);
        std::fs::write(log_file(dir.path()), &damaged).unwrap();
        (dir, damaged)
    };
    let (start, end) = ranges[5];
    for byte in start..end {
        let (dir, _) = damage(byte);
        assert_holds_exactly(dir.path(), &messages[..25]);
    }
    let (start, end) = ranges[2];
    for byte in (start..end).step_by(7) {
        let (dir, damaged) = damage(byte);
        let error = Store::open(dir.path(), fixtures::small_store_config())
            .err()
            .expect("damage before the last batch refuses the open");
        let text = error.to_string();
        assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
        let named = format!("{} byte {start}:", log_file(dir.path()).display());
        assert!(text.contains(&named), "{text}");
        assert_eq!(std::fs::read(log_file(dir.path())).unwrap(), damaged);
    }
}

#[test]
fn the_commit_log_holds_100_byte_messages_in_little_more_than_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file_bytes: u64 = 1 << 20;
    let config = StoreConfig {
        commit_log_file_bytes: file_bytes,
        segment_messages: 1_000_000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let mut settings = fixtures::keyed_topic(1);
    settings.key_separator = None;
    let partition = fixtures::new_partition(&store, "t", settings);
    // 100 writes of 1,300 lines of 100 bytes: what 100 `cat` writes of 128 KiB carry.
    let line = format!("{}\n", "m".repeat(99));
    let lines: Vec<NewMessage<'_>> = (0..1300)
        .map(|_| NewMessage {
            payload: line.as_bytes(),
            key_len: None,
        })
        .collect();
    for _ in 0..100 {
        store.append_batch(&partition, &lines).unwrap();
    }
    store.close().unwrap();
    let message_bytes = 100 * 1300 * 100;
    let log_bytes: u64 = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    // Whole preallocated files: the last one written and at most one made ahead of need.
    let bound = message_bytes as f64 * 1.05 + 2.0 * file_bytes as f64;
    assert!(
        (log_bytes as f64) <= bound,
        "{log_bytes} bytes of commit log for {message_bytes} bytes of messages"
    );
}

#[test]
fn a_store_of_the_older_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store(dir.path(), &[3]);
    let meta = dir.path().join("store.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains("format_version = 3"), "{text}");
    let older = text.replace("format_version = 3", "format_version = 1");
    std::fs::write(&meta, &older).unwrap();
    let before = fixtures::tree(dir.path());
    let error = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("format 1 is refused");
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::UnsupportedFormat { found: 1, .. }),
        "{message}"
    );
    assert!(message.contains("format 1"), "{message}");
    assert!(message.contains("copy its topics"), "{message}");
    assert_eq!(fixtures::tree(dir.path()), before, "nothing changed");
}

/// A partition whose every message retention removed keeps its `stream` size across a
/// remount (the checkpoint records it: no stored message says it any more), so positions a
/// reader saved still name the same bytes afterwards.
#[test]
fn stream_positions_survive_retention_of_every_message_and_a_remount() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut settings = fixtures::keyed_topic(1);
    settings.retention_ms = Some(1);
    let partition = fixtures::new_partition(&store, "t", settings);
    // Exactly one segment (10 messages): sealed at once, and wholly expired below.
    let lines: Vec<String> = (0..10).map(|i| format!("line-{i:05}\n")).collect();
    let batch: Vec<NewMessage<'_>> = lines
        .iter()
        .map(|line| NewMessage {
            payload: line.as_bytes(),
            key_len: None,
        })
        .collect();
    store.append_batch(&partition, &batch).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    store.enforce_retention().unwrap();
    assert_eq!(partition.start_offset(), 10);
    assert_eq!(partition.stream_end(), 110);
    drop(partition);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.stream_end(), 110);
    assert_eq!(partition.stream_start().unwrap(), 110);
    store.append(&partition, b"next\n", None).unwrap();
    let mut buf = [0u8; 16];
    let read = partition.read_stream(110, &mut buf).unwrap();
    assert_eq!(&buf[..read], b"next\n");
    assert!(matches!(
        partition.read_stream(0, &mut buf),
        Err(StoreError::BeforeStreamStart { start: 110, .. })
    ));
}

/// `commitfs check` of a log of big batches of short lines (what the mount makes of `seq`'s
/// lines written 1 MiB at a time: about 150,000 a batch) finishes at once: each batch is
/// scanned once for all the queue entries that point into it. It was scanned again for
/// each entry (its CRC32C and its whole table), so a check of 200,000 such lines ran for
/// minutes.
#[test]
fn a_check_scans_a_batch_of_150_000_short_lines_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 8 << 20,
        segment_messages: 1 << 20,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let lines: Vec<Vec<u8>> = (0..450_000)
        .map(|n| format!("{n}\n").into_bytes())
        .collect();
    for batch in lines.chunks(150_000) {
        store
            .append_batch(&partition, &fixtures::unkeyed_messages(batch))
            .unwrap();
    }
    store.close().unwrap();
    drop((partition, store));
    // With each entry's batch scanned again, this check took over two minutes.
    let output = Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run commitfs check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("450000 consume-queue entries") && text.contains(" 0 damaged"),
        "{text}"
    );
}
