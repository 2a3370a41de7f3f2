//! The newest consume-queue entries of a partition wait in memory for their file when an
//! append brings it only a few messages (issue 7: at 10,000 partitions, storing each entry
//! through its own file's map was more than half of the writer's time). Readers find them
//! there, checkpoints and closes write them out, a crash loses none of their messages, and
//! the budget of open files may close their file meanwhile.

use std::path::Path;
use std::sync::Arc;

use commitfs::store::{NewMessage, Partition, Store, StoreConfig, Topic};

mod fixtures;

fn config(max_open_files: usize) -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 1 << 20,
        // Short segments: entries wait in memory across many segment rolls.
        segment_messages: 16,
        index_slots: 1024,
        index_entries: 100_000,
        max_open_files,
        ..fixtures::small_store_config()
    }
}

fn topic(store: &Store, partitions: u32) -> Arc<Topic> {
    store
        .create_topic("t", fixtures::keyed_topic(partitions))
        .unwrap()
}

fn line(partition: u32, offset: u64) -> String {
    format!("p{partition}-m{offset}\n")
}

/// Appends one message at a time to each partition in turn, `rounds` times.
fn append_round_robin(store: &Store, topic: &Topic, rounds: u64) {
    let partitions = topic.partitions();
    for _ in 0..rounds {
        for partition in &partitions {
            let text = line(partition.index(), partition.end_offset());
            let message = NewMessage {
                payload: text.as_bytes(),
                key_len: None,
            };
            store.append_batch(partition, &[message]).unwrap();
        }
    }
}

/// Every message of `partition`, read by offset, by segment and as its stream.
fn assert_all_readable(store: &Store, partition: &Arc<Partition>) {
    let end = partition.end_offset();
    let mut expected = String::new();
    for offset in 0..end {
        let want = line(partition.index(), offset);
        let got = store.read_message(partition, offset).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want, "offset {offset}");
        expected.push_str(&want);
    }
    let mut stream = vec![0; expected.len() + 10];
    let mut read = 0;
    while read < stream.len() {
        let n = partition
            .read_stream(read as u64, &mut stream[read..])
            .unwrap();
        if n == 0 {
            break;
        }
        read += n;
    }
    assert_eq!(String::from_utf8_lossy(&stream[..read]), expected);
    for base in partition.segment_bases().collect::<Vec<_>>() {
        let segment = partition.open_segment(base).unwrap();
        let mut bytes = vec![0; 4096];
        let n = segment.read_at(0, &mut bytes).unwrap();
        let want: String = (base..end.min(base + 16))
            .map(|o| line(partition.index(), o))
            .collect();
        assert_eq!(String::from_utf8_lossy(&bytes[..n]), want, "segment {base}");
    }
}

#[test]
fn readers_find_every_message_while_single_message_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(32_768)).unwrap();
    let topic = topic(&store, 8);
    fixtures::readers_check_while(&store, &topic, line, || {
        append_round_robin(&store, &topic, 400)
    });
    for partition in topic.partitions() {
        assert_eq!(partition.end_offset(), 400);
        assert_all_readable(&store, &partition);
    }
    store.close().unwrap();
}

/// Opens the store in `dir` again with `config`, asserts that every partition of `t` holds
/// `end` messages, all readable, and closes it.
fn reopen_and_read_all(dir: &Path, config: StoreConfig, end: u64) {
    let store = Store::open(dir, config).unwrap();
    for partition in store.topic("t").unwrap().partitions() {
        assert_eq!(partition.end_offset(), end);
        assert_all_readable(&store, &partition);
    }
    store.close().unwrap();
}

#[test]
fn a_checkpoint_and_a_clean_close_write_waiting_entries_to_their_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config(32_768)).unwrap();
        let topic = topic(&store, 20);
        // 21 messages each: the last five of each partition wait in memory.
        append_round_robin(&store, &topic, 21);
        store.checkpoint().unwrap();
        append_round_robin(&store, &topic, 2);
        store.close().unwrap();
    }
    // A clean close leaves nothing to scan: the entries come from the files.
    reopen_and_read_all(dir.path(), config(32_768), 23);
    assert_queue_files_hold_entries(dir.path(), 20, 23);
}

/// The consume-queue files on disk hold an entry (a non-zero size) for every message.
fn assert_queue_files_hold_entries(dir: &Path, partitions: u32, end: u64) {
    let topic_dir = std::fs::read_dir(dir.join("queues"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for partition in 0..partitions {
        for offset in 0..end {
            let base = offset - offset % 16;
            let file = topic_dir
                .join(partition.to_string())
                .join(format!("{base:020}"));
            let bytes = std::fs::read(&file).unwrap();
            let at = ((offset - base) * 20) as usize;
            let size = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(
                size as usize,
                line(partition, offset).len(),
                "entry {offset} in {}",
                file.display()
            );
        }
    }
}

#[test]
fn a_crash_with_entries_waiting_in_memory_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config(32_768)).unwrap();
        let topic = topic(&store, 20);
        append_round_robin(&store, &topic, 10);
        store.checkpoint().unwrap();
        append_round_robin(&store, &topic, 13);
        store.halt_without_cleanup();
    }
    reopen_and_read_all(dir.path(), config(32_768), 23);
}

#[test]
fn waiting_entries_reach_a_file_the_budget_of_open_files_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        // 200 partitions' queue files in a budget of 16: each is closed again long before
        // its waiting entries are written out.
        let store = Store::open(dir.path(), config(16)).unwrap();
        let topic = topic(&store, 200);
        append_round_robin(&store, &topic, 40);
        for partition in topic.partitions() {
            assert_all_readable(&store, &partition);
        }
        store.close().unwrap();
    }
    reopen_and_read_all(dir.path(), config(16), 40);
}
