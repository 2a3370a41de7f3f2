//! What a `cargo mutants` pass over `src/store/retention.rs`, `reserve.rs` and `meta.rs`
//! found untested (issue 9). Each test says which mutants it kills. Every test here holds a
//! `FailScenario` (some configure failpoints).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig, StoreError, TopicSettings};
use fail::FailScenario;

/// [`fixtures::small_store_config`] with index files of 50 entries, so that a few hundred
/// keyed messages fill several.
fn small_index_config() -> StoreConfig {
    StoreConfig {
        index_entries: 50,
        ..fixtures::small_store_config()
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

/// Deleting a topic frees its key-index files too: the next retention pass, which removes the
/// commit-log files no partition needs any more, also removes the index files whose every
/// entry pointed into them. Kills the mutants in `Store::remove_expired` that lose the news
/// that commit-log files were removed when no partition's start moved (`|=` to `&=`, and the
/// `!` deleted before `files.is_empty()`): the pass then skips the index.
#[test]
fn deleting_a_topic_frees_its_key_index_files_at_the_next_retention_pass() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_index_config()).unwrap();
    let gone = fixtures::new_partition(&store, "gone", fixtures::keyed_topic(1));
    let kept = fixtures::new_partition(&store, "kept", fixtures::lines_topic(1));
    let padding = "p".repeat(400);
    for i in 0..400 {
        let line = format!("key{i}:{padding}\n");
        store
            .append(&gone, line.as_bytes(), Some(line.find(':').unwrap()))
            .unwrap();
    }
    let filler = vec![b'f'; 1000];
    for _ in 0..140 {
        store.append(&kept, &filler, None).unwrap();
    }
    let index_dir = dir.path().join("index");
    let index_files = files_in(&index_dir);
    assert!(index_files >= 8, "400 keys fill {index_files} index files");
    let log_files = files_in(&dir.path().join("commitlog"));

    store.delete_topic("gone").unwrap();
    store.enforce_retention().unwrap();
    assert!(
        files_in(&dir.path().join("commitlog")) < log_files,
        "the deleted topic's commit-log files go"
    );
    assert!(
        files_in(&index_dir) < index_files,
        "{index_files} index files before, {} after",
        files_in(&index_dir)
    );
    assert_eq!(kept.start_offset(), 0);
    for offset in 0..140 {
        assert_eq!(store.read_message(&kept, offset).unwrap(), filler);
    }
    store.close().unwrap();
}

/// A store whose disk usage is exactly `max_disk_bytes` is within it: retention drops
/// nothing. Kills `>` to `>=` in `Store::remove_expired`'s ceiling loop.
#[test]
fn a_store_exactly_at_its_disk_ceiling_loses_nothing() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let payload = vec![b'm'; 1000];
    // 203: past a segment's start but not its middle, so that no consume-queue file is
    // being made ahead of need when the store closes (it would change the usage).
    for _ in 0..203 {
        store.append(&partition, &payload, None).unwrap();
    }
    store.close().unwrap();
    drop(store);
    let usage = Store::open(dir.path(), fixtures::small_store_config())
        .map(|store| {
            let usage = store.disk_usage();
            store.close().unwrap();
            usage
        })
        .unwrap();

    let config = StoreConfig {
        max_disk_bytes: Some(usage),
        ..fixtures::small_store_config()
    };
    let store: Arc<Store> = Store::open(dir.path(), config).unwrap();
    assert_eq!(store.disk_usage(), usage, "the same store, the same usage");
    store.enforce_retention().unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), 0, "nothing over the ceiling");
    assert_eq!(partition.end_offset(), 203);
    assert_eq!(store.read_message(&partition, 0).unwrap(), payload);
    store.close().unwrap();
}

/// Bytes of each reserve file (README: `reserve/0` … `reserve/7`, 16 KiB each).
const RESERVE_FILE_BYTES: u64 = 16 << 10;

fn reserve_file_lengths(dir: &Path) -> Vec<u64> {
    (0..8)
        .map(|n| std::fs::metadata(dir.join("reserve").join(n.to_string())).map_or(0, |m| m.len()))
        .collect()
}

/// A reserve file a crash left short is no reserve (filling it would need new blocks): the
/// next open makes it whole again. Kills `==` to `!=` in `Reserve::open`, which took short
/// files for whole ones and whole ones for missing.
#[test]
fn a_reserve_file_left_short_is_made_whole_at_the_next_open() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert_eq!(reserve_file_lengths(dir.path()), [RESERVE_FILE_BYTES; 8]);
    store.close().unwrap();
    drop(store);
    let short = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("reserve/3"))
        .unwrap();
    short.set_len(100).unwrap();
    drop(short);

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    assert_eq!(reserve_file_lengths(dir.path()), [RESERVE_FILE_BYTES; 8]);
    store.close().unwrap();
}

/// A topic file bigger than a reserve file (here: a 20,000-byte key separator) cannot be
/// written into one without new blocks: on a full disk the change fails with `ENOSPC` and
/// the reserve stays whole. Kills the match guard `bytes.len() <= FILE_BYTES` replaced with
/// `true` in `Reserve::write_atomically`.
#[test]
fn a_topic_change_too_big_for_a_reserve_file_fails_on_a_full_disk_and_keeps_the_reserve() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    fail::cfg("meta::write_atomically", "return(enospc@/topics/)").unwrap();
    fail::cfg("reserve::replenish", "return").unwrap();
    let huge = TopicSettings {
        key_separator: Some(vec![b'|'; 20_000]),
        ..topic.settings()
    };
    let refused = store.update_topic(&topic, huge).unwrap_err();
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused}");
    assert_eq!(fixtures::reserve_files(dir.path()), 8);
    assert_eq!(topic.settings().key_separator, Some(b":".to_vec()));
    let small = TopicSettings {
        retention_bytes: Some(4096),
        ..topic.settings()
    };
    store.update_topic(&topic, small).unwrap();
    assert_eq!(
        fixtures::reserve_files(dir.path()),
        7,
        "a small change uses one"
    );
    fail::remove("meta::write_atomically");
    fail::remove("reserve::replenish");
    store.close().unwrap();
}

/// A `topics/` that cannot be listed (a file in its place: `ENOTDIR`, which root cannot
/// bypass as it does permissions) refuses the open with an I/O error naming it, and changes
/// nothing: taken for "no topic files", the open would treat every topic's messages as a
/// deleted topic's. With `topics/` back the store opens whole. Kills the `NotFound` match
/// guard in `read_topic_files` replaced with `true` (and its `==` replaced with `!=`).
#[test]
fn a_topics_directory_that_cannot_be_listed_refuses_the_open_and_changes_nothing() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 25);
    store.close().unwrap();
    drop(store);
    let topics = dir.path().join("topics");
    let saved = dir.path().join("topics.saved");
    std::fs::rename(&topics, &saved).unwrap();
    std::fs::write(&topics, b"not a directory").unwrap();
    let before = fixtures::tree(dir.path());

    let refused = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("an unlistable topics/ must refuse the open");
    let text = refused.to_string();
    assert!(matches!(refused, StoreError::Io { .. }), "{text}");
    assert!(text.contains("topics"), "{text}");
    assert!(
        fixtures::tree(dir.path()) == before,
        "the failed open changed the directory"
    );

    std::fs::remove_file(&topics).unwrap();
    std::fs::rename(&saved, &topics).unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 25);
    fixtures::assert_reads(&store, &partition, 0, 25);
    store.close().unwrap();
}

/// The disk ceiling removes the oldest commit-log file and, of each partition, exactly the
/// messages it held: a sealed segment it cut into goes whole, one that starts in the next
/// file stays whole, and the active segment loses only its messages in that file. Three
/// partitions hold 10, 15 and 12 messages in the first file (segments of 10), then 20, 10
/// and 1 more in the second. Kills, in `Partition::drop_messages_before`, `low > base` to
/// `>=` (which dropped a segment starting the second file), `base + segment_messages <=
/// end` to `-` (which dropped the active segment whole, past the partition's end) and the
/// new start `base + segment_messages` to `*`.
#[test]
fn the_disk_ceiling_removes_exactly_the_messages_of_the_oldest_commit_log_file() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let aligned = fixtures::new_partition(&store, "aligned", fixtures::lines_topic(1));
    let sealed = fixtures::new_partition(&store, "sealed", fixtures::lines_topic(1));
    let active = fixtures::new_partition(&store, "active", fixtures::lines_topic(1));
    let filler = fixtures::new_partition(&store, "filler", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &aligned, 0, 10);
    fixtures::append_lines(&store, &sealed, 0, 15);
    fixtures::append_lines(&store, &active, 0, 12);
    // 70 KB: the first 64 KiB commit-log file fills, the rest goes to the second.
    for _ in 0..70 {
        store.append(&filler, &[b'f'; 1000], None).unwrap();
    }
    fixtures::append_lines(&store, &aligned, 10, 30);
    fixtures::append_lines(&store, &sealed, 15, 25);
    fixtures::append_lines(&store, &active, 12, 13);
    let usage = store.disk_usage();
    store.close().unwrap();
    drop(store);

    // Over the ceiling by less than one commit-log file.
    let config = StoreConfig {
        max_disk_bytes: Some(usage - 16 * 1024),
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    store.enforce_retention().unwrap();
    let expected = [("aligned", 10, 30), ("sealed", 20, 25), ("active", 12, 13)];
    for (name, start, end) in expected {
        let partition = store.topic(name).unwrap().partition(0).unwrap();
        assert_eq!(
            (partition.start_offset(), partition.end_offset()),
            (start, end),
            "{name}: start and end"
        );
        fixtures::assert_reads(&store, &partition, start, end);
    }
    store.close().unwrap();
}
