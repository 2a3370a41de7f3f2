//! The reserve for metadata changes, in-process (issue 10): with every topic-file write
//! failing `ENOSPC` (a failpoint), a topic's settings can still be changed — durably — as
//! many times as there are reserve files, then the change fails with `ENOSPC` saying so; the
//! maintenance thread makes the reserve whole once writes work. Every test here holds a
//! `FailScenario`.
#![cfg(feature = "failpoints")]

use std::time::{Duration, Instant};

use commitfs::store::{Store, StoreConfig, StoreError, TopicSettings};

mod fixtures;

const RESERVE_FILES: u64 = 8;

fn config() -> StoreConfig {
    StoreConfig {
        retention_check_interval_ms: 20,
        ..fixtures::small_store_config()
    }
}

#[test]
fn on_a_full_disk_topic_changes_use_the_reserve_until_it_is_used_up_and_it_comes_back() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    assert_eq!(fixtures::reserve_files(dir.path()) as u64, RESERVE_FILES);

    fail::cfg("meta::write_atomically", "return(enospc@/topics/)").unwrap();
    // Stop the maintenance thread from making the reserve again while the disk is "full".
    fail::cfg("reserve::replenish", "return").unwrap();
    let with_retention = |bytes: u64| TopicSettings {
        retention_bytes: Some(bytes),
        ..topic.settings()
    };
    for n in 1..=RESERVE_FILES {
        store
            .update_topic(&topic, with_retention(n * 4096))
            .unwrap();
    }
    assert_eq!(fixtures::reserve_files(dir.path()), 0);
    let refused = store
        .update_topic(&topic, with_retention(1))
        .expect_err("the reserve is used up");
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused}");
    assert!(refused.to_string().contains("reserve"), "{refused}");
    assert_eq!(topic.settings().retention_bytes, Some(RESERVE_FILES * 4096));

    fail::remove("meta::write_atomically");
    fail::remove("reserve::replenish");
    let deadline = Instant::now() + Duration::from_secs(20);
    while (fixtures::reserve_files(dir.path()) as u64) < RESERVE_FILES && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fixtures::reserve_files(dir.path()) as u64, RESERVE_FILES);
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.settings().retention_bytes, Some(RESERVE_FILES * 4096));
}

/// A new topic does not take the reserve (it would not free space): on a full disk `mkdir`
/// fails with `ENOSPC` and leaves nothing behind, while deleting a topic, which writes no
/// file, still works.
#[test]
fn on_a_full_disk_a_new_topic_is_refused_without_using_the_reserve_and_a_delete_works() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let kept = store
        .create_topic("kept", fixtures::keyed_topic(1))
        .unwrap();
    store
        .create_topic("gone", fixtures::keyed_topic(1))
        .unwrap();

    fail::cfg("meta::write_atomically", "return(enospc)").unwrap();
    let refused = store
        .create_topic("new", fixtures::keyed_topic(2))
        .expect_err("no room for the topic's file");
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused}");
    assert_eq!(fixtures::reserve_files(dir.path()) as u64, RESERVE_FILES);
    assert!(store.topic("new").is_none());
    store.delete_topic("gone").unwrap();
    fail::remove("meta::write_atomically");

    let queues: Vec<_> = std::fs::read_dir(dir.path().join("queues"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        queues,
        [kept.id().to_string()],
        "nothing left of new or gone"
    );
    store.close().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let names: Vec<String> = store.topics().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(names, ["kept"]);
    let again = store.create_topic("new", fixtures::keyed_topic(2)).unwrap();
    assert!(
        again.id() > kept.id() + 1,
        "ids {} then {}",
        kept.id(),
        again.id()
    );
}
