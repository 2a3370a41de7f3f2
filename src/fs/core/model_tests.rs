//! A reference-model test of the filesystem surface (issue 9), after mountpoint-s3's reftests:
//! proptest draws random sequences of mkdir, appends through `active`, segment names and
//! `append` (lines and raw framing, keys, partial lines, lines over the limit), reads at
//! random positions, getxattr and setxattr, rmdir, remounts and kill -9, and runs each against
//! [`CommitFs`] over a real store and against an in-memory model of the contract
//! (`/work/shared/DESIGN.md`). After every step the whole tree is compared: listings, sizes,
//! bytes, links, offsets, settings and key lookups; every operation's result or errno too.
//!
//! `COMMITFS_MODEL_CASES` sets the number of cases (default 24, a few seconds).

#![cfg(test)]

use std::collections::BTreeMap;
use std::ffi::OsStr;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use tempfile::TempDir;

use super::*;
use crate::fs::xattr::XattrReply;
use crate::store::{murmur2, StoreConfig};

const SEGMENT_MESSAGES: usize = 3;
const MAX_MESSAGE: usize = 48;
const NAMES: [&str; 3] = ["a", "b", "c.d"];
const UIDS: [u32; 3] = [0, 1000, 1001];
const SEPARATORS: [&[u8]; 4] = [b":", b"::", b"\t", b""];
const KEYS: u8 = 4;
const APPEND: i32 = libc::O_WRONLY | libc::O_APPEND;

// ---- the operations ----

/// Which file a writer opens. Indices are taken modulo what exists when the step runs.
#[derive(Clone, Debug)]
enum Target {
    Append,
    /// Through the partition's `active` link (READLINK, then OPEN by the same thread).
    Active(usize),
    /// A segment by its name: refused unless it is the active one.
    Segment(usize, usize),
}

/// A piece of a write: an optional key, a body of `body` bytes, and a newline or not.
#[derive(Clone, Debug)]
struct Piece {
    key: Option<u8>,
    body: usize,
    newline: bool,
}

#[derive(Clone, Debug)]
enum Query {
    StartOffset,
    EndOffset,
    Offset(usize),
    BadOffset,
    FirstTime,
    PartitionKey(u8),
    TopicKey(u8),
    EmptyKey,
    TopicOffsets(u8),
}

#[derive(Clone, Debug)]
enum Setting {
    Partitions(u32),
    Framing(Framing),
    Separator(usize),
    RetentionMs(Option<u64>),
}

#[derive(Clone, Debug)]
enum Op {
    Mkdir {
        name: usize,
        uid: usize,
    },
    MkdirBad(usize),
    Rmdir {
        name: usize,
        uid: usize,
    },
    Open {
        name: usize,
        target: Target,
    },
    Write {
        handle: usize,
        pieces: Vec<Piece>,
    },
    /// `close()` by a process that shares the descriptor but did not open it: no commit.
    ChildClose {
        handle: usize,
    },
    Close {
        handle: usize,
    },
    Read {
        name: usize,
        partition: usize,
        segment: usize,
        offset: usize,
        len: usize,
    },
    Get {
        name: usize,
        partition: usize,
        query: Query,
    },
    Set {
        name: usize,
        setting: Setting,
    },
    Fsync,
    Remount,
    Kill,
}

fn piece() -> impl Strategy<Value = Piece> {
    let body = prop_oneof![12 => 0usize..12, 1 => 30usize..60];
    (
        prop::option::weighted(0.6, 0..KEYS),
        body,
        prop::bool::weighted(0.7),
    )
        .prop_map(|(key, body, newline)| Piece { key, body, newline })
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => Just(Target::Append),
        2 => (0usize..4).prop_map(Target::Active),
        1 => (0usize..4, 0usize..8).prop_map(|(p, s)| Target::Segment(p, s)),
    ]
}

fn query() -> impl Strategy<Value = Query> {
    prop_oneof![
        Just(Query::StartOffset),
        Just(Query::EndOffset),
        (0usize..12).prop_map(Query::Offset),
        Just(Query::BadOffset),
        Just(Query::FirstTime),
        (0..KEYS).prop_map(Query::PartitionKey),
        (0..KEYS).prop_map(Query::TopicKey),
        Just(Query::EmptyKey),
        (0..KEYS).prop_map(Query::TopicOffsets),
    ]
}

fn setting() -> impl Strategy<Value = Setting> {
    prop_oneof![
        3 => (0u32..5).prop_map(Setting::Partitions),
        2 => prop_oneof![Just(Framing::Lines), Just(Framing::Raw)].prop_map(Setting::Framing),
        2 => (0..SEPARATORS.len()).prop_map(Setting::Separator),
        1 => prop::option::of(1u64 << 40..1 << 41).prop_map(Setting::RetentionMs),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        4 => (name.clone(), 0..UIDS.len()).prop_map(|(name, uid)| Op::Mkdir { name, uid }),
        1 => (0usize..3).prop_map(Op::MkdirBad),
        1 => (name.clone(), 0..UIDS.len()).prop_map(|(name, uid)| Op::Rmdir { name, uid }),
        8 => (name.clone(), target()).prop_map(|(name, target)| Op::Open { name, target }),
        14 => (0usize..4, prop::collection::vec(piece(), 1..5))
            .prop_map(|(handle, pieces)| Op::Write { handle, pieces }),
        2 => (0usize..4).prop_map(|handle| Op::ChildClose { handle }),
        3 => (0usize..4).prop_map(|handle| Op::Close { handle }),
        4 => (name.clone(), 0usize..4, 0usize..8, 0usize..200, 0usize..200).prop_map(
            |(name, partition, segment, offset, len)| Op::Read { name, partition, segment, offset, len }
        ),
        4 => (name.clone(), 0usize..4, query())
            .prop_map(|(name, partition, query)| Op::Get { name, partition, query }),
        3 => (name, setting()).prop_map(|(name, setting)| Op::Set { name, setting }),
        1 => Just(Op::Fsync),
        1 => Just(Op::Remount),
        1 => Just(Op::Kill),
    ]
}

// ---- the model ----

#[derive(Clone, Debug)]
struct Message {
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    /// Store order, for "newest" and "oldest first" across partitions.
    order: u64,
}

#[derive(Debug)]
struct TopicModel {
    /// Never reused, like the store's topic ids: a descriptor of a deleted topic never
    /// reaches a new topic of the same name.
    id: u64,
    owner: u32,
    partitions: Vec<Vec<Message>>,
    framing: Framing,
    separator: Option<Vec<u8>>,
    retention_ms: Option<u64>,
    /// Keyless messages to `append` go to the partitions in turn, from 0 at every mount.
    next_keyless: u32,
}

/// Where a descriptor's messages go.
#[derive(Clone, Copy, Debug)]
enum Destination {
    Partition(usize),
    ByKey,
}

#[derive(Debug)]
struct HandleModel {
    fh: u64,
    pid: u32,
    topic: u64,
    destination: Destination,
    /// The unfinished last line (`lines` framing).
    partial: Vec<u8>,
    /// The rest of a line the descriptor refused is refused too, up to its `\n`.
    dropping: bool,
}

#[derive(Default)]
struct Model {
    topics: BTreeMap<String, TopicModel>,
    /// Every topic's framing by id, kept after it is deleted: its descriptors frame by it.
    framing: BTreeMap<u64, Framing>,
    handles: Vec<HandleModel>,
    next_id: u64,
    next_order: u64,
    next_pid: u32,
    next_body: u64,
}

/// A message's key: the bytes before the first separator.
fn key_of(payload: &[u8], separator: Option<&[u8]>) -> Option<Vec<u8>> {
    let separator = separator?;
    payload
        .windows(separator.len())
        .position(|window| window == separator)
        .map(|at| payload[..at].to_vec())
}

fn segment_bases(messages: &[Message]) -> Vec<usize> {
    let active = messages.len() / SEGMENT_MESSAGES * SEGMENT_MESSAGES;
    (0..=active).step_by(SEGMENT_MESSAGES).collect()
}

fn segment_bytes(messages: &[Message], base: usize) -> Vec<u8> {
    let end = messages.len().min(base + SEGMENT_MESSAGES);
    messages[base..end]
        .iter()
        .flat_map(|m| m.payload.iter().copied())
        .collect()
}

impl Model {
    fn topic_by_id(&mut self, id: u64) -> Option<&mut TopicModel> {
        self.topics.values_mut().find(|topic| topic.id == id)
    }

    /// Stores `payloads` through `destination` in one batch per partition, as the core does.
    fn store(&mut self, topic: u64, destination: Destination, payloads: Vec<Vec<u8>>) {
        let mut order = self.next_order;
        let topic = self.topic_by_id(topic).expect("a live topic");
        let count = topic.partitions.len() as u32;
        let mut groups: Vec<(usize, Vec<Message>)> = Vec::new();
        for payload in payloads {
            let key = key_of(&payload, topic.separator.as_deref());
            let partition = match (destination, &key) {
                (Destination::Partition(p), _) => p,
                (Destination::ByKey, Some(key)) => ((murmur2(key) & 0x7fff_ffff) % count) as usize,
                (Destination::ByKey, None) => {
                    topic.next_keyless = topic.next_keyless.wrapping_add(1);
                    (topic.next_keyless.wrapping_sub(1) % count) as usize
                }
            };
            let message = Message {
                payload,
                key,
                order: 0,
            };
            match groups.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, group)) => group.push(message),
                None => groups.push((partition, vec![message])),
            }
        }
        for (partition, group) in groups {
            for mut message in group {
                message.order = order;
                order += 1;
                topic.partitions[partition].push(message);
            }
        }
        self.next_order = order;
    }

    /// One `write(2)` of `data` through handle `h`, per the contract; the store's part
    /// included. A descriptor of a deleted topic frames by the topic's last settings and
    /// gets `ENOENT` once it has a message to store (an oversize one is `EFBIG` first).
    fn write(&mut self, h: usize, data: &[u8]) -> Result<u32, i32> {
        let (topic_id, destination) = (self.handles[h].topic, self.handles[h].destination);
        let live = self.topics.values().any(|t| t.id == topic_id);
        let handle = &mut self.handles[h];
        let payloads = match self.framing[&topic_id] {
            Framing::Lines => {
                let before = (handle.partial.clone(), handle.dropping);
                let payloads = lines_of_write(handle, data)?;
                if !live && !payloads.is_empty() {
                    (handle.partial, handle.dropping) = before;
                    fail_write(handle, data);
                    return Err(libc::ENOENT);
                }
                payloads
            }
            Framing::Raw => {
                handle.dropping = false;
                // A line held from before the switch to raw goes first, as written.
                let held = std::mem::take(&mut handle.partial);
                if !held.is_empty() {
                    if !live {
                        return Err(libc::ENOENT);
                    }
                    self.store(topic_id, destination, vec![[held, b"\n".to_vec()].concat()]);
                }
                if data.len() > MAX_MESSAGE {
                    return Err(libc::EFBIG);
                }
                if !live {
                    return Err(libc::ENOENT);
                }
                vec![data.to_vec()]
            }
        };
        if !payloads.is_empty() {
            self.store(topic_id, destination, payloads);
        }
        Ok(data.len() as u32)
    }

    /// FLUSH by the opener: commits the partial line with a `\n`. Returns its result.
    fn flush(&mut self, h: usize) -> Result<(), i32> {
        let handle = &mut self.handles[h];
        handle.dropping = false;
        if handle.partial.is_empty() {
            return Ok(());
        }
        let (topic, destination) = (handle.topic, handle.destination);
        if self.topic_by_id(topic).is_none() {
            return Err(libc::ENOENT);
        }
        let line = [std::mem::take(&mut self.handles[h].partial), b"\n".to_vec()].concat();
        self.store(topic, destination, vec![line]);
        Ok(())
    }

    fn body(&mut self, len: usize) -> Vec<u8> {
        self.next_body += 1;
        let mut body = self.next_body.to_string().into_bytes();
        body.resize(body.len().max(len), b'x');
        body
    }

    /// The bytes of one write: its pieces, keyed with the topic's separator (or `:`).
    fn render(&mut self, pieces: &[Piece], separator: Option<&[u8]>) -> Vec<u8> {
        let mut data = Vec::new();
        for piece in pieces {
            if let Some(key) = piece.key {
                data.extend_from_slice(format!("k{key}").as_bytes());
                data.extend_from_slice(separator.unwrap_or(b":"));
            }
            let body = self.body(piece.body);
            data.extend_from_slice(&body);
            if piece.newline {
                data.push(b'\n');
            }
        }
        data
    }
}

/// A `lines` write's complete messages, or its errno; updates the descriptor's partial line.
/// A refused write stores nothing, drops the partial line it would have completed, and the
/// line it leaves unfinished is refused up to its end: no fragment is ever stored.
fn lines_of_write(handle: &mut HandleModel, data: &[u8]) -> Result<Vec<Vec<u8>>, i32> {
    let mut rest = data;
    if handle.dropping {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(libc::EFBIG);
        };
        rest = &rest[end + 1..];
    }
    let joined = [handle.partial.as_slice(), rest].concat();
    let complete = joined
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    let (lines, tail) = joined.split_at(complete);
    let payloads: Vec<Vec<u8>> = lines
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let too_long = payloads.iter().any(|line| line.len() > MAX_MESSAGE)
        || !tail.is_empty() && tail.len() + 1 > MAX_MESSAGE;
    if too_long {
        fail_write(handle, data);
        return Err(libc::EFBIG);
    }
    handle.partial = tail.to_vec();
    handle.dropping = false;
    Ok(payloads)
}

fn fail_write(handle: &mut HandleModel, data: &[u8]) {
    handle.partial.clear();
    handle.dropping = !data.ends_with(b"\n");
}

// ---- the filesystem under test ----

struct Harness {
    fs: CommitFs,
    store: Arc<Store>,
    dir: TempDir,
}

fn store_config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 16 << 10,
        segment_messages: SEGMENT_MESSAGES as u32,
        max_message_bytes: MAX_MESSAGE,
        index_slots: 64,
        index_entries: 4096,
        ..StoreConfig::default()
    }
}

fn open_fs(dir: TempDir) -> Harness {
    let store = Store::open(dir.path(), store_config()).expect("open the store");
    Harness {
        fs: CommitFs::new(store.clone(), test_settings(2, Some(b":"))),
        store,
        dir,
    }
}

fn errno_of<T>(result: FsResult<T>) -> Result<T, i32> {
    result.map_err(|error| error.errno())
}

impl Harness {
    fn lookup(&self, path: &str) -> Result<u64, i32> {
        path.split('/').try_fold(ROOT, |parent, name| {
            errno_of(self.fs.lookup(parent, OsStr::new(name))).map(|entry| entry.attr.ino.0)
        })
    }

    fn list(&self, ino: u64) -> Vec<String> {
        struct Names(Vec<String>);
        impl DirectoryReplier for Names {
            fn add(&mut self, _: u64, _: u64, _: FileType, name: &OsStr) -> bool {
                self.0.push(name.to_string_lossy().into_owned());
                false
            }
        }
        let fh = self.fs.opendir(ino).expect("opendir");
        let mut names = Names(Vec::new());
        self.fs.readdir(fh, 0, &mut names).expect("readdir");
        self.fs.releasedir(fh).expect("releasedir");
        names.0
    }

    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, i32> {
        match errno_of(self.fs.getxattr(ino, OsStr::from_bytes(name), 1 << 16))? {
            XattrReply::Value(value) => Ok(value),
            XattrReply::Length(_) => panic!("asked for the value"),
        }
    }

    /// Opens, reads `len` bytes at `offset`, releases.
    fn read(&self, ino: u64, offset: usize, len: usize) -> Result<Vec<u8>, i32> {
        let fh = errno_of(self.fs.open(ino, libc::O_RDONLY, 1))?.fh;
        let bytes = errno_of(self.fs.read(fh, offset as u64, len as u32, <[u8]>::to_vec));
        self.fs.release(fh).expect("release a reader");
        bytes
    }
}

// ---- running a case ----

struct Case {
    fs: Option<Harness>,
    model: Model,
}

/// Fails the case when the filesystem's answer is not the model's; `what` names the step.
fn same<T: PartialEq + std::fmt::Debug>(
    actual: T,
    expected: T,
    what: impl FnOnce() -> String,
) -> Result<(), TestCaseError> {
    if actual == expected {
        return Ok(());
    }
    Err(TestCaseError::fail(format!(
        "{}: the filesystem gave {actual:?}, the model {expected:?}",
        what()
    )))
}

impl Case {
    fn h(&self) -> &Harness {
        self.fs.as_ref().expect("mounted")
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Mkdir { name, uid } => self.mkdir(NAMES[*name], UIDS[*uid]),
            Op::MkdirBad(which) => {
                let long = "x".repeat(250);
                let name = [".hidden", "sp ace", long.as_str()][*which];
                let got = errno_of(self.h().fs.mkdir(ROOT, OsStr::new(name), 0o755, 0, 0, 0));
                same(got.map(|_| ()), Err(libc::EINVAL), || {
                    format!("mkdir {name:?}")
                })?;
                Ok(())
            }
            Op::Rmdir { name, uid } => self.rmdir(NAMES[*name], UIDS[*uid]),
            Op::Open { name, target } => self.open(NAMES[*name], target),
            Op::Write { handle, pieces } => self.write(*handle, pieces),
            Op::ChildClose { handle } => {
                if let Some(h) = self.handle_index(*handle) {
                    let (fh, pid) = (self.model.handles[h].fh, self.model.handles[h].pid);
                    same(errno_of(self.h().fs.flush(fh, pid + 1)), Ok(()), || {
                        "a child's close".to_owned()
                    })?;
                }
                Ok(())
            }
            Op::Close { handle } => self.close(*handle),
            Op::Read {
                name,
                partition,
                segment,
                offset,
                len,
            } => self.read(NAMES[*name], *partition, *segment, *offset, *len),
            Op::Get {
                name,
                partition,
                query,
            } => self.get(NAMES[*name], *partition, query),
            Op::Set { name, setting } => self.set(NAMES[*name], setting),
            Op::Fsync => {
                same(errno_of(self.h().fs.fsync()), Ok(()), || "fsync".to_owned())?;
                Ok(())
            }
            Op::Remount => self.remount(),
            Op::Kill => {
                self.kill();
                Ok(())
            }
        }
    }

    fn mkdir(&mut self, name: &str, uid: u32) -> Result<(), TestCaseError> {
        let got = errno_of(
            self.h()
                .fs
                .mkdir(ROOT, OsStr::new(name), 0o755, 0o022, uid, uid),
        );
        let expected = if self.model.topics.contains_key(name) {
            Err(libc::EEXIST)
        } else {
            self.model.next_id += 1;
            let topic = TopicModel {
                id: self.model.next_id,
                owner: uid,
                partitions: vec![Vec::new(); 2],
                framing: Framing::Lines,
                separator: Some(b":".to_vec()),
                retention_ms: None,
                next_keyless: 0,
            };
            self.model.framing.insert(topic.id, topic.framing);
            self.model.topics.insert(name.to_owned(), topic);
            Ok(())
        };
        same(got.map(|_| ()), expected, || {
            format!("mkdir {name} as uid {uid}")
        })?;
        // A directory inside a topic is never a topic.
        if let Ok(topic) = self.h().lookup(name) {
            let nested = self
                .h()
                .fs
                .mkdir(topic, OsStr::new("x"), 0o755, 0, uid, uid);
            same(errno_of(nested).map(|_| ()), Err(libc::EPERM), || {
                format!("mkdir {name}/x")
            })?;
        }
        Ok(())
    }

    fn rmdir(&mut self, name: &str, uid: u32) -> Result<(), TestCaseError> {
        let got = errno_of(self.h().fs.rmdir(ROOT, OsStr::new(name), uid));
        let expected = match self.model.topics.get(name) {
            None => Err(libc::ENOENT),
            Some(topic) if uid != 0 && uid != topic.owner => Err(libc::EPERM),
            Some(_) => {
                self.model.topics.remove(name);
                Ok(())
            }
        };
        same(got, expected, || format!("rmdir {name} as uid {uid}"))?;
        Ok(())
    }

    fn open(&mut self, name: &str, target: &Target) -> Result<(), TestCaseError> {
        let Some(topic) = self.model.topics.get(name) else {
            same(self.h().lookup(name), Err(libc::ENOENT), || {
                format!("lookup {name}")
            })?;
            return Ok(());
        };
        let (topic_id, partitions) = (topic.id, topic.partitions.len());
        self.model.next_pid += 1;
        let pid = self.model.next_pid;
        let (destination, got) = match *target {
            Target::Append => {
                let ino = self.h().lookup(&format!("{name}/append")).expect("append");
                (
                    Destination::ByKey,
                    errno_of(self.h().fs.open(ino, APPEND, pid)),
                )
            }
            Target::Active(p) => {
                let p = p % partitions;
                let link = self
                    .h()
                    .lookup(&format!("{name}/{p}/active"))
                    .expect("active");
                let target = errno_of(self.h().fs.readlink(link, pid)).expect("readlink");
                let base = topic.partitions[p].len() / SEGMENT_MESSAGES * SEGMENT_MESSAGES;
                same(
                    &target,
                    &segment_file_name(base as u64).into_bytes(),
                    || format!("{name}/{p}/active"),
                )?;
                let path = format!("{name}/{p}/{}", String::from_utf8_lossy(&target));
                let ino = self.h().lookup(&path).expect("the active segment");
                (
                    Destination::Partition(p),
                    errno_of(self.h().fs.open(ino, APPEND, pid)),
                )
            }
            Target::Segment(p, s) => {
                let p = p % partitions;
                let bases = segment_bases(&topic.partitions[p]);
                let base = bases[s % bases.len()];
                let path = format!("{name}/{p}/{}", segment_file_name(base as u64));
                let ino = self.h().lookup(&path).expect("a segment");
                let got = errno_of(self.h().fs.open(ino, APPEND, pid));
                if base != *bases.last().unwrap() {
                    same(got.map(|o| o.fh), Err(libc::EPERM), || {
                        format!("open {path} for appending")
                    })?;
                    return Ok(());
                }
                (Destination::Partition(p), got)
            }
        };
        let fh = got
            .map_err(|errno| TestCaseError::fail(format!("open: errno {errno}")))?
            .fh;
        self.model.handles.push(HandleModel {
            fh,
            pid,
            topic: topic_id,
            destination,
            partial: Vec::new(),
            dropping: false,
        });
        Ok(())
    }

    fn handle_index(&self, pick: usize) -> Option<usize> {
        let count = self.model.handles.len();
        (count > 0).then(|| pick % count)
    }

    fn write(&mut self, pick: usize, pieces: &[Piece]) -> Result<(), TestCaseError> {
        let Some(h) = self.handle_index(pick) else {
            return Ok(());
        };
        let topic = self.model.handles[h].topic;
        let separator = self
            .model
            .topic_by_id(topic)
            .and_then(|t| t.separator.clone());
        let data = self.model.render(pieces, separator.as_deref());
        let got = errno_of(self.h().fs.write(self.model.handles[h].fh, &data));
        let expected = self.model.write(h, &data);
        same(got, expected, || {
            format!("write {:?}", String::from_utf8_lossy(&data))
        })?;
        Ok(())
    }

    fn close(&mut self, pick: usize) -> Result<(), TestCaseError> {
        let Some(h) = self.handle_index(pick) else {
            return Ok(());
        };
        self.close_handle(h)?;
        self.model.handles.remove(h);
        Ok(())
    }

    /// `close()` by the opener (FLUSH), then the last close (RELEASE).
    fn close_handle(&mut self, h: usize) -> Result<(), TestCaseError> {
        let (fh, pid) = (self.model.handles[h].fh, self.model.handles[h].pid);
        let flushed = errno_of(self.h().fs.flush(fh, pid));
        let expected = self.model.flush(h);
        same(flushed, expected, || format!("close (flush) of handle {h}"))?;
        // RELEASE tries a partial line that FLUSH could not store once more.
        same(errno_of(self.h().fs.release(fh)), expected, || {
            format!("release of handle {h}")
        })?;
        Ok(())
    }

    fn read(
        &self,
        name: &str,
        partition: usize,
        segment: usize,
        offset: usize,
        len: usize,
    ) -> Result<(), TestCaseError> {
        let Some(topic) = self.model.topics.get(name) else {
            return Ok(());
        };
        let p = partition % topic.partitions.len();
        let messages = &topic.partitions[p];
        let bases = segment_bases(messages);
        let base = bases[segment % bases.len()];
        let bytes = segment_bytes(messages, base);
        let offset = offset % (bytes.len() + 4);
        let expected = bytes[offset.min(bytes.len())..(offset + len).min(bytes.len())].to_vec();
        let path = format!("{name}/{p}/{}", segment_file_name(base as u64));
        let ino = self.h().lookup(&path).expect("a segment");
        same(self.h().read(ino, offset, len), Ok(expected), || {
            format!("read {path} at {offset}+{len}")
        })?;
        Ok(())
    }
}

/// Expected value of a partition or topic query, from the model.
fn expected_query(topic: &TopicModel, p: usize, query: &Query) -> (Vec<u8>, Result<Vec<u8>, i32>) {
    let messages = &topic.partitions[p];
    let text = |s: String| Ok(s.into_bytes());
    let newest = |key: &[u8], partition: Option<usize>| {
        let found = (0..topic.partitions.len())
            .filter(|&q| partition.is_none_or(|only| only == q))
            .flat_map(|q| topic.partitions[q].iter())
            .filter(|m| m.key.as_deref() == Some(key))
            .max_by_key(|m| m.order);
        found.map(|m| m.payload.clone()).ok_or(libc::ENODATA)
    };
    match query {
        Query::StartOffset => (b"user.start_offset".to_vec(), text("0".into())),
        Query::EndOffset => (
            b"user.end_offset".to_vec(),
            text(messages.len().to_string()),
        ),
        Query::Offset(n) => {
            let name = format!("user.offset.{n}").into_bytes();
            if *n >= messages.len() {
                return (name, Err(libc::ENODATA));
            }
            let base = n / SEGMENT_MESSAGES * SEGMENT_MESSAGES;
            let position: usize = messages[base..*n].iter().map(|m| m.payload.len()).sum();
            let len = messages[*n].payload.len();
            let value = format!("{} {position} {len}", segment_file_name(base as u64));
            (name, text(value))
        }
        Query::BadOffset => (b"user.offset.nine".to_vec(), Err(libc::EINVAL)),
        Query::FirstTime => {
            let value = if messages.is_empty() {
                Err(libc::ENODATA)
            } else {
                text("0".into())
            };
            (b"user.time.0".to_vec(), value)
        }
        Query::PartitionKey(k) => {
            let key = format!("k{k}");
            (
                format!("user.key.{key}").into_bytes(),
                newest(key.as_bytes(), Some(p)),
            )
        }
        Query::TopicKey(k) => {
            let key = format!("k{k}");
            (
                format!("user.key.{key}").into_bytes(),
                newest(key.as_bytes(), None),
            )
        }
        Query::EmptyKey => (b"user.key.".to_vec(), newest(b"", None)),
        Query::TopicOffsets(k) => {
            let key = format!("k{k}").into_bytes();
            let mut found: Vec<(u64, String)> = Vec::new();
            for (q, partition) in topic.partitions.iter().enumerate() {
                for (offset, m) in partition.iter().enumerate() {
                    if m.key.as_deref() == Some(key.as_slice()) {
                        found.push((m.order, format!("{q} {offset}\n")));
                    }
                }
            }
            found.sort();
            let lines: String = found.into_iter().map(|(_, line)| line).collect();
            let value = if lines.is_empty() {
                Err(libc::ENODATA)
            } else {
                text(lines)
            };
            ([b"user.offsets.".as_slice(), &key].concat(), value)
        }
    }
}

impl Case {
    fn get(&self, name: &str, partition: usize, query: &Query) -> Result<(), TestCaseError> {
        let Some(topic) = self.model.topics.get(name) else {
            return Ok(());
        };
        let p = partition % topic.partitions.len();
        let (attribute, expected) = expected_query(topic, p, query);
        let on_topic = matches!(
            query,
            Query::TopicKey(_) | Query::EmptyKey | Query::TopicOffsets(_)
        );
        let path = if on_topic {
            name.to_owned()
        } else {
            format!("{name}/{p}")
        };
        let ino = self.h().lookup(&path).expect("lookup");
        let got = self.h().xattr(ino, &attribute);
        same(got, expected, || {
            format!("getxattr {path} {}", String::from_utf8_lossy(&attribute))
        })?;
        Ok(())
    }

    fn set(&mut self, name: &str, setting: &Setting) -> Result<(), TestCaseError> {
        let Some(topic) = self.model.topics.get_mut(name) else {
            return Ok(());
        };
        let (attribute, value, expected): (&str, Vec<u8>, Result<(), i32>) = match *setting {
            Setting::Partitions(n) => {
                let count = topic.partitions.len() as u32;
                // Draw around the current count: shrinking and 0 are refused.
                let wanted = (count + n).saturating_sub(2);
                let outcome = if wanted < count {
                    Err(libc::EINVAL)
                } else {
                    topic.partitions.resize(wanted as usize, Vec::new());
                    Ok(())
                };
                ("user.partitions", wanted.to_string().into_bytes(), outcome)
            }
            Setting::Framing(framing) => {
                topic.framing = framing;
                self.model.framing.insert(topic.id, framing);
                ("user.framing", framing.to_string().into_bytes(), Ok(()))
            }
            Setting::Separator(s) => {
                let separator = SEPARATORS[s];
                topic.separator = (!separator.is_empty()).then(|| separator.to_vec());
                ("user.key_separator", separator.to_vec(), Ok(()))
            }
            Setting::RetentionMs(limit) => {
                topic.retention_ms = limit;
                let value = limit.map_or("-1".to_owned(), |ms| ms.to_string());
                ("user.retention_ms", value.into_bytes(), Ok(()))
            }
        };
        let ino = self.h().lookup(name).expect("lookup");
        let got = errno_of(self.h().fs.setxattr(ino, OsStr::new(attribute), &value, 0));
        same(got, expected, || {
            format!(
                "setxattr {name} {attribute}={:?}",
                String::from_utf8_lossy(&value)
            )
        })?;
        Ok(())
    }

    /// A clean unmount (every descriptor closed first, as the kernel does) and a new mount.
    fn remount(&mut self) -> Result<(), TestCaseError> {
        while !self.model.handles.is_empty() {
            self.close_handle(0)?;
            self.model.handles.remove(0);
        }
        let Harness { fs, store, dir } = self.fs.take().expect("mounted");
        drop(fs);
        store.close().expect("close the store");
        drop(store);
        self.fs = Some(open_fs(dir));
        self.new_mount();
        Ok(())
    }

    /// kill -9: nothing more is written, descriptors and their partial lines are gone.
    fn kill(&mut self) {
        let Harness { fs, store, dir } = self.fs.take().expect("mounted");
        store.halt_without_cleanup();
        drop(fs);
        drop(store);
        self.model.handles.clear();
        self.fs = Some(open_fs(dir));
        self.new_mount();
    }

    fn new_mount(&mut self) {
        for topic in self.model.topics.values_mut() {
            topic.next_keyless = 0;
        }
    }
}

// ---- the whole tree, after every step ----

impl Case {
    fn check_tree(&self) -> Result<(), TestCaseError> {
        let h = self.h();
        let mut root = vec![".".to_owned(), "..".to_owned()];
        root.extend(self.model.topics.keys().cloned());
        same(h.list(ROOT), root, || "ls /".to_owned())?;
        for (name, topic) in &self.model.topics {
            let ino = h.lookup(name).expect("a topic");
            let attr = h.fs.getattr(ino, None).expect("getattr").attr;
            same((attr.uid, attr.perm), (topic.owner, 0o755), || {
                format!("owner and mode of {name}")
            })?;
            let mut listing = vec![".", "..", "append"]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            listing.extend((0..topic.partitions.len()).map(|p| p.to_string()));
            same(h.list(ino), listing, || format!("ls {name}"))?;
            let settings = [
                (
                    "user.partitions",
                    topic.partitions.len().to_string().into_bytes(),
                ),
                ("user.framing", topic.framing.to_string().into_bytes()),
                (
                    "user.key_separator",
                    topic.separator.clone().unwrap_or_default(),
                ),
                (
                    "user.retention_ms",
                    topic
                        .retention_ms
                        .map_or("-1".into(), |ms| ms.to_string())
                        .into_bytes(),
                ),
            ];
            for (attribute, value) in settings {
                same(h.xattr(ino, attribute.as_bytes()), Ok(value), || {
                    format!("{name} {attribute}")
                })?;
            }
            for key in 0..KEYS {
                let (attribute, expected) = expected_query(topic, 0, &Query::TopicKey(key));
                same(h.xattr(ino, &attribute), expected, || {
                    format!("{name} {}", String::from_utf8_lossy(&attribute))
                })?;
            }
            for (p, messages) in topic.partitions.iter().enumerate() {
                self.check_partition(name, p, messages)?;
            }
        }
        Ok(())
    }

    fn check_partition(
        &self,
        name: &str,
        p: usize,
        messages: &[Message],
    ) -> Result<(), TestCaseError> {
        let h = self.h();
        let dir = h.lookup(&format!("{name}/{p}")).expect("a partition");
        let bases = segment_bases(messages);
        let mut listing = vec![".".to_owned(), "..".to_owned()];
        listing.extend(bases.iter().map(|&base| segment_file_name(base as u64)));
        listing.push("active".to_owned());
        listing.push("stream".to_owned());
        same(h.list(dir), listing, || format!("ls {name}/{p}"))?;
        let number = |n: usize| Ok(n.to_string().into_bytes());
        same(
            h.xattr(dir, b"user.end_offset"),
            number(messages.len()),
            || format!("{name}/{p} end"),
        )?;
        same(h.xattr(dir, b"user.start_offset"), number(0), || {
            format!("{name}/{p} start")
        })?;
        let active = *bases.last().unwrap();
        let link = h.lookup(&format!("{name}/{p}/active")).expect("active");
        let target = errno_of(h.fs.readlink(link, u32::MAX));
        same(
            target,
            Ok(segment_file_name(active as u64).into_bytes()),
            || format!("{name}/{p}/active"),
        )?;
        for base in bases {
            let path = format!("{name}/{p}/{}", segment_file_name(base as u64));
            let ino = h.lookup(&path).expect("a segment");
            let bytes = segment_bytes(messages, base);
            let attr = h.fs.getattr(ino, None).expect("getattr").attr;
            same(attr.size, bytes.len() as u64, || format!("size of {path}"))?;
            same(h.read(ino, 0, bytes.len() + 10), Ok(bytes), || {
                format!("bytes of {path}")
            })?;
            let count = messages.len().min(base + SEGMENT_MESSAGES) - base;
            let facts = [
                ("user.base_offset", base.to_string()),
                ("user.end_offset", (base + count).to_string()),
                ("user.messages", count.to_string()),
                ("user.sealed", (base != active).to_string()),
            ];
            for (attribute, value) in facts {
                same(
                    h.xattr(ino, attribute.as_bytes()),
                    Ok(value.into_bytes()),
                    || format!("{path} {attribute}"),
                )?;
            }
        }
        // `stream`: every message of the partition, as one file.
        let path = format!("{name}/{p}/stream");
        let stream = h.lookup(&path).expect("stream");
        let all: Vec<u8> = messages
            .iter()
            .flat_map(|m| m.payload.iter().copied())
            .collect();
        let attr = h.fs.getattr(stream, None).expect("getattr").attr;
        same(attr.size, all.len() as u64, || format!("size of {path}"))?;
        same(h.read(stream, 0, all.len() + 10), Ok(all.clone()), || {
            format!("bytes of {path}")
        })?;
        let middle = all.len() / 2;
        same(
            h.read(stream, middle, all.len()),
            Ok(all[middle..].to_vec()),
            || format!("bytes of {path} from {middle}"),
        )?;
        Ok(())
    }
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut case = Case {
        fs: Some(open_fs(tempfile::tempdir().expect("temp dir"))),
        model: Model::default(),
    };
    for (step, op) in ops.iter().enumerate() {
        case.apply(op)
            .and_then(|()| case.check_tree())
            .map_err(|error| TestCaseError::fail(format!("step {step} ({op:?}): {error}")))?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("COMMITFS_MODEL_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_filesystem_matches_a_model_of_the_contract_after_every_step(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        // Every case starts with a topic and two writers on it, so the random steps find
        // something to work on; more come and go.
        let start = [
            Op::Mkdir { name: 0, uid: 1 },
            Op::Open { name: 0, target: Target::Append },
            Op::Open { name: 0, target: Target::Active(0) },
        ];
        run_case(&[&start[..], &ops].concat())?;
    }
}

// ---- divergences found, kept as named cases ----

fn write(handle: usize, pieces: &[(Option<u8>, usize, bool)]) -> Op {
    let pieces = pieces
        .iter()
        .map(|&(key, body, newline)| Piece { key, body, newline })
        .collect();
    Op::Write { handle, pieces }
}

fn regression(ops: Vec<Op>) {
    let start = [
        Op::Mkdir { name: 0, uid: 1 },
        Op::Open {
            name: 0,
            target: Target::Append,
        },
    ];
    if let Err(error) = run_case(&[&start[..], &ops].concat()) {
        panic!("{error}");
    }
}

/// A line refused as too long (`EFBIG`) at the end of a write: the rest of it, in the next
/// write, is refused too, never held and committed at close as a line of its own.
#[test]
fn regression_the_rest_of_a_line_refused_as_too_long_is_never_stored() {
    regression(vec![
        write(0, &[(None, 0, true), (Some(0), 45, false)]),
        write(0, &[(None, 0, false)]),
        Op::Close { handle: 0 },
    ]);
}

/// A raw write through a descriptor of a deleted topic fails; the line held from before the
/// switch to raw goes with it, and is not tried again by the next write.
#[test]
fn regression_a_failed_raw_write_drops_the_held_partial_line() {
    regression(vec![
        write(0, &[(None, 0, false)]),
        Op::Set {
            name: 0,
            setting: Setting::Framing(Framing::Raw),
        },
        Op::Rmdir { name: 0, uid: 1 },
        write(0, &[(None, 0, false)]),
        write(0, &[(None, 50, true)]),
    ]);
}
