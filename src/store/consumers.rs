//! Consumer positions: for one partition, the next offset each consumer group will read.
//!
//! Kept in the partition's consume-queue directory as a small text file, `consumers`, one
//! `GROUP OFFSET` line per group, replaced atomically and fsynced on every change: a position
//! is durable when `set` returns, and a change costs the same however many topics,
//! partitions and groups the store has elsewhere. Deleting the topic deletes them with its
//! queues. Read lazily: a partition nobody asks about never opens its file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::error::{Result, StoreError};
use super::meta;

/// The file's name in a partition's consume-queue directory.
pub const CONSUMERS_FILE: &str = "consumers";

/// The longest group name, as the contract says.
pub const MAX_GROUP_CHARS: usize = 200;

pub struct ConsumerPositions {
    dir: PathBuf,
    /// `None` until first asked for.
    groups: Mutex<Option<BTreeMap<String, u64>>>,
}

impl ConsumerPositions {
    /// The positions kept in `queue_dir` (the partition's consume-queue directory).
    pub fn new(queue_dir: &Path) -> ConsumerPositions {
        ConsumerPositions {
            dir: queue_dir.to_owned(),
            groups: Mutex::new(None),
        }
    }

    /// The position stored for `group`, as set (the caller raises one below the partition's
    /// start to the start).
    pub fn get(&self, group: &str) -> Result<Option<u64>> {
        validate_group(group)?;
        let mut groups = self.groups.lock();
        Ok(self.loaded(&mut groups)?.get(group).copied())
    }

    /// Every group with a position here, by name.
    pub fn all(&self) -> Result<BTreeMap<String, u64>> {
        let mut groups = self.groups.lock();
        Ok(self.loaded(&mut groups)?.clone())
    }

    /// Stores `offset` as `group`'s position, on disk before it returns, if `allowed` says
    /// yes to the position it has now (checked under the same lock, so two setters cannot
    /// both find none); false when it said no.
    pub fn set_if(
        &self,
        group: &str,
        offset: u64,
        allowed: impl FnOnce(Option<u64>) -> bool,
    ) -> Result<bool> {
        validate_group(group)?;
        let mut guard = self.groups.lock();
        let groups = self.loaded(&mut guard)?;
        if !allowed(groups.get(group).copied()) {
            return Ok(false);
        }
        let previous = groups.insert(group.to_owned(), offset);
        if let Err(error) = self.save(groups) {
            match previous {
                Some(previous) => groups.insert(group.to_owned(), previous),
                None => groups.remove(group),
            };
            return Err(error);
        }
        Ok(true)
    }

    /// Forgets `group`'s position; false when it had none.
    pub fn forget(&self, group: &str) -> Result<bool> {
        validate_group(group)?;
        let mut guard = self.groups.lock();
        let groups = self.loaded(&mut guard)?;
        let Some(previous) = groups.remove(group) else {
            return Ok(false);
        };
        if let Err(error) = self.save(groups) {
            groups.insert(group.to_owned(), previous);
            return Err(error);
        }
        Ok(true)
    }

    fn loaded<'g>(
        &self,
        groups: &'g mut Option<BTreeMap<String, u64>>,
    ) -> Result<&'g mut BTreeMap<String, u64>> {
        if groups.is_none() {
            *groups = Some(read(&self.dir)?);
        }
        Ok(groups.get_or_insert_with(BTreeMap::new))
    }

    fn save(&self, groups: &BTreeMap<String, u64>) -> Result<()> {
        write(&self.dir, groups)
    }
}

/// Replaces the positions in `queue_dir` with `groups`, durably.
pub fn write(queue_dir: &Path, groups: &BTreeMap<String, u64>) -> Result<()> {
    meta::write_atomically(queue_dir, CONSUMERS_FILE, encode(groups).as_bytes())
}

/// A group name: 1–200 characters of `[A-Za-z0-9._-]`.
pub fn validate_group(group: &str) -> Result<()> {
    let valid = (1..=MAX_GROUP_CHARS).contains(&group.len())
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidSetting(format!(
            "consumer group {group:?} is invalid: 1-{MAX_GROUP_CHARS} characters of [A-Za-z0-9._-]"
        )))
    }
}

/// The positions in `queue_dir`'s file; none when there is no file.
pub fn read(queue_dir: &Path) -> Result<BTreeMap<String, u64>> {
    let path = queue_dir.join(CONSUMERS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(StoreError::io(format!("reading {}", path.display()), error)),
    };
    decode(&bytes).map_err(|(offset, reason)| StoreError::Corrupt {
        path,
        offset,
        reason,
    })
}

fn encode(groups: &BTreeMap<String, u64>) -> String {
    groups
        .iter()
        .map(|(group, offset)| format!("{group} {offset}\n"))
        .collect()
}

/// The positions a file's bytes hold, or the byte where it goes wrong and why. Every line,
/// the last included, ends with `\n`: the file is only ever replaced whole, so anything
/// else is damage.
pub fn decode(bytes: &[u8]) -> std::result::Result<BTreeMap<String, u64>, (u64, String)> {
    let mut groups = BTreeMap::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = memchr::memchr(b'\n', &bytes[at..]) else {
            return Err((at as u64, "the last line has no newline".to_owned()));
        };
        let line = &bytes[at..at + len];
        let parsed = std::str::from_utf8(line).ok().and_then(|line| {
            let (group, offset) = line.split_once(' ')?;
            validate_group(group).ok()?;
            Some((group.to_owned(), offset.parse::<u64>().ok()?))
        });
        let Some((group, offset)) = parsed else {
            return Err((at as u64, "not a `GROUP OFFSET` line".to_owned()));
        };
        if groups.insert(group, offset).is_some() {
            return Err((at as u64, "a group named twice".to_owned()));
        }
        at += len + 1;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_follow_the_contract() {
        for good in ["a", "mirror", "Group_1.x-y", &"g".repeat(200)] {
            assert!(validate_group(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a\n", "a:b", &"g".repeat(201)] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_are_kept_set_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let positions = ConsumerPositions::new(dir.path());
        assert_eq!(positions.get("g").unwrap(), None);
        let always = |_| true;
        assert!(positions.set_if("g", 5, always).unwrap());
        assert!(positions.set_if("h", 0, always).unwrap());
        assert!(!positions.set_if("g", 6, |now| now.is_none()).unwrap());
        assert!(positions.set_if("g", 7, |now| now == Some(5)).unwrap());
        let again = ConsumerPositions::new(dir.path());
        assert_eq!(again.get("g").unwrap(), Some(7));
        assert_eq!(again.get("h").unwrap(), Some(0));
        assert!(again.forget("g").unwrap());
        assert!(!again.forget("g").unwrap());
        let last = read(dir.path()).unwrap();
        assert_eq!(last, BTreeMap::from([("h".to_owned(), 0)]));
        assert!(positions.set_if("bad group", 1, always).is_err());
    }

    #[test]
    fn damage_is_named_by_byte() {
        assert_eq!(decode(b"").unwrap(), BTreeMap::new());
        assert_eq!(
            decode(b"a 1\nb 2\n").unwrap(),
            BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)])
        );
        assert_eq!(decode(b"a 1\nb 2").unwrap_err().0, 4);
        assert_eq!(decode(b"a 1\nb x\n").unwrap_err().0, 4);
        assert_eq!(decode(b"a 1\na 2\n").unwrap_err().0, 4);
        assert_eq!(decode(b"a  1\n").unwrap_err().0, 0);
        assert_eq!(decode(b"a/b 1\n").unwrap_err().0, 0);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn file() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::btree_map("[A-Za-z0-9._-]{1,12}", any::<u64>(), 0..6)
            .prop_map(|groups| encode(&groups).into_bytes())
    }

    proptest! {
        #![proptest_config(fuzzing::config(1000))]

        /// Any bytes decode or are refused with a byte inside them; what decodes is written
        /// back as a file that decodes the same.
        #[test]
        fn any_consumers_file_decodes_or_is_refused(bytes in fuzzing::garbage_or_damaged(file(), 200)) {
            match decode(&bytes) {
                Ok(groups) => prop_assert_eq!(decode(encode(&groups).as_bytes()), Ok(groups)),
                Err((at, _)) => prop_assert!((at as usize) < bytes.len()),
            }
        }
    }
}
