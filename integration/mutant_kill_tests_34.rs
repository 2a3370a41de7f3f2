//! What in-order `cargo mutants` passes found untested (issue 9), all run to the end: the
//! fencing of the store on a panic on a background thread (`src/store/commitlog.rs`
//! `start_preparer` and `PreparerEnded`, `src/store/mod.rs` `spawn_background`,
//! `src/store/append.rs` `Fence::on_unwind` and `FenceOnUnwind::drop`: 8 mutants, none
//! missed), `CommitLog::next_file`'s wait and hand-over guards (`src/store/commitlog.rs`
//! lines 446–468: 9), the end of `verify_file` and `decode_entry` (`src/store/index.rs`
//! lines 989–1028: 12, none missed) and `SegmentReader::materialized_file` and `end`
//! (`src/store/partition.rs` lines 897–908: 6). Each test says which mutants it kills.
//! Every test holds `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

mod fixtures;

use std::sync::mpsc::channel;
use std::sync::Mutex;

use commitfs::store::Store;

/// An append that needs the commit-log file the preparer thread is still making waits for
/// it and then goes on in it, rather than making the same file itself, which already exists
/// (the preparer is held after creating it, while it syncs the directory): the big batch is
/// acknowledged and read back, also after a reopen. Kills `CommitLog::next_file`'s wait
/// guard `slot.wanted == Some(base)` with `==` as `!=` and with `!slot.stop`'s `!` deleted
/// (line 454: the append made the file itself, found it there and failed). The pass counted
/// both caught by `background_thread_panics`, but only because its append after the panic
/// ran before the panicking preparer fenced the store; this test does not depend on that.
#[test]
fn an_append_needing_the_file_being_prepared_waits_for_it() {
    let _scenario = fail::FailScenario::setup();
    let (reached_tx, reached) = channel();
    let (let_go, let_go_rx) = channel::<()>();
    let (reached_tx, let_go_rx) = (Mutex::new(reached_tx), Mutex::new(let_go_rx));
    // Holds the preparer thread once its new file exists, until `let_go` is dropped.
    fail::cfg_callback("meta::sync_dir", move || {
        if std::thread::current().name() == Some("commitlog-prepare") {
            let _ = reached_tx.lock().unwrap().send(());
            let _ = let_go_rx.lock().unwrap().recv();
        }
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let (store, partition) = fixtures::open_with_the_preparer_held(dir.path(), &reached);

    let (lines, written) =
        fixtures::append_needing_the_held_file(&store, &partition, || drop(let_go));
    fail::remove("meta::sync_dir");
    written.expect("the batch needing the prepared file");
    fixtures::assert_messages_are(&store, &partition, &lines);
    store.close().unwrap();
    drop((partition, store));

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 40);
    fixtures::assert_messages_are(&store, &partition, &lines);
    store.close().unwrap();
}
