//! What a `cargo mutants` pass over `src/store/index.rs` (lines 873–1014, from `truncate_to`
//! on), `src/store/partition.rs` (from line 895 on) and `src/store/commitlog.rs` (lines
//! 444–460, `next_file`) found untested (issue 9). Each test says which mutants it kills.
//! Every test holds `FailScenario` (failpoints are global).

mod fixtures;

use commitfs::store::check::{check, CheckOptions};
use commitfs::store::{Store, StoreConfig, TopicSettings};

/// Keys written after the last checkpoint are indexed again by the recovery after a crash,
/// from the log: each message is found once. The checkpoint's index file filled up after
/// it, and starting the next file wrote its slots back into its map, so the file the crash
/// left names entries past the checkpoint's mark. Kills `KeyIndex::truncate_to`'s `==` as
/// `!=` (line 881: that file kept those entries, found again beside the rebuilt ones).
#[test]
fn keys_written_after_the_checkpoint_are_found_once_after_a_crash() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // Three entries a file (entry 0 is the null entry).
    let config = StoreConfig {
        index_entries: 4,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    store.append(&partition, b"k:0\n", Some(1)).unwrap();
    store.checkpoint().unwrap();
    for i in 1..5 {
        let line = format!("k:{i}\n");
        store.append(&partition, line.as_bytes(), Some(1)).unwrap();
    }
    assert_eq!(fixtures::key_matches(&store, &topic, "k").len(), 5);
    store.halt_without_cleanup();
    drop(store);

    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.topic("t").unwrap();
    let found: Vec<u64> = fixtures::key_matches(&store, &topic, "k")
        .into_iter()
        .map(|(_, offset, _)| offset)
        .collect();
    assert_eq!(found, [4, 3, 2, 1, 0]);
    store.close().unwrap();
}

/// Retention that removed every commit-log file the key index's only file points into
/// leaves that file in place, as the one being filled: a key appended afterwards is found.
/// Kills `KeyIndex::remove_before`'s `bases.len() > 1` as `>= 1` (line 909: the only file,
/// still the one entries go to, was deleted, and the new key's entry went with it).
#[test]
fn a_key_appended_after_retention_emptied_the_index_is_found() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let settings = TopicSettings {
        retention_bytes: Some(10_000),
        ..fixtures::keyed_topic(1)
    };
    let topic = store.create_topic("t", settings).unwrap();
    let partition = topic.partition(0).unwrap();
    store.append(&partition, b"k:old\n", Some(1)).unwrap();
    // Keyless lines past the first 64 KiB commit-log files.
    let filler: Vec<String> = (0..3000).map(|n| format!("filler {n:>40}\n")).collect();
    for lines in filler.chunks(100) {
        store
            .append_batch(&partition, &fixtures::unkeyed_messages(lines))
            .unwrap();
    }
    store.enforce_retention().unwrap();
    assert!(
        fixtures::log_bases(dir.path())[0] > 0,
        "retention removed the first commit-log file"
    );
    assert!(fixtures::key_matches(&store, &topic, "k").is_empty());
    let offset = store
        .append(&partition, b"k:new\n", Some(1))
        .unwrap()
        .first_offset;
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k"),
        [(0, offset, "k:new\n".to_owned())]
    );
    store.close().unwrap();
}

/// The store's disk usage counts its key-index files: with a slot table of 1 MiB, far
/// more than the commit-log and consume-queue files of one message, it is at least the
/// index files' length. Kills `KeyIndex::disk_bytes` as `0` and as `1` (line 925).
#[test]
fn disk_usage_counts_the_key_index_files() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_slots: 1 << 18,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    store.append(&partition, b"k:1\n", Some(1)).unwrap();
    let index_bytes: u64 = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(index_bytes >= 1 << 20, "{index_bytes}");
    let usage = store.disk_usage();
    assert!(usage >= index_bytes, "disk usage {usage} < {index_bytes}");
    store.close().unwrap();
}

/// `commitfs check --repair` of a store that lost its `store.toml` writes it again with the
/// key-index sizes the store was made with (64 slots, 1,000 entries a file, not the
/// defaults), read from the header of its first index file. Kills `sizes_in` as `None`
/// and as `Some((0, 0))`, `Some((0, 1))`, `Some((1, 0))`, `Some((1, 1))` (line 939), and
/// its `==` as `!=` (line 942: a valid header refused).
#[test]
fn repair_of_a_lost_store_toml_keeps_the_key_index_sizes() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    for i in 0..25 {
        let line = format!("k{i}:message {i}\n");
        store.append(&partition, line.as_bytes(), Some(2)).unwrap();
    }
    store.close().unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();

    let options = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    let report = check(dir.path(), &options).unwrap();
    let notes: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("index_slots = 64, index_entries = 1000")),
        "{notes:#?}"
    );
    let toml = std::fs::read_to_string(dir.path().join("store.toml")).unwrap();
    assert!(toml.contains("index_slots = 64\n"), "{toml}");
    assert!(toml.contains("index_entries = 1000\n"), "{toml}");
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k7"),
        [(0, 7, "k7:message 7\n".to_owned())]
    );
    store.close().unwrap();
}
