//! A partition's consume queue: 20-byte entries, one per message, in files of a fixed number
//! of entries, so the entry of offset N is found by arithmetic. Files grow in allocated
//! chunks, so a partition with few messages costs a few KiB of disk, not a whole file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::commitlog::PrepareJob;
use super::error::{Result, StoreError};
use super::format::{self, QueueEntry, QUEUE_ENTRY_BYTES};
use super::mapped::{remove_file, MappedFile};
use super::meta::UnsyncedNames;
use super::open_files::{populate_later, Held, OpenFiles};

const FIRST_CHUNK_BYTES: u64 = 4096;
const MAX_CHUNK_BYTES: u64 = 1 << 20;

/// Less allocated ahead is left to the writer's own page faults: with thousands of small
/// queues, a job for the preparer thread per 4 KiB page cost more than the fault it saved.
const MIN_POPULATE_BYTES: u64 = 64 * 1024;

/// What a queue file of `have` allocated bytes grows to when it needs `needed`: double the
/// allocation each time, up to 1 MiB chunks, so that small queues stay small and big ones
/// grow in few system calls.
fn next_allocation(have: u64, needed: u64) -> u64 {
    let grow = have.clamp(FIRST_CHUNK_BYTES, MAX_CHUNK_BYTES);
    (have + grow).max(needed).div_ceil(FIRST_CHUNK_BYTES) * FIRST_CHUNK_BYTES
}

/// A file made ahead of need carries this suffix until an append adopts it: recovery and
/// `commitfs check` see only 20-digit names, so one nobody used holds no claim on anything.
const PREPARED_SUFFIX: &str = ".prepared";

pub struct QueueFile {
    pub base: u64,
    data: MappedFile,
}

impl QueueFile {
    /// The entry of `offset`, if it lies in the file's allocated bytes (a shorter file
    /// than expected must not make a reader touch the map past the file's end). Only for
    /// an offset below the partition's end as the caller loaded it, or before the queue is
    /// shared; an entry waiting in memory is read from there instead (`Queue::entry`).
    pub fn entry(&self, offset: u64) -> Option<QueueEntry> {
        let index = offset.checked_sub(self.base)?;
        (index < self.allocated_entries()).then(|| {
            let at = index * QUEUE_ENTRY_BYTES as u64;
            // SAFETY: the partition's writer stores an entry once (`put`, or
            // `write_out_pending` for one a reader finds in memory until then), before it
            // moves the partition's end past it with `Release`; the caller loaded an end past
            // `offset` with `Acquire`, or the queue is not shared yet.
            QueueEntry::decode(unsafe { self.data.bytes(at, QUEUE_ENTRY_BYTES) })
        })
    }

    /// How many entries from the file's start fit in its allocated bytes.
    pub fn allocated_entries(&self) -> u64 {
        self.data.allocated() / QUEUE_ENTRY_BYTES as u64
    }
}

impl Held for QueueFile {
    fn mapped(&self) -> &MappedFile {
        &self.data
    }
}

/// A queue file is mapped on first use, not at open, and closed again when the store's
/// budget of open files lets go of it and no reader holds it: a store with many partitions
/// and old segments must not spend a descriptor and a map per file (`ulimit -n`,
/// `vm.max_map_count`).
struct Slot {
    /// Its allocated bytes as of its last growth (while it is closed).
    len: AtomicU64,
    /// While mapped: one mapping per file, shared by all, so every user sees its growth.
    file: Weak<QueueFile>,
}

impl Slot {
    fn on_disk(len: u64) -> Slot {
        Slot {
            len: AtomicU64::new(len),
            file: Weak::new(),
        }
    }

    fn allocated(&self) -> u64 {
        self.file
            .upgrade()
            .map_or_else(|| self.len.load(Ordering::Relaxed), |f| f.data.allocated())
    }
}

/// How many of a partition's newest entries may wait in memory for their file. Spread over
/// many partitions, an append brings each one message or two, and storing each entry
/// through its own file's map costs a TLB miss and a cache miss per message (more than half
/// of the writer's time at 10,000 partitions); gathered, the file is touched once per this
/// many messages.
const PENDING_ENTRIES: usize = 32;

/// Once this many entries of a partition wait in memory, its append asks the queue writer to
/// write them out: late enough that each write-out carries many (each costs the queue writer
/// a dozen cache misses and a page of the file), early enough that the partition's writer
/// seldom finds the room full and has to write them out itself.
const ASK_QUEUE_WRITER_AT: usize = PENDING_ENTRIES * 3 / 4;

/// The newest entries of a partition that are not in their file yet: readers find them
/// here. They lie in one segment, at consecutive offsets from `first`, and their room in
/// the file is allocated.
struct Pending {
    first: u64,
    len: usize,
    /// Whether the queue writer was asked to write these out (once per filling).
    asked: bool,
    entries: [QueueEntry; PENDING_ENTRIES],
}

impl Pending {
    fn get(&self, offset: u64) -> Option<QueueEntry> {
        let index = offset.checked_sub(self.first)?;
        (index < self.len as u64).then(|| self.entries[index as usize])
    }
}

/// What [`ConsumeQueue::defer`] leaves behind.
pub struct Deferred {
    /// Entries of the partition waiting in memory now.
    pub waiting: u64,
    /// Once most of the room is used: the caller asks the queue writer to write them out
    /// (once per filling), so that the partition's writer seldom finds the room full.
    pub ask_queue_writer: bool,
}

/// The consume-queue files an append reserved its entries' room in, pinned until the entries
/// are written: the store's budget of open files may close a file meanwhile, and mapping it
/// again could fail after the append's first byte went into the log (its store would then be
/// fenced); a pinned file stays mapped.
#[derive(Default)]
pub struct ReservedFiles {
    /// The file of the last reserved entry, where the partition's next append likely goes.
    last: Option<Arc<QueueFile>>,
    /// The files of earlier entries in other segments (rarely any).
    earlier: Vec<Arc<QueueFile>>,
    /// Faults in the bytes the reservation allocated past its entries: storing the entries
    /// of one partition's big batches, a page fault on the writer's thread every 204 entries
    /// was a sixth of the daemon's time.
    populate: Option<PrepareJob>,
}

impl ReservedFiles {
    /// Starts from the file the partition's last append wrote to, if it is still mapped.
    pub fn starting_with(last: Option<Arc<QueueFile>>) -> ReservedFiles {
        ReservedFiles {
            last,
            earlier: Vec::new(),
            populate: None,
        }
    }

    /// The job that faults in the bytes the reservation allocated past its entries, for
    /// the preparer thread.
    pub fn populate_job(&mut self) -> Option<PrepareJob> {
        self.populate.take()
    }

    /// The file of the last reserved entry.
    pub fn last(&self) -> Option<&Arc<QueueFile>> {
        self.last.as_ref()
    }

    fn file(&self, base: u64) -> Option<&Arc<QueueFile>> {
        self.last
            .iter()
            .chain(&self.earlier)
            .find(|f| f.base == base)
    }
}

/// A partition's consume queue: its files by segment, mapped on use.
pub struct ConsumeQueue {
    /// Here as well as in `shared`: the append path reads it for every message, and must
    /// not follow a pointer to another cache line for it.
    entries_per_file: u64,
    /// Entries from this offset on may be in `pending` rather than their file (`u64::MAX`
    /// while none are): a reader below it goes straight to the file.
    pending_from: AtomicU64,
    /// Offsets below this have room allocated in their segment's file, as far as the queue
    /// writer grew the file ahead of the partition's writer (see
    /// [`write_out_waiting`](Self::write_out_waiting)).
    room_ahead: AtomicU64,
    pending: Mutex<Pending>,
    shared: Arc<Shared>,
}

/// What the preparer thread reaches through a [`PrepareHandle`].
struct Shared {
    dir: PathBuf,
    entries_per_file: u64,
    files: RwLock<BTreeMap<u64, Slot>>,
    open_files: Arc<OpenFiles>,
    /// Held while a file is made (ahead of need or by the writer), so the two never race
    /// for the same name; holds the base of the file made ahead of need, if any. That file is
    /// closed and unmapped until adopted: a topic of many partitions holds no descriptor
    /// per partition that was never written.
    prepared: Mutex<Option<u64>>,
    /// Set, under `prepared`, once the queue's directory is to be removed: no file may be
    /// made in it after that.
    retired: AtomicBool,
    /// Files put in place (and the directory itself, when new) since the last checkpoint.
    names: UnsyncedNames,
}

/// Lets the preparer thread make a queue's files ahead of need without keeping the queue.
pub struct PrepareHandle(Weak<Shared>);

impl PrepareHandle {
    /// [`Shared::prepare`], if the queue still exists.
    pub fn prepare(&self, base: u64) -> Result<()> {
        self.0
            .upgrade()
            .map_or(Ok(()), |shared| shared.prepare(base))
    }
}

impl ConsumeQueue {
    /// Opens the queue in `dir`, creating the directory if needed; its files are mapped on
    /// use, within `open_files`.
    pub(super) fn open(
        dir: &Path,
        entries_per_file: u64,
        open_files: Arc<OpenFiles>,
    ) -> Result<ConsumeQueue> {
        let new_dir = !dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let leftovers = prepared_files(dir)?;
        let mut files = BTreeMap::new();
        for base in super::commitlog::list_files(dir)? {
            let path = dir.join(format::file_name(base));
            if base % entries_per_file != 0 {
                return Err(StoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "name is not a multiple of segment_messages {entries_per_file}"
                    ),
                });
            }
            let len = std::fs::metadata(&path)
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
                .len();
            files.insert(base, Slot::on_disk(len));
        }
        let prepared = keep_one_prepared(leftovers, &files, entries_per_file)?;
        Ok(ConsumeQueue {
            entries_per_file,
            pending_from: AtomicU64::new(u64::MAX),
            room_ahead: AtomicU64::new(0),
            pending: Mutex::new(Pending {
                first: 0,
                len: 0,
                asked: false,
                entries: [QueueEntry {
                    commit_log_offset: 0,
                    size: 0,
                    batch: 0,
                }; PENDING_ENTRIES],
            }),
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                entries_per_file,
                files: RwLock::new(files),
                open_files,
                prepared: Mutex::new(prepared),
                retired: AtomicBool::new(false),
                names: UnsyncedNames::new(new_dir),
            }),
        })
    }

    pub fn entries_per_file(&self) -> u64 {
        self.entries_per_file
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn segment_base(&self, offset: u64) -> u64 {
        offset - offset % self.entries_per_file
    }

    /// The file of the segment at `base`, mapped again if it was closed.
    pub fn file(&self, base: u64) -> Option<Arc<QueueFile>> {
        self.stored_file(base).unwrap_or_else(|error| {
            tracing::error!("consume queue unreadable: {error}");
            None
        })
    }

    /// The file of the segment at `base`, mapped again if the budget of open files closed
    /// it; `None` when there is none, an error when there is but it cannot be mapped.
    fn stored_file(&self, base: u64) -> Result<Option<Arc<QueueFile>>> {
        let mapped = match self.shared.files.read().get(&base) {
            Some(slot) => slot.file.upgrade(),
            None => return Ok(None),
        };
        let file = match mapped {
            Some(file) => file,
            None => match self.reopen(base)? {
                Some(file) => file,
                None => return Ok(None),
            },
        };
        self.shared.open_files.touch(&file);
        Ok(Some(file))
    }

    /// Maps the closed file of the segment at `base`; under the write lock, so that a file
    /// never has two mappings (each would see only its own growth).
    fn reopen(&self, base: u64) -> Result<Option<Arc<QueueFile>>> {
        let mut files = self.shared.files.write();
        let Some(slot) = files.get_mut(&base) else {
            return Ok(None);
        };
        if let Some(file) = slot.file.upgrade() {
            return Ok(Some(file));
        }
        let capacity = self.entries_per_file * QUEUE_ENTRY_BYTES as u64;
        let data = MappedFile::open(&self.path(base), capacity)?;
        let file = Arc::new(QueueFile { base, data });
        slot.file = Arc::downgrade(&file);
        Ok(Some(file))
    }

    pub fn entry(&self, offset: u64) -> Option<QueueEntry> {
        self.pending_entry(offset)
            .or_else(|| self.file(self.segment_base(offset))?.entry(offset))
    }

    /// The entry of `offset`, whose file a reader holds.
    pub fn entry_in(&self, file: &QueueFile, offset: u64) -> Option<QueueEntry> {
        self.pending_entry(offset).or_else(|| file.entry(offset))
    }

    /// The entry of `offset` if it waits in memory for its file.
    fn pending_entry(&self, offset: u64) -> Option<QueueEntry> {
        if offset < self.pending_from.load(Ordering::Acquire) {
            return None;
        }
        // Written out meanwhile if it is not here: then it is in the file.
        self.pending.lock().get(offset)
    }

    /// The entry of `offset`, through its file's mapping if it is open, else read with
    /// `pread` without opening it for good: for the passes over every partition (retention,
    /// recovery), which must not open a file per partition nor push out the files in use.
    pub fn peek_entry(&self, offset: u64) -> Option<QueueEntry> {
        if let Some(entry) = self.pending_entry(offset) {
            return Some(entry);
        }
        let base = self.segment_base(offset);
        let mapped = self.shared.files.read().get(&base)?.file.upgrade();
        match mapped {
            Some(file) => file.entry(offset),
            None => self.read_entry_from_disk(offset).unwrap_or_else(|error| {
                tracing::error!("consume queue unreadable: {error}");
                None
            }),
        }
    }

    /// The entry of `offset` read with `pread`, not through a map (for checks at open: a
    /// disk read error is then an error, not a `SIGBUS`). `None` if the file or the entry
    /// is missing.
    pub fn read_entry_from_disk(&self, offset: u64) -> Result<Option<QueueEntry>> {
        use std::os::unix::fs::FileExt;
        let base = self.segment_base(offset);
        let path = self.path(base);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
        };
        let mut bytes = [0u8; QUEUE_ENTRY_BYTES];
        let at = (offset - base) * QUEUE_ENTRY_BYTES as u64;
        match file.read_exact_at(&mut bytes, at) {
            Ok(()) => Ok(Some(QueueEntry::decode(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(StoreError::io(
                format!("reading byte {at} of {}", path.display()),
                e,
            )),
        }
    }

    /// The first offset of `[from, to)` whose message lies at or after commit-log offset
    /// `log_offset` (`to` if none). Commit-log positions grow with offsets, so a binary search.
    pub fn first_at_or_after(&self, from: u64, to: u64, log_offset: u64) -> u64 {
        let before = |offset| {
            self.peek_entry(offset)
                .is_some_and(|e| e.commit_log_offset < log_offset)
        };
        // Nearly always nothing is before: one entry read, not a search's worth of files.
        if from >= to || !before(from) {
            return from;
        }
        let (mut low, mut high) = (from + 1, to);
        while low < high {
            let middle = low + (high - low) / 2;
            if before(middle) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Bases of the files on disk, oldest first.
    pub fn file_bases(&self) -> Vec<u64> {
        self.shared.files.read().keys().copied().collect()
    }

    /// Whether entries `[from, to)` all lie in allocated parts of existing files.
    pub fn covers(&self, from: u64, to: u64) -> bool {
        let mut offset = from;
        while offset < to {
            let base = self.segment_base(offset);
            let Some(allocated) = self.shared.files.read().get(&base).map(Slot::allocated) else {
                return false;
            };
            let file_end = base + self.entries_per_file;
            if base + allocated / (QUEUE_ENTRY_BYTES as u64) < to.min(file_end) {
                return false;
            }
            offset = file_end;
        }
        true
    }

    /// Allocates room for the entries `[from, to)`, so that writing them cannot fail, and
    /// pins their files in `reserved` until they are written, and says up to which offset
    /// the file of `to - 1` has room. Only the partition's single writer calls this;
    /// `reserved` may start with the file its last append wrote to, so an append to the same
    /// file skips the lookup of the file map.
    pub fn reserve(&self, reserved: &mut ReservedFiles, from: u64, to: u64) -> Result<u64> {
        let mut offset = from;
        let mut room_end = to;
        while offset < to {
            let base = self.segment_base(offset);
            if reserved.last.as_ref().is_none_or(|f| f.base != base) {
                let file = match self.stored_file(base)? {
                    Some(file) => file,
                    None => self.adopt_or_create(base)?,
                };
                // Before the first entry, `last` was the previous append's file: none of
                // these entries is in it.
                if let Some(previous) = reserved.last.replace(file) {
                    if offset > from {
                        reserved.earlier.push(previous);
                    }
                }
            }
            let file = reserved.last.as_ref().expect("set above");
            self.shared.open_files.touch(file);
            let file_end = (base + self.entries_per_file).min(to);
            let needed = (file_end - base) * QUEUE_ENTRY_BYTES as u64;
            let had = file.data.allocated();
            if needed > had {
                file.data.allocate(next_allocation(had, needed))?;
            }
            // Once less than half of the next growth is left, that growth too.
            let grown = self.allocate_ahead_of(file, needed, had);
            let ahead = needed.max(grown.start)..grown.end;
            if ahead.end - ahead.start >= MIN_POPULATE_BYTES {
                reserved.populate = Some(populate_later(file, ahead));
            }
            room_end = base + file.allocated_entries().min(self.entries_per_file);
            offset = file_end;
        }
        Ok(room_end)
    }

    /// Starts loading the cache line of `offset`'s entry, if `file` is its file.
    pub fn prefetch(&self, file: Option<&Arc<QueueFile>>, offset: u64) {
        if let Some(file) = file.filter(|f| f.base == self.segment_base(offset)) {
            file.data
                .prefetch((offset - file.base) * QUEUE_ENTRY_BYTES as u64);
        }
    }

    /// Writes the entry of `offset`, whose room [`reserve`](Self::reserve) made in one of
    /// the `reserved` files: nothing is mapped again here, so nothing can fail.
    pub fn put(&self, reserved: &ReservedFiles, offset: u64, entry: &QueueEntry) {
        let base = self.segment_base(offset);
        let file = reserved
            .file(base)
            .expect("entry reserved before it is written");
        // SAFETY: only the partition's writer calls this (an append under the partition's
        // writer lock, or recovery before the store is shared), for an offset the end has
        // not passed yet: no reader asks for it, and no one else writes it.
        unsafe {
            file.data
                .write((offset - base) * QUEUE_ENTRY_BYTES as u64, &entry.encode())
        };
    }

    /// Whether the entries `[from, from + count)` can wait in memory after the `waiting`
    /// ones before `from` that the partition's writer left there: all fit, and all lie in one
    /// segment (a failed append may have reserved room in the next segment while entries of
    /// this one still wait). Fewer may wait now (the queue writer or a checkpoint may have
    /// written them out), which only leaves room. Answered from the writer's own count,
    /// without the lock of the waiting entries: at 10,000 partitions that lock's cache line
    /// was one more miss per message.
    pub fn can_defer(&self, from: u64, count: u64, waiting: u64) -> bool {
        count > 0
            && waiting + count <= PENDING_ENTRIES as u64
            && from.checked_sub(waiting).is_some_and(|first| {
                self.segment_base(first) == self.segment_base(from + count - 1)
            })
    }

    /// Starts loading the lock of the entries waiting in memory, which the partition's next
    /// append takes.
    pub fn prefetch_pending(&self) {
        super::mapped::prefetch(&self.pending);
    }

    /// Starts loading what [`write_out_waiting`](Self::write_out_waiting) takes first: the
    /// lock of the waiting entries and that of the map of files.
    pub fn prefetch_write_out(&self) {
        self.prefetch_pending();
        super::mapped::prefetch(&self.shared.files);
    }

    /// Keeps the entries of `from` on in memory, after those waiting already (as
    /// [`can_defer`](Self::can_defer) allowed; only the partition's writer adds entries).
    pub fn defer(&self, from: u64, entries: impl Iterator<Item = QueueEntry>) -> Deferred {
        let mut pending = self.pending.lock();
        if pending.len == 0 {
            pending.first = from;
            self.pending_from.store(from, Ordering::Release);
        }
        for entry in entries {
            let at = pending.len;
            pending.entries[at] = entry;
            pending.len += 1;
        }
        let ask = !pending.asked && pending.len >= ASK_QUEUE_WRITER_AT;
        pending.asked |= ask;
        Deferred {
            waiting: pending.len as u64,
            ask_queue_writer: ask,
        }
    }

    /// The file the entries waiting in memory go to, mapped (again, if the budget of open
    /// files closed it), so that writing them out cannot fail: `None` when none wait, or
    /// when retention removed their file.
    pub fn file_for_pending(&self) -> Result<Option<Arc<QueueFile>>> {
        let first = {
            let pending = self.pending.lock();
            if pending.len == 0 {
                return Ok(None);
            }
            pending.first
        };
        self.stored_file(self.segment_base(first))
    }

    /// Writes the entries waiting in memory into `file` (from
    /// [`file_for_pending`](Self::file_for_pending)); readers find them there from now on.
    /// False when the entries waiting now are not `file`'s (others came meanwhile): they
    /// stay in memory, still found by readers, for a later write-out.
    pub fn write_out_pending(&self, file: Option<&Arc<QueueFile>>) -> bool {
        self.write_out_pending_to(file).is_some()
    }

    /// [`write_out_pending`](Self::write_out_pending), saying up to which offset the entries
    /// written go (0 when none waited).
    fn write_out_pending_to(&self, file: Option<&Arc<QueueFile>>) -> Option<u64> {
        let mut pending = self.pending.lock();
        if pending.len == 0 {
            return Some(0);
        }
        let written_end = pending.first + pending.len as u64;
        let base = self.segment_base(pending.first);
        match file {
            Some(file) if file.base == base => {
                let mut bytes = [0u8; PENDING_ENTRIES * QUEUE_ENTRY_BYTES];
                let entries = &pending.entries[..pending.len];
                for (entry, slot) in entries
                    .iter()
                    .zip(bytes.chunks_exact_mut(QUEUE_ENTRY_BYTES))
                {
                    slot.copy_from_slice(&entry.encode());
                }
                let at = (pending.first - base) * QUEUE_ENTRY_BYTES as u64;
                // SAFETY: the pending lock is held, and readers take these entries from
                // memory (under the lock) until `pending_from` moves past them below, with
                // `Release` after this store; whoever writes them out (the partition's
                // writer, the queue writer, a checkpoint) holds the lock, and empties them.
                unsafe {
                    file.data
                        .write(at, &bytes[..pending.len * QUEUE_ENTRY_BYTES])
                };
            }
            // Only retention removes the file of a segment that has messages, and it moved
            // the partition's start past them first: no reader asks for them any more.
            None if !self.shared.files.read().contains_key(&base) => tracing::debug!(
                "consume-queue entries {}..{} of {} go with their file, removed by retention",
                pending.first,
                pending.first + pending.len as u64,
                self.shared.dir.display()
            ),
            _ => return None,
        }
        pending.len = 0;
        pending.asked = false;
        self.pending_from.store(u64::MAX, Ordering::Release);
        Some(written_end)
    }

    /// Writes the entries waiting in memory into their file, for the queue writer. Should
    /// the file not map now (the budget of open files closed it, and opening it again
    /// fails), they stay in memory, found by readers, for the partition's writer or a
    /// checkpoint, which report the error.
    ///
    /// Then it grows the file ahead of the partition's writer, as that writer's
    /// [`reserve`](Self::reserve) would, and says how far the room reaches now
    /// ([`room_ahead`](Self::room_ahead)): the writer's next appends keep their entries in
    /// memory instead of growing the file (`fallocate`) and writing their entries into it
    /// (a page fault for each new page) on its own thread. At 10,000 partitions, that was
    /// one `fallocate` and one fault for every few hundred messages.
    pub fn write_out_waiting(&self) {
        match self.file_for_pending() {
            Ok(file) => {
                let written_end = self.write_out_pending_to(file.as_ref());
                if let (Some(file), Some(written_end)) = (file, written_end) {
                    self.grow_ahead(&file, written_end);
                }
            }
            Err(error) => tracing::warn!(
                "consume-queue entries of {} stay in memory for now: {error}",
                self.shared.dir.display()
            ),
        }
    }

    /// Allocates `file`'s next growth once less than half of it is left past `used` bytes,
    /// and records the file's size where it is kept while the file is closed. Returns the
    /// bytes allocated since it had `had` (none when it did not grow), to be faulted in.
    fn allocate_ahead_of(&self, file: &QueueFile, used: u64, had: u64) -> Range<u64> {
        let have = file.data.allocated();
        file.data
            .allocate_ahead(used, next_allocation(have, have + 1) - have);
        let grown_to = file.data.allocated();
        if grown_to > had {
            if let Some(slot) = self.shared.files.read().get(&file.base) {
                slot.len.fetch_max(grown_to, Ordering::Relaxed);
            }
        }
        had..grown_to
    }

    /// Once less than half of the file's next growth is left past `written_end`, allocates
    /// that growth and, from `MIN_POPULATE_BYTES` on, faults it in, on the caller's thread;
    /// then publishes the room. Best effort: on a full disk the partition's writer reserves
    /// the room itself and its append fails.
    fn grow_ahead(&self, file: &Arc<QueueFile>, written_end: u64) {
        let used = written_end.saturating_sub(file.base) * QUEUE_ENTRY_BYTES as u64;
        let grown = self.allocate_ahead_of(file, used, file.data.allocated());
        if grown.end - grown.start >= MIN_POPULATE_BYTES {
            populate_later(file, grown)();
        }
        let room = file.base + file.allocated_entries().min(self.entries_per_file);
        self.room_ahead.fetch_max(room, Ordering::Release);
    }

    /// Offsets below this have room allocated in their segment's file (those of an earlier
    /// segment than the partition's active one say nothing about it).
    pub fn room_ahead(&self) -> u64 {
        self.room_ahead.load(Ordering::Acquire)
    }

    /// Writes the entries waiting in memory into their file now (before a checkpoint counts
    /// them as stored). The partition's writer may add entries of another segment while
    /// the file is found: then that segment's file is found and written.
    pub fn write_out_pending_now(&self) -> Result<()> {
        loop {
            let file = self.file_for_pending()?;
            fail::fail_point!("queue::write-out-pending");
            if self.write_out_pending(file.as_ref()) {
                return Ok(());
            }
        }
    }

    /// The segment whose file should be made ahead of need once `[from, to)` is reserved:
    /// the next one, when these entries pass the middle of the segment `to - 1` lies in.
    pub fn next_to_prepare(&self, from: u64, to: u64) -> Option<u64> {
        let last = to.checked_sub(1)?;
        let base = self.segment_base(last);
        let middle = base + self.entries_per_file / 2;
        (from <= middle && middle <= last).then_some(base + self.entries_per_file)
    }

    /// Makes no more files ahead of need, after waiting for one being made: the queue's
    /// directory is about to be removed (its topic deleted, or never created), and a file
    /// made during the removal would leave the directory behind.
    pub fn retire(&self) {
        let _making = self.shared.prepared.lock();
        self.shared.retired.store(true, Ordering::Release);
    }

    pub fn prepare_handle(&self) -> PrepareHandle {
        PrepareHandle(Arc::downgrade(&self.shared))
    }

    /// The file of the segment at `base` for its first append: the one made ahead of need,
    /// renamed into place and mapped (no allocation), or else a new one.
    fn adopt_or_create(&self, base: u64) -> Result<Arc<QueueFile>> {
        let mut prepared = self.shared.prepared.lock();
        if let Some(file) = self.file(base) {
            return Ok(file);
        }
        let path = self.path(base);
        let capacity = self.entries_per_file * QUEUE_ENTRY_BYTES as u64;
        let data = match prepared.take() {
            Some(ready) if ready == base => {
                let made = self.shared.prepared_path(base);
                if let Err(error) = std::fs::rename(&made, &path) {
                    // Made under a name nothing else knows: gone with the failure.
                    let _ = std::fs::remove_file(&made);
                    return Err(StoreError::io(
                        format!("renaming {} to {}", made.display(), path.display()),
                        error,
                    ));
                }
                #[cfg(feature = "failpoints")]
                super::faults::renamed(&made, &path);
                match MappedFile::open(&path, capacity) {
                    Ok(data) => data,
                    // It holds no entry yet: made again.
                    Err(error) => {
                        tracing::warn!(
                            "a consume-queue file made ahead of need is made again: {error}"
                        );
                        remove_file(&path)?;
                        MappedFile::create(&path, capacity, FIRST_CHUNK_BYTES.min(capacity))?
                    }
                }
            }
            other => {
                *prepared = other;
                MappedFile::create(&path, capacity, FIRST_CHUNK_BYTES.min(capacity))?
            }
        };
        self.shared.names.made();
        let file = Arc::new(QueueFile { base, data });
        let slot = Slot {
            len: AtomicU64::new(file.data.allocated()),
            file: Arc::downgrade(&file),
        };
        self.shared.files.write().insert(base, slot);
        self.shared.open_files.touch(&file);
        Ok(file)
    }

    /// Whether files were put in place since the last checkpoint (see `meta::sync_names`).
    pub fn unsynced_names(&self) -> &UnsyncedNames {
        &self.shared.names
    }

    /// Flushes the entries `[from, to)` to disk.
    pub fn flush(&self, from: u64, to: u64) -> Result<()> {
        let mut offset = from;
        while offset < to {
            let base = self.segment_base(offset);
            let file_end = (base + self.entries_per_file).min(to);
            // One the budget closed is mapped again; one that cannot be fails the flush.
            if let Some(file) = self.stored_file(base)? {
                let start = (offset - base) * QUEUE_ENTRY_BYTES as u64;
                let end = (file_end - base) * QUEUE_ENTRY_BYTES as u64;
                file.data.flush(start, end - start)?;
            }
            offset = file_end;
        }
        Ok(())
    }

    /// Removes the files of segments that end at or before `offset`. Open readers keep their
    /// mapping of a removed file.
    pub fn remove_before(&self, offset: u64) -> Result<()> {
        let mut files = self.shared.files.write();
        while let Some((&base, _)) = files.first_key_value() {
            if base + self.entries_per_file > offset {
                break;
            }
            remove_file(&self.path(base))?;
            if let Some(slot) = files.remove(&base) {
                self.shared.forget(&slot);
            }
        }
        Ok(())
    }

    /// Removes every file (before a rebuild from the commit log).
    pub fn remove_all(&self) -> Result<()> {
        let mut files = self.shared.files.write();
        while let Some((base, slot)) = files.pop_first() {
            self.shared.forget(&slot);
            if let Err(error) = remove_file(&self.path(base)) {
                files.insert(base, slot);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Removes files past the segment holding `end` (left by an unclean stop).
    pub fn remove_from(&self, end: u64) -> Result<()> {
        let keep_through = self.segment_base(end);
        let mut files = self.shared.files.write();
        let stale: Vec<u64> = files
            .range(keep_through + 1..)
            .map(|(&base, _)| base)
            .collect();
        for base in stale {
            if let Some(slot) = files.remove(&base) {
                self.shared.forget(&slot);
            }
            remove_file(&self.path(base))?;
        }
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        let capacity = self.entries_per_file * QUEUE_ENTRY_BYTES as u64;
        let prepared = self
            .shared
            .prepared
            .lock()
            .map_or(0, |_| FIRST_CHUNK_BYTES.min(capacity));
        prepared
            + self
                .shared
                .files
                .read()
                .values()
                .map(Slot::allocated)
                .sum::<u64>()
    }

    fn path(&self, base: u64) -> PathBuf {
        self.shared.path(base)
    }
}

impl Shared {
    /// Lets the budget of open files drop `slot`'s file now: it is removed, or its queue is.
    fn forget(&self, slot: &Slot) {
        if let Some(file) = slot.file.upgrade() {
            self.open_files.forget(&file.data);
        }
    }
    /// Makes the file of the segment at `base` ahead of need, under a name recovery ignores,
    /// unless the queue has it already. Replaces a prepared file of another segment (one
    /// nobody adopted: a segment roll came sooner, or retention took its place).
    fn prepare(&self, base: u64) -> Result<()> {
        let mut prepared = self.prepared.lock();
        if self.retired.load(Ordering::Acquire)
            || *prepared == Some(base)
            || self.files.read().contains_key(&base)
        {
            return Ok(());
        }
        if let Some(stale) = prepared.take() {
            remove_file(&self.prepared_path(stale))?;
        }
        let path = self.prepared_path(base);
        // Left by a preparation that failed part way (its file is removed; a kill may not).
        remove_file(&path)?;
        let capacity = self.entries_per_file * QUEUE_ENTRY_BYTES as u64;
        // Allocated now, then closed and unmapped until its first append opens it.
        drop(MappedFile::create(
            &path,
            capacity,
            FIRST_CHUNK_BYTES.min(capacity),
        )?);
        *prepared = Some(base);
        Ok(())
    }

    fn path(&self, base: u64) -> PathBuf {
        self.dir.join(format::file_name(base))
    }

    fn prepared_path(&self, base: u64) -> PathBuf {
        self.dir
            .join(format!("{}{PREPARED_SUFFIX}", format::file_name(base)))
    }
}

impl Drop for Shared {
    /// A queue dropped (its topic deleted, or recovery done with it) leaves no file open.
    fn drop(&mut self) {
        for slot in self.files.read().values() {
            self.forget(slot);
        }
    }
}

/// Files made ahead of need that a stop left unadopted, by base, with their paths.
fn prepared_files(dir: &Path) -> Result<BTreeMap<u64, PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    let mut found = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let base = name
            .to_str()
            .and_then(|name| name.strip_suffix(PREPARED_SUFFIX))
            .and_then(format::parse_file_name);
        if let Some(base) = base {
            found.insert(base, entry.path());
        }
    }
    Ok(found)
}

/// Keeps the newest leftover prepared file for reuse (it holds no entry: a file is renamed
/// into place before its first entry is written), so a store of many partitions that were
/// never written does not make all their files again at every open; removes the others,
/// and one whose segment has a file already or whose name no segment can have.
fn keep_one_prepared(
    mut leftovers: BTreeMap<u64, PathBuf>,
    files: &BTreeMap<u64, Slot>,
    entries_per_file: u64,
) -> Result<Option<u64>> {
    let newest = leftovers.pop_last();
    for path in leftovers.values() {
        remove_file(path)?;
    }
    let Some((base, path)) = newest else {
        return Ok(None);
    };
    if base % entries_per_file != 0 || files.contains_key(&base) {
        remove_file(&path)?;
        return Ok(None);
    }
    // Opened, and made again if it cannot be, by its first append.
    Ok(Some(base))
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const ENTRIES_PER_FILE: u64 = 8;

    /// A queue file's bytes: entries pointing at growing commit-log offsets.
    fn queue_file() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((0u64..1000, 48u32..200), 0..10).prop_map(|steps| {
            let mut at = 0;
            let mut bytes = Vec::new();
            for (gap, size) in steps {
                at += gap;
                let entry = QueueEntry {
                    commit_log_offset: at,
                    size,
                    batch: u64::from(size),
                };
                bytes.extend_from_slice(&entry.encode());
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(fuzzing::config(200))]

        /// A queue directory with damaged or misnamed files opens or is refused as corrupt,
        /// and every question asked of it is answered without a panic.
        #[test]
        fn any_queue_files_open_and_answer_without_a_panic(
            files in proptest::collection::vec(
                (0u64..40, fuzzing::garbage_or_damaged(queue_file(), 300)), 0..4),
            odd_name in prop_oneof![Just(None), "[0-9]{20}".prop_map(Some), ".{1,8}".prop_map(Some)],
            questions in proptest::collection::vec((0u64..50, 0u64..50, any::<u64>()), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for (base, bytes) in &files {
                std::fs::write(dir.path().join(format::file_name(*base)), bytes).unwrap();
            }
            if let Some(name) = odd_name.filter(|n| !n.contains('/') && n != "." && n != "..") {
                let _ = std::fs::write(dir.path().join(name), b"x");
            }
            let open_files = OpenFiles::new(2);
            let Ok(queue) = ConsumeQueue::open(dir.path(), ENTRIES_PER_FILE, open_files) else {
                return Ok(());
            };
            for (from, to, log_offset) in questions {
                let _ = queue.entry(from);
                let _ = queue.covers(from, to);
                let found = queue.first_at_or_after(from, to, log_offset);
                prop_assert!(from >= to || (from..=to).contains(&found));
                let _ = queue.flush(from, to);
            }
            let mut reserved = ReservedFiles::default();
            if queue.reserve(&mut reserved, 3, 11).is_ok() {
                let entry = QueueEntry { commit_log_offset: 1, size: 48, batch: 0 };
                queue.put(&reserved, 10, &entry);
                prop_assert_eq!(queue.entry(10), Some(entry));
            }
            let _ = queue.remove_from(20);
            let _ = queue.remove_before(9);
        }
    }
}
