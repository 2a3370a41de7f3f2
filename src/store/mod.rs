//! The storage engine: one memory-mapped commit log shared by every topic, a consume queue
//! per partition, an on-disk hash index of keys, recovery and retention. Nothing here knows
//! about FUSE; the mount is a thin layer over [`Store`].

mod append;
pub mod check;
mod checkpoint;
mod commitlog;
pub mod consumers;
pub mod dump;
mod error;
#[cfg(feature = "failpoints")]
pub mod faults;
mod format;
mod index;
mod maintenance;
mod mapped;
mod materialize;
mod meta;
mod open_files;
mod partition;
pub mod progress;
mod queue;
mod queue_writer;
mod recovery;
mod released;
mod reserve;
mod retention;
mod routing;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use error::{Result, StoreError};
use partition::PartitionOffsets;
pub use partition::{MessageLocation, Partition, SegmentInfo, SegmentReader, Topic};

use append::{AppendTo, Fence, Scratch};
use commitlog::CommitLog;
use index::KeyIndex;
use meta::{Layout, Meta, TopicRecord};

/// Store-wide settings. The layout-defining ones (`commit_log_file_bytes`,
/// `segment_messages`, `index_slots`, `index_entries`) are fixed when the store is created;
/// different values later are ignored with a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub commit_log_file_bytes: u64,
    pub segment_messages: u32,
    pub max_message_bytes: usize,
    pub flush: FlushPolicy,
    pub checkpoint_interval_ms: u64,
    pub retention_check_interval_ms: u64,
    pub max_disk_bytes: Option<u64>,
    pub index_slots: u32,
    pub index_entries: u32,
    /// A background thread copies each sealed segment to a file of its own, which readers
    /// are then served from (see `materialize`).
    pub materialize_segments: bool,
    /// At most this many consume-queue, key-index and commit-log files are kept open (each
    /// costs a descriptor and a map); the least recently used are closed as others open.
    /// Readers holding a file and the files being written come on top.
    pub max_open_files: usize,
}

/// Bounds of `max_open_files`.
pub const MIN_OPEN_FILES: u32 = 16;
pub const MAX_OPEN_FILES: u32 = 1 << 20;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            // Two files exist from the start (the one written and the next, made ahead): an
            // empty store then takes about 150 MB, index included.
            commit_log_file_bytes: 64 << 20,
            segment_messages: 300_000,
            max_message_bytes: 1 << 20,
            flush: FlushPolicy::Async { interval_ms: 500 },
            checkpoint_interval_ms: 10_000,
            retention_check_interval_ms: 10_000,
            max_disk_bytes: None,
            index_slots: 5_000_000,
            index_entries: 20_000_000,
            materialize_segments: true,
            // Enough for 10,000 busy partitions without closing any; lowered at open to
            // what `ulimit -n` (raised to its hard limit first) and `vm.max_map_count`
            // allow: Debian's 1024 descriptors give 896.
            max_open_files: 32_768,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// A background thread writes the log back every `interval_ms`.
    Async { interval_ms: u64 },
    /// Every append returns after a flush that covers it (group commit).
    Sync,
}

/// How the bytes written to a topic become messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Every `\n`-terminated line is one message.
    Lines,
    /// Every `write(2)` is one message.
    Raw,
}

impl std::fmt::Display for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Framing::Lines => "lines",
            Framing::Raw => "raw",
        })
    }
}

impl std::str::FromStr for Framing {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Framing> {
        match text {
            "lines" => Ok(Framing::Lines),
            "raw" => Ok(Framing::Raw),
            other => Err(StoreError::InvalidSetting(format!(
                "framing {other:?} is not \"lines\" or \"raw\""
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub framing: Framing,
    pub key_separator: Option<Vec<u8>>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Permission bits of the topic directory.
    pub mode: u32,
}

/// One message to append: its bytes, and how many leading bytes are its key.
#[derive(Clone, Copy, Debug)]
pub struct NewMessage<'a> {
    pub payload: &'a [u8],
    pub key_len: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_offset: u64,
    pub count: u64,
    pub timestamp: i64,
}

/// A message found by its key.
pub struct KeyMatch<'a> {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    /// Grows in the order messages were stored, across partitions.
    pub store_order: (u64, u32),
    record: &'a commitlog::RecordRef,
    owner: &'a Partition,
}

impl KeyMatch<'_> {
    /// The message's bytes, checked against its CRC32C (from the commit log, or from its
    /// segment's own file).
    pub fn payload(&self) -> Result<Vec<u8>> {
        self.owner.payload_of(self.record)
    }
}

/// Appends per topic, for the metrics: one count per run of batches of the same topic (a
/// write through `append` reaches thousands of partitions of one topic).
fn count_appended(batches: &[(&Partition, &[NewMessage<'_>])]) {
    let mut batches = batches.iter().peekable();
    while let Some((partition, messages)) = batches.next() {
        let (mut count, mut bytes) = (0, 0);
        let mut add = |messages: &[NewMessage<'_>]| {
            count += messages.len() as u64;
            bytes += messages.iter().map(|m| m.payload.len() as u64).sum::<u64>();
        };
        add(messages);
        while let Some((_, more)) = batches.next_if(|(next, _)| next.topic_id == partition.topic_id)
        {
            add(more);
        }
        crate::metrics::appended(&partition.topic_name, count, bytes);
    }
}

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 100_000;

pub fn validate_topic_name(name: &str) -> Result<()> {
    let valid = (1..=249).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidTopicName(name.to_owned()))
    }
}

fn validate_settings(settings: &TopicSettings) -> Result<()> {
    if settings.partitions == 0 || settings.partitions > MAX_PARTITIONS {
        return Err(StoreError::InvalidSetting(format!(
            "partitions must be 1 to {MAX_PARTITIONS}, not {}",
            settings.partitions
        )));
    }
    if settings
        .key_separator
        .as_ref()
        .is_some_and(|s| s.is_empty())
    {
        return Err(StoreError::InvalidSetting(
            "key_separator cannot be empty".into(),
        ));
    }
    Ok(())
}

/// Kafka's murmur2 (32-bit MurmurHash2, seed 0x9747b28c), as its Java client computes it for
/// choosing a key's partition.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes(block.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Starts a background thread of the store. A panic on it fences the store: whatever it
/// was writing (files made ahead, queue or index entries, a checkpoint, a copied segment's
/// given-back blocks) may be half done, and a store that went on taking writes over that
/// could lose or mix what it acknowledged; a remount recovers from what is on disk.
fn spawn_background(
    name: &'static str,
    fence: Arc<Fence>,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _fence = fence.on_unwind("on a background thread of the store");
            body();
        })
}

/// Waits for a background thread of the store to end, unless this is that thread: it may
/// drop the last handle to the store, and so stop itself.
fn join_background(thread: Option<std::thread::JoinHandle<()>>) {
    if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
        let _ = thread.join();
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    layout: Layout,
    log: Arc<CommitLog>,
    index: KeyIndex,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    meta: Mutex<Meta>,
    /// Room for topic changes on a full disk.
    reserve: reserve::Reserve,
    /// Appends hold it shared; a checkpoint takes it exclusively for an instant, to see the
    /// log, the queues and the index at one consistent point.
    quiesce: RwLock<()>,
    closed: AtomicBool,
    /// Set by a panic in the write path or on a background thread: no more writes until the
    /// store is reopened. Shared with those threads.
    fence: Arc<Fence>,
    maintenance: maintenance::Handle,
    /// The thread that writes consume-queue entries waiting in memory into their files.
    queue_writer: Arc<queue_writer::QueueWriter>,
    /// The thread that copies sealed segments to files of their own.
    materializer: materialize::Handle,
    /// One pass of copying sealed segments at a time.
    materializing: Mutex<()>,
    /// One checkpoint at a time.
    checkpoint_lock: Mutex<()>,
    /// Held (flock) while the store is open, so two processes never share it.
    lock: Mutex<Option<File>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from an unclean stop if needed, and
    /// starts its background flush, checkpoint and retention thread.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Arc<Store>> {
        recovery::open(dir, config)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in force (layout values as persisted when the store was created).
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    pub fn create_topic(&self, name: &str, settings: TopicSettings) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        validate_settings(&settings)?;
        self.check_writable()?;
        let mut meta = self.meta.lock();
        if self.topics.read().contains_key(name) {
            return Err(StoreError::TopicExists(name.to_owned()));
        }
        let id = meta.take_topic_id(&self.dir)?;
        let record = TopicRecord::new(name, id, now_ms(), &settings);
        let topic = Arc::new(self.build_topic(&record, &HashMap::new())?);
        // A topic is created by its file; a new one takes no reserve (it would not free space).
        if let Err(error) = meta::save_topic(&self.dir, &record, None) {
            topic.retire();
            let _ = std::fs::remove_dir_all(&topic.queue_dir);
            return Err(error);
        }
        meta.topics.push(record);
        self.topics.write().insert(name.to_owned(), topic.clone());
        tracing::info!(
            "created topic {name} (id {id}, {} partitions)",
            settings.partitions
        );
        Ok(topic)
    }

    /// The in-memory topic for `record`, its partitions at the offsets recovery found.
    fn build_topic(
        &self,
        record: &TopicRecord,
        marks: &HashMap<(u32, u32), PartitionOffsets>,
    ) -> Result<Topic> {
        let topic = Topic {
            name: record.name.clone(),
            id: record.id,
            created_ms: record.created_ms,
            settings: RwLock::new(record.settings()),
            partitions: RwLock::new(Arc::new(Vec::new())),
            deleted: Arc::new(AtomicBool::new(false)),
            next_keyless: AtomicU32::new(0),
            queue_dir: recovery::queue_dir(&self.dir, record.id),
            segment_dir: materialize::topic_dir(&self.dir, record.id),
        };
        self.add_partitions(&topic, record.partitions, marks)?;
        Ok(topic)
    }

    /// Grows `topic` to `count` partitions; `marks` gives recovered offsets.
    fn add_partitions(
        &self,
        topic: &Topic,
        count: u32,
        marks: &HashMap<(u32, u32), PartitionOffsets>,
    ) -> Result<()> {
        let mut table = topic.partitions.write();
        let mut partitions = table.to_vec();
        let added = (partitions.len() as u32..count).try_for_each(|index| {
            let queue = queue::ConsumeQueue::open(
                &topic.queue_dir.join(index.to_string()),
                u64::from(self.layout.segment_messages),
                self.log.open_files().clone(),
            )?;
            let offsets = marks.get(&(topic.id, index)).copied().unwrap_or_default();
            let partition = Partition::new(topic, index, self.log.clone(), queue, offsets)?;
            partition.check_segment_files()?;
            // The file the next append goes to, made off the write path.
            let base = partition.queue.segment_base(offsets.end);
            if partition.queue.file_bases().last() != Some(&base) {
                partition.prepare_queue_file(base);
            }
            partitions.push(Arc::new(partition));
            Ok(())
        });
        // Those made before a failure stay, as they would have one by one.
        *table = Arc::new(partitions);
        added
    }

    /// Deletes a topic and all its messages. Its commit-log records go when retention
    /// removes their files.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        let mut meta = self.meta.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| StoreError::NoSuchTopic(name.to_owned()))?;
        let _quiet = self.quiesce.write();
        let position = meta
            .topics
            .iter()
            .position(|t| t.id == topic.id)
            .expect("topic in metadata");
        meta::remove_topic_file(&self.dir, topic.id)?;
        meta.topics.remove(position);
        topic.retire();
        self.topics.write().remove(name);
        for dir in [&topic.queue_dir, &topic.segment_dir] {
            match std::fs::remove_dir_all(dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("removing {}: {error}", dir.display());
                }
                _ => {}
            }
        }
        tracing::info!("deleted topic {name} (id {})", topic.id);
        Ok(())
    }

    /// Changes a topic's settings; partitions only grow. Persisted before it returns.
    pub fn update_topic(&self, topic: &Topic, settings: TopicSettings) -> Result<()> {
        validate_settings(&settings)?;
        self.check_writable()?;
        let mut meta = self.meta.lock();
        if topic.is_deleted() {
            return Err(StoreError::NoSuchTopic(topic.name.clone()));
        }
        let old = topic.settings();
        if settings.partitions < old.partitions {
            return Err(StoreError::InvalidSetting(format!(
                "topic {} has {} partitions; partitions only grow",
                topic.name, old.partitions
            )));
        }
        let position = meta
            .topics
            .iter()
            .position(|t| t.id == topic.id)
            .expect("topic in metadata");
        let record = TopicRecord::new(&topic.name, topic.id, topic.created_ms, &settings);
        // Lowering retention is how a full disk is cleared: the reserve is there for it.
        meta::save_topic(&self.dir, &record, Some(&self.reserve))?;
        meta.topics[position] = record;
        self.add_partitions(topic, settings.partitions, &HashMap::new())?;
        *topic.settings.write() = settings;
        Ok(())
    }

    pub fn append(
        &self,
        partition: &Partition,
        payload: &[u8],
        key_len: Option<usize>,
    ) -> Result<AppendOutcome> {
        self.append_batch(partition, &[NewMessage { payload, key_len }])
    }

    /// Appends messages to one partition, in order, with consecutive offsets: all of them
    /// or, on error, none.
    pub fn append_batch(
        &self,
        partition: &Partition,
        messages: &[NewMessage<'_>],
    ) -> Result<AppendOutcome> {
        self.append_batch_from(partition, messages, &[])
    }

    /// [`append_batch`](Self::append_batch) of messages read from `buffer` (most of them, in
    /// order, as the lines of one `write()`): runs of them that lie back to back there are
    /// written to the log from it, without a copy.
    pub fn append_batch_from(
        &self,
        partition: &Partition,
        messages: &[NewMessage<'_>],
        buffer: &[u8],
    ) -> Result<AppendOutcome> {
        let outcome = self.appending(|to| {
            Scratch::with(messages.len(), |scratch| {
                partition.append(to, messages, buffer, scratch)
            })
        })?;
        count_appended(&[(partition, messages)]);
        Ok(outcome)
    }

    /// Appends a batch to each of several partitions as one: all of them or, on error, none
    /// (one `write()` to a topic's `append` file whose lines go to several partitions). A
    /// partition may appear once. Outcomes come in the order of `batches`.
    pub fn append_to_partitions(
        &self,
        batches: &[(&Partition, &[NewMessage<'_>])],
    ) -> Result<Vec<AppendOutcome>> {
        self.append_to_partitions_from(batches, &[])
    }

    /// [`append_to_partitions`](Self::append_to_partitions) of messages read from `buffer`,
    /// as [`append_batch_from`](Self::append_batch_from) takes them.
    pub fn append_to_partitions_from(
        &self,
        batches: &[(&Partition, &[NewMessage<'_>])],
        buffer: &[u8],
    ) -> Result<Vec<AppendOutcome>> {
        let outcomes = self.appending(|to| append::append_together(to, batches, buffer))?;
        count_appended(batches);
        Ok(outcomes)
    }

    /// Sends each message to the partition of `topic` its key picks (keyless ones in turn)
    /// and appends every partition's messages as one append, taking them from `buffer` as
    /// [`append_batch_from`](Self::append_batch_from) does (one `write()` to the topic's
    /// `append` file): all of them or, on error, none. Outcomes come in partition order.
    pub fn append_by_key(
        &self,
        topic: &Topic,
        messages: &[NewMessage<'_>],
        buffer: &[u8],
    ) -> Result<Vec<AppendOutcome>> {
        // Refused before any keyless message takes its turn: a write refused as too long
        // leaves the round-robin where it was, as if it never happened.
        append::check_messages(messages, self.config.max_message_bytes)?;
        let table = topic.partition_table();
        let routed = routing::route(topic, &table, messages);
        self.append_to_partitions_from(&routed.batches(), buffer)
    }

    /// Runs an append with what it needs of the store, then (with `flush = "sync"`) waits
    /// for a flush that covers it.
    fn appending<T>(&self, append: impl FnOnce(&AppendTo<'_>) -> Result<T>) -> Result<T> {
        let outcome = {
            let _quiet = self.quiesce.read();
            self.check_writable()?;
            append(&AppendTo {
                log: &self.log,
                index: &self.index,
                queue_writer: &self.queue_writer,
                fence: &self.fence,
                max_message_bytes: self.config.max_message_bytes,
            })?
        };
        if self.config.flush == FlushPolicy::Sync {
            self.sync()?;
        }
        Ok(outcome)
    }

    /// Appends and changes of metadata are refused once the store is closed or fenced.
    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.fence.check()
    }

    /// Everything appended before the call is durable when it returns.
    /// A failure fences the store (see [`append::Fence::after_failed_flush`]).
    pub fn sync(&self) -> Result<()> {
        self.log
            .flush()
            .inspect_err(|error| self.fence.after_failed_flush(error))
    }

    pub fn open_segment(
        &self,
        partition: &Arc<Partition>,
        base_offset: u64,
    ) -> Result<SegmentReader> {
        partition.open_segment(base_offset)
    }

    pub fn locate(&self, partition: &Partition, offset: u64) -> Result<MessageLocation> {
        partition.locate(offset)
    }

    pub fn offset_for_time(&self, partition: &Partition, timestamp_ms: i64) -> Result<Option<u64>> {
        partition.offset_for_time(timestamp_ms)
    }

    pub fn read_message(&self, partition: &Partition, offset: u64) -> Result<Vec<u8>> {
        partition.read_message(offset)
    }

    /// Calls `f` for every stored message of `topic` (of one partition, if given) whose key
    /// is `key`, newest first, until it breaks (messages appended at the same moment to
    /// different partitions may come in either order; `store_order` tells). Candidates from
    /// the index are checked against the stored key bytes, so a hash collision never matches.
    pub fn for_each_key_match(
        &self,
        topic: &Topic,
        partition: Option<u32>,
        key: &[u8],
        mut f: impl FnMut(&KeyMatch<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        let hash = format::key_hash(topic.id, key);
        // The index gives candidates newest first; only the stored key bytes decide. A
        // candidate whose record cannot be read might be the answer: that is an error.
        let mut damage = None;
        self.index.lookup(hash, |at| {
            let Some(record) = self.log.message_at(at) else {
                let stored = (self.log.min_offset()..self.log.written_end()).contains(&at.batch);
                if !stored {
                    // Removed with its commit-log file.
                    return ControlFlow::Continue(());
                }
                damage = Some(StoreError::Corrupt {
                    path: self.log.path_of(at.batch),
                    offset: at.batch % self.log.file_bytes(),
                    reason: format!(
                        "the key index of topic {} points at message {} of a batch here, where no valid batch holds one",
                        topic.name, at.index
                    ),
                });
                return ControlFlow::Break(());
            };
            let header = record.header;
            let owner = topic
                .partition(header.partition)
                .filter(|owner| {
                    header.topic_id == topic.id
                        && partition.is_none_or(|p| p == header.partition)
                        && header.key_len == Some(key.len() as u32)
                        && (owner.start_offset()..owner.end_offset()).contains(&header.offset)
                });
            let Some(owner) = owner else {
                return ControlFlow::Continue(());
            };
            // The key's bytes may live only in the segment's own file (see `released`).
            match owner.key_of(&record) {
                Ok(stored) if stored.as_deref() == Some(key) => {}
                Ok(_) => return ControlFlow::Continue(()),
                Err(error) => {
                    damage = Some(error);
                    return ControlFlow::Break(());
                }
            }
            f(&KeyMatch {
                partition: header.partition,
                offset: header.offset,
                timestamp: header.timestamp,
                store_order: (at.batch, at.index),
                record: &record,
                owner: &owner,
            })
        });
        damage.map_or(Ok(()), Err)
    }

    /// Bytes the store occupies on disk (segments' own files included), counting commit-log
    /// files that retention removed while an open reader still maps them.
    pub fn disk_usage(&self) -> u64 {
        let queues: u64 = self
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.queue.disk_bytes() + p.segment_files.disk_bytes())
            .sum();
        self.log.disk_bytes() + queues + self.index.disk_bytes()
    }

    /// Stops cleanly: flushes everything, writes a checkpoint and removes the abort marker,
    /// so the next open need not scan the log. Idempotent.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Tests make a close slow here, to send a second signal in the middle of one.
        fail::fail_point!("store::close");
        self.materializer.stop();
        self.maintenance.stop();
        self.queue_writer.stop();
        self.index.stop_indexing();
        let _quiet = self.quiesce.write();
        self.log.stop();
        drop(_quiet);
        if self.fence.is_set() {
            // The log may hold a record its partition does not count: no checkpoint may
            // vouch for this state. The abort marker stays, so the next open recovers.
            let flushed = self.log.flush();
            tracing::error!(
                "store at {} closed without a checkpoint after an internal error in the write path; the next open recovers",
                self.dir.display()
            );
            self.lock.lock().take();
            flushed?;
            return Err(StoreError::Fenced);
        }
        self.checkpoint()?;
        if let Err(error) = self.meta.lock().give_back_unused_ids(&self.dir) {
            tracing::warn!("keeping the rest of the block of topic ids: {error}");
        }
        meta::remove_abort_marker(&self.dir)?;
        // Said before the lock goes: whoever waits for the lock finds the line written.
        tracing::info!("store at {} closed cleanly", self.dir.display());
        self.lock.lock().take();
        Ok(())
    }

    /// Stops the way a killed process does: no flush, no checkpoint, the abort marker left
    /// behind; what was stored into the mapped files stays in the page cache. The next open
    /// recovers. For crash tests and tools that must not write anything more.
    pub fn halt_without_cleanup(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.materializer.stop();
        self.maintenance.stop();
        self.queue_writer.stop();
        self.index.stop_indexing();
        let _quiet = self.quiesce.write();
        self.log.stop();
        self.lock.lock().take();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!("closing the store at {}: {error}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_vectors() {
        let vectors: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (key, expected) in vectors {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["orders", "a", "A.b_c-9", &"x".repeat(249)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "has space", "slash/", &"x".repeat(250), "é"] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(StoreError::InvalidTopicName(_))
                ),
                "{bad}"
            );
        }
    }
}
