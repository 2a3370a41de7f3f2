//! SIGTERM and SIGINT (`systemctl stop`, Ctrl-C), blocked in every thread and taken by one
//! watcher thread: the mount and the mirror each stop in their own way when one comes.

use std::io;

/// SIGTERM and SIGINT, blocked in the thread that made this and every thread it starts
/// later (so it must come before any other thread starts).
pub(crate) struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    pub(crate) fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls
        // only touch `set` and this thread's signal mask.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let error = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if error != 0 {
                return Err(io::Error::from_raw_os_error(error));
            }
            Ok(StopSignals { set })
        }
    }

    /// Waits for the next one; returns its number.
    pub(crate) fn wait(&self) -> libc::c_int {
        let mut signal = 0;
        // SAFETY: `set` is initialised and `signal` is a valid place to write.
        while unsafe { libc::sigwait(&self.set, &mut signal) } != 0 {}
        signal
    }
}
