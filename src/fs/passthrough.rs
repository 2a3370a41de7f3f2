//! FUSE passthrough for sealed segments that have files of their own: the kernel reads such
//! a segment straight from its file, and no READ reaches the daemon.
//!
//! The kernel allows one backing file per inode at a time, fails (`EIO` to the user's
//! `open`) a passthrough open of an inode that has page-cached opens, and any other open of
//! one in passthrough. So every open of an inode shares one [`BackingId`] while any is open,
//! and an inode with page-cached opens is given page-cached opens (the daemon reads the
//! segment's file for the kernel) until they are closed. Where passthrough is not granted
//! (kernel before 6.9, the daemon without `CAP_SYS_ADMIN`, or `passthrough = false`), every
//! open is served by the daemon.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use fuser::{BackingId, FileHandle, FopenFlags, InitFlags, KernelConfig, ReplyOpen};
use parking_lot::Mutex;

use super::core::Opened;

/// The backing file may sit on a stacked file system (overlayfs, as in a container).
const MAX_STACK_DEPTH: u32 = 2;

pub struct Passthrough {
    wanted: bool,
    granted: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What each open handle holds.
    by_handle: HashMap<u64, Held>,
    /// The backing file of each inode opened in passthrough.
    backing: HashMap<u64, Weak<BackingId>>,
    /// Page-cached opens of each inode.
    cached: HashMap<u64, usize>,
    /// A refused `open_backing` was logged (once per mount).
    refusal_logged: bool,
}

enum Held {
    Backing(u64, Arc<BackingId>),
    Cached(u64),
}

impl Passthrough {
    pub fn new(wanted: bool) -> Passthrough {
        Passthrough {
            wanted,
            granted: false,
            state: Mutex::default(),
        }
    }

    /// Asks the kernel for passthrough in the INIT reply, if wanted.
    pub fn init(&mut self, config: &mut KernelConfig) {
        if !self.wanted {
            tracing::info!("passthrough = false: the daemon reads segments' own files");
            return;
        }
        let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(MAX_STACK_DEPTH).is_ok();
        if !granted {
            tracing::info!(
                "this kernel offers no FUSE passthrough (Linux 6.9 or later): the daemon reads segments' own files"
            );
        }
        self.granted = granted;
    }

    /// Whether the kernel granted passthrough at init (and it was wanted).
    pub fn granted(&self) -> bool {
        self.granted
    }

    /// Replies to an open of inode `ino`: passed through to its segment's own file where
    /// the open offers one and the kernel takes it, otherwise as `opened.flags` say. Returns
    /// false when the kernel refused a backing file: then no later open should offer one.
    pub fn reply(&self, ino: u64, opened: Opened, reply: ReplyOpen) -> bool {
        let fh = opened.fh;
        let mut state = self.state.lock();
        let backing = |state: &State| state.backing.get(&ino).and_then(Weak::upgrade);
        let offered = opened.passthrough.filter(|_| self.granted);
        let mut refused = false;
        if let Some(file) = offered.filter(|_| !state.cached.contains_key(&ino)) {
            let id = match backing(&state) {
                Some(id) => Ok(id),
                None => reply.open_backing(&*file).map(Arc::new),
            };
            match id {
                Ok(id) => {
                    state.backing.insert(ino, Arc::downgrade(&id));
                    // The kernel refuses cache flags on a passthrough open.
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    state.by_handle.insert(fh, Held::Backing(ino, id));
                    return true;
                }
                Err(error) => {
                    refused = true;
                    if !state.refusal_logged {
                        state.refusal_logged = true;
                        tracing::warn!(
                            "the kernel refused a backing file for passthrough ({error}): the daemon reads segments' own files from now on"
                        );
                    }
                }
            }
        }
        if !opened.flags.contains(FopenFlags::FOPEN_DIRECT_IO) {
            *state.cached.entry(ino).or_default() += 1;
            state.by_handle.insert(fh, Held::Cached(ino));
        }
        reply.opened(FileHandle(fh), opened.flags);
        !refused
    }

    /// Handle `fh` was released: what it held goes.
    pub fn release(&self, fh: u64) {
        let mut state = self.state.lock();
        match state.by_handle.remove(&fh) {
            // The last open's release closes the backing file.
            Some(Held::Backing(ino, id)) if Arc::strong_count(&id) == 1 => {
                state.backing.remove(&ino);
            }
            Some(Held::Cached(ino)) => {
                if let Some(count) = state.cached.get_mut(&ino) {
                    *count -= 1;
                    if *count == 0 {
                        state.cached.remove(&ino);
                    }
                }
            }
            Some(Held::Backing(..)) | None => {}
        }
    }
}
