//! The write path under injected faults (issue 9, items 3, 4 and 12), in-process: a panic
//! between the log and the partition fences the store, and a full disk at any reservation of
//! an append (a new key-index file, one partition's consume-queue room) fails the whole
//! append with nothing stored. Every test holds a `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use commitfs::store::{Partition, Store, StoreConfig, StoreError, TopicSettings};
use fail::FailScenario;

mod fixtures;

fn config() -> StoreConfig {
    StoreConfig {
        index_slots: 16,
        ..fixtures::small_store_config()
    }
}

fn settings(partitions: u32) -> TopicSettings {
    fixtures::keyed_topic(partitions)
}

/// Every message of a partition, oldest first.
fn messages(store: &Store, partition: &Partition) -> Vec<String> {
    (partition.start_offset()..partition.end_offset())
        .map(|offset| {
            let bytes = store.read_message(partition, offset).expect("stored");
            String::from_utf8(bytes).expect("UTF-8")
        })
        .collect()
}

fn partition(store: &Store, index: u32) -> Arc<Partition> {
    store.topic("t").unwrap().partition(index).unwrap()
}

#[test]
fn a_panic_between_the_log_and_the_partition_fences_the_store_until_it_is_reopened() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    store.create_topic("t", settings(1)).unwrap();
    let p = partition(&store, 0);
    store.append(&p, b"acknowledged\n", None).unwrap();

    fail::cfg("append::after-log-publish", "panic").unwrap();
    let interrupted = catch_unwind(AssertUnwindSafe(|| {
        store.append(&p, b"interrupted\n", None)
    }));
    fail::remove("append::after-log-publish");
    assert!(interrupted.is_err(), "the failpoint panicked the append");

    // Its record is in the log but not counted by the partition: writing on would give its
    // offset to another message. Every write is refused; reads go on.
    let refused = store.append(&p, b"after the panic\n", None);
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    let refused = store.create_topic("u", settings(1));
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert_eq!(p.end_offset(), 1);
    assert_eq!(messages(&store, &p), ["acknowledged\n"]);
    // No checkpoint may vouch for this state, and the abort marker stays for recovery.
    assert!(matches!(store.checkpoint(), Err(StoreError::Fenced)));
    assert!(matches!(store.close(), Err(StoreError::Fenced)));
    assert!(dir.path().join("abort").exists());
    drop(store);

    // Reopening recovers from the log: the interrupted record is whole there, so it keeps
    // the offset it was given (its writer got EIO: stored or not, like a disk's EIO), and
    // the next message gets the next offset: no offset is given twice.
    let store = Store::open(dir.path(), config()).unwrap();
    let p = partition(&store, 0);
    let next = store.append(&p, b"after the reopen\n", None).unwrap();
    assert_eq!(next.first_offset, 2);
    assert_eq!(
        messages(&store, &p),
        ["acknowledged\n", "interrupted\n", "after the reopen\n"]
    );
}

/// The commit log is written with `pwrite`: a write that fails (a disk error, or one that
/// stored part of the batches first) fails its append with the error and fences the store
/// (index entries for the batches went in), after zeroing what reached the file; the
/// reopened store recovers every earlier message and none of the failed append.
#[test]
fn a_failed_write_of_the_commit_log_fails_the_append_and_fences_the_store() {
    for failure in ["1*return(eio@commitlog)", "1*return(short@commitlog)"] {
        let _scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        let topic = store.create_topic("t", settings(1)).unwrap();
        let p = partition(&store, 0);
        let earlier: Vec<String> = (0..5).map(|i| format!("k{i}:earlier\n")).collect();
        let batch = fixtures::keyed_messages(&earlier);
        store.append_batch(&p, &batch).unwrap();

        fail::cfg("mapped::write_at", failure).unwrap();
        let failed: Vec<String> = (0..40)
            .map(|i| format!("k{}:failed {i}\n", i % 5))
            .collect();
        let batch = fixtures::keyed_messages(&failed);
        let refused = store.append_batch(&p, &batch);
        fail::remove("mapped::write_at");
        assert!(
            matches!(
                &refused,
                Err(StoreError::Io { .. } | StoreError::DiskFull(_))
            ),
            "{failure}: {refused:?}"
        );
        assert_eq!(p.end_offset(), 5, "{failure}");
        let refused = store.append(&p, b"k0:after\n", Some(2));
        assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
        assert_eq!(messages(&store, &p), earlier, "{failure}");
        drop(store);

        let store = Store::open(dir.path(), config()).unwrap();
        let topic_again = store.topic("t").unwrap();
        let p = partition(&store, 0);
        assert_eq!(messages(&store, &p), earlier, "{failure}");
        assert_eq!(
            fixtures::key_matches(&store, &topic_again, "k1"),
            [(0, 1, "k1:earlier\n".into())]
        );
        let next = store.append(&p, b"k0:after the reopen\n", Some(2)).unwrap();
        assert_eq!(next.first_offset, 5, "{failure}");
        drop(topic);
    }
}

/// An append that passed the store's first check before another append's write failed, and
/// then waited, must be refused too: writing after the failed append's zeroed bytes would
/// leave a hole in the log, which the next mount refuses.
#[test]
fn an_append_waiting_while_another_write_fails_is_refused_and_the_log_keeps_no_hole() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", settings(2)).unwrap();
    let (p0, p1) = (partition(&store, 0), partition(&store, 1));
    store.append(&p0, b"k0:first\n", Some(2)).unwrap();
    // B passes the fence check, then waits in its stage while A's write fails.
    fail::cfg("append::reserve-queue", "1*pause").unwrap();
    let waited = std::thread::scope(|scope| {
        let b = scope.spawn(|| store.append(&p1, b"k1:waiting\n", Some(2)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        fail::cfg("mapped::write_at", "1*return(eio@commitlog)").unwrap();
        let failed = store.append(&p0, b"k0:failed\n", Some(2));
        fail::remove("mapped::write_at");
        assert!(matches!(failed, Err(StoreError::Io { .. })), "{failed:?}");
        fail::remove("append::reserve-queue");
        b.join().unwrap()
    });
    assert!(matches!(waited, Err(StoreError::Fenced)), "{waited:?}");
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k0"),
        [(0, 0, "k0:first\n".into())]
    );
    drop((topic, p0, p1));
    drop(store);

    let store = Store::open(dir.path(), config()).expect("no hole: the log ends before A");
    assert_eq!(messages(&store, &partition(&store, 0)), ["k0:first\n"]);
    assert!(messages(&store, &partition(&store, 1)).is_empty());
}

#[test]
fn a_full_disk_for_a_new_key_index_file_fails_the_append_and_stores_nothing() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // Three entries per index file: five keyed messages need two files.
    let config = StoreConfig {
        index_entries: 4,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", settings(1)).unwrap();
    let p = partition(&store, 0);
    let first_try: Vec<String> = (0..5).map(|i| format!("k{i}:first try\n")).collect();
    let batch = fixtures::keyed_messages(&first_try);

    fail::cfg("index::create-file", "1*off->return").unwrap();
    let refused = store.append_batch(&p, &batch);
    fail::remove("index::create-file");
    assert!(
        matches!(refused, Err(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!(p.end_offset(), 0);
    for i in 0..5 {
        assert_eq!(fixtures::key_matches(&store, &topic, &format!("k{i}")), []);
    }

    // The disk has room again: the next append works, and every key is found.
    let second_try: Vec<String> = (0..5).map(|i| format!("k{i}:second try\n")).collect();
    let batch = fixtures::keyed_messages(&second_try);
    assert_eq!(store.append_batch(&p, &batch).unwrap().first_offset, 0);
    for (i, line) in second_try.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            fixtures::key_matches(&store, &topic, &key),
            [(0, i as u64, line.clone())]
        );
    }

    // Nothing of the refused append reached the log: recovery, which reads the log, finds
    // only the second try.
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(messages(&store, &partition(&store, 0)), second_try);
    for (i, line) in second_try.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            fixtures::key_matches(&store, &topic, &key),
            [(0, i as u64, line.clone())]
        );
    }
}

#[test]
fn a_full_disk_for_one_partition_of_a_write_to_several_stores_none_of_it() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", settings(2)).unwrap();
    let (p0, p1) = (partition(&store, 0), partition(&store, 1));
    let long = format!("b:{}\n", "x".repeat(3000));
    let batches = |first: &'static str| {
        [
            (p0.clone(), vec![first.to_owned()]),
            (p1.clone(), vec![long.clone()]),
        ]
    };

    // The second partition's consume-queue room cannot be allocated.
    fail::cfg("append::reserve-queue", "1*off->return").unwrap();
    let refused = fixtures::append_to_partitions(&store, &batches("a:PARTIAL\n"));
    fail::remove("append::reserve-queue");
    assert!(
        matches!(refused, Err(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!((p0.end_offset(), p1.end_offset()), (0, 0));
    assert_eq!(fixtures::key_matches(&store, &topic, "a"), []);

    let offsets = fixtures::append_to_partitions(&store, &batches("a:WHOLE\n")).unwrap();
    assert_eq!(offsets, [0, 0]);
    assert_eq!(
        fixtures::key_matches(&store, &topic, "a"),
        [(0, 0, "a:WHOLE\n".to_owned())]
    );
    assert_eq!(
        fixtures::key_matches(&store, &topic, "b"),
        [(1, 0, long.clone())]
    );

    // Recovery after an unclean stop reads the log: the refused write is not there.
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(messages(&store, &partition(&store, 0)), ["a:WHOLE\n"]);
    assert_eq!(messages(&store, &partition(&store, 1)), [long]);
}
