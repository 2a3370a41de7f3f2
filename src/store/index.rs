//! The key index: RocketMQ-style on-disk hash tables. Each file has a header, a table of
//! hash slots and fixed-size entries; a slot holds the number of the newest entry whose key
//! hash falls in it, and each entry links to the previous entry of its slot, so the newest
//! occurrence of a key is found first. When a file is full the next one starts.

use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::append::Fence;
use super::commitlog::PrepareJob;
use super::error::{Result, StoreError};
use super::format::{self, le_u32, le_u64, MessageAt};
use super::mapped::{prefetch, remove_file, MappedFile};
use super::meta::UnsyncedNames;
use super::open_files::{populate_later, Held, OpenFiles};

const MAGIC: u32 = 0xC0F5_1DC5;
const VERSION: u32 = 2;
pub const HEADER_BYTES: u64 = 64;
/// Key hash (8), batch offset (8), message number in the batch (4), previous entry (4).
pub const ENTRY_BYTES: u64 = 24;
const ENTRY_CHUNK: u64 = 65_536;
const COUNT_AT: u64 = 16;

pub struct IndexFile {
    /// Commit-log offset of the first message indexed here (also the file's name).
    pub base: u64,
    data: MappedFile,
    slots: u32,
    capacity: u32,
    /// While entries go to this file: its slot table, in memory (see [`SlotTable`]).
    in_memory: RwLock<Option<Arc<SlotTable>>>,
}

impl Held for IndexFile {
    fn mapped(&self) -> &MappedFile {
        &self.data
    }
}

impl IndexFile {
    fn create(dir: &Path, base: u64, slots: u32, capacity: u32) -> Result<IndexFile> {
        let path = dir.join(format::file_name(base));
        fail::fail_point!("index::create-file", |_| Err(StoreError::DiskFull(
            format!("creating {} (failpoint index::create-file)", path.display())
        )));
        let entries_at = HEADER_BYTES + u64::from(slots) * 4;
        let total = entries_at + u64::from(capacity) * ENTRY_BYTES;
        let data = MappedFile::create(
            &path,
            total,
            entries_at + ENTRY_CHUNK.min(u64::from(capacity)) * ENTRY_BYTES,
        )?;
        let mut header = [0u8; HEADER_BYTES as usize];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&slots.to_le_bytes());
        header[12..16].copy_from_slice(&capacity.to_le_bytes());
        header[16..20].copy_from_slice(&1u32.to_le_bytes());
        header[24..32].copy_from_slice(&base.to_le_bytes());
        header[32..40].copy_from_slice(&base.to_le_bytes());
        // SAFETY: the file was just created here and is not shared yet.
        unsafe { data.write(0, &header) };
        Ok(IndexFile {
            base,
            data,
            slots,
            capacity,
            in_memory: RwLock::new(None),
        })
    }

    fn open(path: &Path, base: u64) -> Result<IndexFile> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: reason.to_owned(),
        };
        let mut header = [0u8; HEADER_BYTES as usize];
        {
            use std::io::Read;
            let mut file = std::fs::File::open(path)
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
            file.read_exact(&mut header)
                .map_err(|_| corrupt("index file shorter than its header"))?;
        }
        let header = &header[..];
        if le_u32(header, 0) != MAGIC || le_u32(header, 4) != VERSION {
            return Err(corrupt("not an index file of this version"));
        }
        let (slots, capacity) = (le_u32(header, 8), le_u32(header, 12));
        let total = HEADER_BYTES + u64::from(slots) * 4 + u64::from(capacity) * ENTRY_BYTES;
        if slots == 0 || capacity < 2 {
            return Err(corrupt("index header sizes do not match the file"));
        }
        // Map the whole table's address space so the entry area can keep growing.
        let data = MappedFile::open(path, total)?;
        if data.allocated() > total {
            return Err(corrupt("index file longer than its header says"));
        }
        let file = IndexFile {
            base,
            data,
            slots,
            capacity,
            in_memory: RwLock::new(None),
        };
        if file.data.allocated() < file.entries_at() {
            return Err(corrupt("index slot table not allocated"));
        }
        // Room is allocated before an entry goes in, so a file shorter than its entries was
        // cut back: its lost entries are found again only by rebuilding the index.
        if file.count() > file.allocated_entries() {
            return Err(corrupt("index file shorter than its entries"));
        }
        let count = file.count().max(1);
        // Stored only when it changes: a file opened again to be read stays clean.
        if file.count() != count {
            file.count_cell().store(count, Ordering::Release);
        }
        Ok(file)
    }

    fn entries_at(&self) -> u64 {
        HEADER_BYTES + u64::from(self.slots) * 4
    }

    fn count_cell(&self) -> &std::sync::atomic::AtomicU32 {
        self.data.atomic_u32(COUNT_AT)
    }

    /// Entries in use, counting the null entry 0.
    pub fn count(&self) -> u32 {
        self.count_cell().load(Ordering::Acquire)
    }

    fn allocated_entries(&self) -> u32 {
        ((self.data.allocated() - self.entries_at()) / ENTRY_BYTES) as u32
    }

    fn slot_number(&self, hash: u64) -> usize {
        (hash % u64::from(self.slots)) as usize
    }

    /// Slot `number` of the table in the file's map.
    fn mapped_slot(&self, number: usize) -> &AtomicU32 {
        self.data.atomic_u32(HEADER_BYTES + number as u64 * 4)
    }

    /// The slot of `hash`: in `table` (the file's table in memory) if there is one.
    fn slot<'t>(&'t self, table: Option<&'t SlotTable>, hash: u64) -> &'t AtomicU32 {
        let number = self.slot_number(hash);
        table.map_or_else(|| self.mapped_slot(number), |table| table.slot(number))
    }

    /// The slot table in memory, made now (a copy of the map's) if there is none: from now
    /// on inserts and lookups use it, and flushes write it back. `None` if no memory could
    /// be had (the map then serves). Under the writer lock.
    fn hold_slots_in_memory(&self) -> Option<Arc<SlotTable>> {
        if let Some(table) = self.in_memory.read().clone() {
            return Some(table);
        }
        let table = SlotTable::new(self.slots as usize)
            .inspect_err(|error| {
                tracing::debug!("no memory for the key index's slot table: {error}")
            })
            .ok()?;
        // A file without entries has no slot set (and its map, read, would fill the page
        // cache with zeroes); the table starts zeroed.
        if self.count() > 1 {
            for number in 0..self.slots as usize {
                let value = self.mapped_slot(number).load(Ordering::Relaxed);
                table.slot(number).store(value, Ordering::Relaxed);
            }
        }
        let table = Arc::new(table);
        *self.in_memory.write() = Some(table.clone());
        Some(table)
    }

    /// Writes the slot table in memory back into the map and lets it go: no entry goes to
    /// this file any more. Lookups that hold the table go on reading it (the same values).
    /// Under the writer lock.
    fn release_slots(&self) {
        let Some(table) = self.in_memory.read().clone() else {
            return;
        };
        // Written back before lookups turn to the map: no insert comes in between.
        table.write_back(self);
        *self.in_memory.write() = None;
    }

    /// Entry `number`: below the entry count its caller loaded (`walk`), or any allocated
    /// one before the file is shared (`truncate`, at open).
    fn entry(&self, number: u32) -> (u64, MessageAt, u32) {
        // SAFETY: `insert` stores an entry once, then the count past it with `Release`;
        // below a count this thread loaded with `Acquire`, the entry is written and never
        // written again. Before the file is shared, nothing else writes it at all.
        let bytes = unsafe {
            self.data.bytes(
                self.entries_at() + u64::from(number) * ENTRY_BYTES,
                ENTRY_BYTES as usize,
            )
        };
        decode_entry(bytes)
    }

    /// The largest commit-log offset indexed here (entries go in in log order, so the
    /// newest message's): no live entry lies past it. Under the index's writer lock.
    pub fn end_offset(&self) -> u64 {
        // SAFETY: only `insert` and `truncate` store this header field, and they, like every
        // caller of this method, hold the index's writer lock (or run before the file is
        // shared).
        le_u64(unsafe { self.data.bytes(32, 8) }, 0)
    }

    /// Makes room for `count` more entries. Once less than half a chunk would be left after
    /// them, allocates the next chunk too. Returns the bytes allocated past the entries, to
    /// be faulted in off the writer's thread before the writer gets there.
    fn reserve(&self, count: u32) -> Result<Option<Range<u64>>> {
        let chunk = ENTRY_CHUNK * ENTRY_BYTES;
        let entry_end =
            self.entries_at() + (u64::from(self.count()) + u64::from(count)) * ENTRY_BYTES;
        let had = self.data.allocated();
        if entry_end > had {
            self.data.allocate(entry_end.max(had + chunk))?;
        }
        self.data.allocate_ahead(entry_end, chunk);
        let ahead = entry_end.max(had)..self.data.allocated();
        Ok((!ahead.is_empty()).then_some(ahead))
    }

    /// `table`: the file's slot table in memory, if it has one (the caller holds it, so
    /// that an insert takes no lock).
    fn insert(&self, table: Option<&SlotTable>, hash: u64, at: MessageAt) {
        let number = self.count();
        let slot = self.slot(table, hash);
        let mut entry = [0u8; ENTRY_BYTES as usize];
        entry[0..8].copy_from_slice(&hash.to_le_bytes());
        entry[8..16].copy_from_slice(&at.batch.to_le_bytes());
        entry[16..20].copy_from_slice(&at.index.to_le_bytes());
        entry[20..24].copy_from_slice(&slot.load(Ordering::Acquire).to_le_bytes());
        // SAFETY: entry `number` lies at the count, past every entry a reader may read (they
        // stay below the count); the caller holds the index's writer lock (`IndexRoom`), so
        // no other thread inserts.
        unsafe {
            self.data
                .write(self.entries_at() + u64::from(number) * ENTRY_BYTES, &entry)
        };
        let end = self.end_offset().max(at.batch);
        // SAFETY: the end field is read and written only under the writer lock, held here.
        unsafe { self.data.write(32, &end.to_le_bytes()) };
        // The count first, then the slot: a reader that sees the slot sees a valid entry.
        self.count_cell().store(number + 1, Ordering::Release);
        slot.store(number, Ordering::Release);
        if let Some(table) = table {
            table.changed(self.slot_number(hash));
        }
    }

    /// Calls `f` with the place of every entry whose hash is `hash`, newest first.
    fn walk(&self, hash: u64, f: &mut impl FnMut(MessageAt) -> ControlFlow<()>) -> ControlFlow<()> {
        // The slot before the count: `insert` stores the count first, so a count loaded
        // after the slot covers the entry the slot names (loaded the other way round, a
        // concurrent insert could hide the whole chain).
        let table = self.in_memory.read().clone();
        let mut number = self.slot(table.as_deref(), hash).load(Ordering::Acquire);
        let count = self.count();
        while number != 0 && number < count {
            let (entry_hash, at, previous) = self.entry(number);
            if entry_hash == hash {
                f(at)?;
            }
            // Links only point backwards; anything else is damage, so stop.
            if previous >= number {
                break;
            }
            number = previous;
        }
        ControlFlow::Continue(())
    }

    /// Cuts the file back to `count` entries and rebuilds the slot table from them, since
    /// slots written after the last checkpoint may point at entries that were lost.
    fn truncate(&self, count: u32) {
        let count = count.clamp(1, self.allocated_entries().max(1));
        // Rebuilt in the map; a table in memory would hold the old slots.
        *self.in_memory.write() = None;
        let zeroes = vec![0u8; (u64::from(self.slots) * 4) as usize];
        // SAFETY: recovery truncates the index before the store is shared: no lookup runs.
        unsafe { self.data.write(HEADER_BYTES, &zeroes) };
        let mut last = self.base;
        for number in 1..count {
            let (hash, at, _) = self.entry(number);
            self.slot(None, hash).store(number, Ordering::Relaxed);
            last = last.max(at.batch);
        }
        // SAFETY: as above, before the store is shared.
        unsafe { self.data.write(32, &last.to_le_bytes()) };
        self.count_cell().store(count, Ordering::Release);
    }

    fn flush(&self) -> Result<()> {
        if let Some(table) = self.in_memory.read().clone() {
            table.write_back(self);
        }
        self.data.flush(0, self.data.allocated())
    }
}

/// Slots per block of the slot table that [`SlotTable`] tracks changes of (4 KiB).
const SLOTS_PER_BLOCK: usize = 1024;

/// The slot table of the file entries go to, in anonymous memory that the kernel may back
/// with huge pages; written back into the file's map at each flush and when the file
/// fills. Keys spread over the whole table (20 MB by default), so through the map each
/// insert waited for a TLB miss and a page walk on 4 KiB pages (a fifth of the daemon's time
/// during a `cat` of keyed lines into one partition; that `cat` took 0.34 s with this table
/// against 0.42 s, medians of nine). Losing the table loses nothing a crash does not:
/// recovery rebuilds the newest file's slots from its entries (`truncate`).
struct SlotTable {
    memory: memmap2::MmapMut,
    slots: usize,
    /// One bit per block of slots changed since it was last written back.
    changed: Box<[AtomicU64]>,
    /// Held by a write-back: the one that lets the table go must not finish while a
    /// flush's is still copying blocks whose marks it took.
    writing: Mutex<()>,
}

impl SlotTable {
    fn new(slots: usize) -> std::io::Result<SlotTable> {
        let memory = memmap2::MmapMut::map_anon(slots * 4)?;
        // Best effort: on 4 KiB pages the table still spares the map's page faults.
        let _ = memory.advise(memmap2::Advice::HugePage);
        let blocks = slots.div_ceil(SLOTS_PER_BLOCK);
        Ok(SlotTable {
            memory,
            slots,
            changed: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            writing: Mutex::new(()),
        })
    }

    fn slot(&self, number: usize) -> &AtomicU32 {
        assert!(number < self.slots, "slot {number} of {}", self.slots);
        // SAFETY: the anonymous map is page-aligned, zero-filled and `slots * 4` bytes long,
        // lives as long as `self`, and is only ever accessed through these atomic cells.
        unsafe { &*self.memory.as_ptr().cast::<AtomicU32>().add(number) }
    }

    /// Notes that slot `number` changed (after storing it), for the next write-back. Marked
    /// every time, with `Release`: a write-back that takes the mark then sees the slot.
    fn changed(&self, number: usize) {
        let block = number / SLOTS_PER_BLOCK;
        self.changed[block / 64].fetch_or(1 << (block % 64), Ordering::Release);
    }

    /// Stores the blocks changed since the last write-back into `file`'s map. A slot an
    /// insert stores meanwhile marks its block again, for the next one.
    fn write_back(&self, file: &IndexFile) {
        let _writing = self.writing.lock();
        for (word_number, word) in self.changed.iter().enumerate() {
            let mut blocks = word.swap(0, Ordering::Acquire);
            while blocks != 0 {
                let block = word_number * 64 + blocks.trailing_zeros() as usize;
                blocks &= blocks - 1;
                let start = block * SLOTS_PER_BLOCK;
                for number in start..(start + SLOTS_PER_BLOCK).min(self.slots) {
                    let value = self.slot(number).load(Ordering::Acquire);
                    file.mapped_slot(number).store(value, Ordering::Release);
                }
            }
        }
    }
}

/// Where the index stood at a checkpoint: the newest file and its entry count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexMark {
    pub file_base: u64,
    pub count: u32,
}

/// How many entries ahead an insert starts loading the slot of each: keys spread over the
/// whole slot table, so each slot is a cache miss, and in a batch of many keyed messages
/// waiting for each in turn was a third of the time of their inserts.
const SLOTS_AHEAD: usize = 16;

/// Index entries reserved by [`KeyIndex::reserve`]: an append adds the entries of the
/// messages it copies into the log, in log order, and hands them over once the log has
/// published them; the indexing thread then inserts them (see [`KeyIndex::insert_waiting`]).
pub struct IndexRoom<'a> {
    index: &'a KeyIndex,
    writer: Option<MutexGuard<'a, Waiting>>,
    /// The file the first entry goes to, and its slot table in memory if it has one.
    current: Option<Arc<IndexFile>>,
    table: Option<Arc<SlotTable>>,
    /// Faults in the bytes the reservation allocated past its entries: with a key per
    /// message, a page fault on the writer's thread every 170 entries was a seventh of the
    /// daemon's time.
    populate: Option<PrepareJob>,
    entries: Vec<(u64, MessageAt)>,
}

impl IndexRoom<'_> {
    /// The job that faults in the bytes this reservation allocated past its entries, for the
    /// preparer thread.
    pub fn populate_job(&mut self) -> Option<PrepareJob> {
        self.populate.take()
    }

    /// Adds the entry (key hash, place) of a message just copied into the log; its room was
    /// reserved, so its insert cannot fail.
    pub fn add(&mut self, hash: u64, at: MessageAt) {
        self.entries.push((hash, at));
    }

    /// Hands the entries added over to the indexing thread, once the log has published
    /// their messages. A room dropped without this (an append that failed) inserts nothing.
    pub fn hand_over(mut self) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        writer.rooms.push(HandedRoom {
            current: self.current.take(),
            table: self.table.take(),
            entries: std::mem::take(&mut self.entries),
        });
        self.index.has_waiting.store(true, Ordering::Release);
        self.writer = None;
        self.index.indexing.wake();
    }
}

/// One round of the indexing thread; false once the index is gone.
fn index_now(insert_waiting: &impl Fn() -> bool) -> bool {
    // Tests hold the thread back, as a busy machine might, to see that whatever needs the
    // index complete inserts the waiting entries itself.
    fail::fail_point!("index::thread-held-back", |_| true);
    insert_waiting()
}

/// A reservation's entries, waiting to go into the files.
struct HandedRoom {
    current: Option<Arc<IndexFile>>,
    table: Option<Arc<SlotTable>>,
    entries: Vec<(u64, MessageAt)>,
}

impl HandedRoom {
    /// Inserts the entries in order: into `current` while it has room, then into the files
    /// after it (a reservation that did not fit made them), and gives back their buffer.
    /// Under the writer lock.
    fn insert_all(mut self, index: &KeyIndex) -> Vec<(u64, MessageAt)> {
        let entries = std::mem::take(&mut self.entries);
        for &(hash, _) in entries.iter().take(SLOTS_AHEAD) {
            self.prefetch_slot(hash);
        }
        for (number, &(hash, at)) in entries.iter().enumerate() {
            if let Some(&(ahead, _)) = entries.get(number + SLOTS_AHEAD) {
                self.prefetch_slot(ahead);
            }
            self.insert(index, hash, at);
        }
        entries
    }

    /// Starts loading the slot of `hash` in the file the next entries go to.
    fn prefetch_slot(&self, hash: u64) {
        if let Some(file) = &self.current {
            prefetch(file.slot(self.table.as_deref(), hash));
        }
    }

    fn insert(&mut self, index: &KeyIndex, hash: u64, at: MessageAt) {
        fail::fail_point!("index::insert");
        let full = |file: &IndexFile| file.count() >= file.capacity;
        if self.current.as_deref().is_none_or(full) {
            let after = self.current.as_ref().map(|f| f.base);
            let later: Vec<u64> = index
                .files
                .read()
                .iter()
                .map(|slot| slot.base)
                .filter(|&base| after.is_none_or(|after| base > after))
                .collect();
            self.current = later
                .into_iter()
                .filter_map(|base| index.file(base))
                .find(|f| !full(f));
            self.table = self.current.as_ref().and_then(|f| index.slots_of(f));
        }
        self.current
            .as_ref()
            .expect("index room reserved before the records were copied")
            .insert(self.table.as_deref(), hash, at);
    }
}

/// What the index's writer lock guards: entries handed over and not inserted yet.
#[derive(Default)]
struct Waiting {
    rooms: Vec<HandedRoom>,
    /// An emptied room's buffer, for the next reservation.
    spare: Vec<(u64, MessageAt)>,
}

/// The thread that inserts handed-over entries, off the appending thread.
#[derive(Default)]
struct Indexing {
    state: Mutex<IndexingState>,
    condvar: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct IndexingState {
    work: bool,
    stop: bool,
}

impl Indexing {
    fn wake(&self) {
        self.state.lock().work = true;
        self.condvar.notify_one();
    }

    /// Waits for work; false once stopped.
    fn wait(&self) -> bool {
        let mut state = self.state.lock();
        while !state.work && !state.stop {
            self.condvar.wait(&mut state);
        }
        state.work = false;
        !state.stop
    }
}

/// An index file, mapped while the store's budget of open files or a lookup holds it (the
/// index holds its newest file, the one being filled); mapped again on use.
struct Slot {
    base: u64,
    file: Weak<IndexFile>,
    /// Its allocated bytes as of its last growth (while it is closed).
    len: AtomicU64,
}

pub struct KeyIndex {
    dir: PathBuf,
    slots: u32,
    capacity: u32,
    /// Oldest first.
    files: RwLock<Vec<Slot>>,
    /// The newest file: entries go there, so it stays open.
    newest: RwLock<Option<Arc<IndexFile>>>,
    /// Files named from here on may hold entries not yet flushed (entries go in in log
    /// order, so into the newest files only).
    unflushed_from: AtomicU64,
    open_files: Arc<OpenFiles>,
    /// Held to reserve room and to insert entries: they go in in log order.
    writer: Mutex<Waiting>,
    /// Set when entries are handed over, cleared once they are all inserted: a lookup that
    /// finds it set inserts them first.
    has_waiting: AtomicBool,
    indexing: Arc<Indexing>,
    /// Files made (and the directory itself, when new) since the last checkpoint.
    names: UnsyncedNames,
    /// Set should inserting handed-over entries panic, on whichever thread: the entries
    /// of that round are gone from memory, and a checkpoint must not count them as in.
    fence: Arc<Fence>,
}

impl KeyIndex {
    /// Opens the index in `dir`, checking every file's header; only the newest stays open.
    pub(super) fn open(
        dir: &Path,
        slots: u32,
        capacity: u32,
        open_files: Arc<OpenFiles>,
        fence: Arc<Fence>,
    ) -> Result<KeyIndex> {
        let new_dir = !dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let mut files = Vec::new();
        let mut newest = None;
        for base in super::commitlog::list_files(dir)? {
            let file = Arc::new(IndexFile::open(&dir.join(format::file_name(base)), base)?);
            files.push(Slot {
                base,
                file: Arc::downgrade(&file),
                len: AtomicU64::new(file.data.allocated()),
            });
            newest = Some(file);
        }
        Ok(KeyIndex {
            dir: dir.to_owned(),
            slots,
            capacity,
            files: RwLock::new(files),
            newest: RwLock::new(newest),
            unflushed_from: AtomicU64::new(0),
            open_files,
            writer: Mutex::new(Waiting::default()),
            has_waiting: AtomicBool::new(false),
            indexing: Arc::default(),
            names: UnsyncedNames::new(new_dir),
            fence,
        })
    }

    /// The file named `base`, mapped again if it was closed; `None` if it is gone or
    /// cannot be read (logged).
    fn file(&self, base: u64) -> Option<Arc<IndexFile>> {
        let mapped = {
            let files = self.files.read();
            files.iter().find(|slot| slot.base == base)?.file.upgrade()
        };
        let file = match mapped {
            Some(file) => file,
            None => self.reopen(base)?,
        };
        self.open_files.touch(&file);
        Some(file)
    }

    /// Maps a closed file again; under the write lock, so that a file never has two
    /// mappings (each would see only its own growth).
    fn reopen(&self, base: u64) -> Option<Arc<IndexFile>> {
        let mut files = self.files.write();
        let slot = files.iter_mut().find(|slot| slot.base == base)?;
        if let Some(file) = slot.file.upgrade() {
            return Some(file);
        }
        match IndexFile::open(&self.dir.join(format::file_name(base)), base) {
            Ok(file) => {
                let file = Arc::new(file);
                slot.file = Arc::downgrade(&file);
                Some(file)
            }
            Err(error) => {
                tracing::error!("key index unreadable: {error}");
                None
            }
        }
    }

    fn bases(&self) -> Vec<u64> {
        self.files.read().iter().map(|slot| slot.base).collect()
    }

    /// Records the growth of the file named `base`, for [`disk_bytes`](Self::disk_bytes).
    fn grown(&self, file: &IndexFile) {
        if let Some(slot) = self.files.read().iter().find(|s| s.base == file.base) {
            slot.len.store(file.data.allocated(), Ordering::Relaxed);
        }
    }

    /// Removes the newest file from the index and from disk.
    fn remove_newest(&self, files: &mut Vec<Slot>) -> Result<()> {
        let Some(slot) = files.last() else {
            return Ok(());
        };
        remove_file(&self.dir.join(format::file_name(slot.base)))?;
        let slot = files.pop().expect("checked above");
        self.forget(&slot);
        Ok(())
    }

    /// Lets the budget of open files drop the file of `slot`, which is being removed.
    fn forget(&self, slot: &Slot) {
        if let Some(file) = slot.file.upgrade() {
            self.open_files.forget(&file.data);
        }
    }

    /// Makes room for `count` more entries, in the current file as far as they fit and in
    /// new files after it (the first named `next_offset`, where the next record goes), so
    /// that inserting them cannot fail: a full disk fails the append before anything is
    /// written. Entries handed over earlier go in first. The room holds the index's writer
    /// lock until it is handed over or dropped; appends reserve under the commit log's
    /// append lock, so entries go in in log order.
    pub fn reserve(&self, count: u32, next_offset: u64) -> Result<IndexRoom<'_>> {
        if count == 0 {
            return Ok(IndexRoom {
                index: self,
                writer: None,
                current: None,
                table: None,
                populate: None,
                entries: Vec::new(),
            });
        }
        let mut writer = self.writer.lock();
        self.insert_handed(&mut writer);
        let current = self.newest.read().clone();
        let mut left = count;
        let mut populate = None;
        let mut reserve = |file: &Arc<IndexFile>, here: u32| -> Result<()> {
            if let Some(bytes) = file.reserve(here)? {
                populate = Some(populate_later(file, bytes));
            }
            self.grown(file);
            Ok(())
        };
        if let Some(file) = &current {
            let here = left.min(file.capacity - file.count());
            reserve(file, here)?;
            left -= here;
        }
        let mut first_new = None;
        while left > 0 {
            let file = self.start_file(next_offset)?;
            let here = left.min(file.capacity - 1);
            reserve(&file, here)?;
            left -= here;
            first_new.get_or_insert(file);
        }
        let current = current.or(first_new);
        let table = current.as_ref().and_then(|f| self.slots_of(f));
        let mut entries = std::mem::take(&mut writer.spare);
        entries.reserve(count as usize);
        Ok(IndexRoom {
            index: self,
            writer: Some(writer),
            current,
            table,
            populate,
            entries,
        })
    }

    /// Inserts the entries handed over and not inserted yet (the indexing thread does so
    /// as they come; whatever needs the index complete does so first).
    pub fn insert_waiting(&self) {
        self.insert_handed(&mut self.writer.lock());
    }

    fn insert_handed(&self, waiting: &mut Waiting) {
        let _fence = self.fence.on_unwind("while inserting key-index entries");
        for room in waiting.rooms.drain(..) {
            let mut entries = room.insert_all(self);
            entries.clear();
            waiting.spare = entries;
        }
        self.has_waiting.store(false, Ordering::Release);
    }

    /// Starts the thread that inserts handed-over entries. `insert_waiting` runs
    /// [`insert_waiting`](Self::insert_waiting) on this index and says false once the index
    /// is gone. A panic there sets the store's fence.
    pub fn start_indexing(&self, insert_waiting: impl Fn() -> bool + Send + 'static) {
        let indexing = self.indexing.clone();
        let spawned = super::spawn_background("key-index", self.fence.clone(), move || {
            while indexing.wait() && index_now(&insert_waiting) {}
        });
        match spawned {
            Ok(thread) => *self.indexing.thread.lock() = Some(thread),
            // Entries then go in at the next reservation or lookup.
            Err(error) => tracing::error!("cannot start the key index's thread: {error}"),
        }
    }

    /// Stops the indexing thread; entries still waiting go in at the next reservation,
    /// lookup or checkpoint, or are lost with the process (recovery rebuilds them).
    pub fn stop_indexing(&self) {
        self.indexing.state.lock().stop = true;
        self.indexing.condvar.notify_all();
        super::join_background(self.indexing.thread.lock().take());
    }

    /// A new, empty file after the others. Its name is where the next record goes, or one
    /// past the newest file's name if that is larger (an empty file left by a reservation that
    /// failed, or a batch that needs several files): names only order the files.
    fn start_file(&self, next_offset: u64) -> Result<Arc<IndexFile>> {
        let newest = self.files.read().last().map(|f| f.base);
        let base = newest.map_or(next_offset, |newest| next_offset.max(newest + 1));
        let file = Arc::new(IndexFile::create(
            &self.dir,
            base,
            self.slots,
            self.capacity,
        )?);
        self.names.made();
        self.files.write().push(Slot {
            base,
            file: Arc::downgrade(&file),
            len: AtomicU64::new(file.data.allocated()),
        });
        let older = self.newest.write().replace(file.clone());
        if let Some(older) = older {
            older.release_slots();
        }
        Ok(file)
    }

    /// The slot table in memory of `file` if entries go there (the newest file; see
    /// [`SlotTable`]); under the writer lock.
    fn slots_of(&self, file: &IndexFile) -> Option<Arc<SlotTable>> {
        let newest = self.newest.read().as_ref().map(|f| f.base);
        (newest == Some(file.base))
            .then(|| file.hold_slots_in_memory())
            .flatten()
    }

    /// Places of the messages whose entries have this hash, newest first, until `f` breaks.
    pub fn lookup(&self, hash: u64, mut f: impl FnMut(MessageAt) -> ControlFlow<()>) {
        // Every message whose append returned is found.
        if self.has_waiting.load(Ordering::Acquire) {
            self.insert_waiting();
        }
        for base in self.bases().into_iter().rev() {
            let Some(file) = self.file(base) else {
                continue;
            };
            if file.walk(hash, &mut f).is_break() {
                return;
            }
        }
    }

    /// Whether the index still has every entry `mark` counts (its file may be gone).
    pub fn holds(&self, mark: IndexMark) -> bool {
        self.file(mark.file_base)
            .is_some_and(|f| f.count() >= mark.count)
    }

    pub fn mark(&self) -> Option<IndexMark> {
        let mut writer = self.writer.lock();
        self.insert_handed(&mut writer);
        self.newest.read().as_ref().map(|f| IndexMark {
            file_base: f.base,
            count: f.count(),
        })
    }

    /// Whether files were made since the last checkpoint (see `meta::sync_names`).
    pub fn unsynced_names(&self) -> &UnsyncedNames {
        &self.names
    }

    /// Flushes the files that may hold entries since the last flush.
    pub fn flush(&self) -> Result<()> {
        let from = self.unflushed_from.load(Ordering::Acquire);
        // Entries inserted from here on go to this file or newer ones.
        let newest = self.newest.read().as_ref().map_or(from, |f| f.base);
        for base in self.bases().into_iter().filter(|&base| base >= from) {
            match self.file(base) {
                Some(file) => file.flush()?,
                None => {
                    return Err(StoreError::io(
                        format!(
                            "flushing {}",
                            self.dir.join(format::file_name(base)).display()
                        ),
                        std::io::Error::from_raw_os_error(libc::EIO),
                    ))
                }
            }
        }
        self.unflushed_from.store(newest, Ordering::Release);
        Ok(())
    }

    /// Returns the index to where it stood at `mark` (after an unclean stop); `None` means it
    /// was empty.
    pub fn truncate_to(&self, mark: Option<IndexMark>) -> Result<()> {
        let mut writer = self.writer.lock();
        self.insert_handed(&mut writer);
        {
            let mut files = self.files.write();
            while let Some(last) = files.last() {
                if mark.is_some_and(|m| last.base <= m.file_base) {
                    break;
                }
                self.remove_newest(&mut files)?;
            }
        }
        let newest = self.bases().last().and_then(|&base| self.file(base));
        if let (Some(mark), Some(last)) = (mark, &newest) {
            if last.base == mark.file_base {
                last.truncate(mark.count);
            }
        }
        *self.newest.write() = newest;
        // Truncated in place: flushed whole at the next flush.
        self.unflushed_from.store(0, Ordering::Release);
        Ok(())
    }

    pub fn remove_all(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        self.insert_handed(&mut writer);
        let mut files = self.files.write();
        *self.newest.write() = None;
        while !files.is_empty() {
            self.remove_newest(&mut files)?;
        }
        Ok(())
    }

    /// Removes files whose every entry points below `min_offset` (data no longer stored).
    /// The newest file stays, as the one being filled.
    pub fn remove_before(&self, min_offset: u64) -> Result<()> {
        let mut writer = self.writer.lock();
        self.insert_handed(&mut writer);
        loop {
            let bases = self.bases();
            let Some(&oldest) = bases.first().filter(|_| bases.len() > 1) else {
                return Ok(());
            };
            // Read with the lock let go: opening it again takes the lock.
            let ended = self.file(oldest).map(|f| f.end_offset());
            if ended.is_none_or(|end| end >= min_offset) {
                return Ok(());
            }
            let mut files = self.files.write();
            remove_file(&self.dir.join(format::file_name(oldest)))?;
            let slot = files.remove(0);
            self.forget(&slot);
        }
    }

    pub fn disk_bytes(&self) -> u64 {
        self.files
            .read()
            .iter()
            .map(|slot| {
                slot.file
                    .upgrade()
                    .map_or_else(|| slot.len.load(Ordering::Relaxed), |f| f.data.allocated())
            })
            .sum()
    }
}

/// The slot count and entry capacity in the header of the first index file in `dir`.
pub fn sizes_in(dir: &Path) -> Option<(u32, u32)> {
    let base = super::commitlog::list_files(dir).ok()?.into_iter().next()?;
    let bytes = std::fs::read(dir.join(format::file_name(base))).ok()?;
    let header = bytes.get(..HEADER_BYTES as usize)?;
    (le_u32(header, 0) == MAGIC).then(|| (le_u32(header, 8), le_u32(header, 12)))
}

/// Checks the bytes of one index file without writing: its header, every slot and chain
/// link among its first `count` entries (all in use, if `None`), and each entry's key hash
/// against its message (`hash_at`: `None` if the message is no longer stored, `Some(None)`
/// if there is no valid keyed message there). Reports each problem with its byte; returns
/// the entries checked.
pub fn verify_file(
    bytes: &[u8],
    count: Option<u32>,
    hash_at: impl Fn(MessageAt) -> Option<Option<u64>>,
    mut problem: impl FnMut(u64, String),
) -> u32 {
    if bytes.len() < HEADER_BYTES as usize
        || le_u32(bytes, 0) != MAGIC
        || le_u32(bytes, 4) != VERSION
    {
        problem(0, "not an index file of this version".into());
        return 0;
    }
    let (slots, in_use) = (le_u32(bytes, 8), le_u32(bytes, COUNT_AT as usize));
    let entries_at = HEADER_BYTES + u64::from(slots) * 4;
    let count = count.unwrap_or(in_use);
    let fits = slots > 0
        && count >= 1
        && count <= in_use
        && entries_at + u64::from(count) * ENTRY_BYTES <= bytes.len() as u64;
    if !fits {
        problem(COUNT_AT, format!("{count} entries do not fit in the file"));
        return 0;
    }
    for slot in 0..u64::from(slots) {
        let at = HEADER_BYTES + slot * 4;
        let number = le_u32(bytes, at as usize);
        // Slots written after the checkpoint may name newer entries, which recovery drops.
        if number >= in_use {
            problem(at, format!("slot {slot} names entry {number} of {in_use}"));
        }
    }
    for number in 1..count {
        let at = entries_at + u64::from(number) * ENTRY_BYTES;
        let entry = &bytes[at as usize..(at + ENTRY_BYTES) as usize];
        let (hash, place, previous) = decode_entry(entry);
        if previous >= number {
            problem(
                at,
                format!("entry {number} links to entry {previous}, not an older one"),
            );
        }
        match hash_at(place) {
            Some(Some(found)) if found == hash => {}
            None => {}
            Some(_) => problem(
                at,
                format!(
                    "entry {number} names message {} of the batch at commit-log offset {}, which holds no message with its key",
                    place.index, place.batch
                ),
            ),
        }
    }
    count - 1
}

fn decode_entry(bytes: &[u8]) -> (u64, MessageAt, u32) {
    let at = MessageAt {
        batch: le_u64(bytes, 8),
        index: le_u32(bytes, 16),
    };
    (le_u64(bytes, 0), at, le_u32(bytes, 20))
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const SLOTS: u32 = 4;
    const CAPACITY: u32 = 16;

    fn at(batch: u64) -> MessageAt {
        MessageAt {
            batch,
            index: (batch % 3) as u32,
        }
    }

    /// The bytes of an index file holding `entries` (key hash, batch offset).
    fn index_file(entries: Vec<(u64, u64)>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let index = KeyIndex::open(
            dir.path(),
            SLOTS,
            CAPACITY,
            OpenFiles::new(2),
            Arc::default(),
        )
        .unwrap();
        let mut room = index.reserve(entries.len() as u32, 0).unwrap();
        for (hash, batch) in entries {
            room.add(hash, at(batch));
        }
        room.hand_over();
        index.insert_waiting();
        let path = index.file(index.bases()[0]).unwrap().data.path().to_owned();
        std::fs::read(path).unwrap()
    }

    fn valid_file() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((1u64..8, 0u64..10_000), 1..15).prop_map(index_file)
    }

    proptest! {
        #![proptest_config(fuzzing::config(200))]

        /// A damaged index file is refused as corrupt or opens, and then lookups, recovery's
        /// truncation, inserts and retention over it neither panic nor answer with an entry
        /// of another hash.
        #[test]
        fn a_damaged_index_file_opens_or_is_refused_and_never_panics(
            bytes in fuzzing::garbage_or_damaged(valid_file(), 700),
            base in prop_oneof![Just(0u64), any::<u64>()],
            hashes in proptest::collection::vec(0u64..10, 1..6),
            mark in any::<Option<u32>>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(format::file_name(base % 10_000)), &bytes).unwrap();
            let Ok(index) = KeyIndex::open(dir.path(), SLOTS, CAPACITY, OpenFiles::new(2), Arc::default()) else {
                return Ok(());
            };
            let base = base % 10_000;
            for &hash in &hashes {
                index.lookup(hash, |offset| {
                    let entry_found = index.bases().into_iter().filter_map(|b| index.file(b)).any(|f| {
                        (1..f.count()).any(|n| f.entry(n).0 == hash && f.entry(n).1 == offset)
                    });
                    assert!(entry_found, "lookup({hash}) answered {offset:?}, not an entry of that hash");
                    ControlFlow::Continue(())
                });
            }
            let _ = index.holds(IndexMark { file_base: base, count: mark.unwrap_or(1) });
            index
                .truncate_to(mark.map(|count| IndexMark { file_base: base, count }))
                .unwrap();
            if let Ok(mut room) = index.reserve(2, 20_000) {
                room.add(hashes[0], at(20_000));
                room.add(hashes[0], at(20_100));
                room.hand_over();
                let mut newest = None;
                index.lookup(hashes[0], |offset| {
                    newest = Some(offset);
                    ControlFlow::Break(())
                });
                prop_assert_eq!(newest, Some(at(20_100)));
            }
            let _ = index.mark();
            index.remove_before(15_000).unwrap();
        }
    }
}
