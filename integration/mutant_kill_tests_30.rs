//! What an in-order `cargo mutants` pass over `src/store/partition.rs` (lines 40–575: topics,
//! partitions' reads of their own records, consumer positions) found untested (issue 9). Each
//! test says which mutants it kills; each was seen failing with them applied by hand.

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{Store, StoreError};

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

/// A topic printed with `{:?}` (what a library user's log line or a failed `unwrap` shows)
/// names it and gives its id. Kills `<impl Debug for Topic>::fmt` -> `Ok(Default::default())`
/// (line 40: nothing printed).
#[test]
fn a_topic_debug_print_names_it_and_gives_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .create_topic("first", fixtures::lines_topic(1))
        .unwrap();
    let topic = store
        .create_topic("orders", fixtures::lines_topic(1))
        .unwrap();
    assert_eq!(format!("{topic:?}"), r#"Topic { name: "orders", id: 2 }"#);
    store.close().unwrap();
}

/// A store whose last message's consume-queue entry gives a length its batch's table does not
/// (one more byte) is refused at the open, naming the entry's file and byte and saying the
/// entry disagrees with the table: the writer must not take the last message's place from it.
/// Kills `Partition::read_record_from_disk`'s match guard `Self::agrees(&entry, &message)` as
/// `true` (line 343: the disagreeing entry accepted).
#[test]
fn a_last_queue_entry_that_disagrees_with_its_batch_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 3);

    let queue = fixtures::queue_file(dir.path(), 0);
    let mut entries = std::fs::read(&queue).unwrap();
    // Entry 2's length (README "On-disk format": bytes 8..12 of a 20-byte entry), one longer.
    let size = 2 * 20 + 8..2 * 20 + 12;
    let longer = u32::from_le_bytes(entries[size.clone()].try_into().unwrap()) + 1;
    entries[size].copy_from_slice(&longer.to_le_bytes());
    std::fs::write(&queue, &entries).unwrap();

    match Store::open(dir.path(), fixtures::small_store_config()) {
        Err(StoreError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, queue);
            assert_eq!(offset, 2 * 20);
            assert!(
                reason.contains(
                    "message 2: its consume-queue entry disagrees with its batch's table"
                ),
                "{reason}"
            );
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("an entry one byte longer than its message was accepted"),
    }
}
