//! What a `cargo mutants` pass over `src/store/commitlog.rs`, `retention.rs` and
//! `reserve.rs` found untested (issue 9). Each test says which mutants it kills.

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
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3);
    store.sync().unwrap();

    let path = log_file(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 3, "one batch an append");
    let payload = fixtures::line(1);
    let at = starts[1] + find(&bytes[starts[1]..starts[2]], &payload);
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    match store.read_message(&partition, 1) {
        Err(StoreError::Corrupt {
            path: named,
            offset,
            ..
        }) => {
            assert_eq!(named, path, "the error names the commit-log file");
            assert_eq!(offset, starts[1] as u64, "and the byte its batch starts at");
        }
        other => panic!("a damaged message read as {other:?}"),
    }
    fixtures::assert_reads(&store, &partition, 0, 1);
    fixtures::assert_reads(&store, &partition, 2, 3);
    store.close().unwrap();
}

/// Where `needle` starts in `haystack`.
#[track_caller]
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes are there")
}
