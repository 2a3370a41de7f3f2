//! Extended attributes: topic settings, lookups by key, offset and time, segment facts.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;

use crate::fs::error::{FsError, FsResult};
use crate::fs::xattr::{self, SegmentFact, Setting, XattrName, XattrReply, MAX_VALUE_BYTES};
use crate::store::{Partition, SegmentInfo, Topic};

use super::{segment_file_name, CommitFs, Node};

/// What a refusal about attribute `name` of `node` concerns, for the log.
fn subject(node: &Node, name: &OsStr) -> String {
    format!("{}: {}", node.path(), name.to_string_lossy())
}

fn no_attribute() -> FsError {
    FsError::missing(libc::ENODATA, "no such attribute")
}

fn no_position() -> FsError {
    FsError::missing(libc::ENODATA, "the group has no position here")
}

/// A group's position in each partition of `topic`, as `PARTITION OFFSET LAG` lines; `-`
/// for both where it has none, as `kafka-consumer-groups` shows it.
fn group_positions(topic: &Topic, group: &str) -> FsResult<Vec<u8>> {
    let mut lines = String::new();
    let mut any = false;
    for partition in topic.partitions() {
        let line = match partition.consumer_position(group)? {
            Some(offset) => {
                any = true;
                let lag = partition.end_offset().saturating_sub(offset);
                format!("{} {offset} {lag}\n", partition.index())
            }
            None => format!("{} - -\n", partition.index()),
        };
        lines.push_str(&line);
    }
    if any {
        Ok(lines.into_bytes())
    } else {
        Err(no_position())
    }
}

/// The groups with a position in any of `partitions`. A partition whose positions cannot
/// be read lists none (and says why in the log), so the other names can still be listed.
fn groups_in(partitions: &[std::sync::Arc<Partition>]) -> BTreeSet<String> {
    let mut groups = BTreeSet::new();
    for partition in partitions {
        match partition.consumer_positions() {
            Ok(positions) => groups.extend(positions.into_keys()),
            Err(error) => tracing::warn!("listing consumer positions: {error}"),
        }
    }
    groups
}

fn no_key() -> FsError {
    FsError::missing(libc::ENODATA, "no stored message has this key")
}

impl CommitFs {
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        let node = self.resolve(ino)?;
        self.xattr_value(&node, name.as_bytes())
            .and_then(|value| xattr::fit(value, size))
            .map_err(|error| error.context(subject(&node, name)))
    }

    fn xattr_value(&self, node: &Node, name: &[u8]) -> FsResult<Vec<u8>> {
        let parsed = XattrName::parse(node.xattr_holder(), name).ok_or_else(no_attribute)?;
        let number = |value: u64| Ok(value.to_string().into_bytes());
        match (parsed, node) {
            (XattrName::ReadRequests, Node::Root) => number(self.read_requests()),
            (XattrName::Setting(setting), Node::Topic(topic)) => {
                let settings = topic.settings();
                Ok(match setting {
                    Setting::Partitions => settings.partitions.to_string().into_bytes(),
                    Setting::Framing => settings.framing.to_string().into_bytes(),
                    Setting::KeySeparator => settings.key_separator.unwrap_or_default(),
                    Setting::RetentionMs => xattr::format_retention(settings.retention_ms),
                    Setting::RetentionBytes => xattr::format_retention(settings.retention_bytes),
                })
            }
            (XattrName::Key(key), Node::Topic(topic)) => self.newest_with_key(topic, None, key),
            (XattrName::Key(key), Node::Partition(topic, partition)) => {
                self.newest_with_key(topic, Some(partition.index()), key)
            }
            (XattrName::Offsets(key), Node::Topic(topic)) => {
                self.offsets_with_key(topic, None, key)
            }
            (XattrName::Offsets(key), Node::Partition(topic, partition)) => {
                self.offsets_with_key(topic, Some(partition.index()), key)
            }
            (XattrName::StartOffset, Node::Partition(_, partition)) => {
                number(partition.start_offset())
            }
            (XattrName::EndOffset, Node::Partition(_, partition)) => number(partition.end_offset()),
            (XattrName::Offset(argument), Node::Partition(_, partition)) => {
                let location = self
                    .store
                    .locate(partition, xattr::parse_offset(argument)?)?;
                let value = format!(
                    "{} {} {}",
                    segment_file_name(location.segment_base),
                    location.position,
                    location.len
                );
                Ok(value.into_bytes())
            }
            (XattrName::Time(argument), Node::Partition(_, partition)) => {
                let time = xattr::parse_time(argument)?;
                match self.store.offset_for_time(partition, time)? {
                    Some(offset) => number(offset),
                    None => Err(FsError::missing(
                        libc::ENODATA,
                        format!("no message at or after {time} ms"),
                    )),
                }
            }
            (XattrName::Consumer(group), Node::Partition(_, partition)) => {
                let group = xattr::parse_group(group)?;
                match partition.consumer_position(group)? {
                    Some(offset) => number(offset),
                    None => Err(no_position()),
                }
            }
            (XattrName::Consumer(group), Node::Topic(topic)) => {
                group_positions(topic, xattr::parse_group(group)?)
            }
            (XattrName::StartPosition, Node::Stream(_, partition)) => {
                number(partition.stream_start()?)
            }
            (XattrName::Segment(fact), Node::Segment(_, partition, info)) => {
                self.segment_fact(fact, partition, info)
            }
            _ => Err(no_attribute()),
        }
    }

    /// One of a segment's `user.*` facts.
    fn segment_fact(
        &self,
        fact: SegmentFact,
        partition: &Partition,
        info: &SegmentInfo,
    ) -> FsResult<Vec<u8>> {
        let number = |value: u64| Ok(value.to_string().into_bytes());
        let end = partition
            .end_offset()
            .min(info.base_offset + self.segment_messages);
        match fact {
            SegmentFact::BaseOffset => number(info.base_offset),
            SegmentFact::EndOffset => number(end),
            SegmentFact::Messages => number(info.messages),
            SegmentFact::FirstTimestamp => info
                .first_timestamp
                .map(|t| t.to_string().into_bytes())
                .ok_or_else(no_attribute),
            SegmentFact::LastTimestamp => info
                .last_timestamp
                .map(|t| t.to_string().into_bytes())
                .ok_or_else(no_attribute),
            SegmentFact::Sealed => Ok(info.sealed.to_string().into_bytes()),
            SegmentFact::Materialized => Ok(info.materialized.to_string().into_bytes()),
        }
    }

    fn newest_with_key(
        &self,
        topic: &Topic,
        partition: Option<u32>,
        key: &[u8],
    ) -> FsResult<Vec<u8>> {
        let mut newest = None;
        self.store
            .for_each_key_match(topic, partition, key, |found| {
                newest = Some(found.payload());
                ControlFlow::Break(())
            })?;
        Ok(newest.ok_or_else(no_key)??)
    }

    /// `PARTITION OFFSET` lines, oldest first: the newest matches that fit in 64 KiB.
    fn offsets_with_key(
        &self,
        topic: &Topic,
        partition: Option<u32>,
        key: &[u8],
    ) -> FsResult<Vec<u8>> {
        let mut newest = Vec::new();
        let mut total = 0;
        self.store
            .for_each_key_match(topic, partition, key, |found| {
                let line = format!("{} {}\n", found.partition, found.offset);
                if total + line.len() > MAX_VALUE_BYTES {
                    return ControlFlow::Break(());
                }
                total += line.len();
                newest.push((found.store_order, line));
                ControlFlow::Continue(())
            })?;
        if newest.is_empty() {
            return Err(no_key());
        }
        // Oldest first, in the order the messages were stored.
        newest.sort_unstable_by_key(|(order, _)| *order);
        Ok(newest.iter().flat_map(|(_, line)| line.bytes()).collect())
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        let node = self.resolve(ino)?;
        let fixed = xattr::fixed_names(node.xattr_holder())
            .into_iter()
            .filter(|name| match &node {
                // An empty segment has no message times to show.
                Node::Segment(_, _, info) if info.first_timestamp.is_none() => {
                    !name.ends_with("_timestamp")
                }
                _ => true,
            })
            .map(str::to_owned);
        // Consumer positions are listed like any stored attribute.
        let groups = match &node {
            Node::Topic(topic) => groups_in(&topic.partitions()),
            Node::Partition(_, partition) => groups_in(std::slice::from_ref(partition)),
            _ => BTreeSet::new(),
        };
        let names: Vec<String> = fixed
            .chain(groups.iter().map(|group| xattr::consumer_name(group)))
            .collect();
        xattr::fit(xattr::name_list(names.iter().map(String::as_str)), size)
            .map_err(|error| error.context(node.path()))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let node = self.resolve(ino)?;
        self.set_attribute(&node, name, value, flags)
            .map_err(|error| error.context(subject(&node, name)))
    }

    fn set_attribute(&self, node: &Node, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let Some(parsed) = XattrName::parse(node.xattr_holder(), name.as_bytes()) else {
            return Err(FsError::refused(
                libc::EOPNOTSUPP,
                "not an attribute commitfs keeps",
            ));
        };
        let shown = || (subject(node, name), String::from_utf8_lossy(value));
        match (parsed, node) {
            (XattrName::Setting(setting), Node::Topic(topic)) => {
                self.set_setting(topic, setting, value, flags)?;
                let (subject, value) = shown();
                tracing::info!("{subject}: set to {value:?}");
                Ok(())
            }
            (XattrName::Consumer(group), Node::Partition(_, partition)) => {
                set_position(partition, xattr::parse_group(group)?, value, flags)?;
                // Consumers set positions all the time: not worth a line each by default.
                let (subject, value) = shown();
                tracing::debug!("{subject}: set to {value:?}");
                Ok(())
            }
            (XattrName::Consumer(_), Node::Topic(_)) => Err(FsError::refused(
                libc::EPERM,
                "read-only on a topic: set a position on a partition directory",
            )),
            _ => Err(FsError::refused(libc::EPERM, "read-only")),
        }
    }

    fn set_setting(
        &self,
        topic: &Topic,
        setting: Setting,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        if flags & libc::XATTR_CREATE != 0 {
            return Err(FsError::refused(
                libc::EEXIST,
                "always exists, so XATTR_CREATE fails",
            ));
        }
        self.change_topic(topic, |settings| {
            match setting {
                Setting::Partitions => settings.partitions = xattr::parse_partitions(value)?,
                Setting::Framing => settings.framing = xattr::parse_framing(value)?,
                Setting::KeySeparator => {
                    settings.key_separator = xattr::parse_key_separator(value)?
                }
                Setting::RetentionMs => settings.retention_ms = xattr::parse_retention(value)?,
                Setting::RetentionBytes => {
                    settings.retention_bytes = xattr::parse_retention(value)?
                }
            }
            Ok(())
        })
    }

    /// Only consumer positions can be removed: on a partition directory, the group's position
    /// there; on a topic directory, in all its partitions.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let node = self.resolve(ino)?;
        let removed = match (
            XattrName::parse(node.xattr_holder(), name.as_bytes()),
            &node,
        ) {
            (Some(XattrName::Consumer(group)), Node::Partition(_, partition)) => {
                forget_positions(std::slice::from_ref(partition), group)
            }
            (Some(XattrName::Consumer(group)), Node::Topic(topic)) => {
                forget_positions(&topic.partitions(), group)
            }
            (Some(_), _) => Err(FsError::refused(libc::EPERM, "cannot be removed")),
            (None, _) => Err(no_attribute()),
        };
        removed.map_err(|error| error.context(subject(&node, name)))?;
        tracing::info!("{}: removed", subject(&node, name));
        Ok(())
    }
}

/// `setfattr -n user.consumer.<group> -v N PARTITION_DIR`, honouring `XATTR_CREATE` and
/// `XATTR_REPLACE` as for any stored attribute.
fn set_position(partition: &Partition, group: &str, value: &[u8], flags: i32) -> FsResult<()> {
    let offset = xattr::parse_position(value)?;
    let (create, replace) = (
        flags & libc::XATTR_CREATE != 0,
        flags & libc::XATTR_REPLACE != 0,
    );
    let mut existed = false;
    let set = partition.set_consumer_position_if(group, offset, |now| {
        existed = now.is_some();
        !(create && existed || replace && !existed)
    })?;
    match (set, existed) {
        (true, _) => Ok(()),
        (false, true) => Err(FsError::refused(
            libc::EEXIST,
            "the group has a position here, so XATTR_CREATE fails",
        )),
        (false, false) => Err(no_position()),
    }
}

/// Forgets `group` in `partitions`; `ENODATA` when it had a position in none of them.
fn forget_positions(partitions: &[std::sync::Arc<Partition>], group: &[u8]) -> FsResult<()> {
    let group = xattr::parse_group(group)?;
    let mut any = false;
    for partition in partitions {
        any |= partition.forget_consumer_position(group)?;
    }
    if any {
        Ok(())
    } else {
        Err(no_position())
    }
}
