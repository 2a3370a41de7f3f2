//! Readers in-process (issue 9): what an open segment reader pins and how disk usage counts
//! it (item 5), and damaged or missing records refused with an error naming the file and
//! byte instead of served as empty (item 11).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::{NewMessage, Partition, Store, StoreConfig, StoreError, TopicSettings};

const FILE_BYTES: u64 = 64 * 1024;

mod fixtures;

fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: FILE_BYTES,
        index_entries: 10_000,
        ..fixtures::small_store_config()
    }
}

/// One keyed partition, with a retention bound by bytes where given.
fn settings(retention_bytes: Option<u64>) -> TopicSettings {
    TopicSettings {
        retention_bytes,
        ..fixtures::keyed_topic(1)
    }
}

fn append_n(store: &Store, partition: &Partition, count: usize, bytes: usize) {
    for i in 0..count {
        let line = format!("k{}:{}\n", i % 5, "m".repeat(bytes));
        let message = NewMessage {
            payload: line.as_bytes(),
            key_len: Some(2),
        };
        store.append_batch(partition, &[message]).unwrap();
    }
}

/// Commit-log files of the store in `dir` that this process maps although they are deleted.
fn deleted_but_mapped(dir: &Path) -> BTreeSet<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let wanted = format!("{}/commitlog/", dir.display());
    maps.lines()
        .filter_map(|line| line.strip_suffix(" (deleted)"))
        .filter_map(|line| line.split_once(&wanted).map(|(_, name)| name.to_owned()))
        .collect()
}

/// `old` has one sealed segment at the very start of the log; `busy` then fills four more
/// commit-log files; `old` gets one more message last, in the file being written.
fn old_segment_behind_busy_files(dir: &Path) -> (Arc<Store>, Arc<Partition>, Arc<Partition>) {
    let store = Store::open(dir, config()).unwrap();
    let old = fixtures::new_partition(&store, "old", settings(Some(1)));
    let busy = fixtures::new_partition(&store, "busy", settings(Some(1)));
    append_n(&store, &old, 10, 50);
    // 250 records of about 1 KiB: four 64 KiB files; 250 ends a segment, so busy's active
    // segment is empty and needs no file.
    append_n(&store, &busy, 250, 1000);
    append_n(&store, &old, 1, 50);
    assert!(
        store
            .open_segment(&old, 10)
            .unwrap()
            .info()
            .unwrap()
            .messages
            == 1
    );
    (store, old, busy)
}

#[test]
fn a_reader_of_an_old_sealed_segment_pins_only_the_files_that_segment_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, old, _busy) = old_segment_behind_busy_files(dir.path());
    let reader = store.open_segment(&old, 0).unwrap();
    let before = store.disk_usage();
    store.enforce_retention().unwrap();
    assert_eq!(
        old.start_offset(),
        10,
        "retention removed old's sealed segment"
    );
    let mapped = deleted_but_mapped(dir.path());
    assert_eq!(
        mapped,
        BTreeSet::from(["00000000000000000000".to_owned()]),
        "the reader holds exactly the file of its segment"
    );
    let mut bytes = vec![0u8; 10 * 54];
    assert_eq!(reader.read_at(0, &mut bytes).unwrap(), 10 * 54);
    assert!(
        before > store.disk_usage(),
        "retention freed the later files"
    );
    drop(reader);
    assert!(deleted_but_mapped(dir.path()).is_empty());
}

#[test]
fn disk_usage_counts_a_removed_file_an_open_reader_still_maps() {
    let dir = tempfile::tempdir().unwrap();
    let (store, old, _busy) = old_segment_behind_busy_files(dir.path());
    let reader = store.open_segment(&old, 0).unwrap();
    store.enforce_retention().unwrap();
    let with_reader = store.disk_usage();
    drop(reader);
    let without = store.disk_usage();
    assert_eq!(
        with_reader - without,
        FILE_BYTES,
        "the unlinked file stays on disk until the reader lets go"
    );
}

/// A store, cleanly closed, whose topic `t` has `count` messages of about 1 KiB (keys
/// `k0`..`k4`), spread over several commit-log files.
/// The commit-log bytes of one keyed message of `append_n(…, 1000)` in a batch of its own
/// (README "On-disk format"): the batch header, its end and key-length slots, its bytes.
const ONE_MESSAGE_BATCH: u64 = 60 + 8 + 1004;

fn closed_store(dir: &Path, count: usize) {
    let store = Store::open(dir, config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", settings(None));
    append_n(&store, &partition, count, 1000);
    store.close().unwrap();
}

fn commit_log_file(dir: &Path, index: u64) -> PathBuf {
    dir.join("commitlog")
        .join(format!("{:020}", index * FILE_BYTES))
}

fn queue_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("queues/1/0").join(format!("{base:020}"))
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at).unwrap();
}

#[track_caller]
fn assert_names(error: StoreError, path: &Path, byte: u64) {
    let StoreError::Corrupt {
        path: named,
        offset,
        ..
    } = &error
    else {
        panic!("not a Corrupt error: {error}");
    };
    assert_eq!((named.as_path(), *offset), (path, byte), "{error}");
}

#[test]
fn messages_in_a_zeroed_commit_log_file_are_eio_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), 150);
    let zeroed = commit_log_file(dir.path(), 0);
    overwrite(&zeroed, 0, &vec![0u8; FILE_BYTES as usize]);
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    assert_eq!((partition.start_offset(), partition.end_offset()), (0, 150));
    assert_names(partition.segment(0).unwrap_err(), &zeroed, 0);
    assert_names(
        partition.locate(3).unwrap_err(),
        &zeroed,
        3 * ONE_MESSAGE_BATCH,
    );
    assert_names(
        store.read_message(&partition, 3).unwrap_err(),
        &zeroed,
        3 * ONE_MESSAGE_BATCH,
    );
    // Every timestamp is at or after 0: the search runs down into the zeroed file.
    assert_names(
        partition.offset_for_time(0).unwrap_err(),
        &zeroed,
        37 * ONE_MESSAGE_BATCH,
    );
    assert_names(store.open_segment(&partition, 0).err().unwrap(), &zeroed, 0);
    // The key index's newest candidates are in later files; the damaged ones are reached
    // when every key's candidates are walked.
    let mut visited = 0;
    let walked = store.for_each_key_match(&topic, None, b"k1", |_| {
        visited += 1;
        std::ops::ControlFlow::Continue(())
    });
    let error = walked.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(visited > 0, "the undamaged newer matches came first");
    // Messages in undamaged files are served.
    assert_eq!(store.read_message(&partition, 149).unwrap().len(), 1004);
}

#[test]
fn a_garbled_queue_file_start_is_eio_naming_the_queue_file() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), 25);
    let queue = queue_file(dir.path(), 0);
    overwrite(&queue, 0, &[0xab; 20]);
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_names(partition.locate(0).unwrap_err(), &queue, 0);
    assert_names(partition.segment(0).unwrap_err(), &queue, 0);
    assert_names(store.read_message(&partition, 0).unwrap_err(), &queue, 0);
    assert_eq!(store.read_message(&partition, 1).unwrap().len(), 1004);
}

#[test]
fn a_queue_entry_marked_lost_is_eio_naming_the_queue_file() {
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), 25);
    let queue = queue_file(dir.path(), 10);
    // `commitfs check --repair` marks a message it could not find this way.
    overwrite(&queue, 3 * 20, &u64::MAX.to_le_bytes());
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_names(partition.locate(13).unwrap_err(), &queue, 60);
    let reader = store.open_segment(&partition, 10).unwrap();
    let mut buf = vec![0u8; 20_000];
    assert_names(reader.read_at(0, &mut buf).unwrap_err(), &queue, 60);
    // Reads that end before the lost message are served.
    assert_eq!(reader.read_at(0, &mut buf[..3 * 1004]).unwrap(), 3 * 1004);
}

#[test]
fn a_store_whose_last_record_is_zeroed_or_gone_is_refused_naming_the_file() {
    for remove in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        closed_store(dir.path(), 100);
        let last = commit_log_file(dir.path(), 1);
        assert!(last.exists() && !commit_log_file(dir.path(), 2).exists());
        if remove {
            std::fs::remove_file(&last).unwrap();
        } else {
            overwrite(&last, 0, &vec![0u8; FILE_BYTES as usize]);
        }
        let error = Store::open(dir.path(), config()).err().expect("refused");
        assert!(
            matches!(
                error,
                StoreError::Corrupt { .. } | StoreError::NeedsRepair { .. }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains(&last.display().to_string()),
            "{error} does not name {}",
            last.display()
        );
    }
}
