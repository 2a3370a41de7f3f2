//! Persistent metadata: the store's layout and its topics, in `store.toml`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::{Framing, TopicSettings, MAX_PARTITIONS};

pub const META_FILE: &str = "store.toml";
/// 2: messages stored in batches (one header and CRC per batch), key-index entries of 24
/// bytes.
const FORMAT_VERSION: u32 = 2;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format_version: u32,
    pub layout: Layout,
    pub next_topic_id: u32,
    #[serde(default)]
    pub topics: Vec<TopicRecord>,
}

impl Meta {
    pub fn new(layout: Layout) -> Meta {
        Meta {
            format_version: FORMAT_VERSION,
            layout,
            next_topic_id: 1,
            topics: Vec::new(),
        }
    }

    pub fn load(dir: &Path) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let meta: Meta = toml::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if meta.format_version != FORMAT_VERSION {
            let advice = if meta.format_version < FORMAT_VERSION {
                "mount it with the older commitfs that wrote it and copy its topics into a new data directory mounted by this one (cat each partition's segments into the new partition's active file); nothing here was changed"
            } else {
                "it was written by a newer commitfs; use that release. Nothing here was changed"
            };
            return Err(StoreError::UnsupportedFormat {
                path,
                found: meta.format_version,
                supported: FORMAT_VERSION,
                advice,
            });
        }
        Ok(Some(meta))
    }

    /// What is wrong with this metadata on its own: a layout that cannot be, a topic whose
    /// name, partition count or id is invalid, two topics sharing a name or an id, an id at
    /// or above `next_topic_id` (the next topic would reuse it).
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.layout.validate()?;
        let mut names = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for topic in &self.topics {
            let name = &topic.name;
            super::validate_topic_name(name).map_err(|e| e.to_string())?;
            if !(1..=MAX_PARTITIONS).contains(&topic.partitions) {
                return Err(format!(
                    "topic {name:?} has partitions = {}; it must be 1 to {MAX_PARTITIONS}",
                    topic.partitions
                ));
            }
            if topic.key_separator.as_ref().is_some_and(|s| s.is_empty()) {
                return Err(format!("topic {name:?} has an empty key_separator"));
            }
            if topic.id == 0 || topic.id >= self.next_topic_id {
                return Err(format!(
                    "topic {name:?} has id {}, not 1 to next_topic_id - 1 ({})",
                    topic.id,
                    self.next_topic_id.saturating_sub(1)
                ));
            }
            if !names.insert(name) {
                return Err(format!("two topics are named {name:?}"));
            }
            if !ids.insert(topic.id) {
                return Err(format!("two topics have id {}", topic.id));
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
                "partition {partition} of topic {:?} (id {topic_id}), which store.toml says has {} partitions",
                topic.name, topic.partitions
            )
        })
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string(self)
            .map_err(|e| StoreError::InvalidSetting(format!("cannot encode the metadata: {e}")))?;
        write_atomically(dir, META_FILE, text.as_bytes())
    }
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
                let meta = Meta {
                    next_topic_id,
                    topics,
                    ..Meta::new(layout)
                };
                toml::to_string(&meta).unwrap().into_bytes()
            })
    }

    proptest! {
        #![proptest_config(fuzzing::config(300))]

        /// Any store.toml loads or is refused with an error; what loads saves and loads again
        /// as the same metadata.
        #[test]
        fn any_store_toml_loads_or_is_refused_and_what_loads_round_trips(
            bytes in fuzzing::garbage_or_damaged(store_toml(), 400)
        ) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(META_FILE), &bytes).unwrap();
            let Ok(Some(meta)) = Meta::load(dir.path()) else {
                return Ok(());
            };
            let again = tempfile::tempdir().unwrap();
            meta.save(again.path()).unwrap();
            let reloaded = Meta::load(again.path()).unwrap().unwrap();
            prop_assert_eq!(toml::to_string(&reloaded).unwrap(), toml::to_string(&meta).unwrap());
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
