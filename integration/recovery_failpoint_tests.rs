//! A failed open writes nothing (issue 9, item 8), with the failure injected through a
//! failpoint while the topics are built. Every test here holds a `FailScenario`.
#![cfg(feature = "failpoints")]

use std::path::Path;

use commitfs::store::{Store, TopicSettings};

mod fixtures;

fn settings(partitions: u32) -> TopicSettings {
    fixtures::lines_topic(partitions)
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn a_failed_open_writes_no_checkpoint_and_leaves_store_toml_unchanged() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), fixtures::recovery_store_config()).unwrap();
        for name in ["a", "b", "c"] {
            let topic = store.create_topic(name, settings(4)).unwrap();
            for partition in topic.partitions() {
                for i in 0..50 {
                    store
                        .append(&partition, format!("{name} {i}\n").as_bytes(), None)
                        .unwrap();
                }
            }
        }
        store.close().unwrap();
    }
    let (checkpoint, meta) = (
        read(dir.path(), "checkpoint"),
        read(dir.path(), "store.toml"),
    );

    // The second topic cannot be built (as with EMFILE under a low open-file limit).
    fail::cfg("recovery::build_topic", "1*off->return").unwrap();
    let error = Store::open(dir.path(), fixtures::recovery_store_config())
        .err()
        .expect("the open fails");
    assert!(
        error.to_string().contains("opening the queues of topic b"),
        "{error}"
    );
    fail::remove("recovery::build_topic");
    assert_eq!(
        read(dir.path(), "checkpoint"),
        checkpoint,
        "no checkpoint written"
    );
    assert_eq!(read(dir.path(), "store.toml"), meta, "store.toml unchanged");

    let store = Store::open(dir.path(), fixtures::recovery_store_config()).unwrap();
    for name in ["a", "b", "c"] {
        for partition in store.topic(name).unwrap().partitions() {
            assert_eq!(partition.end_offset(), 50, "{name}/{}", partition.index());
            assert_eq!(
                store.read_message(&partition, 49).unwrap(),
                format!("{name} 49\n").as_bytes()
            );
        }
    }
    drop(store);
    scenario.teardown();
}

/// Retention records its new starts in a checkpoint before it removes any file: a process
/// that dies while removing them leaves the new start recorded, not queues missing their
/// first files (which recovery rebuilds from the log, bringing back what retention removed).
#[test]
fn a_crash_while_retention_removes_files_keeps_its_new_start() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::recovery_store_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let mut keep_one_segment = settings(1);
    keep_one_segment.retention_bytes = Some(1);
    let partition = fixtures::new_partition(&store, "t", keep_one_segment);
    for i in 0..250 {
        store
            .append(&partition, format!("m {i}\n").as_bytes(), None)
            .unwrap();
    }
    store.checkpoint().unwrap();

    // The process dies at the pass's first file removal.
    fail::cfg("mapped::remove", "panic(killed)").unwrap();
    let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.enforce_retention()));
    fail::remove("mapped::remove");
    assert!(pass.is_err(), "the pass died removing a file");
    assert_eq!(partition.start_offset(), 200);
    store.halt_without_cleanup();
    drop(store);

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(
        (partition.start_offset(), partition.end_offset()),
        (200, 250)
    );
    assert_eq!(store.read_message(&partition, 200).unwrap(), b"m 200\n");
    let queue = dir.path().join("queues/1/0");
    assert!(
        !queue.join(format!("{:020}", 100)).exists(),
        "the files below the start are removed at the open"
    );
}
