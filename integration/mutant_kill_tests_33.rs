//! What an in-order `cargo mutants` pass over `src/store/index.rs` (lines 873–1014, from
//! `truncate_to` on; 52 of 65 run, to line 983) found untested (issue 9). Each test says
//! which mutants it kills.
//! Every test holds `FailScenario` (failpoints are global).

mod fixtures;

use std::path::{Path, PathBuf};

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

/// A closed store whose keyed topic `t` holds `k0:0` … `k4:4`, one batch each: its key-index
/// file 0 (64 slots, five entries past the null entry 0).
fn closed_store_with_five_keys(dir: &Path) -> PathBuf {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    for i in 0..5 {
        let line = format!("k{i}:{i}\n");
        store.append(&partition, line.as_bytes(), Some(2)).unwrap();
    }
    store.close().unwrap();
    dir.join(format!("index/{:020}", 0))
}

/// What a test does to a file's bytes, and its name.
type Edit = (&'static str, fn(&mut Vec<u8>));

/// `file` with `edit` applied to its bytes.
fn edit_file(file: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(file).unwrap();
    edit(&mut bytes);
    std::fs::write(file, &bytes).unwrap();
}

/// What `commitfs check` (without repair) reports of the store in `dir`.
fn check_findings(dir: &Path) -> Vec<String> {
    let report = check(dir, &CheckOptions::default()).unwrap();
    report.findings.iter().map(ToString::to_string).collect()
}

/// `commitfs check` reports a key-index file cut inside its 64-byte header, or whose
/// header's magic number or format version is wrong, as not an index file of this version
/// (at its byte 0), and never panics. Kills `verify_file`'s `<` as `==` (line 956: a
/// file cut short read past its end), its first `||` as `&&` (line 957: a wrong magic
/// number let through) and its second `||` as `&&` (line 958: a wrong version let through).
#[test]
fn check_reports_an_index_file_cut_in_its_header_or_of_another_format() {
    let _scenario = fail::FailScenario::setup();
    let edits: [Edit; 3] = [
        ("cut to 10 bytes", |b| b.truncate(10)),
        ("magic number", |b| b[0] ^= 1),
        ("version", |b| b[4] ^= 1),
    ];
    for (what, edit) in edits {
        let dir = tempfile::tempdir().unwrap();
        let index_file = closed_store_with_five_keys(dir.path());
        edit_file(&index_file, edit);
        let report = check_findings(dir.path());
        let damage = format!(
            "damage: {} byte 0: not an index file of this version",
            index_file.display()
        );
        assert!(report.contains(&damage), "{what}: {report:#?}");
    }
}

/// `commitfs check` reports a key-index file that cannot hold the entries the checkpoint
/// counts in it (six, the null entry 0 and five keys): cut inside its entries, with a header
/// count of fewer, or with no slots; a file of its header alone is reported so too, not as
/// a file of another format. Whole, the file passes and counts its five entries. Kills
/// `verify_file`'s `<` as `<=` (line 956: a file of its whole header alone taken for
/// another format), its `&&`s as `||` (lines 967–969: one condition enough), `slots > 0`
/// as `>=` (line 966), `count * ENTRY_BYTES` as `count + ENTRY_BYTES` and as
/// `count / ENTRY_BYTES` (line 969: the entries' end put short of where it is) and
/// `count - 1` as `count + 1` and `count / 1` (line 1004: the entries checked miscounted).
#[test]
fn check_reports_an_index_file_too_short_for_the_checkpoints_entries() {
    let _scenario = fail::FailScenario::setup();
    // 64 header bytes, 64 slots of 4 bytes, then 24-byte entries.
    let entries_at = 64 + 64 * 4;
    let edits: [Edit; 4] = [
        ("cut to its header", |b| b.truncate(64)),
        ("cut inside entry 5", |b| {
            b.truncate(64 + 64 * 4 + 5 * 24 + 10)
        }),
        ("count of 3", |b| {
            b[16..20].copy_from_slice(&3u32.to_le_bytes())
        }),
        ("no slots", |b| {
            b[8..12].copy_from_slice(&0u32.to_le_bytes())
        }),
    ];
    for (what, edit) in edits {
        let dir = tempfile::tempdir().unwrap();
        let index_file = closed_store_with_five_keys(dir.path());
        assert!(std::fs::metadata(&index_file).unwrap().len() > entries_at + 6 * 24);
        edit_file(&index_file, edit);
        let report = check_findings(dir.path());
        let damage = format!(
            "damage: {} byte 16: 6 entries do not fit in the file",
            index_file.display()
        );
        assert!(report.contains(&damage), "{what}: {report:#?}");
    }
    // Whole, the same file passes.
    let dir = tempfile::tempdir().unwrap();
    closed_store_with_five_keys(dir.path());
    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.index_entries, 5);
}

/// `commitfs check` reports a key-index slot that names an entry past the file's count,
/// and an entry whose chain link points at itself rather than an older entry. Kills the
/// link check's `>=` as `<` (line 986: the bad link let through, every good one reported);
/// the slot check's `>=` as `<` and its position's `+` and `*` as `-`, `*`, `+`, `/` (lines
/// 975 and 978, caught elsewhere too) fail it as well.
#[test]
fn check_reports_an_index_slot_past_the_count_and_a_link_to_no_older_entry() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let index_file = closed_store_with_five_keys(dir.path());
    let entries_at = 64 + 64 * 4;
    edit_file(&index_file, |b| {
        // Slot 3 names entry 9 of 6; entry 2 links to entry 2.
        b[64 + 3 * 4..64 + 4 * 4].copy_from_slice(&9u32.to_le_bytes());
        let link = entries_at + 2 * 24 + 20;
        b[link..link + 4].copy_from_slice(&2u32.to_le_bytes());
    });
    let path = index_file.display();
    assert_eq!(
        check_findings(dir.path()),
        [
            format!(
                "damage: {path} byte {}: slot 3 names entry 9 of 6",
                64 + 3 * 4
            ),
            format!(
                "damage: {path} byte {}: entry 2 links to entry 2, not an older one",
                entries_at + 2 * 24
            ),
        ]
    );
}
