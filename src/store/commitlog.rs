//! The commit log: fixed-size, fully allocated, memory-mapped files named by the byte offset
//! of their start. Every message of every topic is appended here, so the disk sees a single
//! sequential write stream however many partitions exist.

use std::io::IoSlice;
use std::ops::{Deref, Range};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};

use super::append::Fence;
use super::error::{Result, StoreError};
use super::format::{self, BatchHeader, MessageAt, RecordHeader, BLANK_BYTES, BLANK_MAGIC};
use super::mapped::MappedFile;
use super::open_files::{Held, OpenFiles};

pub struct LogFile {
    pub base: u64,
    pub data: MappedFile,
}

impl Held for LogFile {
    fn mapped(&self) -> &MappedFile {
        &self.data
    }
}

/// A file of the log, mapped while the store's budget of open files or a reader holds it
/// (the writer holds the one being written); mapped again on use.
struct Slot {
    base: u64,
    file: Weak<LogFile>,
}

/// A message found in the log, through a handle on its file (an `Arc` that keeps the bytes
/// mapped while it is used, or a plain borrow on a hot path).
pub struct Record<F> {
    file: F,
    /// Where its batch starts in the file, and the batch's size.
    batch_at: u64,
    batch_size: u32,
    /// The offset after its batch's last message.
    batch_end_offset: u64,
    pub header: RecordHeader,
}

pub type RecordRef = Record<Arc<LogFile>>;

impl<F: Deref<Target = LogFile>> Record<F> {
    /// The bytes of this message and the later ones of its batch: a stretch of its segment.
    pub fn payload_to_batch_end(&self) -> &[u8] {
        &self.batch_bytes()[self.header.payload_at as usize..]
    }

    pub fn batch_end_offset(&self) -> u64 {
        self.batch_end_offset
    }

    /// Its batch's bytes as the log holds them.
    pub fn batch_bytes(&self) -> &[u8] {
        // SAFETY: `message_in`, the only maker of records, found the batch inside bytes
        // published to this thread (`published_from`), which the log never writes again
        // (a released segment's payloads may be punched: see `MappedFile::bytes`).
        unsafe {
            self.file
                .data
                .bytes(self.batch_at, self.batch_size as usize)
        }
    }

    /// The log file holding it.
    pub fn log_file(&self) -> &LogFile {
        &self.file
    }

    /// Whether its batch's bytes still match the CRC32C stored in it.
    pub fn crc_matches(&self) -> bool {
        format::crc_matches(self.batch_bytes())
    }

    /// The commit-log file holding the message.
    pub fn path(&self) -> PathBuf {
        self.file.data.path().to_owned()
    }

    /// Where its batch starts in its file.
    pub fn position(&self) -> u64 {
        self.batch_at
    }

    /// Where it lies in the log.
    pub fn at(&self) -> MessageAt {
        MessageAt {
            batch: self.file.base + self.batch_at,
            index: self.header.index,
        }
    }
}

/// Where the next batch goes; guarded by the append lock.
struct Writer {
    file: Arc<LogFile>,
    /// Global byte offset of the next batch.
    position: u64,
    /// The bytes an [`Appender`] copies (headers, tables, small batches' messages); kept
    /// between appends so that each does not allocate and fault its buffer in again.
    copied: Vec<u8>,
}

/// A message run at least this long is written to the log from the caller's buffer, not
/// copied first: the copy cost more than an extra `iovec` does.
const BORROW_MIN_BYTES: usize = 2048;

/// A stretch of the batches an [`Appender`] has not written to the file yet.
enum Piece<'p> {
    /// `Writer::copied[range]`.
    Copied(Range<usize>),
    /// Message bytes written from where the caller holds them.
    Borrowed(&'p [u8]),
}

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
    /// Done in order, after the next commit-log file.
    jobs: std::collections::VecDeque<PrepareJob>,
    stop: bool,
}

pub struct CommitLog {
    dir: PathBuf,
    file_bytes: u64,
    /// Oldest first; contiguous.
    files: RwLock<Vec<Slot>>,
    open_files: Arc<OpenFiles>,
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
    /// file the end lies in, is refused: never delete or forget what the log holds. A panic
    /// on the thread that makes files ahead of need sets `fence`.
    pub fn open(
        dir: &Path,
        file_bytes: u64,
        end: u64,
        durable: u64,
        zero_tail: bool,
        open_files: Arc<OpenFiles>,
        fence: Arc<Fence>,
    ) -> Result<CommitLog> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let write_base = end - end % file_bytes;
        let (mut files, current) = open_files_to(dir, file_bytes, end)?;
        check_contiguous(dir, &files, file_bytes)?;
        let current = match current {
            Some(current) => current,
            None => create_end_file(dir, file_bytes, end, &mut files)?,
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
            files: RwLock::new(files),
            open_files,
            removed: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                file: current,
                position: end,
                copied: Vec::new(),
            }),
            written_end: AtomicU64::new(end),
            flushed_end: AtomicU64::new(durable.min(end)),
            flush_lock: Mutex::new(()),
            preparer,
            preparer_thread: Mutex::new(None),
        };
        log.start_preparer(write_base + file_bytes, fence)?;
        Ok(log)
    }

    /// Starts the thread that makes the file at `next` (and those after it) ahead of need.
    fn start_preparer(&self, next: u64, fence: Arc<Fence>) -> Result<()> {
        let (preparer, dir) = (self.preparer.clone(), self.dir.clone());
        let file_bytes = self.file_bytes;
        let thread = super::spawn_background("commitlog-prepare", fence, move || {
            let _ended = PreparerEnded(&preparer);
            prepare_files(&preparer, &dir, file_bytes);
        })
        .map_err(|e| StoreError::io("starting the file preparer", e))?;
        *self.preparer_thread.lock() = Some(thread);
        self.request_next(next);
        Ok(())
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The store's budget of open files.
    pub(super) fn open_files(&self) -> &Arc<OpenFiles> {
        &self.open_files
    }

    pub fn written_end(&self) -> u64 {
        self.written_end.load(Ordering::Acquire)
    }

    /// Offset of the oldest byte still stored.
    pub fn min_offset(&self) -> u64 {
        self.files.read().first().map_or(0, |f| f.base)
    }

    /// Bytes on disk: the blocks of the log's files (ranges released to segments' files are
    /// holes), and of the removed files that readers still hold (unlinked but mapped, like
    /// an open unlinked file).
    pub fn disk_bytes(&self) -> u64 {
        let removed: Vec<Arc<LogFile>> = {
            let mut removed = self.removed.lock();
            removed.retain(|file| file.strong_count() > 0);
            removed.iter().filter_map(Weak::upgrade).collect()
        };
        let slots: Vec<(u64, Option<Arc<LogFile>>)> = self
            .files
            .read()
            .iter()
            .map(|slot| (slot.base, slot.file.upgrade()))
            .collect();
        let stored: u64 = slots
            .into_iter()
            .map(|(base, file)| match file {
                Some(file) => file.data.disk_bytes(),
                None => std::fs::metadata(self.dir.join(format::file_name(base)))
                    .map_or(self.file_bytes, |m| m.blocks() * 512),
            })
            .sum();
        stored + removed.iter().map(|f| f.data.disk_bytes()).sum::<u64>()
    }

    /// Exclusive access for appending; holding it is the only serial part of an append.
    /// Message bytes of lifetime `'p` may be written from where they are.
    pub fn appender<'p>(&self) -> Appender<'_, 'p> {
        Appender {
            log: self,
            writer: self.writer.lock(),
            pieces: Vec::new(),
            copied_in_pieces: 0,
        }
    }

    pub fn file_at(&self, offset: u64) -> Option<Arc<LogFile>> {
        self.stored_file_at(offset).unwrap_or_else(|error| {
            tracing::error!("commit-log file unreadable: {error}");
            None
        })
    }

    /// The file holding `offset`, mapped again if the budget of open files closed it; `None`
    /// once it is no longer in the log, an error when it is but cannot be mapped.
    fn stored_file_at(&self, offset: u64) -> Result<Option<Arc<LogFile>>> {
        let mapped = {
            let files = self.files.read();
            let Some(first) = files.first().map(|f| f.base) else {
                return Ok(None);
            };
            let Some(index) = offset.checked_sub(first).map(|d| d / self.file_bytes) else {
                return Ok(None);
            };
            match files.get(index as usize) {
                Some(slot) => slot.file.upgrade(),
                None => return Ok(None),
            }
        };
        let file = match mapped {
            Some(file) => file,
            None => match self.reopen(offset - offset % self.file_bytes)? {
                Some(file) => file,
                None => return Ok(None),
            },
        };
        self.open_files.touch(&file);
        Ok(Some(file))
    }

    /// Maps the closed file at `base` again, if it is still in the log; under the write
    /// lock, so that concurrent readers share one mapping.
    fn reopen(&self, base: u64) -> Result<Option<Arc<LogFile>>> {
        let mut files = self.files.write();
        let Some(slot) = files.iter_mut().find(|slot| slot.base == base) else {
            return Ok(None);
        };
        if let Some(file) = slot.file.upgrade() {
            return Ok(Some(file));
        }
        let path = self.dir.join(format::file_name(base));
        // Never written again: nothing to allocate (released ranges stay holes).
        let file = Arc::new(open_file(&path, base, self.file_bytes, self.file_bytes)?);
        slot.file = Arc::downgrade(&file);
        Ok(Some(file))
    }

    /// The path of the file that holds (or held) commit-log offset `offset`, for messages.
    pub fn path_of(&self, offset: u64) -> PathBuf {
        self.dir
            .join(format::file_name(offset - offset % self.file_bytes))
    }

    /// The files holding `[from, to)` that are still stored.
    pub fn files_between(&self, from: u64, to: u64) -> Vec<Arc<LogFile>> {
        let bases: Vec<u64> = self
            .files
            .read()
            .iter()
            .filter(|f| f.base + self.file_bytes > from && f.base < to)
            .map(|f| f.base)
            .collect();
        // A file removed meanwhile ends the list: the files stay contiguous.
        bases
            .into_iter()
            .map_while(|base| self.file_at(base))
            .collect()
    }

    /// The message at `at`, if its file is still stored and something that looks like its
    /// batch is there.
    pub fn message_at(&self, at: MessageAt) -> Option<RecordRef> {
        message_in(self.file_at(at.batch)?, at, self.written_end())
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
        let mut base = from - from % self.file_bytes;
        while base < to {
            // A file the budget closed is mapped again to be flushed: one that cannot be
            // fails the flush, never skipped (the caller would take its bytes as durable).
            // One retention removed meanwhile has nothing left to flush.
            if let Some(file) = self.stored_file_at(base)? {
                let start = from.max(file.base) - file.base;
                let end = to.min(file.base + self.file_bytes) - file.base;
                file.data.flush(start, end - start)?;
            }
            base += self.file_bytes;
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
            let path = self.dir.join(format::file_name(first.base));
            super::mapped::inject!("commitlog::remove", &path, "removing");
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
            tracing::info!("removed commit-log file {}", path.display());
            deleted.push(first.base);
            let gone = files.remove(0);
            if let Some(file) = gone.file.upgrade() {
                // Its blocks are freed once its readers let go, not when the budget would.
                self.open_files.forget(&file.data);
            }
            let mut removed = self.removed.lock();
            removed.retain(|file| file.strong_count() > 0);
            removed.push(gone.file);
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
            _ => Arc::new(create_file(&self.dir, base, self.file_bytes)?),
        };
        self.files.write().push(Slot {
            base,
            file: Arc::downgrade(&file),
        });
        self.open_files.touch(&file);
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

/// The bytes of `file` from global offset `from` to `published` (the log's written end, as
/// loaded with `Acquire` by the caller) or the file's end, whichever comes first; `None` if
/// `from` lies outside them. A damaged queue or index entry may name any offset: it must
/// neither make a reader run off the mapping nor read bytes the writer is storing now.
fn published_from(file: &LogFile, from: u64, published: u64) -> Option<&[u8]> {
    let position = from.checked_sub(file.base)?;
    let end = published.checked_sub(file.base)?.min(file.data.allocated());
    let len = usize::try_from(end.checked_sub(position)?).ok()?;
    // SAFETY: `[position, end)` lies below the log's written end, which `publish` stored with
    // `Release` after writing these bytes and the caller loaded with `Acquire`; the log writes
    // only past its written end (the append lock's holder), and `discard_unpublished` zeroes
    // only past it too.
    Some(unsafe { file.data.bytes(position, len) })
}

/// The header of the batch at global offset `batch` of `file`, if something that looks like
/// a batch lies there below `published` (the log's written end, loaded by the caller). Its
/// CRC is checked where its bytes are served.
pub(super) fn batch_in(file: &LogFile, batch: u64, published: u64) -> Option<BatchHeader> {
    format::decode_header(published_from(file, batch, published)?)
        .ok()
        .map(|batch| batch.header)
}

/// Message `at.index` of the batch at `at.batch` in `file`, if the batch lies below
/// `published` (the log's written end, loaded by the caller) and its header and its table
/// slots for the message look right.
pub(super) fn message_in<F: Deref<Target = LogFile>>(
    file: F,
    at: MessageAt,
    published: u64,
) -> Option<Record<F>> {
    let position = at.batch.checked_sub(file.base)?;
    let batch = format::decode_header(published_from(&file, at.batch, published)?).ok()?;
    let (header, batch_size) = (batch.message(at.index)?, batch.header.size);
    let batch_end_offset = batch.header.end_offset();
    Some(Record {
        file,
        batch_at: position,
        batch_size,
        batch_end_offset,
        header,
    })
}

/// Whether a batch of `size` bytes fits at `local` in a file, leaving room for the
/// end-of-file marker.
fn fits(file_bytes: u64, local: u64, size: u64) -> bool {
    local + size + BLANK_BYTES as u64 <= file_bytes
}

/// Holds the append lock. Batches are built and written into the file while it is held, so
/// the log has no holes: recovery may cut only at the first invalid batch.
pub struct Appender<'a, 'p> {
    log: &'a CommitLog,
    writer: parking_lot::MutexGuard<'a, Writer>,
    /// The batches copied since the last write to the file, in order, which end at the
    /// writer's position: they go to the file with one `pwritev` (writing through the map
    /// would make the kernel zero every fresh page first).
    pieces: Vec<Piece<'p>>,
    /// How much of `Writer::copied` the pieces cover.
    copied_in_pieces: usize,
}

/// The pieces, given the copied bytes up to `end`: the last piece grows if it is copied
/// bytes, else a piece of them starts.
fn add_copied(pieces: &mut Vec<Piece<'_>>, copied_in_pieces: &mut usize, end: usize) {
    if end == *copied_in_pieces {
        return;
    }
    match pieces.last_mut() {
        Some(Piece::Copied(range)) => range.end = end,
        _ => pieces.push(Piece::Copied(*copied_in_pieces..end)),
    }
    *copied_in_pieces = end;
}

impl<'p> Appender<'_, 'p> {
    /// The global offset where the next batch goes.
    pub fn position(&self) -> u64 {
        self.writer.position
    }

    pub fn file_bytes(&self) -> u64 {
        self.log.file_bytes
    }

    /// Obtains every file that batches of these sizes, copied in this order, need. Called
    /// before the first byte of an append is copied, so a full disk fails the whole append
    /// and leaves no partial batches.
    pub fn reserve(&mut self, batch_sizes: impl Iterator<Item = u64>) -> Result<()> {
        let file_bytes = self.log.file_bytes;
        let mut base = self.writer.file.base;
        let mut local = self.writer.position - base;
        for size in batch_sizes {
            if !fits(file_bytes, local, size) {
                base += file_bytes;
                self.log.next_file(base)?;
                local = 0;
            }
            local += size;
        }
        Ok(())
    }

    /// Takes one batch (its header's fields, its table, its messages' bytes in `stretches`
    /// of one or more messages), seals it with its CRC32C, and returns its global offset.
    /// [`reserve`](Self::reserve) obtained the file it goes to. Stretches of at least
    /// `BORROW_MIN_BYTES` are written from where they are, the rest is copied. The bytes
    /// reach the file at [`publish`](Self::publish) (or when the file is full); an error
    /// there leaves the batches unwritten.
    pub fn copy_batch(
        &mut self,
        header: &BatchHeader,
        table: &[u8],
        stretches: impl Iterator<Item = &'p [u8]>,
    ) -> Result<u64> {
        let size = u64::from(header.size);
        let local = self.writer.position - self.writer.file.base;
        if !fits(self.log.file_bytes, local, size) {
            self.write_out()?;
            self.roll(local);
        }
        let copied = &mut self.writer.copied;
        let start = copied.len();
        copied.extend_from_slice(&header.encode());
        copied.extend_from_slice(table);
        // The CRC covers the batch from byte 12: runs of copied bytes in one call each.
        let mut crc = crc32c::crc32c(&copied[start + 12..]);
        let mut crc_from = copied.len();
        let mut borrowed_bytes = 0;
        for stretch in stretches {
            if stretch.len() < BORROW_MIN_BYTES {
                copied.extend_from_slice(stretch);
                continue;
            }
            crc = crc32c::crc32c_append(crc, &copied[crc_from..]);
            crc = crc32c::crc32c_append(crc, stretch);
            crc_from = copied.len();
            add_copied(&mut self.pieces, &mut self.copied_in_pieces, copied.len());
            self.pieces.push(Piece::Borrowed(stretch));
            borrowed_bytes += stretch.len();
        }
        let crc = crc32c::crc32c_append(crc, &copied[crc_from..]);
        add_copied(&mut self.pieces, &mut self.copied_in_pieces, copied.len());
        copied[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(
            (copied.len() - start + borrowed_bytes) as u64,
            size,
            "batch size disagrees with its contents"
        );
        let offset = self.writer.position;
        self.writer.position += size;
        Ok(offset)
    }

    /// Writes the batches taken since the last write into the current file.
    fn write_out(&mut self) -> Result<()> {
        let writer = &mut *self.writer;
        if self.pieces.is_empty() {
            return Ok(());
        }
        let mut slices: Vec<IoSlice<'_>> = self
            .pieces
            .iter()
            .map(|piece| match piece {
                Piece::Copied(range) => IoSlice::new(&writer.copied[range.clone()]),
                Piece::Borrowed(bytes) => IoSlice::new(bytes),
            })
            .collect();
        let bytes: usize = slices.iter().map(|slice| slice.len()).sum();
        let at = writer.position - writer.file.base - bytes as u64;
        writer.file.data.write_vectored_at(at, &mut slices)?;
        self.pieces.clear();
        self.copied_in_pieces = 0;
        writer.copied.clear();
        // One append's batches are at most a few MiB; keep no more than that between them.
        writer.copied.shrink_to(4 * format::MAX_BATCH_BYTES);
        Ok(())
    }

    /// Ends the current file with an end-of-file marker at `local` and moves to the next.
    fn roll(&mut self, local: u64) {
        let file_bytes = self.log.file_bytes;
        let mut blank = [0u8; BLANK_BYTES];
        blank[0..4].copy_from_slice(&((file_bytes - local) as u32).to_le_bytes());
        blank[4..8].copy_from_slice(&BLANK_MAGIC.to_le_bytes());
        // SAFETY: `local` is the writer's position, at or past the log's written end: this
        // thread holds the append lock (the only writer), and readers stay below the end.
        unsafe { self.writer.file.data.write(local, &blank) };
        let next = self
            .log
            .file_at(self.writer.file.base + file_bytes)
            .expect("the next file was obtained before the copy");
        self.writer.position = next.base;
        self.writer.file = next;
    }

    /// After a failed write: overwrites with zeroes whatever part of the batches copied since
    /// the last publish reached the files, so that recovery finds the log ending at the last
    /// published batch and a write is stored whole or not at all. Best effort: the disk has
    /// just failed, and the store is fenced whatever happens here.
    pub fn discard_unpublished(&mut self) {
        let (from, to) = (self.log.written_end(), self.writer.position);
        self.pieces.clear();
        self.copied_in_pieces = 0;
        self.writer.copied.clear();
        for file in self.log.files_between(from, to) {
            let start = from.max(file.base) - file.base;
            let end = to.min(file.base + self.log.file_bytes) - file.base;
            if let Err(error) = file.data.zero_range(start, end) {
                tracing::error!("undoing a failed append: {error}");
            }
        }
    }

    /// Writes the batches copied so far into the file and makes them visible to readers and
    /// to flushes.
    pub fn publish(&mut self) -> Result<()> {
        self.write_out()?;
        self.log
            .written_end
            .store(self.writer.position, Ordering::Release);
        Ok(())
    }
}

/// The log's files up to the one holding `end`, oldest first, and that one mapped (the
/// others are mapped when read); files past it are deleted if they hold no valid record.
fn open_files_to(
    dir: &Path,
    file_bytes: u64,
    end: u64,
) -> Result<(Vec<Slot>, Option<Arc<LogFile>>)> {
    let write_base = end - end % file_bytes;
    let mut files = Vec::new();
    let mut current = None;
    for base in list_files(dir)? {
        let path = dir.join(format::file_name(base));
        if base > write_base {
            remove_unused_file(&path, file_bytes, end)?;
            continue;
        }
        let file = if base == write_base {
            let file = Arc::new(open_file(&path, base, file_bytes, end - write_base)?);
            let weak = Arc::downgrade(&file);
            current = Some(file);
            weak
        } else {
            check_file(&path, base, file_bytes)?;
            Weak::new()
        };
        files.push(Slot { base, file });
    }
    Ok((files, current))
}

/// Refuses a log with a file missing between two others.
fn check_contiguous(dir: &Path, files: &[Slot], file_bytes: u64) -> Result<()> {
    for pair in files.windows(2) {
        if pair[1].base != pair[0].base + file_bytes {
            return Err(StoreError::Corrupt {
                path: dir.join(format::file_name(pair[0].base + file_bytes)),
                offset: 0,
                reason: "commit-log file missing in the middle of the log".into(),
            });
        }
    }
    Ok(())
}

/// Creates the file the log goes on in when none holds `end`: only where the log ends
/// exactly where its last file does, or is empty. Otherwise the file `end` lies in is
/// missing, which is refused.
fn create_end_file(
    dir: &Path,
    file_bytes: u64,
    end: u64,
    files: &mut Vec<Slot>,
) -> Result<Arc<LogFile>> {
    let write_base = end - end % file_bytes;
    let ends_with_last = files
        .last()
        .is_none_or(|last| last.base + file_bytes == write_base);
    if end != write_base || !ends_with_last {
        return Err(StoreError::Corrupt {
            path: dir.join(format::file_name(write_base)),
            offset: end - write_base,
            reason: format!(
                "the commit log ends at offset {end}, in this file, which is missing; run `commitfs check --repair` on the data directory"
            ),
        });
    }
    let file = Arc::new(create_file(dir, write_base, file_bytes)?);
    files.push(Slot {
        base: write_base,
        file: Arc::downgrade(&file),
    });
    Ok(file)
}

fn create_file(dir: &Path, base: u64, file_bytes: u64) -> Result<LogFile> {
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
    let took = started.elapsed();
    if took > std::time::Duration::from_millis(10) {
        tracing::debug!("creating {} took {:?}", path.display(), took);
    }
    Ok(LogFile { base, data })
}

/// Marks the preparer stopped however its thread ends, so that an append waiting for the
/// next file makes it itself instead of waiting for a thread that is gone (after a panic).
struct PreparerEnded<'a>(&'a Preparer);

impl Drop for PreparerEnded<'_> {
    fn drop(&mut self) {
        let mut slot = self.0.slot.lock();
        slot.stop = true;
        slot.jobs.clear();
        self.0.wake.notify_all();
    }
}

/// The preparer thread: the next commit-log file first (an appender may be waiting for it),
/// then jobs.
fn prepare_files(preparer: &Preparer, dir: &Path, file_bytes: u64) {
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
                    fail::fail_point!("commitlog::prepare");
                    create_file(dir, wanted, file_bytes)
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
        preparer.wake.wait(&mut slot);
    }
}

/// Opens the log file at `path`, allocating its blocks from byte `write_from` on: below it
/// the file is written, and ranges released to segments' files are holes to keep.
fn open_file(path: &Path, base: u64, file_bytes: u64, write_from: u64) -> Result<LogFile> {
    check_name(path, base, file_bytes)?;
    let data = MappedFile::open_allocating_from(path, file_bytes, write_from)?;
    check_length(path, data.allocated(), file_bytes)?;
    Ok(LogFile { base, data })
}

/// What [`open_file`] checks, without mapping the file.
fn check_file(path: &Path, base: u64, file_bytes: u64) -> Result<()> {
    check_name(path, base, file_bytes)?;
    let len = std::fs::metadata(path)
        .map_err(|e| StoreError::io(format!("reading the size of {}", path.display()), e))?
        .len();
    check_length(path, len, file_bytes)
}

fn check_name(path: &Path, base: u64, file_bytes: u64) -> Result<()> {
    if base % file_bytes != 0 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: format!("name is not a multiple of the file size {file_bytes}"),
        });
    }
    Ok(())
}

fn check_length(path: &Path, len: u64, file_bytes: u64) -> Result<()> {
    if len != file_bytes {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: len,
            reason: format!("commit-log file is not {file_bytes} bytes long"),
        });
    }
    Ok(())
}

/// Removes a file past the log's `end`, which recovery found holds nothing: if it holds a
/// valid record after all, that is refused.
fn remove_unused_file(path: &Path, file_bytes: u64, end: u64) -> Result<()> {
    // SAFETY: the store is being opened under its lock and `path` lies past the log's end.
    if let Some(at) = unsafe { first_valid_record(path, file_bytes)? } {
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
///
/// # Safety
///
/// Nothing writes the file meanwhile: the caller holds the store's lock, and the file is
/// not one an open store writes (it lies past the log's end, or the store is not open).
pub unsafe fn first_valid_record(path: &Path, file_bytes: u64) -> Result<Option<usize>> {
    let file = MappedFile::open_allocating_from(path, file_bytes, file_bytes)?;
    // SAFETY: nothing writes the file, by the caller's guarantee.
    Ok(unsafe { next_valid_batch(&file, 0) })
}

/// The position of the first valid batch at or after `from` in a commit-log file, looking
/// only where the file holds data: a batch is written data, and the never-written rest of a
/// 1 GiB file would otherwise be read (and zero-filled) page by page, which made recovery
/// after a crash take seconds whatever was written since the checkpoint.
///
/// # Safety
///
/// Nothing writes `file` meanwhile: recovery before the store is shared, or `commitfs
/// check` holding the store's lock.
pub unsafe fn next_valid_batch(file: &MappedFile, from: usize) -> Option<usize> {
    // SAFETY: all of the file is unwritten meanwhile, by the caller's guarantee, and was
    // written (if at all) before it was mapped here.
    let bytes = unsafe { file.bytes(0, file.allocated() as usize) };
    file.data_ranges(from as u64).into_iter().find_map(|range| {
        let start = (range.start as usize).max(from);
        format::next_valid_record(&bytes[..range.end as usize], start)
    })
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

    /// A commit-log file holding a batch at `at`, the rest zeroes.
    fn file_with_a_batch() -> impl Strategy<Value = Vec<u8>> {
        (format::fuzz::batch(), 0usize..64).prop_map(|(batch, at)| {
            let mut bytes = vec![0u8; at];
            bytes.extend_from_slice(&batch);
            bytes.resize(bytes.len() + 16, 0);
            bytes
        })
    }

    proptest! {
        #![proptest_config(fuzzing::config(200))]

        /// A queue or index entry may name any offset and any message number: whatever
        /// `message_in` returns there stays inside the file, and its payload, key and CRC
        /// can be read without a panic.
        #[test]
        fn a_message_at_any_offset_of_any_file_stays_inside_the_file(
            bytes in fuzzing::garbage_or_damaged(file_with_a_batch(), 512),
            base in prop_oneof![Just(0u64), Just(4096), any::<u64>()],
            offsets in proptest::collection::vec((0u64..600, 0u32..8), 1..16),
            wild in prop_oneof![any::<u64>(), (u64::MAX - 64..=u64::MAX)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let capacity = bytes.len().max(1) as u64;
            let data = MappedFile::create(&dir.path().join("log"), capacity, capacity).unwrap();
            // SAFETY: the file was just created here and is not shared.
            unsafe { data.write(0, &bytes) };
            let file = LogFile { base, data };
            let places = offsets.iter().map(|&(o, i)| (base.wrapping_add(o), i));
            for (batch, index) in places.chain([(wild, 0)]) {
                let _ = batch_in(&file, batch, u64::MAX);
                if let Some(record) = message_in(&file, MessageAt { batch, index }, u64::MAX) {
                    let end = record.position() + u64::from(record.batch_size);
                    prop_assert!(end <= capacity);
                    let len = record.header.payload_len();
                    prop_assert!(record.payload_to_batch_end().len() >= len);
                    prop_assert!(record.header.key_len.is_none_or(|k| k as usize <= len));
                    prop_assert_eq!(record.batch_bytes().len(), record.batch_size as usize);
                    let _ = record.crc_matches();
                }
            }
        }
    }
}
