//! `commitfs check [--repair] DATA_DIR`: an offline look at every file of a store. It holds
//! the store's lock (so it refuses a mounted store), verifies every commit-log record, the
//! consume-queue entries and key-index chains the checkpoint vouches for, the checkpoint
//! and `store.toml` against the data, and writes nothing unless asked to repair.
//!
//! Repair writes a skip marker over each damaged span in the middle of the log, rebuilds or
//! completes `store.toml` from the data, removes the checkpoint and opens the store, which
//! then rebuilds the queues and the index from the whole log; it reports every offset lost.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use super::checkpoint::{Checkpoint, PartitionMark, CHECKPOINT_FILE};
use super::commitlog;
use super::consumers;
use super::error::{Result, StoreError};
use super::format::{self, QueueEntry, Scanned, LOST_MESSAGE, QUEUE_ENTRY_BYTES};
use super::index;
use super::mapped::MappedFile;
use super::meta::{self, Layout, Meta, TopicRecord};
use super::progress::{Output, ScanProgress};
use super::recovery::{self, LOG_DIR};
use super::released::ReleasedFiles;
use super::{Framing, StoreConfig, TopicSettings};

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub repair: bool,
    /// `segment_messages` for rebuilding a lost `store.toml`, when the files cannot tell it.
    pub segment_messages: Option<u32>,
    /// Show how far the walk over the commit log is, on stderr: a bar on a terminal, plain
    /// lines otherwise.
    pub progress: bool,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Something the next mount would refuse, or data it would serve wrongly or not at all.
    Damage(String),
    /// Worth knowing, handled by the next mount on its own (or already repaired).
    Note(String),
    /// What `--repair` did.
    Repaired(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Damage(text) => write!(f, "damage: {text}"),
            Finding::Note(text) => write!(f, "note: {text}"),
            Finding::Repaired(text) => write!(f, "repaired: {text}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    pub records: u64,
    pub queue_entries: u64,
    pub index_entries: u64,
}

impl CheckReport {
    pub fn damaged(&self) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f, Finding::Damage(_)))
    }

    fn damage(&mut self, text: String) {
        self.findings.push(Finding::Damage(text));
    }

    fn note(&mut self, text: String) {
        self.findings.push(Finding::Note(text));
    }
}

/// Checks the store in `dir` (and repairs it if `options.repair`). An error means it could
/// not be checked: the store is open elsewhere, or a file could not be read.
pub fn check(dir: &Path, options: &CheckOptions) -> Result<CheckReport> {
    if !dir.is_dir() {
        return Err(StoreError::io(
            format!("opening {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let lock = recovery::lock_store(dir)?;
    let mut report = CheckReport::default();
    let found = load_meta(dir, &mut report)?;
    let meta = found.meta.clone();
    let has_data = recovery::data_without_meta(dir).is_some();
    if meta.is_none() && !has_data {
        return Err(StoreError::InvalidSetting(format!(
            "{} holds no commitfs store",
            dir.display()
        )));
    }
    let layout = match &meta {
        Some(meta) => meta.layout,
        None => infer_layout(dir, options, &mut report)?,
    };
    let checkpoint = load_checkpoint(dir, &mut report)?;
    let unclean = meta::abort_marker_exists(dir);
    let walk = LogWalk::run(
        dir,
        &layout,
        meta.as_ref(),
        checkpoint.as_ref(),
        options.progress,
        &mut report,
    )?;
    if let (Some(meta), Some(checkpoint)) = (&meta, &checkpoint) {
        check_checkpoint(checkpoint, &walk, &mut report);
        check_queues(dir, meta, checkpoint, &walk, unclean, &mut report);
        check_index(dir, checkpoint, &walk, &mut report)?;
    } else {
        report.note(
            "without a valid checkpoint and store.toml the consume queues and the key index are not checked: the next mount rebuilds them from the log".into(),
        );
    }
    check_ownership(dir, meta.as_ref(), checkpoint.as_ref(), &mut report)?;
    let damaged_positions = check_consumer_positions(dir, &mut report)?;
    if options.repair && report.damaged() {
        salvage_consumer_positions(&damaged_positions, &mut report)?;
        repair(dir, lock, found, layout, checkpoint, walk, &mut report)?;
    }
    Ok(report)
}

/// The metadata as found: `store.toml` with the valid topic files, if that parses and is
/// valid on its own; the valid topic files alone (what a lost `store.toml` is rebuilt
/// around); and the ids of damaged topic files.
struct FoundMeta {
    meta: Option<Meta>,
    topic_files: Vec<TopicRecord>,
    damaged_topics: Vec<u32>,
}

fn load_meta(dir: &Path, report: &mut CheckReport) -> Result<FoundMeta> {
    let path = dir.join(meta::META_FILE);
    let (loaded, files) = Meta::load_leniently(dir)?;
    for (_, error) in &files.damaged {
        report.damage(error.to_string());
    }
    for leftover in &files.leftovers {
        report.note(format!(
            "{}: left by a write a crash interrupted; the topic's next change replaces it",
            leftover.display()
        ));
    }
    let meta = match loaded {
        Ok(Some(meta)) => match meta.validate() {
            Ok(()) => Some(meta),
            Err(problem) => {
                report.damage(problem.describe(dir));
                None
            }
        },
        Ok(None) => {
            report.damage(format!(
                "{} is missing: the mount refuses a store without it",
                path.display()
            ));
            None
        }
        Err(error) => {
            report.damage(error.to_string());
            None
        }
    };
    Ok(FoundMeta {
        meta,
        topic_files: files.records,
        damaged_topics: files.damaged.iter().map(|(id, _)| *id).collect(),
    })
}

fn load_checkpoint(dir: &Path, report: &mut CheckReport) -> Result<Option<Checkpoint>> {
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match Checkpoint::decode(&bytes) {
            Ok(checkpoint) => Ok(Some(checkpoint)),
            Err(reason) => {
                report.damage(format!("{}: {reason}", path.display()));
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

/// The layout of a store whose `store.toml` is lost, read from its files: the commit-log
/// file size from the files, the index sizes from an index header, `segment_messages`
/// from consecutive consume-queue files (or `--segment-messages`).
fn infer_layout(dir: &Path, options: &CheckOptions, report: &mut CheckReport) -> Result<Layout> {
    let defaults = StoreConfig::default();
    let log_dir = dir.join(LOG_DIR);
    let mut sizes = BTreeMap::<u64, usize>::new();
    for base in commitlog::list_files(&log_dir).unwrap_or_default() {
        let path = log_dir.join(format::file_name(base));
        let len = std::fs::metadata(&path)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?
            .len();
        *sizes.entry(len).or_default() += 1;
    }
    let commit_log_file_bytes = sizes
        .iter()
        .max_by_key(|(_, count)| **count)
        .map_or(defaults.commit_log_file_bytes, |(&len, _)| len);
    let (index_slots, index_entries) = index::sizes_in(&dir.join(recovery::INDEX_DIR))
        .unwrap_or((defaults.index_slots, defaults.index_entries));
    let segment_messages = match options.segment_messages.or_else(|| segment_size_of_queues(dir)) {
        Some(n) => n,
        None if options.repair => {
            return Err(StoreError::InvalidSetting(
                "the files do not tell segment_messages (no partition has two consume-queue files): give --segment-messages N, the value the store was created with".into(),
            ))
        }
        None => defaults.segment_messages,
    };
    report.note(format!(
        "layout read from the files: commit_log_file_bytes = {commit_log_file_bytes}, segment_messages = {segment_messages}, index_slots = {index_slots}, index_entries = {index_entries}"
    ));
    Ok(Layout {
        commit_log_file_bytes,
        segment_messages,
        index_slots,
        index_entries,
    })
}

/// Consume-queue files are named by their segment's base offset, a segment apart.
fn segment_size_of_queues(dir: &Path) -> Option<u32> {
    let mut step: Option<u64> = None;
    for partitions in recovery::queue_dirs(dir).ok()?.into_values() {
        for path in partitions.into_values() {
            let bases = commitlog::list_files(&path).unwrap_or_default();
            for pair in bases.windows(2) {
                let apart = pair[1] - pair[0];
                step = Some(step.map_or(apart, |s| s.min(apart)));
            }
        }
    }
    step.and_then(|s| u32::try_from(s).ok())
}

/// Where a scan of the log found records and damage.
struct LogWalk {
    file_bytes: u64,
    /// Every commit-log file, oldest first, by base.
    files: BTreeMap<u64, MappedFile>,
    /// Damaged spans (file base, from, to) with valid records after them.
    spans: Vec<(u64, usize, usize)>,
    /// Where the valid log ends.
    end: u64,
    /// For each partition that has records: the offset after its newest.
    partitions: HashMap<(u32, u32), PartitionSeen>,
    /// Batches whose messages' bytes the log gave back are read from segments' files: by
    /// the walk, and by the queue and index entries' checks (the last one kept for the
    /// entries that point into it).
    released: ReleasedFiles,
    looked_up: RefCell<LookedUp>,
}

/// What [`LogWalk::with_record_at`] keeps between lookups.
struct LookedUp {
    released: ReleasedFiles,
    /// The bytes of the last released batch rebuilt from its segment's file.
    restored: Vec<u8>,
    /// The commit-log offset looked up last and what was found there. Every queue entry of
    /// a batch points at it, and a batch of short lines holds up to 150,000 messages:
    /// scanning it again (its CRC32C and whole table) for each entry made a check of such a
    /// log quadratic.
    last: Option<(u64, Found)>,
}

/// What a lookup found, kept without borrowing the bytes it was found in.
#[derive(Clone, Copy)]
enum Found {
    /// A valid batch, in the commit-log file.
    InFile,
    /// A valid batch, rebuilt into `restored`.
    Restored,
    /// No valid batch: an end-of-file or skip marker, or why the bytes are not a batch.
    Other(Scanned<'static>),
}

struct PartitionSeen {
    next: u64,
    last_record: u64,
}

/// What the walk over the log's files carries from one file to the next.
struct ScanState<'m> {
    meta: Option<&'m Meta>,
    /// Where the last damaged or skipped span ended, if one did.
    breaks: Option<u64>,
    /// Partitions whose batches the metadata disowns, reported once each.
    disowned: HashSet<(u32, u32)>,
    /// The bytes of a released batch, read back from its segment's file.
    restored: Vec<u8>,
}

/// Finds released segments' bytes; the checkpoint's partition starts tell which batches
/// lie in segments retention removed.
fn released_files(dir: &Path, layout: &Layout, checkpoint: Option<&Checkpoint>) -> ReleasedFiles {
    ReleasedFiles::new(dir, u64::from(layout.segment_messages), true)
        .with_starts(checkpoint.into_iter().flat_map(Checkpoint::starts))
}

impl LogWalk {
    fn run(
        dir: &Path,
        layout: &Layout,
        meta: Option<&Meta>,
        checkpoint: Option<&Checkpoint>,
        progress: bool,
        report: &mut CheckReport,
    ) -> Result<LogWalk> {
        let log_dir = dir.join(LOG_DIR);
        let mut walk = LogWalk {
            file_bytes: layout.commit_log_file_bytes,
            files: BTreeMap::new(),
            spans: Vec::new(),
            end: 0,
            partitions: HashMap::new(),
            released: released_files(dir, layout, checkpoint),
            looked_up: RefCell::new(LookedUp {
                released: released_files(dir, layout, checkpoint),
                restored: Vec::new(),
                last: None,
            }),
        };
        for base in commitlog::list_files(&log_dir).unwrap_or_default() {
            let path = log_dir.join(format::file_name(base));
            // Nothing allocated: ranges released to segments' files stay holes.
            let file = MappedFile::open_allocating_from(&path, walk.file_bytes, walk.file_bytes)?;
            if file.allocated() != walk.file_bytes || base % walk.file_bytes != 0 {
                report.damage(format!(
                    "{} is {} bytes long at offset {base}; commit-log files are {} bytes at multiples of that",
                    path.display(),
                    file.allocated(),
                    walk.file_bytes
                ));
                continue;
            }
            walk.files.insert(base, file);
        }
        let mut previous: Option<u64> = None;
        for &base in walk.files.keys() {
            if previous.is_some_and(|p| p + walk.file_bytes != base) {
                report.damage(format!(
                    "commit-log files are missing between offsets {} and {base}",
                    previous.unwrap_or(0) + walk.file_bytes
                ));
            }
            previous = Some(base);
        }
        let durable = checkpoint.map_or(0, |c| c.commit_log_end);
        let progress = progress.then(|| {
            let from = walk.files.keys().next().copied().unwrap_or(0);
            let to = walk
                .files
                .keys()
                .last()
                .map_or(from, |&b| b + walk.file_bytes);
            ScanProgress::new("check", Output::for_stderr(to - from), from, to)
        });
        walk.scan(meta, durable, progress, report);
        Ok(walk)
    }

    fn scan(
        &mut self,
        meta: Option<&Meta>,
        durable: u64,
        progress: Option<ScanProgress>,
        report: &mut CheckReport,
    ) {
        let files = std::mem::take(&mut self.files);
        let mut progress = progress;
        self.scan_files(&files, meta, durable, &mut progress, report);
        if let Some(progress) = progress {
            progress.finish();
        }
        self.files = files;
    }

    /// Walks every record in order, recording damaged spans and resuming after each.
    fn scan_files(
        &mut self,
        files: &BTreeMap<u64, MappedFile>,
        meta: Option<&Meta>,
        durable: u64,
        progress: &mut Option<ScanProgress>,
        report: &mut CheckReport,
    ) {
        let bases: Vec<u64> = files.keys().copied().collect();
        let mut state = ScanState {
            meta,
            breaks: None,
            disowned: HashSet::new(),
            restored: Vec::new(),
        };
        let mut resume = bases.first().map(|&b| (0usize, b, 0usize));
        while let Some((i, base, position)) = resume.take() {
            let invalid =
                self.scan_file(&files[&base], base, position, &mut state, progress, report);
            let next = match invalid {
                None => {
                    self.end = base + self.file_bytes;
                    bases.get(i + 1).map(|&b| (i + 1, b, 0))
                }
                Some((position, reason)) => {
                    let found =
                        self.damaged_span(files, &bases[i..], position, reason, durable, report);
                    self.end = base + position as u64;
                    let Some((j, b, p)) = found else {
                        return;
                    };
                    state.breaks = Some(b + p as u64);
                    Some((i + j, b, p))
                }
            };
            if let Some(progress) = progress {
                progress.file_done(base + self.file_bytes);
            }
            resume = next;
        }
    }

    /// Scans the batches of `file`, the commit-log file at `base`, from `position` to its
    /// end; returns where it met invalid bytes, and why, if it did.
    fn scan_file(
        &mut self,
        file: &MappedFile,
        base: u64,
        mut position: usize,
        state: &mut ScanState<'_>,
        progress: &mut Option<ScanProgress>,
        report: &mut CheckReport,
    ) -> Option<(usize, &'static str)> {
        let path = file.path();
        // SAFETY: `check` holds the store's lock, and repairs only after its walk: nothing
        // writes the file meanwhile.
        let bytes = unsafe { file.bytes(0, self.file_bytes as usize) };
        while position < bytes.len() {
            let at = base + position as u64;
            let scanned = match self.released.scan(&bytes[position..], &mut state.restored) {
                Ok(scanned) => scanned,
                // The log's batch is whole (its header says its size); its segment's
                // file, the only copy of its messages, is what is damaged.
                Err(why) => {
                    report.damage(why);
                    match format::decode_header(&bytes[position..]) {
                        Ok(batch) => Scanned::Record(batch),
                        Err(reason) => Scanned::Invalid(reason),
                    }
                }
            };
            match scanned {
                Scanned::Record(batch) => {
                    let header = batch.header;
                    report.records += u64::from(header.count);
                    let key = (header.topic_id, header.partition);
                    if let Some(why) = state.meta.and_then(|m| m.disowns(key.0, key.1)) {
                        if state.disowned.insert(key) {
                            report.damage(format!(
                                "{} byte {position}: message {} of {why}",
                                path.display(),
                                header.first_offset
                            ));
                        }
                    }
                    self.see(&header, at, state.breaks, path, position, report);
                    position += header.size as usize;
                    if let Some(progress) = progress {
                        progress.at(base + position as u64);
                    }
                }
                Scanned::Skip(len) => {
                    report.note(format!(
                        "{} bytes {position}..{}: a span skipped by an earlier repair",
                        path.display(),
                        position + len
                    ));
                    position += len;
                    state.breaks = Some(base + position as u64);
                }
                Scanned::EndOfFile => position = bytes.len(),
                Scanned::Invalid(reason) => return Some((position, reason)),
            }
            self.end = base + position as u64;
        }
        None
    }

    /// A batch of a partition: its first offset must follow the partition's previous one,
    /// unless a damaged or skipped span (at `breaks`) lies between.
    fn see(
        &mut self,
        header: &format::BatchHeader,
        at: u64,
        breaks: Option<u64>,
        path: &Path,
        position: usize,
        report: &mut CheckReport,
    ) {
        let key = (header.topic_id, header.partition);
        if let Some(seen) = self.partitions.get(&key) {
            let lost_in_span = breaks.is_some_and(|b| b > seen.last_record);
            if header.first_offset > seen.next && lost_in_span {
                report.note(format!(
                    "topic id {} partition {}: offsets {}..{} lie in a damaged or skipped span",
                    key.0, key.1, seen.next, header.first_offset
                ));
            } else if header.first_offset > seen.next {
                report.damage(format!(
                    "{} byte {position}: message {} of topic id {} partition {} where {} was expected",
                    path.display(),
                    header.first_offset,
                    key.0,
                    key.1,
                    seen.next
                ));
            }
        }
        let next = self.partitions.get(&key).map_or(0, |s| s.next);
        self.partitions.insert(
            key,
            PartitionSeen {
                next: next.max(header.end_offset()),
                last_record: at,
            },
        );
    }

    /// Invalid bytes at `position` of the file `bases[0]`: finds the next valid record (in
    /// this file or a later one: index into `bases`, base, position) and records the span up
    /// to it as damage; with none, the log ends here (a torn tail, or its unused rest).
    fn damaged_span(
        &mut self,
        files: &BTreeMap<u64, MappedFile>,
        bases: &[u64],
        position: usize,
        reason: &str,
        durable: u64,
        report: &mut CheckReport,
    ) -> Option<(usize, u64, usize)> {
        let at = bases[0] + position as u64;
        let path = files[&bases[0]].path();
        let marker = format::MARKER_BYTES;
        // A skip marker needs 8 bytes: a closer record is given up with the span.
        let file = &files[&bases[0]];
        // SAFETY: `check` holds the store's lock, and repairs only after its walk: nothing
        // writes the files meanwhile.
        let next_valid =
            |file: &MappedFile, from: usize| unsafe { commitlog::next_valid_batch(file, from) };
        let in_file = next_valid(file, position + 1)
            .map(|q| match q - position < marker {
                true => next_valid(file, position + marker),
                false => Some(q),
            })
            .unwrap_or(None);
        let found = match in_file {
            Some(q) => Some((0, bases[0], q)),
            None => bases
                .iter()
                .enumerate()
                .skip(1)
                .find_map(|(j, &b)| next_valid(&files[&b], 0).map(|q| (j, b, q))),
        };
        let Some((j, next_base, next_position)) = found else {
            if at < durable {
                report.damage(format!(
                    "{} byte {position}: {reason}, below the checkpoint's end {durable}: the log ends there, without records the checkpoint vouched for",
                    path.display()
                ));
            } else if reason != "zeroes (never written)" {
                report.note(format!(
                    "{} byte {position}: {reason}: a torn tail, which the next mount cuts",
                    path.display()
                ));
            }
            return None;
        };
        let file_bytes = self.file_bytes as usize;
        for (k, &b) in bases.iter().enumerate().take(j + 1) {
            let from = if k == 0 { position } else { 0 };
            let to = if k == j { next_position } else { file_bytes };
            if to > from {
                self.spans.push((b, from, to));
            }
        }
        report.damage(format!(
            "{} byte {position}: {reason}; valid records resume at {} byte {next_position}",
            path.display(),
            path.with_file_name(format::file_name(next_base)).display()
        ));
        Some((j, next_base, next_position))
    }

    /// Calls `look` with what lies where a queue or index entry says a batch is, if its
    /// file is stored (a released batch read back from its segment's file).
    fn with_record_at<T>(&self, offset: u64, look: impl FnOnce(Option<Scanned<'_>>) -> T) -> T {
        let base = offset - offset % self.file_bytes;
        let Some(file) = self.files.get(&base) else {
            return look(None);
        };
        // SAFETY: `check` holds the store's lock, and repairs only after its walk: nothing
        // writes the file meanwhile.
        let whole = unsafe { file.bytes(0, self.file_bytes as usize) };
        let rest = &whole[(offset - base) as usize..];
        let mut looked_up = self.looked_up.borrow_mut();
        let LookedUp {
            released,
            restored,
            last,
        } = &mut *looked_up;
        // Looked up just before: valid then, and nothing has written the bytes since.
        fn again(bytes: &[u8]) -> Scanned<'_> {
            match format::decode_header(bytes) {
                Ok(batch) => Scanned::Record(batch),
                Err(reason) => Scanned::Invalid(reason),
            }
        }
        match *last {
            Some((at, Found::InFile)) if at == offset => return look(Some(again(rest))),
            Some((at, Found::Restored)) if at == offset => return look(Some(again(restored))),
            Some((at, Found::Other(scanned))) if at == offset => return look(Some(scanned)),
            _ => {}
        }
        // The header (its CRC32C included) names the batch.
        let header = |bytes: &[u8]| bytes.get(..format::BATCH_HEADER_BYTES).map(<[u8]>::to_vec);
        let scanned = if header(rest).is_some() && header(rest) == header(restored) {
            format::scan_record(restored)
        } else {
            released
                .scan(rest, restored)
                .unwrap_or(Scanned::Invalid("its segment's file does not hold it"))
        };
        let found = match &scanned {
            Scanned::Record(batch) if batch.lies_at(rest) => Found::InFile,
            Scanned::Record(_) => Found::Restored,
            Scanned::EndOfFile => Found::Other(Scanned::EndOfFile),
            Scanned::Skip(size) => Found::Other(Scanned::Skip(*size)),
            Scanned::Invalid(reason) => Found::Other(Scanned::Invalid(reason)),
        };
        *last = Some((offset, found));
        look(Some(scanned))
    }
}

/// The checkpoint's log end must lie within the valid log.
fn check_checkpoint(checkpoint: &Checkpoint, walk: &LogWalk, report: &mut CheckReport) {
    if checkpoint.commit_log_end > walk.end && !walk.files.is_empty() {
        report.damage(format!(
            "the checkpoint's commit-log end {} lies past the log's valid end {}",
            checkpoint.commit_log_end, walk.end
        ));
    }
}

/// Every consume-queue entry the checkpoint vouches for must point at its own record.
fn check_queues(
    dir: &Path,
    meta: &Meta,
    checkpoint: &Checkpoint,
    walk: &LogWalk,
    unclean: bool,
    report: &mut CheckReport,
) {
    let marks: HashMap<(u32, u32), &PartitionMark> = checkpoint
        .partitions
        .iter()
        .map(|m| ((m.topic_id, m.partition), m))
        .collect();
    for topic in &meta.topics {
        for index in 0..topic.partitions {
            let queue_dir = recovery::queue_dir(dir, topic.id).join(index.to_string());
            match marks.get(&(topic.id, index)) {
                Some(mark) => check_queue(
                    &queue_dir,
                    topic,
                    mark,
                    meta.layout.segment_messages,
                    walk,
                    unclean,
                    report,
                ),
                None if recovery::holds_queue_files(&queue_dir) => report.note(format!(
                    "{}: not covered by the checkpoint; the next mount rebuilds it from the log",
                    queue_dir.display()
                )),
                None => {}
            }
        }
    }
}

fn check_queue(
    queue_dir: &Path,
    topic: &TopicRecord,
    mark: &PartitionMark,
    segment_messages: u32,
    walk: &LogWalk,
    unclean: bool,
    report: &mut CheckReport,
) {
    let segment = u64::from(segment_messages);
    let first_log = walk.files.keys().next().copied().unwrap_or(0);
    let (mut lost, mut removed, mut bad) = (0u64, 0u64, 0u64);
    let mut offset = mark.start;
    while offset < mark.end {
        let base = offset - offset % segment;
        let path = queue_dir.join(format::file_name(base));
        let segment_end = (base + segment).min(mark.end);
        let Ok(bytes) = std::fs::read(&path) else {
            report.note(format!(
                "{}: missing; the next mount rebuilds it from the log",
                path.display()
            ));
            offset = segment_end;
            continue;
        };
        for offset in offset..segment_end {
            let at = ((offset - base) as usize) * QUEUE_ENTRY_BYTES;
            report.queue_entries += 1;
            let Some(entry) = bytes
                .get(at..at + QUEUE_ENTRY_BYTES)
                .map(QueueEntry::decode)
            else {
                report.note(format!(
                    "{}: shorter than its entries; the next mount rebuilds it",
                    path.display()
                ));
                break;
            };
            if entry.commit_log_offset == LOST_MESSAGE {
                lost += 1;
            } else if entry.commit_log_offset < first_log {
                removed += 1;
            } else if let Some(why) = entry_problem(topic.id, mark.partition, offset, &entry, walk)
            {
                bad += 1;
                if bad <= 10 {
                    report.damage(format!(
                        "{} byte {at}: the entry of offset {offset} {why}",
                        path.display()
                    ));
                }
            }
        }
        offset = segment_end;
    }
    let name = format!("topic {:?} partition {}", topic.name, mark.partition);
    if bad > 10 {
        report.damage(format!(
            "{name}: {} more consume-queue entries are wrong",
            bad - 10
        ));
    }
    if lost > 0 {
        report.note(format!(
            "{name}: {lost} offsets were lost in damaged spans (reading them fails)"
        ));
    }
    if removed > 0 {
        let text = format!("{name}: {removed} entries point into commit-log files already removed");
        match unclean {
            true => report.note(format!(
                "{text}; the next mount moves the partition's start past them"
            )),
            false => report.damage(text),
        }
    }
}

/// Why a queue entry of `offset` does not describe its record, if it does not.
fn entry_problem(
    topic_id: u32,
    partition: u32,
    offset: u64,
    entry: &QueueEntry,
    walk: &LogWalk,
) -> Option<String> {
    let at = entry.batch;
    walk.with_record_at(at, |found| match found {
        None => Some(format!(
            "points at commit-log offset {at}, in no stored file"
        )),
        Some(Scanned::Record(batch)) => batch_problem(topic_id, partition, offset, entry, &batch),
        Some(_) => Some(format!(
            "points at commit-log offset {at}, which holds no valid batch"
        )),
    })
}

/// Why a queue entry of `offset` does not describe its message in `batch`, if it does not.
fn batch_problem(
    topic_id: u32,
    partition: u32,
    offset: u64,
    entry: &QueueEntry,
    batch: &format::Batch<'_>,
) -> Option<String> {
    let at = entry.batch;
    let header = batch.header;
    let message = offset
        .checked_sub(header.first_offset)
        .and_then(|index| batch.message(u32::try_from(index).ok()?));
    let matches = (header.topic_id, header.partition) == (topic_id, partition)
        && message.is_some_and(|message| {
            at.checked_add(u64::from(message.payload_at)) == Some(entry.commit_log_offset)
                && message.len == entry.size
        });
    (!matches).then(|| {
        format!(
            "points at commit-log offset {at}, the batch of messages {}..{} of topic id {} partition {}",
            header.first_offset,
            header.end_offset(),
            header.topic_id,
            header.partition
        )
    })
}

/// The key index up to the checkpoint's mark: headers, chains, and each entry's record.
fn check_index(
    dir: &Path,
    checkpoint: &Checkpoint,
    walk: &LogWalk,
    report: &mut CheckReport,
) -> Result<()> {
    let Some(mark) = checkpoint.index else {
        return Ok(());
    };
    let index_dir = dir.join(recovery::INDEX_DIR);
    let first_log = walk.files.keys().next().copied().unwrap_or(0);
    for base in commitlog::list_files(&index_dir).unwrap_or_default() {
        if base > mark.file_base {
            continue;
        }
        let path = index_dir.join(format::file_name(base));
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        let count = (base == mark.file_base).then_some(mark.count);
        let hash_at = |at: format::MessageAt| -> Option<Option<u64>> {
            if at.batch < first_log {
                return None;
            }
            walk.with_record_at(at.batch, |found| match found {
                // Retention removed it: no longer stored (its bytes may be gone too).
                Some(Scanned::Record(batch))
                    if walk.released.removed_by_retention(&batch.header) =>
                {
                    None
                }
                Some(Scanned::Record(batch)) => Some(batch.message(at.index).and_then(|message| {
                    let key = &batch.payload(&message)[..message.key_len? as usize];
                    Some(format::key_hash(batch.header.topic_id, key))
                })),
                _ => Some(None),
            })
        };
        let checked = index::verify_file(&bytes, count, hash_at, |byte, problem| {
            report.damage(format!("{} byte {byte}: {problem}", path.display()));
        });
        report.index_entries += u64::from(checked);
    }
    Ok(())
}

/// A partition's `consumers` file that does not decode: where, and the byte it goes wrong at.
struct DamagedPositions {
    queue_dir: std::path::PathBuf,
    at: u64,
}

/// Every partition's consumer positions decode; those that do not are reported by file and
/// byte and returned for repair.
fn check_consumer_positions(dir: &Path, report: &mut CheckReport) -> Result<Vec<DamagedPositions>> {
    let mut damaged = Vec::new();
    for queue_dir in recovery::queue_dirs(dir)?
        .into_values()
        .flat_map(BTreeMap::into_values)
    {
        match consumers::read(&queue_dir) {
            Ok(_) => {}
            Err(StoreError::Corrupt {
                path,
                offset,
                reason,
            }) => {
                report.damage(format!(
                    "{} byte {offset}: {reason} (consumer positions)",
                    path.display()
                ));
                damaged.push(DamagedPositions {
                    queue_dir,
                    at: offset,
                });
            }
            Err(error) => return Err(error),
        }
    }
    Ok(damaged)
}

/// Keeps the positions written before the damage (whole lines, as the file is only ever
/// replaced whole) and the damaged file beside them as `consumers.damaged`.
fn salvage_consumer_positions(
    damaged: &[DamagedPositions],
    report: &mut CheckReport,
) -> Result<()> {
    for DamagedPositions { queue_dir, at } in damaged {
        let path = queue_dir.join(consumers::CONSUMERS_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        let kept = consumers::decode(&bytes[..*at as usize]).unwrap_or_default();
        let aside = queue_dir.join(format!("{}.damaged", consumers::CONSUMERS_FILE));
        std::fs::copy(&path, &aside)
            .map_err(|e| StoreError::io(format!("keeping {}", aside.display()), e))?;
        consumers::write(queue_dir, &kept)?;
        report.findings.push(Finding::Repaired(format!(
            "{}: kept the positions of {} group(s) stored before byte {at}; the file as it was is {}",
            path.display(),
            kept.len(),
            aside.display()
        )));
    }
    Ok(())
}

/// Data that `store.toml` cannot own: records, queues or checkpoint marks of a topic id it
/// has not given out, or of a partition past its topic's count.
fn check_ownership(
    dir: &Path,
    meta: Option<&Meta>,
    checkpoint: Option<&Checkpoint>,
    report: &mut CheckReport,
) -> Result<()> {
    let Some(meta) = meta else { return Ok(()) };
    for (topic_id, partitions) in recovery::queue_dirs(dir)? {
        for (partition, path) in partitions {
            if let Some(why) = meta.disowns(topic_id, partition) {
                if recovery::holds_queue_files(&path) {
                    report.damage(format!("{} holds messages of {why}", path.display()));
                }
            }
        }
    }
    for mark in checkpoint.iter().flat_map(|c| &c.partitions) {
        if let Some(why) = meta.disowns(mark.topic_id, mark.partition) {
            if mark.end > 0 {
                report.damage(format!(
                    "the checkpoint counts {} messages of {why}",
                    mark.end
                ));
            }
        }
    }
    Ok(())
}

/// Partitions holding data, by topic id: how many partitions each topic needs at least.
fn partitions_with_data(
    dir: &Path,
    checkpoint: Option<&Checkpoint>,
    walk: &LogWalk,
) -> Result<BTreeMap<u32, u32>> {
    let mut needed = BTreeMap::<u32, u32>::new();
    let mut need = |topic: u32, partition: u32| {
        let count = needed.entry(topic).or_default();
        *count = (*count).max(partition + 1);
    };
    walk.partitions.keys().for_each(|&(t, p)| need(t, p));
    for (topic, partitions) in recovery::queue_dirs(dir)? {
        for (partition, path) in partitions {
            if recovery::holds_queue_files(&path) {
                need(topic, partition);
            }
        }
    }
    for mark in checkpoint
        .iter()
        .flat_map(|c| &c.partitions)
        .filter(|m| m.end > 0)
    {
        need(mark.topic_id, mark.partition);
    }
    Ok(needed)
}

/// The metadata made to own all the data: a lost `store.toml` rebuilt around the topic
/// files left (other topics named `topic-<id>`), partition counts raised to what holds
/// messages, topics past `next_topic_id` or whose file was damaged taken in, and
/// `next_topic_id` above every id found, so no id is ever given out twice.
fn repaired_meta(found: &FoundMeta, layout: Layout, needed: &BTreeMap<u32, u32>) -> Result<Meta> {
    let mut meta = found.meta.clone().unwrap_or_else(|| {
        let mut rebuilt = Meta::new(layout);
        rebuilt.topics = found.topic_files.clone();
        let above_every_file = rebuilt.topics.iter().map(|t| t.id.saturating_add(1)).max();
        rebuilt.next_topic_id = above_every_file.unwrap_or(1);
        rebuilt
    });
    let max_found = needed.keys().copied().max().unwrap_or(0);
    let known_below = meta.next_topic_id;
    for (&id, &count) in needed {
        match meta.topics.iter_mut().find(|t| t.id == id) {
            Some(topic) => topic.partitions = topic.partitions.max(count),
            None if id >= known_below || found.damaged_topics.contains(&id) => {
                let settings = TopicSettings {
                    partitions: count,
                    framing: Framing::Lines,
                    key_separator: None,
                    retention_ms: None,
                    retention_bytes: None,
                    owner_uid: 0,
                    owner_gid: 0,
                    mode: 0o755,
                };
                meta.topics.push(TopicRecord::new(
                    &format!("topic-{id}"),
                    id,
                    super::now_ms(),
                    &settings,
                ));
            }
            // A deleted topic's leftovers.
            None => {}
        }
    }
    for topic in &mut meta.topics {
        topic.partitions = topic.partitions.max(1);
    }
    meta.next_topic_id = meta.next_topic_id.max(max_found + 1).max(1);
    meta.validate().map_err(|problem| {
        StoreError::InvalidSetting(format!(
            "the metadata cannot be repaired automatically: {}; edit it by hand",
            problem.describe(Path::new("."))
        ))
    })?;
    Ok(meta)
}

/// Damaged topic files are kept aside as `<id>.toml.damaged`; their topics come back as
/// `topic-<id>` (a topic's name is only in its file).
fn set_damaged_topic_files_aside(dir: &Path, ids: &[u32], report: &mut CheckReport) -> Result<()> {
    for &id in ids {
        let path = dir.join(meta::TOPICS_DIR).join(meta::topic_file_name(id));
        let kept = path.with_extension("toml.damaged");
        std::fs::rename(&path, &kept)
            .map_err(|e| StoreError::io(format!("keeping {}", kept.display()), e))?;
        report.findings.push(Finding::Repaired(format!(
            "{} kept as {}; its topic comes back as topic-{id}",
            path.display(),
            kept.display()
        )));
    }
    Ok(())
}

/// Marks the damaged spans, makes `store.toml` own the data, removes the checkpoint, and
/// opens the store so that it rebuilds queues and index from the whole log.
fn repair(
    dir: &Path,
    lock: File,
    found: FoundMeta,
    layout: Layout,
    checkpoint: Option<Checkpoint>,
    walk: LogWalk,
    report: &mut CheckReport,
) -> Result<()> {
    let mut needed = partitions_with_data(dir, checkpoint.as_ref(), &walk)?;
    for &id in &found.damaged_topics {
        needed.entry(id).or_insert(1);
    }
    // Without store.toml nothing tells deleted topics from live ones: all are kept.
    let had_meta = found.meta.is_some();
    let before = found.meta.clone();
    let meta = repaired_meta(&found, layout, &needed)?;
    set_damaged_topic_files_aside(dir, &found.damaged_topics, report)?;
    for &(base, from, to) in &walk.spans {
        let file = &walk.files[&base];
        let len = u32::try_from(to - from).expect("a span lies within one file");
        // SAFETY: `check --repair` holds the store's lock, and no slice of the walk over the
        // files is alive any more: the span is this thread's alone.
        unsafe { file.write(from as u64, &format::skip_marker(len)) };
        file.flush(from as u64, format::MARKER_BYTES as u64)?;
        report.findings.push(Finding::Repaired(format!(
            "{} bytes {from}..{to} marked as a skipped span",
            file.path().display()
        )));
    }
    drop(walk);
    if before.as_ref() != Some(&meta) {
        if !had_meta && dir.join(meta::META_FILE).exists() {
            let kept = dir.join(format!("{}.damaged", meta::META_FILE));
            std::fs::rename(dir.join(meta::META_FILE), &kept)
                .map_err(|e| StoreError::io(format!("keeping {}", kept.display()), e))?;
        }
        meta.save(dir)?;
        let topics: Vec<String> = meta
            .topics
            .iter()
            .map(|t| format!("{} (id {}, {} partitions)", t.name, t.id, t.partitions))
            .collect();
        report.findings.push(Finding::Repaired(format!(
            "store.toml written: next_topic_id = {}, topics {}",
            meta.next_topic_id,
            topics.join(", ")
        )));
    }
    super::mapped::remove_file(&dir.join(CHECKPOINT_FILE))?;
    let config = StoreConfig {
        commit_log_file_bytes: layout.commit_log_file_bytes,
        segment_messages: layout.segment_messages,
        index_slots: layout.index_slots,
        index_entries: layout.index_entries,
        // Repair only rebuilds; the next mount copies segments.
        materialize_segments: false,
        ..StoreConfig::default()
    };
    let opened = recovery::open_locked(dir, lock, config)?;
    report_losses(&meta, checkpoint.as_ref(), &opened, report);
    opened.store.close()?;
    report.findings.push(Finding::Repaired(
        "consume queues and the key index rebuilt from the whole commit log".into(),
    ));
    Ok(())
}

/// Every offset the repair lost: in skipped spans, and past the partitions' new ends where
/// the old checkpoint counted more.
fn report_losses(
    meta: &Meta,
    checkpoint: Option<&Checkpoint>,
    opened: &recovery::Opened,
    report: &mut CheckReport,
) {
    let name = |id: u32| {
        meta.topic_by_id(id)
            .map_or(format!("id {id}"), |t| format!("{:?} (id {id})", t.name))
    };
    for lost in &opened.lost {
        report.findings.push(Finding::Repaired(format!(
            "topic {} partition {}: offsets {}..{} lost in a damaged span (reading them fails with EIO)",
            name(lost.topic_id),
            lost.partition,
            lost.from,
            lost.to
        )));
    }
    for mark in checkpoint.iter().flat_map(|c| &c.partitions) {
        let Some(topic) = meta.topic_by_id(mark.topic_id) else {
            continue;
        };
        let Some(partition) = opened
            .store
            .topic(&topic.name)
            .and_then(|t| t.partition(mark.partition))
        else {
            continue;
        };
        if partition.end_offset() < mark.end {
            report.findings.push(Finding::Repaired(format!(
                "topic {} partition {}: offsets {}..{} are gone (the checkpoint counted them; the log no longer holds them)",
                name(mark.topic_id),
                mark.partition,
                partition.end_offset(),
                mark.end
            )));
        }
    }
}

impl CheckReport {
    /// The closing line: what was checked and what was found.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Finding) -> bool| self.findings.iter().filter(|x| f(x)).count();
        format!(
            "{} records, {} consume-queue entries, {} index entries checked: {} damaged, {} notes, {} repaired",
            self.records,
            self.queue_entries,
            self.index_entries,
            count(|f| matches!(f, Finding::Damage(_))),
            count(|f| matches!(f, Finding::Note(_))),
            count(|f| matches!(f, Finding::Repaired(_))),
        )
    }
}
