//! Opening the store: metadata, checkpoint, and — after an unclean stop or when derived files
//! are missing — a scan of the commit log that verifies every record's CRC, cuts a torn or
//! garbage tail and rebuilds the consume-queue and index entries.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::checkpoint::Checkpoint;
use super::commitlog::{self, CommitLog};
use super::error::{Result, StoreError};
use super::format::{self, QueueEntry, Scanned, RECORD_HEADER_BYTES};
use super::index::KeyIndex;
use super::mapped::MappedFile;
use super::meta::{self, Layout, Meta};
use super::partition::PartitionOffsets;
use super::queue::{ConsumeQueue, QueueFile};
use super::{maintenance, Store, StoreConfig};

const LOG_DIR: &str = "commitlog";
const QUEUE_DIR: &str = "queues";
const INDEX_DIR: &str = "index";

pub fn open(dir: &Path, mut config: StoreConfig) -> Result<Arc<Store>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    let lock = lock_store(dir)?;
    raise_open_file_limit();
    let layout = settle_layout(dir, &mut config)?;
    fit_max_message(&mut config);
    let meta = Meta::load(dir)?.expect("metadata written by settle_layout");
    let unclean = meta::abort_marker_exists(dir);
    meta::create_abort_marker(dir)?;
    let checkpoint = Checkpoint::load(dir)?;
    remove_orphan_queues(dir, &meta)?;

    let (index, index_damaged) = match KeyIndex::open(
        &dir.join(INDEX_DIR),
        layout.index_slots,
        layout.index_entries,
    ) {
        Ok(index) => (index, false),
        Err(error @ StoreError::Corrupt { .. }) => {
            tracing::warn!("{error}; rebuilding the key index from the commit log");
            remove_dir(&dir.join(INDEX_DIR))?;
            (
                KeyIndex::open(
                    &dir.join(INDEX_DIR),
                    layout.index_slots,
                    layout.index_entries,
                )?,
                true,
            )
        }
        Err(error) => return Err(error),
    };

    let marks: HashMap<(u32, u32), (u64, u64)> = checkpoint
        .iter()
        .flat_map(|c| &c.partitions)
        .map(|m| ((m.topic_id, m.partition), (m.start, m.end)))
        .collect();
    let mut partitions = PartitionMap::default();
    for topic in &meta.topics {
        for index in 0..topic.partitions {
            let queue = ConsumeQueue::open(
                &dir.join(QUEUE_DIR)
                    .join(topic.id.to_string())
                    .join(index.to_string()),
                u64::from(layout.segment_messages),
            )?;
            let (mut start, end) = marks.get(&(topic.id, index)).copied().unwrap_or((0, 0));
            // Retention may have removed files after the checkpoint was written.
            if let Some(&first) = queue.file_bases().first() {
                start = start.max(first).min(end);
            }
            partitions.insert(
                (topic.id, index),
                Recovering {
                    queue,
                    active_file: None,
                    start,
                    end,
                    next: Some(end),
                },
            );
        }
    }

    let damaged: Vec<String> = partitions
        .iter()
        .filter(|(_, p)| !p.queue.covers(p.start, p.end))
        .map(|((topic, partition), _)| format!("topic id {topic} partition {partition}"))
        .collect();
    let log_dir = dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| StoreError::io(format!("creating {}", log_dir.display()), e))?;
    let first_log_file = commitlog::list_files(&log_dir)?.first().copied();
    let index_missing = checkpoint
        .as_ref()
        .and_then(|c| c.index)
        .is_some_and(|mark| !index.holds(mark));
    if index_missing {
        tracing::warn!("key-index entries the checkpoint counts are missing; rebuilding the index");
    }
    // Retention may have removed the file holding the checkpoint's log end before a newer
    // checkpoint was written (a crash in between, or a full disk refusing it): scanning from
    // there would find nothing and drop every later file as "past the end".
    let log_passed_checkpoint = checkpoint
        .as_ref()
        .zip(first_log_file)
        .is_some_and(|(c, first)| c.commit_log_end < first);
    if log_passed_checkpoint {
        tracing::warn!("the checkpoint's commit-log file is gone; rebuilding from the whole log");
    }
    let rebuild = checkpoint.is_none()
        || index_damaged
        || index_missing
        || log_passed_checkpoint
        || !damaged.is_empty();
    // Below `durable_log`, the log is known to be on disk; what recovery scanned or rebuilt
    // above it is written out before the next checkpoint vouches for it.
    let (log_end, cut, durable_log) = if rebuild {
        if !damaged.is_empty() {
            tracing::warn!(
                "consume-queue files missing for {}; rebuilding them",
                damaged.join(", ")
            );
        }
        let first = first_log_file.unwrap_or(0);
        tracing::info!("rebuilding consume queues and the key index from the whole commit log");
        index.remove_all()?;
        for partition in partitions.values_mut() {
            partition.queue.remove_all()?;
            partition.active_file = None;
            partition.next = None;
        }
        let durable = checkpoint.as_ref().map_or(0, |c| c.commit_log_end);
        let (end, cut) = scan(
            &log_dir,
            layout.commit_log_file_bytes,
            first,
            durable,
            &mut partitions,
            &index,
        )?;
        (end, cut, first)
    } else if unclean {
        let checkpoint = checkpoint
            .as_ref()
            .expect("not rebuilding without a checkpoint");
        tracing::info!(
            "the last stop was unclean: recovering from commit-log offset {}",
            checkpoint.commit_log_end
        );
        index.truncate_to(checkpoint.index)?;
        let (end, cut) = scan(
            &log_dir,
            layout.commit_log_file_bytes,
            checkpoint.commit_log_end,
            0,
            &mut partitions,
            &index,
        )?;
        (end, cut, checkpoint.commit_log_end)
    } else {
        let end = checkpoint
            .as_ref()
            .expect("clean stop has a checkpoint")
            .commit_log_end;
        (end, false, end)
    };

    let log = Arc::new(CommitLog::open(
        &log_dir,
        layout.commit_log_file_bytes,
        config.warm_mapped_files,
        log_end,
        durable_log,
        cut,
    )?);
    let mut recovered = HashMap::new();
    for (key, partition) in partitions {
        let end = partition.next.unwrap_or(partition.end.max(partition.start));
        let mut start = partition.start.min(end);
        if unclean && !rebuild {
            // The disk ceiling may have cut into this partition after the checkpoint (a crash
            // before the next one): start at the first message still in the log.
            start = partition
                .queue
                .first_at_or_after(start, end, log.min_offset());
        }
        // Queue entries past the checkpoint's end (all of them, in a rebuild) are not on disk yet.
        let durable = if rebuild {
            start
        } else {
            partition.end.clamp(start, end)
        };
        partition.queue.remove_from(end)?;
        recovered.insert(
            key,
            PartitionOffsets {
                start,
                end,
                durable,
            },
        );
    }

    let store = Arc::new(Store {
        dir: dir.to_owned(),
        config,
        layout,
        log,
        index,
        topics: RwLock::new(BTreeMap::new()),
        meta: Mutex::new(meta.clone()),
        quiesce: RwLock::new(()),
        closed: AtomicBool::new(false),
        fence: Default::default(),
        maintenance: maintenance::Handle::default(),
        checkpoint_lock: Mutex::new(()),
        lock: Mutex::new(Some(lock)),
    });
    for record in &meta.topics {
        let topic = store.build_topic(record, &recovered)?;
        store
            .topics
            .write()
            .insert(record.name.clone(), Arc::new(topic));
    }
    // The recovered state is the new starting point for the next recovery. On a full disk
    // the previous checkpoint still describes a valid starting point, so serve reads anyway.
    match store.checkpoint() {
        Err(error @ StoreError::DiskFull(_)) => {
            tracing::warn!("{error}; keeping the previous checkpoint")
        }
        other => other?,
    }
    store.maintenance.start(Arc::downgrade(&store));
    tracing::info!(
        "store at {} open: {} topics, commit log ends at {log_end}",
        dir.display(),
        meta.topics.len()
    );
    Ok(store)
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
    active_file: Option<Arc<QueueFile>>,
    start: u64,
    /// End offset at the checkpoint.
    end: u64,
    /// The offset the next record found must have (`None`: not known yet, in a rebuild).
    next: Option<u64>,
}

enum Dispatch {
    Stored,
    /// The record's offset leaves a gap in its partition: the log cannot be trusted past it.
    Gap {
        expected: u64,
    },
}

impl Recovering {
    fn dispatch(
        &mut self,
        header: &format::RecordHeader,
        position: u64,
        key: Option<&[u8]>,
        index: &KeyIndex,
    ) -> Result<Dispatch> {
        let offset = header.offset;
        match self.next {
            None if offset < self.start => return Ok(Dispatch::Stored),
            None => {
                if offset > self.start {
                    tracing::warn!(
                        "topic id {} partition {}: messages {}..{offset} are no longer in the commit log",
                        header.topic_id,
                        header.partition,
                        self.start
                    );
                    self.start = offset;
                }
            }
            Some(next) if offset < next => return Ok(Dispatch::Stored),
            Some(next) if offset > next => return Ok(Dispatch::Gap { expected: next }),
            Some(_) => {}
        }
        let key_hash = key.map_or(0, |k| format::key_hash(header.topic_id, k));
        self.queue
            .reserve(&mut self.active_file, offset, offset + 1)?;
        self.queue.put(
            &mut self.active_file,
            offset,
            &QueueEntry {
                commit_log_offset: position,
                size: header.size,
                key_hash,
            },
        );
        if key_hash != 0 {
            index.reserve(1, position)?.insert(key_hash, position);
        }
        self.next = Some(offset + 1);
        Ok(Dispatch::Stored)
    }
}

/// Scans the log from `from`, dispatching every valid record, and returns where the valid
/// log ends and whether it was cut there. An invalid record below `durable` (a point a
/// checkpoint promised was written out) is damage recovery cannot repair.
fn scan(
    log_dir: &Path,
    file_bytes: u64,
    from: u64,
    durable: u64,
    partitions: &mut PartitionMap<Recovering>,
    index: &KeyIndex,
) -> Result<(u64, bool)> {
    let started = std::time::Instant::now();
    let bases: Vec<u64> = commitlog::list_files(log_dir)?
        .into_iter()
        .filter(|&b| b + file_bytes > from)
        .collect();
    let mut end = from;
    let mut records = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        if base != from - from % file_bytes + i as u64 * file_bytes {
            tracing::warn!(
                "commit-log file {} is not contiguous with the log; ignoring it",
                format::file_name(base)
            );
            break;
        }
        let path = log_dir.join(format::file_name(base));
        let file = MappedFile::open(&path, file_bytes)?;
        if file.allocated() != file_bytes {
            // Created but never filled before the stop.
            tracing::warn!(
                "commit-log file {} has the wrong size; the log ends before it",
                path.display()
            );
            break;
        }
        let bytes = file.bytes(0, file_bytes as usize);
        let mut position = (end.max(base) - base) as usize;
        loop {
            let invalid = match format::scan_record(&bytes[position..]) {
                Scanned::Record(header) => {
                    let at = base + position as u64;
                    let payload =
                        &bytes[position + RECORD_HEADER_BYTES..position + header.size as usize];
                    let key = header.key_len.map(|k| &payload[..k as usize]);
                    let outcome = match partitions.get_mut(&(header.topic_id, header.partition)) {
                        Some(partition) => partition.dispatch(&header, at, key, index)?,
                        // A deleted topic's record: still valid, nobody reads it.
                        None => Dispatch::Stored,
                    };
                    match outcome {
                        Dispatch::Stored => {
                            position += header.size as usize;
                            end = base + position as u64;
                            records += 1;
                            continue;
                        }
                        Dispatch::Gap { expected } => format!(
                            "message {} of topic id {} partition {} where {expected} was expected",
                            header.offset, header.topic_id, header.partition
                        ),
                    }
                }
                Scanned::EndOfFile => {
                    end = base + file_bytes;
                    break;
                }
                Scanned::Invalid(reason) => reason.to_owned(),
            };
            if end < durable {
                return Err(StoreError::Corrupt {
                    path,
                    offset: position as u64,
                    reason: invalid,
                });
            }
            tracing::warn!(
                "commit log {} byte {position}: {invalid}; cutting the log there after {records} records recovered",
                path.display()
            );
            return Ok((end, true));
        }
    }
    let took = started.elapsed();
    tracing::info!(
        "recovery scanned {} bytes ({records} records) in {took:?}",
        end.saturating_sub(from)
    );
    Ok((end, false))
}

/// Settles the layout: the persisted one wins over the configured one.
fn settle_layout(dir: &Path, config: &mut StoreConfig) -> Result<Layout> {
    let wanted = Layout {
        commit_log_file_bytes: config.commit_log_file_bytes,
        segment_messages: config.segment_messages,
        index_slots: config.index_slots,
        index_entries: config.index_entries,
    };
    let layout = match Meta::load(dir)? {
        Some(meta) => {
            // Every size is a divisor or a bound somewhere: a damaged file must not panic.
            validate_layout(&meta.layout).map_err(|error| StoreError::Corrupt {
                path: dir.join(meta::META_FILE),
                offset: 0,
                reason: error.to_string(),
            })?;
            if meta.layout != wanted {
                tracing::warn!(
                    "the store at {} was created with {:?}; that layout stays (configured: {wanted:?})",
                    dir.display(),
                    meta.layout
                );
            }
            meta.layout
        }
        None => {
            validate_layout(&wanted)?;
            Meta::new(wanted).save(dir)?;
            wanted
        }
    };
    config.commit_log_file_bytes = layout.commit_log_file_bytes;
    config.segment_messages = layout.segment_messages;
    config.index_slots = layout.index_slots;
    config.index_entries = layout.index_entries;
    Ok(layout)
}

fn validate_layout(layout: &Layout) -> Result<()> {
    let invalid = |what: String| Err(StoreError::InvalidSetting(what));
    if layout.commit_log_file_bytes < 4096 || layout.commit_log_file_bytes > u64::from(u32::MAX) {
        return invalid(format!(
            "commit_log_file_bytes must be 4096 to {}",
            u32::MAX
        ));
    }
    if layout.segment_messages == 0 {
        return invalid("segment_messages must be at least 1".into());
    }
    if layout.index_slots == 0 || layout.index_entries < 2 {
        return invalid("index_slots must be at least 1 and index_entries at least 2".into());
    }
    Ok(())
}

/// A message must fit in one commit-log file with its header and the end-of-file marker. A
/// store created with small files keeps them, so a larger configured maximum is lowered.
fn fit_max_message(config: &mut StoreConfig) {
    let room = (config.commit_log_file_bytes as usize)
        .saturating_sub(RECORD_HEADER_BYTES + format::BLANK_BYTES);
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
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!("open-file limit raised from {soft} to {}", limit.rlim_max);
            }
        }
    }
}

fn lock_store(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = File::create(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::Locked(dir.to_owned()));
    }
    Ok(file)
}

/// Consume queues of topics no longer in the metadata (a crash during a topic's deletion).
fn remove_orphan_queues(dir: &Path, meta: &Meta) -> Result<()> {
    let queues = dir.join(QUEUE_DIR);
    let Ok(entries) = std::fs::read_dir(&queues) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok());
        if !id.is_some_and(|id| meta.topics.iter().any(|t| t.id == id)) {
            tracing::info!(
                "removing the queues of a deleted topic: {}",
                entry.path().display()
            );
            remove_dir(&entry.path())?;
        }
    }
    Ok(())
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
