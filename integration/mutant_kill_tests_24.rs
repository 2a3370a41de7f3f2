//! What `cargo mutants` passes over `src/store/materialize.rs` and `src/store/mod.rs` (lines
//! 1–419) found untested (issue 9). Each test says which mutants it kills; each was seen
//! failing with them applied by hand. Every test holds `FailScenario` (failpoints are global).

mod fixtures;

use std::path::Path;

use commitfs::store::Store;
use fixtures::released::{config, message, segment_file, store_with_copies_under_retention};

/// Asserts that partition 0 of topic `t` starts at offset `start` and reads every message
/// from there to 35.
fn assert_starts_at(store: &Store, start: u64) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), start);
    for i in start as usize..35 {
        assert_eq!(
            store.read_message(&partition, i as u64).unwrap(),
            message(i)
        );
    }
}

/// Asserts what retention leaves of [`store_with_copies_under_retention`]: the partition
/// starts at 20, the files of segments 0 and 10 are gone and segment 20's is there.
fn assert_retention_kept_segment_20(store: &Store, dir: &Path) {
    assert_starts_at(store, 20);
    for base in [0, 10] {
        assert!(!segment_file(dir, base).exists(), "segment {base}");
    }
    assert!(segment_file(dir, 20).exists());
}

/// Retention removes segments whose own file is already gone (taken by hand while the
/// store ran): nothing is left to remove, and the pass succeeds. Kills `remove`'s match guard
/// `NotFound` as `false` and its `==` as `!=` (`src/store/materialize.rs` line 259: a missing
/// file refused as a failure to remove it).
#[test]
fn retention_removes_segments_whose_file_was_already_taken() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_copies_under_retention(dir.path());
    std::fs::remove_file(segment_file(dir.path(), 0)).unwrap();
    store.enforce_retention().unwrap();
    assert_retention_kept_segment_20(&store, dir.path());
    store.close().unwrap();
}

/// A segment file that retention cannot remove (its directory made immutable) fails the
/// pass naming the file, and the next open removes it. Kills `remove`'s match guard
/// `NotFound` as `true` (`src/store/materialize.rs` line 259: every failure to remove a file
/// taken as success, the file then forgotten and left on disk for good).
#[test]
fn a_segment_file_retention_cannot_remove_is_named_and_removed_at_the_next_open() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_copies_under_retention(dir.path());
    let files = dir.path().join("segments/1/0");
    let immutable = fixtures::Immutable::new(&files);
    let failed = store.enforce_retention();
    drop(immutable);
    let error = failed.expect_err("retention left a file behind and said nothing");
    let first = segment_file(dir.path(), 0);
    assert!(
        error.to_string().contains(&first.display().to_string()),
        "{error}"
    );
    assert!(first.exists());
    assert_starts_at(&store, 20);
    store.close().unwrap();
    drop(store);

    let store = Store::open(dir.path(), config()).unwrap();
    assert_retention_kept_segment_20(&store, dir.path());
    store.close().unwrap();
}

/// An open refused because the file of a segment whose bytes the log gave back (its only
/// copy) is shorter than the segment says how long each is. Kills the match guard
/// `info.sealed` as `false` in `Partition::check_segment_files` (`src/store/materialize.rs`
/// line 322: the sealed segment's file said to be of a segment that is not sealed).
#[test]
fn an_open_refused_over_a_shortened_only_copy_gives_both_lengths() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    fixtures::released::closed_released_store(dir.path());
    let only_copy = segment_file(dir.path(), 10);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&only_copy)
        .unwrap()
        .set_len(9000)
        .unwrap();
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open went on")
        .to_string();
    assert!(
        error.contains("it holds 9000 bytes, the segment 10000") && error.contains("only copy"),
        "{error}"
    );
}

/// Retention that removes a segment while it is being copied (the copy held part way by a
/// failpoint) leaves no copy of it, not even one under its `.partial` name; the pass goes on
/// past the other removed segment without an error and copies the segment still stored.
/// Kills `Partition::segment_gone` as `false` and its `||` as `&&` (`src/store/materialize.rs`
/// lines 337–338: the removed segment's copy kept, and the pass failing on the segment gone
/// before it was reached), and `Store::materialize_one`'s match guard `segment_gone` as
/// `false` (line 495: the pass failing on that segment).
#[cfg(feature = "failpoints")]
#[test]
fn retention_during_a_copy_leaves_no_copy_of_the_segments_it_removed() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_under_retention(dir.path());
    fail::cfg("materialize::copy", "1*pause").unwrap();
    let copying = {
        let store = store.clone();
        std::thread::spawn(move || store.materialize_sealed().map_err(|e| e.to_string()))
    };
    let partial = segment_file(dir.path(), 0).with_extension("log.partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !partial.exists() {
        assert!(std::time::Instant::now() < deadline, "the copy never began");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    store.enforce_retention().unwrap();
    fail::remove("materialize::copy");
    let made = copying.join().unwrap();
    assert_eq!(made, Ok(1));
    assert_retention_kept_segment_20(&store, dir.path());
    assert!(!partial.exists());
    store.close().unwrap();
}

/// A close stops the background copying and waits for it: a copy under way when the store
/// closes (held part way by a failpoint) is abandoned, and once `close` returns nothing of it
/// is left, neither under its `.partial` name nor under its own. Kills `Handle::stop` as `()`
/// (`src/store/materialize.rs` line 523: the copy went on after the close) and its `!=` as
/// `==` (line 528: the close returned without waiting for the thread, the `.partial` file
/// still there).
#[cfg(feature = "failpoints")]
#[test]
fn a_close_abandons_a_copy_under_way_and_leaves_nothing_of_it() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("materialize::copy", "1*sleep(3000)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copying = commitfs::store::StoreConfig {
        materialize_segments: true,
        ..config()
    };
    let store = Store::open(dir.path(), copying).unwrap();
    store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    fixtures::released::append_batch(&store, 0, 10);
    fixtures::released::append_batch(&store, 10, 15);
    let partial = segment_file(dir.path(), 0).with_extension("log.partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !partial.exists() {
        assert!(std::time::Instant::now() < deadline, "the copy never began");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    store.close().unwrap();
    assert!(!partial.exists(), "a copy went on after the close");
    assert!(!segment_file(dir.path(), 0).exists());
}

/// A copy that fails to write (an I/O error, by failpoint) fails the pass with an error
/// naming the file it was writing, and leaves nothing of it; the next pass copies the
/// segment. Kills `Store::materialize_one`'s match guard `segment_gone` as `true`
/// (`src/store/materialize.rs` line 495: every error of a copy taken as the segment having
/// gone meanwhile, and the pass reported as a success).
#[cfg(feature = "failpoints")]
#[test]
fn a_copy_that_fails_to_write_fails_the_pass_naming_its_file() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_with(dir.path(), 15);
    fail::cfg("materialize::copy", "1*return").unwrap();
    let error = store
        .materialize_sealed()
        .expect_err("the failed copy went unsaid")
        .to_string();
    let partial = segment_file(dir.path(), 0).with_extension("log.partial");
    assert!(
        error.contains(&format!("writing {}", partial.display())),
        "{error}"
    );
    assert!(!partial.exists());
    assert!(!segment_file(dir.path(), 0).exists());
    fail::remove("materialize::copy");
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    assert!(segment_file(dir.path(), 0).exists());
    store.close().unwrap();
}
