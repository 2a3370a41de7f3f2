//! SIGTERM and SIGINT (`systemctl stop`, Ctrl-C) for the mirror: blocked in every thread
//! (librdkafka's included, so the mask must be set before they start) and counted by one
//! watcher thread; the main loop asks between its rounds and stops gracefully.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::stop_signals::StopSignals;

/// How many stop signals came, and the first one's number.
#[derive(Default)]
pub struct StopRequests {
    count: AtomicUsize,
    first: AtomicI32,
}

impl StopRequests {
    /// Blocks SIGTERM and SIGINT in this thread (and every thread it starts later) and
    /// starts the thread that counts them.
    pub fn watch() -> io::Result<Arc<StopRequests>> {
        let signals = StopSignals::block()?;
        let requests = Arc::new(StopRequests::default());
        let counted = requests.clone();
        std::thread::Builder::new()
            .name("mirror-signals".to_owned())
            .spawn(move || loop {
                let signal = signals.wait();
                // Only this thread writes: the number is there before the count says so.
                if counted.count.load(Ordering::SeqCst) == 0 {
                    counted.first.store(signal, Ordering::SeqCst);
                }
                if counted.count.fetch_add(1, Ordering::SeqCst) == 0 {
                    tracing::info!(
                        "signal {signal}: stopping: no new messages; waiting for Kafka to \
                         acknowledge those in flight, then writing positions (send it again \
                         to stop without waiting)"
                    );
                } else {
                    tracing::warn!("signal {signal} again: stopping without waiting for Kafka");
                }
            })?;
        Ok(requests)
    }

    /// The first stop signal's number, once one came.
    pub fn requested(&self) -> Option<i32> {
        (self.count.load(Ordering::SeqCst) > 0).then(|| self.first.load(Ordering::SeqCst))
    }

    /// Whether a second signal said not to wait.
    pub fn urgent(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 1
    }
}
