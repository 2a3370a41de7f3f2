//! Persistent metadata. `store.toml` holds the layout and `next_topic_id`; each topic has its
//! own small file, `topics/<id>.toml`. A metadata change replaces one small file atomically
//! (temporary file, fsync, rename, fsync of the directory), so what it costs does not grow
//! with the number of topics. Topic ids are taken from `store.toml` [`ID_BLOCK`] at a time, so
//! creating topics rewrites it once per block; a clean close gives back the unused rest.
//! `store.toml` of format 2, which listed every topic itself, is migrated at open.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::reserve::Reserve;
use super::{Framing, TopicSettings, MAX_PARTITIONS};

pub const META_FILE: &str = "store.toml";
/// One file per topic, named `<id>.toml`.
pub const TOPICS_DIR: &str = "topics";
/// 3: topics in `topics/<id>.toml`. 2 (every topic in `store.toml`; the same data files) is
/// migrated at open; 1 (one header and CRC per message) is refused.
const FORMAT_VERSION: u32 = 3;
const FORMAT_WITH_TOPICS_IN_STORE_TOML: u32 = 2;
/// Topic ids `store.toml` gives out at a time.
pub const ID_BLOCK: u32 = 64;

/// Settings that decide the layout of files on disk, fixed when the store is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub commit_log_file_bytes: u64,
    pub segment_messages: u32,
    pub index_slots: u32,
    pub index_entries: u32,
}

impl Layout {
    /// Every size is a divisor or a bound somewhere: a damaged file must not panic.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.commit_log_file_bytes < 4096 || self.commit_log_file_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "commit_log_file_bytes must be 4096 to {}",
                u32::MAX
            ));
        }
        if self.segment_messages == 0 {
            return Err("segment_messages must be at least 1".into());
        }
        if self.index_slots == 0 || self.index_entries < 2 {
            return Err("index_slots must be at least 1 and index_entries at least 2".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRecord {
    pub name: String,
    pub id: u32,
    pub created_ms: i64,
    pub partitions: u32,
    pub framing: Framing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_separator: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub mode: u32,
}

impl TopicRecord {
    pub fn settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: self.partitions,
            framing: self.framing,
            key_separator: self.key_separator.clone(),
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            owner_uid: self.owner_uid,
            owner_gid: self.owner_gid,
            mode: self.mode,
        }
    }

    pub fn new(name: &str, id: u32, created_ms: i64, settings: &TopicSettings) -> TopicRecord {
        TopicRecord {
            name: name.to_owned(),
            id,
            created_ms,
            partitions: settings.partitions,
            framing: settings.framing,
            key_separator: settings.key_separator.clone(),
            retention_ms: settings.retention_ms,
            retention_bytes: settings.retention_bytes,
            owner_uid: settings.owner_uid,
            owner_gid: settings.owner_gid,
            mode: settings.mode,
        }
    }
}

/// `store.toml` as it is on disk; only format 2 has `topics`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreToml {
    format_version: u32,
    layout: Layout,
    next_topic_id: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    topics: Vec<TopicRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub layout: Layout,
    /// Ids below it may have been given out; none is ever given out twice.
    pub next_topic_id: u32,
    pub topics: Vec<TopicRecord>,
    /// The first id of the block below `next_topic_id` that this process has not given out
    /// (in memory only: after a crash the rest of the block is skipped).
    unused_id: u32,
    /// Read from a format-2 `store.toml`, whose topics [`Meta::migrate`] moves to their files.
    from_format_2: bool,
}

/// What is wrong with metadata, and in which file (relative to the data directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaProblem {
    pub file: PathBuf,
    pub text: String,
}

impl MetaProblem {
    /// The problem with the file's full path in front.
    pub fn describe(&self, dir: &Path) -> String {
        format!("{}: {}", dir.join(&self.file).display(), self.text)
    }
}

impl Meta {
    pub fn new(layout: Layout) -> Meta {
        Meta {
            layout,
            next_topic_id: 1,
            topics: Vec::new(),
            unused_id: 1,
            from_format_2: false,
        }
    }

    /// `store.toml` and the topic files; `None` without `store.toml`. A topic file that cannot
    /// be read as one is an error naming it, its byte and line.
    pub fn load(dir: &Path) -> Result<Option<Meta>> {
        let Some(file) = read_store_toml(dir)? else {
            return Ok(None);
        };
        let from_format_2 = file.format_version == FORMAT_WITH_TOPICS_IN_STORE_TOML;
        let topics = if from_format_2 {
            file.topics
        } else {
            let found = read_topic_files(dir)?;
            if let Some((_, error)) = found.damaged.into_iter().next() {
                return Err(StoreError::NeedsRepair {
                    dir: dir.to_owned(),
                    what: error.to_string(),
                });
            }
            found.records
        };
        Ok(Some(Meta {
            topics,
            from_format_2,
            ..Meta::with_next_id(file.layout, file.next_topic_id)
        }))
    }

    /// For `commitfs check`: `store.toml` as [`Meta::load`] reads it but with only the topic
    /// files that are valid, and what `topics/` holds (nothing for a format-2 store, which
    /// does not use it). An error only when a file cannot be read at all.
    pub fn load_leniently(dir: &Path) -> Result<(Result<Option<Meta>>, TopicFiles)> {
        let file = match read_store_toml(dir) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok((Ok(None), read_topic_files(dir)?)),
            Err(error @ StoreError::Io { .. }) => return Err(error),
            Err(error) => return Ok((Err(error), read_topic_files(dir)?)),
        };
        if file.format_version == FORMAT_WITH_TOPICS_IN_STORE_TOML {
            return Ok((Meta::load(dir), TopicFiles::default()));
        }
        let found = read_topic_files(dir)?;
        let meta = Meta {
            topics: found.records.clone(),
            ..Meta::with_next_id(file.layout, file.next_topic_id)
        };
        Ok((Ok(Some(meta)), found))
    }

    fn with_next_id(layout: Layout, next_topic_id: u32) -> Meta {
        Meta {
            next_topic_id,
            unused_id: next_topic_id,
            ..Meta::new(layout)
        }
    }

    /// Where topic `id` is kept, relative to the data directory.
    fn topic_file(&self, id: u32) -> PathBuf {
        match self.from_format_2 {
            true => PathBuf::from(META_FILE),
            false => Path::new(TOPICS_DIR).join(topic_file_name(id)),
        }
    }

    /// What is wrong with this metadata on its own: a layout that cannot be, a topic whose
    /// name, partition count or id is invalid, two topics sharing a name or an id, an id at
    /// or above `next_topic_id` (the next topic would reuse it).
    pub fn validate(&self) -> std::result::Result<(), MetaProblem> {
        self.layout.validate().map_err(|text| MetaProblem {
            file: META_FILE.into(),
            text,
        })?;
        let mut names = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for topic in &self.topics {
            let problem = |text: String| MetaProblem {
                file: self.topic_file(topic.id),
                text,
            };
            let name = &topic.name;
            super::validate_topic_name(name).map_err(|e| problem(e.to_string()))?;
            if !(1..=MAX_PARTITIONS).contains(&topic.partitions) {
                return Err(problem(format!(
                    "topic {name:?} has partitions = {}; it must be 1 to {MAX_PARTITIONS}",
                    topic.partitions
                )));
            }
            if topic.key_separator.as_ref().is_some_and(|s| s.is_empty()) {
                return Err(problem(format!(
                    "topic {name:?} has an empty key_separator"
                )));
            }
            if topic.id == 0 || topic.id >= self.next_topic_id {
                return Err(problem(format!(
                    "topic {name:?} has id {}, not 1 to next_topic_id - 1 ({}, in {META_FILE})",
                    topic.id,
                    self.next_topic_id.saturating_sub(1)
                )));
            }
            if let Some(other) = names.insert(name, topic.id) {
                return Err(problem(format!(
                    "two topics are named {name:?} (the other is {})",
                    self.topic_file(other).display()
                )));
            }
            if !ids.insert(topic.id) {
                return Err(problem(format!("two topics have id {}", topic.id)));
            }
        }
        Ok(())
    }

    pub fn topic_by_id(&self, id: u32) -> Option<&TopicRecord> {
        self.topics.iter().find(|t| t.id == id)
    }

    /// Whether a partition holding data is one this metadata cannot have: a topic id at or
    /// above `next_topic_id`, or a partition past its topic's count. (A lower id that is not
    /// listed is a deleted topic's.) Returns why.
    pub fn disowns(&self, topic_id: u32, partition: u32) -> Option<String> {
        if topic_id >= self.next_topic_id {
            return Some(format!(
                "topic id {topic_id}, which store.toml has not given out (next_topic_id = {})",
                self.next_topic_id
            ));
        }
        let topic = self.topic_by_id(topic_id)?;
        (partition >= topic.partitions).then(|| {
            format!(
                "partition {partition} of topic {:?} (id {topic_id}), which {} says has {} partitions",
                topic.name,
                self.topic_file(topic_id).display(),
                topic.partitions
            )
        })
    }

    /// An id for a new topic, never given out before. When this process has given out its
    /// block, `store.toml` is rewritten with the next block taken.
    pub fn take_topic_id(&mut self, dir: &Path) -> Result<u32> {
        if self.unused_id >= self.next_topic_id {
            let raised = self.unused_id.saturating_add(ID_BLOCK);
            if raised == self.unused_id {
                return Err(StoreError::InvalidSetting(
                    "every topic id has been given out".into(),
                ));
            }
            self.write_store_toml(dir, raised)?;
            self.next_topic_id = raised;
        }
        let id = self.unused_id;
        self.unused_id += 1;
        Ok(id)
    }

    /// Lowers `next_topic_id` to the first id this process has not given out, so that a clean
    /// stop wastes none of the block.
    pub fn give_back_unused_ids(&mut self, dir: &Path) -> Result<()> {
        if self.unused_id < self.next_topic_id {
            self.write_store_toml(dir, self.unused_id)?;
            self.next_topic_id = self.unused_id;
        }
        Ok(())
    }

    /// Moves the topics of a format-2 `store.toml` into their files (a no-op for format 3).
    /// `store.toml` is replaced last: a crash before leaves format 2, whose `topics/` is only
    /// scratch that the next try rewrites; after, format 3. Nothing is lost either way.
    pub fn migrate(&mut self, dir: &Path) -> Result<()> {
        if !self.from_format_2 {
            return Ok(());
        }
        self.save(dir)?;
        self.from_format_2 = false;
        tracing::info!(
            "moved the {} topics listed in {} into {} (metadata format 3)",
            self.topics.len(),
            dir.join(META_FILE).display(),
            dir.join(TOPICS_DIR).display()
        );
        Ok(())
    }

    /// Writes this metadata whole: every topic file that differs from it, the removal of
    /// those of topics it does not list, then `store.toml`. Topic files are replaced one by
    /// one atomically, except while `store.toml` still lists the topics (format 2): then they
    /// are written directly and synced together, and replacing `store.toml` commits them.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let migrating = matches!(read_store_toml(dir), Ok(Some(file)) if file.format_version == FORMAT_WITH_TOPICS_IN_STORE_TOML);
        let topics_dir = ensure_topics_dir(dir)?;
        let on_disk = read_topic_files(dir)?;
        let current: HashMap<u32, &TopicRecord> =
            on_disk.records.iter().map(|t| (t.id, t)).collect();
        for record in &self.topics {
            if current.get(&record.id) == Some(&record) {
                continue;
            }
            match migrating {
                true => write_scratch_topic_file(&topics_dir, record)?,
                false => save_topic(dir, record, None)?,
            }
        }
        let listed: std::collections::HashSet<u32> = self.topics.iter().map(|t| t.id).collect();
        let stale = (on_disk.records.iter().map(|t| t.id))
            .chain(on_disk.damaged.iter().map(|(id, _)| *id))
            .filter(|id| !listed.contains(id))
            .map(|id| topics_dir.join(topic_file_name(id)));
        for path in stale.chain(on_disk.leftovers) {
            super::mapped::remove_file(&path)?;
        }
        match migrating {
            true => sync_file_system(&topics_dir)?,
            false => sync_dir(&topics_dir)?,
        }
        self.write_store_toml(dir, self.next_topic_id)
    }

    fn write_store_toml(&self, dir: &Path, next_topic_id: u32) -> Result<()> {
        let file = StoreToml {
            format_version: FORMAT_VERSION,
            layout: self.layout,
            next_topic_id,
            topics: Vec::new(),
        };
        let text = toml::to_string(&file)
            .map_err(|e| StoreError::InvalidSetting(format!("cannot encode the metadata: {e}")))?;
        write_atomically(dir, META_FILE, text.as_bytes())
    }
}

pub fn topic_file_name(id: u32) -> String {
    format!("{id}.toml")
}

fn encode_topic(record: &TopicRecord) -> Result<String> {
    toml::to_string(record).map_err(|e| {
        StoreError::InvalidSetting(format!("cannot encode topic {:?}: {e}", record.name))
    })
}

/// Replaces topic `record.id`'s file atomically; on a full disk with `reserve`, written into
/// one of its files instead (deleting and changing topics is how space is freed).
pub fn save_topic(dir: &Path, record: &TopicRecord, reserve: Option<&Reserve>) -> Result<()> {
    let topics_dir = ensure_topics_dir(dir)?;
    let text = encode_topic(record)?;
    let name = topic_file_name(record.id);
    match reserve {
        Some(reserve) => reserve.write_atomically(&topics_dir, &name, text.as_bytes()),
        None => write_atomically(&topics_dir, &name, text.as_bytes()),
    }
}

/// Removes topic `id`'s file: needs no space, so it works on a full disk.
pub fn remove_topic_file(dir: &Path, id: u32) -> Result<()> {
    let topics_dir = dir.join(TOPICS_DIR);
    super::mapped::remove_file(&topics_dir.join(topic_file_name(id)))?;
    sync_dir(&topics_dir)
}

fn ensure_topics_dir(dir: &Path) -> Result<PathBuf> {
    let topics_dir = dir.join(TOPICS_DIR);
    if !topics_dir.is_dir() {
        std::fs::create_dir_all(&topics_dir)
            .map_err(|e| StoreError::io(format!("creating {}", topics_dir.display()), e))?;
        sync_dir(dir)?;
    }
    Ok(topics_dir)
}

/// A topic file written in place, for a migration (see [`Meta::save`]).
fn write_scratch_topic_file(topics_dir: &Path, record: &TopicRecord) -> Result<()> {
    let path = topics_dir.join(topic_file_name(record.id));
    super::mapped::inject!("meta::migrate", &path, "writing");
    std::fs::write(&path, encode_topic(record)?)
        .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// What `topics/` holds.
#[derive(Debug, Default)]
pub struct TopicFiles {
    /// The valid topic files' records, by id.
    pub records: Vec<TopicRecord>,
    /// Files named like topic files that do not hold one: the id their name gives, and why
    /// (with the byte and line).
    pub damaged: Vec<(u32, StoreError)>,
    /// Temporary files of replacements a crash interrupted: the next write of their topic
    /// replaces them, [`Meta::save`] removes them.
    pub leftovers: Vec<PathBuf>,
}

pub fn read_topic_files(dir: &Path) -> Result<TopicFiles> {
    let topics_dir = dir.join(TOPICS_DIR);
    let listing = |e| StoreError::io(format!("listing {}", topics_dir.display()), e);
    let mut found = TopicFiles::default();
    let entries = match std::fs::read_dir(&topics_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(listing(e)),
    };
    for entry in entries {
        let entry = entry.map_err(listing)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            found.leftovers.push(entry.path());
            continue;
        }
        let Some(id) = name.strip_suffix(".toml").and_then(|id| id.parse().ok()) else {
            continue;
        };
        match read_topic_file(&entry.path(), id) {
            Ok(record) => found.records.push(record),
            Err(error @ StoreError::Corrupt { .. }) => found.damaged.push((id, error)),
            Err(error) => return Err(error),
        }
    }
    found.records.sort_by_key(|t| t.id);
    found.damaged.sort_by_key(|(id, _)| *id);
    Ok(found)
}

fn read_topic_file(path: &Path, id: u32) -> Result<TopicRecord> {
    let text = read_text(path)?;
    let record: TopicRecord = parse_toml(path, &text)?;
    if record.id != id {
        let at = text.find("id =").unwrap_or(0);
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            offset: at as u64,
            reason: format!(
                "line {}: holds topic id {}, but its name says {id}",
                line_of(&text, at),
                record.id
            ),
        });
    }
    Ok(record)
}

fn read_store_toml(dir: &Path) -> Result<Option<StoreToml>> {
    let path = dir.join(META_FILE);
    let text = match read_text(&path) {
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        read => read?,
    };
    let file: StoreToml = parse_toml(&path, &text)?;
    match file.format_version {
        FORMAT_VERSION if !file.topics.is_empty() => Err(StoreError::Corrupt {
            path,
            offset: text.find("[[topics]]").unwrap_or(0) as u64,
            reason: format!("format {FORMAT_VERSION} keeps topics in {TOPICS_DIR}/<id>.toml, but this file lists some"),
        }),
        FORMAT_VERSION | FORMAT_WITH_TOPICS_IN_STORE_TOML => Ok(Some(file)),
        found => {
            let advice = if found < FORMAT_VERSION {
                "mount it with the older commitfs that wrote it and copy its topics into a new data directory mounted by this one (cat each partition's segments into the new partition's active file); nothing here was changed"
            } else {
                "it was written by a newer commitfs; use that release. Nothing here was changed"
            };
            Err(StoreError::UnsupportedFormat {
                path,
                found,
                supported: FORMAT_VERSION,
                advice,
            })
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    String::from_utf8(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to() as u64,
        reason: "not UTF-8 text".into(),
    })
}

/// Parses TOML; an error names the byte and line where it lies.
fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |span| span.start);
        StoreError::Corrupt {
            path: path.to_owned(),
            offset: at as u64,
            reason: format!("line {}: {}", line_of(text, at), e.message().trim()),
        }
    })
}

fn line_of(text: &str, at: usize) -> usize {
    let before = &text.as_bytes()[..at.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let io = |what: &str, e| StoreError::io(format!("{what} {}", path.display()), e);
    #[cfg(feature = "failpoints")]
    if let Some(arg) = super::faults::fires("meta::write_atomically", &path) {
        if super::faults::is_short(arg.as_deref()) {
            // A write that ran out of space part way through.
            let _ = std::fs::write(&temporary, &bytes[..bytes.len() / 2]);
        }
        return Err(super::mapped::injected(&path, "writing", arg));
    }
    let mut file = std::fs::File::create(&temporary).map_err(|e| io("writing", e))?;
    file.write_all(bytes).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(|e| io("replacing", e))?;
    sync_dir(dir)?;
    #[cfg(feature = "failpoints")]
    super::faults::replaced(&path, bytes);
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    super::mapped::inject!("meta::sync_dir", dir, "syncing directory");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))?;
    #[cfg(feature = "failpoints")]
    super::faults::dir_synced(dir);
    Ok(())
}

/// Whether files were made in a directory since the last checkpoint: their names, unlike
/// their bytes, are durable only once the directory is synced, and recovery counts on the
/// files a checkpoint counts (a lost one means a rebuild from the whole log).
pub struct UnsyncedNames(AtomicBool);

impl UnsyncedNames {
    pub fn new(unsynced: bool) -> UnsyncedNames {
        UnsyncedNames(AtomicBool::new(unsynced))
    }

    /// Called once a name is made, not before: a checkpoint in between would miss it.
    pub fn made(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Makes durable every name made in the directories of `names` since the last call, with one
/// sync of the file system holding `dir` when there are any (a sync of each directory costs a
/// device flush each: 2.6 ms apiece here).
pub fn sync_names<'n>(dir: &Path, names: impl Iterator<Item = &'n UnsyncedNames>) -> Result<()> {
    let taken: Vec<&UnsyncedNames> = names.filter(|names| names.take()).collect();
    if taken.is_empty() {
        return Ok(());
    }
    let synced = sync_file_system(dir);
    if synced.is_err() {
        // Still to be made durable, by the next checkpoint.
        taken.iter().for_each(|names| names.made());
    }
    synced
}

/// Everything written to the file system holding `dir` reaches the disk, names included: one
/// call for the thousands of files a migration writes or partitions roll, where a sync of
/// each would take seconds to minutes.
fn sync_file_system(dir: &Path) -> Result<()> {
    super::mapped::inject!("meta::sync_file_system", dir, "syncing the file system of");
    std::fs::File::open(dir)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
        .map_err(|e| StoreError::io(format!("syncing the file system of {}", dir.display()), e))?;
    #[cfg(feature = "failpoints")]
    super::faults::file_system_synced(dir);
    Ok(())
}

/// Exists while the store is open; found at open, it means the last stop was unclean.
pub const ABORT_MARKER: &str = "abort";

pub fn abort_marker_exists(dir: &Path) -> bool {
    dir.join(ABORT_MARKER).exists()
}

/// Whether the abort marker was made before this boot of the machine: the last stop was then
/// a crash of the machine (a power loss), not just of the process, and the commit log past
/// its last sync may have lost pages in any order. Boot time is `btime` in `/proc/stat`.
pub fn abort_marker_predates_boot(dir: &Path) -> bool {
    let made = std::fs::metadata(dir.join(ABORT_MARKER)).and_then(|m| m.modified());
    let booted = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        let line = stat.lines().find_map(|l| l.strip_prefix("btime "))?;
        line.trim().parse::<u64>().ok()
    });
    match (made, booted) {
        (Ok(made), Some(booted)) => {
            made < std::time::UNIX_EPOCH + std::time::Duration::from_secs(booted)
        }
        _ => false,
    }
}

/// An empty file: it needs no data block, so it can be made even on a full disk.
pub fn create_abort_marker(dir: &Path) -> Result<()> {
    let path = dir.join(ABORT_MARKER);
    std::fs::File::create(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    sync_dir(dir)
}

pub fn remove_abort_marker(dir: &Path) -> Result<()> {
    super::mapped::remove_file(&dir.join(ABORT_MARKER))?;
    sync_dir(dir)
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn topic() -> impl Strategy<Value = TopicRecord> {
        // TOML integers are i64.
        let limit = || proptest::option::of(0..=i64::MAX as u64);
        let optional = (any::<Option<Vec<u8>>>(), limit(), limit());
        (
            "[a-z._-]{1,12}",
            any::<(u32, i64, u32, bool, u32, u32, u32)>(),
            optional,
        )
            .prop_map(
                |(
                    name,
                    (id, created_ms, partitions, raw, uid, gid, mode),
                    (separator, ms, bytes),
                )| {
                    TopicRecord {
                        name,
                        id,
                        created_ms,
                        partitions,
                        framing: if raw { Framing::Raw } else { Framing::Lines },
                        key_separator: separator,
                        retention_ms: ms,
                        retention_bytes: bytes,
                        owner_uid: uid,
                        owner_gid: gid,
                        mode,
                    }
                },
            )
    }

    /// A `store.toml` of format 2, which lists its topics: the migration reads it.
    fn store_toml() -> impl Strategy<Value = Vec<u8>> {
        let layout =
            (0..=i64::MAX as u64, any::<(u32, u32, u32)>()).prop_map(|(a, (b, c, d))| Layout {
                commit_log_file_bytes: a,
                segment_messages: b,
                index_slots: c,
                index_entries: d,
            });
        (
            layout,
            any::<u32>(),
            proptest::collection::vec(topic(), 0..3),
        )
            .prop_map(|(layout, next_topic_id, topics)| {
                let file = StoreToml {
                    format_version: FORMAT_WITH_TOPICS_IN_STORE_TOML,
                    layout,
                    next_topic_id,
                    topics,
                };
                toml::to_string(&file).unwrap().into_bytes()
            })
    }

    proptest! {
        #![proptest_config(fuzzing::config(300))]

        /// Any format-2 store.toml loads or is refused with an error; what loads and is
        /// valid migrates into topic files and loads again as the same metadata.
        #[test]
        fn any_store_toml_loads_or_is_refused_and_what_loads_migrates(
            bytes in fuzzing::garbage_or_damaged(store_toml(), 400)
        ) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(META_FILE), &bytes).unwrap();
            let Ok(Some(mut meta)) = Meta::load(dir.path()) else {
                return Ok(());
            };
            if meta.validate().is_err() {
                return Ok(());
            }
            meta.migrate(dir.path()).unwrap();
            let reloaded = Meta::load(dir.path()).unwrap().unwrap();
            prop_assert_eq!(reloaded, meta);
        }

        /// Any topic file loads or is refused with an error naming it; never a panic.
        #[test]
        fn any_topic_file_loads_or_is_refused(
            bytes in fuzzing::garbage_or_damaged(
                topic().prop_map(|t| toml::to_string(&TopicRecord { id: 1, ..t }).unwrap().into_bytes()),
                200,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            Meta::new(Layout { commit_log_file_bytes: 4096, segment_messages: 1, index_slots: 1, index_entries: 2 })
                .save(dir.path())
                .unwrap();
            std::fs::write(dir.path().join(TOPICS_DIR).join("1.toml"), &bytes).unwrap();
            match Meta::load(dir.path()) {
                Ok(meta) => prop_assert_eq!(meta.unwrap().topics.len(), 1),
                Err(error) => prop_assert!(error.to_string().contains("1.toml"), "{}", error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(commit_log_file_bytes: u64, index_entries: u32) -> Layout {
        Layout {
            commit_log_file_bytes,
            segment_messages: 1,
            index_slots: 1,
            index_entries,
        }
    }

    /// The bounds the error message promises, each side of each (found by `cargo mutants`:
    /// no test held them).
    #[test]
    fn layout_bounds_are_the_ones_the_message_gives() {
        let max = u64::from(u32::MAX);
        assert!(layout(4096, 2).validate().is_ok());
        assert!(layout(max, 2).validate().is_ok());
        assert!(layout(4095, 2).validate().is_err());
        assert!(layout(max + 1, 2).validate().is_err());
        assert!(layout(4096, 1).validate().is_err());
        let no_slots = Layout {
            index_slots: 0,
            ..layout(4096, 2)
        };
        assert!(no_slots.validate().is_err());
    }
}
