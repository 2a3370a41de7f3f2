//! Room kept for metadata changes on a full disk: `reserve/0` … `reserve/7`, small files of
//! zeroes whose blocks are written. When a topic file cannot be replaced because the disk is
//! full, its new content is written into a reserve file instead, over blocks it already has,
//! and that file is renamed over the topic file: no block is allocated, and no writer can
//! take the room first. So lowering a topic's retention — how space is freed — works when
//! nothing else can be written (deleting a topic only removes files). The maintenance thread
//! makes used reserve files again once there is room.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::error::{Result, StoreError};
use super::meta::{sync_dir, write_atomically};

pub const RESERVE_DIR: &str = "reserve";
const FILES: usize = 8;
/// Room for any topic file (a few hundred bytes) many times over.
const FILE_BYTES: usize = 16 << 10;

pub struct Reserve {
    dir: PathBuf,
    /// The reserve files present, by number.
    ready: Mutex<Vec<usize>>,
}

impl Reserve {
    /// The reserve of the store in `store_dir`, made whole now if there is room (on a full
    /// disk, later).
    pub fn open(store_dir: &Path) -> Reserve {
        let dir = store_dir.join(RESERVE_DIR);
        let ready = (0..FILES)
            .filter(|&n| {
                std::fs::metadata(dir.join(n.to_string()))
                    .is_ok_and(|m| m.len() == FILE_BYTES as u64)
            })
            .collect();
        let reserve = Reserve {
            dir,
            ready: Mutex::new(ready),
        };
        reserve.replenish();
        reserve
    }

    /// Makes the reserve files that are missing; on a full disk, leaves them for a later call.
    pub fn replenish(&self) {
        fail::fail_point!("reserve::replenish", |_| ());
        let mut ready = self.ready.lock();
        if ready.len() == FILES {
            return;
        }
        let was_used = !ready.is_empty() || self.dir.exists();
        for n in 0..FILES {
            if ready.contains(&n) {
                continue;
            }
            if let Err(error) = self.make(n) {
                tracing::debug!("the reserve for metadata changes stays short: {error}");
                return;
            }
            ready.push(n);
        }
        if was_used {
            tracing::info!(
                "the reserve for metadata changes is whole again ({FILES} files in {})",
                self.dir.display()
            );
        }
    }

    /// Writes reserve file `n` whole under a temporary name, so that a file of that name
    /// has all its blocks. Not synced: one a crash loses or leaves short is made again at
    /// open, and `write_in_reserve` syncs what it writes.
    fn make(&self, n: usize) -> Result<()> {
        let io = |path: &Path, e| StoreError::io(format!("writing {}", path.display()), e);
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let path = self.dir.join(n.to_string());
        let temporary = self.dir.join(format!("{n}.tmp"));
        let written = std::fs::write(&temporary, [0; FILE_BYTES])
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(&path, error));
        }
        Ok(())
    }

    /// Replaces `dir/name` with `bytes` as [`write_atomically`] does; on a full disk, the
    /// bytes are written into a reserve file, which is then renamed over `dir/name`.
    pub fn write_atomically(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
        match write_atomically(dir, name, bytes) {
            Err(StoreError::DiskFull(why)) if bytes.len() <= FILE_BYTES => {
                // The temporary file of the failed try may hold blocks; they are freed.
                let _ = std::fs::remove_file(dir.join(format!("{name}.tmp")));
                self.write_in_reserve(dir, name, bytes, why)
            }
            other => other,
        }
    }

    fn write_in_reserve(&self, dir: &Path, name: &str, bytes: &[u8], why: String) -> Result<()> {
        let mut ready = self.ready.lock();
        let Some(&n) = ready.last() else {
            return Err(StoreError::DiskFull(format!(
                "{why}; the reserve kept for metadata changes is used up"
            )));
        };
        let spare = self.dir.join(n.to_string());
        let target = dir.join(name);
        let io = |what: &str, e| StoreError::io(format!("{what} {}", spare.display()), e);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&spare)
            .map_err(|e| io("opening", e))?;
        file.write_all_at(bytes, 0)
            .and_then(|()| file.set_len(bytes.len() as u64))
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", e))?;
        std::fs::rename(&spare, &target).map_err(|e| io("renaming", e))?;
        ready.pop();
        sync_dir(dir)?;
        tracing::warn!(
            "the disk is full ({why}): {} written using one of the files kept in reserve for metadata changes ({} left; made again once there is room)",
            target.display(),
            ready.len()
        );
        Ok(())
    }
}
