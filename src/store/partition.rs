//! Topics and partitions as readers see them: a partition is a sequence of segments of
//! `segment_messages` offsets each (one consume-queue file), and a segment's bytes are its
//! messages' payloads in offset order, gathered from the commit log.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use super::commitlog::{CommitLog, LogFile, Record, RecordRef};
use super::error::{Result, StoreError};
use super::format::{self, QueueEntry, RecordHeader};
use super::queue::{ConsumeQueue, QueueFile};
use super::TopicSettings;

pub struct Topic {
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) created_ms: i64,
    pub(super) settings: RwLock<TopicSettings>,
    pub(super) partitions: RwLock<Vec<Arc<Partition>>>,
    pub(super) deleted: Arc<AtomicBool>,
    pub(super) next_keyless: AtomicU32,
    pub(super) queue_dir: PathBuf,
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
        self.partitions.read().clone()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Kafka's Java-client choice for a keyed message, `(murmur2(key) & 0x7fffffff) % n`;
    /// keyless messages go to the partitions in turn.
    pub fn choose_partition(&self, key: Option<&[u8]>) -> u32 {
        let count = self.partitions.read().len().max(1) as u32;
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
}

impl SegmentInfo {
    /// The facts of a segment of `messages` messages, from the records of its first and last
    /// stored message (none when it is empty or they are no longer stored).
    fn describe(
        base_offset: u64,
        messages: u64,
        sealed: bool,
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
}

/// State only the partition's appender touches.
pub(super) struct WriteState {
    pub next: u64,
    /// Bytes of the active segment so far: the position of the next message in it.
    pub segment_bytes: u64,
    pub last_timestamp: i64,
    /// The consume-queue file appends go to.
    pub queue_file: Option<Arc<QueueFile>>,
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
    /// Consume-queue entries below this offset are on disk.
    pub(super) flushed: AtomicU64,
}

impl Partition {
    pub(super) fn new(
        topic: &Topic,
        index: u32,
        log: Arc<CommitLog>,
        queue: ConsumeQueue,
        offsets: PartitionOffsets,
    ) -> Partition {
        let PartitionOffsets {
            start,
            end,
            durable,
        } = offsets;
        let segment_messages = queue.entries_per_file();
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
                last_timestamp: 0,
                queue_file: None,
            }),
            end: AtomicU64::new(end),
            start: AtomicU64::new(start.min(end)),
            last_timestamp: AtomicI64::new(0),
            flushed: AtomicU64::new(durable.min(end)),
        };
        if let Some(last) = end.checked_sub(1).and_then(|o| partition.record(o)) {
            let mut writer = partition.writer.lock();
            writer.last_timestamp = last.header.timestamp;
            writer.segment_bytes = if end % segment_messages == 0 {
                0
            } else {
                last.header.segment_position + last.header.payload_len() as u64
            };
            partition
                .last_timestamp
                .store(last.header.timestamp, Ordering::Release);
        }
        partition
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

    /// The stored record of message `offset`, if the partition and the log still hold it.
    pub(super) fn record(&self, offset: u64) -> Option<RecordRef> {
        let entry = self.entry(offset)?;
        let record = self.log.record_at(entry.commit_log_offset)?;
        self.owns(&record.header, offset).then_some(record)
    }

    /// Whether `header` is that of message `offset` of this partition: a damaged queue entry
    /// must not serve another partition's message.
    fn owns(&self, header: &RecordHeader, offset: u64) -> bool {
        header.offset == offset
            && header.topic_id == self.topic_id
            && header.partition == self.index
    }

    /// Segments from the oldest stored to the active one.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let mut base = self.segment_base(start);
        let mut segments = Vec::new();
        while base <= self.segment_base(end) {
            segments.push(self.segment_info(base, start, end));
            base += self.segment_messages;
        }
        segments
    }

    pub fn segment(&self, base_offset: u64) -> Option<SegmentInfo> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let valid = base_offset % self.segment_messages == 0
            && base_offset >= self.segment_base(start)
            && base_offset <= self.segment_base(end);
        valid.then(|| self.segment_info(base_offset, start, end))
    }

    fn segment_info(&self, base: u64, start: u64, end: u64) -> SegmentInfo {
        let first = base.max(start);
        let last_end = end.min(base + self.segment_messages);
        let sealed = base + self.segment_messages <= end;
        let messages = last_end.saturating_sub(first);
        let ends = (messages > 0)
            .then(|| Some((self.record(first)?, self.record(last_end - 1)?)))
            .flatten();
        SegmentInfo::describe(base, messages, sealed, ends)
    }

    /// Where message `offset` is: its segment, byte position and length.
    pub fn locate(&self, offset: u64) -> Result<MessageLocation> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let missing = || StoreError::OffsetOutOfRange { offset, start, end };
        if offset < start || offset >= end {
            return Err(missing());
        }
        let record = self.record(offset).ok_or_else(missing)?;
        let base = self.segment_base(offset);
        let shift = if start > base {
            self.record(start)
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
        let (mut low, mut high) = (self.start_offset(), self.end_offset());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.record(middle) {
                Some(record) if record.header.timestamp >= timestamp_ms => high = middle,
                Some(_) => low = middle + 1,
                // Removed by retention while we searched: only newer messages count.
                None => low = middle + 1,
            }
        }
        Ok((low < self.end_offset()).then_some(low))
    }

    /// The payload of message `offset`.
    pub fn read_message(&self, offset: u64) -> Result<Vec<u8>> {
        let (start, end) = (self.start_offset(), self.end_offset());
        if offset < start || offset >= end {
            return Err(StoreError::OffsetOutOfRange { offset, start, end });
        }
        let record =
            self.record(offset)
                .ok_or(StoreError::OffsetOutOfRange { offset, start, end })?;
        verify(&record)?;
        Ok(record.payload().to_vec())
    }

    /// A reader of segment `base_offset` that keeps its data readable until dropped.
    pub fn open_segment(self: &Arc<Self>, base_offset: u64) -> Result<SegmentReader> {
        let info = self
            .segment(base_offset)
            .ok_or_else(|| StoreError::NoSuchSegment {
                topic: format!("{} partition {}", self.topic_name, self.index),
                base: base_offset,
            })?;
        let first = info.base_offset.max(self.start_offset());
        let from = self
            .entry(first)
            .map_or(self.log.written_end(), |e| e.commit_log_offset);
        Ok(SegmentReader {
            partition: self.clone(),
            base: base_offset,
            first,
            shift: OnceLock::new(),
            queue_file: Mutex::new(self.queue.file(base_offset)),
            log_files: self.log.files_between(from, u64::MAX),
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

pub(super) fn verify<F: Deref<Target = LogFile>>(record: &Record<F>) -> Result<()> {
    if record.crc_matches() {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: record.path(),
        offset: record.position(),
        reason: format!(
            "CRC32C mismatch in message {} of partition {}",
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
}

impl SegmentReader {
    pub fn base_offset(&self) -> u64 {
        self.base
    }

    fn end(&self) -> u64 {
        self.partition
            .end_offset()
            .min(self.base + self.partition.segment_messages)
    }

    /// The segment's facts as this reader sees them now (an active segment grows).
    pub fn info(&self) -> SegmentInfo {
        let end = self.end();
        let messages = end.saturating_sub(self.first);
        let sealed = self.base + self.partition.segment_messages <= self.partition.end_offset();
        let ends = (messages > 0)
            .then(|| Some((self.record(self.first)?, self.record(end - 1)?)))
            .flatten();
        SegmentInfo::describe(self.base, messages, sealed, ends)
    }

    fn queue_file(&self) -> Option<Arc<QueueFile>> {
        let mut cached = self.queue_file.lock();
        if cached.is_none() {
            *cached = self.partition.queue.file(self.base);
        }
        cached.clone()
    }

    fn record(&self, offset: u64) -> Option<RecordRef> {
        let at = self.queue_file()?.entry(offset).commit_log_offset;
        let file = self
            .pinned_file(at)
            .cloned()
            .or_else(|| self.partition.log.file_at(at))?;
        super::commitlog::record_in(file, at).filter(|r| self.partition.owns(&r.header, offset))
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
    ) -> Option<T> {
        let at = queue.entry(offset).commit_log_offset;
        let owned = |record: &Record<&LogFile>| self.partition.owns(&record.header, offset);
        if let Some(file) = self.pinned_file(at) {
            return super::commitlog::record_in(&**file, at)
                .filter(owned)
                .map(|record| f(&record));
        }
        let file = self.partition.log.file_at(at)?;
        super::commitlog::record_in(&*file, at)
            .filter(owned)
            .map(|record| f(&record))
    }

    /// Fills `buf` from byte `position` of the segment; returns 0 at its end. Each message
    /// touched is checked against its CRC, so damaged bytes are never served.
    pub fn read_at(&self, position: u64, buf: &mut [u8]) -> Result<usize> {
        let end = self.end();
        if self.first >= end || buf.is_empty() {
            return Ok(0);
        }
        let queue = self.queue_file().ok_or_else(|| self.missing(self.first))?;
        let shift = match self.shift.get() {
            Some(&shift) => shift,
            None => {
                let first = self
                    .with_record(&queue, self.first, |r| r.header.segment_position)
                    .ok_or_else(|| self.missing(self.first))?;
                *self.shift.get_or_init(|| first)
            }
        };
        let target = position + shift;
        // The last message starting at or before the target.
        let (mut low, mut high) = (self.first, end);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            let start = self.with_record(&queue, middle, |r| r.header.segment_position);
            match start {
                Some(start) if start <= target => low = middle,
                Some(_) => high = middle,
                None => return Err(self.missing(middle)),
            }
        }
        let mut filled = 0;
        let mut offset = low;
        while filled < buf.len() && offset < end {
            let from = target + filled as u64;
            let copied = self.with_record(&queue, offset, |record| {
                let payload = record.payload();
                let message_start = record.header.segment_position;
                if from >= message_start.saturating_add(payload.len() as u64) {
                    return Ok(0);
                }
                // Messages tile the segment; a record that starts past `from` is not this
                // partition's next message (a damaged queue entry).
                let Some(skip) = from.checked_sub(message_start) else {
                    return Err(self.missing(offset));
                };
                verify(record)?;
                let skip = skip as usize;
                let n = (payload.len() - skip).min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&payload[skip..skip + n]);
                Ok(n)
            });
            filled += copied.ok_or_else(|| self.missing(offset))??;
            offset += 1;
        }
        Ok(filled)
    }

    fn missing(&self, offset: u64) -> StoreError {
        StoreError::Corrupt {
            path: self
                .partition
                .queue
                .dir()
                .join(format::file_name(self.base)),
            offset: (offset - self.base) * format::QUEUE_ENTRY_BYTES as u64,
            reason: format!("message {offset} has no readable record"),
        }
    }
}
