//! What a store occupies on disk with the built-in defaults (issue 8): an empty store at most
//! 256 MiB, also once it has a keyed topic (whose first key makes the key index).

mod fixtures;

use std::path::Path;

use commitfs::store::{NewMessage, Store, StoreConfig};

const LIMIT: u64 = 256 << 20;

/// Bytes allocated on disk under `dir`, as `du` counts them.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        if meta.is_dir() {
            total += allocated(&entry.path());
        }
    }
    total
}

#[test]
fn a_store_with_the_defaults_occupies_at_most_256_mib_until_messages_fill_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let empty = allocated(dir.path());
    assert!(empty <= LIMIT, "an empty open store occupies {empty} bytes");

    let topic = store
        .create_topic("orders", fixtures::keyed_topic(100))
        .unwrap();
    let partition = topic.partition(0).unwrap();
    let message = NewMessage {
        payload: b"k1:hello\n",
        key_len: Some(2),
    };
    store.append_batch(&partition, &[message]).unwrap();
    store.checkpoint().unwrap();
    let keyed = allocated(dir.path());
    assert!(
        keyed <= LIMIT,
        "a store of one message in a keyed topic of 100 partitions occupies {keyed} bytes"
    );
    store.close().unwrap();
}
