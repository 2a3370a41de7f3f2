//! A store whose `store.toml` lists its topics (format 2, before one file per topic) opens
//! and is migrated atomically: a crash at any point of the migration — injected through
//! failpoints — loses nothing, and the next open finishes it. Every test here holds a
//! `FailScenario`.
#![cfg(feature = "failpoints")]

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Store, StoreError};

mod fixtures;

const TOPICS: u32 = 5;

fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
    Store::open(dir, fixtures::small_store_config())
}

/// A store of `TOPICS` topics (`t0`…, partitions 1…), 20 messages in each partition, closed
/// cleanly and rewritten in format 2: `store.toml` lists the topics, `topics/` is gone.
fn format_2_store(dir: &Path) {
    let store = open(dir).unwrap();
    for t in 0..TOPICS {
        let topic = store
            .create_topic(&format!("t{t}"), fixtures::keyed_topic(t + 1))
            .unwrap();
        for partition in topic.partitions() {
            for i in 0..20 {
                let line = format!("t{t}:{} {i}\n", partition.index());
                store.append(&partition, line.as_bytes(), Some(2)).unwrap();
            }
        }
    }
    store.close().unwrap();
    let path = dir.join("store.toml");
    let mut meta: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let mut topics = Vec::new();
    for t in 1..=TOPICS {
        let file = dir.join(format!("topics/{t}.toml"));
        let topic: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
        topics.push(toml::Value::Table(topic));
    }
    meta.insert("format_version".into(), 2.into());
    meta.insert("topics".into(), toml::Value::Array(topics));
    std::fs::write(&path, toml::to_string(&meta).unwrap()).unwrap();
    std::fs::remove_dir_all(dir.join("topics")).unwrap();
}

fn assert_all_there(store: &Store) {
    assert_eq!(store.topics().len(), TOPICS as usize);
    for t in 0..TOPICS {
        let topic = store.topic(&format!("t{t}")).unwrap();
        assert_eq!(topic.id(), t + 1);
        assert_eq!(topic.partitions().len(), (t + 1) as usize);
        for partition in topic.partitions() {
            assert_eq!(partition.end_offset(), 20);
            for i in 0..20 {
                let line = format!("t{t}:{} {i}\n", partition.index());
                assert_eq!(store.read_message(&partition, i).unwrap(), line.as_bytes());
            }
        }
    }
}

fn assert_a_new_topic_takes_a_fresh_id(store: &Store) {
    let next = store.create_topic("new", fixtures::keyed_topic(1)).unwrap();
    assert_eq!(next.id(), TOPICS + 1, "no id given out twice");
}

fn store_toml(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("store.toml")).unwrap()
}

#[test]
fn a_format_2_store_opens_with_every_topic_and_is_migrated() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    format_2_store(dir.path());
    assert!(store_toml(dir.path()).contains("[[topics]]"));
    let store = open(dir.path()).unwrap();
    let text = store_toml(dir.path());
    assert!(text.contains("format_version = 3"), "{text}");
    assert!(!text.contains("[[topics]]"), "{text}");
    for t in 1..=TOPICS {
        assert!(dir.path().join(format!("topics/{t}.toml")).exists());
    }
    assert_all_there(&store);
    store.close().unwrap();
    let store = open(dir.path()).unwrap();
    assert_all_there(&store);
    assert_a_new_topic_takes_a_fresh_id(&store);
}

/// Stops the migration (as a crash would) after `written` topic files, or — with `None` —
/// when it replaces store.toml; the next open finds format 2 and migrates whole.
fn interrupted(written: Option<u32>) {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    format_2_store(dir.path());
    match written {
        Some(n) => fail::cfg("meta::migrate", &format!("{n}*off->return(eio)")).unwrap(),
        None => fail::cfg("meta::write_atomically", "return(short@store.toml)").unwrap(),
    }
    let error = open(dir.path())
        .err()
        .expect("the migration is interrupted");
    assert!(error.to_string().contains("injected"), "{error}");
    fail::remove("meta::migrate");
    fail::remove("meta::write_atomically");
    assert!(
        store_toml(dir.path()).contains("[[topics]]"),
        "still format 2"
    );
    let store = open(dir.path()).unwrap();
    assert!(store_toml(dir.path()).contains("format_version = 3"));
    assert_all_there(&store);
    store.close().unwrap();
    let store = open(dir.path()).unwrap();
    assert_all_there(&store);
    assert_a_new_topic_takes_a_fresh_id(&store);
}

#[test]
fn a_migration_interrupted_before_any_topic_file_loses_nothing() {
    interrupted(Some(0));
}

#[test]
fn a_migration_interrupted_between_topic_files_loses_nothing() {
    interrupted(Some(2));
}

#[test]
fn a_migration_interrupted_while_replacing_store_toml_loses_nothing() {
    interrupted(None);
}

/// A power loss during a migration may leave a topic file torn: while `store.toml` lists
/// the topics, `topics/` is scratch that the next migration rewrites.
#[test]
fn a_torn_topic_file_of_an_unfinished_migration_is_rewritten() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    format_2_store(dir.path());
    std::fs::create_dir(dir.path().join("topics")).unwrap();
    std::fs::write(dir.path().join("topics/2.toml"), "name = \"t1\"\nid = ").unwrap();
    std::fs::write(dir.path().join("topics/9.toml"), "").unwrap();
    let store = open(dir.path()).unwrap();
    assert!(!dir.path().join("topics/9.toml").exists());
    assert_all_there(&store);
    store.close().unwrap();
    assert_all_there(&open(dir.path()).unwrap());
}

/// A format-2 store that recovery refuses (here a damaged batch in the middle of the log) is
/// left exactly as it was: the migration comes after everything that can refuse.
#[test]
fn a_format_2_store_refused_for_damage_is_not_migrated() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    format_2_store(dir.path());
    // Without the checkpoint the open rebuilds from the whole log, so it reads every batch.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let log = dir.path().join("commitlog/00000000000000000000");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let before = store_toml(dir.path());
    let error = open(dir.path()).err().expect("a damaged log is refused");
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{error}");
    assert_eq!(store_toml(dir.path()), before, "store.toml unchanged");
    assert!(!dir.path().join("topics").exists(), "no topic file written");
}
