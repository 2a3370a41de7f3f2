//! Appends whose messages are written to the commit log from the caller's buffer (the lines
//! of one `write()` to the mount), not copied first: every message reads back whole, before
//! and after a recovery that checks each batch's CRC, however the messages lie (a line begun
//! by an earlier write, gaps between lines, more pieces than one `pwritev` takes), when the
//! kernel writes less than asked, and when the write fails (nothing of it is stored). Every
//! test holds a `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

use std::sync::Arc;

use commitfs::store::{NewMessage, Partition, Store, StoreConfig, TopicSettings};
use fail::FailScenario;

mod fixtures;

const LINE_BYTES: usize = 100;

/// Batches of up to 1,000 messages (segments do not cut them short) in 256 KiB files.
fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 256 * 1024,
        segment_messages: 1000,
        ..fixtures::small_store_config()
    }
}

fn topic(partitions: u32) -> TopicSettings {
    fixtures::lines_topic(partitions)
}

/// `count` distinct 100-byte lines, numbered from `first`, back to back.
fn lines(first: usize, count: usize) -> Vec<u8> {
    (first..first + count)
        .flat_map(|n| format!("{n:>width$}\n", width = LINE_BYTES - 1).into_bytes())
        .collect()
}

fn unkeyed(bytes: &[u8]) -> Vec<NewMessage<'_>> {
    bytes
        .chunks(LINE_BYTES)
        .map(|payload| NewMessage {
            payload,
            key_len: None,
        })
        .collect()
}

fn partitions(store: &Store) -> Vec<Arc<Partition>> {
    store.topic("t").expect("topic").partitions()
}

/// Every message of `partition`, oldest first.
fn stored(store: &Store, partition: &Partition) -> Vec<Vec<u8>> {
    (partition.start_offset()..partition.end_offset())
        .map(|offset| store.read_message(partition, offset).expect("stored"))
        .collect()
}

/// What each partition holds, after a stop without a checkpoint or flush and the recovery
/// that follows (it scans every batch written since the store was opened, CRC included).
fn stored_after_a_crash(
    store: Arc<Store>,
    dir: &std::path::Path,
    config: StoreConfig,
) -> Vec<Vec<Vec<u8>>> {
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir, config).expect("recovery");
    partitions(&store)
        .iter()
        .map(|partition| stored(&store, partition))
        .collect()
}

fn payloads(messages: &[NewMessage<'_>]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.payload.to_vec()).collect()
}

/// Each partition holds `expected[p]`, now and after a crash and its recovery.
fn assert_stored_before_and_after_a_crash(
    store: Arc<Store>,
    dir: &std::path::Path,
    config: StoreConfig,
    expected: &[Vec<Vec<u8>>],
) {
    let now: Vec<Vec<Vec<u8>>> = partitions(&store)
        .iter()
        .map(|p| stored(&store, p))
        .collect();
    assert!(now == expected, "a message read back wrong");
    assert!(
        stored_after_a_crash(store, dir, config) == expected,
        "a message read back wrong after recovery"
    );
}

#[test]
fn lines_from_one_buffer_read_back_whole_around_a_held_line_and_a_gap() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    store.create_topic("t", topic(1)).unwrap();
    let partition = partitions(&store)[0].clone();

    // A line begun by an earlier write (held elsewhere), 30 lines of the buffer, one line
    // of the buffer left out, 29 more lines, and a line from somewhere else again.
    let buffer = lines(0, 60);
    let held = lines(1000, 1);
    let other = lines(2000, 1);
    let in_buffer = unkeyed(&buffer);
    let mut messages = vec![unkeyed(&held)[0]];
    messages.extend_from_slice(&in_buffer[..30]);
    messages.extend_from_slice(&in_buffer[31..]);
    messages.push(unkeyed(&other)[0]);

    store
        .append_batch_from(&partition, &messages, &buffer)
        .unwrap();
    assert_stored_before_and_after_a_crash(store, dir.path(), config(), &[payloads(&messages)]);
}

#[test]
fn an_append_of_more_pieces_than_one_pwritev_takes_is_written_whole() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // Files that hold the whole append: a roll would write the pieces out before.
    let config = StoreConfig {
        commit_log_file_bytes: 8 << 20,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", topic(600)).unwrap();
    let partitions = partitions(&store);

    // 25 lines of the buffer for each of 600 partitions: a header and a run of lines each,
    // 1,200 pieces.
    let buffer = lines(0, 25 * partitions.len());
    let messages = unkeyed(&buffer);
    let batches = one_batch_each(&partitions, &messages);
    store.append_to_partitions_from(&batches, &buffer).unwrap();

    let expected: Vec<Vec<Vec<u8>>> = messages.chunks(25).map(payloads).collect();
    assert_stored_before_and_after_a_crash(store, dir.path(), config, &expected);
}

#[test]
fn a_write_the_kernel_cuts_short_goes_on_where_it_stopped() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    store.create_topic("t", topic(3)).unwrap();
    let partitions = partitions(&store);

    let buffer = lines(0, 90);
    let messages = unkeyed(&buffer);
    let batches = one_batch_each(&partitions, &messages);
    // Every `pwritev` writes half of its first piece only.
    fail::cfg("mapped::pwritev-part", "return").unwrap();
    let appended = store.append_to_partitions_from(&batches, &buffer);
    fail::remove("mapped::pwritev-part");
    appended.unwrap();

    let expected: Vec<Vec<Vec<u8>>> = messages.chunks(30).map(payloads).collect();
    assert_stored_before_and_after_a_crash(store, dir.path(), config(), &expected);
}

/// A write of the log that fails (an I/O error, or one that stored half of the pieces
/// first: the first partition's whole batch among them) with runs of lines taken from the
/// buffer fails the append and fences the store; after a reopen the partitions hold what
/// came before, none of the failed lines, and the next append takes the next offset.
#[test]
fn a_failed_write_of_lines_from_the_buffer_stores_none_of_them() {
    for failure in ["1*return(eio@commitlog)", "1*return(short@commitlog)"] {
        let _scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config()).unwrap();
        store.create_topic("t", topic(3)).unwrap();
        let partitions = partitions(&store);
        let earlier = lines(0, 30);
        let earlier_messages = unkeyed(&earlier);
        let batches = one_batch_each(&partitions, &earlier_messages);
        store.append_to_partitions_from(&batches, &earlier).unwrap();

        let buffer = lines(30, 90);
        let messages = unkeyed(&buffer);
        fail::cfg("mapped::write_at", failure).unwrap();
        let refused =
            store.append_to_partitions_from(&one_batch_each(&partitions, &messages), &buffer);
        fail::remove("mapped::write_at");
        assert!(refused.is_err(), "{failure}: {refused:?}");
        let expected: Vec<Vec<Vec<u8>>> = earlier_messages.chunks(10).map(payloads).collect();
        assert_stored_before_and_after_a_crash(store, dir.path(), config(), &expected);

        let store = Store::open(dir.path(), config()).unwrap();
        let partitions = self::partitions(&store);
        let next = store
            .append_to_partitions_from(&one_batch_each(&partitions, &messages), &buffer)
            .unwrap();
        assert!(
            next.iter().all(|outcome| outcome.first_offset == 10),
            "{failure}: {next:?}"
        );
    }
}

/// `messages` split evenly over `partitions`, in order.
fn one_batch_each<'m>(
    partitions: &'m [Arc<Partition>],
    messages: &'m [NewMessage<'m>],
) -> Vec<(&'m Partition, &'m [NewMessage<'m>])> {
    let each = messages.len() / partitions.len();
    partitions
        .iter()
        .zip(messages.chunks(each))
        .map(|(partition, batch)| (&**partition, batch))
        .collect()
}
