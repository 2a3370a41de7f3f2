//! Failure tested like success: power loss (what was made durable survives, nothing else is
//! trusted) and io errors injected at every step of append, roll, checkpoint, retention and
//! recovery through the file layer's failpoints (README "Testing").
//!
//! Failpoints are process-global, so every test here holds `FailScenario::setup()`, which
//! also runs the tests of this binary one at a time.
#![cfg(feature = "failpoints")]

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use commitfs::store::faults::record_durability;
use commitfs::store::{
    FlushPolicy, NewMessage, Store, StoreConfig, StoreError, Topic, TopicSettings,
};
use fail::FailScenario;

mod fixtures;

use fixtures::power_loss::{crash_copy, Fill, PowerLoss};

const PARTITIONS: u32 = 3;
const NEVER: u64 = 3_600_000;

/// Small files, so that appends roll commit-log files, segments and index chunks; no
/// background flush or checkpoint unless a test asks for one.
fn config(flush: FlushPolicy) -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 8192,
        segment_messages: 10,
        max_message_bytes: 2048,
        flush,
        checkpoint_interval_ms: NEVER,
        retention_check_interval_ms: NEVER,
        max_disk_bytes: None,
        // Header and slot table fill the first page, entries start on the second: a power loss
        // can keep one and lose the other.
        index_slots: 1000,
        index_entries: 64,
        materialize_segments: false,
        ..StoreConfig::default()
    }
}

const ASYNC: FlushPolicy = FlushPolicy::Async { interval_ms: NEVER };

fn settings() -> TopicSettings {
    fixtures::keyed_topic(PARTITIONS)
}

/// Message `i`: keyed by `i % 5`, of varying length.
fn message(i: usize) -> Vec<u8> {
    format!("k{}:message {i} {}\n", i % 5, "x".repeat(i * 37 % 300)).into_bytes()
}

/// The `i` of `message(i)`.
fn number(message: &[u8]) -> usize {
    let text = String::from_utf8_lossy(message);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn key_of(message: &[u8]) -> String {
    String::from_utf8_lossy(message)
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}

/// What a test appended and was told was stored.
#[derive(Clone, Default)]
struct Acknowledged {
    /// Per partition, in offset order.
    partitions: Vec<Vec<Vec<u8>>>,
    /// (partition, offset) of each, in the order they were appended.
    order: Vec<(usize, usize)>,
}

impl Acknowledged {
    fn new() -> Acknowledged {
        Acknowledged {
            partitions: vec![Vec::new(); PARTITIONS as usize],
            order: Vec::new(),
        }
    }

    fn counts(&self) -> Vec<usize> {
        self.partitions.iter().map(Vec::len).collect()
    }

    fn push(&mut self, partition: usize, message: Vec<u8>) {
        self.order
            .push((partition, self.partitions[partition].len()));
        self.partitions[partition].push(message);
    }
}

/// Appends messages `from..to` to topic `t`, one or two per batch, recording each
/// acknowledged one. Returns the first error.
fn append(
    store: &Store,
    acked: &mut Acknowledged,
    range: std::ops::Range<usize>,
) -> Result<(), StoreError> {
    let topic = store.topic("t").unwrap();
    let mut i = range.start;
    while i < range.end {
        let batch: Vec<Vec<u8>> = (i..(i + 1 + i % 2).min(range.end)).map(message).collect();
        let index = (i % PARTITIONS as usize) as u32;
        let partition = topic.partition(index).unwrap();
        let messages: Vec<NewMessage<'_>> = batch
            .iter()
            .map(|m| NewMessage {
                payload: m,
                key_len: Some(m.iter().position(|&b| b == b':').unwrap()),
            })
            .collect();
        store.append_batch(&partition, &messages)?;
        for message in batch.iter() {
            acked.push(index as usize, message.clone());
        }
        i += batch.len();
    }
    Ok(())
}

/// Every message the store serves, per partition, read both one by one and as segment
/// bytes (which must agree).
fn served(store: &Store, topic: &Topic) -> Vec<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    for partition in topic.partitions() {
        assert_eq!(partition.start_offset(), 0, "nothing was removed");
        let messages: Vec<Vec<u8>> = (0..partition.end_offset())
            .map(|offset| store.read_message(&partition, offset).expect("read"))
            .collect();
        let mut segments = Vec::new();
        for segment in partition.segments().expect("segments") {
            let reader = store.open_segment(&partition, segment.base_offset).unwrap();
            let mut bytes = vec![0u8; segment.bytes as usize];
            assert_eq!(reader.read_at(0, &mut bytes).unwrap(), bytes.len());
            segments.extend_from_slice(&bytes);
        }
        assert_eq!(
            segments,
            messages.concat(),
            "segment bytes and messages agree"
        );
        all.push(messages);
    }
    all
}

/// The newest message of each key the store finds.
fn newest_by_key(store: &Store, topic: &Topic) -> HashMap<String, usize> {
    let mut found = HashMap::new();
    for key in 0..5 {
        let key = format!("k{key}");
        store
            .for_each_key_match(topic, None, key.as_bytes(), |m| {
                found.insert(key.clone(), number(&m.payload().unwrap()));
                ControlFlow::Break(())
            })
            .unwrap();
    }
    found
}

/// The store holds, per partition, a prefix of what was appended there that is at least as
/// long as `at_least` says, each message whole and in order, and key lookups answer with
/// the newest of those. Returns the prefix lengths.
fn assert_holds_a_prefix(store: &Store, appended: &Acknowledged, at_least: &[usize]) -> Vec<usize> {
    let topic = store.topic("t").expect("topic survives");
    let served = served(store, &topic);
    for (index, messages) in served.iter().enumerate() {
        let expected = &appended.partitions[index];
        assert!(
            messages.len() >= at_least[index] && messages.len() <= expected.len(),
            "partition {index}: {} messages served, {} durable, {} appended",
            messages.len(),
            at_least[index],
            expected.len()
        );
        assert!(
            messages[..] == expected[..messages.len()],
            "partition {index}: what is served is not what was appended"
        );
    }
    // Messages of one key are spread over partitions: the newest is the one appended last.
    let mut newest_expected = HashMap::new();
    for &(index, position) in &appended.order {
        if position < served[index].len() {
            let message = &appended.partitions[index][position];
            newest_expected.insert(key_of(message), number(message));
        }
    }
    assert_eq!(newest_by_key(store, &topic), newest_expected, "key lookups");
    served.iter().map(Vec::len).collect()
}

const POWER_LOSSES: [PowerLoss; 8] = {
    let fills = [
        Fill::Zeros,
        Fill::Garbage,
        Fill::PartlyWrittenBack { phase: 0 },
        Fill::PartlyWrittenBack { phase: 1 },
    ];
    let mut all = [PowerLoss::NAMES_LOST; 8];
    let mut i = 0;
    while i < 8 {
        all[i] = PowerLoss {
            fill: fills[i % 4],
            unsynced_names_survive: i >= 4,
        };
        i += 1;
    }
    all
};

/// A store opened on a crash copy of a data directory.
struct AfterPowerLoss {
    copy: tempfile::TempDir,
    store: Arc<Store>,
    /// Messages held per partition.
    held: Vec<usize>,
}

/// Opens a crash copy of `dir` and checks it holds a prefix of `appended`, at least
/// `at_least` long per partition.
fn reopen_after_power_loss(
    dir: &Path,
    loss: PowerLoss,
    config: StoreConfig,
    appended: &Acknowledged,
    at_least: &[usize],
) -> AfterPowerLoss {
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir, copy.path(), loss);
    let store = Store::open(copy.path(), config)
        .unwrap_or_else(|e| panic!("opening after a power loss ({loss:?}): {e}"));
    let held = assert_holds_a_prefix(&store, appended, at_least);
    AfterPowerLoss { copy, store, held }
}

fn new_store(dir: &Path, flush: FlushPolicy) -> Arc<Store> {
    let store = Store::open(dir, config(flush)).unwrap();
    store.create_topic("t", settings()).unwrap();
    store
}

#[test]
fn with_sync_flush_every_acknowledged_append_survives_a_power_loss() {
    let _scenario = FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), FlushPolicy::Sync);
    let mut acked = Acknowledged::new();
    let mut appended = 0;
    // Crash points after a few appends, across segment and commit-log file rolls.
    for crash_after in [1, 8, 40, 90] {
        append(&store, &mut acked, appended..crash_after).unwrap();
        appended = crash_after;
        for loss in POWER_LOSSES {
            let config = config(FlushPolicy::Sync);
            reopen_after_power_loss(dir.path(), loss, config, &acked, &acked.counts());
        }
    }
}

/// A store that keeps few files open, holding 300 messages whose commit-log and
/// consume-queue files the budget has mostly closed, none of them flushed yet.
fn store_with_closed_unflushed_files(dir: &Path) -> Arc<Store> {
    let config = StoreConfig {
        max_open_files: 16,
        ..config(FlushPolicy::Async { interval_ms: NEVER })
    };
    let store = Store::open(dir, config).unwrap();
    store.create_topic("t", settings()).unwrap();
    append(&store, &mut Acknowledged::new(), 0..300).unwrap();
    store
}

#[test]
fn a_flush_that_cannot_reach_a_closed_commit_log_file_fails_and_fences() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_closed_unflushed_files(dir.path());
    fail::cfg("mapped::open", "return(eio@/commitlog/)").unwrap();
    let flushed = store.sync();
    fail::remove("mapped::open");
    assert!(flushed.is_err(), "fsync reported success: {flushed:?}");
    // As after any failed flush: no more writes until a remount recovers.
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    let refused = store.append(&partition, b"late\n", None);
    assert!(refused.is_err(), "{refused:?}");
}

#[test]
fn a_checkpoint_that_cannot_reach_a_closed_queue_file_fails() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_closed_unflushed_files(dir.path());
    fail::cfg("mapped::open", "return(eio@/queues/)").unwrap();
    let checkpoint = store.checkpoint();
    fail::remove("mapped::open");
    assert!(
        checkpoint.is_err(),
        "the checkpoint vouched for queue entries it did not flush"
    );
    store.checkpoint().unwrap();
}

#[test]
fn a_consumer_position_survives_a_power_loss_once_set() {
    let _scenario = FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), FlushPolicy::Sync);
    let mut acked = Acknowledged::new();
    append(&store, &mut acked, 0..30).unwrap();
    let partition = store.topic("t").unwrap().partition(1).unwrap();
    for (group, position) in [("g", 4), ("h", 9), ("g", 6)] {
        partition.set_consumer_position(group, position).unwrap();
    }
    assert!(partition.forget_consumer_position("h").unwrap());
    for loss in POWER_LOSSES {
        let after = reopen_after_power_loss(
            dir.path(),
            loss,
            config(FlushPolicy::Sync),
            &acked,
            &acked.counts(),
        );
        let partition = after.store.topic("t").unwrap().partition(1).unwrap();
        assert_eq!(
            partition.consumer_position("g").unwrap(),
            Some(6),
            "{loss:?}"
        );
        assert_eq!(partition.consumer_position("h").unwrap(), None, "{loss:?}");
    }
}

#[test]
fn with_async_flush_what_was_synced_survives_and_what_is_lost_is_a_whole_tail() {
    let _scenario = FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), ASYNC);
    let mut appended = Acknowledged::new();
    let mut synced = vec![0; PARTITIONS as usize];
    let mut next = 0;
    for (sync_after, then_append) in [(5, 3), (30, 25), (60, 40)] {
        append(&store, &mut appended, next..sync_after).unwrap();
        store.sync().unwrap();
        synced = appended.counts();
        append(&store, &mut appended, sync_after..sync_after + then_append).unwrap();
        next = sync_after + then_append;
        for loss in POWER_LOSSES {
            reopen_after_power_loss(dir.path(), loss, config(ASYNC), &appended, &synced);
        }
    }
    assert!(synced.iter().all(|&n| n > 0));
}

#[test]
fn a_checkpoint_vouches_only_for_what_is_durable() {
    let _scenario = FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), ASYNC);
    let mut appended = Acknowledged::new();
    append(&store, &mut appended, 0..50).unwrap();
    // A checkpoint is written while appends go on: everything appended before it began is
    // durable, and what it records (log end, partition ends, index size) holds after a crash.
    let before_checkpoint = appended.counts();
    let appender = {
        let store = store.clone();
        let mut more = appended.clone();
        std::thread::spawn(move || {
            append(&store, &mut more, 50..120).unwrap();
            more
        })
    };
    store.checkpoint().unwrap();
    let appended = appender.join().unwrap();
    for loss in POWER_LOSSES {
        let first = reopen_after_power_loss(
            dir.path(),
            loss,
            config(ASYNC),
            &appended,
            &before_checkpoint,
        );
        // Recovery's own checkpoint vouches only for what it made durable: a second power
        // loss right after reopening keeps the same messages.
        first.store.halt_without_cleanup();
        let second = reopen_after_power_loss(
            first.copy.path(),
            loss,
            config(ASYNC),
            &appended,
            &first.held,
        );
        assert_eq!(second.held, first.held);
    }
}

/// Message `i` again, the same length but other bytes.
fn rewritten(i: usize) -> Vec<u8> {
    String::from_utf8(message(i))
        .unwrap()
        .replace('x', "y")
        .into_bytes()
}

#[test]
fn a_tail_recovery_cut_stays_cut_after_a_second_power_loss() {
    let _scenario = FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 64 * 1024,
        ..config(ASYNC)
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    store.create_topic("t", settings()).unwrap();
    let mut appended = Acknowledged::new();
    append(&store, &mut appended, 0..20).unwrap();
    store.sync().unwrap();
    append(&store, &mut appended, 20..120).unwrap();
    let sync = StoreConfig {
        flush: FlushPolicy::Sync,
        ..config
    };
    let mut resurrections_possible = 0;
    for phase in [0, 1] {
        let loss = PowerLoss {
            fill: Fill::PartlyWrittenBack { phase },
            unsynced_names_survive: false,
        };
        let first = reopen_after_power_loss(dir.path(), loss, sync.clone(), &appended, &[0; 3]);
        let lost: Vec<(usize, usize)> = (appended.order.iter())
            .filter(|&&(partition, position)| position >= first.held[partition])
            .copied()
            .collect();
        first.store.close().unwrap();
        // Whatever was lost is appended again, the same lengths with other bytes, so that a
        // record boundary of the new log meets one of the old, stale tail: an old record the
        // recovery cut off must not come back after a second power loss.
        for again in 1..lost.len().min(10) {
            let retry = tempfile::tempdir().unwrap();
            crash_copy(first.copy.path(), retry.path(), PowerLoss::NAMES_LOST);
            let store = Store::open(retry.path(), sync.clone()).unwrap();
            let topic = store.topic("t").unwrap();
            let mut expected = Acknowledged::new();
            for &(partition, position) in &appended.order {
                if position < first.held[partition] {
                    expected.push(partition, appended.partitions[partition][position].clone());
                }
            }
            for &(partition, position) in &lost[..again] {
                let i = number(&appended.partitions[partition][position]);
                let payload = rewritten(i);
                let owner = topic.partition(partition as u32).unwrap();
                store
                    .append(
                        &owner,
                        &payload,
                        Some(payload.iter().position(|&b| b == b':').unwrap()),
                    )
                    .unwrap();
                expected.push(partition, payload);
            }
            store.halt_without_cleanup();
            let second = reopen_after_power_loss(
                retry.path(),
                PowerLoss::NAMES_LOST,
                sync.clone(),
                &expected,
                &expected.counts(),
            );
            assert_eq!(
                second.held,
                expected.counts(),
                "phase {phase}, {again} appended again"
            );
            resurrections_possible += 1;
        }
    }
    assert!(resurrections_possible > 0);
}

#[test]
fn a_key_is_found_although_every_key_hash_collides() {
    let _scenario = FailScenario::setup();
    fail::cfg("format::key_hash", "return").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(ASYNC)).unwrap();
    let topic = store.create_topic("t", settings()).unwrap();
    let (zero, one) = (topic.partition(0).unwrap(), topic.partition(1).unwrap());
    store.append(&zero, b"a:first\n", Some(1)).unwrap();
    store.append(&one, b"b:second\n", Some(1)).unwrap();
    store.append(&zero, b"ab:third\n", Some(2)).unwrap();
    let newest = |key: &[u8], partition: Option<u32>| {
        let mut found = None;
        store
            .for_each_key_match(&topic, partition, key, |m| {
                found = Some(m.payload().unwrap().to_vec());
                ControlFlow::Break(())
            })
            .unwrap();
        found
    };
    assert_eq!(newest(b"a", None).as_deref(), Some(&b"a:first\n"[..]));
    assert_eq!(newest(b"b", None).as_deref(), Some(&b"b:second\n"[..]));
    assert_eq!(newest(b"b", Some(0)), None);
    assert_eq!(newest(b"c", None), None);
}

/// How a store is reopened after a failure.
#[derive(Clone, Copy, Debug)]
enum Reopen {
    Clean,
    AfterAKill,
}

fn reopen(store: Arc<Store>, how: Reopen, config: StoreConfig) -> Arc<Store> {
    let dir = store.dir().to_owned();
    match how {
        Reopen::Clean => store.close().unwrap(),
        Reopen::AfterAKill => store.halt_without_cleanup(),
    }
    drop(store);
    Store::open(&dir, config).unwrap()
}

/// The store serves exactly what was acknowledged: each message once, whole, in order.
fn assert_serves_exactly(store: &Store, acked: &Acknowledged) {
    assert_eq!(
        assert_holds_a_prefix(store, acked, &acked.counts()),
        acked.counts()
    );
}

/// An injected error is the one asked for: ENOSPC is a full disk, EIO an io error.
fn assert_injected(error: &StoreError, arg: &str) {
    let arg = arg.split('@').next().unwrap();
    match arg {
        "enospc" | "short" => assert!(matches!(error, StoreError::DiskFull(_)), "{arg}: {error:?}"),
        _ => assert!(matches!(error, StoreError::Io { .. }), "{arg}: {error:?}"),
    }
    assert!(error.to_string().contains("(injected)"), "{error}");
}

/// Appends one message at a time from `next` until one fails (returned) or `until`.
fn append_until_a_failure(
    store: &Store,
    acked: &mut Acknowledged,
    next: &mut usize,
    until: usize,
) -> Option<StoreError> {
    while *next < until {
        let result = append(store, acked, *next..*next + 1);
        *next += 1;
        if let Err(error) = result {
            return Some(error);
        }
    }
    None
}

/// Injects an error into the `skip`th next call of each file-layer step an append takes
/// (queue and index growth, new queue, index and commit-log files: segment and file rolls)
/// and checks the failed append stored nothing, reads go on, and after the failure is
/// removed — and after a reopen, clean or after a kill — every acknowledged message is
/// there exactly once and nothing else.
#[test]
fn a_failed_append_stores_nothing_and_the_store_recovers_from_it() {
    let _scenario = FailScenario::setup();
    let mut hit = HashMap::new();
    // `ERROR@TEXT` fails only files whose path holds TEXT.
    for (failpoint, arg) in [
        ("mapped::allocate", "enospc@/queues/"),
        ("mapped::allocate", "short@/queues/"),
        ("mapped::allocate", "eio@/queues/"),
        ("mapped::create", "enospc@/queues/"),
        ("mapped::create", "eio@/queues/"),
        ("mapped::create", "enospc@/index/"),
        ("mapped::create", "eio@/index/"),
        ("mapped::create", "enospc@/commitlog/"),
        ("mapped::create", "eio@/commitlog/"),
        // The new commit-log file's name cannot be made durable.
        ("meta::sync_dir", "eio@/commitlog"),
    ] {
        for (skip, how) in [
            (0, Reopen::Clean),
            (1, Reopen::AfterAKill),
            (4, Reopen::Clean),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = new_store(dir.path(), ASYNC);
            let mut acked = Acknowledged::new();
            append(&store, &mut acked, 0..25).unwrap();
            fail::cfg(failpoint, &format!("{skip}*off->return({arg})")).unwrap();
            let mut next = 25;
            let failed = append_until_a_failure(&store, &mut acked, &mut next, 400);
            let Some(error) = failed else {
                fail::remove(failpoint);
                continue;
            };
            let text = error.to_string();
            let step = ["/commitlog", "/queues/", "/index/"]
                .into_iter()
                .find(|kind| text.contains(kind))
                .unwrap_or_else(|| panic!("an error of no file: {text}"));
            *hit.entry((failpoint, step)).or_insert(0) += 1;
            assert_injected(&error, arg);
            assert_serves_exactly(&store, &acked);
            // Retried while still failing: still refused, still nothing stored.
            assert!(
                append(&store, &mut acked, next - 1..next).is_err(),
                "{failpoint}={arg}, skip {skip}: the failure went away"
            );
            fail::remove(failpoint);
            append(&store, &mut acked, next + 1..next + 60).unwrap();
            assert_serves_exactly(&store, &acked);
            store = reopen(store, how, config(ASYNC));
            assert_serves_exactly(&store, &acked);
            append(&store, &mut acked, next + 60..next + 70).unwrap();
            assert_serves_exactly(&store, &acked);
        }
    }
    // Queue growth, new queue files (segment rolls), index files, commit-log rolls and the
    // directory sync that makes a new commit-log file's name durable.
    assert_eq!(hit.len(), 5, "every step was reached: {hit:?}");
}

/// A checkpoint that fails at any step (flushing the log, the queues or the index, writing
/// or syncing the checkpoint file) is an error; appends and reads go on, and the store
/// reopens from the last good checkpoint with every acknowledged message.
#[test]
fn a_failed_checkpoint_is_an_error_and_the_last_good_one_still_recovers() {
    let _scenario = FailScenario::setup();
    for (failpoint, arg) in [
        ("mapped::flush", "eio@/commitlog/"),
        ("mapped::flush", "eio@/queues/"),
        ("mapped::flush", "enospc@/index/"),
        ("meta::write_atomically", "enospc"),
        ("meta::write_atomically", "short"),
        ("meta::write_atomically", "eio"),
        ("meta::sync_dir", "eio"),
    ] {
        for how in [Reopen::Clean, Reopen::AfterAKill] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = new_store(dir.path(), ASYNC);
            let mut acked = Acknowledged::new();
            append(&store, &mut acked, 0..30).unwrap();
            store.checkpoint().unwrap();
            append(&store, &mut acked, 30..60).unwrap();
            fail::cfg(failpoint, &format!("return({arg})")).unwrap();
            let error = store.checkpoint().unwrap_err();
            assert_injected(&error, arg);
            assert_serves_exactly(&store, &acked);
            fail::remove(failpoint);
            append(&store, &mut acked, 60..70).unwrap();
            store = reopen(store, how, config(ASYNC));
            assert_serves_exactly(&store, &acked);
        }
    }
}

/// Every message a store serves is the one acknowledged at its offset; partitions start at
/// a segment boundary (retention removes whole segments) if `whole_segments`. Returns how
/// many were removed.
fn assert_serves_a_suffix(store: &Store, acked: &Acknowledged, whole_segments: bool) -> u64 {
    let topic = store.topic("t").unwrap();
    let mut removed = 0;
    for partition in topic.partitions() {
        let expected = &acked.partitions[partition.index() as usize];
        let (start, end) = (partition.start_offset(), partition.end_offset());
        assert_eq!(end, expected.len() as u64);
        if whole_segments {
            assert_eq!(
                start % 10,
                0,
                "retention removes whole segments ({start}..{end})"
            );
        }
        for offset in start..end {
            let message = store.read_message(&partition, offset).unwrap();
            assert_eq!(message, expected[offset as usize], "offset {offset}");
        }
        removed += start;
    }
    removed
}

/// Retention that fails removing a queue, index or commit-log file, or writing the
/// checkpoint after, is an error and serves nothing wrong; a kill right after it, or a clean
/// stop once the failure is gone, reopens with partitions starting at segment boundaries, no
/// earlier than before. Only a kill after a failed checkpoint (a full disk, where retention
/// removes files without recording the new starts first) may bring back messages that are
/// still in the commit log: served whole and correct, and gone again at the next pass.
#[test]
fn a_failed_retention_is_an_error_and_serves_nothing_wrong() {
    let _scenario = FailScenario::setup();
    for (failpoint, arg, hows) in [
        (
            "mapped::remove",
            "eio@/queues/",
            &[Reopen::Clean, Reopen::AfterAKill][..],
        ),
        (
            "mapped::remove",
            "eio@/index/",
            &[Reopen::Clean, Reopen::AfterAKill],
        ),
        (
            "commitlog::remove",
            "eio",
            &[Reopen::Clean, Reopen::AfterAKill],
        ),
        (
            "meta::write_atomically",
            "enospc",
            &[Reopen::Clean, Reopen::AfterAKill],
        ),
    ] {
        for &how in hows {
            let dir = tempfile::tempdir().unwrap();
            let mut store = new_store(dir.path(), ASYNC);
            let topic = store.topic("t").unwrap();
            let mut acked = Acknowledged::new();
            append(&store, &mut acked, 0..300).unwrap();
            let limited = TopicSettings {
                retention_bytes: Some(2000),
                ..settings()
            };
            store.update_topic(&topic, limited).unwrap();
            fail::cfg(failpoint, &format!("return({arg})")).unwrap();
            let error = store.enforce_retention().unwrap_err();
            assert_injected(&error, arg);
            let removed = assert_serves_a_suffix(&store, &acked, true);
            fail::remove(failpoint);
            if let Reopen::Clean = how {
                store.enforce_retention().unwrap();
                append(&store, &mut acked, 300..310).unwrap();
            }
            store = reopen(store, how, config(ASYNC));
            let starts_unrecorded =
                failpoint == "meta::write_atomically" && matches!(how, Reopen::AfterAKill);
            let removed_after = assert_serves_a_suffix(&store, &acked, !starts_unrecorded);
            assert!(removed_after > 0, "{failpoint}={arg} {how:?}");
            if starts_unrecorded {
                store.enforce_retention().unwrap();
                let removed_again = assert_serves_a_suffix(&store, &acked, true);
                assert!(removed_again >= removed, "{failpoint}={arg} {how:?}");
            } else {
                assert!(removed_after >= removed, "{failpoint}={arg} {how:?}");
            }
        }
    }
}

/// Recovery that fails at any step (opening log files, rebuilding queue entries, growing
/// queue files, writing the checkpoint, the abort marker) fails the open; once the failure
/// is gone the store opens with every acknowledged message, once.
#[test]
fn a_failed_recovery_fails_the_open_and_the_next_open_recovers() {
    let _scenario = FailScenario::setup();
    // Lost consume queues make recovery rebuild them from the whole log.
    for (failpoint, arg, queues_lost) in [
        ("mapped::open", "eio@/commitlog/", false),
        ("mapped::create", "enospc@/queues/", true),
        ("mapped::create", "eio@/index/", true),
        ("mapped::allocate", "short@/queues/", true),
        ("mapped::flush", "eio@/commitlog/", false),
        ("mapped::flush", "eio@/queues/", true),
        ("meta::write_atomically", "eio", false),
        ("meta::sync_dir", "eio", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = new_store(dir.path(), ASYNC);
        let mut acked = Acknowledged::new();
        append(&store, &mut acked, 0..30).unwrap();
        store.checkpoint().unwrap();
        // After the checkpoint: new segments, so recovery creates and grows queue files.
        append(&store, &mut acked, 30..250).unwrap();
        store.halt_without_cleanup();
        drop(store);
        if queues_lost {
            std::fs::remove_dir_all(dir.path().join("queues")).unwrap();
        }
        fail::cfg(failpoint, &format!("return({arg})")).unwrap();
        let error = Store::open(dir.path(), config(ASYNC)).err();
        let error = error.unwrap_or_else(|| panic!("{failpoint}={arg}: the open succeeded"));
        assert_injected(&error, arg);
        fail::remove(failpoint);
        let store = Store::open(dir.path(), config(ASYNC)).unwrap();
        assert_serves_exactly(&store, &acked);
    }
}

/// With `flush = "sync"`, an append whose flush fails reports the error (EIO, or ENOSPC as a
/// full disk) and reads go on; once the failure is gone the next flush covers it, and a
/// reopen serves every acknowledged message once. The failed message itself was already in
/// the log when its flush failed: it may be served, whole, at its offset (its writer was told
/// the write failed, as `fsync` tells of an error without taking the write back).
#[test]
fn a_failed_sync_flush_is_reported_and_acknowledged_messages_stay_once() {
    let _scenario = FailScenario::setup();
    for arg in ["eio@/commitlog/", "enospc@/commitlog/"] {
        for how in [Reopen::Clean, Reopen::AfterAKill] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = new_store(dir.path(), FlushPolicy::Sync);
            let mut acked = Acknowledged::new();
            append(&store, &mut acked, 0..20).unwrap();
            fail::cfg("mapped::flush", &format!("return({arg})")).unwrap();
            let mut unacknowledged = acked.clone();
            let error = append(&store, &mut unacknowledged, 20..21).unwrap_err();
            assert_injected(&error, arg);
            unacknowledged.push(20 % PARTITIONS as usize, message(20));
            assert_holds_a_prefix(&store, &unacknowledged, &acked.counts());
            fail::remove("mapped::flush");
            // The failed flush fenced the store: a retried flush could report success for
            // pages the kernel no longer holds dirty, so only a remount writes again.
            let refused = append(&store, &mut unacknowledged.clone(), 21..22).unwrap_err();
            assert!(matches!(refused, StoreError::Fenced), "{refused}");
            if matches!(how, Reopen::Clean) {
                let closed = store.close();
                assert!(matches!(closed, Err(StoreError::Fenced)), "{closed:?}");
            }
            store = reopen(store, Reopen::AfterAKill, config(FlushPolicy::Sync));
            let held = assert_holds_a_prefix(&store, &unacknowledged, &acked.counts());
            assert!(held.iter().sum::<usize>() <= acked.order.len() + 1);
        }
    }
}

/// Data directories to damage: one stopped cleanly, one killed (so recovery scans).
fn damage_templates() -> &'static [(tempfile::TempDir, Acknowledged); 2] {
    static TEMPLATES: std::sync::OnceLock<[(tempfile::TempDir, Acknowledged); 2]> =
        std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| {
        [Reopen::Clean, Reopen::AfterAKill].map(|how| {
            let dir = tempfile::tempdir().unwrap();
            let store = new_store(dir.path(), ASYNC);
            let mut acked = Acknowledged::new();
            append(&store, &mut acked, 0..40).unwrap();
            store.checkpoint().unwrap();
            append(&store, &mut acked, 40..90).unwrap();
            match how {
                Reopen::Clean => store.close().unwrap(),
                Reopen::AfterAKill => store.halt_without_cleanup(),
            }
            (dir, acked)
        })
    })
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Damage to one file of a data directory: (which file, at which byte, what).
type FileDamage = (proptest::sample::Index, proptest::sample::Index, u8, bool);

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("COMMITFS_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..Default::default()
    })]

    /// A data directory with damaged bytes anywhere (log, queues, index, checkpoint,
    /// store.toml) opens or is refused, never panics, and never serves a message other than
    /// the one written at that offset.
    #[test]
    fn a_damaged_data_directory_opens_or_is_refused_and_serves_nothing_wrong(
        killed in proptest::bool::ANY,
        damages in proptest::collection::vec(
            proptest::prelude::any::<FileDamage>(), 1..6),
    ) {
        let _scenario = FailScenario::setup();
        let (template, acked) = &damage_templates()[usize::from(killed)];
        let dir = tempfile::tempdir().unwrap();
        for file in files_under(template.path()) {
            let target = dir.path().join(file.strip_prefix(template.path()).unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&file, target).unwrap();
        }
        let files = files_under(dir.path());
        for (file, at, byte, truncate) in damages {
            let path = file.get(&files);
            let mut bytes = std::fs::read(path).unwrap();
            if bytes.is_empty() {
                continue;
            }
            let at = at.index(bytes.len());
            if truncate {
                bytes.truncate(at);
            } else {
                bytes[at] ^= byte.max(1);
            }
            std::fs::write(path, bytes).unwrap();
        }
        let Ok(store) = Store::open(dir.path(), config(ASYNC)) else {
            return Ok(());
        };
        let Some(topic) = store.topic("t") else {
            return Ok(());
        };
        for partition in topic.partitions() {
            let expected = acked.partitions.get(partition.index() as usize);
            for offset in partition.start_offset()..partition.end_offset() {
                if let Ok(message) = store.read_message(&partition, offset) {
                    let written = expected.and_then(|e| e.get(offset as usize));
                    proptest::prop_assert_eq!(Some(&message), written, "offset {}", offset);
                }
            }
        }
        for key in ["k0", "k3"] {
            let looked_up = store.for_each_key_match(&topic, None, key.as_bytes(), |m| {
                if let Ok(payload) = m.payload() {
                    assert!(payload.starts_with(format!("{key}:").as_bytes()));
                }
                ControlFlow::Continue(())
            });
            // A lookup that reaches damage is refused (EIO at the mount), never answered
            // with another key's message.
            if let Err(error) = looked_up {
                proptest::prop_assert!(matches!(error, StoreError::Corrupt { .. }), "{}", error);
            }
        }
    }
}
