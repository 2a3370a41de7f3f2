//! Copying sealed segments to files of their own, in-process (issue 8): a copy that would take
//! the store past `max_disk_bytes` is not made, and once appends take it there the ceiling
//! removes copies before any message, since the commit log still holds their bytes.

mod fixtures;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitfs::store::{NewMessage, Store, StoreConfig};

/// Ten 1,000-byte messages per segment.
fn config(max_disk_bytes: Option<u64>) -> StoreConfig {
    StoreConfig {
        max_disk_bytes,
        ..fixtures::small_store_config()
    }
}

/// A store holding `count` sealed segments of 10,000 bytes in partition 0 of topic `t`,
/// copied to no file yet; returns what it occupies.
fn sealed_segments(dir: &Path, count: usize) -> u64 {
    let store = Store::open(dir, config(None)).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let payload = vec![b'x'; 1000];
    for _ in 0..count * 10 {
        let message = NewMessage {
            payload: &payload,
            key_len: None,
        };
        store.append_batch(&partition, &[message]).unwrap();
    }
    let usage = store.disk_usage();
    store.close().unwrap();
    usage
}

fn reopen(dir: &Path, max_disk_bytes: Option<u64>) -> Arc<Store> {
    Store::open(dir, config(max_disk_bytes)).unwrap()
}

#[test]
fn a_copy_that_would_pass_the_disk_ceiling_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let usage = sealed_segments(dir.path(), 3);
    // Room for one copy (and a consume-queue file made meanwhile), not two.
    let store = reopen(dir.path(), Some(usage + 15_000));
    assert_eq!(store.materialize_sealed().unwrap(), 1);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.start_offset(), 0, "messages were dropped");
    let copied: Vec<bool> = partition
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.materialized)
        .collect();
    assert_eq!(copied, [true, false, false, false]);
    store.close().unwrap();
    drop(store);

    let store = reopen(dir.path(), None);
    assert_eq!(store.materialize_sealed().unwrap(), 2);
    store.close().unwrap();
}

#[test]
fn the_disk_ceiling_removes_copies_before_it_drops_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let usage = sealed_segments(dir.path(), 9);
    // Room for the nine copies now (90,000 bytes), and for the next commit-log file without them.
    let ceiling = usage + 92_000;
    let store = reopen(dir.path(), Some(ceiling));
    assert_eq!(store.materialize_sealed().unwrap(), 9);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let payload = vec![b'y'; 1000];
    // Appends until the copies take the store past the ceiling.
    for _ in 0..200 {
        if store.disk_usage() > ceiling {
            break;
        }
        let message = NewMessage {
            payload: &payload,
            key_len: None,
        };
        store.append_batch(&partition, &[message]).unwrap();
    }
    assert!(
        store.disk_usage() > ceiling,
        "the appends never passed the ceiling"
    );
    store.enforce_retention().unwrap();
    assert_eq!(
        partition.start_offset(),
        0,
        "messages were dropped while copies stood"
    );
    assert!(
        store.disk_usage() <= ceiling,
        "{} > {ceiling}",
        store.disk_usage()
    );
    let copied = partition
        .segments()
        .unwrap()
        .iter()
        .filter(|s| s.materialized)
        .count();
    assert!(copied < 9, "no copy was removed");
    assert_eq!(store.read_message(&partition, 0).unwrap(), vec![b'x'; 1000]);
    store.close().unwrap();
}

#[test]
fn files_that_are_not_a_topics_directory_under_segments_do_not_stop_an_open() {
    let dir = tempfile::tempdir().unwrap();
    sealed_segments(dir.path(), 1);
    let segments = dir.path().join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    for stray in ["12345", "README"] {
        std::fs::write(segments.join(stray), "not commitfs's").unwrap();
    }
    let store = reopen(dir.path(), None);
    store.close().unwrap();
    for stray in ["12345", "README"] {
        assert!(segments.join(stray).exists(), "{stray} was removed");
    }
}

#[test]
fn a_writer_that_never_pauses_still_gets_its_sealed_segments_copied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            materialize_segments: true,
            ..config(None)
        },
    )
    .unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let copied = AtomicBool::new(false);
    // Copying waits while the log grows (it would take the writer's CPU), but not forever: the
    // writer appends every few milliseconds, so the log grows between any two looks.
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            while !copied.load(Ordering::Acquire) && Instant::now() < deadline {
                let message = NewMessage {
                    payload: b"x",
                    key_len: None,
                };
                store.append_batch(&partition, &[message]).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        while !partition.segments().unwrap()[0].materialized && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        copied.store(true, Ordering::Release);
        writer.join().unwrap();
    });
    assert!(
        partition.segments().unwrap()[0].materialized,
        "segment 0 was not copied within a minute of appends that never paused"
    );
    store.close().unwrap();
}
