//! What a `cargo mutants` pass over `src/store/recovery.rs` found untested (issue 9). Each
//! test says which mutants it kills.

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Partition, Store, StoreConfig, StoreError};

mod fixtures;

fn config() -> StoreConfig {
    fixtures::small_store_config()
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open store")
}

fn line(number: u64) -> Vec<u8> {
    format!("line {number}\n").into_bytes()
}

fn append_lines(store: &Store, partition: &Partition, from: u64, to: u64) {
    for number in from..to {
        store.append(partition, &line(number), None).unwrap();
    }
}

fn assert_reads(store: &Store, partition: &Partition, from: u64, to: u64) {
    for number in from..to {
        let read = store.read_message(partition, number);
        assert_eq!(read.ok(), Some(line(number)), "offset {number}");
    }
}

/// Replaces the first `from` in the metadata file `name` under `dir`.
fn edit_meta_file(dir: &Path, name: &str, from: &str, to: &str) {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Kills `>` -> `==`, `<` and `>=` in `check_data_against_meta`'s checkpoint check: when
/// only the checkpoint still counts the messages of a partition the metadata dropped, the
/// open is refused; a dropped partition that never held a message is no disagreement.
#[test]
fn a_checkpoint_counting_messages_of_a_dropped_partition_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("t", fixtures::keyed_topic(3)).unwrap();
    append_lines(&store, &topic.partition(0).unwrap(), 0, 5);
    append_lines(&store, &topic.partition(1).unwrap(), 0, 5);
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Partition 2 never held a message: dropping it from the count opens.
    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 3",
        "partitions = 2",
    );
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.partitions().len(), 2);
    assert_reads(&store, &topic.partition(1).unwrap(), 0, 5);
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Partition 1 held five: with its consume queue gone, the checkpoint still says so.
    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 2",
        "partitions = 1",
    );
    std::fs::remove_dir_all(dir.path().join("queues/1/1")).unwrap();
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open is refused");
    let text = error.to_string();
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
    assert!(
        text.contains("the checkpoint counts 5 messages of partition 1 of topic \"t\""),
        "{text}"
    );
}
