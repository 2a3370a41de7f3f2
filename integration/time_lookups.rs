//! `user.time.<T>` (`Store::offset_for_time`) answers from one view of the partition: a
//! message appended while a search runs was not looked at, so it is never the answer. (The
//! mirror learns each message's timestamp this way; an answer past the search's end gave a
//! message a later timestamp than it has, and a restarted mirror then took Kafka's newest
//! message for another topic's.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use commitfs::store::{NewMessage, Store, StoreConfig};

mod fixtures;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_time_lookup_during_appends_never_answers_an_older_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 4 << 20,
        segment_messages: 100_000,
        index_entries: 100_000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
    let line = b"a message\n";
    let first = NewMessage {
        payload: line,
        key_len: None,
    };
    store.append_batch(&partition, &[first]).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, partition, done) = (store.clone(), partition.clone(), done.clone());
        std::thread::spawn(move || {
            let mut appended = 0;
            while !done.load(Ordering::Acquire) && appended < 200_000 {
                let message = NewMessage {
                    payload: line,
                    key_len: None,
                };
                store.append_batch(&partition, &[message]).unwrap();
                appended += 1;
            }
        })
    };
    // Every stored message is older than a minute from now, also those appended during a
    // lookup: no offset is the first at or after that time.
    let mut wrong = Vec::new();
    for _ in 0..20_000 {
        let later = now_ms() + 60_000;
        if let Some(offset) = store.offset_for_time(&partition, later).unwrap() {
            wrong.push(offset);
        }
    }
    done.store(true, Ordering::Release);
    writer.join().unwrap();
    assert!(
        wrong.is_empty(),
        "{} lookups of a time after every message answered an offset, first {:?}",
        wrong.len(),
        wrong.first()
    );
    store.close().unwrap();
}
