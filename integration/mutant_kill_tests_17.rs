//! What a `cargo mutants` pass over `src/store/queue.rs` (from `ConsumeQueue::can_defer` on)
//! found untested (issue 9). Each test says which mutants it kills. Every test holds a
//! `FailScenario` (failpoints are global).
#![cfg(feature = "failpoints")]

mod fixtures;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use commitfs::store::{FlushPolicy, Store, StoreConfig, TopicSettings};
use fail::FailScenario;

/// 64 KiB commit-log files, 10-message segments: the first append to a segment allocates
/// room for all of it, and the single-message appends after it keep their consume-queue
/// entries in memory until a checkpoint or the next segment's first append.
fn config() -> StoreConfig {
    fixtures::small_store_config()
}

/// Retention by time takes a whole full segment whose entries (all but the first) still
/// wait in memory for its consume-queue file, and the checkpoint it writes before removing
/// files fails (the commit log cannot be flushed): the file goes all the same, and its
/// entries with it. The next checkpoint finishes, and so do later appends and a close; the
/// next open finds the partition as it was left. Kills the match guard
/// `!self.shared.files.read().contains_key(&base)` replaced with `false`, and its `!`
/// deleted, in `ConsumeQueue::write_out_pending` (the checkpoint waited forever for the
/// removed file).
#[test]
fn entries_waiting_in_memory_go_with_the_file_retention_removes() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        // No background flush: the checkpoint's flush of the log is the one that fails.
        flush: FlushPolicy::Async {
            interval_ms: 3_600_000,
        },
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let settings = TopicSettings {
        retention_ms: Some(1),
        ..fixtures::lines_topic(1)
    };
    let partition = fixtures::new_partition(&store, "t", settings);
    // Segment 0 full; nothing after it, so its newest entries are still in memory.
    fixtures::append_lines(&store, &partition, 0, 10);
    // Older than the topic's retention of 1 ms.
    std::thread::sleep(Duration::from_millis(50));
    fail::cfg("mapped::flush", "return(eio@/commitlog/)").unwrap();
    let failed = store.enforce_retention();
    fail::remove("mapped::flush");
    assert!(failed.is_err(), "its checkpoints failed: {failed:?}");
    assert_eq!(partition.start_offset(), 10, "segment 0 expired");
    {
        let store = store.clone();
        fixtures::finishes("the checkpoint", move || store.checkpoint()).unwrap();
    }
    fixtures::append_lines(&store, &partition, 10, 15);
    fixtures::assert_reads(&store, &partition, 10, 15);
    {
        let store = store.clone();
        fixtures::finishes("the close", move || store.close()).unwrap();
    }
    drop((store, partition));

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!((partition.start_offset(), partition.end_offset()), (10, 15));
    fixtures::assert_reads(&store, &partition, 10, 15);
    store.close().unwrap();
}

/// A checkpoint that found no entry waiting in memory, and meanwhile single-message appends
/// put some there: it writes them to their file all the same (or leaves them in memory),
/// never drops them. Every message reads back, also after a close and a reopen. Kills the
/// match guard `!self.shared.files.read().contains_key(&base)` replaced with `true`, and its
/// `!` deleted, in `ConsumeQueue::write_out_pending` (the entries were dropped as if
/// retention had removed their file, and their messages no longer read back).
#[test]
fn entries_that_arrive_while_a_checkpoint_finds_none_are_kept() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // Offset 0 goes to its file (its append allocates the segment's room): none waits.
    fixtures::append_lines(&store, &partition, 0, 1);
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
    // The checkpoint found nothing waiting; offsets 1..4 now wait in memory.
    met.wait();
    fail::remove("queue::write-out-pending");
    fixtures::append_lines(&store, &partition, 1, 4);
    met.wait();
    checkpoint.join().unwrap().unwrap();
    fixtures::assert_reads(&store, &partition, 0, 4);
    store.close().unwrap();
    drop((store, partition));

    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 4);
    fixtures::assert_reads(&store, &partition, 0, 4);
    store.close().unwrap();
}
