//! What a `cargo mutants` pass over `src/store/format.rs` (from `batch_size` on) found
//! untested (issue 9); the pass over the slot table in memory of `src/store/index.rs` left no
//! survivor that changes what a user sees. Each test says which mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::{Store, StoreError};
use fixtures::{key_matches, keyed_topic, small_store_config};

/// A message whose key is all of it: a key as long as its message is allowed.
const WHOLE_KEY: &[u8] = b"whole-key";

fn log_file(dir: &Path) -> PathBuf {
    dir.join("commitlog").join(format!("{:020}", 0))
}

/// A store with keyed topic "t" (one partition) holding `messages` (bytes, key length), one
/// append each, left as a crash leaves it (no checkpoint: the next open scans the whole
/// log). Returns the messages' bytes.
fn crashed_keyed_store(dir: &Path, messages: &[(&[u8], usize)]) -> Vec<Vec<u8>> {
    let store = Store::open(dir, small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", keyed_topic(1));
    for &(payload, key_len) in messages {
        store.append(&partition, payload, Some(key_len)).unwrap();
    }
    store.sync().unwrap();
    store.halt_without_cleanup();
    messages
        .iter()
        .map(|(payload, _)| payload.to_vec())
        .collect()
}

/// Every message of partition 0 of "t", read back one by one, and its end offset.
fn stored_messages(store: &Store) -> (u64, Vec<Vec<u8>>) {
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let end = partition.end_offset();
    let messages = (0..end)
        .map(|offset| store.read_message(&partition, offset).unwrap())
        .collect();
    (end, messages)
}

/// A message whose key is the whole message reads back, is found by its key, and stays
/// whole through the scan of an open after a crash (which checks every batch's table), and
/// so does the message after it. Kills `k as usize > len` → `>=` in `Batch::message`
/// (`src/store/format.rs` line 156), which took a key as long as its message for damage.
#[test]
fn a_message_that_is_all_key_reads_back_is_found_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let messages = crashed_keyed_store(
        dir.path(),
        &[(b"a:0", 1), (WHOLE_KEY, WHOLE_KEY.len()), (b"c:2", 1)],
    );
    let store = Store::open(dir.path(), small_store_config()).unwrap();
    assert_eq!(stored_messages(&store), (3, messages.clone()));
    let topic = store.topic("t").unwrap();
    assert_eq!(
        key_matches(&store, &topic, "whole-key"),
        [(0, 1, "whole-key".to_owned())]
    );
    assert_eq!(key_matches(&store, &topic, "c"), [(0, 2, "c:2".to_owned())]);
    store.close().unwrap();
}

/// Sets the key length of the one message of the batch at `start` (a keyed batch: its end at
/// bytes 60..64, its key length at 64..68) one past its length, and stores a CRC32C that
/// matches the altered bytes (README "On-disk format": bytes 8..12 cover 12..size).
fn give_a_key_longer_than_its_message(bytes: &mut [u8], start: usize) {
    let size = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
    let count = u32::from_le_bytes(bytes[start + 20..start + 24].try_into().unwrap());
    assert_eq!(count, 1, "one message in the batch");
    let len = u32::from_le_bytes(bytes[start + 60..start + 64].try_into().unwrap());
    bytes[start + 64..start + 68].copy_from_slice(&(len + 1).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[start + 12..start + size]);
    bytes[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// A batch whose table gives its message a key longer than the message is damage even when
/// its CRC matches: as the last batch after a crash it is cut (the store keeps the two
/// before it), and as an earlier one it refuses the open, naming the commit-log file and the
/// batch's byte, and leaves the file as it was. Kills `k as usize > len` → `==` in
/// `Batch::message` (`src/store/format.rs` line 156), which let such a key through.
#[test]
fn a_batch_whose_key_is_longer_than_its_message_is_damage_even_with_a_good_crc() {
    let template = tempfile::tempdir().unwrap();
    let messages = crashed_keyed_store(template.path(), &[(b"a:0", 1), (b"b:1", 1), (b"c:2", 1)]);
    let bytes = std::fs::read(log_file(template.path())).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 3, "one batch an append");

    let dir = tempfile::tempdir().unwrap();
    fixtures::copy_dir(template.path(), dir.path());
    let mut damaged = bytes.clone();
    give_a_key_longer_than_its_message(&mut damaged, starts[2]);
    std::fs::write(log_file(dir.path()), &damaged).unwrap();
    let store = Store::open(dir.path(), small_store_config()).unwrap();
    assert_eq!(stored_messages(&store), (2, messages[..2].to_vec()));
    store.close().unwrap();

    let dir = tempfile::tempdir().unwrap();
    fixtures::copy_dir(template.path(), dir.path());
    let mut damaged = bytes.clone();
    give_a_key_longer_than_its_message(&mut damaged, starts[0]);
    std::fs::write(log_file(dir.path()), &damaged).unwrap();
    let error = Store::open(dir.path(), small_store_config())
        .err()
        .expect("a key longer than its message in an earlier batch refuses the open");
    let text = error.to_string();
    assert!(matches!(error, StoreError::NeedsRepair { .. }), "{text}");
    let named = format!("{} byte {}:", log_file(dir.path()).display(), starts[0]);
    assert!(text.contains(&named), "{text}");
    assert_eq!(std::fs::read(log_file(dir.path())).unwrap(), damaged);
}
