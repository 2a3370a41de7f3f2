//! What a `cargo mutants` pass over `src/store/partition.rs` found untested (issue 9). Each
//! test says which mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use commitfs::store::{Store, StoreError};

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

/// The commit-log file of the store at `dir` that starts at log offset `base`.
fn log_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes are there")
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
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.sync().unwrap();

    let path = log_file(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 3, "one batch an append");
    let at = starts[1] + find(&bytes[starts[1]..starts[2]], &fixtures::line(1));
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let reader = store.open_segment(&partition, 0).unwrap();
    let mut segment = vec![0u8; 100];
    match reader.read_at(0, &mut segment) {
        Err(StoreError::Corrupt {
            path: named,
            offset,
            ..
        }) => {
            assert_eq!(named, path, "the error names the commit-log file");
            assert_eq!(offset, starts[1] as u64, "and the byte its batch starts at");
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
