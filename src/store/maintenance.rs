//! The store's background work, on one thread: flushing the log (async policy), writing
//! checkpoints, and enforcing retention.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::checkpoint::{Checkpoint, PartitionMark};
use super::error::Result;
use super::partition::Partition;
use super::{now_ms, FlushPolicy, Store};

#[derive(Default)]
pub struct Handle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    pub fn start(&self, store: Weak<Store>) {
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("store-maintenance".into())
            .spawn(move || run(&store, &stop));
        match spawned {
            Ok(thread) => *self.thread.lock() = Some(thread),
            Err(error) => tracing::error!("cannot start the store's maintenance thread: {error}"),
        }
    }

    pub fn stop(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        let thread = self.thread.lock().take();
        // The thread itself may drop the last handle to the store.
        if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            let _ = thread.join();
        }
    }
}

fn run(store: &Weak<Store>, stop: &(Mutex<bool>, Condvar)) {
    let Some(config) = store.upgrade().map(|s| s.config.clone()) else {
        return;
    };
    let flush_every = match config.flush {
        FlushPolicy::Async { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
        FlushPolicy::Sync => None,
    };
    let checkpoint_every = Duration::from_millis(config.checkpoint_interval_ms.max(1));
    let retention_every = Duration::from_millis(config.retention_check_interval_ms.max(1));
    let tick = flush_every
        .unwrap_or(Duration::MAX)
        .min(checkpoint_every)
        .min(retention_every);
    let started = Instant::now();
    let (mut next_checkpoint, mut next_retention) =
        (started + checkpoint_every, started + retention_every);
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, tick);
            }
            if *stopped {
                return;
            }
        }
        let Some(store) = store.upgrade() else { return };
        let now = Instant::now();
        // A fenced store keeps its state for recovery: no retention, no checkpoint.
        let fenced = store.fence.is_set();
        if flush_every.is_some() {
            if let Err(error) = store.log.flush() {
                tracing::error!("flushing the commit log: {error}");
            }
        }
        if now >= next_retention && !fenced {
            next_retention = now + retention_every;
            if let Err(error) = store.enforce_retention() {
                tracing::error!("enforcing retention: {error}");
            }
            store.reserve.replenish();
        }
        if now >= next_checkpoint && !fenced {
            next_checkpoint = now + checkpoint_every;
            if let Err(error) = store.checkpoint() {
                tracing::error!("writing a checkpoint: {error}");
            }
        }
    }
}

impl Store {
    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics().iter().flat_map(|t| t.partitions()).collect()
    }

    /// Writes a checkpoint now (the background thread does so every
    /// `checkpoint_interval_ms`). Records a consistent point: the log's end, every partition's offsets and the index's
    /// size there, after writing out everything below it.
    pub fn checkpoint(&self) -> Result<()> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let (commit_log_end, index, partitions) = {
            let _quiet = self.quiesce.write();
            // No append is under way now; one that panicked has fenced the store by now.
            self.fence.check()?;
            let partitions: Vec<(Arc<Partition>, u64, u64, u64)> = self
                .all_partitions()
                .into_iter()
                .map(|p| {
                    let (start, end, stream_end) =
                        (p.start_offset(), p.end_offset(), p.stream_end());
                    (p, start, end, stream_end)
                })
                .collect();
            (self.log.written_end(), self.index.mark(), partitions)
        };
        self.log.flush()?;
        let mut marks = Vec::with_capacity(partitions.len());
        for (partition, start, end, stream_end) in partitions {
            let flushed = partition.flushed.load(std::sync::atomic::Ordering::Acquire);
            // Entries still in memory are below `end` or above it; either way, out first.
            partition.queue.write_out_pending_now()?;
            partition.queue.flush(flushed.max(start), end)?;
            partition
                .flushed
                .store(end, std::sync::atomic::Ordering::Release);
            marks.push(PartitionMark {
                topic_id: partition.topic_id,
                partition: partition.index,
                end,
                start,
                stream_end,
            });
        }
        self.index.flush()?;
        Checkpoint {
            commit_log_end,
            index,
            partitions: marks,
        }
        .save(&self.dir)
    }

    /// Runs retention now (the background thread does so every
    /// `retention_check_interval_ms`). Applies every topic's retention, removes commit-log files no partition needs any
    /// more, and enforces the store-wide disk ceiling.
    pub fn enforce_retention(&self) -> Result<()> {
        let mut changed = false;
        let outcome = self.remove_expired(&mut changed);
        if !changed {
            return outcome;
        }
        // What was removed is recorded even when a later step failed: a crash must not move
        // a partition's start back (the next pass would see nothing changed, and write none).
        let index = self.index.remove_before(self.log.min_offset());
        let checkpoint = self.checkpoint();
        outcome.and(index).and(checkpoint)
    }

    /// Moves partition starts and removes commit-log files as retention and the disk ceiling
    /// say; `changed` tells whether anything was removed, also when a step then failed.
    fn remove_expired(&self, changed: &mut bool) -> Result<()> {
        let now = now_ms();
        for topic in self.topics() {
            let settings = topic.settings();
            if settings.retention_ms.is_none() && settings.retention_bytes.is_none() {
                continue;
            }
            for partition in topic.partitions() {
                let moved =
                    partition.apply_retention(now, settings.retention_ms, settings.retention_bytes);
                // A failure part way may already have moved the start.
                *changed |= moved.as_ref().map_or(true, |&moved| moved);
                moved?;
            }
        }
        let deleted = self.log.delete_files_before(self.needed_log_offset());
        *changed |= deleted.as_ref().map_or(true, |files| !files.is_empty());
        deleted?;
        if let Some(ceiling) = self.config.max_disk_bytes {
            while self.disk_usage() > ceiling {
                if self.discard_a_segment_copy(ceiling)? {
                    *changed = true;
                    continue;
                }
                let Some(oldest) = self.log.oldest_sealed_file() else {
                    tracing::warn!(
                        "the store uses {} bytes, over max_disk_bytes {ceiling}, but only the file being written is left",
                        self.disk_usage()
                    );
                    break;
                };
                let file_end = oldest + self.log.file_bytes();
                *changed = true;
                for topic in self.topics() {
                    for partition in topic.partitions() {
                        if let Some((from, to)) = partition.drop_messages_before(file_end)? {
                            tracing::warn!(
                                "max_disk_bytes: topic {} partition {} lost offsets {from}..{to} early",
                                topic.name(),
                                partition.index()
                            );
                        }
                    }
                }
                self.log.delete_files_before(file_end)?;
            }
        }
        Ok(())
    }

    /// Removes one sealed segment's own file, if any has one: the commit log still holds its
    /// bytes, so the disk ceiling takes copies before it takes any message.
    fn discard_a_segment_copy(&self, ceiling: u64) -> Result<bool> {
        for topic in self.topics() {
            for partition in topic.partitions() {
                if let Some(bytes) = partition.segment_files.discard_lowest()? {
                    tracing::info!(
                        "max_disk_bytes ({ceiling}): removed a {bytes}-byte copy of a sealed segment of topic {} partition {}; it is served from the commit log again",
                        topic.name(),
                        partition.index()
                    );
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The oldest commit-log offset some partition still needs.
    fn needed_log_offset(&self) -> u64 {
        let written_end = self.log.written_end();
        self.all_partitions()
            .iter()
            .filter(|p| p.start_offset() < p.end_offset())
            // Not through the partitions' maps: that would open a file per partition.
            .filter_map(|p| p.queue.peek_entry(p.start_offset()))
            .map(|e| e.commit_log_offset)
            .min()
            .unwrap_or(written_end)
            .min(written_end)
    }
}

impl Partition {
    /// Moves the start past whole sealed segments that are older than `retention_ms` (by their
    /// newest message) or not needed to keep `retention_bytes`, as Kafka does: it deletes a
    /// segment only if what remains is still at least `retention_bytes`.
    pub(super) fn apply_retention(
        &self,
        now: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<bool> {
        let segments = match self.segments() {
            Ok(segments) => segments,
            Err(error) => {
                tracing::error!(
                    "retention skips topic {} partition {}: {error}",
                    self.topic_name,
                    self.index
                );
                return Ok(false);
            }
        };
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let start = self.start_offset();
        let mut new_start = start;
        for segment in segments.iter().take_while(|s| s.sealed) {
            let expired = retention_ms.is_some_and(|ms| {
                segment
                    .last_timestamp
                    .is_some_and(|t| t < now.saturating_sub(ms as i64))
            });
            let surplus = retention_bytes.is_some_and(|limit| total - segment.bytes >= limit);
            if !(expired || surplus) {
                break;
            }
            total -= segment.bytes;
            new_start = segment.base_offset + self.segment_messages;
        }
        if new_start == start {
            return Ok(false);
        }
        self.move_start(new_start)?;
        tracing::info!(
            "retention: topic {} partition {} now starts at offset {new_start} (was {start})",
            self.topic_name,
            self.index
        );
        Ok(true)
    }

    /// Drops the messages stored in commit-log files ending at or before `log_offset` (the
    /// disk ceiling is removing them): sealed segments go whole; the active one may lose its
    /// oldest messages. Returns the offsets lost.
    pub(super) fn drop_messages_before(&self, log_offset: u64) -> Result<Option<(u64, u64)>> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let low = self.queue.first_at_or_after(start, end, log_offset);
        if low == start {
            return Ok(None);
        }
        let base = self.segment_base(low);
        let new_start = if low > base && base + self.segment_messages <= end {
            base + self.segment_messages
        } else {
            low
        };
        self.move_start(new_start)?;
        Ok(Some((start, new_start)))
    }

    fn move_start(&self, new_start: u64) -> Result<()> {
        self.start
            .store(new_start, std::sync::atomic::Ordering::Release);
        self.queue.remove_before(new_start)?;
        self.segment_files
            .remove_before(self.segment_base(new_start))
    }
}
