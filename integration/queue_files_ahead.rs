//! Consume-queue files made ahead of need by the preparer thread (issue 7): a new partition's
//! first file and a segment's successor exist before an append needs them, so the append
//! creates nothing; a full disk while preparing still reaches the append that needs the
//! file as `ENOSPC`; a file prepared but never used neither confuses recovery nor `check`.
//! Every test holds a `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitfs::store::check::{check, CheckOptions};
use commitfs::store::{Partition, Store, StoreConfig, StoreError, Topic};
use fail::FailScenario;

mod fixtures;

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn queue_dir(store_dir: &Path, topic: &Topic, partition: u32) -> PathBuf {
    store_dir
        .join("queues")
        .join(topic.id().to_string())
        .join(partition.to_string())
}

fn prepared(queue_dir: &Path, base: u64) -> PathBuf {
    queue_dir.join(format!("{base:020}.prepared"))
}

/// The names in a partition's queue directory, sorted.
fn names(queue_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(queue_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Waits (bounded: only a broken preparer runs into the deadline) for `path` to exist.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} was never made",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn append_lines(store: &Store, partition: &Partition, from: u64, to: u64) {
    for n in from..to {
        store
            .append(partition, format!("m{n}\n").as_bytes(), None)
            .unwrap();
    }
}

fn contents(store: &Store, partition: &Partition) -> Vec<String> {
    (partition.start_offset()..partition.end_offset())
        .map(|offset| String::from_utf8(store.read_message(partition, offset).unwrap()).unwrap())
        .collect()
}

fn lines(from: u64, to: u64) -> Vec<String> {
    (from..to).map(|n| format!("m{n}\n")).collect()
}

/// Any consume-queue file the write path would have to create fails as on a full disk.
fn refuse_new_queue_files() {
    fail::cfg("mapped::create", "return(enospc@/queues/)").unwrap();
}

#[test]
fn a_new_partitions_first_queue_file_is_made_before_its_first_append() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(3)).unwrap();
    for index in 0..3 {
        wait_for(&prepared(&queue_dir(dir.path(), &topic, index), 0));
    }

    refuse_new_queue_files();
    for index in 0..3 {
        let partition = topic.partition(index).unwrap();
        append_lines(&store, &partition, 0, 3);
        assert_eq!(contents(&store, &partition), lines(0, 3));
        assert_eq!(
            names(&queue_dir(dir.path(), &topic, index)),
            [format!("{:020}", 0)],
            "the prepared file became the segment's queue file"
        );
    }
    fail::remove("mapped::create");
    store.close().unwrap();
}

#[test]
fn the_next_segments_queue_file_is_made_before_the_segment_fills() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let queues = queue_dir(dir.path(), &topic, 0);
    wait_for(&prepared(&queues, 0));
    // Segments of 10 messages: past the middle of the first, the second's file is made.
    append_lines(&store, &partition, 0, 6);
    wait_for(&prepared(&queues, 10));

    refuse_new_queue_files();
    append_lines(&store, &partition, 6, 16);
    fail::remove("mapped::create");
    assert_eq!(contents(&store, &partition), lines(0, 16));
    assert!(names(&queues).contains(&format!("{:020}", 10)));
    store.close().unwrap();
}

#[test]
fn a_full_disk_while_preparing_reaches_the_append_that_needs_the_file_as_enospc() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    // The disk is full from before the topic exists until after its first append.
    fail::cfg("mapped::allocate", "return(enospc@/queues/)").unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    let partition: Arc<Partition> = topic.partition(1).unwrap();
    let refused = store.append(&partition, b"m0\n", None);
    assert!(
        matches!(refused, Err(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!(partition.end_offset(), 0, "nothing stored");

    fail::remove("mapped::allocate");
    append_lines(&store, &partition, 0, 2);
    assert_eq!(contents(&store, &partition), lines(0, 2));
    assert_eq!(
        names(&queue_dir(dir.path(), &topic, 1)),
        [format!("{:020}", 0)],
        "no half-made file is left"
    );
    store.close().unwrap();
}

#[test]
fn prepared_files_nobody_used_neither_confuse_recovery_nor_check() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    let written = topic.partition(0).unwrap();
    append_lines(&store, &written, 0, 6);
    let (written_dir, unwritten_dir) = (
        queue_dir(dir.path(), &topic, 0),
        queue_dir(dir.path(), &topic, 1),
    );
    wait_for(&prepared(&written_dir, 10));
    wait_for(&prepared(&unwritten_dir, 0));
    // A kill -9: no checkpoint since the topic was made, the prepared files left behind.
    store.halt_without_cleanup();
    drop((store, topic, written));

    let options = CheckOptions {
        repair: false,
        segment_messages: None,
        progress: false,
    };
    let report = check(dir.path(), &options).unwrap();
    assert!(!report.damaged(), "{:?}", report.findings);
    // The written partition is noted (its messages came after the checkpoint); the one
    // holding only a prepared file holds nothing to note.
    let unwritten_note = format!("{}:", unwritten_dir.display());
    assert!(
        !report
            .findings
            .iter()
            .any(|finding| finding.to_string().contains(&unwritten_note)),
        "{:?}",
        report.findings
    );

    let made = |path: &Path| std::fs::metadata(path).unwrap().created().unwrap();
    let first_made = made(&prepared(&unwritten_dir, 0));

    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.topic("t").unwrap();
    let (written, unwritten) = (topic.partition(0).unwrap(), topic.partition(1).unwrap());
    // Reused, not made again: a store of many partitions never written would otherwise
    // remake all their files at every open.
    assert_eq!(made(&prepared(&unwritten_dir, 0)), first_made);
    assert_eq!(contents(&store, &written), lines(0, 6));
    assert_eq!(unwritten.end_offset(), 0);
    append_lines(&store, &written, 6, 12);
    append_lines(&store, &unwritten, 0, 2);
    assert_eq!(contents(&store, &written), lines(0, 12));
    assert_eq!(contents(&store, &unwritten), lines(0, 2));
    store.close().unwrap();
    drop((store, topic, written, unwritten));

    let report = check(dir.path(), &options).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// Descriptors this process holds open.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Files made ahead of need are closed until their first append: a topic of 2,000
/// partitions that were never written holds no descriptor (and no map) per partition, so
/// several such topics stay within the usual limit of open files.
#[test]
fn unwritten_partitions_hold_no_descriptor_for_their_prepared_files() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let before = open_descriptors();
    let topic = store
        .create_topic("t", fixtures::keyed_topic(2000))
        .unwrap();
    let queue = queue_dir(dir.path(), &topic, 1999);
    wait_for(&prepared(&queue, 0));
    let held = open_descriptors().saturating_sub(before);
    assert!(
        held < 100,
        "{held} descriptors held for 2,000 unwritten partitions"
    );
    // The first append opens its prepared file, as before.
    let partition = topic.partition(1999).unwrap();
    append_lines(&store, &partition, 0, 3);
    assert!(queue.join(format!("{:020}", 0)).exists());
    assert!(!prepared(&queue, 0).exists());
    assert_eq!(store.read_message(&partition, 2).unwrap(), b"m2\n");
}
