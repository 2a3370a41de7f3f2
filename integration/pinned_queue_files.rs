//! An append's consume-queue files stay mapped from its reserve to its publish (review of
//! issue 9): the budget of open files may close them meanwhile, and mapping one again could
//! fail after the append's bytes went into the log, which panicked and fenced the store.
//!
//! Failpoints are process-global, so every test here holds `FailScenario::setup()`.
#![cfg(feature = "failpoints")]

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use commitfs::store::{NewMessage, Store, StoreConfig};
use fail::FailScenario;

mod fixtures;

const PARTITIONS: u32 = 40;

fn config() -> StoreConfig {
    StoreConfig {
        // The fewest the store allows: reading a few partitions closes the other files.
        max_open_files: 16,
        ..fixtures::small_store_config()
    }
}

fn line(partition: u32, number: u64) -> Vec<u8> {
    format!("p{partition} line {number}\n").into_bytes()
}

#[test]
fn an_append_across_segments_survives_its_first_queue_file_closed_and_unopenable() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store
        .create_topic("t", fixtures::keyed_topic(PARTITIONS))
        .unwrap();
    for index in 0..PARTITIONS {
        let partition = topic.partition(index).unwrap();
        store.append(&partition, &line(index, 0), None).unwrap();
    }
    let partition = topic.partition(0).unwrap();
    for number in 1..5 {
        store.append(&partition, &line(0, number), None).unwrap();
    }

    // Offsets 5..15 of partition 0: the last five of the first segment's queue file (10
    // messages a segment), the first five of the second's.
    let lines: Vec<Vec<u8>> = (5..15).map(|number| line(0, number)).collect();
    let messages: Vec<NewMessage<'_>> = lines
        .iter()
        .map(|payload| NewMessage {
            payload,
            key_len: None,
        })
        .collect();
    // Once the batches are in the log, before their queue entries are written: reads of
    // the other partitions make the budget close every file the append does not hold, and
    // then the first segment's queue file cannot be opened again.
    let reader = Arc::clone(&store);
    let reader_topic = Arc::clone(&topic);
    let queue_dir = format!("/queues/{}/0/", topic.id());
    fail::cfg_callback("append::after-log-publish", move || {
        for index in 1..PARTITIONS {
            let other = reader_topic.partition(index).unwrap();
            assert_eq!(reader.read_message(&other, 0).unwrap(), line(index, 0));
        }
        fail::cfg("mapped::open", &format!("return(eio@{queue_dir})")).unwrap();
    })
    .unwrap();
    let appended = std::panic::catch_unwind(AssertUnwindSafe(|| {
        store.append_batch(&partition, &messages)
    }));
    fail::remove("append::after-log-publish");
    fail::remove("mapped::open");
    let outcome = appended
        .expect("the append panicked after its bytes went into the log")
        .unwrap();
    assert_eq!((outcome.first_offset, outcome.count), (5, 10));

    // Not fenced: the next append goes on, and every message reads back, also after a reopen.
    store.append(&partition, &line(0, 15), None).unwrap();
    for number in 0..16 {
        assert_eq!(
            store.read_message(&partition, number).unwrap(),
            line(0, number)
        );
    }
    drop(partition);
    drop(topic);
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 16);
    for number in 0..16 {
        assert_eq!(
            store.read_message(&partition, number).unwrap(),
            line(0, number)
        );
    }
}
