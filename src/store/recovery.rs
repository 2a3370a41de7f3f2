//! Opening the store: metadata, checkpoint, and — after an unclean stop or when derived files
//! are missing — a scan of the commit log that verifies every record's CRC, cuts a torn tail
//! and rebuilds the consume-queue and index entries. Damage anywhere but the tail, and
//! metadata that disagrees with the data, refuse the open: `commitfs check --repair` decides.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::append::Fence;
use super::checkpoint::Checkpoint;
use super::commitlog::{self, CommitLog};
use super::error::{Result, StoreError};
use super::format::{self, MessageAt, QueueEntry, Scanned, LOST_MESSAGE};
use super::index::KeyIndex;
use super::mapped::MappedFile;
use super::meta::{self, Layout, Meta};
use super::open_files::{self, OpenFiles};
use super::partition::PartitionOffsets;
use super::progress::{Output, ScanProgress};
use super::queue::{ConsumeQueue, QueueFile, ReservedFiles};
use super::released::ReleasedFiles;
use super::{maintenance, Store, StoreConfig};

pub(super) const LOG_DIR: &str = "commitlog";
pub(super) const QUEUE_DIR: &str = "queues";
pub(super) const INDEX_DIR: &str = "index";

pub fn open(dir: &Path, config: StoreConfig) -> Result<Arc<Store>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    let lock = lock_store(dir)?;
    Ok(open_locked(dir, lock, config)?.store)
}

/// A store opened, with the messages its recovery found lost in spans that
/// `commitfs check --repair` skipped.
pub(super) struct Opened {
    pub store: Arc<Store>,
    pub lost: Vec<LostMessages>,
}

/// Offsets `from..to` of a partition whose messages are gone with a damaged span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostMessages {
    pub topic_id: u32,
    pub partition: u32,
    pub from: u64,
    pub to: u64,
}

/// Opens the store in `dir`, whose `lock` the caller holds.
pub(super) fn open_locked(dir: &Path, lock: File, mut config: StoreConfig) -> Result<Opened> {
    let started = std::time::Instant::now();
    raise_open_file_limit();
    let open_files = OpenFiles::new(open_files::budget(config.max_open_files));
    let mut meta = settle_meta(dir, &mut config)?;
    fit_max_message(&mut config);
    let layout = meta.layout;
    let checkpoint = Checkpoint::load(dir)?;
    check_data_against_meta(dir, &meta, checkpoint.as_ref())?;
    let unclean = meta::abort_marker_exists(dir);
    let machine_restarted = unclean && meta::abort_marker_predates_boot(dir);
    // Nothing was written so far, so a refusal above leaves the store exactly as it was.
    meta::create_abort_marker(dir)?;
    remove_orphan_queues(dir, &meta)?;
    let fence = Arc::new(Fence::default());
    let (index, index_damaged) = open_index(dir, &layout, &open_files, &fence)?;
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| StoreError::io(format!("creating {}", log_dir.display()), e))?;
    let (mut partitions, uncovered) =
        open_partitions(dir, &meta, checkpoint.as_ref(), unclean, &open_files)?;
    let plan = plan_recovery(
        &log_dir,
        checkpoint.as_ref(),
        &index,
        index_damaged,
        &partitions,
        uncovered,
        unclean,
    )?;
    let released = ReleasedFiles::new(dir, u64::from(layout.segment_messages), false)
        .with_starts(partitions.iter().map(|(&key, p)| (key, p.start)));
    let mut scanner = Scanner {
        dir,
        log_dir: &log_dir,
        file_bytes: layout.commit_log_file_bytes,
        durable: 0,
        partitions: &mut partitions,
        index: &index,
        meta: &meta,
        last_skip: None,
        lost: Vec::new(),
        records: 0,
        machine_restarted,
        progress: None,
        released,
    };
    let recovered = scanner.recover(&plan)?;
    let lost = scanner.lost;
    let first_log_file = commitlog::list_files(&log_dir)?.first().copied();
    let offsets = settle_offsets(partitions, &plan, first_log_file.unwrap_or(0))?;
    let log = Arc::new(CommitLog::open(
        &log_dir,
        layout.commit_log_file_bytes,
        recovered.end,
        recovered.durable,
        recovered.cut,
        open_files,
        fence.clone(),
    )?);
    let topics = meta.topics.len();
    // Last before the topics open: a mount refused for damage leaves format 2 as it was.
    meta.migrate(dir)?;
    let parts = Parts {
        log,
        index,
        meta,
        lock,
        fence,
    };
    let store = assemble(dir, config, layout, parts, &offsets)?;
    tracing::info!(
        "store at {} open: {topics} topics, commit log ends at {}",
        dir.display(),
        recovered.end
    );
    crate::metrics::store_opened(started.elapsed());
    Ok(Opened { store, lost })
}

/// Loads `store.toml` (or creates it for a new store), refusing metadata that is invalid or
/// missing beside data, and settles the layout: the persisted one wins over the configured.
fn settle_meta(dir: &Path, config: &mut StoreConfig) -> Result<Meta> {
    let wanted = Layout {
        commit_log_file_bytes: config.commit_log_file_bytes,
        segment_messages: config.segment_messages,
        index_slots: config.index_slots,
        index_entries: config.index_entries,
    };
    let meta = match Meta::load(dir)? {
        Some(meta) => {
            meta.validate().map_err(|problem| StoreError::NeedsRepair {
                dir: dir.to_owned(),
                what: problem.describe(dir),
            })?;
            if meta.layout != wanted {
                tracing::warn!(
                    "the store at {} was created with {:?}; that layout stays (configured: {wanted:?})",
                    dir.display(),
                    meta.layout
                );
            }
            meta
        }
        None => {
            if let Some(data) = data_without_meta(dir) {
                return Err(StoreError::NeedsRepair {
                    dir: dir.to_owned(),
                    what: format!(
                        "{} is missing, but the directory holds {data}: opening it as a new store would lose the topics",
                        dir.join(meta::META_FILE).display()
                    ),
                });
            }
            wanted.validate().map_err(StoreError::InvalidSetting)?;
            let meta = Meta::new(wanted);
            meta.save(dir)?;
            meta
        }
    };
    config.commit_log_file_bytes = meta.layout.commit_log_file_bytes;
    config.segment_messages = meta.layout.segment_messages;
    config.index_slots = meta.layout.index_slots;
    config.index_entries = meta.layout.index_entries;
    Ok(meta)
}

/// What a directory without `store.toml` holds of a store, if anything.
pub(super) fn data_without_meta(dir: &Path) -> Option<String> {
    let has_entries = |name: &str| {
        std::fs::read_dir(dir.join(name)).is_ok_and(|mut entries| entries.next().is_some())
    };
    if has_entries(LOG_DIR) {
        Some("commit-log files".into())
    } else if has_entries(QUEUE_DIR) {
        Some("consume queues".into())
    } else if has_entries(INDEX_DIR) {
        Some("key-index files".into())
    } else if has_entries(meta::TOPICS_DIR) {
        Some("topic files".into())
    } else if dir.join(super::checkpoint::CHECKPOINT_FILE).exists() {
        Some("a checkpoint".into())
    } else {
        None
    }
}

/// Refuses data that the metadata cannot own: consume queues or checkpoint marks of a
/// partition past its topic's count, or of a topic id not given out yet. Writes nothing.
fn check_data_against_meta(dir: &Path, meta: &Meta, checkpoint: Option<&Checkpoint>) -> Result<()> {
    let refuse = |what: String| {
        Err(StoreError::NeedsRepair {
            dir: dir.to_owned(),
            what,
        })
    };
    for (topic_id, partitions) in queue_dirs(dir)? {
        for (partition, path) in partitions {
            if let Some(why) = meta.disowns(topic_id, partition) {
                if holds_queue_files(&path) {
                    return refuse(format!("{} holds messages of {why}", path.display()));
                }
            }
        }
    }
    for mark in checkpoint.iter().flat_map(|c| &c.partitions) {
        if let Some(why) = meta.disowns(mark.topic_id, mark.partition) {
            if mark.end > 0 {
                return refuse(format!(
                    "the checkpoint counts {} messages of {why}",
                    mark.end
                ));
            }
        }
    }
    Ok(())
}

/// The consume-queue directories on disk: topic id, then partition number and path.
pub(super) fn queue_dirs(dir: &Path) -> Result<BTreeMap<u32, BTreeMap<u32, PathBuf>>> {
    let mut found = BTreeMap::new();
    let root = dir.join(QUEUE_DIR);
    let Ok(topics) = std::fs::read_dir(&root) else {
        return Ok(found);
    };
    let listing = |path: &Path, e| StoreError::io(format!("listing {}", path.display()), e);
    for topic in topics {
        let topic = topic.map_err(|e| listing(&root, e))?;
        let Some(id) = topic.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let partitions: &mut BTreeMap<u32, PathBuf> = found.entry(id).or_default();
        let Ok(entries) = std::fs::read_dir(topic.path()) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| listing(&topic.path(), e))?;
            if let Some(index) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                partitions.insert(index, entry.path());
            }
        }
    }
    Ok(found)
}

/// Whether a partition's queue directory holds any consume-queue file.
pub(super) fn holds_queue_files(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(format::parse_file_name)
                .is_some()
        })
    })
}

/// Consume queues of topics no longer in the metadata: a deleted topic's (a crash during
/// its deletion), or the empty directories of a topic whose creation did not complete.
/// `check_data_against_meta` has refused any other.
fn remove_orphan_queues(dir: &Path, meta: &Meta) -> Result<()> {
    for topic_id in queue_dirs(dir)?.into_keys() {
        if meta.topic_by_id(topic_id).is_none() {
            let path = queue_dir(dir, topic_id);
            tracing::info!("removing the queues of a deleted topic: {}", path.display());
            remove_dir(&path)?;
        }
    }
    Ok(())
}

/// The key index, rebuilt from nothing if its files are damaged (the flag says so).
fn open_index(
    dir: &Path,
    layout: &Layout,
    open_files: &Arc<OpenFiles>,
    fence: &Arc<Fence>,
) -> Result<(KeyIndex, bool)> {
    let index_dir = dir.join(INDEX_DIR);
    let open = || {
        KeyIndex::open(
            &index_dir,
            layout.index_slots,
            layout.index_entries,
            open_files.clone(),
            fence.clone(),
        )
    };
    match open() {
        Ok(index) => Ok((index, false)),
        Err(error @ StoreError::Corrupt { .. }) => {
            tracing::warn!("{error}; rebuilding the key index from the commit log");
            remove_dir(&index_dir)?;
            let index = open()?;
            Ok((index, true))
        }
        Err(error) => Err(error),
    }
}

/// Every partition the metadata knows, at the offsets the checkpoint gives, and the
/// partitions that the checkpoint does not cover although their queues hold messages
/// from before it (those must come back from the log, never start empty).
fn open_partitions(
    dir: &Path,
    meta: &Meta,
    checkpoint: Option<&Checkpoint>,
    unclean: bool,
    open_files: &Arc<OpenFiles>,
) -> Result<(PartitionMap<Recovering>, Vec<String>)> {
    let marks: HashMap<(u32, u32), (u64, u64, u64)> = checkpoint
        .iter()
        .flat_map(|c| &c.partitions)
        .map(|m| ((m.topic_id, m.partition), (m.start, m.end, m.stream_end)))
        .collect();
    let mut partitions = PartitionMap::default();
    let mut uncovered = Vec::new();
    for topic in &meta.topics {
        for index in 0..topic.partitions {
            let queue = ConsumeQueue::open(
                &queue_dir(dir, topic.id).join(index.to_string()),
                u64::from(meta.layout.segment_messages),
                open_files.clone(),
            )?;
            let mark = marks.get(&(topic.id, index)).copied();
            // The checkpoint's start, never the first queue file's base: retention records a
            // new start before it removes files, and a crash may lose the names of files the
            // checkpoint counts on (those are rebuilt from the log, not taken as removed).
            let (start, end, stream_end) = mark.unwrap_or((0, 0, 0));
            let first_file = queue.file_bases().first().copied();
            // Without a mark, the partition is new since the checkpoint (an unclean stop
            // then finds all of its records after the checkpoint's log end) or the
            // checkpoint is one that forgot it.
            let new_since_checkpoint = |first| {
                unclean
                    && queue.peek_entry(first).is_some_and(|e| {
                        e.commit_log_offset != LOST_MESSAGE
                            && checkpoint.is_some_and(|c| e.commit_log_offset >= c.commit_log_end)
                    })
            };
            if mark.is_none() && first_file.is_some_and(|first| !new_since_checkpoint(first)) {
                uncovered.push(format!("topic id {} partition {index}", topic.id));
            }
            partitions.insert(
                (topic.id, index),
                Recovering {
                    queue,
                    active_file: Weak::new(),
                    start,
                    end,
                    stream_end: mark.map(|_| stream_end),
                    next: Some(end),
                    last_record: None,
                },
            );
        }
    }
    Ok((partitions, uncovered))
}

/// How the commit log is brought back.
enum Plan {
    /// A clean stop: the checkpoint holds; nothing is scanned.
    Clean { checkpoint_end: u64 },
    /// An unclean stop: scan from the checkpoint, rebuilding what came after it.
    FromCheckpoint { checkpoint: Checkpoint },
    /// Derived files missing or damaged: rebuild them from the whole log. Below `durable`
    /// a checkpoint promised the log was written out.
    Rebuild { first: u64, durable: u64 },
}

fn plan_recovery(
    log_dir: &Path,
    checkpoint: Option<&Checkpoint>,
    index: &KeyIndex,
    index_damaged: bool,
    partitions: &PartitionMap<Recovering>,
    uncovered: Vec<String>,
    unclean: bool,
) -> Result<Plan> {
    let mut reasons = uncovered
        .into_iter()
        .map(|p| format!("{p} holds messages the checkpoint does not cover"))
        .collect::<Vec<_>>();
    reasons.extend(
        partitions
            .iter()
            .filter(|(_, p)| !p.queue.covers(p.start, p.end))
            .map(|((topic, partition), _)| {
                format!("consume-queue files of topic id {topic} partition {partition} are missing")
            }),
    );
    if index_damaged {
        reasons.push("the key index was damaged".into());
    }
    let first_log_file = commitlog::list_files(log_dir)?.first().copied();
    let Some(checkpoint) = checkpoint else {
        reasons.push("there is no checkpoint".into());
        return Ok(rebuild(reasons, first_log_file, 0));
    };
    if checkpoint.index.is_some_and(|mark| !index.holds(mark)) {
        reasons.push("key-index entries the checkpoint counts are missing".into());
    }
    // Retention may have removed the file holding the checkpoint's log end before a newer
    // checkpoint was written (a crash in between, or a full disk refusing it): scanning from
    // there would find nothing and drop every later file as "past the end".
    if first_log_file.is_some_and(|first| checkpoint.commit_log_end < first) {
        reasons.push("the checkpoint's commit-log file is gone".into());
    }
    Ok(if !reasons.is_empty() {
        rebuild(reasons, first_log_file, checkpoint.commit_log_end)
    } else if unclean {
        Plan::FromCheckpoint {
            checkpoint: checkpoint.clone(),
        }
    } else {
        Plan::Clean {
            checkpoint_end: checkpoint.commit_log_end,
        }
    })
}

fn rebuild(reasons: Vec<String>, first_log_file: Option<u64>, durable: u64) -> Plan {
    if first_log_file.is_none() {
        // No commit log yet: a new store, nothing to rebuild.
        tracing::info!("new store: no commit log yet");
    } else {
        tracing::warn!(
            "rebuilding consume queues and the key index from the whole commit log: {}",
            reasons.join("; ")
        );
    }
    Plan::Rebuild {
        first: first_log_file.unwrap_or(0),
        durable,
    }
}

/// Where the recovered log ends, whether it was cut there, and below which point it is
/// known to be on disk (what recovery scanned or rebuilt above it is written out before
/// the next checkpoint vouches for it).
struct RecoveredLog {
    end: u64,
    cut: bool,
    durable: u64,
}

/// The partitions' recovered offsets, and the consume-queue files past their ends removed.
fn settle_offsets(
    partitions: PartitionMap<Recovering>,
    plan: &Plan,
    first_log_offset: u64,
) -> Result<HashMap<(u32, u32), PartitionOffsets>> {
    let mut recovered = HashMap::new();
    for (key, partition) in partitions {
        let end = partition.next.unwrap_or(partition.end.max(partition.start));
        let mut start = partition.start.min(end);
        if let Plan::FromCheckpoint { .. } = plan {
            // The disk ceiling may have cut into this partition after the checkpoint (a crash
            // before the next one): start at the first message still in the log.
            start = partition
                .queue
                .first_at_or_after(start, end, first_log_offset);
        }
        // Queue entries past the checkpoint's end (all of them, in a rebuild) are not on disk yet.
        let durable = match plan {
            Plan::Rebuild { .. } => start,
            _ => partition.end.clamp(start, end),
        };
        partition.queue.remove_from(end)?;
        // Files retention had recorded as gone when a crash stopped it before it removed them.
        partition.queue.remove_before(start)?;
        recovered.insert(
            key,
            PartitionOffsets {
                start,
                end,
                durable,
                stream_end: partition.stream_end.filter(|_| end == partition.end),
            },
        );
    }
    Ok(recovered)
}

/// What recovery opened, for [`assemble`] to make a store of.
struct Parts {
    log: Arc<CommitLog>,
    index: KeyIndex,
    meta: Meta,
    lock: File,
    /// Shared by the store and its background threads.
    fence: Arc<Fence>,
}

/// The store, its topics built. Until every topic is built and the recovered state is
/// recorded in a checkpoint, the store counts as closed: a failure drops it without the
/// closing checkpoint, which would forget every topic not built yet.
fn assemble(
    dir: &Path,
    config: StoreConfig,
    layout: Layout,
    parts: Parts,
    offsets: &HashMap<(u32, u32), PartitionOffsets>,
) -> Result<Arc<Store>> {
    let Parts {
        log,
        index,
        meta,
        lock,
        fence,
    } = parts;
    let store = Arc::new(Store {
        dir: dir.to_owned(),
        config,
        layout,
        log,
        index,
        topics: RwLock::new(BTreeMap::new()),
        meta: Mutex::new(meta.clone()),
        reserve: super::reserve::Reserve::open(dir),
        quiesce: RwLock::new(()),
        closed: AtomicBool::new(true),
        fence,
        maintenance: maintenance::Handle::default(),
        queue_writer: Default::default(),
        materializer: Default::default(),
        materializing: Mutex::new(()),
        checkpoint_lock: Mutex::new(()),
        lock: Mutex::new(Some(lock)),
    });
    let built = build_topics(&store, &meta, offsets)
        .and_then(|()| {
            let ids: Vec<u32> = meta.topics.iter().map(|t| t.id).collect();
            super::materialize::remove_orphans(dir, &ids)
        })
        .and_then(|()| first_checkpoint(&store));
    if let Err(error) = built {
        store.log.stop();
        return Err(error);
    }
    store.closed.store(false, Ordering::Release);
    let indexed = Arc::downgrade(&store);
    store.index.start_indexing(move || {
        let store = indexed.upgrade();
        store
            .as_ref()
            .inspect(|s| s.index.insert_waiting())
            .is_some()
    });
    store
        .queue_writer
        .start(Arc::downgrade(&store), store.fence.clone());
    store
        .maintenance
        .start(Arc::downgrade(&store), store.fence.clone());
    if store.config.materialize_segments {
        store
            .materializer
            .start(Arc::downgrade(&store), store.fence.clone());
    }
    Ok(store)
}

fn build_topics(
    store: &Store,
    meta: &Meta,
    offsets: &HashMap<(u32, u32), PartitionOffsets>,
) -> Result<()> {
    for record in &meta.topics {
        fail::fail_point!("recovery::build_topic", |_| Err(StoreError::io(
            format!("opening the queues of topic {}", record.name),
            std::io::Error::from_raw_os_error(libc::EMFILE)
        )));
        let topic = store.build_topic(record, offsets)?;
        store
            .topics
            .write()
            .insert(record.name.clone(), Arc::new(topic));
    }
    Ok(())
}

/// The recovered state is the new starting point for the next recovery. On a full disk
/// the previous checkpoint still describes a valid starting point, so serve reads anyway.
fn first_checkpoint(store: &Store) -> Result<()> {
    match store.checkpoint() {
        Err(error @ StoreError::DiskFull(_)) => {
            tracing::warn!("{error}; keeping the previous checkpoint");
            Ok(())
        }
        other => other,
    }
}

/// Recovery looks a partition up for every record it scans. Its keys are small and
/// trusted, so a multiply mixes them well enough where SipHash would cost a large share of
/// the scan.
#[derive(Default)]
struct PartitionKeyHasher(u64);

impl Hasher for PartitionKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.write_u32(u32::from(b)));
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(32) ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PartitionMap<V> = HashMap<(u32, u32), V, BuildHasherDefault<PartitionKeyHasher>>;

/// A partition while recovery rebuilds it.
struct Recovering {
    queue: ConsumeQueue,
    /// Open while the budget of open files keeps it: recovery of many partitions must not
    /// hold a file per partition.
    active_file: Weak<QueueFile>,
    start: u64,
    /// End offset at the checkpoint.
    end: u64,
    /// The `stream`'s size at `end`, if the checkpoint has a mark for the partition.
    stream_end: Option<u64>,
    /// The offset the next record found must have (`None`: not known yet, in a rebuild).
    next: Option<u64>,
    /// Commit-log offset of this partition's newest record found by this scan.
    last_record: Option<u64>,
}

enum Dispatch {
    Stored,
    /// The record's offset leaves a gap in its partition: the log cannot be trusted past it.
    Gap {
        expected: u64,
    },
    /// Stored after a gap that a skip marker explains: these offsets were lost in it.
    StoredAfterLoss {
        from: u64,
        to: u64,
    },
}

impl Recovering {
    /// Takes the messages of `batch` (at commit-log offset `at`) that the partition does not
    /// have yet. `after_skip`: a skip marker lies between this partition's previous batch and
    /// this one. A batch's offsets follow each other, so only its first message can leave a
    /// gap; its entries are written and its keys indexed together.
    fn dispatch(
        &mut self,
        batch: &format::Batch<'_>,
        at: u64,
        index: &KeyIndex,
        after_skip: bool,
    ) -> Result<Dispatch> {
        let header = &batch.header;
        let (first, end) = (header.first_offset, header.end_offset());
        // Offsets below this the partition has (`start` until a rebuild finds the first).
        let have = self.next.unwrap_or(self.start);
        if end <= have {
            return Ok(Dispatch::Stored);
        }
        let mut outcome = Dispatch::Stored;
        if first > have {
            match self.next {
                None => {
                    if after_skip {
                        outcome = Dispatch::StoredAfterLoss {
                            from: self.start,
                            to: first,
                        };
                    } else {
                        tracing::warn!(
                            "topic id {} partition {}: messages {}..{first} are no longer in the commit log",
                            header.topic_id,
                            header.partition,
                            self.start
                        );
                    }
                    self.start = first;
                }
                Some(next) if !after_skip => return Ok(Dispatch::Gap { expected: next }),
                Some(next) => {
                    self.put_lost(next, first)?;
                    outcome = Dispatch::StoredAfterLoss {
                        from: next,
                        to: first,
                    };
                }
            }
        }
        let new = first.max(have);
        // One pass over the batch's table: each message's entry, and its key for the index.
        let mut keys: Vec<(u64, MessageAt)> = Vec::new();
        let entries = batch
            .messages()
            .skip((new - first) as usize)
            .map(|message| {
                if let Some(key_len) = message.key_len {
                    let key = &batch.payload(&message)[..key_len as usize];
                    let place = MessageAt {
                        batch: at,
                        index: message.index,
                    };
                    keys.push((format::key_hash(header.topic_id, key), place));
                }
                QueueEntry {
                    commit_log_offset: at + u64::from(message.payload_at),
                    size: message.len,
                    batch: at,
                }
            });
        self.put_entries(new, end, entries)?;
        if !keys.is_empty() {
            let mut room = index.reserve(keys.len() as u32, at)?;
            for (hash, place) in keys {
                room.add(hash, place);
            }
            room.hand_over();
        }
        self.next = Some(end);
        self.last_record = Some(at);
        Ok(outcome)
    }

    /// Entries for offsets `from..to`, lost in a skipped span: they point nowhere, so a
    /// read of them fails instead of serving something else.
    fn put_lost(&mut self, from: u64, to: u64) -> Result<()> {
        let lost = QueueEntry {
            commit_log_offset: LOST_MESSAGE,
            size: 0,
            batch: LOST_MESSAGE,
        };
        self.put_entries(from, to, std::iter::repeat(lost))
    }

    /// Writes `entries` as the entries of the offsets `from..to`, a segment at a time, so
    /// that a long lost span pins one queue file at a time, not all of them.
    fn put_entries(
        &mut self,
        from: u64,
        to: u64,
        mut entries: impl Iterator<Item = QueueEntry>,
    ) -> Result<()> {
        let mut reserved = ReservedFiles::starting_with(self.active_file.upgrade());
        let mut offset = from;
        while offset < to {
            let segment_end =
                (self.queue.segment_base(offset) + self.queue.entries_per_file()).min(to);
            self.queue.reserve(&mut reserved, offset, segment_end)?;
            for (offset, entry) in (offset..segment_end).zip(&mut entries) {
                self.queue.put(&reserved, offset, &entry);
            }
            offset = segment_end;
        }
        self.active_file = reserved.last().map_or_else(Weak::new, Arc::downgrade);
        Ok(())
    }
}

/// One pass over the commit log, dispatching every valid record to its partition.
struct Scanner<'a> {
    dir: &'a Path,
    log_dir: &'a Path,
    file_bytes: u64,
    /// Below this point a checkpoint promised the log was written out.
    durable: u64,
    partitions: &'a mut PartitionMap<Recovering>,
    index: &'a KeyIndex,
    meta: &'a Meta,
    /// Commit-log offset just past the newest skip marker passed.
    last_skip: Option<u64>,
    lost: Vec<LostMessages>,
    records: u64,
    /// The last stop was a crash of the machine: past the checkpoint, pages that were never
    /// synced may be lost in any order, so invalid bytes with valid records after them are
    /// what a power loss leaves, not damage.
    machine_restarted: bool,
    /// Log lines saying how far a scan is.
    progress: Option<ScanProgress>,
    /// Where batches whose messages' bytes the log gave back are read from.
    released: ReleasedFiles,
}

/// Where a scan of one file stopped.
enum FileScan {
    /// At the file's end (a marker, or a skip that reaches it).
    Ended,
    /// At bytes that are not a valid record, or (`valid`) at a valid record whose offset
    /// leaves a gap: either way damage, unless nothing valid follows.
    Invalid {
        position: usize,
        reason: String,
        valid: bool,
    },
}

impl Scanner<'_> {
    fn recover(&mut self, plan: &Plan) -> Result<RecoveredLog> {
        match plan {
            Plan::Clean { checkpoint_end } => Ok(RecoveredLog {
                end: *checkpoint_end,
                cut: false,
                durable: *checkpoint_end,
            }),
            Plan::FromCheckpoint { checkpoint } => {
                tracing::info!(
                    "the last stop was unclean: recovering from commit-log offset {}",
                    checkpoint.commit_log_end
                );
                self.index.truncate_to(checkpoint.index)?;
                let (end, cut) = self.scan(checkpoint.commit_log_end)?;
                Ok(RecoveredLog {
                    end,
                    cut,
                    durable: checkpoint.commit_log_end,
                })
            }
            Plan::Rebuild { first, durable } => {
                self.index.remove_all()?;
                for partition in self.partitions.values_mut() {
                    partition.queue.remove_all()?;
                    partition.active_file = Weak::new();
                    partition.next = None;
                }
                self.durable = *durable;
                let (end, cut) = self.scan(*first)?;
                if end < *durable {
                    return Err(self.needs_repair(format!(
                        "the commit log ends at offset {end}, before the checkpoint's end {durable}: records it vouched for are missing"
                    )));
                }
                Ok(RecoveredLog {
                    end,
                    cut,
                    durable: *first,
                })
            }
        }
    }

    /// Scans the log from `from`; returns where the valid log ends and whether a torn tail
    /// was cut there.
    fn scan(&mut self, from: u64) -> Result<(u64, bool)> {
        let started = std::time::Instant::now();
        let file_bytes = self.file_bytes;
        let bases: Vec<u64> = commitlog::list_files(self.log_dir)?
            .into_iter()
            .filter(|&b| b + file_bytes > from)
            .collect();
        let to = bases.last().map_or(from, |&last| last + file_bytes);
        self.progress = Some(ScanProgress::new("recovery", Output::Log, from, to));
        let mut end = from;
        for (i, &base) in bases.iter().enumerate() {
            if base != from - from % file_bytes + i as u64 * file_bytes {
                tracing::warn!(
                    "commit-log file {} is not contiguous with the log; the log ends before it",
                    format::file_name(base)
                );
                break;
            }
            let path = self.log_dir.join(format::file_name(base));
            // Read only: nothing allocated, so released (punched) ranges stay holes.
            let file = MappedFile::open_allocating_from(&path, file_bytes, file_bytes)?;
            if file.allocated() != file_bytes {
                tracing::warn!(
                    "commit-log file {} has the wrong size; the log ends before it",
                    path.display()
                );
                break;
            }
            // SAFETY: the store is being opened under its lock and is not shared yet; nothing
            // writes the log while recovery scans it (`CommitLog::open` cuts the tail after).
            let bytes = unsafe { file.bytes(0, file_bytes as usize) };
            let position = (end.max(base) - base) as usize;
            if let FileScan::Invalid {
                position,
                reason,
                valid,
            } = self.scan_file(base, bytes, position, &mut end)?
            {
                self.at_invalid(&bases[i..], &file, position, &reason, valid, end)?;
                return Ok((end, true));
            }
        }
        tracing::info!(
            "recovery scanned {} bytes ({} messages) in {:?}",
            end.saturating_sub(from),
            self.records,
            started.elapsed()
        );
        Ok((end, false))
    }

    /// Dispatches the records of the file at `base` from `position`, moving `end` past each.
    fn scan_file(
        &mut self,
        base: u64,
        bytes: &[u8],
        mut position: usize,
        end: &mut u64,
    ) -> Result<FileScan> {
        let mut restored = Vec::new();
        loop {
            if position == bytes.len() {
                *end = base + position as u64;
                return Ok(FileScan::Ended);
            }
            let scanned = self
                .released
                .scan(&bytes[position..], &mut restored)
                .map_err(|reason| StoreError::Corrupt {
                    path: self.path_of(base),
                    offset: position as u64,
                    reason,
                })?;
            match scanned {
                Scanned::Record(batch) => {
                    let at = base + position as u64;
                    if let Some(reason) = self.dispatch(&batch, at)? {
                        return Ok(FileScan::Invalid {
                            position,
                            reason,
                            valid: true,
                        });
                    }
                    self.records += u64::from(batch.header.count);
                    position += batch.header.size as usize;
                    *end = base + position as u64;
                    if let Some(progress) = &mut self.progress {
                        progress.at(*end);
                    }
                }
                Scanned::Skip(len) => {
                    position += len;
                    *end = base + position as u64;
                    self.last_skip = Some(*end);
                }
                Scanned::EndOfFile => {
                    *end = base + bytes.len() as u64;
                    return Ok(FileScan::Ended);
                }
                Scanned::Invalid(reason) => {
                    return Ok(FileScan::Invalid {
                        position,
                        reason: reason.to_owned(),
                        valid: false,
                    })
                }
            }
        }
    }

    /// Hands a batch to its partition; returns why it cannot be taken (a gap), if so.
    fn dispatch(&mut self, batch: &format::Batch<'_>, at: u64) -> Result<Option<String>> {
        let header = &batch.header;
        let (topic_id, index) = (header.topic_id, header.partition);
        let Some(partition) = self.partitions.get_mut(&(topic_id, index)) else {
            return match self.meta.disowns(topic_id, index) {
                Some(why) => Err(self.needs_repair(format!(
                    "{} byte {}: message {} of {why}",
                    self.path_of(at).display(),
                    at % self.file_bytes,
                    header.first_offset
                ))),
                // A deleted topic's record: still valid, nobody reads it.
                None => Ok(None),
            };
        };
        let after_skip = self
            .last_skip
            .is_some_and(|skip| partition.last_record.is_none_or(|last| skip > last));
        match partition.dispatch(batch, at, self.index, after_skip)? {
            Dispatch::Stored => Ok(None),
            Dispatch::Gap { expected } => Ok(Some(format!(
                "message {} of topic id {topic_id} partition {index} where {expected} was expected",
                header.first_offset
            ))),
            Dispatch::StoredAfterLoss { from, to } => {
                tracing::warn!(
                    "topic id {topic_id} partition {index}: messages {from}..{to} were lost in a damaged span of the commit log (skipped by commitfs check --repair)"
                );
                self.lost.push(LostMessages {
                    topic_id,
                    partition: index,
                    from,
                    to,
                });
                Ok(None)
            }
        }
    }

    /// At damage in the file `files[0]` at `position`: a torn tail if nothing valid follows
    /// (the files after this one then hold nothing and are removed; the caller cuts the log
    /// at `end`), else an error naming where the damage is and where valid records resume.
    fn at_invalid(
        &mut self,
        files: &[u64],
        file: &MappedFile,
        position: usize,
        reason: &str,
        valid: bool,
        end: u64,
    ) -> Result<()> {
        let path = self.log_dir.join(format::file_name(files[0]));
        let next_valid = match valid {
            true => Some((path.clone(), position)),
            false => self.next_valid_record(files, file, position)?,
        };
        let power_loss = self.machine_restarted && end >= self.durable;
        if let Some((next_path, next_byte)) = next_valid.clone().filter(|_| !power_loss) {
            return Err(self.needs_repair(format!(
                "commit log {} byte {position}: {reason}, and a valid record follows at {} byte {next_byte}: the log is damaged before its end, not torn by a crash",
                path.display(),
                next_path.display()
            )));
        }
        if end < self.durable {
            return Err(self.needs_repair(format!(
                "commit log {} byte {position}: {reason}, below the checkpoint's end {}: records it vouched for are damaged",
                path.display(),
                self.durable
            )));
        }
        if reason == "zeroes (never written)" {
            // The usual end after an unclean stop: the log simply ends where writing stopped.
            tracing::info!(
                "commit log ends at {} byte {position}; {} records since the checkpoint recovered",
                path.display(),
                self.records
            );
        } else {
            tracing::warn!(
                "commit log {} byte {position}: {reason}: a write torn by the unclean stop; the log now ends there ({} records since the checkpoint recovered before it)",
                path.display(),
                self.records
            );
        }
        for &base in &files[1..] {
            let later = self.log_dir.join(format::file_name(base));
            if next_valid.is_some() {
                // Records written after the cut, never synced before the power went: kept
                // aside (the log no longer lists the file), never deleted.
                let aside = later.with_extension("unsynced");
                tracing::warn!(
                    "the machine went down since the last mount: keeping {} aside as {}",
                    later.display(),
                    aside.display()
                );
                std::fs::rename(&later, &aside)
                    .map_err(|e| StoreError::io(format!("renaming {}", later.display()), e))?;
                continue;
            }
            tracing::info!(
                "removing commit-log file {} past the log's end",
                later.display()
            );
            super::mapped::remove_file(&later)?;
        }
        Ok(())
    }

    /// The first valid record after `position` of `file` (the file `files[0]`) or in a
    /// later file, with the file's path.
    fn next_valid_record(
        &self,
        files: &[u64],
        file: &MappedFile,
        position: usize,
    ) -> Result<Option<(PathBuf, usize)>> {
        // SAFETY: the store is being opened under its lock and is not shared yet; nothing
        // writes the log while recovery scans it (`CommitLog::open` cuts the tail after).
        if let Some(at) = unsafe { commitlog::next_valid_batch(file, position + 1) } {
            return Ok(Some((self.log_dir.join(format::file_name(files[0])), at)));
        }
        for &base in &files[1..] {
            let path = self.log_dir.join(format::file_name(base));
            // SAFETY: as above: under the store's lock, before anything writes the log.
            if let Some(at) = unsafe { commitlog::first_valid_record(&path, self.file_bytes)? } {
                return Ok(Some((path, at)));
            }
        }
        Ok(None)
    }

    fn path_of(&self, offset: u64) -> PathBuf {
        self.log_dir
            .join(format::file_name(offset - offset % self.file_bytes))
    }

    fn needs_repair(&self, what: String) -> StoreError {
        StoreError::NeedsRepair {
            dir: self.dir.to_owned(),
            what,
        }
    }
}

/// A message must fit in one commit-log file in a batch of its own, with the end-of-file
/// marker. A store created with small files keeps them, so a larger configured maximum is
/// lowered.
fn fit_max_message(config: &mut StoreConfig) {
    // A batch's size is a u32, whatever the files' size.
    let room = (config.commit_log_file_bytes.min(u64::from(u32::MAX)) as usize)
        .saturating_sub(format::batch_size(1, true, 0) + format::BLANK_BYTES);
    if config.max_message_bytes > room {
        tracing::warn!(
            "max_message_bytes {} does not fit in this store's {}-byte commit-log files; using {room}",
            config.max_message_bytes,
            config.commit_log_file_bytes
        );
        config.max_message_bytes = room;
    }
}

/// Every mapped file keeps its descriptor (queue and index files grow with `fallocate`), so
/// a store with thousands of partitions needs more than the usual soft limit of 1024: take
/// the hard limit.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // `None` is unlimited (RLIM_INFINITY, the largest value).
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            tracing::debug!("open-file limit raised from {soft} to {hard}");
        }
    }
}

/// How long an open waits for the store's lock: a process that is closing the store (an
/// unmount's daemon finishing its checkpoint), or a child forked by the holder that has not
/// yet reached `exec` (it shares the lock's file description until then), lets go soon.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn lock_store(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = File::create(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(file)
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
    }
}

pub fn queue_dir(dir: &Path, topic_id: u32) -> std::path::PathBuf {
    dir.join(QUEUE_DIR).join(topic_id.to_string())
}
