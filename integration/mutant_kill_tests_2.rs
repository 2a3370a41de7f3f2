//! What a second `cargo mutants` pass over `src/store/` found untested (issue 9): queue.rs,
//! open_files.rs and the files after them. Each test says which mutants it kills.
//!
//! Failpoints are process-global, so every test here holds `FailScenario::setup()`.
#![cfg(feature = "failpoints")]

use std::sync::Arc;

use commitfs::store::{Partition, Store, StoreConfig};
use fail::FailScenario;

mod fixtures;

use fixtures::{append_lines, assert_reads, line};

/// A store of one single-partition topic `t` with `max_open_files` 16.
fn store_with_budget(dir: &std::path::Path) -> (Arc<Store>, Arc<Partition>) {
    let config = StoreConfig {
        max_open_files: 16,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir, config).unwrap();
    let topic = match store.topic("t") {
        Some(topic) => topic,
        None => store.create_topic("t", fixtures::keyed_topic(1)).unwrap(),
    };
    let partition = topic.partition(0).unwrap();
    (store, partition)
}

/// Kills `OpenFiles::touch -> ()`, `delete !` in `touch` and `OpenFiles::hold -> ()`: a
/// budget that never holds a file opens it again for every read.
#[test]
fn files_within_the_budget_stay_open_between_reads() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = store_with_budget(dir.path());
    // Three segments: three consume-queue files and one commit-log file, within 16.
    append_lines(&store, &partition, 0, 30);
    drop(partition);
    store.close().unwrap();
    drop(store);

    let (store, partition) = store_with_budget(dir.path());
    assert_reads(&store, &partition, 0, 30);
    // Every file is open now: reading again must not need to open one.
    fail::cfg("mapped::open", "return(eio)").unwrap();
    let again: Vec<_> = (0..30)
        .map(|number| store.read_message(&partition, number).ok())
        .collect();
    fail::remove("mapped::open");
    let expected: Vec<_> = (0..30).map(|number| Some(line(number))).collect();
    assert_eq!(again, expected, "a file within the budget was opened again");
}

/// Kills `ConsumeQueue::covers -> true` (and `<` -> `==`/`>` in its loop): a consume-queue
/// file lost while the store was stopped cleanly is rebuilt from the commit log, not
/// trusted to be there.
#[test]
fn a_consume_queue_file_lost_after_a_clean_stop_is_rebuilt_from_the_log() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (store, partition) = store_with_budget(dir.path());
    append_lines(&store, &partition, 0, 30);
    let queue_dir = dir
        .path()
        .join(format!("queues/{}/0", store.topic("t").unwrap().id()));
    drop(partition);
    store.close().unwrap();
    drop(store);
    // The middle segment's entries: neither the first message nor the last.
    std::fs::remove_file(queue_dir.join("00000000000000000010")).unwrap();

    let (store, partition) = store_with_budget(dir.path());
    assert_eq!(partition.end_offset(), 30);
    assert_reads(&store, &partition, 0, 30);
}

/// Kills `>` -> `<` in `ConsumeQueue::reserve`'s growth check (which allocated the whole
/// file at once): a partition with few messages costs one 4 KiB chunk of queue file, and
/// the file grows past it as messages come. With ten-message segments a queue file is
/// allocated whole when made, so this takes a longer segment.
#[test]
fn a_consume_queue_file_grows_past_its_first_chunk() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 1000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    append_lines(&store, &partition, 0, 10);
    let queue_file = dir
        .path()
        .join(format!("queues/{}/0/00000000000000000000", topic.id()));
    assert_eq!(std::fs::metadata(&queue_file).unwrap().len(), 4096);
    append_lines(&store, &partition, 10, 500);
    assert_reads(&store, &partition, 0, 500);
    drop((partition, topic));
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 500);
    assert_reads(&store, &partition, 0, 500);
}
