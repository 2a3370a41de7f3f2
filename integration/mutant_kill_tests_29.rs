//! What in-order `cargo mutants` passes over `src/store/commitlog.rs` (lines 817–939),
//! `src/store/dump.rs` (lines 210–219) and `src/store/index.rs` (lines 399–929, the key-index
//! thread) found untested (issue 9). Each test says which mutants it kills; each was seen
//! failing with them applied by hand. Every test holds `FailScenario` (failpoints are global).

mod fixtures;

use std::path::Path;

use commitfs::store::check::{check, CheckOptions};
use commitfs::store::dump::{dump, DumpOptions};
use commitfs::store::{Store, StoreConfig};

/// Whether this process maps the file at `path` (`/proc/self/maps`).
fn mapped(path: &Path) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let path = path.to_str().unwrap();
    maps.lines().any(|line| line.ends_with(path))
}

/// After `commitfs check --repair` marked the damaged last batch of the first commit-log
/// file as a span to skip (it runs to the file's last byte: nothing valid follows it in that
/// file), a dump steps over the span, goes on at the next file, shows every other message
/// once, and reports no damage: the repair left none. Kills `<` replaced with `<=` in
/// `Walk::file` (`src/store/dump.rs` line 212: at the end of the span, the file's end, the
/// walk read on, took the nothing there for damage and reported the repaired log damaged).
#[test]
fn a_dump_after_a_repair_that_skipped_a_files_tail_reports_no_damage() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 3000);
    fixtures::assert_several_log_files(dir.path());
    let first = dir.path().join("commitlog").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let last = *fixtures::batch_starts(&bytes).last().unwrap();
    let lost = fixtures::batch_first_offset(&bytes, last);
    // Its magic no longer reads as a batch's.
    bytes[last + 5] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let repair = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    check(dir.path(), &repair).unwrap();

    let mut out = Vec::new();
    let report = dump(dir.path(), &DumpOptions::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected: Vec<u64> = (0..3000).filter(|&offset| offset != lost).collect();
    assert_eq!(fixtures::dumped_offsets(&text), expected);
    assert!(!report.damaged, "{:?}", report.notes);
    let note = format!(
        "note: {} bytes {last}..{}: a damaged span an earlier `commitfs check --repair` skipped",
        first.display(),
        bytes.len()
    );
    assert_eq!(report.notes, [note]);
}

/// A key-index file that grew past its first 65,536 entries' bytes and then filled (the
/// next keyed message went to a new file) counts with all its bytes in the store's disk usage
/// once it is closed: mapping it again for a lookup does not change the usage. Kills
/// `KeyIndex::grown` as `()` and its `==` as `!=` (`src/store/index.rs` line 655: the closed
/// file counted the bytes it had when it was made, or those of the newer file).
#[test]
fn a_full_key_index_file_counts_all_its_bytes_in_the_disk_usage_once_closed() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        // One segment, not half full: no consume-queue file is made ahead of need (it
        // would add to the usage meanwhile). An index file holds 99,999 entries.
        segment_messages: 400_000,
        index_entries: 100_000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    for from in (0..100_000).step_by(1000) {
        let lines: Vec<String> = (from..from + 1000)
            .map(|n| format!("k{}:{n}\n", n % 7))
            .collect();
        store
            .append_batch(&partition, &fixtures::keyed_messages(&lines))
            .unwrap();
    }
    // Its reservation inserts the entries waiting for the key-index thread first: the first
    // index file is full and no longer anyone's.
    store.append(&partition, b"k0:last\n", Some(2)).unwrap();
    let index_dir = dir.path().join("index");
    let first = index_dir.join(format!("{:020}", 0));
    assert_eq!(std::fs::read_dir(&index_dir).unwrap().count(), 2);
    let waited = first.clone();
    fixtures::finishes("closing the full index file", move || {
        while mapped(&waited) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    let closed = store.disk_usage();
    let topic = store.topic("t").unwrap();
    assert_eq!(fixtures::key_matches(&store, &topic, "k6").len(), 14_285);
    assert!(mapped(&first), "the lookup maps the first index file again");
    assert_eq!(store.disk_usage(), closed);
    store.close().unwrap();
}

/// Retention that removes key-index files (every entry of theirs points below the log's
/// start) lets go of them: the process holds none of them open once they are removed, so the
/// disk gets their space back. Kills `KeyIndex::forget` as `()` (`src/store/index.rs` line
/// 673: the budget of open files kept each removed file open).
#[test]
fn key_index_files_that_retention_removes_are_not_held_open() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_entries: 50,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let padding = "p".repeat(400);
    for n in 0..400 {
        let line = format!("key{n}:{padding}\n");
        store
            .append(&partition, line.as_bytes(), Some(line.find(':').unwrap()))
            .unwrap();
    }
    let index_dir = dir.path().join("index");
    let index_files = std::fs::read_dir(&index_dir).unwrap().count();
    assert!(index_files >= 8, "400 keys fill {index_files} index files");
    let mut settings = topic.settings();
    settings.retention_bytes = Some(1);
    store.update_topic(&topic, settings).unwrap();
    store.enforce_retention().unwrap();
    let left = std::fs::read_dir(&index_dir).unwrap().count();
    assert!(left < index_files, "{index_files} index files, then {left}");
    assert_eq!(fixtures::removed_but_open(&index_dir), Vec::<String>::new());
    store.close().unwrap();
}

/// Batches whose keys fill key-index files to the last entry (`small_store_config`'s files
/// hold 999 entries after their first, unused one): a first batch of 999 keys fills the
/// first file exactly, the next one of 1,000 fills a second file and starts a third. Every
/// key is found at its message. Kills `-` replaced with `/` in `KeyIndex::reserve`
/// (`src/store/index.rs` line 708: the full first file's room counted as `capacity / count`,
/// one entry) and `-` replaced with `/` and with `+` at line 715 (the new file's room counted
/// as 1,000 or 1,001 entries): either way the last key of the second batch had no room
/// reserved, its insert panicked and it was never found. Also kills `+` replaced with `*` in
/// `KeyIndex::start_file` (line 777: the third file, made in the same reservation as the
/// second, was given the second's name, and the second batch's append failed).
#[test]
fn keys_of_batches_that_fill_index_files_to_the_last_entry_are_all_found() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for (from, count) in [(0, 999), (999, 1000)] {
        let lines: Vec<String> = (from..from + count)
            .map(|n| format!("key{n}:{n}\n"))
            .collect();
        store
            .append_batch(&partition, &fixtures::keyed_messages(&lines))
            .unwrap();
    }
    for n in [0, 998, 999, 1997, 1998] {
        let key = format!("key{n}");
        assert_eq!(
            fixtures::key_matches(&store, &topic, &key),
            [(0, n, format!("{key}:{n}\n"))]
        );
    }
    let index_files = std::fs::read_dir(dir.path().join("index")).unwrap().count();
    assert_eq!(index_files, 3);
    store.close().unwrap();
}
