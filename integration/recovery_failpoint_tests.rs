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
