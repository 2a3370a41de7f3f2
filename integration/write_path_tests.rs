//! The write path in-process (issue 9, items 4 and 12): key-index entries are never lost,
//! however appends interleave and however often index files fill up, and an append to several
//! partitions is stored whole or not at all; an append by key sends each message where a
//! Kafka producer would.

use std::collections::HashMap;
use std::sync::Arc;

use commitfs::store::{
    murmur2, NewMessage, Partition, Store, StoreConfig, StoreError, Topic, TopicSettings,
};

mod fixtures;

fn config() -> StoreConfig {
    StoreConfig {
        segment_messages: 50,
        index_slots: 16,
        ..fixtures::small_store_config()
    }
}

fn settings(partitions: u32) -> TopicSettings {
    fixtures::keyed_topic(partitions)
}

const WRITERS: usize = 8;
const MESSAGES_PER_WRITER: usize = 600;

/// Appends `MESSAGES_PER_WRITER` messages with keys of their own, in batches of 1 to 4, to
/// partition `writer % partitions`; returns where each went, by key.
fn write_keyed(store: &Store, topic: &Topic, writer: usize) -> Vec<(String, u32, u64, String)> {
    let partition = topic
        .partition(writer as u32 % topic.settings().partitions)
        .unwrap();
    let mut stored = Vec::new();
    let mut i = 0;
    while i < MESSAGES_PER_WRITER {
        let size = (1 + (writer + i) % 4).min(MESSAGES_PER_WRITER - i);
        let lines: Vec<String> = (i..i + size)
            .map(|n| format!("w{writer}-{n}:message {n} of writer {writer}\n"))
            .collect();
        let batch = fixtures::keyed_messages(&lines);
        let first = store.append_batch(&partition, &batch).unwrap().first_offset;
        for (j, line) in lines.into_iter().enumerate() {
            let key = line.split(':').next().unwrap().to_owned();
            stored.push((key, partition.index(), first + j as u64, line));
        }
        i += size;
    }
    stored
}

/// Every key whose message is still stored is found, once, at its partition and offset.
fn assert_every_stored_key_is_found(store: &Store, stored: &[(String, u32, u64, String)]) {
    let topic = store.topic("t").unwrap();
    let starts: HashMap<u32, u64> = topic
        .partitions()
        .iter()
        .map(|p| (p.index(), p.start_offset()))
        .collect();
    let mut checked = 0;
    for (key, partition, offset, line) in stored {
        if *offset < starts[partition] {
            continue;
        }
        assert_eq!(
            fixtures::key_matches(store, &topic, key),
            [(*partition, *offset, line.clone())],
            "key {key}"
        );
        checked += 1;
    }
    assert!(checked > 0, "retention left nothing to check");
}

#[test]
fn concurrent_keyed_appends_keep_every_key_although_index_files_fill_up_all_the_time() {
    let dir = tempfile::tempdir().unwrap();
    // Seven entries per index file: the index rolls every few appends, hundreds of times.
    let config = StoreConfig {
        index_entries: 8,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", settings(4)).unwrap();
    let stored: Vec<_> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, topic) = (&store, &topic);
                scope.spawn(move || write_keyed(store, topic, writer))
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(stored.len(), WRITERS * MESSAGES_PER_WRITER);
    assert_every_stored_key_is_found(&store, &stored);

    // Retention removes old commit-log files and the index files wholly below them; an index
    // file that still holds an entry of a kept message must stay.
    let mut limited = topic.settings();
    limited.retention_bytes = Some(20_000);
    store.update_topic(&topic, limited).unwrap();
    store.enforce_retention().unwrap();
    assert!(
        topic.partitions().iter().all(|p| p.start_offset() > 0),
        "retention removed old segments"
    );
    assert_every_stored_key_is_found(&store, &stored);

    // And so after a reopen, clean or recovering.
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config.clone()).unwrap();
    assert_every_stored_key_is_found(&store, &stored);
    store.halt_without_cleanup();
    drop(store);
    let store = Store::open(dir.path(), config).unwrap();
    assert_every_stored_key_is_found(&store, &stored);
}

#[test]
fn an_oversize_message_for_one_partition_refuses_the_whole_append_to_several() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", settings(3)).unwrap();
    let p: Vec<Arc<Partition>> = topic.partitions();
    let too_long = format!("b:{}\n", "x".repeat(5000));
    let refused = fixtures::append_to_partitions(
        &store,
        &[
            (p[2].clone(), vec!["c:1\n".into()]),
            (p[0].clone(), vec!["a:PARTIAL\n".into()]),
            (p[1].clone(), vec!["b:fits\n".into(), too_long]),
        ],
    );
    assert!(
        matches!(refused, Err(StoreError::MessageTooLarge { .. })),
        "{refused:?}"
    );
    assert!(p.iter().all(|p| p.end_offset() == 0));
    assert_eq!(fixtures::key_matches(&store, &topic, "a"), []);

    // Batches in any order of partitions; outcomes in the order given.
    let offsets = fixtures::append_to_partitions(
        &store,
        &[
            (p[2].clone(), vec!["c:1\n".into(), "c:2\n".into()]),
            (p[0].clone(), vec!["a:WHOLE\n".into()]),
        ],
    )
    .unwrap();
    assert_eq!(offsets, [0, 0]);
    assert_eq!(
        fixtures::key_matches(&store, &topic, "c"),
        [(2, 1, "c:2\n".into()), (2, 0, "c:1\n".into())]
    );
    assert_eq!(
        fixtures::key_matches(&store, &topic, "a"),
        [(0, 0, "a:WHOLE\n".into())]
    );
    let next = fixtures::append_to_partitions(
        &store,
        &[
            (p[2].clone(), vec!["c:3\n".into()]),
            (p[0].clone(), vec!["a:2\n".into()]),
        ],
    )
    .unwrap();
    assert_eq!(
        next,
        [2, 1],
        "first offsets in the order the batches were given"
    );

    // One partition named twice would wait for its own lock: refused, nothing stored.
    let twice = fixtures::append_to_partitions(
        &store,
        &[
            (p[1].clone(), vec!["b:1\n".into()]),
            (p[1].clone(), vec!["b:2\n".into()]),
        ],
    );
    assert!(
        matches!(twice, Err(StoreError::InvalidSetting(_))),
        "{twice:?}"
    );
    assert_eq!(p[1].end_offset(), 0);
}

#[test]
fn an_append_by_key_sends_keyed_messages_where_their_key_hashes_and_keyless_ones_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", settings(3)).unwrap();
    // One write's lines: keyed ones over 7 keys, every third line without a key.
    let lines: Vec<String> = (0..90)
        .map(|n| match n % 3 {
            0 => format!("no key {n}\n"),
            _ => format!("k{}:line {n}\n", n % 7),
        })
        .collect();
    let buffer = lines.concat();
    let mut messages = Vec::new();
    let mut at = 0;
    for line in &lines {
        let payload = &buffer.as_bytes()[at..at + line.len()];
        let key_len = payload.iter().position(|&b| b == b':');
        messages.push(NewMessage { payload, key_len });
        at += line.len();
    }

    let outcomes = store
        .append_by_key(&topic, &messages, buffer.as_bytes())
        .unwrap();

    // Kafka's rule for keys; keyless lines take the partitions in turn, from the first.
    let mut expected: Vec<Vec<&str>> = vec![Vec::new(); 3];
    let mut keyless = 0;
    for line in &lines {
        let partition = match line.split_once(':') {
            Some((key, _)) => (murmur2(key.as_bytes()) & 0x7fff_ffff) % 3,
            None => {
                keyless += 1;
                (keyless - 1) % 3
            }
        };
        expected[partition as usize].push(line);
    }
    let reached = expected.iter().filter(|lines| !lines.is_empty()).count();
    assert_eq!(outcomes.len(), reached, "one outcome per partition reached");
    for (partition, lines) in topic.partitions().iter().zip(&expected) {
        assert_eq!(partition.end_offset(), lines.len() as u64);
        for (offset, line) in lines.iter().enumerate() {
            let stored = store.read_message(partition, offset as u64).unwrap();
            assert_eq!(stored, line.as_bytes(), "offset {offset}");
        }
    }
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k3").len(),
        lines.iter().filter(|l| l.starts_with("k3:")).count(),
        "every keyed line is found by its key"
    );
}

#[test]
fn an_append_by_key_refused_as_too_long_leaves_the_keyless_turn_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", settings(3)).unwrap();
    let keyless = |lines: &[String]| {
        let messages = fixtures::unkeyed_messages(lines);
        store.append_by_key(&topic, &messages, &[])
    };
    keyless(&["first\n".into()]).unwrap();
    let refused = keyless(&["fits\n".into(), format!("{}\n", "x".repeat(5000))]);
    assert!(
        matches!(refused, Err(StoreError::MessageTooLarge { .. })),
        "{refused:?}"
    );
    keyless(&["second\n".into()]).unwrap();

    let ends: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
    assert_eq!(ends, [1, 1, 0], "the refused write took no turn");
    let second = store.read_message(&topic.partitions()[1], 0).unwrap();
    assert_eq!(second, b"second\n");
}
