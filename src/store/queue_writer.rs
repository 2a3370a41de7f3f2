//! The thread that writes consume-queue entries waiting in memory into their files, off the
//! appending thread. An append spread over many partitions leaves an entry or two in each
//! (`ConsumeQueue::defer`); writing a partition's waiting entries out touches a page of its
//! own file (a TLB miss, cache misses, and a write-protect fault once writeback cleaned the
//! page), which was the writer's largest single cost at 10,000 partitions. Once most of a
//! partition's room for waiting entries is used, the append asks this thread to write them
//! out; readers find them in memory until then, and an append that finds the room full still
//! writes them out itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Acquire;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::append::Fence;
use super::Store;

/// How many partitions ahead the thread starts loading what it touches next: each write-out
/// begins with cache misses on the partition's locks, which wait for one another otherwise.
const PREFETCH_AHEAD: usize = 4;

/// A partition, named by topic id and index: the thread finds it again through the store, so
/// a request holds no reference that could keep a deleted topic alive.
pub(super) type PartitionId = (u32, u32);

#[derive(Default)]
pub(super) struct QueueWriter {
    state: Mutex<Requests>,
    condvar: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Requests {
    partitions: Vec<PartitionId>,
    /// From the thread's start until it is told to stop or ends.
    running: bool,
}

impl QueueWriter {
    /// Asks for the waiting entries of `partitions` to be written out (unless no thread runs
    /// to do it: requests are not kept for nobody).
    pub fn ask(&self, partitions: &[PartitionId]) {
        let mut state = self.state.lock();
        if !state.running {
            return;
        }
        let idle = state.partitions.is_empty();
        state.partitions.extend_from_slice(partitions);
        drop(state);
        // A thread with requests in hand takes the new ones after them, unwoken.
        if idle {
            self.condvar.notify_one();
        }
    }

    /// Starts the thread; a panic on it sets `fence`.
    pub fn start(self: &Arc<Self>, store: Weak<Store>, fence: Arc<Fence>) {
        self.state.lock().running = true;
        let writer = self.clone();
        let spawned = super::spawn_background("queue-writer", fence, move || {
            let _ended = Ended(&writer);
            writer.run(&store);
        });
        match spawned {
            Ok(thread) => *self.thread.lock() = Some(thread),
            // Waiting entries then go out when an append finds their room full, or at the
            // next checkpoint.
            Err(error) => {
                self.state.lock().running = false;
                tracing::error!("cannot start the consume-queue writer thread: {error}");
            }
        }
    }

    /// Stops the thread; entries still waiting go out at the next checkpoint (a clean close
    /// writes one), or are lost with the process (recovery rebuilds them from the log).
    pub fn stop(&self) {
        self.state.lock().running = false;
        self.condvar.notify_all();
        super::join_background(self.thread.lock().take());
    }

    fn run(&self, store: &Weak<Store>) {
        let mut asked = Vec::new();
        while self.wait(&mut asked) {
            let Some(store) = store.upgrade() else { return };
            if held_back() {
                asked.clear();
                continue;
            }
            let topics: HashMap<u32, _> = store.topics().into_iter().map(|t| (t.id, t)).collect();
            let partitions: Vec<_> = asked
                .drain(..)
                .filter_map(|(topic, index)| topics.get(&topic)?.partition(index))
                .collect();
            for (number, partition) in partitions.iter().enumerate() {
                if let Some(ahead) = partitions.get(number + PREFETCH_AHEAD) {
                    ahead.queue.prefetch_write_out();
                }
                // A deleted topic's entries went with its files.
                if !partition.topic_deleted.load(Acquire) {
                    partition.queue.write_out_waiting();
                }
            }
        }
    }

    /// Waits for requests and moves them into `asked`; false once stopped.
    fn wait(&self, asked: &mut Vec<PartitionId>) -> bool {
        let mut state = self.state.lock();
        while state.partitions.is_empty() && state.running {
            self.condvar.wait(&mut state);
        }
        std::mem::swap(asked, &mut state.partitions);
        state.running
    }
}

/// Marks the thread gone however it ends (its store dropped, or a panic), so that requests
/// no longer pile up for it.
struct Ended<'a>(&'a QueueWriter);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.running = false;
        state.partitions = Vec::new();
    }
}

/// Tests hold the thread back, as a busy machine might, to see that appends and checkpoints
/// write waiting entries out themselves.
fn held_back() -> bool {
    fail::fail_point!("queue-writer::held-back", |_| true);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_kept_only_while_the_thread_runs() {
        let writer = Arc::new(QueueWriter::default());
        writer.ask(&[(1, 0)]);
        assert!(writer.state.lock().partitions.is_empty(), "before start");
        writer.start(Weak::new(), Arc::default());
        writer.stop();
        writer.ask(&[(1, 0)]);
        assert!(writer.state.lock().partitions.is_empty(), "after stop");
    }

    #[test]
    fn requests_are_not_kept_once_the_thread_ended_on_its_own() {
        let writer = Arc::new(QueueWriter::default());
        // Its store is gone: the thread ends at its first request.
        writer.start(Weak::new(), Arc::default());
        writer.ask(&[(1, 0)]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while writer.state.lock().running {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        writer.ask(&[(1, 0)]);
        assert!(writer.state.lock().partitions.is_empty());
        writer.stop();
    }
}
