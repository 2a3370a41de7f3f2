//! The store's background work, on one thread: flushing the log (async policy), writing
//! checkpoints, and enforcing retention (`retention.rs`).

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::append::Fence;
use super::checkpoint::{Checkpoint, PartitionMark};
use super::error::Result;
use super::meta;
use super::partition::Partition;
use super::{FlushPolicy, Store};

#[derive(Default)]
pub struct Handle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Starts the thread; a panic on it sets `fence`.
    pub fn start(&self, store: Weak<Store>, fence: Arc<Fence>) {
        let stop = self.stop.clone();
        let spawned = super::spawn_background("store-maintenance", fence, move || {
            run(&store, &stop);
        });
        match spawned {
            Ok(thread) => *self.thread.lock() = Some(thread),
            Err(error) => tracing::error!("cannot start the store's maintenance thread: {error}"),
        }
    }

    pub fn stop(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        super::join_background(self.thread.lock().take());
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
    pub(super) fn all_partitions(&self) -> Vec<Arc<Partition>> {
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
        for &(ref partition, start, end, stream_end) in &partitions {
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
        // The queue and index files the checkpoint counts on must be found after a power
        // loss, or recovery rebuilds them from the whole log.
        let names = partitions.iter().map(|(p, ..)| p.queue.unsynced_names());
        meta::sync_names(&self.dir, names.chain([self.index.unsynced_names()]))?;
        Checkpoint {
            commit_log_end,
            index,
            partitions: marks,
        }
        .save(&self.dir)
    }
}
