//! Appending: a partition hashes its messages' keys and reserves their consume-queue room
//! under its own writer lock; under the log's append lock the messages are then cut into
//! batches (one header and CRC for many messages), copied into the commit log together with
//! their key-index entries, and published.
//!
//! Everything an append can fail for (consume-queue room, key-index room, commit-log files)
//! is obtained before its first byte is copied, so a failed append stores nothing. After
//! that only the `pwrite` of its batches into the log can fail (a disk error): what reached
//! the file is zeroed again and the store is fenced, as it is should something panic before
//! the partitions' ends are published: see [`Fence`].

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::MutexGuard;

use super::commitlog::{Appender, CommitLog};
use super::error::{Result, StoreError};
use super::format::{self, BatchHeader, MessageAt, QueueEntry};
use super::index::{IndexRoom, KeyIndex};
use super::mapped::prefetch;
use super::partition::{Partition, WriteState};
use super::queue::{QueueFile, ReservedFiles};
use super::queue_writer::QueueWriter;
use super::{now_ms, AppendOutcome, NewMessage};

/// Set when an append was interrupted between its first byte copied and its partitions'
/// published ends: the log may then hold a record its partition does not count, whose offset
/// the next append would reuse. A fenced store refuses every write until it is reopened
/// (which recovers by scanning the log); reads go on.
#[derive(Default)]
pub(super) struct Fence {
    fenced: AtomicBool,
}

impl Fence {
    pub fn is_set(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(StoreError::Fenced)
        } else {
            Ok(())
        }
    }

    /// Fences the store after a flush of the log failed: the kernel may have dropped the
    /// failed pages' dirty state, so a later flush could report success without writing
    /// them (Postgres's "fsyncgate"); only a remount, which recovers from what is on disk,
    /// is trustworthy again.
    pub fn after_failed_flush(&self, error: &StoreError) {
        self.fenced.store(true, Ordering::Release);
        tracing::error!(
            "flushing the commit log failed: {error}; {}",
            StoreError::Fenced
        );
    }

    /// Fences the store after writing an append's batches into the log failed: index
    /// entries for them went in, and the log may hold part of them. A remount recovers from
    /// what the log holds.
    pub fn after_failed_write(&self, error: &StoreError) {
        self.fenced.store(true, Ordering::Release);
        tracing::error!(
            "writing to the commit log failed: {error}; {}",
            StoreError::Fenced
        );
    }

    /// Fences the store if it is dropped while its thread unwinds from a panic; `during`
    /// says what the thread was doing, for the log line.
    pub fn on_unwind(&self, during: &'static str) -> FenceOnUnwind<'_> {
        FenceOnUnwind {
            fence: self,
            during,
        }
    }
}

pub(super) struct FenceOnUnwind<'f> {
    fence: &'f Fence,
    during: &'static str,
}

impl Drop for FenceOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.fence.fenced.store(true, Ordering::Release);
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            tracing::error!(
                "a panic {} (thread {name}): {}",
                self.during,
                StoreError::Fenced
            );
        }
    }
}

/// What an append needs of the store around its partitions.
pub(super) struct AppendTo<'s> {
    pub log: &'s CommitLog,
    pub index: &'s KeyIndex,
    pub queue_writer: &'s QueueWriter,
    pub fence: &'s Fence,
    pub max_message_bytes: usize,
}

/// Room for what an append learns about each message: a slot per message.
pub(super) struct Scratch<'s> {
    /// Global offsets of each message's bytes and of its batch, once copied.
    pub payload_positions: &'s mut [u64],
    pub batch_positions: &'s mut [u64],
    /// 0 for a message without a key.
    pub key_hashes: &'s mut [u64],
}

impl<'s> Scratch<'s> {
    /// Runs `f` with room for `count` messages, on the stack when there is one.
    pub fn with<T>(count: usize, f: impl FnOnce(Scratch<'_>) -> T) -> T {
        if count == 1 {
            let (mut payloads, mut batches, mut key_hashes) = ([0; 1], [0; 1], [0; 1]);
            return f(Scratch {
                payload_positions: &mut payloads,
                batch_positions: &mut batches,
                key_hashes: &mut key_hashes,
            });
        }
        let (mut payloads, mut batches) = (vec![0; count], vec![0; count]);
        let mut key_hashes = vec![0; count];
        f(Scratch {
            payload_positions: &mut payloads,
            batch_positions: &mut batches,
            key_hashes: &mut key_hashes,
        })
    }

    /// The first `count` slots, and the rest.
    fn split(self, count: usize) -> (Scratch<'s>, Scratch<'s>) {
        let (payloads, more_payloads) = self.payload_positions.split_at_mut(count);
        let (batches, more_batches) = self.batch_positions.split_at_mut(count);
        let (key_hashes, more_key_hashes) = self.key_hashes.split_at_mut(count);
        (
            Scratch {
                payload_positions: payloads,
                batch_positions: batches,
                key_hashes,
            },
            Scratch {
                payload_positions: more_payloads,
                batch_positions: more_batches,
                key_hashes: more_key_hashes,
            },
        )
    }
}

/// How many partitions ahead an append over many partitions starts loading what it will
/// touch next: each partition's state lies on its own cache lines, and waiting for each in
/// turn, rather than for several at once, was most of the time of such an append.
const PREFETCH_AHEAD: usize = 8;

/// Refuses a batch with a message over `max_message_bytes` or a key longer than its message.
pub(super) fn check_messages(messages: &[NewMessage<'_>], max_message_bytes: usize) -> Result<()> {
    for message in messages {
        if message.payload.len() > max_message_bytes {
            return Err(StoreError::MessageTooLarge {
                size: message.payload.len(),
                max: max_message_bytes,
            });
        }
        if message.key_len.is_some_and(|k| k > message.payload.len()) {
            return Err(StoreError::InvalidSetting(
                "key longer than the message".into(),
            ));
        }
    }
    Ok(())
}

/// One partition's messages, keys hashed, with their consume-queue room reserved; holds the
/// partition's writer lock until they are published or dropped.
pub(super) struct Staged<'a> {
    partition: &'a Partition,
    state: MutexGuard<'a, WriteState>,
    /// The consume-queue files the messages go to, pinned until they are published; none
    /// while their entries wait in memory.
    queue_files: ReservedFiles,
    /// Whether their entries wait in memory (see `ConsumeQueue::defer`) rather than go to
    /// the file now.
    defer_entries: bool,
    /// The file of the entries that wait in memory, when they are written out now.
    pending_file: Option<Arc<QueueFile>>,
    messages: &'a [NewMessage<'a>],
    /// The buffer the caller read the messages from, if any: runs of them that lie back to
    /// back in it go to the log from there (see [`Runs`]).
    buffer: &'a [u8],
    scratch: Scratch<'a>,
    first_offset: u64,
    timestamp: i64,
    /// Whether its batches carry key lengths.
    keyed: bool,
    /// The partition's facts the batches' headers need, copied here while its lines are in
    /// the cache.
    topic_id: u32,
    partition_index: u32,
    segment_messages: u64,
    /// The active segment's size once the messages are in.
    segment_bytes: u64,
    /// The partition's `stream` size once the messages are in.
    stream_bytes: u64,
}

impl Partition {
    /// Appends messages in order, with consecutive offsets: all of them or, on error, none.
    /// `scratch` has a slot per message.
    pub(super) fn append<'a>(
        &'a self,
        to: &AppendTo<'_>,
        messages: &'a [NewMessage<'a>],
        buffer: &'a [u8],
        scratch: Scratch<'a>,
    ) -> Result<AppendOutcome> {
        check_messages(messages, to.max_message_bytes)?;
        let mut staged = [self.stage(messages, buffer, scratch, now_ms())?];
        commit(to, &mut staged)?;
        Ok(staged[0].outcome())
    }

    /// Takes the writer lock, stamps the messages (with `now`, or the partition's last
    /// timestamp if that is later) and hashes their keys (outside the append lock: only the
    /// copy is serial) and reserves their consume-queue room.
    fn stage<'a>(
        &'a self,
        messages: &'a [NewMessage<'a>],
        buffer: &'a [u8],
        scratch: Scratch<'a>,
        now: i64,
    ) -> Result<Staged<'a>> {
        let mut state = self.writer.lock();
        if self.topic_deleted.load(Ordering::Acquire) {
            return Err(StoreError::NoSuchTopic(self.topic_name.clone()));
        }
        let (first_offset, count) = (state.next, messages.len() as u64);
        if first_offset + count > state.queue_room_end {
            // The queue writer may have grown the file since.
            state.queue_room_end = state.queue_room_end.max(self.queue.room_ahead());
        }
        // A few entries wait in memory when their room is allocated: the file is not touched.
        let defer_entries = first_offset + count <= state.queue_room_end
            && self
                .queue
                .can_defer(first_offset, count, state.entries_waiting);
        let queue_files = if defer_entries {
            ReservedFiles::default()
        } else {
            let files = ReservedFiles::starting_with(state.queue_file.upgrade());
            // The queue entry's cache line loads while the keys are hashed.
            self.queue.prefetch(files.last(), first_offset);
            files
        };
        let mut staged = Staged {
            queue_files,
            defer_entries,
            pending_file: None,
            topic_id: self.topic_id,
            partition_index: self.index,
            segment_messages: self.segment_messages,
            partition: self,
            first_offset: state.next,
            timestamp: now.max(state.last_timestamp),
            keyed: messages.iter().any(|m| m.key_len.is_some()),
            segment_bytes: state.segment_bytes,
            stream_bytes: state.stream_bytes,
            state,
            messages,
            buffer,
            scratch,
        };
        staged.hash_keys();
        fail::fail_point!("append::reserve-queue", |_| Err(StoreError::DiskFull(
            "reserving consume-queue room (failpoint append::reserve-queue)".into()
        )));
        let end_offset = first_offset + count;
        if defer_entries {
            self.prepare_next_queue_file(first_offset, end_offset);
        } else {
            staged.state.queue_room_end =
                self.reserve_queue(&mut staged.queue_files, first_offset, end_offset)?;
            staged.pending_file = self.queue.file_for_pending()?;
        }
        Ok(staged)
    }
}

/// Messages' bytes in runs: consecutive messages that lie back to back in `buffer` make one
/// run (the lines of one `write()` to a file of the mount), any other message is a run of
/// its own.
struct Runs<'a> {
    messages: std::slice::Iter<'a, NewMessage<'a>>,
    buffer: &'a [u8],
    /// A message read ahead that did not join the run before it.
    next: Option<&'a [u8]>,
}

impl<'a> Iterator for Runs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut run = self
            .next
            .take()
            .or_else(|| self.messages.next().map(|m| m.payload))?;
        for message in self.messages.by_ref() {
            match joined(self.buffer, run, message.payload) {
                Some(longer) => run = longer,
                None => {
                    self.next = Some(message.payload);
                    break;
                }
            }
        }
        Some(run)
    }
}

/// `first` and `second` as one slice of `buffer`, if both lie in it and `second` starts
/// where `first` ends (compared as addresses: only `buffer` is ever sliced).
fn joined<'a>(buffer: &'a [u8], first: &[u8], second: &[u8]) -> Option<&'a [u8]> {
    let base = buffer.as_ptr() as usize;
    let start = (first.as_ptr() as usize).checked_sub(base)?;
    let middle = (second.as_ptr() as usize).checked_sub(base)?;
    let end = middle + second.len();
    (middle == start + first.len() && end <= buffer.len()).then(|| &buffer[start..end])
}

/// One batch of a commit: the staged partition, which of its messages, and its header.
struct PlannedBatch {
    staged: usize,
    messages: Range<usize>,
    header: BatchHeader,
}

impl<'a> Staged<'a> {
    fn hash_keys(&mut self) {
        let topic_id = self.topic_id;
        let key_of = |message: &NewMessage<'a>| message.key_len.map(|k| &message.payload[..k]);
        let mut messages = self.messages.chunks_exact(format::KEYS_AT_ONCE);
        let mut hashes = self
            .scratch
            .key_hashes
            .chunks_exact_mut(format::KEYS_AT_ONCE);
        for (group, group_hashes) in messages.by_ref().zip(hashes.by_ref()) {
            let keys = std::array::from_fn(|lane| key_of(&group[lane]).unwrap_or_default());
            let keyed = format::key_hashes(topic_id, keys);
            for ((hash, message), keyed) in group_hashes.iter_mut().zip(group).zip(keyed) {
                *hash = if message.key_len.is_some() { keyed } else { 0 };
            }
        }
        let rest = messages.remainder().iter();
        for (message, hash) in rest.zip(hashes.into_remainder()) {
            *hash = key_of(message).map_or(0, |key| format::key_hash(topic_id, key));
        }
    }

    /// Messages with a key (a key's hash is never 0).
    fn keyed_count(&self) -> u32 {
        self.scratch.key_hashes.iter().filter(|&&h| h != 0).count() as u32
    }

    /// Cuts the messages into batches that fit where the log's writer will put them
    /// (`local`: its position in a file of `file_bytes`, moved past each batch). A batch
    /// never spans segments or files and stays under `MAX_BATCH_BYTES` unless one message
    /// alone is bigger.
    fn plan(
        &mut self,
        staged: usize,
        local: &mut u64,
        file_bytes: u64,
        plan: &mut Vec<PlannedBatch>,
    ) -> Result<()> {
        let segment_messages = self.segment_messages;
        let slot_bytes = format::table_bytes(1, self.keyed) as u64;
        let (mut next, count) = (0, self.messages.len());
        while next < count {
            let first_offset = self.first_offset + next as u64;
            if first_offset % segment_messages == 0 {
                self.segment_bytes = 0;
            }
            let room = file_bytes.saturating_sub(*local + format::BLANK_BYTES as u64);
            let limit = room.min(format::MAX_BATCH_BYTES as u64);
            let (mut end, mut size) = (next, format::BATCH_HEADER_BYTES as u64);
            while end < count {
                let starts_segment = (self.first_offset + end as u64) % segment_messages == 0;
                if end > next && starts_segment {
                    break;
                }
                let cost = slot_bytes + self.messages[end].payload.len() as u64;
                if size + cost > if end == next { room } else { limit } {
                    break;
                }
                size += cost;
                end += 1;
            }
            if end == next {
                if *local == 0 {
                    // `max_message_bytes` is fitted to the files when the store opens.
                    return Err(StoreError::MessageTooLarge {
                        size: self.messages[next].payload.len(),
                        max: room.saturating_sub(size + slot_bytes) as usize,
                    });
                }
                *local = 0;
                continue;
            }
            let header = BatchHeader {
                size: size as u32,
                topic_id: self.topic_id,
                partition: self.partition_index,
                count: (end - next) as u32,
                first_offset,
                timestamp: self.timestamp,
                segment_position: self.segment_bytes,
                stream_position: self.stream_bytes,
                keyed: self.keyed,
            };
            let payload_bytes = header.payload_bytes() as u64;
            self.segment_bytes += payload_bytes;
            self.stream_bytes += payload_bytes;
            *local += size;
            plan.push(PlannedBatch {
                staged,
                messages: next..end,
                header,
            });
            next = end;
        }
        Ok(())
    }

    /// Copies one planned batch into the log and indexes its keys, in log order. The append
    /// lock is held, and every file and entry was reserved.
    fn copy(
        &mut self,
        batch: &PlannedBatch,
        table: &mut Vec<u8>,
        appender: &mut Appender<'_, 'a>,
        index: &mut IndexRoom<'_>,
    ) -> Result<()> {
        let messages = &self.messages[batch.messages.clone()];
        table.clear();
        let slots = messages.iter().map(|m| (m.payload.len(), m.key_len));
        format::encode_table(table, slots, batch.header.keyed);
        let runs = Runs {
            messages: messages.iter(),
            buffer: self.buffer,
            next: None,
        };
        let at = appender.copy_batch(&batch.header, table, runs)?;
        let mut position = at + batch.header.payload_start() as u64;
        let scratch = &mut self.scratch;
        for (number, slot) in batch.messages.clone().enumerate() {
            scratch.payload_positions[slot] = position;
            scratch.batch_positions[slot] = at;
            position += self.messages[slot].payload.len() as u64;
            let key_hash = scratch.key_hashes[slot];
            if key_hash != 0 {
                let place = MessageAt {
                    batch: at,
                    index: number as u32,
                };
                index.add(key_hash, place);
            }
        }
        Ok(())
    }

    /// Starts loading what [`publish`](Self::publish) will touch.
    fn prefetch_publish(&self) {
        prefetch(&*self.state);
        prefetch(&self.partition.end);
        if self.defer_entries {
            self.partition.queue.prefetch_pending();
        }
    }

    /// Writes the consume-queue entries and publishes the partition's new end: readers see
    /// the messages from here on. True when the entries waiting in memory should now go out
    /// on the queue writer's thread.
    fn publish(&mut self) -> bool {
        let partition = self.partition;
        let state = &mut *self.state;
        let scratch = &self.scratch;
        let entries = scratch
            .payload_positions
            .iter()
            .zip(scratch.batch_positions.iter())
            .zip(self.messages)
            .map(|((&position, &batch), message)| QueueEntry {
                commit_log_offset: position,
                size: message.payload.len() as u32,
                batch,
            });
        let ask_queue_writer = if self.defer_entries {
            let deferred = partition.queue.defer(self.first_offset, entries);
            state.entries_waiting = deferred.waiting;
            deferred.ask_queue_writer
        } else {
            // Older entries go to the file first: all of them, as they are `pending_file`'s
            // (only the writer adds entries, and others only write them out).
            partition
                .queue
                .write_out_pending(self.pending_file.as_ref());
            state.entries_waiting = 0;
            for (offset, entry) in (self.first_offset..).zip(entries) {
                partition.queue.put(&self.queue_files, offset, &entry);
            }
            state.queue_file = self
                .queue_files
                .last()
                .map_or_else(Weak::new, Arc::downgrade);
            false
        };
        let end_offset = self.first_offset + self.messages.len() as u64;
        state.next = end_offset;
        state.segment_bytes = self.segment_bytes;
        state.stream_bytes = self.stream_bytes;
        state.last_timestamp = self.timestamp;
        partition
            .last_timestamp
            .store(self.timestamp, Ordering::Release);
        partition
            .stream_end
            .store(self.stream_bytes, Ordering::Release);
        partition.end.store(end_offset, Ordering::Release);
        ask_queue_writer
    }

    fn outcome(&self) -> AppendOutcome {
        AppendOutcome {
            first_offset: self.first_offset,
            count: self.messages.len() as u64,
            timestamp: self.timestamp,
        }
    }
}

/// Appends batches to several partitions as one: all of them or, on error, none. The
/// partitions' writer locks are taken in (topic id, partition) order, so two such appends
/// never wait for each other in a circle. Outcomes come in the order of `batches`.
pub(super) fn append_together<'a>(
    to: &AppendTo<'_>,
    batches: &[(&'a Partition, &'a [NewMessage<'a>])],
    buffer: &'a [u8],
) -> Result<Vec<AppendOutcome>> {
    for (_, messages) in batches {
        check_messages(messages, to.max_message_bytes)?;
    }
    let key = |i: usize| (batches[i].0.topic_id, batches[i].0.index);
    let mut order: Vec<usize> = (0..batches.len()).collect();
    // The mount hands them over in partition order already.
    if !order.is_sorted_by_key(|&i| key(i)) {
        order.sort_unstable_by_key(|&i| key(i));
    }
    if order.windows(2).any(|pair| key(pair[0]) == key(pair[1])) {
        return Err(StoreError::InvalidSetting(
            "one append names a partition twice".into(),
        ));
    }
    let total = batches.iter().map(|(_, messages)| messages.len()).sum();
    // One clock read for the whole append, not one per partition.
    let now = now_ms();
    Scratch::with(total, |mut scratch| {
        let mut staged = Vec::with_capacity(batches.len());
        for (number, &i) in order.iter().enumerate() {
            if let Some(&ahead) = order.get(number + PREFETCH_AHEAD) {
                let partition = batches[ahead].0;
                prefetch(&partition.writer);
                partition.queue.prefetch_pending();
            }
            let (partition, messages) = batches[i];
            let (mine, rest) = scratch.split(messages.len());
            scratch = rest;
            staged.push(partition.stage(messages, buffer, mine, now)?);
        }
        commit(to, &mut staged)?;
        let mut outcomes = vec![None; batches.len()];
        for (&i, staged) in order.iter().zip(&staged) {
            outcomes[i] = Some(staged.outcome());
        }
        Ok(outcomes.into_iter().flatten().collect())
    })
}

/// Copies staged messages into the log under one hold of the append lock, after cutting
/// them into batches and reserving their index room and commit-log files there, then
/// publishes them.
fn commit(to: &AppendTo<'_>, staged: &mut [Staged<'_>]) -> Result<()> {
    let keyed = staged.iter().map(Staged::keyed_count).sum();
    let fence = {
        let mut appender = to.log.appender();
        // Checked again under the append lock: an append that failed while this one waited
        // for the lock fenced the store, and the log's end is no longer where it says.
        to.fence.check()?;
        let mut index = to.index.reserve(keyed, appender.position())?;
        if let Some(job) = index.populate_job() {
            to.log.prepare_later(job);
        }
        let file_bytes = appender.file_bytes();
        let mut local = appender.position() % file_bytes;
        let mut plan = Vec::new();
        for (number, batch) in staged.iter_mut().enumerate() {
            batch.plan(number, &mut local, file_bytes, &mut plan)?;
        }
        appender.reserve(plan.iter().map(|batch| u64::from(batch.header.size)))?;
        let fence = to.fence.on_unwind("while appending");
        let mut table = Vec::new();
        let copied = plan.iter().try_for_each(|batch| {
            staged[batch.staged].copy(batch, &mut table, &mut appender, &mut index)
        });
        if let Err(error) = copied.and_then(|()| appender.publish()) {
            // Index entries went in for batches the log may hold in part.
            appender.discard_unpublished();
            to.fence.after_failed_write(&error);
            return Err(error);
        }
        index.hand_over();
        fence
    };
    fail::fail_point!("append::after-log-publish");
    let mut write_out = Vec::new();
    for number in 0..staged.len() {
        if let Some(ahead) = staged.get(number + PREFETCH_AHEAD) {
            ahead.prefetch_publish();
        }
        if staged[number].publish() {
            let partition = staged[number].partition;
            write_out.push((partition.topic_id, partition.index));
        }
    }
    drop(fence);
    if !write_out.is_empty() {
        to.queue_writer.ask(&write_out);
    }
    Ok(())
}
