//! One small file per topic (issue 10, "`mkdir` cost grows with the number of topics"): a
//! topic change replaces its own file and nothing else, `store.toml` stays the same size
//! however many topics there are, ids are never given out twice, and damage in any of the
//! files is refused at mount and reported by `commitfs check` with its file, byte and line.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use commitfs::store::check::{check, CheckOptions, Finding};
use commitfs::store::{Store, StoreError, TopicSettings};

mod fixtures;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

fn settings() -> TopicSettings {
    fixtures::keyed_topic(1)
}

/// The inode of every metadata file (`store.toml`, `topics/*`): a file replaced atomically
/// gets a new one.
fn metadata_inodes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut files = vec![dir.join("store.toml")];
    for entry in std::fs::read_dir(dir.join("topics")).unwrap() {
        files.push(entry.unwrap().path());
    }
    files
        .into_iter()
        .map(|path| {
            let inode = std::fs::metadata(&path).unwrap().ino();
            (path, inode)
        })
        .collect()
}

fn changed(before: &BTreeMap<PathBuf, u64>, after: &BTreeMap<PathBuf, u64>) -> Vec<PathBuf> {
    let paths = before.keys().chain(after.keys());
    let mut changed: Vec<PathBuf> = paths
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect();
    changed.dedup();
    changed
}

fn append(store: &Store, topic: &str, lines: std::ops::Range<u32>) {
    let partition = store.topic(topic).unwrap().partition(0).unwrap();
    for i in lines {
        store
            .append(
                &partition,
                format!("{topic}:{i}\n").as_bytes(),
                Some(topic.len()),
            )
            .unwrap();
    }
}

fn assert_lines(store: &Store, topic: &str, count: u32) {
    let partition = store
        .topic(topic)
        .unwrap_or_else(|| panic!("topic {topic}"))
        .partition(0)
        .unwrap();
    assert_eq!(partition.end_offset(), u64::from(count), "topic {topic}");
    for i in 0..count {
        let message = store.read_message(&partition, u64::from(i)).unwrap();
        assert!(
            message.ends_with(format!(":{i}\n").as_bytes()),
            "{topic} {i}"
        );
    }
}

#[test]
fn a_topic_change_replaces_only_that_topics_file_however_many_topics_there_are() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_topic("t0", settings()).unwrap();
    let small = std::fs::metadata(dir.path().join("store.toml"))
        .unwrap()
        .len();
    for i in 1..300 {
        store.create_topic(&format!("t{i}"), settings()).unwrap();
    }
    // Only next_topic_id's digits may grow.
    let now = std::fs::metadata(dir.path().join("store.toml"))
        .unwrap()
        .len();
    assert!(
        now <= small + 2,
        "store.toml grew from {small} to {now} bytes"
    );

    let topic = store.topic("t150").unwrap();
    let file = dir.path().join(format!("topics/{}.toml", topic.id()));
    let before = metadata_inodes(dir.path());
    let lowered = TopicSettings {
        retention_bytes: Some(4096),
        ..topic.settings()
    };
    store.update_topic(&topic, lowered).unwrap();
    assert_eq!(
        changed(&before, &metadata_inodes(dir.path())),
        std::slice::from_ref(&file)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("retention_bytes = 4096"), "{text}");

    let before = metadata_inodes(dir.path());
    store.delete_topic("t150").unwrap();
    assert_eq!(changed(&before, &metadata_inodes(dir.path())), [file]);

    // New topics take their ids in blocks: store.toml is replaced once per 64 of them.
    let mut replaced = 0;
    for i in 300..428 {
        let inode = std::fs::metadata(dir.path().join("store.toml"))
            .unwrap()
            .ino();
        store.create_topic(&format!("t{i}"), settings()).unwrap();
        let after = std::fs::metadata(dir.path().join("store.toml"))
            .unwrap()
            .ino();
        replaced += usize::from(inode != after);
    }
    assert!(
        replaced <= 2,
        "store.toml replaced {replaced} times for 128 topics"
    );
    store.close().unwrap();
    let store = open(dir.path());
    assert_eq!(store.topics().len(), 427);
    assert_eq!(
        store.topic("t10").unwrap().settings(),
        settings(),
        "settings survive a reopen"
    );
}

#[test]
fn topic_ids_are_never_given_out_twice_and_a_clean_stop_wastes_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.create_topic("a", settings()).unwrap().id();
    let b = store.create_topic("b", settings()).unwrap().id();
    store.delete_topic("b").unwrap();
    // A crash: the rest of the block of ids taken from store.toml is skipped, never reused.
    store.halt_without_cleanup();
    drop(store);
    let store = open(dir.path());
    let c = store.create_topic("c", settings()).unwrap().id();
    assert!(c > b && c > a, "ids {a}, {b}, then {c}");
    store.close().unwrap();
    // A clean stop gives back the unused rest of the block.
    let store = open(dir.path());
    let d = store.create_topic("d", settings()).unwrap().id();
    assert_eq!(d, c + 1);
}

fn damages(report: &commitfs::store::check::CheckReport) -> Vec<String> {
    report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Damage(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn repair(dir: &Path) -> commitfs::store::check::CheckReport {
    let options = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    check(dir, &options).unwrap()
}

/// Topics `a` and `b`, 30 messages each, closed cleanly.
fn two_topics(dir: &Path) -> u32 {
    let store = open(dir);
    store.create_topic("a", settings()).unwrap();
    let b = store.create_topic("b", settings()).unwrap().id();
    append(&store, "a", 0..30);
    append(&store, "b", 0..30);
    store.close().unwrap();
    b
}

#[test]
fn a_damaged_topic_file_refuses_the_mount_and_check_names_its_byte_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let b = two_topics(dir.path());
    let path = dir.path().join(format!("topics/{b}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    // Line 3 is `created_ms = <number>`: its value becomes a word TOML cannot read.
    let third_line = text.lines().take(2).map(|l| l.len() + 1).sum::<usize>();
    assert!(text[third_line..].starts_with("created_ms = "), "{text}");
    let end = third_line + text[third_line..].find('\n').unwrap();
    let damaged = format!(
        "{}created_ms = nonsense{}",
        &text[..third_line],
        &text[end..]
    );
    std::fs::write(&path, damaged).unwrap();
    let where_ = format!("{}: byte {}: line 3: ", path.display(), third_line + 13);

    let refused = Store::open(dir.path(), fixtures::small_store_config())
        .err()
        .expect("a damaged topic file refuses the open");
    let message = refused.to_string();
    assert!(
        matches!(refused, StoreError::NeedsRepair { .. }),
        "{message}"
    );
    assert!(message.contains(&where_), "{message} does not say {where_}");

    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    let found = damages(&report);
    assert!(found.iter().any(|d| d.contains(&where_)), "{found:?}");

    let repaired = repair(dir.path());
    assert!(repaired.damaged(), "{:?}", repaired.findings);
    assert!(
        path.with_extension("toml.damaged").exists(),
        "the damaged file is kept"
    );
    let store = open(dir.path());
    assert_lines(&store, "a", 30);
    // Its name was only in the file.
    assert_lines(&store, &format!("topic-{b}"), 30);
}

#[test]
fn a_lost_store_toml_is_rebuilt_around_the_topic_files_and_keeps_the_names() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path());
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    let refused = Store::open(dir.path(), fixtures::small_store_config()).err();
    assert!(
        matches!(refused, Some(StoreError::NeedsRepair { .. })),
        "{refused:?}"
    );
    repair(dir.path());
    let store = open(dir.path());
    assert_lines(&store, "a", 30);
    assert_lines(&store, "b", 30);
    let c = store.create_topic("c", settings()).unwrap();
    assert_eq!(c.id(), 3, "a new topic never takes an id the data holds");
}

#[test]
fn damage_in_store_toml_is_reported_with_its_byte_and_line() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path());
    let path = dir.path().join("store.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("next_topic_id = ", "next_topic_id = x", 1),
    )
    .unwrap();
    let line = 1 + text[..text.find("next_topic_id").unwrap()]
        .matches('\n')
        .count();
    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    let found = damages(&report);
    let where_ = format!("{}: byte ", path.display());
    assert!(
        found
            .iter()
            .any(|d| d.contains(&where_) && d.contains(&format!(": line {line}: "))),
        "{found:?}"
    );
}

#[test]
fn a_temporary_file_left_by_a_crash_is_ignored_and_check_notes_it() {
    let dir = tempfile::tempdir().unwrap();
    two_topics(dir.path());
    let leftover = dir.path().join("topics/1.toml.tmp");
    std::fs::write(&leftover, "name = \"half").unwrap();
    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    assert!(!report.damaged(), "{:?}", report.findings);
    let noted = report
        .findings
        .iter()
        .any(|f| matches!(f, Finding::Note(text) if text.contains("1.toml.tmp")));
    assert!(noted, "{:?}", report.findings);
    let store = open(dir.path());
    assert_lines(&store, "a", 30);
    assert_lines(&store, "b", 30);
}
