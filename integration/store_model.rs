//! Model-based property test of the storage engine: random appends (keyed and not, single
//! and batched) across topics and partitions, clean reopens, crashes and retention, with the
//! store compared against an in-memory model after every step.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use commitfs::store::{FlushPolicy, NewMessage, Store, StoreConfig};
use proptest::prelude::*;

mod fixtures;

const TOPICS: usize = 3;
const PARTITIONS: usize = 3;
const KEYS: u8 = 5;
const SEGMENT_MESSAGES: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Append {
        topic: usize,
        partition: usize,
        key: Option<u8>,
        len: usize,
    },
    Batch {
        topic: usize,
        partition: usize,
        keys: Vec<Option<u8>>,
    },
    Reopen,
    Crash,
    Retention {
        topic: usize,
        bytes: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop::option::of(0..KEYS);
    prop_oneof![
        8 => (0..TOPICS, 0..PARTITIONS, key.clone(), 0usize..40)
            .prop_map(|(topic, partition, key, len)| Op::Append { topic, partition, key, len }),
        3 => (0..TOPICS, 0..PARTITIONS, prop::collection::vec(key, 1..12))
            .prop_map(|(topic, partition, keys)| Op::Batch { topic, partition, keys }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => (0..TOPICS, 1u64..300).prop_map(|(topic, bytes)| Op::Retention { topic, bytes }),
    ]
}

fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 8 * 1024,
        segment_messages: SEGMENT_MESSAGES as u32,
        max_message_bytes: 1024,
        flush: FlushPolicy::Async { interval_ms: 1000 },
        checkpoint_interval_ms: 3_600_000,
        retention_check_interval_ms: 3_600_000,
        max_disk_bytes: None,
        index_slots: 7,
        index_entries: 50,
        materialize_segments: false,
        ..StoreConfig::default()
    }
}

#[derive(Default, Clone)]
struct PartitionModel {
    messages: Vec<(Vec<u8>, Option<u8>)>,
    start: usize,
}

struct Model {
    partitions: Vec<Vec<PartitionModel>>,
    retention_bytes: Vec<Option<u64>>,
    counter: usize,
}

impl Model {
    fn payload(&mut self, key: Option<u8>, len: usize) -> Vec<u8> {
        self.counter += 1;
        let body = format!("{}#{}", self.counter, "m".repeat(len));
        match key {
            Some(k) => format!("k{k}:{body}\n").into_bytes(),
            None => format!("{body}\n").into_bytes(),
        }
    }
}

fn key_len(key: Option<u8>) -> Option<usize> {
    key.map(|k| format!("k{k}").len())
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, config()).expect("open")
}

fn topic_name(topic: usize) -> String {
    format!("topic-{topic}")
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for (t, partitions) in model.partitions.iter().enumerate() {
        let topic = store.topic(&topic_name(t)).expect("topic");
        for (p, expected) in partitions.iter().enumerate() {
            let partition = topic.partition(p as u32).expect("partition");
            prop_assert_eq!(partition.end_offset(), expected.messages.len() as u64);
            prop_assert_eq!(
                partition.start_offset(),
                expected.start as u64,
                "start of topic {} partition {}",
                t,
                p
            );
            let mut bytes = Vec::new();
            for segment in partition.segments().expect("segments") {
                let reader = store
                    .open_segment(&partition, segment.base_offset)
                    .expect("segment");
                let mut buf = vec![0u8; segment.bytes as usize];
                prop_assert_eq!(reader.read_at(0, &mut buf).expect("read"), buf.len());
                bytes.extend_from_slice(&buf);
            }
            let want: Vec<u8> = expected.messages[expected.start..]
                .iter()
                .flat_map(|(m, _)| m.clone())
                .collect();
            prop_assert_eq!(bytes, want);
        }
        for key in 0..KEYS {
            let mut found = Vec::new();
            store
                .for_each_key_match(&topic, None, format!("k{key}").as_bytes(), |m| {
                    found.push((
                        m.partition as usize,
                        m.offset as usize,
                        m.payload().unwrap().to_vec(),
                    ));
                    ControlFlow::Continue(())
                })
                .expect("lookup");
            // Newest first by store order: messages appended later come first.
            let mut expected: Vec<(usize, usize, Vec<u8>, usize)> = Vec::new();
            for (p, partition) in partitions.iter().enumerate() {
                for (offset, (payload, k)) in
                    partition.messages.iter().enumerate().skip(partition.start)
                {
                    if *k == Some(key) {
                        let order: usize = String::from_utf8_lossy(payload)
                            .split(':')
                            .nth(1)
                            .and_then(|b| b.split('#').next())
                            .and_then(|n| n.parse().ok())
                            .expect("counter in payload");
                        expected.push((p, offset, payload.clone(), order));
                    }
                }
            }
            expected.sort_by_key(|e| std::cmp::Reverse(e.3));
            let expected: Vec<_> = expected.into_iter().map(|(p, o, m, _)| (p, o, m)).collect();
            prop_assert_eq!(found, expected, "key k{}", key);
        }
    }
    Ok(())
}

fn apply_retention_bytes(partition: &mut PartitionModel, limit: u64) {
    let len = partition.messages.len();
    let size = |from: usize, to: usize| {
        partition.messages[from..to]
            .iter()
            .map(|(m, _)| m.len() as u64)
            .sum::<u64>()
    };
    let mut total = size(partition.start, len);
    let segment = SEGMENT_MESSAGES as usize;
    while partition.start + segment <= len {
        let oldest = size(partition.start, partition.start + segment);
        if total - oldest < limit {
            break;
        }
        total -= oldest;
        partition.start += segment;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_store_matches_a_model_after_every_step(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model = Model {
            partitions: vec![vec![PartitionModel::default(); PARTITIONS]; TOPICS],
            retention_bytes: vec![None; TOPICS],
            counter: 0,
        };
        for t in 0..TOPICS {
            let settings = fixtures::keyed_topic(PARTITIONS as u32);
            store.create_topic(&topic_name(t), settings).unwrap();
        }
        for op in ops {
            match op {
                Op::Append { topic, partition, key, len } => {
                    let payload = model.payload(key, len);
                    let target = store.topic(&topic_name(topic)).unwrap().partition(partition as u32).unwrap();
                    let outcome = store.append(&target, &payload, key_len(key)).unwrap();
                    let messages = &mut model.partitions[topic][partition].messages;
                    prop_assert_eq!(outcome.first_offset, messages.len() as u64);
                    messages.push((payload, key));
                }
                Op::Batch { topic, partition, keys } => {
                    let payloads: Vec<Vec<u8>> = keys.iter().map(|&k| model.payload(k, 3)).collect();
                    let batch: Vec<NewMessage> = payloads
                        .iter()
                        .zip(&keys)
                        .map(|(p, &k)| NewMessage { payload: p, key_len: key_len(k) })
                        .collect();
                    let target = store.topic(&topic_name(topic)).unwrap().partition(partition as u32).unwrap();
                    store.append_batch(&target, &batch).unwrap();
                    model.partitions[topic][partition].messages.extend(payloads.into_iter().zip(keys));
                }
                Op::Reopen => {
                    store.close().unwrap();
                    drop(store);
                    store = open(dir.path());
                }
                Op::Crash => {
                    store.halt_without_cleanup();
                    drop(store);
                    store = open(dir.path());
                }
                Op::Retention { topic, bytes } => {
                    let handle = store.topic(&topic_name(topic)).unwrap();
                    let mut settings = handle.settings();
                    settings.retention_bytes = Some(bytes);
                    store.update_topic(&handle, settings).unwrap();
                    store.enforce_retention().unwrap();
                    model.retention_bytes[topic] = Some(bytes);
                    // Kafka's rule, for every topic with a limit: drop the oldest sealed
                    // segment while what remains is still at least the limit.
                    for (partitions, limit) in model.partitions.iter_mut().zip(&model.retention_bytes) {
                        let Some(limit) = *limit else { continue };
                        for partition in partitions {
                            apply_retention_bytes(partition, limit);
                        }
                    }
                }
            }
            check(&store, &model)?;
        }
    }
}
