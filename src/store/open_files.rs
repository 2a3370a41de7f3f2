//! The store's budget of open files: every consume-queue, key-index and commit-log file it
//! maps costs a descriptor and a map, so a store of thousands of partitions and segments
//! would run into `ulimit -n` and `vm.max_map_count`. The files are reached through weak
//! references from their queue, index or log; the strong ones live here, at most `limit` of
//! them, and the least recently used are dropped when more are opened. A dropped file stays
//! mapped for whoever still holds it (a reader, an append in progress) and is closed and
//! unmapped with its last holder; its owner opens it again on its next use.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::commitlog::PrepareJob;
use super::mapped::MappedFile;

/// A file the budget can hold.
pub(super) trait Held: Send + Sync + 'static {
    fn mapped(&self) -> &MappedFile;
}

/// A job for the preparer thread that faults `bytes` of `file` in for writing (see
/// [`MappedFile::populate_for_writing`]), allocated ahead of the entries a writer stores
/// there through the map: each page would otherwise cost the writer's thread a fault that
/// reads and zeroes it. Holds the file weakly: one closed or removed meanwhile is skipped.
pub(super) fn populate_later<F: Held>(file: &Arc<F>, bytes: Range<u64>) -> PrepareJob {
    let file = Arc::downgrade(file);
    Box::new(move || {
        let Some(file) = file.upgrade() else { return };
        let mapped = file.mapped();
        if let Err(error) = mapped.populate_for_writing(bytes.start, bytes.end) {
            tracing::debug!(
                "faulting in {} ahead of its writer failed: {error}",
                mapped.path().display()
            );
        }
    })
}

/// When a file was last used, and whether the budget holds it; part of every mapped file.
#[derive(Default)]
pub(super) struct Recency {
    last_used: AtomicU64,
    held: AtomicBool,
    /// Where it is among the held files, while held (read and changed under their lock), so
    /// that forgetting a file costs the same however many are held.
    at: AtomicUsize,
}

pub(super) struct OpenFiles {
    limit: usize,
    held: Mutex<Vec<Arc<dyn Held>>>,
    /// Moves on each time a file is held, so files used since carry a newer mark than those
    /// that were not: least recently used at the granularity of opens, for the cost of a
    /// relaxed store per use.
    clock: AtomicU64,
}

/// Each eviction drops this fraction of the limit (at least one file), so its cost (a pass
/// over the held files) is shared by that many opens.
const EVICT_DIVISOR: usize = 8;

/// Descriptors and maps the daemon needs besides the files the budget holds: FUSE, its log,
/// metrics sockets, files read once with `pread`, files readers hold after the budget let go
/// of them; libraries, thread stacks, heap arenas. At least these, or an eighth of the limit.
const OTHER_DESCRIPTORS: u64 = 128;
const OTHER_MAPS: u64 = 1024;

/// `wanted` (`max_open_files`), or less if this process may not have that many descriptors
/// (`ulimit -n`) or maps (`vm.max_map_count`) besides the others it needs.
pub(super) fn budget(wanted: usize) -> usize {
    // `None` is unlimited (RLIM_INFINITY).
    let descriptors = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let budget = budget_within(wanted, descriptors, maps);
    if budget < wanted {
        // The default asks for more than most limits allow: not a problem, so not a warning.
        tracing::info!(
            "keeping at most {budget} store files open: max_open_files {wanted} is more than ulimit -n {descriptors} and vm.max_map_count {maps} allow beside what else the daemon uses"
        );
    }
    budget
}

/// `wanted`, or less if `descriptors` and `maps` leave less room beside the others.
fn budget_within(wanted: usize, descriptors: u64, maps: u64) -> usize {
    let allowed = descriptors
        .saturating_sub(OTHER_DESCRIPTORS.max(descriptors / 8))
        .min(maps.saturating_sub(OTHER_MAPS.max(maps / 8)))
        .max(u64::from(super::MIN_OPEN_FILES));
    wanted.min(usize::try_from(allowed).unwrap_or(usize::MAX))
}

impl OpenFiles {
    pub fn new(limit: usize) -> Arc<OpenFiles> {
        Arc::new(OpenFiles {
            limit: limit.max(1),
            held: Mutex::new(Vec::new()),
            clock: AtomicU64::new(1),
        })
    }

    /// Files the budget holds open now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Marks `file` as just used, and holds it if the budget does not already.
    pub fn touch<F: Held>(&self, file: &Arc<F>) {
        let recency = &file.mapped().recency;
        recency
            .last_used
            .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        if !recency.held.load(Ordering::Acquire) {
            self.hold(file.clone());
        }
    }

    fn hold(&self, file: Arc<dyn Held>) {
        let evicted = {
            let mut held = self.held.lock();
            if file.mapped().recency.held.swap(true, Ordering::AcqRel) {
                return;
            }
            self.clock.fetch_add(1, Ordering::Relaxed);
            file.mapped()
                .recency
                .at
                .store(held.len(), Ordering::Relaxed);
            held.push(file);
            if held.len() <= self.limit {
                return;
            }
            self.evict(&mut held)
        };
        // Unmapped and closed here, outside the lock, unless someone still holds them.
        drop(evicted);
    }

    /// Takes the least recently used files out of `held`, down to the limit less a margin.
    fn evict(&self, held: &mut Vec<Arc<dyn Held>>) -> Vec<Arc<dyn Held>> {
        let keep = self.limit - (self.limit / EVICT_DIVISOR).max(1).min(self.limit - 1);
        let stamp = |file: &Arc<dyn Held>| file.mapped().recency.last_used.load(Ordering::Relaxed);
        let oldest = held.len() - keep;
        held.select_nth_unstable_by_key(oldest, stamp);
        let evicted: Vec<_> = held.drain(..oldest).collect();
        for file in &evicted {
            file.mapped().recency.held.store(false, Ordering::Release);
        }
        for (at, file) in held.iter().enumerate() {
            file.mapped().recency.at.store(at, Ordering::Relaxed);
        }
        evicted
    }

    /// Stops holding `file` (it is being removed: its blocks must be freed once its readers
    /// let go of it, not when the budget gets round to it).
    pub fn forget(&self, file: &MappedFile) {
        if !file.recency.held.load(Ordering::Acquire) {
            return;
        }
        let forgotten = {
            let mut held = self.held.lock();
            let at = file.recency.at.load(Ordering::Relaxed);
            // Evicted meanwhile (then `at` is stale), or held by another budget.
            if !held.get(at).is_some_and(|h| std::ptr::eq(h.mapped(), file)) {
                return;
            }
            file.recency.held.store(false, Ordering::Release);
            let forgotten = held.swap_remove(at);
            if let Some(moved) = held.get(at) {
                moved.mapped().recency.at.store(at, Ordering::Relaxed);
            }
            forgotten
        };
        drop(forgotten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain(MappedFile);

    impl Held for Plain {
        fn mapped(&self) -> &MappedFile {
            &self.0
        }
    }

    fn files(dir: &std::path::Path, count: usize) -> Vec<Arc<Plain>> {
        (0..count)
            .map(|n| {
                let path = dir.join(n.to_string());
                Arc::new(Plain(MappedFile::create(&path, 4096, 4096).unwrap()))
            })
            .collect()
    }

    /// The budget leaves the daemon's other descriptors and maps their room: at least
    /// `OTHER_*`, or an eighth of a large limit. Kills cargo-mutants survivors in `budget`
    /// (`/` as `%` or `*`, which the slow mounted tests under `ulimit -n 1024` do not tell
    /// apart: an eighth of 1024 is 128).
    #[test]
    fn the_budget_leaves_room_for_the_daemons_other_files() {
        let maps = 65_530;
        assert_eq!(budget_within(usize::MAX, 1024, maps), 1024 - 128);
        assert_eq!(budget_within(usize::MAX, 20_000, maps), 20_000 - 2_500);
        assert_eq!(
            budget_within(usize::MAX, 1 << 20, maps),
            65_530 - 65_530 / 8,
            "vm.max_map_count binds"
        );
        assert_eq!(budget_within(usize::MAX, 1 << 20, 2_000), 2_000 - 1_024);
        assert_eq!(budget_within(100, 1024, maps), 100, "what was asked for");
        assert_eq!(
            budget_within(usize::MAX, 100, maps),
            crate::store::MIN_OPEN_FILES as usize,
            "never below the minimum"
        );
    }

    /// The budget follows this process's `ulimit -n`: kills `budget` returning 0 or 1 and
    /// the limit read ignored (taken as unbounded).
    #[test]
    fn the_budget_reads_this_processs_descriptor_limit() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let under_the_limit = budget(usize::MAX) as u64;
        assert!(
            under_the_limit + OTHER_DESCRIPTORS <= limit,
            "{under_the_limit} files against ulimit -n {limit}"
        );
        assert_eq!(budget(20), 20);
    }

    #[test]
    fn the_least_recently_used_files_go_first_and_the_budget_holds_at_most_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenFiles::new(8);
        let files = files(dir.path(), 9);
        for file in &files[..8] {
            budget.touch(file);
        }
        // Used again after the others: the eviction keeps it.
        budget.touch(&files[0]);
        let weak: Vec<_> = files.iter().map(Arc::downgrade).collect();
        let last = files[8].clone();
        drop(files);
        budget.touch(&last);
        assert_eq!(budget.held(), 7, "an eviction drops an eighth of the limit");
        assert!(
            weak[0].upgrade().is_some(),
            "the file used last among the first eight stays"
        );
        let closed = weak.iter().filter(|w| w.upgrade().is_none()).count();
        assert_eq!(closed, 2, "two files closed: nobody else held them");
    }

    /// Kills cargo-mutants survivors `/ -> %` and `/ -> *` in `evict` (at a limit of 8, an
    /// eighth and the minimum of one file are the same).
    #[test]
    fn an_eviction_drops_an_eighth_of_any_limit() {
        let dir = tempfile::tempdir().unwrap();
        for limit in [16, 64] {
            let budget = OpenFiles::new(limit);
            let own_dir = dir.path().join(limit.to_string());
            std::fs::create_dir(&own_dir).unwrap();
            let files = files(&own_dir, limit + 1);
            for file in &files {
                budget.touch(file);
            }
            assert_eq!(budget.held(), limit - limit / 8, "limit {limit}");
        }
    }

    #[test]
    fn forgetting_files_in_any_order_lets_go_of_exactly_those() {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenFiles::new(16);
        let files = files(dir.path(), 12);
        for file in &files {
            budget.touch(file);
        }
        for n in [3, 0, 11, 7, 5] {
            budget.forget(&files[n].0);
            assert_eq!(Arc::strong_count(&files[n]), 1, "file {n} still held");
        }
        assert_eq!(budget.held(), 7);
        for n in [1, 2, 4, 6, 8, 9, 10] {
            assert_eq!(Arc::strong_count(&files[n]), 2, "file {n} let go");
        }
    }

    #[test]
    fn a_file_someone_holds_stays_mapped_after_eviction_and_a_forgotten_one_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenFiles::new(1);
        let files = files(dir.path(), 2);
        budget.touch(&files[0]);
        budget.touch(&files[1]);
        assert_eq!(budget.held(), 1);
        // Evicted, yet still readable by its holder.
        // SAFETY: the file was created by this test and nothing writes it.
        assert_eq!(unsafe { files[0].0.bytes(0, 4) }, &[0, 0, 0, 0]);
        budget.forget(&files[1].0);
        assert_eq!(budget.held(), 0);
        assert_eq!(Arc::strong_count(&files[1]), 1);
    }
}
