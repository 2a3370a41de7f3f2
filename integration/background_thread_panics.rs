//! A panic on one of the store's background threads (issue 9, item 3): the thread that makes
//! commit-log files ahead of need, the key-index thread, the consume-queue writer, the
//! maintenance thread and the segment copier may each leave their work half done, so the
//! store is fenced — every write refused, reads going on — until a reopen recovers from the
//! disk; and no append waits for a thread that is gone. The same holds for the key-index
//! entries that a lookup inserts on a FUSE thread when the key-index thread is behind. Each
//! test injects the panic with a failpoint and holds a `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commitfs::store::{Partition, Store, StoreConfig, StoreError, Topic};
use fail::FailScenario;

mod fixtures;

/// Appends `line(n)` for `n` from `from` on, a millisecond apart, until the store refuses
/// one as fenced (a minute at most); returns the offset after the last one acknowledged.
fn append_until_fenced(store: &Arc<Store>, partition: &Arc<Partition>, from: u64) -> u64 {
    let (store, partition) = (store.clone(), partition.clone());
    fixtures::finishes("appending until the store is fenced", move || {
        let mut next = from;
        loop {
            match store.append(&partition, &fixtures::line(next), None) {
                Ok(outcome) => {
                    assert_eq!(outcome.first_offset, next);
                    next += 1;
                }
                Err(StoreError::Fenced) => return next,
                Err(other) => panic!("append {next}: {other}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Waits (a minute at most) until `store` refuses a checkpoint as fenced.
fn wait_until_fenced(store: &Arc<Store>, what: &str) {
    let polled = store.clone();
    fixtures::finishes(what, move || {
        while !matches!(polled.checkpoint(), Err(StoreError::Fenced)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// What a fenced store must show: writes and checkpoints refused, every acknowledged
/// message (`line(0..end)` of topic `t`) still read, a close that refuses to vouch for the
/// state (the abort marker stays); and after a reopen the same messages, and writes again.
fn assert_fenced_then_recovered(store: Arc<Store>, config: StoreConfig, end: u64) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let refused = store.append(&partition, b"refused\n", None);
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert!(matches!(store.checkpoint(), Err(StoreError::Fenced)));
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_reads(&store, &partition, 0, end);
    assert!(matches!(store.close(), Err(StoreError::Fenced)));
    let dir = store.dir().to_owned();
    assert!(dir.join("abort").exists());
    drop((partition, store));

    let store = Store::open(&dir, config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_reads(&store, &partition, 0, end);
    fixtures::append_lines(&store, &partition, end, end + 1);
    store.close().unwrap();
}

/// Message `n` of the key tests: key `k<n>`.
fn keyed(n: u64) -> String {
    format!("k{n}:value {n}\n")
}

/// A store in `dir` with a keyed topic `t` of one partition.
fn open_keyed(dir: &Path, config: &StoreConfig) -> (Arc<Store>, Arc<Topic>, Arc<Partition>) {
    let store = Store::open(dir, config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    (store, topic, partition)
}

/// Opens the store in `dir` again: `t` ends at `end`, and every key `k0..k<end>` finds its
/// one message.
fn assert_keys_found_after_a_reopen(dir: &Path, config: StoreConfig, end: u64) {
    let store = Store::open(dir, config).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.partition(0).unwrap().end_offset(), end);
    for n in 0..end {
        let found = fixtures::key_matches(&store, &topic, &format!("k{n}"));
        assert_eq!(found, [(0, n, keyed(n))], "key k{n} after the reopen");
    }
    store.close().unwrap();
}

/// A failpoint callback that says when it is reached, waits to be let go, then panics.
fn panic_when_let_go() -> (Receiver<()>, Sender<()>, impl Fn() + Send + Sync + 'static) {
    let (reached_tx, reached) = channel();
    let (let_go, let_go_rx) = channel::<()>();
    let (reached_tx, let_go_rx) = (Mutex::new(reached_tx), Mutex::new(let_go_rx));
    let callback = move || {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = let_go_rx.lock().unwrap().recv();
        panic!("injected panic");
    };
    (reached, let_go, callback)
}

#[test]
fn an_append_waiting_for_the_next_log_file_goes_on_when_the_preparer_panics() {
    let _scenario = FailScenario::setup();
    let (reached, let_go, callback) = panic_when_let_go();
    // Held inside the making of the next commit-log file, which the open asks for.
    fail::cfg_callback("commitlog::prepare", callback).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let (store, partition) = fixtures::open_with_the_preparer_held(dir.path(), &reached);

    // If the append is not waiting for the file yet when the preparer panics, it finds the
    // store fenced.
    let (lines, written) =
        fixtures::append_needing_the_held_file(&store, &partition, || let_go.send(()).unwrap());
    fail::remove("commitlog::prepare");
    let end = match written {
        Ok(()) => 40,
        Err(StoreError::Fenced) => 0,
        Err(other) => panic!("the big batch: {other}"),
    };
    // The waiting append may finish a moment before the unwinding thread sets the fence.
    wait_until_fenced(&store, "the preparer's panic fencing the store");
    let refused = store.append(&partition, b"after the panic\n", None);
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_messages_are(&store, &partition, &lines[..end as usize]);
    assert!(matches!(store.close(), Err(StoreError::Fenced)));
    drop((partition, store));

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), end);
    fixtures::assert_messages_are(&store, &partition, &lines[..end as usize]);
    store.close().unwrap();
}

#[test]
fn a_panic_on_the_queue_writer_fences_the_store() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // Segments long enough that single appends leave entries waiting for the queue writer.
    let config = StoreConfig {
        segment_messages: 1000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fail::cfg("queue-writer::held-back", "panic").unwrap();
    // The 25th append asks the queue writer for the waiting entries; it wakes and panics.
    let end = append_until_fenced(&store, &partition, 0);
    fail::remove("queue-writer::held-back");
    assert!(end >= 25, "fenced after {end} appends");
    assert_fenced_then_recovered(store, config, end);
}

#[test]
fn a_panic_on_the_key_index_thread_fences_the_store_and_keys_are_still_found() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let (store, topic, partition) = open_keyed(dir.path(), &config);
    fail::cfg("index::thread-held-back", "panic").unwrap();
    // The first keyed append hands its entry to the key-index thread, which panics.
    let (writer_store, writer_partition) = (store.clone(), partition.clone());
    let end = fixtures::finishes("appending until the store is fenced", move || {
        let mut next = 0;
        loop {
            let line = keyed(next);
            let key_len = line.find(':');
            match writer_store.append(&writer_partition, line.as_bytes(), key_len) {
                Ok(_) => next += 1,
                Err(StoreError::Fenced) => return next,
                Err(other) => panic!("append {next}: {other}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    fail::remove("index::thread-held-back");
    assert!(end >= 1, "fenced before the first append");
    // Reads go on: a lookup inserts what the thread left waiting.
    for n in 0..end.min(10) {
        let found = fixtures::key_matches(&store, &topic, &format!("k{n}"));
        assert_eq!(found, [(0, n, keyed(n))], "key k{n}");
    }
    let refused = store.append(&partition, b"k0:refused\n", Some(2));
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert!(matches!(store.close(), Err(StoreError::Fenced)));
    drop((partition, topic, store));
    assert_keys_found_after_a_reopen(dir.path(), config, end);
}

#[test]
fn a_panic_while_a_lookup_inserts_waiting_key_entries_fences_the_store() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let (store, topic, partition) = open_keyed(dir.path(), &config);
    // The key-index thread is behind: each append's entries wait until the next append's
    // reservation inserts them, and the last append's until a lookup does.
    fail::cfg("index::thread-held-back", "return").unwrap();
    for n in 0..3 {
        let line = keyed(n);
        store
            .append(&partition, line.as_bytes(), line.find(':'))
            .unwrap();
    }
    fail::cfg("index::insert", "panic").unwrap();
    let lookup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fixtures::key_matches(&store, &topic, "k0")
    }));
    fail::remove("index::insert");
    fail::remove("index::thread-held-back");
    assert!(
        lookup.is_err(),
        "the lookup did not insert k2's waiting entry"
    );
    // k2's entry went with the panic: no checkpoint may count it as in the index.
    let refused = store.append(&partition, b"k9:refused\n", Some(2));
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert!(matches!(store.checkpoint(), Err(StoreError::Fenced)));
    for n in 0..3 {
        let read = store.read_message(&partition, n).unwrap();
        assert_eq!(read, keyed(n).as_bytes(), "offset {n}");
    }
    assert!(matches!(store.close(), Err(StoreError::Fenced)));
    drop((partition, topic, store));
    assert_keys_found_after_a_reopen(dir.path(), config, 3);
}

#[test]
fn a_panic_on_the_maintenance_thread_fences_the_store() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        checkpoint_interval_ms: 20,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // The thread's next checkpoint panics where it replaces the checkpoint file.
    fail::cfg("meta::write_atomically", "panic").unwrap();
    let end = append_until_fenced(&store, &partition, 0);
    fail::remove("meta::write_atomically");
    assert_fenced_then_recovered(store, config, end);
}

#[test]
fn a_panic_on_the_segment_copier_fences_the_store() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        materialize_segments: true,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fail::cfg("materialize::copy", "panic").unwrap();
    // Two sealed segments of ten; the copier takes them once the log stops growing.
    fixtures::append_lines(&store, &partition, 0, 25);
    wait_until_fenced(&store, "the copier's panic fencing the store");
    fail::remove("materialize::copy");
    assert_fenced_then_recovered(store, config, 25);
}
