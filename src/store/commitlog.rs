//! The commit log: fixed-size, fully allocated, memory-mapped files named by the byte offset
//! of their start. Every message of every topic is appended here, so the disk sees a single
//! sequential write stream however many partitions exist.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use super::error::{Result, StoreError};
use super::format::{self, RecordHeader, BLANK_BYTES, BLANK_MAGIC, RECORD_HEADER_BYTES};
use super::mapped::MappedFile;

pub struct LogFile {
    pub base: u64,
    pub data: MappedFile,
}

/// A record found in the log, through a handle on its file (an `Arc` that keeps the bytes
/// mapped while it is used, or a plain borrow on a hot path).
pub struct Record<F> {
    file: F,
    position: u64,
    pub header: RecordHeader,
}

pub type RecordRef = Record<Arc<LogFile>>;

impl<F: Deref<Target = LogFile>> Record<F> {
    pub fn payload(&self) -> &[u8] {
        self.file.data.bytes(
            self.position + RECORD_HEADER_BYTES as u64,
            self.header.payload_len(),
        )
    }

    /// Whether the record's bytes still match the CRC32C stored in it.
    pub fn crc_matches(&self) -> bool {
        format::crc_matches(
            self.file
                .data
                .bytes(self.position, self.header.size as usize),
        )
    }

    /// The commit-log file holding the record, and the record's byte offset in it.
    pub fn path(&self) -> PathBuf {
        self.file.data.path().to_owned()
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn key(&self) -> Option<&[u8]> {
        let key_len = self.header.key_len? as usize;
        Some(&self.payload()[..key_len])
    }
}

/// Where the next record goes; guarded by the append lock.
struct Writer {
    file: Arc<LogFile>,
    /// Global byte offset of the next record.
    position: u64,
    /// Warming has been asked for up to this global offset.
    warm_requested: u64,
}

/// How far ahead of the writer the preparer thread faults pages in: far enough that the
/// writer never waits for it, near enough that no more is zeroed than is about to be used.
const WARM_AHEAD: u64 = 64 << 20;

/// The next file, made ahead of need by a background thread so a roll does not stall.
struct Preparer {
    slot: Mutex<PreparedSlot>,
    wake: Condvar,
}

/// Work for the preparer thread that is not the commit log's: making a partition's next
/// consume-queue file, say.
pub type PrepareJob = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct PreparedSlot {
    wanted: Option<u64>,
    ready: Option<Arc<LogFile>>,
    /// A range of a file to fault in: the file and local offsets.
    warm: Option<(Arc<LogFile>, u64, u64)>,
    /// Done in order, each before any further warming.
    jobs: std::collections::VecDeque<PrepareJob>,
    stop: bool,
}

pub struct CommitLog {
    dir: PathBuf,
    file_bytes: u64,
    warm: bool,
    /// Oldest first; contiguous.
    files: RwLock<Vec<Arc<LogFile>>>,
    /// Files removed from the log that a reader may still map: their blocks stay on disk
    /// until the last reader drops them, so the disk ceiling must count them.
    removed: Mutex<Vec<Weak<LogFile>>>,
    writer: Mutex<Writer>,
    /// Everything below this offset is completely written.
    written_end: AtomicU64,
    flushed_end: AtomicU64,
    flush_lock: Mutex<()>,
    preparer: Arc<Preparer>,
    preparer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl CommitLog {
    /// Opens the log whose valid records end at `end` (decided by the caller's recovery):
    /// files past the one holding `end` are deleted if they hold no valid record, and the
    /// bytes after `end` in it are zeroed when `zero_tail` is set. Below `durable` the log
    /// is known to be on disk. A file that holds a valid record past the end, or a missing
    /// file the end lies in, is refused: never delete or forget what the log holds.
    pub fn open(
        dir: &Path,
        file_bytes: u64,
        warm: bool,
        end: u64,
        durable: u64,
        zero_tail: bool,
    ) -> Result<CommitLog> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let write_base = end - end % file_bytes;
        let mut files = Vec::new();
        for base in list_files(dir)? {
            let path = dir.join(format::file_name(base));
            if base > write_base {
                remove_unused_file(&path, file_bytes, end)?;
                continue;
            }
            files.push(Arc::new(open_file(&path, base, file_bytes)?));
        }
        for pair in files.windows(2) {
            if pair[1].base != pair[0].base + file_bytes {
                return Err(StoreError::Corrupt {
                    path: dir.join(format::file_name(pair[0].base + file_bytes)),
                    offset: 0,
                    reason: "commit-log file missing in the middle of the log".into(),
                });
            }
        }
        let current = match files.last() {
            Some(last) if last.base == write_base => last.clone(),
            // The log ends exactly where its last file does, or is empty.
            last if end == write_base
                && last.is_none_or(|last| last.base + file_bytes == write_base) =>
            {
                // Warmed by the preparer thread, not here: opening must not wait for it.
                let file = Arc::new(create_file(dir, write_base, file_bytes, false)?);
                files.push(file.clone());
                file
            }
            _ => {
                return Err(StoreError::Corrupt {
                    path: dir.join(format::file_name(write_base)),
                    offset: end - write_base,
                    reason: format!(
                        "the commit log ends at offset {end}, in this file, which is missing; run `commitfs check --repair` on the data directory"
                    ),
                })
            }
        };
        if zero_tail {
            current.data.zero_from(end - write_base)?;
            // Durably: else a power loss can bring the cut records back behind new ones.
            current.data.flush(end - write_base, file_bytes)?;
        }
        let preparer = Arc::new(Preparer {
            slot: Mutex::new(PreparedSlot::default()),
            wake: Condvar::new(),
        });
        let log = CommitLog {
            dir: dir.to_owned(),
            file_bytes,
            warm,
            files: RwLock::new(files),
            removed: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                file: current,
                position: end,
                warm_requested: end,
            }),
            written_end: AtomicU64::new(end),
            flushed_end: AtomicU64::new(durable.min(end)),
            flush_lock: Mutex::new(()),
            preparer,
            preparer_thread: Mutex::new(None),
        };
        log.start_preparer(write_base + file_bytes)?;
        Ok(log)
    }

    /// Starts the thread that makes the file at `next` (and those after it) ahead of need.
    fn start_preparer(&self, next: u64) -> Result<()> {
        let (preparer, dir, warm) = (self.preparer.clone(), self.dir.clone(), self.warm);
        let file_bytes = self.file_bytes;
        let thread = std::thread::Builder::new()
            .name("commitlog-prepare".into())
            .spawn(move || prepare_files(&preparer, &dir, file_bytes, warm))
            .map_err(|e| StoreError::io("starting the file preparer", e))?;
        *self.preparer_thread.lock() = Some(thread);
        self.request_next(next);
        self.appender().request_warming();
        Ok(())
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    pub fn written_end(&self) -> u64 {
        self.written_end.load(Ordering::Acquire)
    }

    /// Offset of the oldest byte still stored.
    pub fn min_offset(&self) -> u64 {
        self.files.read().first().map_or(0, |f| f.base)
    }

    pub fn file_count(&self) -> usize {
        self.files.read().len()
    }

    /// Bytes on disk: the log's files, and the removed files that readers still hold
    /// (unlinked but mapped, like an open unlinked file).
    pub fn disk_bytes(&self) -> u64 {
        let mut removed = self.removed.lock();
        removed.retain(|file| file.strong_count() > 0);
        (self.file_count() + removed.len()) as u64 * self.file_bytes
    }

    /// Exclusive access for appending; holding it is the only serial part of an append.
    pub fn appender(&self) -> Appender<'_> {
        Appender {
            log: self,
            writer: self.writer.lock(),
        }
    }

    pub fn file_at(&self, offset: u64) -> Option<Arc<LogFile>> {
        let files = self.files.read();
        let first = files.first()?.base;
        let index = offset.checked_sub(first)? / self.file_bytes;
        files.get(index as usize).cloned()
    }

    /// The path of the file that holds (or held) commit-log offset `offset`, for messages.
    pub fn path_of(&self, offset: u64) -> PathBuf {
        self.dir
            .join(format::file_name(offset - offset % self.file_bytes))
    }

    /// The files holding `[from, to)` that are still stored.
    pub fn files_between(&self, from: u64, to: u64) -> Vec<Arc<LogFile>> {
        self.files
            .read()
            .iter()
            .filter(|f| f.base + self.file_bytes > from && f.base < to)
            .cloned()
            .collect()
    }

    /// The record at `offset`, if its file is still stored.
    pub fn record_at(&self, offset: u64) -> Option<RecordRef> {
        record_in(self.file_at(offset)?, offset)
    }

    /// Makes everything written before the call durable. Concurrent callers share one
    /// flush (group commit): whoever holds the lock flushes for everyone queued behind it.
    pub fn flush(&self) -> Result<()> {
        let target = self.written_end();
        if self.flushed_end.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _guard = self.flush_lock.lock();
        let from = self.flushed_end.load(Ordering::Acquire);
        if from >= target {
            return Ok(());
        }
        let to = self.written_end();
        for file in self.files_between(from, to) {
            let start = from.max(file.base) - file.base;
            let end = to.min(file.base + self.file_bytes) - file.base;
            file.data.flush(start, end - start)?;
        }
        self.flushed_end.store(to, Ordering::Release);
        Ok(())
    }

    /// Deletes whole files that end at or before `needed_from`, never the one being written.
    /// Returns the number deleted. Readers holding a file keep its mapping until they drop it.
    pub fn delete_files_before(&self, needed_from: u64) -> Result<Vec<u64>> {
        let write_base = self.writer.lock().file.base;
        let mut files = self.files.write();
        let mut deleted = Vec::new();
        while let Some(first) = files.first() {
            if first.base + self.file_bytes > needed_from || first.base >= write_base {
                break;
            }
            super::mapped::inject!("commitlog::remove", first.data.path(), "removing");
            std::fs::remove_file(first.data.path()).map_err(|e| {
                StoreError::io(format!("removing {}", first.data.path().display()), e)
            })?;
            tracing::info!("removed commit-log file {}", first.data.path().display());
            deleted.push(first.base);
            let mut removed = self.removed.lock();
            removed.retain(|file| file.strong_count() > 0);
            removed.push(Arc::downgrade(&files.remove(0)));
        }
        Ok(deleted)
    }

    /// The oldest file, if it is not the one being written.
    pub fn oldest_sealed_file(&self) -> Option<u64> {
        let write_base = self.writer.lock().file.base;
        let first = self.files.read().first()?.base;
        (first < write_base).then_some(first)
    }

    /// Has the preparer thread run `job` soon, off the write path. Jobs not run by the time
    /// the log stops are dropped.
    pub fn prepare_later(&self, job: PrepareJob) {
        let mut slot = self.preparer.slot.lock();
        if !slot.stop {
            slot.jobs.push_back(job);
            self.preparer.wake.notify_all();
        }
    }

    fn request_next(&self, base: u64) {
        let mut slot = self.preparer.slot.lock();
        slot.wanted = Some(base);
        self.preparer.wake.notify_one();
    }

    fn next_file(&self, base: u64) -> Result<Arc<LogFile>> {
        // Obtained earlier for an append that then failed: still the next file.
        if let Some(file) = self.file_at(base) {
            return Ok(file);
        }
        let prepared = {
            let mut slot = self.preparer.slot.lock();
            // Wait for a preparation in progress rather than racing it for the same file.
            while slot.wanted == Some(base) && slot.ready.is_none() && !slot.stop {
                self.preparer.wake.wait(&mut slot);
            }
            // Taken: the preparer must not make it again before the next request.
            if slot.wanted == Some(base) {
                slot.wanted = None;
            }
            slot.ready.take()
        };
        let file = match prepared {
            Some(file) if file.base == base => file,
            _ => Arc::new(create_file(&self.dir, base, self.file_bytes, self.warm)?),
        };
        self.files.write().push(file.clone());
        self.request_next(base + self.file_bytes);
        Ok(file)
    }

    pub fn stop(&self) {
        {
            let mut slot = self.preparer.slot.lock();
            slot.stop = true;
            self.preparer.wake.notify_all();
        }
        if let Some(thread) = self.preparer_thread.lock().take() {
            let _ = thread.join();
        }
        // A prepared file nobody used would look like a log past its end: remove it.
        if let Some(file) = self.preparer.slot.lock().ready.take() {
            let _ = std::fs::remove_file(file.data.path());
        }
    }
}

/// The record at global `offset` of `file`, if something that looks like a record is
/// there: a damaged queue or index entry must not make a reader run off the mapping. Its
/// CRC is checked where its bytes are served.
pub(super) fn record_in<F: Deref<Target = LogFile>>(file: F, offset: u64) -> Option<Record<F>> {
    let position = offset.checked_sub(file.base)?;
    let rest = file.data.capacity().checked_sub(position)?;
    let header = format::decode_header(file.data.bytes(position, rest as usize)).ok()?;
    Some(Record {
        file,
        position,
        header,
    })
}

/// Whether a record of `size` bytes fits at `local` in a file, leaving room for the
/// end-of-file marker.
fn fits(file_bytes: u64, local: u64, size: u64) -> bool {
    local + size + BLANK_BYTES as u64 <= file_bytes
}

/// Holds the append lock. Records are copied into the map while it is held, so the log has
/// no holes: recovery may cut only at the first invalid record.
pub struct Appender<'a> {
    log: &'a CommitLog,
    writer: parking_lot::MutexGuard<'a, Writer>,
}

impl Appender<'_> {
    /// The global offset where the next record goes.
    pub fn position(&self) -> u64 {
        self.writer.position
    }

    /// Obtains every file that records of these sizes, copied in this order, need. Called
    /// before the first byte of an append is copied, so a full disk fails the whole append
    /// and leaves no partial records.
    pub fn reserve(&mut self, record_sizes: impl Iterator<Item = u64>) -> Result<()> {
        let file_bytes = self.log.file_bytes;
        let mut base = self.writer.file.base;
        let mut local = self.writer.position - base;
        for size in record_sizes {
            if !fits(file_bytes, local, size) {
                base += file_bytes;
                self.log.next_file(base)?;
                local = 0;
            }
            local += size;
        }
        Ok(())
    }

    /// Copies one encoded record (header with its CRC, then the payload) and returns its
    /// global offset. [`reserve`](Self::reserve) obtained the file it goes to.
    pub fn copy(&mut self, header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u64 {
        let size = (RECORD_HEADER_BYTES + payload.len()) as u64;
        let mut local = self.writer.position - self.writer.file.base;
        if !fits(self.log.file_bytes, local, size) {
            self.roll(local);
            local = 0;
        }
        let data = &self.writer.file.data;
        data.write(local + RECORD_HEADER_BYTES as u64, payload);
        data.write(local, header);
        let offset = self.writer.position;
        self.writer.position += size;
        offset
    }

    /// Ends the current file with an end-of-file marker at `local` and moves to the next.
    fn roll(&mut self, local: u64) {
        let file_bytes = self.log.file_bytes;
        let mut blank = [0u8; BLANK_BYTES];
        blank[0..4].copy_from_slice(&((file_bytes - local) as u32).to_le_bytes());
        blank[4..8].copy_from_slice(&BLANK_MAGIC.to_le_bytes());
        self.writer.file.data.write(local, &blank);
        let next = self
            .log
            .file_at(self.writer.file.base + file_bytes)
            .expect("the next file was obtained before the copy");
        self.writer.position = next.base;
        self.writer.warm_requested = next.base + WARM_AHEAD.min(file_bytes);
        self.writer.file = next;
    }

    /// Makes the records appended so far visible to readers and to flushes.
    pub fn publish(&mut self) {
        self.log
            .written_end
            .store(self.writer.position, Ordering::Release);
        if self.writer.position + WARM_AHEAD / 2 > self.writer.warm_requested {
            self.request_warming();
        }
    }

    /// Asks the preparer thread to fault in the current file up to `WARM_AHEAD` past the
    /// write position, so that appends find their pages ready.
    fn request_warming(&mut self) {
        let writer = &mut *self.writer;
        let file_end = writer.file.base + self.log.file_bytes;
        let to = (writer.position + WARM_AHEAD).min(file_end);
        let from = writer.warm_requested.clamp(writer.position, to);
        writer.warm_requested = to;
        if !self.log.warm || from >= to {
            return;
        }
        let (from, to) = (from - writer.file.base, to - writer.file.base);
        let mut slot = self.log.preparer.slot.lock();
        // A request not yet taken up is extended rather than replaced.
        let from = match &slot.warm {
            Some((pending, pending_from, _)) if pending.base == writer.file.base => {
                from.min(*pending_from)
            }
            _ => from,
        };
        slot.warm = Some((writer.file.clone(), from, to));
        self.log.preparer.wake.notify_all();
    }
}

fn create_file(dir: &Path, base: u64, file_bytes: u64, warm: bool) -> Result<LogFile> {
    let path = dir.join(format::file_name(base));
    let started = std::time::Instant::now();
    let data = MappedFile::create(&path, file_bytes, file_bytes)?;
    // The file's name must be durable before a flush of its records can promise anything.
    if let Err(error) = super::meta::sync_dir(dir) {
        drop(data);
        // Left behind, it would stop every later attempt to make this file.
        let _ = std::fs::remove_file(&path);
        return Err(error);
    }
    if warm {
        data.warm(0, WARM_AHEAD.min(file_bytes));
    }
    let took = started.elapsed();
    if took > std::time::Duration::from_millis(10) {
        tracing::debug!("creating {} took {:?}", path.display(), took);
    }
    Ok(LogFile { base, data })
}

/// Warming goes in steps of this size, so a job asked for meanwhile waits for one step at
/// most.
const WARM_STEP: u64 = 4 << 20;

/// The preparer thread: the next commit-log file first (an appender may be waiting for it),
/// then jobs, then warming, a step at a time.
fn prepare_files(preparer: &Preparer, dir: &Path, file_bytes: u64, warm: bool) {
    let mut slot = preparer.slot.lock();
    loop {
        if slot.stop {
            slot.jobs.clear();
            return;
        }
        match slot.wanted {
            Some(wanted) if slot.ready.as_ref().is_none_or(|f| f.base != wanted) => {
                if let Some(stale) = slot.ready.take() {
                    let _ = std::fs::remove_file(stale.data.path());
                }
                let made = parking_lot::MutexGuard::unlocked(&mut slot, || {
                    create_file(dir, wanted, file_bytes, warm)
                });
                match made {
                    Ok(file) => slot.ready = Some(Arc::new(file)),
                    Err(error) => {
                        tracing::warn!("preparing the next commit-log file failed: {error}");
                        // Unless a newer request came meanwhile.
                        if slot.wanted == Some(wanted) {
                            slot.wanted = None;
                        }
                    }
                }
                preparer.wake.notify_all();
                continue;
            }
            _ => {}
        }
        if let Some(job) = slot.jobs.pop_front() {
            parking_lot::MutexGuard::unlocked(&mut slot, job);
            continue;
        }
        if let Some((file, from, to)) = slot.warm.take() {
            let step_end = to.min(from + WARM_STEP);
            if step_end < to {
                slot.warm = Some((file.clone(), step_end, to));
            }
            parking_lot::MutexGuard::unlocked(&mut slot, || file.data.warm(from, step_end));
            continue;
        }
        preparer.wake.wait(&mut slot);
    }
}

fn open_file(path: &Path, base: u64, file_bytes: u64) -> Result<LogFile> {
    if base % file_bytes != 0 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: format!("name is not a multiple of the file size {file_bytes}"),
        });
    }
    let data = MappedFile::open(path, file_bytes)?;
    if data.allocated() != file_bytes {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: data.allocated(),
            reason: format!("commit-log file is not {file_bytes} bytes long"),
        });
    }
    Ok(LogFile { base, data })
}

/// Removes a file past the log's `end`, which recovery found holds nothing: if it holds a
/// valid record after all, that is refused.
fn remove_unused_file(path: &Path, file_bytes: u64, end: u64) -> Result<()> {
    if let Some(at) = first_valid_record(path, file_bytes)? {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: at as u64,
            reason: format!(
                "a valid record lies past the log's end {end}; run `commitfs check --repair` on the data directory"
            ),
        });
    }
    tracing::info!("removing unused commit-log file {}", path.display());
    std::fs::remove_file(path)
        .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))
}

/// The position of the first valid record in the commit-log file at `path`, whatever its
/// length.
pub fn first_valid_record(path: &Path, file_bytes: u64) -> Result<Option<usize>> {
    let file = MappedFile::open(path, file_bytes)?;
    let len = file.allocated().min(file.capacity()) as usize;
    Ok(format::next_valid_record(file.bytes(0, len), 0))
}

pub fn list_files(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if let Some(base) = entry.file_name().to_str().and_then(format::parse_file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    /// A commit-log file holding a record of `payload` at `at`, the rest zeroes.
    fn file_with_a_record() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(any::<u8>(), 0..100),
            0usize..64,
            any::<Option<u8>>(),
        )
            .prop_map(|(payload, at, key)| {
                let header = RecordHeader {
                    size: (RECORD_HEADER_BYTES + payload.len()) as u32,
                    topic_id: 1,
                    partition: 0,
                    key_len: key.map(|k| u32::from(k).min(payload.len() as u32)),
                    offset: 7,
                    timestamp: 1,
                    segment_position: 0,
                };
                let mut head = [0u8; RECORD_HEADER_BYTES];
                header.encode(&mut head);
                let crc = format::record_crc(&head, &payload);
                head[8..12].copy_from_slice(&crc.to_le_bytes());
                let mut bytes = vec![0u8; at];
                bytes.extend_from_slice(&head);
                bytes.extend_from_slice(&payload);
                bytes.resize(bytes.len() + 16, 0);
                bytes
            })
    }

    proptest! {
        #![proptest_config(fuzzing::config(200))]

        /// A queue or index entry may name any offset: whatever `record_in` returns there stays
        /// inside the file, and its payload, key and CRC can be read without a panic.
        #[test]
        fn a_record_at_any_offset_of_any_file_stays_inside_the_file(
            bytes in fuzzing::garbage_or_damaged(file_with_a_record(), 512),
            base in prop_oneof![Just(0u64), Just(4096), any::<u64>()],
            offsets in proptest::collection::vec(0u64..600, 1..16),
            wild in prop_oneof![any::<u64>(), (u64::MAX - 64..=u64::MAX)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let capacity = bytes.len().max(1) as u64;
            let data = MappedFile::create(&dir.path().join("log"), capacity, capacity).unwrap();
            data.write(0, &bytes);
            let file = LogFile { base, data };
            for offset in offsets.iter().map(|o| base.wrapping_add(*o)).chain([wild]) {
                if let Some(record) = record_in(&file, offset) {
                    let end = record.position() + u64::from(record.header.size);
                    prop_assert!(end <= capacity);
                    prop_assert_eq!(record.payload().len(), record.header.payload_len());
                    prop_assert!(record.key().is_none_or(|k| k.len() <= record.payload().len()));
                    let _ = record.crc_matches();
                }
            }
        }
    }
}
