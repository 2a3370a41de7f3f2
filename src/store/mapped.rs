//! A file mapped into memory whose blocks are allocated before any store into the map, so
//! a full disk is an `ENOSPC` from `fallocate` and never a `SIGBUS` inside the daemon.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;
use rustix::fs::{FallocateFlags, SeekFrom};

use super::error::{Result, StoreError};
use super::open_files::Recency;

/// Returns the error failpoint `$name` injects into an operation on `$path`, if it fires
/// (only with the `failpoints` feature; nothing otherwise).
macro_rules! inject {
    ($name:literal, $path:expr, $what:literal) => {
        #[cfg(feature = "failpoints")]
        if let Some(arg) = super::faults::fires($name, $path) {
            return Err(super::mapped::injected($path, $what, arg));
        }
    };
}
pub(super) use inject;

pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    /// Bytes at the start of the file whose blocks are allocated (and so may be stored into).
    allocated: AtomicU64,
    /// Held while the file grows: a consume-queue file grows on its partition's writer and
    /// ahead of it on the queue writer, and without `fallocate` growing writes zeroes, which
    /// must never land on bytes another grower allocated and someone wrote since.
    growing: Mutex<()>,
    /// For the store's budget of open files.
    pub(super) recency: Recency,
}

impl MappedFile {
    /// Creates a file whose first `allocate` bytes are allocated, mapping `capacity` bytes of
    /// address space so that later growth needs no new mapping.
    pub fn create(path: &Path, capacity: u64, allocate: u64) -> Result<MappedFile> {
        inject!("mapped::create", path, "creating");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        #[cfg(feature = "failpoints")]
        super::faults::created(path);
        let mapped = Self::map(path, file, capacity, 0)?;
        if let Err(error) = mapped.allocate(allocate) {
            drop(mapped);
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
        Ok(mapped)
    }

    /// Opens an existing file; its current length counts as allocated, so its blocks are
    /// allocated again first (`fallocate` costs little where they already are): a data
    /// directory copied sparsely (`cp --sparse`, `rsync -S`) has holes, and touching a hole
    /// through the map on a full disk is a `SIGBUS` (a store on any file system, a read on
    /// tmpfs). A disk too full to fill the holes refuses the open with `ENOSPC`.
    pub fn open(path: &Path, capacity: u64) -> Result<MappedFile> {
        Self::open_allocating_from(path, capacity, 0)
    }

    /// [`MappedFile::open`], allocating only from byte `from` to the end: a commit-log file
    /// is written only past its write position, and below it blocks punched out on purpose
    /// (`released`) must stay holes.
    pub fn open_allocating_from(path: &Path, capacity: u64, from: u64) -> Result<MappedFile> {
        inject!("mapped::open", path, "opening");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(format!("reading the size of {}", path.display()), e))?
            .len();
        let from = from.min(len);
        match fallocate(&file, FallocateFlags::empty(), from, len - from) {
            Ok(()) => {}
            // Nothing to re-establish without fallocate; writing zeroes would destroy data.
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(error) => {
                return Err(StoreError::io(
                    format!(
                        "allocating the {len} bytes of {} (a sparse copy's holes must be filled before use)",
                        path.display()
                    ),
                    error,
                ))
            }
        }
        Self::map(path, file, capacity.max(len), len)
    }

    fn map(path: &Path, file: File, capacity: u64, allocated: u64) -> Result<MappedFile> {
        let len = usize::try_from(capacity).map_err(|_| {
            StoreError::InvalidSetting(format!("{} is too large to map", path.display()))
        })?;
        // Mapping past the end of the file reserves address space; only the allocated
        // prefix is ever touched.
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| StoreError::io(format!("mapping {}", path.display()), e))?;
        Ok(MappedFile {
            path: path.to_owned(),
            file,
            map,
            allocated: AtomicU64::new(allocated),
            growing: Mutex::new(()),
            recency: Recency::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacity(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
    }

    /// The bytes of the blocks the file occupies on disk (its length where that cannot be
    /// read).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .map_or(self.allocated(), |m| m.blocks() * 512)
    }

    /// Gives the blocks wholly inside `[from, from + len)` back to the file system: they read
    /// as zeroes from then on. Only for bytes that live elsewhere too (a sealed segment's own
    /// file) and that nothing writes again.
    pub fn punch_hole(&self, from: u64, len: u64) -> Result<()> {
        const BLOCK: u64 = 4096;
        let start = from.div_ceil(BLOCK) * BLOCK;
        let end = from.saturating_add(len).min(self.capacity()) / BLOCK * BLOCK;
        if end <= start {
            return Ok(());
        }
        fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            start,
            end - start,
        )
        .map_err(|e| StoreError::io(format!("punching a hole in {}", self.path.display()), e))
    }

    /// Makes sure the first `len` bytes (at most the capacity) have blocks on disk. Callers
    /// on several threads take turns.
    pub fn allocate(&self, len: u64) -> Result<()> {
        let len = len.min(self.capacity());
        if len <= self.allocated() {
            return Ok(());
        }
        let _growing = self.growing.lock();
        let have = self.allocated();
        if len <= have {
            return Ok(());
        }
        #[cfg(feature = "failpoints")]
        if let Some(arg) = super::faults::fires("mapped::allocate", &self.path) {
            return self.fail_allocation(len, arg);
        }
        if let Err(error) = fallocate(&self.file, FallocateFlags::empty(), have, len - have) {
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(StoreError::io(
                    format!("allocating {} bytes of {}", len, self.path.display()),
                    error,
                ));
            }
            // A file system without fallocate (rare): write zeroes so the blocks exist.
            use std::os::unix::fs::FileExt;
            let zeroes = vec![0u8; (len - have) as usize];
            self.file.write_all_at(&zeroes, have).map_err(|e| {
                StoreError::io(
                    format!("allocating {} bytes of {}", len, self.path.display()),
                    e,
                )
            })?;
        }
        self.allocated.store(len, Ordering::Release);
        Ok(())
    }

    /// Reads `buf.len()` bytes at `at` with `pread`, not through the map: a disk read error
    /// is then an error, not a `SIGBUS`. For bytes read once (checks at open).
    pub fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, at).map_err(|e| {
            StoreError::io(
                format!(
                    "reading {} bytes at byte {at} of {}",
                    buf.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }

    /// Bytes `[at, at + len)` of the file, through the map.
    ///
    /// Panics with a clear message if the range does not lie inside the allocated bytes: a
    /// caller that reads past them has broken its own bounds (touching the map there could
    /// be a `SIGBUS`).
    ///
    /// # Safety
    ///
    /// The range must be *published* to the calling thread and stay unwritten while the
    /// slice lives:
    /// - every store into it ([`write`](Self::write), [`write_at`](Self::write_at),
    ///   [`zero_range`](Self::zero_range), [`zero_from`](Self::zero_from)) happened before the
    ///   call: on this thread, before the file was shared, or before a `Release` store of an
    ///   end past the range that this thread loaded with `Acquire` (the log's written end, a
    ///   partition's end, an index file's entry count);
    /// - nothing stores into it until the slice is dropped (a writer only writes past every
    ///   end it published; `commitfs check` and `dump` hold the store's lock).
    ///
    /// The one store that may still reach such bytes is [`punch_hole`](Self::punch_hole) of
    /// a released segment's payloads, which then read as zeroes: readers of the log's
    /// payloads look at the segment's released mark after their copy and read again from
    /// the segment's file (see `released.rs`).
    pub unsafe fn bytes(&self, at: u64, len: usize) -> &[u8] {
        assert!(
            at.checked_add(len as u64)
                .is_some_and(|end| end <= self.allocated()),
            "read of {len} bytes at byte {at} of {} past its allocated bytes",
            self.path.display()
        );
        // SAFETY: inside the mapping and its allocated blocks (checked above), so no fault;
        // published and unwritten while the slice lives by the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at as usize), len) }
    }

    /// Stores `data` at `at`, through the map.
    ///
    /// Panics with a clear message if the range does not lie inside the allocated bytes.
    ///
    /// # Safety
    ///
    /// The caller is the only one that accesses `[at, at + data.len())` until it publishes
    /// it: no other thread writes it or reads it (through [`bytes`](Self::bytes) or
    /// [`atomic_u32`](Self::atomic_u32)) meanwhile: it lies past every end its writer has
    /// published, the file is not yet shared, or the caller holds a lock that every other
    /// user of the range takes.
    pub unsafe fn write(&self, at: u64, data: &[u8]) {
        assert!(
            at.checked_add(data.len() as u64)
                .is_some_and(|end| end <= self.allocated()),
            "store of {} bytes at byte {at} of {} past its allocated blocks",
            data.len(),
            self.path.display()
        );
        // SAFETY: in bounds and allocated (checked above); exclusive by the caller's
        // guarantee.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(at as usize),
                data.len(),
            )
        }
    }

    /// Writes `data` at `at` with `pwrite`, not through the map: the kernel then copies into
    /// fresh page-cache pages without zeroing them first. The range is allocated and owned
    /// by the caller, as for [`write`](Self::write).
    pub fn write_at(&self, at: u64, data: &[u8]) -> Result<()> {
        self.write_vectored_at(at, &mut [IoSlice::new(data)])
    }

    /// Writes `slices`, back to back, at `at` with `pwritev`, as [`write_at`](Self::write_at)
    /// writes one.
    pub fn write_vectored_at(&self, at: u64, mut slices: &mut [IoSlice<'_>]) -> Result<()> {
        let len: u64 = slices.iter().map(|slice| slice.len() as u64).sum();
        assert!(
            at.checked_add(len)
                .is_some_and(|end| end <= self.allocated()),
            "write past the allocated blocks"
        );
        #[cfg(feature = "failpoints")]
        if let Some(arg) = super::faults::fires("mapped::write_at", &self.path) {
            // A `short` write stores half the bytes first, as a disk failing part way may.
            if super::faults::is_short(arg.as_deref()) {
                use std::os::unix::fs::FileExt;
                let data: Vec<u8> = slices
                    .iter()
                    .flat_map(|slice| slice.iter().copied())
                    .collect();
                let _ = self.file.write_all_at(&data[..data.len() / 2], at);
            }
            return Err(injected(&self.path, "writing", arg));
        }
        let failed = |error: std::io::Error| {
            StoreError::io(
                format!(
                    "writing {len} bytes at byte {at} of {}",
                    self.path.display()
                ),
                error,
            )
        };
        let mut position = at;
        // Empty slices first would make a call write nothing, which reads as a failure.
        IoSlice::advance_slices(&mut slices, 0);
        // Each call may write only part (at most `IOV_MAX` slices, or less on a full disk or
        // a signal): the next goes on from where it stopped.
        while !slices.is_empty() {
            let some = &*slices;
            #[cfg(feature = "failpoints")]
            let part;
            #[cfg(feature = "failpoints")]
            let some = if fail::eval("mapped::pwritev-part", |_| ()).is_some() {
                // The kernel may write less than asked: here half of the first slice.
                part = [IoSlice::new(&some[0][..some[0].len().div_ceil(2)])];
                &part[..]
            } else {
                some
            };
            match rustix::io::pwritev(&self.file, some, position) {
                Ok(0) => return Err(failed(std::io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    position += written as u64;
                    IoSlice::advance_slices(&mut slices, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(failed(errno.into())),
            }
        }
        Ok(())
    }

    /// Writes zeroes over `[at, end)` with `pwrite`.
    pub fn zero_range(&self, at: u64, end: u64) -> Result<()> {
        let zeroes = vec![0u8; (end.saturating_sub(at) as usize).min(1 << 20)];
        let mut position = at;
        while position < end {
            let n = ((end - position) as usize).min(zeroes.len());
            self.write_at(position, &zeroes[..n])?;
            position += n as u64;
        }
        Ok(())
    }

    /// The stretches of `[from, allocated)` that hold data, as `lseek(SEEK_DATA/SEEK_HOLE)`
    /// tells: allocated but never-written stretches read as zeroes and are left out (reading
    /// them through the map would zero-fill every page). Where the file system cannot tell,
    /// the whole rest.
    pub fn data_ranges(&self, from: u64) -> Vec<std::ops::Range<u64>> {
        let end = self.allocated().min(self.capacity());
        // Nothing here uses the file position.
        let seek = |to: SeekFrom| rustix::fs::seek(&self.file, to).map_err(std::io::Error::from);
        let mut ranges = Vec::new();
        let mut at = from;
        while at < end {
            let data = match seek(SeekFrom::Data(at)) {
                Ok(data) => data,
                // No data past `at`.
                Err(error) if error.raw_os_error() == Some(libc::ENXIO) => break,
                Err(_) => {
                    ranges.push(at..end);
                    break;
                }
            };
            if data >= end {
                break;
            }
            let hole = seek(SeekFrom::Hole(data)).map_or(end, |hole| hole.min(end));
            ranges.push(data..hole);
            at = hole;
        }
        ranges
    }

    /// Hints the CPU to start loading the cache line at `at`: a store there soon will then
    /// not wait for memory (with thousands of partitions, each append's queue entry lands on
    /// a different page).
    pub fn prefetch(&self, at: u64) {
        if at < self.allocated() {
            prefetch(self.map.as_ptr().wrapping_add(at as usize));
        }
    }

    /// Once less than half of `growth` is left allocated past the first `used` bytes,
    /// allocates `growth` more, so that it can be faulted in before a writer gets there.
    /// Best effort: the bytes are not needed yet, and on a full disk the allocation that
    /// needs them fails instead.
    pub fn allocate_ahead(&self, used: u64, growth: u64) {
        let have = self.allocated();
        if have.saturating_sub(used) >= growth / 2 || have >= self.capacity() {
            return;
        }
        if let Err(error) = self.allocate(have + growth) {
            tracing::debug!(
                "allocating {} ahead of need failed: {error}",
                self.path.display()
            );
        }
    }

    /// Faults `[at, end)` in for writing (`MADV_POPULATE_WRITE`), on the caller's thread: the
    /// stores a writer makes there later then find each page mapped, instead of each taking a
    /// fault that reads and zeroes the page on the writer's thread. Allocated bytes only, so
    /// that no fault has to allocate a block.
    pub fn populate_for_writing(&self, at: u64, end: u64) -> std::io::Result<()> {
        let end = end.min(self.allocated());
        if end <= at {
            return Ok(());
        }
        self.map.advise_range(
            memmap2::Advice::PopulateWrite,
            at as usize,
            (end - at) as usize,
        )
    }

    /// A 32-bit atomic cell inside the mapping (used by the index's slot table and header).
    /// Safe: every access through the cell is atomic, and [`write`](Self::write)'s callers
    /// promise that no cell a reader may use lies in the range they store into.
    pub fn atomic_u32(&self, at: u64) -> &std::sync::atomic::AtomicU32 {
        assert!(
            at % 4 == 0 && at.checked_add(4).is_some_and(|end| end <= self.allocated()),
            "misplaced atomic at byte {at} of {}",
            self.path.display()
        );
        // SAFETY: aligned (mapping is page-aligned, `at` is a multiple of 4), in bounds and
        // allocated; all accesses to this cell go through atomics.
        unsafe { &*(self.map.as_mut_ptr().add(at as usize) as *const std::sync::atomic::AtomicU32) }
    }

    /// Writes `[at, at + len)` back to disk and waits for it.
    pub fn flush(&self, at: u64, len: u64) -> Result<()> {
        let end = at.saturating_add(len).min(self.allocated());
        if end <= at {
            return Ok(());
        }
        inject!("mapped::flush", &self.path, "flushing");
        self.map
            .flush_range(at as usize, (end - at) as usize)
            .map_err(|e| StoreError::io(format!("flushing {}", self.path.display()), e))?;
        #[cfg(feature = "failpoints")]
        if super::faults::recording() {
            // Read with `pread`, not through the map: a flush does not stop writers, who may
            // be storing the next entries of a queue or index into this range meanwhile.
            let mut durable = vec![0u8; (end - at) as usize];
            self.read_exact_at(at, &mut durable)?;
            super::faults::made_durable(&self.path, at, &durable);
        }
        Ok(())
    }

    /// Zeroes `[at, allocated)` while keeping the blocks allocated: used to cut a torn tail so
    /// that stale bytes can never pass as records later.
    pub fn zero_from(&self, at: u64) -> Result<()> {
        let end = self.allocated();
        if at >= end {
            return Ok(());
        }
        if fallocate(&self.file, FallocateFlags::ZERO_RANGE, at, end - at).is_ok() {
            return Ok(());
        }
        self.zero_range(at, end)
    }
}

/// `fallocate(2)` of `[from, from + len)`.
fn fallocate(file: &File, mode: FallocateFlags, from: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    Ok(rustix::fs::fallocate(file, mode, from, len)?)
}

/// Hints the CPU to start loading the cache line at `address`.
pub(super) fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
}

/// Removes a file; one already gone is fine.
pub fn remove_file(path: &Path) -> Result<()> {
    inject!("mapped::remove", path, "removing");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
    }
}

/// The error a failpoint injects into an operation on `path`.
#[cfg(feature = "failpoints")]
pub(super) fn injected(path: &Path, what: &str, arg: Option<String>) -> StoreError {
    let error = super::faults::injected_error(arg.as_deref());
    StoreError::io(format!("{what} {} (injected)", path.display()), error)
}

#[cfg(feature = "failpoints")]
impl MappedFile {
    /// An injected allocation failure; a `short` one allocates half of what was asked first,
    /// as a real `fallocate` that runs out of space part way may.
    fn fail_allocation(&self, len: u64, arg: Option<String>) -> Result<()> {
        if super::faults::is_short(arg.as_deref()) {
            let have = self.allocated();
            let _ =
                rustix::fs::fallocate(&self.file, FallocateFlags::empty(), have, (len - have) / 2);
        }
        Err(injected(&self.path, "allocating", arg))
    }
}
