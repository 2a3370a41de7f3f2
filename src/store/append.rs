//! Appending: a partition encodes its messages and reserves their consume-queue room under
//! its own writer lock; the records are then copied into the commit log under the log's
//! append lock, together with their key-index entries, and published.
//!
//! Everything an append can fail for (consume-queue room, key-index room, commit-log files)
//! is obtained before its first byte is copied, so a failed append stores nothing. From the
//! first byte copied to the partitions' published ends nothing can fail; should something
//! panic there all the same, the store is fenced: see [`Fence`].

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::MutexGuard;

use super::commitlog::{Appender, CommitLog};
use super::error::{Result, StoreError};
use super::format::{self, QueueEntry, RecordHeader, RECORD_HEADER_BYTES};
use super::index::{IndexRoom, KeyIndex};
use super::partition::{Partition, WriteState};
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

    /// Fences the store if it is dropped while its thread unwinds from a panic.
    fn on_unwind(&self) -> FenceOnUnwind<'_> {
        FenceOnUnwind(self)
    }
}

struct FenceOnUnwind<'f>(&'f Fence);

impl Drop for FenceOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fenced.store(true, Ordering::Release);
            tracing::error!("{}", StoreError::Fenced);
        }
    }
}

/// What an append needs of the store around its partitions.
pub(super) struct AppendTo<'s> {
    pub log: &'s CommitLog,
    pub index: &'s KeyIndex,
    pub fence: &'s Fence,
    pub max_message_bytes: usize,
}

/// Room for the encoding of a batch: a slot per message.
pub(super) struct Scratch<'s> {
    pub headers: &'s mut [[u8; RECORD_HEADER_BYTES]],
    pub positions: &'s mut [u64],
    pub key_hashes: &'s mut [u64],
}

impl<'s> Scratch<'s> {
    /// Runs `f` with room for `count` messages, on the stack when there is one.
    pub fn with<T>(count: usize, f: impl FnOnce(Scratch<'_>) -> T) -> T {
        if count == 1 {
            let (mut headers, mut positions, mut key_hashes) =
                ([[0u8; RECORD_HEADER_BYTES]; 1], [0; 1], [0; 1]);
            return f(Scratch {
                headers: &mut headers,
                positions: &mut positions,
                key_hashes: &mut key_hashes,
            });
        }
        let mut headers = vec![[0u8; RECORD_HEADER_BYTES]; count];
        let (mut positions, mut key_hashes) = (vec![0; count], vec![0; count]);
        f(Scratch {
            headers: &mut headers,
            positions: &mut positions,
            key_hashes: &mut key_hashes,
        })
    }

    /// The first `count` slots, and the rest.
    fn split(self, count: usize) -> (Scratch<'s>, Scratch<'s>) {
        let (headers, more_headers) = self.headers.split_at_mut(count);
        let (positions, more_positions) = self.positions.split_at_mut(count);
        let (key_hashes, more_key_hashes) = self.key_hashes.split_at_mut(count);
        (
            Scratch {
                headers,
                positions,
                key_hashes,
            },
            Scratch {
                headers: more_headers,
                positions: more_positions,
                key_hashes: more_key_hashes,
            },
        )
    }
}

/// Refuses a batch with a message over `max_message_bytes` or a key longer than its message.
fn check_messages(messages: &[NewMessage<'_>], max_message_bytes: usize) -> Result<()> {
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

/// One partition's batch, encoded, with its consume-queue room reserved; holds the
/// partition's writer lock until it is published or dropped.
pub(super) struct Staged<'a> {
    partition: &'a Partition,
    state: MutexGuard<'a, WriteState>,
    messages: &'a [NewMessage<'a>],
    scratch: Scratch<'a>,
    first_offset: u64,
    timestamp: i64,
    /// The active segment's size once the batch is in.
    segment_bytes: u64,
}

impl Partition {
    /// Appends messages in order, with consecutive offsets: all of them or, on error, none.
    /// `scratch` has a slot per message.
    pub(super) fn append<'a>(
        &'a self,
        to: &AppendTo<'_>,
        messages: &'a [NewMessage<'a>],
        scratch: Scratch<'a>,
    ) -> Result<AppendOutcome> {
        check_messages(messages, to.max_message_bytes)?;
        let mut staged = [self.stage(messages, scratch, now_ms())?];
        commit(to, &mut staged)?;
        Ok(staged[0].outcome())
    }

    /// Takes the writer lock, stamps (with `now`, or the partition's last timestamp if that
    /// is later) and encodes the batch (outside the append lock: only the copy is serial)
    /// and reserves its consume-queue room.
    fn stage<'a>(
        &'a self,
        messages: &'a [NewMessage<'a>],
        scratch: Scratch<'a>,
        now: i64,
    ) -> Result<Staged<'a>> {
        let state = self.writer.lock();
        if self.topic_deleted.load(Ordering::Acquire) {
            return Err(StoreError::NoSuchTopic(self.topic_name.clone()));
        }
        // The queue entry's cache line loads while the records are encoded.
        self.queue.prefetch(&state.queue_file, state.next);
        let mut staged = Staged {
            partition: self,
            first_offset: state.next,
            timestamp: now.max(state.last_timestamp),
            segment_bytes: state.segment_bytes,
            state,
            messages,
            scratch,
        };
        staged.encode();
        fail::fail_point!("append::reserve-queue", |_| Err(StoreError::DiskFull(
            "reserving consume-queue room (failpoint append::reserve-queue)".into()
        )));
        let end_offset = staged.first_offset + messages.len() as u64;
        self.reserve_queue(&mut staged.state, staged.first_offset, end_offset)?;
        Ok(staged)
    }
}

impl Staged<'_> {
    /// Fills the scratch headers (with their CRCs) and key hashes.
    fn encode(&mut self) {
        let partition = self.partition;
        let slots = self.scratch.headers.iter_mut();
        let slots = slots.zip(self.scratch.key_hashes.iter_mut());
        let offsets = self.first_offset..;
        for ((offset, message), (bytes, key_hash)) in offsets.zip(self.messages).zip(slots) {
            if offset % partition.segment_messages == 0 {
                self.segment_bytes = 0;
            }
            let header = RecordHeader {
                size: (RECORD_HEADER_BYTES + message.payload.len()) as u32,
                topic_id: partition.topic_id,
                partition: partition.index,
                key_len: message.key_len.map(|k| k as u32),
                offset,
                timestamp: self.timestamp,
                segment_position: self.segment_bytes,
            };
            *key_hash = message.key_len.map_or(0, |k| {
                format::key_hash(partition.topic_id, &message.payload[..k])
            });
            header.encode(bytes);
            let crc = format::record_crc(bytes, message.payload);
            bytes[8..12].copy_from_slice(&crc.to_le_bytes());
            self.segment_bytes += message.payload.len() as u64;
        }
    }

    /// Messages with a key (a key's hash is never 0).
    fn keyed_count(&self) -> u32 {
        self.scratch.key_hashes.iter().filter(|&&h| h != 0).count() as u32
    }

    fn record_sizes(&self) -> impl Iterator<Item = u64> + '_ {
        let sizes = self.messages.iter();
        sizes.map(|m| (RECORD_HEADER_BYTES + m.payload.len()) as u64)
    }

    /// Copies the records into the log and indexes their keys, in log order. The append
    /// lock is held, and every file and entry was reserved.
    fn copy(&mut self, appender: &mut Appender<'_>, index: &mut IndexRoom<'_>) {
        let scratch = &mut self.scratch;
        let slots = scratch.positions.iter_mut().zip(scratch.key_hashes.iter());
        let records = scratch.headers.iter().zip(self.messages);
        for ((header, message), (position, &key_hash)) in records.zip(slots) {
            *position = appender.copy(header, message.payload);
            if key_hash != 0 {
                index.insert(key_hash, *position);
            }
        }
    }

    /// Writes the consume-queue entries and publishes the partition's new end: readers see
    /// the messages from here on.
    fn publish(&mut self) {
        let partition = self.partition;
        let state = &mut *self.state;
        let scratch = &self.scratch;
        let entries = scratch.positions.iter().zip(scratch.key_hashes.iter());
        for ((offset, message), (&position, &key_hash)) in
            (self.first_offset..).zip(self.messages).zip(entries)
        {
            let entry = QueueEntry {
                commit_log_offset: position,
                size: (RECORD_HEADER_BYTES + message.payload.len()) as u32,
                key_hash,
            };
            partition.queue.put(&mut state.queue_file, offset, &entry);
        }
        let end_offset = self.first_offset + self.messages.len() as u64;
        state.next = end_offset;
        state.segment_bytes = self.segment_bytes;
        state.last_timestamp = self.timestamp;
        partition
            .last_timestamp
            .store(self.timestamp, Ordering::Release);
        partition.end.store(end_offset, Ordering::Release);
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
) -> Result<Vec<AppendOutcome>> {
    for (_, messages) in batches {
        check_messages(messages, to.max_message_bytes)?;
    }
    let mut order: Vec<usize> = (0..batches.len()).collect();
    order.sort_unstable_by_key(|&i| (batches[i].0.topic_id, batches[i].0.index));
    let key = |i: usize| (batches[i].0.topic_id, batches[i].0.index);
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
        for &i in &order {
            let (partition, messages) = batches[i];
            let (mine, rest) = scratch.split(messages.len());
            scratch = rest;
            staged.push(partition.stage(messages, mine, now)?);
        }
        commit(to, &mut staged)?;
        let mut outcomes: Vec<(usize, AppendOutcome)> = order
            .iter()
            .zip(&staged)
            .map(|(&i, s)| (i, s.outcome()))
            .collect();
        outcomes.sort_unstable_by_key(|&(i, _)| i);
        Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
    })
}

/// Copies staged batches into the log under one hold of the append lock, after reserving
/// their index room and commit-log files there, then publishes them.
fn commit(to: &AppendTo<'_>, staged: &mut [Staged<'_>]) -> Result<()> {
    let keyed = staged.iter().map(Staged::keyed_count).sum();
    let fence = {
        let mut appender = to.log.appender();
        let mut index = to.index.reserve(keyed, appender.position())?;
        appender.reserve(staged.iter().flat_map(Staged::record_sizes))?;
        let fence = to.fence.on_unwind();
        for batch in staged.iter_mut() {
            batch.copy(&mut appender, &mut index);
        }
        appender.publish();
        fence
    };
    fail::fail_point!("append::after-log-publish");
    for batch in staged.iter_mut() {
        batch.publish();
    }
    drop(fence);
    Ok(())
}
