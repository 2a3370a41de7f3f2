//! Sealed segments as files of their own (reads go Kafka's way): a background thread copies
//! each sealed segment's bytes, exactly as its file in the mount shows them, to
//! `segments/<topic id>/<partition>/<20-digit base offset>.log` in the data directory, so the
//! mount can have the kernel serve them from there.
//!
//! A copy is written under `<name>.partial`, checked (every batch's CRC32C on the way, and
//! its length against the segment's), fsynced, then renamed: a file under its final name is
//! always whole. A stop or a crash part way leaves a `.partial` file, which the next open
//! removes; the copy is then made again. The commit log is flushed at the start of each pass
//! over the partitions; a copy of bytes that a power loss then took from the log does not
//! match its segment at the next open, which removes it and copies the segment again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::append::Fence;
use super::error::{Result, StoreError};
use super::format;
use super::meta::sync_dir;
use super::partition::{Partition, Topic};
use super::Store;

pub(super) const SEGMENTS_DIR: &str = "segments";
const PARTIAL_SUFFIX: &str = ".partial";
pub(super) const FILE_SUFFIX: &str = ".log";
/// Next to a segment's file once the commit log gave back its messages' bytes (`released`):
/// the file is then their only copy, never removed or made again while the segment is stored.
pub(super) const RELEASED_SUFFIX: &str = ".log.released";
/// Bytes copied per read of the segment.
const COPY_CHUNK: usize = 1 << 20;
/// How often the thread looks for newly sealed segments.
const POLL: Duration = Duration::from_millis(200);
/// How long the thread waits after a copy failed for a reason that may pass (a full disk).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long copying waits while the commit log keeps growing: a copy takes CPU and page cache
/// from the writer (on two cores, a `cat` and the daemon's writer use both), so a burst of
/// appends is copied once it ends, and a writer that never pauses waits at most this long.
const PUT_OFF_WHILE_WRITING: Duration = Duration::from_secs(5);

/// The directory of a topic's segment files.
pub(super) fn topic_dir(dir: &Path, topic_id: u32) -> PathBuf {
    dir.join(SEGMENTS_DIR).join(topic_id.to_string())
}

/// One partition's segments that are files of their own.
pub(super) struct SegmentFiles {
    dir: PathBuf,
    /// Base offset → length of each segment's file.
    files: Mutex<BTreeMap<u64, u64>>,
    /// Sealed segments below this base were looked at by this run (made, or refused).
    looked_at: AtomicU64,
    /// Segments whose bytes in the commit log this run gave back (see `released`).
    pub(super) released: Mutex<BTreeSet<u64>>,
    /// Segments marked (on disk) as having given back their bytes in the log, in any run.
    marked: Mutex<BTreeSet<u64>>,
    /// The last batch of a released segment read from its file (by its commit-log offset),
    /// checked against its CRC32C (see `released`).
    pub(super) last_read: Mutex<Option<(u64, Arc<[u8]>)>>,
}

impl SegmentFiles {
    /// The files in `dir` (none if it does not exist); `.partial` leftovers of an
    /// interrupted copy are removed.
    pub fn open(dir: PathBuf) -> Result<SegmentFiles> {
        let mut files = BTreeMap::new();
        let mut marked = BTreeSet::new();
        let listing = |e| StoreError::io(format!("listing {}", dir.display()), e);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(listing)?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.ends_with(PARTIAL_SUFFIX) {
                        tracing::info!(
                            "removing {}, a segment copy a stop interrupted",
                            entry.path().display()
                        );
                        remove(&entry.path())?;
                        continue;
                    }
                    if let Some(base) = name
                        .strip_suffix(RELEASED_SUFFIX)
                        .and_then(format::parse_file_name)
                    {
                        marked.insert(base);
                        continue;
                    }
                    let base = name
                        .strip_suffix(FILE_SUFFIX)
                        .and_then(format::parse_file_name);
                    let len = entry.metadata().map_err(listing)?.len();
                    if let Some(base) = base {
                        files.insert(base, len);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listing(e)),
        }
        Ok(SegmentFiles {
            dir,
            files: Mutex::new(files),
            looked_at: AtomicU64::new(0),
            released: Mutex::default(),
            marked: Mutex::new(marked),
            last_read: Mutex::default(),
        })
    }

    /// The bases of the segments that have files, lowest first.
    pub fn bases(&self) -> Vec<u64> {
        self.files.lock().keys().copied().collect()
    }

    /// Marks, durably, that the commit log gives back segment `base`'s bytes: from then on
    /// its file is never removed or remade while the segment is stored.
    /// The marker holds `shift`, the segment position of the file's first byte, so that
    /// recovery, `check` and `dump` find a batch's bytes in the file without the partition.
    pub fn mark_released(&self, base: u64, shift: u64) -> Result<()> {
        if self.marked.lock().contains(&base) {
            return Ok(());
        }
        let path = self.marker_path(base);
        File::create(&path)
            .and_then(|mut f| {
                writeln!(f, "{shift}")?;
                f.sync_all()
            })
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        sync_dir(&self.dir)?;
        self.marked.lock().insert(base);
        Ok(())
    }

    /// Whether the commit log gave back segment `base`'s bytes (in any run).
    pub fn is_marked(&self, base: u64) -> bool {
        self.marked.lock().contains(&base)
    }

    fn marker_path(&self, base: u64) -> PathBuf {
        self.dir
            .join(format!("{}{RELEASED_SUFFIX}", format::file_name(base)))
    }

    pub fn file_path(&self, base: u64) -> PathBuf {
        self.path(base)
    }

    fn path(&self, base: u64) -> PathBuf {
        self.dir
            .join(format!("{}{FILE_SUFFIX}", format::file_name(base)))
    }

    pub fn contains(&self, base: u64) -> bool {
        self.files.lock().contains_key(&base)
    }

    /// Segment `base`'s file, opened for reading, if it has one.
    pub fn open_file(&self, base: u64) -> Option<File> {
        let files = self.files.lock();
        files.contains_key(&base).then_some(())?;
        match File::open(self.path(base)) {
            Ok(file) => Some(file),
            Err(error) => {
                tracing::warn!(
                    "opening {}: {error}; reading that segment from the commit log",
                    self.path(base).display()
                );
                None
            }
        }
    }

    /// The length of segment `base`'s file, if it has one.
    pub fn len(&self, base: u64) -> Option<u64> {
        self.files.lock().get(&base).copied()
    }

    /// Fills `buf` from byte `at` of segment `base`'s file; an error naming the file if it
    /// is missing or shorter.
    pub fn read_exact_at(&self, base: u64, at: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.path(base);
        File::open(&path)
            .and_then(|file| file.read_exact_at(buf, at))
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))
    }

    pub fn disk_bytes(&self) -> u64 {
        self.files.lock().values().sum()
    }

    /// Removes the files of segments below `base` (retention or the disk ceiling removed
    /// them). A reader that has one open keeps reading it until it closes it.
    pub fn remove_before(&self, base: u64) -> Result<()> {
        let mut files = self.files.lock();
        let gone: Vec<u64> = files.range(..base).map(|(&b, _)| b).collect();
        for old in gone {
            remove(&self.path(old))?;
            files.remove(&old);
        }
        let mut marked = self.marked.lock();
        let unmarked: Vec<u64> = marked.range(..base).copied().collect();
        for old in unmarked {
            remove(&self.marker_path(old))?;
            marked.remove(&old);
        }
        Ok(())
    }

    /// Removes the file of the lowest segment that has one the commit log still holds the
    /// bytes of, returning its length: the disk ceiling takes copies before messages. The
    /// file of a segment whose bytes the log gave back is their only copy and stays.
    pub fn discard_lowest(&self) -> Result<Option<u64>> {
        let mut files = self.files.lock();
        let marked = self.marked.lock();
        let Some((&base, &len)) = files.iter().find(|(base, _)| !marked.contains(base)) else {
            return Ok(None);
        };
        drop(marked);
        remove(&self.path(base))?;
        files.remove(&base);
        Ok(Some(len))
    }

    /// Removes segment `base`'s file: it does not match the segment. The file of a segment
    /// whose bytes the log gave back is their only copy: it is an error instead.
    fn discard(&self, base: u64, why: &str) -> Result<()> {
        if self.marked.lock().contains(&base) {
            return Err(StoreError::Corrupt {
                path: self.path(base),
                offset: 0,
                reason: format!(
                    "{why}, and it is the only copy of the segment's messages (the commit log gave back their bytes)"
                ),
            });
        }
        tracing::warn!(
            "removing {}: {why}; the segment is copied again",
            self.path(base).display()
        );
        remove(&self.path(base))?;
        self.files.lock().remove(&base);
        Ok(())
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
    }
}

/// Removes the segment files of topics the store no longer has (deleted while the store was
/// down, or before their files were removed).
pub(super) fn remove_orphans(dir: &Path, topic_ids: &[u32]) -> Result<()> {
    let root = dir.join(SEGMENTS_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        // Only topic directories are the store's: anything else put there is left alone.
        let Some(id) = id.filter(|_| entry.file_type().is_ok_and(|t| t.is_dir())) else {
            tracing::warn!(
                "{} is not a topic's directory of segment files; left alone",
                entry.path().display()
            );
            continue;
        };
        if topic_ids.contains(&id) {
            continue;
        }
        tracing::info!(
            "removing the segment files of a deleted topic: {}",
            entry.path().display()
        );
        std::fs::remove_dir_all(entry.path())
            .map_err(|e| StoreError::io(format!("removing {}", entry.path().display()), e))?;
    }
    Ok(())
}

impl Partition {
    /// Keeps only the segment files that are this partition's sealed segments as they are
    /// now, at their length (a file of a segment that recovery found unsealed, or of one
    /// retention removed while the store was down, goes).
    pub(super) fn check_segment_files(&self) -> Result<()> {
        let files: Vec<(u64, u64)> = self
            .segment_files
            .files
            .lock()
            .iter()
            .map(|(&b, &l)| (b, l))
            .collect();
        let first = self.segment_base(self.start_offset());
        self.segment_files.remove_before(first)?;
        let marked = self.segment_files.marked.lock().clone();
        if let Some(&lost) = marked.iter().find(|&&b| !self.segment_files.contains(b)) {
            return Err(StoreError::Corrupt {
                path: self.segment_files.path(lost),
                offset: 0,
                reason: "the file is missing, and it was the only copy of the segment's messages (the commit log gave back their bytes)".into(),
            });
        }
        for (base, len) in files.into_iter().filter(|&(base, _)| base >= first) {
            match self.segment(base) {
                Ok(Some(info)) if info.sealed && info.bytes == len => {}
                Ok(Some(info)) if info.sealed => self.segment_files.discard(
                    base,
                    &format!("it holds {len} bytes, the segment {}", info.bytes),
                )?,
                _ => self
                    .segment_files
                    .discard(base, "its segment is not a sealed segment of the partition")?,
            }
        }
        Ok(())
    }

    /// Whether segment `base` is no longer stored (retention, the disk ceiling or `rmdir`
    /// removed it).
    fn segment_gone(&self, base: u64) -> bool {
        base + self.segment_messages <= self.start_offset()
            || self.topic_deleted.load(Ordering::Acquire)
    }

    /// Copies sealed segment `base` to its own file; false if it was not made (the segment
    /// is gone, or `stop` was set). Every batch copied is checked against its CRC32C, so a
    /// damaged log is refused (an error), never copied.
    fn materialize(self: &Arc<Self>, base: u64, stop: &AtomicBool) -> Result<bool> {
        let files = &self.segment_files;
        let reader = self.open_segment_in_log(base)?;
        let info = reader.info()?;
        if !info.sealed {
            return Ok(false);
        }
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| StoreError::io(format!("creating {}", files.dir.display()), e))?;
        let path = files.path(base);
        let partial = PathBuf::from(format!("{}{PARTIAL_SUFFIX}", path.display()));
        let copied = copy(&reader, &partial, stop);
        let made = copied.and_then(|len| {
            let Some(len) = len else { return Ok(false) };
            if len != info.bytes {
                return Err(StoreError::Corrupt {
                    path: files.path(base),
                    offset: len,
                    reason: format!(
                        "copying the segment gave {len} bytes, where it holds {}",
                        info.bytes
                    ),
                });
            }
            let mut kept = files.files.lock();
            // Retention or a topic deletion may have taken the segment meanwhile.
            if self.segment_gone(base) {
                return Ok(false);
            }
            std::fs::rename(&partial, &path)
                .map_err(|e| StoreError::io(format!("renaming {}", partial.display()), e))?;
            kept.insert(base, info.bytes);
            sync_dir(&files.dir)?;
            Ok(true)
        });
        if !matches!(made, Ok(true)) {
            remove(&partial)?;
        }
        made
    }
}

/// Writes every byte `reader` serves to a new file at `path`, then fsyncs it; `None` if
/// `stop` was set part way.
fn copy(reader: &super::SegmentReader, path: &Path, stop: &AtomicBool) -> Result<Option<u64>> {
    let failed = |e| StoreError::io(format!("writing {}", path.display()), e);
    let mut out = File::create(path).map_err(failed)?;
    let mut buffer = vec![0u8; COPY_CHUNK];
    let mut at = 0u64;
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(None);
        }
        let n = reader.read_at(at, &mut buffer)?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n]).map_err(failed)?;
        at += n as u64;
        // Tests stop (`sleep`) or fail (`return`) a copy part way.
        fail::fail_point!("materialize::copy", |_| Err(failed(
            std::io::Error::from_raw_os_error(libc::EIO)
        )));
    }
    out.sync_all().map_err(failed)?;
    Ok(Some(at))
}

impl Store {
    /// Gives every sealed segment that has no file of its own one now, and returns how many
    /// it made (the background thread does this as segments are sealed, when
    /// `materialize_segments` is on).
    pub fn materialize_sealed(&self) -> Result<usize> {
        self.materialize_pass(&AtomicBool::new(false))
    }

    fn materialize_pass(&self, stop: &AtomicBool) -> Result<usize> {
        let _one_at_a_time = self.materializing.lock();
        let mut made = 0;
        let mut flushed = false;
        for topic in self.topics() {
            for partition in topic.partitions() {
                let files = &partition.segment_files;
                let active = partition.active_base();
                let first = partition.segment_base(partition.start_offset());
                let mut base = files.looked_at.load(Ordering::Acquire).max(first);
                while base < active && !stop.load(Ordering::Acquire) {
                    if !files.contains(base) {
                        if !flushed {
                            self.log.flush()?;
                            flushed = true;
                        }
                        if self.materialize_one(&topic, &partition, base, stop)? {
                            made += 1;
                        }
                    }
                    base += partition.segment_messages;
                    files.looked_at.store(base, Ordering::Release);
                }
            }
        }
        Ok(made)
    }

    /// Copies segment `base` of `partition` unless the copy would take the store past
    /// `max_disk_bytes` (the ceiling would then delete messages to make room for a second
    /// copy of others); true if it was made. A segment whose log is damaged stays served
    /// from the log, and the log says why.
    fn materialize_one(
        &self,
        topic: &Topic,
        partition: &Arc<Partition>,
        base: u64,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let name = || {
            format!(
                "topic {} partition {} segment {base}",
                topic.name(),
                partition.index()
            )
        };
        if let Some(ceiling) = self.config.max_disk_bytes {
            let bytes = partition
                .segment(base)
                .ok()
                .flatten()
                .map_or(0, |s| s.bytes);
            if self.disk_usage() + bytes > ceiling {
                tracing::info!(
                    "{} is served from the commit log, not copied: a copy of its {bytes} bytes would take the store past max_disk_bytes ({ceiling})",
                    name()
                );
                return Ok(false);
            }
        }
        match partition.materialize(base, stop) {
            Ok(made) => {
                if made {
                    crate::metrics::segment_materialized();
                }
                Ok(made)
            }
            Err(error @ StoreError::Corrupt { .. }) => {
                tracing::error!(
                    "{} is served from the commit log, not copied: {error}",
                    name()
                );
                Ok(false)
            }
            // Retention or `rmdir` took the segment while it was copied.
            Err(_) if partition.segment_gone(base) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// The thread that copies sealed segments to their own files.
#[derive(Default)]
pub struct Handle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Seen by a copy under way, so a stop need not wait for a whole segment.
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Starts the thread; a panic on it sets `fence`.
    pub fn start(&self, store: Weak<Store>, fence: Arc<Fence>) {
        let (stop, stopping) = (self.stop.clone(), self.stopping.clone());
        let spawned = super::spawn_background("store-materialize", fence, move || {
            run(&store, &stop, &stopping);
        });
        match spawned {
            Ok(thread) => *self.thread.lock() = Some(thread),
            Err(error) => tracing::error!("cannot start the segment-copying thread: {error}"),
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        super::join_background(self.thread.lock().take());
    }
}

/// Whether the writer is busy enough to put copying off (see `PUT_OFF_WHILE_WRITING`).
struct WriterActivity {
    /// The commit log's end at the previous look.
    seen_end: u64,
    /// Since when copying has been put off for a writer that keeps appending.
    writing_since: Option<Instant>,
}

impl WriterActivity {
    fn new(end: u64) -> WriterActivity {
        WriterActivity {
            seen_end: end,
            writing_since: None,
        }
    }

    /// True if the log grew since the previous look (`end` is its end now) and copying has
    /// not yet been put off for `PUT_OFF_WHILE_WRITING`.
    fn put_off(&mut self, end: u64, now: Instant) -> bool {
        let grew = self.seen_end != end;
        self.seen_end = end;
        if !grew {
            self.writing_since = None;
            return false;
        }
        let since = *self.writing_since.get_or_insert(now);
        if now.duration_since(since) < PUT_OFF_WHILE_WRITING {
            return true;
        }
        // Copy now; the next wait starts afresh, so a writer that never pauses gets a pass of
        // copying every `PUT_OFF_WHILE_WRITING`.
        self.writing_since = None;
        false
    }
}

fn run(store: &Weak<Store>, stop: &(Mutex<bool>, Condvar), stopping: &AtomicBool) {
    let mut wait = POLL;
    let Some(mut writer) = store
        .upgrade()
        .map(|store| WriterActivity::new(store.log.written_end()))
    else {
        return;
    };
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, wait);
            }
            if *stopped {
                return;
            }
        }
        let Some(store) = store.upgrade() else { return };
        if store.fence.is_set() {
            continue;
        }
        let started = Instant::now();
        if writer.put_off(store.log.written_end(), started) {
            wait = POLL;
            continue;
        }
        // Copies first, then the log gives back what they hold (`released`): each copy is
        // fsynced under its final name before the log is flushed, the segment's marker
        // fsynced, and the first block punched.
        let passed = store
            .materialize_pass(stopping)
            .and_then(|made| store.release_materialized_log().map(|_| made));
        wait = match passed {
            Ok(made) => {
                if made > 0 {
                    tracing::debug!(
                        "copied {made} sealed segments to their own files in {:?}",
                        started.elapsed()
                    );
                }
                POLL
            }
            Err(error) => {
                tracing::warn!(
                    "copying sealed segments to their own files: {error}; trying again in {RETRY_AFTER:?}"
                );
                RETRY_AFTER
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_waits_while_the_log_grows_but_never_longer_than_its_limit() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut writer = WriterActivity::new(100);
        assert!(!writer.put_off(100, at(200)), "a quiet log is copied");
        assert!(writer.put_off(200, at(400)), "a growing log waits");
        assert!(writer.put_off(300, at(2_000)));
        assert!(
            !writer.put_off(400, at(5_400)),
            "the log grew for PUT_OFF_WHILE_WRITING: copy anyway"
        );
        assert!(writer.put_off(500, at(5_600)), "and wait again afresh");
        assert!(writer.put_off(600, at(10_500)));
        assert!(!writer.put_off(700, at(10_600)));
        assert!(writer.put_off(800, at(10_800)));
        assert!(!writer.put_off(800, at(11_000)), "a pause ends the wait");
        assert!(
            writer.put_off(900, at(11_200)),
            "a new burst waits its own limit"
        );
        assert!(writer.put_off(1_000, at(16_100)));
        assert!(!writer.put_off(1_100, at(16_200)));
    }
}
