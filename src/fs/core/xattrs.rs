//! Extended attributes: topic settings, lookups by key, offset and time, segment facts.

use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;

use crate::fs::error::{FsError, FsResult};
use crate::fs::xattr::{self, SegmentFact, Setting, XattrName, XattrReply, MAX_VALUE_BYTES};
use crate::store::Topic;

use super::{segment_file_name, CommitFs, Node};

impl CommitFs {
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> FsResult<XattrReply> {
        let node = self.resolve(ino)?;
        let value = self.xattr_value(&node, name.as_bytes())?;
        xattr::fit(value, size)
    }

    fn xattr_value(&self, node: &Node, name: &[u8]) -> FsResult<Vec<u8>> {
        let no_attribute = || {
            FsError::missing(
                libc::ENODATA,
                format!(
                    "{} has no attribute {}",
                    node.path(),
                    String::from_utf8_lossy(name)
                ),
            )
        };
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
            (XattrName::Key(key), Node::Topic(topic)) => {
                self.newest_with_key(node, topic, None, key)
            }
            (XattrName::Key(key), Node::Partition(topic, partition)) => {
                self.newest_with_key(node, topic, Some(partition.index()), key)
            }
            (XattrName::Offsets(key), Node::Topic(topic)) => {
                self.offsets_with_key(node, topic, None, key)
            }
            (XattrName::Offsets(key), Node::Partition(topic, partition)) => {
                self.offsets_with_key(node, topic, Some(partition.index()), key)
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
                        format!("{}: no message at or after {time} ms", node.path()),
                    )),
                }
            }
            (XattrName::Segment(fact), Node::Segment(_, partition, info)) => {
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
                }
            }
            _ => Err(no_attribute()),
        }
    }

    fn no_key(node: &Node, key: &[u8]) -> FsError {
        FsError::missing(
            libc::ENODATA,
            format!(
                "{}: no message has key {:?}",
                node.path(),
                String::from_utf8_lossy(key)
            ),
        )
    }

    fn newest_with_key(
        &self,
        node: &Node,
        topic: &Topic,
        partition: Option<u32>,
        key: &[u8],
    ) -> FsResult<Vec<u8>> {
        let mut newest = None;
        self.store
            .for_each_key_match(topic, partition, key, |found| {
                newest = Some(found.payload().map(<[u8]>::to_vec));
                ControlFlow::Break(())
            })?;
        Ok(newest.ok_or_else(|| Self::no_key(node, key))??)
    }

    /// `PARTITION OFFSET` lines, oldest first: the newest matches that fit in 64 KiB.
    fn offsets_with_key(
        &self,
        node: &Node,
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
            return Err(Self::no_key(node, key));
        }
        // Oldest first, in the order the messages were stored.
        newest.sort_unstable_by_key(|(order, _)| *order);
        Ok(newest.iter().flat_map(|(_, line)| line.bytes()).collect())
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> FsResult<XattrReply> {
        let node = self.resolve(ino)?;
        let names =
            xattr::fixed_names(node.xattr_holder())
                .into_iter()
                .filter(|name| match &node {
                    // An empty segment has no message times to show.
                    Node::Segment(_, _, info) if info.first_timestamp.is_none() => {
                        !name.ends_with("_timestamp")
                    }
                    _ => true,
                });
        xattr::fit(xattr::name_list(names), size)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let node = self.resolve(ino)?;
        let shown = name.to_string_lossy();
        let Some(parsed) = XattrName::parse(node.xattr_holder(), name.as_bytes()) else {
            return Err(FsError::refused(
                libc::EOPNOTSUPP,
                format!(
                    "{}: {shown} is not an attribute commitfs keeps",
                    node.path()
                ),
            ));
        };
        let (XattrName::Setting(setting), Node::Topic(topic)) = (parsed, &node) else {
            return Err(FsError::refused(
                libc::EPERM,
                format!("{}: {shown} is read-only", node.path()),
            ));
        };
        if flags & libc::XATTR_CREATE != 0 {
            return Err(FsError::refused(
                libc::EEXIST,
                format!("{}: {shown} always exists", node.path()),
            ));
        }
        self.change_topic(topic, |settings| {
            match setting {
                Setting::Partitions => settings.partitions = xattr::parse_partitions(value)?,
                Setting::Framing => settings.framing = xattr::parse_framing(value)?,
                Setting::KeySeparator => {
                    settings.key_separator = xattr::parse_key_separator(value)?
                }
                Setting::RetentionMs => {
                    settings.retention_ms = xattr::parse_retention("retention_ms", value)?
                }
                Setting::RetentionBytes => {
                    settings.retention_bytes = xattr::parse_retention("retention_bytes", value)?
                }
            }
            Ok(())
        })?;
        tracing::info!(
            "topic {}: {shown} set to {:?}",
            topic.name(),
            String::from_utf8_lossy(value)
        );
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let node = self.resolve(ino)?;
        let shown = name.to_string_lossy();
        match XattrName::parse(node.xattr_holder(), name.as_bytes()) {
            Some(_) => Err(FsError::refused(
                libc::EPERM,
                format!("{}: {shown} cannot be removed", node.path()),
            )),
            None => Err(FsError::missing(
                libc::ENODATA,
                format!("{} has no attribute {shown}", node.path()),
            )),
        }
    }
}
