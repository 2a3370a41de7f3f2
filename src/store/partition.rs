//! Topics and partitions as readers see them: a partition is a sequence of segments of
//! `segment_messages` offsets each (one consume-queue file), and a segment's bytes are its
//! messages' payloads in offset order, gathered from the commit log.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use super::commitlog::{CommitLog, LogFile, Record, RecordRef};
use super::consumers::ConsumerPositions;
use super::error::{Result, StoreError};
use super::format::{self, BatchHeader, MessageAt, QueueEntry, RecordHeader, Scanned};
use super::materialize::SegmentFiles;
use super::queue::{ConsumeQueue, QueueFile, ReservedFiles};
use super::TopicSettings;

pub struct Topic {
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) created_ms: i64,
    pub(super) settings: RwLock<TopicSettings>,
    /// Replaced whole when partitions are added, so a writer takes the table with one
    /// reference count, not one per partition.
    pub(super) partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    pub(super) deleted: Arc<AtomicBool>,
    pub(super) next_keyless: AtomicU32,
    pub(super) queue_dir: PathBuf,
    /// Where its sealed segments' own files go (`segments/<topic id>`).
    pub(super) segment_dir: PathBuf,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Never reused, stable across restarts.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings.read().clone()
    }

    pub fn partition(&self, index: u32) -> Option<Arc<Partition>> {
        self.partitions.read().get(index as usize).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().to_vec()
    }

    /// Every partition, index by index, as of now.
    pub fn partition_table(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions.read().clone()
    }

    /// Marks the topic deleted and stops its consume-queue files being made ahead of need,
    /// before its directories are removed.
    pub(super) fn retire(&self) {
        self.deleted.store(true, Ordering::Release);
        for partition in self.partitions().iter() {
            partition.queue.retire();
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Kafka's Java-client choice for a keyed message, `(murmur2(key) & 0x7fffffff) % n`;
    /// keyless messages go to the partitions in turn.
    pub fn choose_partition(&self, key: Option<&[u8]>) -> u32 {
        let count = self.partitions.read().len() as u32;
        self.choose_partition_of(count, key)
    }

    /// [`choose_partition`](Self::choose_partition) among the first `count` partitions (the
    /// length of a [`partition_table`](Self::partition_table)).
    pub fn choose_partition_of(&self, count: u32, key: Option<&[u8]>) -> u32 {
        if count <= 1 {
            // One partition: no key to hash, no turn to take.
            return 0;
        }
        match key {
            Some(key) => (super::murmur2(key) & 0x7fff_ffff) % count,
            None => self.next_keyless.fetch_add(1, Ordering::Relaxed) % count,
        }
    }
}

/// The facts of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    pub messages: u64,
    pub bytes: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
    pub sealed: bool,
    /// The segment has a file of its own in the data directory, which readers are served from.
    pub materialized: bool,
}

impl SegmentInfo {
    /// The facts of a segment of `messages` messages, from the records of its first and last
    /// stored message (none when it is empty or they are no longer stored).
    fn describe(
        base_offset: u64,
        messages: u64,
        sealed: bool,
        materialized: bool,
        ends: Option<(RecordRef, RecordRef)>,
    ) -> SegmentInfo {
        let (head, tail) = ends.unzip();
        SegmentInfo {
            base_offset,
            messages,
            bytes: head.as_ref().zip(tail.as_ref()).map_or(0, |(head, tail)| {
                (tail.header.segment_position + tail.header.payload_len() as u64)
                    .saturating_sub(head.header.segment_position)
            }),
            first_timestamp: head.map(|r| r.header.timestamp),
            last_timestamp: tail.map(|r| r.header.timestamp),
            sealed,
            materialized,
        }
    }
}

/// Where a partition stands when it is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PartitionOffsets {
    pub start: u64,
    /// The offset the next message gets.
    pub end: u64,
    /// Consume-queue entries below this offset are on disk.
    pub durable: u64,
    /// The `stream`'s size at `end` as the checkpoint recorded it, when `end` is the
    /// checkpoint's: used when no stored message says it any more.
    pub stream_end: Option<u64>,
}

/// State only the partition's appender touches.
pub(super) struct WriteState {
    pub next: u64,
    /// Bytes of the active segment so far: the position of the next message in it.
    pub segment_bytes: u64,
    /// Bytes the partition ever stored: the position of the next message in its `stream`.
    pub stream_bytes: u64,
    pub last_timestamp: i64,
    /// The consume-queue file appends go to, while the store's budget of open files keeps
    /// it open (an append holds it; between appends, a store of many partitions must be
    /// able to close it).
    pub queue_file: Weak<QueueFile>,
    /// Offsets below this have room allocated in the active consume-queue file: entries
    /// that may wait in memory need no look at the file.
    pub queue_room_end: u64,
    /// How many entries before `next` waited in memory after this writer's last append (at
    /// most: the queue writer or a checkpoint may have written them out since).
    pub entries_waiting: u64,
}

pub struct Partition {
    pub(super) topic_id: u32,
    pub(super) topic_name: String,
    /// Shared with the topic: appends stop once it is deleted.
    pub(super) topic_deleted: Arc<AtomicBool>,
    pub(super) index: u32,
    pub(super) segment_messages: u64,
    pub(super) log: Arc<CommitLog>,
    pub(super) queue: ConsumeQueue,
    pub(super) writer: Mutex<WriteState>,
    /// Messages below this offset are completely stored: readers go no further.
    pub(super) end: AtomicU64,
    pub(super) start: AtomicU64,
    pub(super) last_timestamp: AtomicI64,
    /// Published with `end`: the size of the partition's `stream`.
    pub(super) stream_end: AtomicU64,
    /// Consume-queue entries below this offset are on disk.
    pub(super) flushed: AtomicU64,
    pub(super) consumers: ConsumerPositions,
    /// Its sealed segments that are files of their own.
    pub(super) segment_files: SegmentFiles,
}

impl Partition {
    /// Reserves consume-queue room for `[from, to)` (see [`ConsumeQueue::reserve`]); once
    /// the segment is half full, has the next segment's file made ahead of need.
    /// Returns the offset the active file has room up to.
    pub(super) fn reserve_queue(
        &self,
        reserved: &mut ReservedFiles,
        from: u64,
        to: u64,
    ) -> Result<u64> {
        let room_end = self.queue.reserve(reserved, from, to)?;
        if let Some(job) = reserved.populate_job() {
            self.log.prepare_later(job);
        }
        self.prepare_next_queue_file(from, to);
        Ok(room_end)
    }

    /// Has the next segment's consume-queue file made once `[from, to)` passes the middle
    /// of a segment.
    pub(super) fn prepare_next_queue_file(&self, from: u64, to: u64) {
        if let Some(next) = self.queue.next_to_prepare(from, to) {
            self.prepare_queue_file(next);
        }
    }

    /// Has the preparer thread make the consume-queue file of the segment at `base`, so the
    /// append that first needs it does not. Should that fail (a full disk), the append makes
    /// it itself and reports the error.
    pub(super) fn prepare_queue_file(&self, base: u64) {
        let queue = self.queue.prepare_handle();
        let deleted = self.topic_deleted.clone();
        self.log.prepare_later(Box::new(move || {
            if deleted.load(Ordering::Acquire) {
                return;
            }
            if let Err(error) = queue.prepare(base) {
                tracing::warn!("making a consume-queue file ahead of need failed: {error}");
            }
        }));
    }
}

impl Partition {
    /// The partition at `offsets`. Its last message is read back (with `pread`, so a disk
    /// read error is an error here, not a `SIGBUS` later): a store whose last record is
    /// missing or damaged is refused, naming the file and byte.
    pub(super) fn new(
        topic: &Topic,
        index: u32,
        log: Arc<CommitLog>,
        queue: ConsumeQueue,
        offsets: PartitionOffsets,
    ) -> Result<Partition> {
        let PartitionOffsets {
            start,
            end,
            durable,
            stream_end,
        } = offsets;
        let segment_messages = queue.entries_per_file();
        let consumers = ConsumerPositions::new(queue.dir());
        let partition = Partition {
            topic_id: topic.id,
            topic_name: topic.name.clone(),
            topic_deleted: topic.deleted.clone(),
            index,
            segment_messages,
            log,
            queue,
            writer: Mutex::new(WriteState {
                next: end,
                segment_bytes: 0,
                stream_bytes: stream_end.unwrap_or(0),
                last_timestamp: 0,
                queue_file: Weak::new(),
                queue_room_end: 0,
                entries_waiting: 0,
            }),
            end: AtomicU64::new(end),
            start: AtomicU64::new(start.min(end)),
            last_timestamp: AtomicI64::new(0),
            stream_end: AtomicU64::new(stream_end.unwrap_or(0)),
            flushed: AtomicU64::new(durable.min(end)),
            consumers,
            segment_files: SegmentFiles::open(topic.segment_dir.join(index.to_string()))?,
        };
        // With nothing stored (the disk ceiling took every message) the last record may be
        // gone: the writer then starts the segment's positions afresh.
        let last = match end.checked_sub(1) {
            Some(last) if last >= partition.start_offset() => {
                Some(partition.read_record_from_disk(last)?)
            }
            Some(last) => partition.record(last).map(|r| r.header),
            None => None,
        };
        if let Some(last) = last {
            let mut writer = partition.writer.lock();
            writer.last_timestamp = last.timestamp;
            writer.segment_bytes = if end % segment_messages == 0 {
                0
            } else {
                last.segment_position + last.payload_len() as u64
            };
            writer.stream_bytes = last.stream_position + last.payload_len() as u64;
            partition
                .stream_end
                .store(writer.stream_bytes, Ordering::Release);
            partition
                .last_timestamp
                .store(last.timestamp, Ordering::Release);
        }
        Ok(partition)
    }

    /// Message `offset`, whose queue entry and batch are read with `pread` and checked whole
    /// (size, magic, CRC32C, table, owner).
    fn read_record_from_disk(&self, offset: u64) -> Result<RecordHeader> {
        let entry = self
            .queue
            .read_entry_from_disk(offset)?
            .ok_or_else(|| self.entry_damage(offset, "its consume-queue entry is missing"))?;
        let at = entry.batch;
        let file = self
            .log
            .file_at(at)
            .ok_or_else(|| self.nowhere(offset, at))?;
        let position = at - file.base;
        let room = file.data.capacity() - position;
        let mut header = [0u8; format::BATCH_HEADER_BYTES];
        let header_len = header.len().min(room as usize);
        file.data
            .read_exact_at(position, &mut header[..header_len])?;
        let size = u64::from(format::le_u32(&header, 0)).clamp(header_len as u64, room);
        let mut bytes = vec![0u8; size as usize];
        file.data.read_exact_at(position, &mut bytes)?;
        match format::scan_record(&bytes) {
            Scanned::Record(batch) if self.owns(&batch.header, offset) => {
                let index = (offset - batch.header.first_offset) as u32;
                match batch.message(index) {
                    Some(message) if Self::agrees(&entry, &message) => Ok(message),
                    _ => Err(self.disagreeing_entry(offset)),
                }
            }
            Scanned::Record(batch) => Err(self.foreign_record(offset, at, &batch.header)),
            Scanned::EndOfFile => Err(self.record_damage(offset, at, "an end-of-file marker")),
            Scanned::Skip(_) => Err(self.record_damage(offset, at, "a repaired (skipped) span")),
            Scanned::Invalid(why) => {
                let where_ = format!("{} at byte {position}", file.data.path().display());
                match self.released_last_record(offset, &bytes, &where_) {
                    Some(released) => released.and_then(|message| {
                        Self::agrees(&entry, &message)
                            .then_some(message)
                            .ok_or_else(|| self.disagreeing_entry(offset))
                    }),
                    None => Err(self.record_damage(offset, at, why)),
                }
            }
        }
    }

    /// Whether a queue entry says where `message` lies, as its batch's table does.
    fn agrees(entry: &QueueEntry, message: &RecordHeader) -> bool {
        entry.batch.checked_add(u64::from(message.payload_at)) == Some(entry.commit_log_offset)
            && entry.size == message.len
    }

    pub fn topic_id(&self) -> u32 {
        self.topic_id
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn start_offset(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// The offset the next message gets.
    pub fn end_offset(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Consumer group `group`'s position: the next offset it will read; `None` when never
    /// set. One below the start (retention removed what the group had not read) reads as the
    /// start; one past the end (a power loss took messages the group had read) as the end,
    /// so the group reads the messages stored from then on.
    pub fn consumer_position(&self, group: &str) -> Result<Option<u64>> {
        Ok(self.consumers.get(group)?.map(|offset| self.within(offset)))
    }

    /// Every group with a position in this partition, by name, each as
    /// [`Partition::consumer_position`] reads it.
    pub fn consumer_positions(&self) -> Result<BTreeMap<String, u64>> {
        let mut groups = self.consumers.all()?;
        groups
            .values_mut()
            .for_each(|offset| *offset = self.within(*offset));
        Ok(groups)
    }

    fn within(&self, offset: u64) -> u64 {
        offset.clamp(self.start_offset(), self.end_offset())
    }

    /// Stores `offset` as `group`'s position, durably before it returns. Any offset up to
    /// the partition's end is taken; retention never moves it.
    pub fn set_consumer_position(&self, group: &str, offset: u64) -> Result<()> {
        self.set_consumer_position_if(group, offset, |_| true)
            .map(drop)
    }

    /// [`Partition::set_consumer_position`], if `allowed` says yes to the position stored
    /// now (`None`: none), atomically with the change; false when it said no.
    pub fn set_consumer_position_if(
        &self,
        group: &str,
        offset: u64,
        allowed: impl FnOnce(Option<u64>) -> bool,
    ) -> Result<bool> {
        let end = self.end_offset();
        if offset > end {
            return Err(StoreError::InvalidSetting(format!(
                "position {offset} is past the end of partition {} of topic {:?} ({end})",
                self.index, self.topic_name
            )));
        }
        self.consumers.set_if(group, offset, allowed)
    }

    /// Forgets `group`'s position here; false when it had none.
    pub fn forget_consumer_position(&self, group: &str) -> Result<bool> {
        self.consumers.forget(group)
    }

    pub fn segment_base(&self, offset: u64) -> u64 {
        offset - offset % self.segment_messages
    }

    /// Base offset of the segment the next message goes to.
    pub fn active_base(&self) -> u64 {
        self.segment_base(self.end_offset())
    }

    pub fn last_timestamp(&self) -> Option<i64> {
        (self.end_offset() > self.start_offset())
            .then(|| self.last_timestamp.load(Ordering::Acquire))
    }

    pub(super) fn entry(&self, offset: u64) -> Option<QueueEntry> {
        self.queue.entry(offset)
    }

    /// The stored record of message `offset`, if the partition and the log still hold it
    /// and it is undamaged (for callers to whom a missing message is no error).
    pub(super) fn record(&self, offset: u64) -> Option<RecordRef> {
        let entry = self.entry(offset)?;
        self.record_for(offset, entry, self.log.file_at(entry.batch))
            .ok()
    }

    /// The record of message `offset`: `None` outside the stored range (also when retention
    /// removed it meanwhile), an error naming the file and byte when the partition says it
    /// stores the message but its queue entry or record is missing or damaged.
    pub(super) fn stored_record(&self, offset: u64) -> Result<Option<RecordRef>> {
        if !(self.start_offset()..self.end_offset()).contains(&offset) {
            return Ok(None);
        }
        let found = self
            .entry(offset)
            .ok_or_else(|| self.entry_damage(offset, "its consume-queue entry is missing"))
            .and_then(|entry| self.record_for(offset, entry, self.log.file_at(entry.batch)));
        match found {
            Ok(record) => Ok(Some(record)),
            // Retention moves the start before it removes files.
            Err(_) if offset < self.start_offset() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The message `entry` (message `offset`'s queue entry) points at in `file`, the
    /// commit-log file holding its batch if it is stored.
    fn record_for<F: Deref<Target = LogFile>>(
        &self,
        offset: u64,
        entry: QueueEntry,
        file: Option<F>,
    ) -> Result<Record<F>> {
        let at = entry.batch;
        let file = file.ok_or_else(|| self.nowhere(offset, at))?;
        let published = self.log.written_end();
        let batch = super::commitlog::batch_in(&file, at, published)
            .ok_or_else(|| self.record_damage(offset, at, "no valid batch header"))?;
        if !self.owns(&batch, offset) {
            return Err(self.foreign_record(offset, at, &batch));
        }
        let index = (offset - batch.first_offset) as u32;
        match super::commitlog::message_in(file, MessageAt { batch: at, index }, published) {
            Some(record) if Self::agrees(&entry, &record.header) => Ok(record),
            _ => Err(self.disagreeing_entry(offset)),
        }
    }

    fn disagreeing_entry(&self, offset: u64) -> StoreError {
        self.entry_damage(
            offset,
            "its consume-queue entry disagrees with its batch's table",
        )
    }

    /// Message `offset`'s queue entry is missing or unreadable.
    fn entry_damage(&self, offset: u64, why: &str) -> StoreError {
        let base = self.segment_base(offset);
        StoreError::Corrupt {
            path: self.queue.dir().join(format::file_name(base)),
            offset: (offset - base) * format::QUEUE_ENTRY_BYTES as u64,
            reason: format!(
                "{} partition {}: message {offset}: {why}",
                self.topic_name, self.index
            ),
        }
    }

    /// Message `offset`'s queue entry points at commit-log offset `at`, in no stored file
    /// (a lost message: `commitfs check --repair` marks those with `u64::MAX`).
    fn nowhere(&self, offset: u64, at: u64) -> StoreError {
        self.entry_damage(
            offset,
            &format!("its consume-queue entry points at commit-log offset {at}, which no stored commit-log file holds"),
        )
    }

    /// The commit log holds no valid batch of message `offset` at `at`.
    fn record_damage(&self, offset: u64, at: u64, found: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.log.path_of(at),
            offset: at % self.log.file_bytes(),
            reason: format!(
                "{} partition {}: message {offset}: {found} where its record should be",
                self.topic_name, self.index
            ),
        }
    }

    fn foreign_record(&self, offset: u64, at: u64, header: &BatchHeader) -> StoreError {
        let found = format!(
            "a batch of topic id {} partition {} offsets {}..{}",
            header.topic_id,
            header.partition,
            header.first_offset,
            header.end_offset()
        );
        self.record_damage(offset, at, &found)
    }

    /// Whether `header` is that of a batch holding message `offset` of this partition: a
    /// damaged queue entry must not serve another partition's message.
    fn owns(&self, header: &BatchHeader, offset: u64) -> bool {
        (header.first_offset..header.end_offset()).contains(&offset)
            && header.topic_id == self.topic_id
            && header.partition == self.index
    }

    /// Base offsets of the segments from the oldest stored to the active one.
    pub fn segment_bases(&self) -> impl Iterator<Item = u64> {
        let (first, last) = (self.segment_base(self.start_offset()), self.active_base());
        (first..=last).step_by(self.segment_messages as usize)
    }

    /// Segments from the oldest stored to the active one; an error if the facts of one
    /// cannot be read (a damaged or missing record).
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let mut base = self.segment_base(start);
        let mut segments = Vec::new();
        while base <= self.segment_base(end) {
            segments.push(self.segment_info(base, start, end)?);
            base += self.segment_messages;
        }
        Ok(segments)
    }

    /// The facts of segment `base_offset`: `None` if there is no such segment, an error if
    /// the records of its first or last message are damaged or missing.
    pub fn segment(&self, base_offset: u64) -> Result<Option<SegmentInfo>> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let valid = base_offset % self.segment_messages == 0
            && base_offset >= self.segment_base(start)
            && base_offset <= self.segment_base(end);
        if !valid {
            return Ok(None);
        }
        match self.segment_info(base_offset, start, end) {
            Ok(info) => Ok(Some(info)),
            // Retention removed it meanwhile.
            Err(_) if base_offset + self.segment_messages <= self.start_offset() => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn segment_info(&self, base: u64, start: u64, end: u64) -> Result<SegmentInfo> {
        let first = base.max(start);
        let last_end = end.min(base + self.segment_messages);
        let sealed = base + self.segment_messages <= end;
        let messages = last_end.saturating_sub(first);
        let ends = if messages > 0 {
            let read = |offset| {
                let entry = self.entry(offset).ok_or_else(|| {
                    self.entry_damage(offset, "its consume-queue entry is missing")
                })?;
                self.record_for(offset, entry, self.log.file_at(entry.batch))
            };
            Some((read(first)?, read(last_end - 1)?))
        } else {
            None
        };
        let materialized = sealed && self.segment_files.contains(base);
        Ok(SegmentInfo::describe(
            base,
            messages,
            sealed,
            materialized,
            ends,
        ))
    }

    /// Where message `offset` is: its segment, byte position and length.
    pub fn locate(&self, offset: u64) -> Result<MessageLocation> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let missing = || StoreError::OffsetOutOfRange { offset, start, end };
        let record = self.stored_record(offset)?.ok_or_else(missing)?;
        let base = self.segment_base(offset);
        let start = self.start_offset();
        let shift = if start > base {
            self.stored_record(start)?
                .ok_or_else(missing)?
                .header
                .segment_position
        } else {
            0
        };
        Ok(MessageLocation {
            segment_base: base,
            position: record.header.segment_position - shift,
            len: record.header.payload_len() as u32,
        })
    }

    /// The first offset whose timestamp is at or after `timestamp_ms`, by binary search
    /// (timestamps never go backwards within a partition).
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        // One end for the whole search: a message appended meanwhile was not looked at, so
        // it must not be the answer (it may be older than `timestamp_ms`).
        let end = self.end_offset();
        let (mut low, mut high) = (self.start_offset(), end);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.stored_record(middle)? {
                Some(record) if record.header.timestamp >= timestamp_ms => high = middle,
                Some(_) => low = middle + 1,
                // Removed by retention while we searched: only newer messages count.
                None => low = middle + 1,
            }
        }
        Ok((low < end).then_some(low))
    }

    /// The payload of message `offset`.
    pub fn read_message(&self, offset: u64) -> Result<Vec<u8>> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let record = self
            .stored_record(offset)?
            .ok_or(StoreError::OffsetOutOfRange { offset, start, end })?;
        self.payload_of(&record)
    }

    /// The size of the partition's `stream`: every byte it ever stored.
    pub fn stream_end(&self) -> u64 {
        self.stream_end.load(Ordering::Acquire)
    }

    /// The first byte of the `stream` still stored (its size when nothing is).
    pub fn stream_start(&self) -> Result<u64> {
        // Retention may move the start while we look: a few tries find it still there.
        for _ in 0..3 {
            let start = self.start_offset();
            if start >= self.end_offset() {
                return Ok(self.stream_end());
            }
            if let Some(first) = self.stored_record(start)? {
                return Ok(first.header.stream_position);
            }
        }
        Err(StoreError::Corrupt {
            path: self.queue.dir().to_owned(),
            offset: 0,
            reason: format!(
                "{} partition {}: its first message kept moving while being read",
                self.topic_name, self.index
            ),
        })
    }

    /// Fills `buf` from byte `position` of the partition's `stream` (its messages' bytes in
    /// offset order, as one file that never rolls); returns 0 at its end. Bytes below the
    /// first message still stored are an error ([`StoreError::BeforeStreamStart`]). Each
    /// batch served from is checked against its CRC32C.
    pub fn read_stream(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        // Retention may move the start while a read searches: a position still stored is
        // searched again rather than answered with ENXIO.
        for _ in 0..3 {
            match self.read_stream_once(position, buf) {
                Err(StoreError::BeforeStreamStart { .. }) if self.stream_start()? <= position => {}
                done => return done,
            }
        }
        self.read_stream_once(position, buf)
    }

    fn read_stream_once(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        let end = self.end_offset();
        let (start_position, stream_end) = (self.stream_start()?, self.stream_end());
        if position < start_position {
            return Err(StoreError::BeforeStreamStart {
                position,
                start: start_position,
            });
        }
        if position >= stream_end || buf.is_empty() {
            return Ok(0);
        }
        let gone = || StoreError::BeforeStreamStart {
            position,
            start: self.stream_start().unwrap_or(stream_end),
        };
        let mut offset = last_starting_at_or_before(self.start_offset(), end, position, |at| {
            let record = self.stored_record(at)?.ok_or_else(gone)?;
            Ok(record.header.stream_position)
        })?;
        let mut filled = 0;
        while filled < buf.len() && offset < end {
            let from = position + filled as u64;
            let Some(record) = self.stored_record(offset)? else {
                return if filled > 0 { Ok(filled) } else { Err(gone()) };
            };
            let Some(skip) = from.checked_sub(record.header.stream_position) else {
                return Err(self.entry_damage(
                    offset,
                    &format!(
                        "its message starts at stream byte {}, past byte {from} where it should",
                        record.header.stream_position
                    ),
                ));
            };
            let batch_end = record.batch_end_offset();
            let skip = skip as usize;
            if skip < record.payload_to_batch_end().len() {
                filled += self.with_stretch(&record, |stretch| {
                    let rest = &stretch[skip..];
                    let n = rest.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&rest[..n]);
                    n
                })?;
            }
            offset = batch_end;
        }
        Ok(filled)
    }

    /// A reader of segment `base_offset` that keeps its data readable until dropped. It
    /// holds the commit-log files the segment needs as it is now: a sealed segment's, from
    /// its first message to the end of its last; an active one's, from its first message to
    /// the log's end (files added later are found through the log).
    pub fn open_segment(self: &Arc<Self>, base_offset: u64) -> Result<SegmentReader> {
        let mut reader = self.open_segment_in_log(base_offset)?;
        // Only sealed segments have files of their own.
        if self.segment_files.contains(base_offset) {
            reader.file = self.segment_files.open_file(base_offset).map(Arc::new);
        }
        Ok(reader)
    }

    /// A reader of segment `base_offset` that reads the commit log, also when the segment
    /// has a file of its own.
    pub(super) fn open_segment_in_log(self: &Arc<Self>, base_offset: u64) -> Result<SegmentReader> {
        let info = self
            .segment(base_offset)?
            .ok_or_else(|| StoreError::NoSuchSegment {
                topic: format!("{} partition {}", self.topic_name, self.index),
                base: base_offset,
            })?;
        let first = info.base_offset.max(self.start_offset());
        let log_end = self.log.written_end();
        let head = (info.messages > 0).then(|| self.entry(first)).flatten();
        let tail = (info.messages > 0 && info.sealed)
            .then(|| self.entry(first + info.messages - 1))
            .flatten();
        // A batch lies in one file with its messages: the files from the first message's
        // batch to the last message's bytes hold every batch the segment needs.
        let (from, to) = match (head, tail) {
            (Some(head), Some(tail)) => (
                head.batch,
                tail.commit_log_offset.saturating_add(u64::from(tail.size)),
            ),
            (Some(head), None) => (head.batch, log_end),
            (None, _) => (log_end, log_end),
        };
        Ok(SegmentReader {
            partition: self.clone(),
            base: base_offset,
            first,
            shift: OnceLock::new(),
            queue_file: Mutex::new(self.queue.file(base_offset)),
            log_files: self.log.files_between(from, to),
            verified_batch: AtomicU64::new(0),
            file: None,
        })
    }
}

/// Where a message is inside its partition's segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLocation {
    pub segment_base: u64,
    pub position: u64,
    pub len: u32,
}

/// The last offset in `[low, high)` whose message starts at or before byte `target`, by a
/// binary search over `start_of` (positions rise with offsets); `low` when none does. The
/// cost does not grow with the number of messages searched.
fn last_starting_at_or_before(
    mut low: u64,
    mut high: u64,
    target: u64,
    start_of: impl Fn(u64) -> Result<u64>,
) -> Result<u64> {
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if start_of(middle)? <= target {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

pub(super) fn verify<F: Deref<Target = LogFile>>(record: &Record<F>) -> Result<()> {
    if record.crc_matches() {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: record.path(),
        offset: record.position(),
        reason: format!(
            "CRC32C mismatch in the batch holding message {} of partition {}",
            record.header.offset, record.header.partition
        ),
    })
}

/// Reads one segment at any byte position. Holds the consume-queue file and the commit-log
/// files it needs, so a segment removed by retention stays readable until the reader drops,
/// like an unlinked file.
pub struct SegmentReader {
    partition: Arc<Partition>,
    base: u64,
    /// First offset this reader serves, and its position in the segment (subtracted so the
    /// file starts at byte 0). The position is learnt from the message itself once it is
    /// stored: when the disk ceiling has emptied an active segment, the next message keeps
    /// the segment's position, not 0.
    first: u64,
    shift: OnceLock<u64>,
    queue_file: Mutex<Option<Arc<QueueFile>>>,
    log_files: Vec<Arc<LogFile>>,
    /// The batch whose CRC32C was checked last, plus one (0: none): sequential reads check
    /// each batch once, not once per read.
    verified_batch: AtomicU64,
    /// The segment's own file, when it has one: reads are served from it.
    file: Option<Arc<File>>,
}

impl SegmentReader {
    pub fn base_offset(&self) -> u64 {
        self.base
    }

    /// The segment's own file, when reads are served from it (see `materialize`).
    pub fn materialized_file(&self) -> Option<&Arc<File>> {
        self.file.as_ref()
    }

    fn end(&self) -> u64 {
        self.partition
            .end_offset()
            .min(self.base + self.partition.segment_messages)
    }

    /// The segment's facts as this reader sees them now (an active segment grows); an
    /// error if the records of its first or last message are damaged or missing.
    pub fn info(&self) -> Result<SegmentInfo> {
        let end = self.end();
        let messages = end.saturating_sub(self.first);
        let sealed = self.base + self.partition.segment_messages <= self.partition.end_offset();
        let ends = if messages > 0 {
            Some((self.record(self.first)?, self.record(end - 1)?))
        } else {
            None
        };
        let materialized = sealed && self.partition.segment_files.contains(self.base);
        Ok(SegmentInfo::describe(
            self.base,
            messages,
            sealed,
            materialized,
            ends,
        ))
    }

    fn queue_file(&self, offset: u64) -> Result<Arc<QueueFile>> {
        let mut cached = self.queue_file.lock();
        if cached.is_none() {
            *cached = self.partition.queue.file(self.base);
        }
        cached.clone().ok_or_else(|| {
            self.partition
                .entry_damage(offset, "its consume-queue file is missing or unreadable")
        })
    }

    fn entry(&self, queue: &QueueFile, offset: u64) -> Result<QueueEntry> {
        self.partition.queue.entry_in(queue, offset).ok_or_else(|| {
            self.partition
                .entry_damage(offset, "its consume-queue entry lies past the file's end")
        })
    }

    fn record(&self, offset: u64) -> Result<RecordRef> {
        let entry = self.entry(&*self.queue_file(offset)?, offset)?;
        let at = entry.batch;
        let file = self
            .pinned_file(at)
            .cloned()
            .or_else(|| self.partition.log.file_at(at));
        self.partition.record_for(offset, entry, file)
    }

    /// The file holding commit-log offset `at`, if this reader holds it.
    fn pinned_file(&self, at: u64) -> Option<&Arc<LogFile>> {
        let first = self.log_files.first()?.base;
        let index = at.checked_sub(first)? / self.partition.log.file_bytes();
        self.log_files.get(index as usize)
    }

    /// Calls `f` with the record of `offset`, borrowing its file where this reader holds it
    /// (the common case: no reference counting per message).
    fn with_record<T>(
        &self,
        queue: &QueueFile,
        offset: u64,
        f: impl FnOnce(&Record<&LogFile>) -> T,
    ) -> Result<T> {
        let entry = self.entry(queue, offset)?;
        let at = entry.batch;
        if let Some(file) = self.pinned_file(at) {
            return self
                .partition
                .record_for(offset, entry, Some(&**file))
                .map(|record| f(&record));
        }
        let file = self.partition.log.file_at(at);
        self.partition
            .record_for(offset, entry, file.as_deref())
            .map(|record| f(&record))
    }

    /// Fills `buf` from byte `position` of the segment; returns 0 at its end. Each message
    /// touched is checked against its CRC, so damaged bytes are never served; a message
    /// that cannot be read is an error naming the file and byte.
    pub fn read_at(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        if let Some(file) = &self.file {
            return self.read_own_file(file, position, buf);
        }
        let files = &self.partition.segment_files;
        if !files.is_marked(self.base) {
            let from_log = self.read_log_at(position, buf);
            // The segment is marked before the log's first byte of it is punched: still
            // unmarked after the copy, the bytes copied were the log's own.
            std::sync::atomic::fence(Ordering::SeqCst);
            if !files.is_marked(self.base) {
                return from_log;
            }
        }
        // The log gave back the segment's bytes (see `released`): its file answers.
        let file = files.open_file(self.base).ok_or_else(|| {
            self.partition.file_damage(
                self.base,
                0,
                "the file is missing, and it was the only copy of the segment's messages",
            )
        })?;
        self.read_own_file(&file, position, buf)
    }

    fn read_log_at(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        let end = self.end();
        if self.first >= end || buf.is_empty() {
            return Ok(0);
        }
        let queue = self.queue_file(self.first)?;
        let shift = match self.shift.get() {
            Some(&shift) => shift,
            None => {
                let first = self.with_record(&queue, self.first, |r| r.header.segment_position)?;
                *self.shift.get_or_init(|| first)
            }
        };
        let target = position + shift;
        let mut offset = last_starting_at_or_before(self.first, end, target, |at| {
            self.with_record(&queue, at, |r| r.header.segment_position)
        })?;
        let mut filled = 0;
        while filled < buf.len() && offset < end {
            let from = target + filled as u64;
            let (copied, next) = self.with_record(&queue, offset, |record| {
                let message_start = record.header.segment_position;
                // Messages tile the segment; a message that starts past `from` is not this
                // partition's next message (a damaged queue entry).
                let Some(skip) = from.checked_sub(message_start) else {
                    return Err(self.partition.entry_damage(
                        offset,
                        &format!("its record starts at segment byte {message_start}, past byte {from} where it should"),
                    ));
                };
                // This message and the rest of its batch are one stretch of the segment,
                // all published together.
                let stretch = record.payload_to_batch_end();
                let batch_end = record.batch_end_offset();
                let Some(rest) = stretch.get(skip as usize..).filter(|r| !r.is_empty()) else {
                    return Ok((0, batch_end));
                };
                self.verify_once(record)?;
                let n = rest.len().min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&rest[..n]);
                Ok((n, batch_end))
            })??;
            filled += copied;
            offset = next;
        }
        Ok(filled)
    }

    fn read_own_file(&self, file: &File, position: u64, buf: &mut [u8]) -> Result<usize> {
        read_file_at(file, position, buf).map_err(|e| {
            StoreError::io(
                format!(
                    "reading segment {} of {} partition {}'s own file",
                    self.base, self.partition.topic_name, self.partition.index
                ),
                e,
            )
        })
    }

    /// Checks the CRC32C of `record`'s batch unless it was the last batch checked.
    fn verify_once(&self, record: &Record<&LogFile>) -> Result<()> {
        let mark = record.at().batch.wrapping_add(1);
        if self.verified_batch.load(Ordering::Relaxed) == mark {
            return Ok(());
        }
        verify(record)?;
        self.verified_batch.store(mark, Ordering::Relaxed);
        Ok(())
    }
}

/// Fills `buf` from byte `position` of `file`, up to its end.
fn read_file_at(file: &File, position: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
