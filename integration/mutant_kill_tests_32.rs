//! What an in-order `cargo mutants` pass over `src/store/queue.rs` (lines 523–583 of the
//! planned 523–660: the rest of `can_defer`, `defer`, `file_for_pending`, the start of
//! `write_out_pending`) found untested (issue 9). Each test says which mutants it kills;
//! each was seen failing with them applied by hand.
//! Every test holds `FailScenario` (failpoints are global).
#![cfg(feature = "failpoints")]

mod fixtures;

use commitfs::store::{NewMessage, Store};

/// An append that failed after reserving room in the next segment's queue file leaves the
/// entries of this segment waiting in memory; the message appended next, the next
/// segment's first, goes to its own file, and readers find it after a checkpoint wrote the
/// waiting entries out and after a reopen. Kills `ConsumeQueue::can_defer`'s
/// `from + count - 1` as `from * count - 1` (line 526: offset 10 was taken for segment 0's
/// and waited with its entries, and the checkpoint's write-out of them ran past segment 0's
/// file, a panic).
#[test]
fn the_first_message_of_a_segment_after_a_failed_append_is_found() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(2)).unwrap();
    let (first, second) = (topic.partition(0).unwrap(), topic.partition(1).unwrap());
    // Ten messages a segment: offset 0 goes to the file, 1..=9 wait in memory.
    fixtures::append_lines(&store, &first, 0, 10);
    // Partition 0 reserves offset 10's room in segment 1's file, then partition 1's
    // reservation fails, and the append with it.
    fail::cfg("append::reserve-queue", "1*off->return").unwrap();
    let (line_10, line_0) = (fixtures::line(10), fixtures::line(0));
    let to_first = [NewMessage {
        payload: &line_10,
        key_len: None,
    }];
    let to_second = [NewMessage {
        payload: &line_0,
        key_len: None,
    }];
    let batches = [(&*first, &to_first[..]), (&*second, &to_second[..])];
    assert!(store.append_to_partitions(&batches).is_err());
    fail::remove("append::reserve-queue");
    assert_eq!(first.end_offset(), 10);
    fixtures::append_lines(&store, &first, 10, 11);
    store.checkpoint().unwrap();
    fixtures::assert_reads(&store, &first, 0, 11);
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config).unwrap();
    let first = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(first.end_offset(), 11);
    fixtures::assert_reads(&store, &first, 0, 11);
    store.close().unwrap();
}
