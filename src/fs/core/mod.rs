//! The filesystem core: every operation as a plain method that returns a plain struct or an
//! [`FsError`]. It never sees FUSE reply objects; `fuse.rs` adapts it to fuser.
//!
//! The tree: the root holds one directory per topic; a topic directory holds its `append`
//! file and one directory per partition; a partition directory holds its segment files
//! (`<20-digit base offset>.log`) and the `active` symlink. Nodes are resolved from their
//! inode numbers on every request (see `inode.rs`), so the store is the only state.
//!
//! `files.rs` serves open files (and the `active` link), `dirs.rs` directory listings and
//! `xattrs.rs` extended attributes.

mod dirs;
mod files;
mod xattrs;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType, FopenFlags, INodeNo, TimeOrNow};
use parking_lot::{Mutex, RwLock};

use crate::store::{Framing, Partition, SegmentInfo, Store, Topic, TopicSettings};

use self::dirs::DirStream;
use self::files::{FollowedLink, OpenFile};
use super::error::{FsError, FsResult};
use super::framing::MAX_RAW_WRITE_BYTES;
use super::handles::HandleTable;
use super::inode::{Inode, SegmentTable, ROOT};
use super::time::system_time;
use super::xattr::XattrHolder;

/// `st_blksize`: `cat` and `cp` size their buffers from it, and one FUSE request carries at
/// most 1 MiB, so 1 MiB makes one `cat >> active` write one request.
const PREFERRED_IO_BYTES: u32 = 1 << 20;
/// `st_blksize` of a partition's `stream` (see its attributes).
const STREAM_BLOCK_BYTES: u32 = 4096;

const ACTIVE_LINK: &str = "active";
const STREAM_FILE: &str = "stream";
const APPEND_FILE: &str = "append";

/// How the mount presents the store: cache lifetimes and what `mkdir` gives a new topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsSettings {
    /// How long the kernel may trust a name → inode answer.
    pub entry_ttl: Duration,
    /// How long the kernel may trust the attributes of directories, `append` and `active`.
    pub attr_ttl: Duration,
    /// How long the kernel may trust a sealed segment's attributes (it never changes). The
    /// active segment's attributes are never cached: its size grows with every message.
    pub sealed_segment_ttl: Duration,
    pub topic_defaults: TopicDefaults,
}

/// The settings `mkdir` gives a new topic (its owner and mode come from the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDefaults {
    pub partitions: u32,
    pub framing: Framing,
    pub key_separator: Option<Vec<u8>>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

pub struct Entry {
    pub attr: FileAttr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

pub struct Attr {
    pub attr: FileAttr,
    pub ttl: Duration,
}

pub struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
    /// A sealed segment's own file, which the kernel may read the segment from itself
    /// (passthrough); where it cannot, READs are served from that file with `flags`.
    pub passthrough: Option<Arc<std::fs::File>>,
}

pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Attribute changes a `setattr` asks for (the ones commitfs looks at).
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

/// Where readdir puts its entries; `add` returns true once the reply buffer is full.
pub trait DirectoryReplier {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// A node of the tree, resolved from an inode number or a name.
enum Node {
    Root,
    Topic(Arc<Topic>),
    Append(Arc<Topic>),
    Partition(Arc<Topic>, Arc<Partition>),
    ActiveLink(Arc<Topic>, Arc<Partition>),
    /// The partition's messages as one read-only file that never rolls.
    Stream(Arc<Topic>, Arc<Partition>),
    Segment(Arc<Topic>, Arc<Partition>, SegmentInfo),
}

impl Node {
    fn xattr_holder(&self) -> XattrHolder {
        match self {
            Node::Root => XattrHolder::Root,
            Node::Topic(_) => XattrHolder::Topic,
            Node::Partition(..) => XattrHolder::Partition,
            Node::Segment(..) => XattrHolder::Segment,
            Node::Stream(..) => XattrHolder::Stream,
            Node::Append(_) | Node::ActiveLink(..) => XattrHolder::Plain,
        }
    }

    /// The node's path inside the mount, for log lines.
    fn path(&self) -> String {
        match self {
            Node::Root => "/".to_owned(),
            Node::Topic(topic) => topic.name().to_owned(),
            Node::Append(topic) => format!("{}/{APPEND_FILE}", topic.name()),
            Node::Partition(topic, partition) => format!("{}/{}", topic.name(), partition.index()),
            Node::ActiveLink(topic, partition) => {
                format!("{}/{}/{ACTIVE_LINK}", topic.name(), partition.index())
            }
            Node::Stream(topic, partition) => {
                format!("{}/{}/{STREAM_FILE}", topic.name(), partition.index())
            }
            Node::Segment(topic, partition, info) => {
                format!(
                    "{}/{}/{}",
                    topic.name(),
                    partition.index(),
                    segment_file_name(info.base_offset)
                )
            }
        }
    }
}

/// The path of `name` in directory `parent`, for log lines.
fn path_in(parent: &Node, name: &OsStr) -> String {
    match parent {
        Node::Root => name.to_string_lossy().into_owned(),
        _ => format!("{}/{}", parent.path(), name.to_string_lossy()),
    }
}

pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// A segment file name's base offset: exactly 20 digits and `.log`.
fn parse_segment_file_name(name: &[u8]) -> Option<u64> {
    let digits = name.strip_suffix(b".log")?;
    if digits.len() != 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A partition directory name's index: decimal, without leading zeros.
fn parse_partition_name(name: &[u8]) -> Option<u32> {
    let canonical = !name.is_empty()
        && name.iter().all(u8::is_ascii_digit)
        && (name == b"0" || name[0] != b'0');
    if !canonical {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Topics by id, for resolving inode numbers (the store looks topics up by name).
struct TopicTable {
    by_id: HashMap<u32, Arc<Topic>>,
}

impl TopicTable {
    fn insert(&mut self, topic: Arc<Topic>) {
        self.by_id.insert(topic.id(), topic);
    }
}

pub struct CommitFs {
    store: Arc<Store>,
    settings: FsSettings,
    segment_messages: u64,
    topics: RwLock<TopicTable>,
    /// Numbers of segments whose fields do not fit a derived inode number.
    segment_inodes: SegmentTable,
    /// Segment inodes opened for reading while active: the kernel may hold pages of theirs
    /// filled while they were shorter, so their first open once sealed drops the cache.
    opened_while_active: Mutex<HashSet<u64>>,
    /// Open write handles per segment inode. A writer keeps appending through the inode it
    /// opened after that segment is sealed, and each of its writes makes the kernel grow that
    /// inode's cached size (it takes the reply for its own append): while one is open, the
    /// kernel's size of the sealed segment can be too large, so readers bypass its cache.
    writers_on: Mutex<HashMap<u64, u32>>,
    files: HandleTable<OpenFile>,
    dirs: HandleTable<DirStream>,
    /// Held while a topic's settings are read, changed and written back.
    settings_update: Mutex<()>,
    /// By thread id: lets an append through `active` that raced a roll go through.
    followed_links: Mutex<HashMap<u32, FollowedLink>>,
    read_requests: AtomicU64,
    root_mtime_ms: AtomicI64,
    /// Owner of the root directory: the user who mounted.
    root_owner: (u32, u32),
    /// Whether opens may be passed through to segments' own files: the kernel granted it at
    /// init and has not refused a backing file since. Without it, every open is page-cached
    /// or direct as before.
    passthrough: std::sync::atomic::AtomicBool,
    /// The largest raw write stored as one message: what one FUSE request always carries
    /// (see `framing::raw_write_limit`), as the kernel said at init.
    raw_write_limit: std::sync::atomic::AtomicUsize,
}

impl CommitFs {
    pub fn new(store: Arc<Store>, settings: FsSettings) -> CommitFs {
        let mut table = TopicTable {
            by_id: HashMap::new(),
        };
        for topic in store.topics() {
            table.insert(topic);
        }
        let segment_messages = u64::from(store.config().segment_messages.max(1));
        let root_owner = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        CommitFs {
            store,
            settings,
            segment_messages,
            topics: RwLock::new(table),
            segment_inodes: SegmentTable::default(),
            opened_while_active: Mutex::new(HashSet::new()),
            writers_on: Mutex::new(HashMap::new()),
            files: HandleTable::new(),
            dirs: HandleTable::new(),
            settings_update: Mutex::new(()),
            followed_links: Mutex::new(HashMap::new()),
            read_requests: AtomicU64::new(0),
            root_mtime_ms: AtomicI64::new(now_ms()),
            root_owner,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            raw_write_limit: std::sync::atomic::AtomicUsize::new(MAX_RAW_WRITE_BYTES),
        }
    }

    /// Whether opens of sealed segments with files of their own are offered for passthrough
    /// (see `passthrough`): set by the FUSE layer at init and when the kernel refuses one.
    pub fn allow_passthrough(&self, allowed: bool) {
        self.passthrough.store(allowed, Ordering::Relaxed);
    }

    /// Lowers the largest raw write from `MAX_RAW_WRITE_BYTES`: set by the FUSE layer at
    /// init, for a kernel that passes less in one request.
    pub fn limit_raw_writes(&self, bytes: usize) {
        self.raw_write_limit.store(bytes, Ordering::Relaxed);
    }

    /// READ requests served since the mount (root attribute `user.stats.read_requests`).
    pub fn read_requests(&self) -> u64 {
        self.read_requests.load(Ordering::Relaxed)
    }

    // ---- resolving nodes ----

    fn resolve(&self, ino: u64) -> FsResult<Node> {
        let gone = || FsError::missing(libc::ENOENT, format!("inode {ino:#x} no longer exists"));
        let node = match Inode::decode(ino).ok_or_else(gone)? {
            Inode::Root => Node::Root,
            Inode::Topic { topic } => Node::Topic(self.topic_by_id(topic).ok_or_else(gone)?),
            Inode::Append { topic } => Node::Append(self.topic_by_id(topic).ok_or_else(gone)?),
            Inode::Partition { topic, partition } => {
                let topic = self.topic_by_id(topic).ok_or_else(gone)?;
                let partition = topic.partition(partition).ok_or_else(gone)?;
                Node::Partition(topic, partition)
            }
            Inode::ActiveLink { topic, partition } => {
                let topic = self.topic_by_id(topic).ok_or_else(gone)?;
                let partition = topic.partition(partition).ok_or_else(gone)?;
                Node::ActiveLink(topic, partition)
            }
            Inode::Stream { topic, partition } => {
                let topic = self.topic_by_id(topic).ok_or_else(gone)?;
                let partition = topic.partition(partition).ok_or_else(gone)?;
                Node::Stream(topic, partition)
            }
            Inode::Segment {
                topic,
                partition,
                number,
            } => self
                .resolve_segment(topic, partition, number)?
                .ok_or_else(gone)?,
            Inode::ListedSegment { serial } => {
                let (topic, partition, number) =
                    self.segment_inodes.segment(serial).ok_or_else(gone)?;
                self.resolve_segment(topic, partition, number)?
                    .ok_or_else(gone)?
            }
        };
        Ok(node)
    }

    /// Segment `number` of a partition, if it exists; an error if its facts are unreadable.
    fn resolve_segment(&self, topic: u32, partition: u32, number: u64) -> FsResult<Option<Node>> {
        let Some(topic) = self.topic_by_id(topic) else {
            return Ok(None);
        };
        let Some(partition) = topic.partition(partition) else {
            return Ok(None);
        };
        let base = number * self.segment_messages;
        let info = partition.segment(base).map_err(|error| {
            FsError::from(error).context(format_args!(
                "{}/{}/{}",
                topic.name(),
                partition.index(),
                segment_file_name(base)
            ))
        })?;
        Ok(info.map(|info| Node::Segment(topic, partition, info)))
    }

    fn topic_by_id(&self, id: u32) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .by_id
            .get(&id)
            .filter(|topic| !topic.is_deleted())
            .cloned()
    }

    /// A segment's inode number (see `inode.rs`).
    fn segment_inode(&self, topic: &Topic, partition: &Partition, base_offset: u64) -> u64 {
        self.segment_inodes.inode(
            topic.id(),
            partition.index(),
            base_offset / self.segment_messages,
        )
    }

    fn inode_of(&self, node: &Node) -> u64 {
        match node {
            Node::Root => ROOT,
            Node::Topic(topic) => Inode::Topic { topic: topic.id() }.encode(),
            Node::Append(topic) => Inode::Append { topic: topic.id() }.encode(),
            Node::Partition(topic, partition) => Inode::Partition {
                topic: topic.id(),
                partition: partition.index(),
            }
            .encode(),
            Node::ActiveLink(topic, partition) => Inode::ActiveLink {
                topic: topic.id(),
                partition: partition.index(),
            }
            .encode(),
            Node::Stream(topic, partition) => Inode::Stream {
                topic: topic.id(),
                partition: partition.index(),
            }
            .encode(),
            Node::Segment(topic, partition, info) => {
                self.segment_inode(topic, partition, info.base_offset)
            }
        }
    }

    /// The node called `name` in directory `parent`.
    fn child(&self, parent: &Node, name: &OsStr) -> FsResult<Node> {
        let bytes = name.as_bytes();
        let missing = || FsError::missing(libc::ENOENT, format!("no {}", path_in(parent, name)));
        match parent {
            Node::Root => {
                let topic = name
                    .to_str()
                    .and_then(|name| self.store.topic(name))
                    .ok_or_else(missing)?;
                if topic.is_deleted() {
                    return Err(missing());
                }
                Ok(Node::Topic(topic))
            }
            Node::Topic(topic) => {
                if bytes == APPEND_FILE.as_bytes() {
                    return Ok(Node::Append(topic.clone()));
                }
                let partition = parse_partition_name(bytes)
                    .and_then(|i| topic.partition(i))
                    .ok_or_else(missing)?;
                Ok(Node::Partition(topic.clone(), partition))
            }
            Node::Partition(topic, partition) => {
                if bytes == ACTIVE_LINK.as_bytes() {
                    return Ok(Node::ActiveLink(topic.clone(), partition.clone()));
                }
                if bytes == STREAM_FILE.as_bytes() {
                    return Ok(Node::Stream(topic.clone(), partition.clone()));
                }
                let base = parse_segment_file_name(bytes).ok_or_else(missing)?;
                let info = partition
                    .segment(base)
                    .map_err(|error| FsError::from(error).context(path_in(parent, name)))?
                    .ok_or_else(missing)?;
                Ok(Node::Segment(topic.clone(), partition.clone(), info))
            }
            Node::Append(_) | Node::ActiveLink(..) | Node::Stream(..) | Node::Segment(..) => {
                Err(FsError::refused(
                    libc::ENOTDIR,
                    format!("{} is not a directory", parent.path()),
                ))
            }
        }
    }

    // ---- attributes ----

    fn topic_mtime_ms(topic: &Topic) -> i64 {
        topic
            .partitions()
            .iter()
            .filter_map(|p| p.last_timestamp())
            .max()
            .unwrap_or(topic.created_ms())
    }

    fn attr(&self, node: &Node) -> Attr {
        let ino = self.inode_of(node);
        let dir = |perm: u32, nlink: u32, owner: (u32, u32), mtime_ms: i64, crtime_ms: i64| {
            file_attr(
                ino,
                FileType::Directory,
                perm,
                0,
                nlink,
                owner,
                mtime_ms,
                crtime_ms,
            )
        };
        let topic_owner = |topic: &Topic| {
            let settings = topic.settings();
            (
                settings.mode & 0o777,
                (settings.owner_uid, settings.owner_gid),
            )
        };
        let (attr, ttl) = match node {
            Node::Root => {
                let topics = self.topics.read().by_id.len() as u32;
                let mtime = self.root_mtime_ms.load(Ordering::Relaxed);
                // Sticky and world-writable like /tmp: anyone may create a topic, only its
                // owner may delete it. Without allow_other only the mounting user gets in.
                (
                    dir(0o1777, 2 + topics, self.root_owner, mtime, mtime),
                    self.settings.attr_ttl,
                )
            }
            Node::Topic(topic) => {
                let (mode, owner) = topic_owner(topic);
                let nlink = 2 + topic.settings().partitions;
                let attr = dir(
                    mode,
                    nlink,
                    owner,
                    Self::topic_mtime_ms(topic),
                    topic.created_ms(),
                );
                (attr, self.settings.attr_ttl)
            }
            Node::Append(topic) => {
                let (mode, owner) = topic_owner(topic);
                let attr = Self::append_attr(ino, topic, mode, owner);
                (attr, self.settings.attr_ttl)
            }
            Node::Partition(topic, partition) => {
                let (mode, owner) = topic_owner(topic);
                let mtime = partition.last_timestamp().unwrap_or(topic.created_ms());
                (
                    dir(mode, 2, owner, mtime, topic.created_ms()),
                    self.settings.attr_ttl,
                )
            }
            Node::ActiveLink(topic, partition) => {
                let (_, owner) = topic_owner(topic);
                let attr = Self::active_link_attr(ino, topic, partition, owner);
                (attr, self.settings.attr_ttl)
            }
            Node::Stream(topic, partition) => {
                let (mode, owner) = topic_owner(topic);
                // It grows with every append: never cached.
                (
                    Self::stream_attr(ino, topic, partition, mode, owner),
                    Duration::ZERO,
                )
            }
            Node::Segment(topic, partition, info) => {
                return self.segment_attr(ino, topic, info, partition.last_timestamp(), 1);
            }
        };
        Attr { attr, ttl }
    }

    /// A topic's `append` file: write-only, always empty.
    fn append_attr(ino: u64, topic: &Topic, mode: u32, owner: (u32, u32)) -> FileAttr {
        file_attr(
            ino,
            FileType::RegularFile,
            mode & 0o222,
            0,
            1,
            owner,
            Self::topic_mtime_ms(topic),
            topic.created_ms(),
        )
    }

    /// A partition's `active` symlink, whose target names the active segment.
    fn active_link_attr(
        ino: u64,
        topic: &Topic,
        partition: &Partition,
        owner: (u32, u32),
    ) -> FileAttr {
        let mtime = partition.last_timestamp().unwrap_or(topic.created_ms());
        let target_len = segment_file_name(partition.active_base()).len() as u64;
        file_attr(
            ino,
            FileType::Symlink,
            0o777,
            target_len,
            1,
            owner,
            mtime,
            topic.created_ms(),
        )
    }

    /// A partition's `stream`: as long as every message it ever held.
    fn stream_attr(
        ino: u64,
        topic: &Topic,
        partition: &Partition,
        mode: u32,
        owner: (u32, u32),
    ) -> FileAttr {
        let mtime = partition.last_timestamp().unwrap_or(topic.created_ms());
        let mut attr = file_attr(
            ino,
            FileType::RegularFile,
            mode & 0o444,
            partition.stream_end(),
            1,
            owner,
            mtime,
            topic.created_ms(),
        );
        attr.blocks = attr.size.div_ceil(512);
        // `tail` reads a file no bigger than one st_blksize from byte 0, which is ENXIO once
        // retention has removed the first messages: a small block lets it seek to the end
        // instead.
        attr.blksize = STREAM_BLOCK_BYTES;
        attr
    }

    fn segment_attr(
        &self,
        ino: u64,
        topic: &Topic,
        info: &SegmentInfo,
        partition_mtime: Option<i64>,
        nlink: u32,
    ) -> Attr {
        let settings = topic.settings();
        let owner = (settings.owner_uid, settings.owner_gid);
        // Sealed segments are immutable (read-only); the active one is append-only.
        let (perm, ttl) = if info.sealed {
            (settings.mode & 0o444, self.settings.sealed_segment_ttl)
        } else {
            (settings.mode & 0o666, Duration::ZERO)
        };
        let mtime = info
            .last_timestamp
            .or(partition_mtime)
            .unwrap_or(topic.created_ms());
        let crtime = info.first_timestamp.unwrap_or(mtime);
        let mut attr = file_attr(
            ino,
            FileType::RegularFile,
            perm,
            info.bytes,
            nlink,
            owner,
            mtime,
            crtime,
        );
        attr.blocks = info.bytes.div_ceil(512);
        Attr { attr, ttl }
    }

    fn entry(&self, node: &Node) -> Entry {
        let Attr { attr, ttl } = self.attr(node);
        Entry {
            attr,
            attr_ttl: ttl,
            entry_ttl: self.settings.entry_ttl,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let parent = self.resolve(parent)?;
        let node = self.child(&parent, name)?;
        Ok(self.entry(&node))
    }

    /// Attributes of `ino`, or of a segment removed while open, as its descriptors see it.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<Attr> {
        match self.resolve(ino) {
            Ok(node) => Ok(self.attr(&node)),
            Err(error) if error.errno() == libc::ENOENT => {
                self.removed_segment_attr(ino, fh).unwrap_or(Err(error))
            }
            Err(error) => Err(error),
        }
    }

    pub fn setattr(&self, ino: u64, changes: &AttrChanges) -> FsResult<Attr> {
        let node = self.resolve(ino)?;
        let path = node.path();
        let ownership = changes.mode.is_some() || changes.uid.is_some() || changes.gid.is_some();
        let explicit_time = [changes.atime, changes.mtime]
            .iter()
            .any(|t| matches!(t, Some(TimeOrNow::SpecificTime(_))));
        let times = changes.atime.is_some() || changes.mtime.is_some();
        let refuse = |why: &str| Err(FsError::refused(libc::EPERM, format!("{path}: {why}")));
        match &node {
            Node::Topic(topic) => {
                if changes.size.is_some() {
                    return Err(FsError::refused(
                        libc::EISDIR,
                        format!("{path} is a directory"),
                    ));
                }
                if ownership {
                    self.change_topic(topic, |settings| {
                        if let Some(mode) = changes.mode {
                            settings.mode = mode & 0o777;
                        }
                        settings.owner_uid = changes.uid.unwrap_or(settings.owner_uid);
                        settings.owner_gid = changes.gid.unwrap_or(settings.owner_gid);
                        Ok(())
                    })?;
                }
            }
            Node::Root | Node::Partition(..) | Node::ActiveLink(..) if ownership => {
                return refuse("permissions and owner are those of the topic directory");
            }
            Node::Root | Node::Partition(..) if changes.size.is_some() => {
                return Err(FsError::refused(
                    libc::EISDIR,
                    format!("{path} is a directory"),
                ));
            }
            Node::Root | Node::Partition(..) | Node::ActiveLink(..) => {}
            Node::Append(_) => {
                if ownership {
                    return refuse("permissions and owner are those of the topic directory");
                }
                // `echo x > append` truncates first; there is nothing to cut.
                if changes.size.is_some_and(|size| size != 0) {
                    return refuse("append is write-only and has no bytes to truncate");
                }
            }
            Node::Segment(_, _, info) if info.sealed => {
                if ownership || changes.size.is_some() || times {
                    return refuse("sealed segments are immutable");
                }
            }
            Node::Stream(..) => {
                if ownership || changes.size.is_some() || times {
                    return refuse("stream is read-only: it is the partition's messages");
                }
            }
            Node::Segment(..) => {
                if changes.size.is_some() {
                    return refuse("the active segment is append-only and cannot be truncated");
                }
                if ownership {
                    return refuse("permissions and owner are those of the topic directory");
                }
                if explicit_time {
                    return refuse("the active segment's times are those of its messages");
                }
            }
        }
        Ok(self.attr(&self.resolve(ino)?))
    }

    /// Reads, changes and writes back a topic's settings (persisted by the store).
    fn change_topic(
        &self,
        topic: &Topic,
        change: impl FnOnce(&mut TopicSettings) -> FsResult<()>,
    ) -> FsResult<()> {
        let _serialized = self.settings_update.lock();
        let mut settings = topic.settings();
        change(&mut settings)?;
        Ok(self.store.update_topic(topic, settings)?)
    }

    // ---- topics: mkdir and rmdir ----

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        let parent = self.resolve(parent)?;
        match &parent {
            Node::Root => {}
            Node::Topic(topic) => {
                return Err(FsError::refused(
                    libc::EPERM,
                    format!(
                        "{}: partitions are added by raising user.partitions, not by mkdir",
                        topic.name()
                    ),
                ))
            }
            _ => {
                return Err(FsError::refused(
                    libc::EPERM,
                    format!(
                        "{}: directories are topics, made at the top of the mount",
                        parent.path()
                    ),
                ))
            }
        }
        let name = name.to_str().ok_or_else(|| {
            FsError::refused(
                libc::EINVAL,
                format!(
                    "topic name {:?} is not 1-249 characters of [A-Za-z0-9._-]",
                    name.to_string_lossy()
                ),
            )
        })?;
        let defaults = &self.settings.topic_defaults;
        let settings = TopicSettings {
            partitions: defaults.partitions,
            framing: defaults.framing,
            key_separator: defaults.key_separator.clone(),
            retention_ms: defaults.retention_ms,
            retention_bytes: defaults.retention_bytes,
            owner_uid: uid,
            owner_gid: gid,
            mode: mode & !umask & 0o777,
        };
        let topic = self.store.create_topic(name, settings)?;
        self.topics.write().insert(topic.clone());
        self.root_mtime_ms.store(now_ms(), Ordering::Relaxed);
        Ok(self.entry(&Node::Topic(topic)))
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr, uid: u32) -> FsResult<()> {
        let parent = self.resolve(parent)?;
        match self.child(&parent, name)? {
            Node::Topic(topic) => {
                let owner = topic.settings().owner_uid;
                if uid != 0 && uid != owner {
                    return Err(FsError::refused(
                        libc::EPERM,
                        format!(
                            "topic {} belongs to uid {owner}; uid {uid} may not delete it",
                            topic.name()
                        ),
                    ));
                }
                self.store.delete_topic(topic.name())?;
                self.topics.write().by_id.remove(&topic.id());
                self.root_mtime_ms.store(now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Node::Partition(topic, partition) => Err(FsError::refused(
                libc::EPERM,
                format!(
                    "{}/{}: partitions cannot be removed one by one; rmdir the topic",
                    topic.name(),
                    partition.index()
                ),
            )),
            node => Err(FsError::refused(
                libc::ENOTDIR,
                format!("{} is not a directory", node.path()),
            )),
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let parent = self.resolve(parent)?;
        let node = self.child(&parent, name)?;
        let why = match node {
            Node::Segment(..) => {
                "segments cannot be removed one by one; retention removes old segments"
            }
            Node::Append(_) | Node::ActiveLink(..) | Node::Stream(..) => {
                "it is part of the topic and goes with it (rmdir the topic)"
            }
            Node::Root | Node::Topic(_) | Node::Partition(..) => {
                return Err(FsError::refused(
                    libc::EISDIR,
                    format!("{} is a directory", node.path()),
                ))
            }
        };
        Err(FsError::refused(
            libc::EPERM,
            format!("{}: {why}", node.path()),
        ))
    }

    /// mknod, create, symlink and link: commitfs makes every file itself.
    pub fn refuse_new_name(&self, parent: u64, name: &OsStr) -> FsResult<Infallible> {
        let parent = self.resolve(parent)?;
        Err(FsError::refused(
            libc::EPERM,
            format!(
                "{}: files cannot be created; messages are appended to an active segment or a topic's append file",
                path_in(&parent, name)
            ),
        ))
    }

    pub fn rename(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let parent = self.resolve(parent)?;
        let node = self.child(&parent, name)?;
        Err(FsError::refused(
            libc::EPERM,
            format!("{}: nothing is renamed in commitfs: segments are immutable and topics keep their names", node.path()),
        ))
    }

    // ---- the file system as a whole ----

    /// The space of the file system that holds the data directory.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let dir = self.store.dir();
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            FsError::internal(format!("data directory {} holds a NUL byte", dir.display()))
        })?;
        let stats = rustix::fs::statvfs(&path).map_err(|errno| {
            let error = std::io::Error::from(errno);
            FsError::internal(format!("statvfs {}: {error}", dir.display()))
        })?;
        Ok(StatFs {
            blocks: stats.f_blocks,
            bfree: stats.f_bfree,
            bavail: stats.f_bavail,
            files: stats.f_files,
            ffree: stats.f_ffree,
            bsize: stats.f_bsize as u32,
            namelen: 255,
            frsize: stats.f_frsize as u32,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn file_attr(
    ino: u64,
    kind: FileType,
    perm: u32,
    size: u64,
    nlink: u32,
    (uid, gid): (u32, u32),
    mtime_ms: i64,
    crtime_ms: i64,
) -> FileAttr {
    let mtime = system_time(mtime_ms);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 0,
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: system_time(crtime_ms),
        kind,
        perm: perm as u16,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: PREFERRED_IO_BYTES,
        flags: 0,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The settings the core's tests run with: lines framing, TTLs of 1 s (60 s for sealed
/// segments), new topics of `partitions` partitions keyed before `key_separator`.
#[cfg(test)]
fn test_settings(partitions: u32, key_separator: Option<&[u8]>) -> FsSettings {
    FsSettings {
        entry_ttl: Duration::from_secs(1),
        attr_ttl: Duration::from_secs(1),
        sealed_segment_ttl: Duration::from_secs(60),
        topic_defaults: TopicDefaults {
            partitions,
            framing: Framing::Lines,
            key_separator: key_separator.map(<[u8]>::to_vec),
            retention_ms: None,
            retention_bytes: None,
        },
    }
}

mod model_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod readers_tests;
