//! What an in-order `cargo mutants` pass over `src/store/queue.rs` found untested (issue 9):
//! a checkpoint syncs the file system only when a name was made since the last one, and the
//! directories a store finds at open are not new ones. The test says which mutants it kills;
//! the pass's other survivors change speed only (see the README's "Mutation testing").

#![cfg(feature = "failpoints")]

mod fixtures;

use commitfs::store::{Store, StoreError};
use fail::FailScenario;

/// A store that closed cleanly opens (whose recovery ends in a checkpoint) and checkpoints
/// without a sync of the file system (a device flush, 2.6 ms and more here): the queue and
/// index directories it finds were made durable before it closed. A new queue file's name is
/// synced again.
///
/// Kills: queue.rs 233 and index.rs 590, delete `!` in `ConsumeQueue::open` and
/// `KeyIndex::open` (every directory found would count as new).
#[test]
fn a_store_reopened_with_nothing_new_opens_and_checkpoints_without_a_sync_of_the_file_system() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 15);

    fail::cfg("meta::sync_file_system", "return(eio)").unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    store.checkpoint().unwrap();

    // Messages into later segments make queue files: now the checkpoint has to sync.
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::append_lines(&store, &partition, 15, 40);
    let failed = store.checkpoint();
    assert!(matches!(failed, Err(StoreError::Io { .. })), "{failed:?}");
    fail::remove("meta::sync_file_system");
    store.checkpoint().unwrap();
    store.close().unwrap();
}
