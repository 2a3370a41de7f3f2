//! A checkpoint writes out the consume-queue entries that wait in memory while the partition's
//! writer goes on: entries of another segment that arrive between the checkpoint finding the
//! file and writing to it are written to their own file, never dropped.
#![cfg(feature = "failpoints")]

use std::sync::{Arc, Barrier};

use commitfs::store::{NewMessage, Partition, Store, StoreConfig};

mod fixtures;

fn config() -> StoreConfig {
    StoreConfig {
        segment_messages: 16,
        ..fixtures::small_store_config()
    }
}

fn append_one(store: &Store, partition: &Partition) {
    let text = format!("m{}\n", partition.end_offset());
    let message = NewMessage {
        payload: text.as_bytes(),
        key_len: None,
    };
    store.append_batch(partition, &[message]).unwrap();
}

fn assert_every_message(store: &Store, partition: &Partition) {
    for offset in 0..partition.end_offset() {
        let got = store.read_message(partition, offset).unwrap();
        assert_eq!(got, format!("m{offset}\n").as_bytes(), "offset {offset}");
    }
}

#[test]
fn entries_of_a_new_segment_that_arrive_during_a_checkpoint_reach_their_file() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    // Offsets 1..15 wait in memory, in segment 0.
    for _ in 0..15 {
        append_one(&store, &partition);
    }
    let met = Arc::new(Barrier::new(2));
    {
        let met = met.clone();
        fail::cfg_callback("queue::write-out-pending", move || {
            met.wait();
            met.wait();
        })
        .unwrap();
    }
    let checkpoint = {
        let store = store.clone();
        std::thread::spawn(move || store.checkpoint())
    };
    // The checkpoint found segment 0's file. Offset 15 ends segment 0, 16 starts segment 1
    // (its append writes segment 0's entries out), 17 and 18 wait in memory in segment 1.
    met.wait();
    fail::remove("queue::write-out-pending");
    for _ in 0..4 {
        append_one(&store, &partition);
    }
    met.wait();
    checkpoint.join().unwrap().unwrap();
    assert_every_message(&store, &partition);
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 19);
    assert_every_message(&store, &partition);
    store.close().unwrap();
}
