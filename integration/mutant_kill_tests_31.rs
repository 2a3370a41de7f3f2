//! What an in-order `cargo mutants` pass over `src/store/partition.rs` (lines 576–904:
//! segments' facts, `locate`, `offset_for_time`, `read_message`, the partition's `stream`,
//! `open_segment`, `verify`, `SegmentReader`) found untested (issue 9). Each test says which
//! mutants it kills; each was seen failing with them applied by hand.

mod fixtures;

use std::path::Path;
use std::sync::Arc;

use commitfs::store::Store;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).expect("open store")
}

/// A read of the partition's `stream` at or past its end answers end of file, also when a
/// message before the end has a garbled consume-queue entry (a reader polling the end of
/// `stream` for new bytes is not told of damage it does not read). Kills
/// `Partition::read_stream_once`'s `||` as `&&` (line 732: a read at the end searched the
/// stored messages, met the damaged entry and failed).
#[test]
fn a_read_at_the_end_of_the_stream_answers_end_of_file_past_a_damaged_entry() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 3);
    // Entry 1 (README "On-disk format": 20 bytes each) garbled.
    let queue = std::fs::OpenOptions::new()
        .write(true)
        .open(fixtures::queue_file(dir.path(), 0))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&queue, &[0xab; 20], 20).unwrap();

    let store = open(dir.path());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert!(
        store.read_message(&partition, 1).is_err(),
        "entry 1 damaged"
    );
    let end = partition.stream_end();
    assert_eq!(end, 3 * fixtures::line(0).len() as u64);
    let mut buf = [0u8; 16];
    for position in [end, end + 100] {
        assert_eq!(
            partition.read_stream(position, &mut buf).unwrap(),
            0,
            "a read at byte {position}"
        );
    }
    store.close().unwrap();
}
