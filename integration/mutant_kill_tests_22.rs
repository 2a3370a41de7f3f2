//! What a `cargo mutants` pass over `src/store/mod.rs` (from line 420 on) found untested
//! (issue 9). Each test says which mutants it kills. Every test holds `FailScenario`
//! (failpoints are global: a one-shot failpoint is taken by whichever test's store reaches it
//! first).

mod fixtures;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use commitfs::store::Store;

/// With every key hash the same (`format::key_hash`), a key lookup in one topic finds only
/// that topic's messages of that key: not another topic's message of the same key,
/// partition and offset, nor its own message of another key of the same length. Kills
/// `Store::for_each_key_match`'s first `&&` as `||` (line 616: the topic check dropped when
/// no partition is given) and the stored key's match guard as `true` (line 625: any key of
/// the same length matched).
#[cfg(feature = "failpoints")]
#[test]
fn a_key_lookup_under_hash_collisions_finds_only_its_own_topics_messages() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("format::key_hash", "return").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let a = store.create_topic("a", fixtures::keyed_topic(1)).unwrap();
    let b = store.create_topic("b", fixtures::keyed_topic(1)).unwrap();
    store
        .append(&a.partition(0).unwrap(), b"k:of a\n", Some(1))
        .unwrap();
    store
        .append(&b.partition(0).unwrap(), b"k:of b\n", Some(1))
        .unwrap();
    store
        .append(&a.partition(0).unwrap(), b"j:of a\n", Some(1))
        .unwrap();
    assert_eq!(
        fixtures::key_matches(&store, &a, "k"),
        [(0, 0, "k:of a\n".to_owned())]
    );
    assert_eq!(
        fixtures::key_matches(&store, &b, "k"),
        [(0, 0, "k:of b\n".to_owned())]
    );
    assert_eq!(
        fixtures::key_matches(&store, &a, "j"),
        [(0, 1, "j:of a\n".to_owned())]
    );
    fail::remove("format::key_hash");
    store.close().unwrap();
}

/// Deleting a topic that never had segments of its own (their directory was never made)
/// warns of nothing. Kills `Store::delete_topic`'s match guard as `true` and its `!=` as
/// `==` (line 420: a directory that was not there logged as a failure to remove it).
#[test]
fn deleting_a_topic_without_segment_files_warns_of_nothing() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 5);
    assert!(!dir.path().join("segments").join("1").exists());
    let logs = fixtures::logs_of(|| store.delete_topic("t").unwrap());
    assert!(!logs.contains("WARN"), "{logs}");
    assert!(logs.contains("deleted topic t"), "{logs}");
    assert!(!dir.path().join("queues").join("1").exists());
    store.close().unwrap();
}

/// A topic's consume-queue directory that cannot be removed (made immutable) does not stop
/// its deletion, but the deletion says so, naming the directory. Kills `Store::delete_topic`'s
/// match guard as `false` and its `!=` as `==` (line 420: the failure went unsaid).
#[test]
fn a_queue_directory_left_behind_by_a_deletion_is_named_in_a_warning() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 5);
    let queue_dir = dir.path().join("queues").join("1").join("0");
    assert!(queue_dir.is_dir(), "{}", queue_dir.display());
    let immutable = fixtures::Immutable::new(&queue_dir);
    let logs = fixtures::logs_of(|| store.delete_topic("t").unwrap());
    drop(immutable);
    assert!(store.topic("t").is_none());
    assert!(
        logs.contains("WARN")
            && logs.contains(&format!(
                "removing {}",
                dir.path().join("queues").join("1").display()
            )),
        "{logs}"
    );
    store.close().unwrap();
}

/// A closed store refuses appends and every change of its topics with `Closed`, and writes
/// nothing more: after a reopen the data directory holds what the close left. Kills
/// `Store::check_writable` as `Ok(())`.
#[test]
fn a_closed_store_refuses_appends_and_topic_changes() {
    use commitfs::store::StoreError;
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    fixtures::append_lines(&store, &partition, 0, 5);
    store.close().unwrap();

    let appended = store.append(&partition, b"late\n", None);
    assert!(matches!(appended, Err(StoreError::Closed)), "{appended:?}");
    let created = store.create_topic("u", fixtures::lines_topic(1));
    assert!(
        matches!(created, Err(StoreError::Closed)),
        "{:?}",
        created.map(|_| ())
    );
    let mut settings = topic.settings();
    settings.partitions = 2;
    let updated = store.update_topic(&topic, settings);
    assert!(matches!(updated, Err(StoreError::Closed)), "{updated:?}");
    let deleted = store.delete_topic("t");
    assert!(matches!(deleted, Err(StoreError::Closed)), "{deleted:?}");
    drop((partition, topic, store));

    let store = Store::open(dir.path(), config).unwrap();
    assert!(store.topic("u").is_none());
    let topic = store.topic("t").expect("topic t is still there");
    assert_eq!(topic.partitions().len(), 1);
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset(), 5);
    fixtures::assert_reads(&store, &partition, 0, 5);
    store.close().unwrap();
}

/// Bytes of the files under `dir` (recursively): their length, or with `blocks` the blocks
/// they occupy, as `du` counts them.
fn bytes_under(dir: &Path, blocks: bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            match (meta.is_dir(), blocks) {
                (true, _) => bytes_under(&entry.path(), blocks),
                (false, true) => meta.blocks() * 512,
                (false, false) => meta.len(),
            }
        })
        .sum()
}

/// The store's count of its disk use takes in each kind of file it keeps: copying three
/// sealed segments to files of their own adds their bytes to it, and it lies between the
/// blocks of the commit-log file holding the messages and `du` of the whole data directory
/// (its commit-log, consume-queue, key-index and segment files). The pass was stopped before
/// `Store::disk_usage`; its mutants were applied by hand, each failing this test: the
/// function as `0` and as `1`, and its `+` as `-` and as `*` (line 651: the segments' files
/// taken from or multiplied with the queues'; line 653: the queues or the index taken from
/// or multiplied with the rest).
#[test]
fn disk_usage_counts_the_log_queues_index_and_segment_files() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_with(dir.path(), 35);
    let before = store.disk_usage();
    assert_eq!(store.materialize_sealed().unwrap(), 3);
    let after = store.disk_usage();
    let segments = bytes_under(&dir.path().join("segments"), false);
    assert_eq!(segments, 3 * 10 * fixtures::released::MESSAGE_BYTES as u64);
    assert_eq!(
        after - before,
        segments,
        "disk usage {before}, then {after}"
    );
    let first_log_file = dir.path().join("commitlog").join(format!("{:020}", 0));
    let log = std::fs::metadata(first_log_file).unwrap().blocks() * 512;
    let du = bytes_under(dir.path(), true);
    assert!(
        log + segments <= after && after <= du,
        "disk usage {after}, the log file's blocks {log}, the segment files {segments}, du {du}"
    );
    store.close().unwrap();
}
