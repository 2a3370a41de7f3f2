//! Files: open, read, write, flush, release and fsync, and the `active` link's READLINK
//! (which an append through `active` depends on).
//!
//! A segment opened for reading holds a [`SegmentReader`], which keeps the
//! segment readable even after retention removes it. A file opened for writing (the active
//! segment, or `append`) holds a [`Writer`] bound to the partition (or, for `append`, to the
//! topic), never to a segment: every write goes to the partition's true end, whatever offset
//! the kernel sends, and carries on across segment rolls. With `lines` framing the writer
//! holds the open file's unfinished last line. It is committed, with a `\n` added, on the
//! FLUSH sent by the `close()` of the process that opened the file, or else at RELEASE
//! (the last close, which the kernel sends asynchronously and whose errors reach nobody).
//! A write that fails drops the held line instead (its rest was in that write).
//! `fsync` makes the complete lines durable and leaves the partial line waiting.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::FopenFlags;
use parking_lot::Mutex;

use crate::fs::error::{FsError, FsResult};
use crate::fs::framing::{message, LineError, PartialLine};
use crate::store::{Framing, NewMessage, Partition, SegmentInfo, SegmentReader, StoreError, Topic};

use super::{segment_file_name, Attr, CommitFs, Node, Opened};

/// A read is served from a per-thread buffer; the kernel never asks for more than
/// `max_pages` (1 MiB here), and this bound keeps a malformed request from allocating more.
const MAX_READ_BYTES: usize = 16 << 20;

/// How soon after a thread's READLINK of `active` its OPEN of the segment named counts as
/// the same path walk (the kernel does both within one `open()` call).
const LINK_TO_OPEN: Duration = Duration::from_secs(1);

/// Where an open file's messages go.
enum Destination {
    /// A segment file opened for appending: its partition, whichever segment is active.
    Partition(Arc<Partition>),
    /// The topic's `append` file: each message's key picks the partition.
    ByKey,
}

struct Writer {
    destination: Destination,
    opener_pid: u32,
    partial: Mutex<PartialLine>,
}

/// What an OPEN asks for.
struct OpenRequest {
    ino: u64,
    flags: i32,
    pid: u32,
    /// This thread's READLINK of `active` just named the segment opened.
    through_active: bool,
}

impl OpenRequest {
    fn writes(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    fn reads(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_WRONLY
    }

    fn writer(&self, destination: Destination) -> Writer {
        Writer {
            destination,
            opener_pid: self.pid,
            partial: Mutex::new(PartialLine::default()),
        }
    }
}

/// An open of `node` refused, saying why after its path.
fn refused(node: &Node, errno: i32, why: &str) -> FsError {
    FsError::refused(errno, format!("{}{why}", node.path()))
}

/// What an open file reads.
enum Reader {
    Segment(SegmentReader),
    /// A partition's `stream`: its messages at positions that never move.
    Stream(Arc<Partition>),
}

impl Reader {
    fn read_at(&self, position: u64, buf: &mut [u8]) -> crate::store::Result<usize> {
        match self {
            Reader::Segment(reader) => reader.read_at(position, buf),
            Reader::Stream(partition) => partition.read_stream(position, buf),
        }
    }
}

pub(super) struct OpenFile {
    ino: u64,
    topic: Arc<Topic>,
    reader: Option<Reader>,
    writer: Option<Writer>,
}

/// The segment a thread's last READLINK of an `active` link named, and when.
pub(super) struct FollowedLink {
    segment: u64,
    at: Instant,
}

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl CommitFs {
    /// The active segment's name. Which segment it was is remembered for the calling thread:
    /// see [`CommitFs::open`].
    pub fn readlink(&self, ino: u64, pid: u32) -> FsResult<Vec<u8>> {
        match self.resolve(ino)? {
            Node::ActiveLink(topic, partition) => {
                let base = partition.active_base();
                let segment = self.segment_inode(&topic, &partition, base);
                let mut links = self.followed_links.lock();
                if links.len() >= 1024 {
                    links.retain(|_, link| link.at.elapsed() < LINK_TO_OPEN);
                }
                links.insert(
                    pid,
                    FollowedLink {
                        segment,
                        at: Instant::now(),
                    },
                );
                Ok(segment_file_name(base).into_bytes())
            }
            node => Err(FsError::refused(
                libc::EINVAL,
                format!("{} is not a symlink", node.path()),
            )),
        }
    }

    /// Opens a file. Opening a sealed segment for writing is refused — except when this
    /// thread just read `active` and it named this segment: then the open comes through
    /// `active` and another writer sealed the segment in between (a roll), and since writes
    /// go to the partition's end anyway, the append goes on.
    pub fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<Opened> {
        let through_active = self
            .followed_links
            .lock()
            .remove(&pid)
            .is_some_and(|link| link.segment == ino && link.at.elapsed() < LINK_TO_OPEN);
        let request = OpenRequest {
            ino,
            flags,
            pid,
            through_active,
        };
        let node = self.resolve(ino)?;
        let refuse = |errno, why: &str| Err(refused(&node, errno, why));
        let mut passthrough = None;
        let (file, fopen) = match &node {
            // Any open mode works (`echo x > append` truncates first, which is a no-op); reads
            // find it empty.
            Node::Append(topic) => {
                let file = OpenFile {
                    ino,
                    topic: topic.clone(),
                    reader: None,
                    writer: request.writes().then(|| request.writer(Destination::ByKey)),
                };
                (file, FopenFlags::FOPEN_DIRECT_IO)
            }
            Node::Segment(topic, partition, info) => {
                let (file, fopen, own_file) =
                    self.open_segment(&request, &node, topic, partition, info)?;
                passthrough = own_file;
                (file, fopen)
            }
            Node::Stream(topic, partition) => {
                if request.writes() || flags & libc::O_TRUNC != 0 {
                    return refuse(
                        libc::EPERM,
                        ": stream is read-only; append to the partition's active segment",
                    );
                }
                let file = OpenFile {
                    ino,
                    topic: topic.clone(),
                    reader: Some(Reader::Stream(partition.clone())),
                    writer: None,
                };
                // It grows with every append: nothing of it is cached.
                (file, FopenFlags::FOPEN_DIRECT_IO)
            }
            Node::Root | Node::Topic(_) | Node::Partition(..) => {
                return refuse(libc::EISDIR, " is a directory")
            }
            Node::ActiveLink(..) => return refuse(libc::ELOOP, " is a symlink"),
        };
        Ok(Opened {
            fh: self.files.insert(file),
            flags: fopen,
            passthrough,
        })
    }

    /// Opens segment `node` (see [`open`](Self::open)): the file, how the kernel may cache
    /// it, and the sealed segment's own file if its reads may be passed through to it.
    fn open_segment(
        &self,
        request: &OpenRequest,
        node: &Node,
        topic: &Arc<Topic>,
        partition: &Arc<Partition>,
        info: &SegmentInfo,
    ) -> FsResult<(OpenFile, FopenFlags, Option<Arc<std::fs::File>>)> {
        let (ino, flags) = (request.ino, request.flags);
        let writes = request.writes();
        // O_TRUNC counts even with O_RDONLY, with which Linux truncates too.
        let truncates = flags & libc::O_TRUNC != 0;
        if info.sealed && (truncates || writes && !request.through_active) {
            return Err(refused(
                node,
                libc::EPERM,
                ": sealed segments are immutable",
            ));
        }
        if truncates || writes && flags & libc::O_APPEND == 0 {
            return Err(refused(
                node,
                libc::EPERM,
                ": the active segment is append-only: open it with O_APPEND (>>) and without O_TRUNC",
            ));
        }
        let mut fopen = FopenFlags::empty();
        let mut passthrough = None;
        let mut file = OpenFile {
            ino,
            topic: topic.clone(),
            reader: None,
            writer: None,
        };
        if writes {
            // One write(2) stays one request, and written bytes stay out of the page
            // cache, where they would sit at the kernel's guess of the offset.
            fopen |= FopenFlags::FOPEN_DIRECT_IO;
            file.writer = Some(request.writer(Destination::Partition(partition.clone())));
            *self.writers_on.lock().entry(ino).or_default() += 1;
        }
        if request.reads() {
            let reader = self.store.open_segment(partition, info.base_offset)?;
            // Writes go to the daemon, so only a read-only open may be passed
            // through (and none of a segment a writer still holds: see below). An
            // O_DIRECT open keeps the daemon's direct I/O, which takes any buffer.
            let direct = flags & libc::O_DIRECT != 0;
            let passthrough_allowed = self.passthrough.load(Ordering::Relaxed);
            if passthrough_allowed
                && !writes
                && !direct
                && !self.writers_on.lock().contains_key(&ino)
            {
                passthrough = reader.materialized_file().cloned();
            }
            fopen |= self.read_cache_policy(ino, info.sealed, flags, passthrough.is_some());
            file.reader = Some(Reader::Segment(reader));
        }
        Ok((file, fopen, passthrough))
    }

    /// How the kernel may cache what a reader of segment `ino` reads. Nothing is cached
    /// while a segment is active: its pages would hold zeroes past its end of the moment,
    /// and a page filled just before more messages arrived can outlive the kernel's
    /// invalidation and later be served as the sealed segment's bytes. A sealed segment
    /// never changes, so its pages stay cached across opens — except at the first open of
    /// one opened while active, which drops what such an open may have cached (a private
    /// map of an active segment fills the page cache even under direct I/O). A sealed
    /// segment that a writer still has open (a long `cat >> active` across a roll) is read
    /// like an active one: each write through it makes the kernel grow the inode's cached
    /// size past the segment's end, and a cached read would serve zeroes up to that size.
    /// An open offered passthrough (`passed_through`) leaves the inode's cached pages as they
    /// are, so it does not count as the first open that drops them.
    fn read_cache_policy(
        &self,
        ino: u64,
        sealed: bool,
        flags: i32,
        passed_through: bool,
    ) -> FopenFlags {
        if !sealed || self.writers_on.lock().contains_key(&ino) {
            self.opened_while_active.lock().insert(ino);
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        if flags & libc::O_DIRECT != 0 {
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        let mut opened_while_active = self.opened_while_active.lock();
        let drop_cache = if passed_through {
            opened_while_active.contains(&ino)
        } else {
            opened_while_active.remove(&ino)
        };
        if drop_cache {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// Serves one READ: `deliver` gets the bytes (fewer than `size` only at the end).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        deliver: impl FnOnce(&[u8]) -> R,
    ) -> FsResult<R> {
        self.read_requests.fetch_add(1, Ordering::Relaxed);
        let file = self.files.get(fh)?;
        let Some(reader) = &file.reader else {
            return Ok(deliver(&[]));
        };
        let size = (size as usize).min(MAX_READ_BYTES);
        READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            if buffer.len() < size {
                buffer.resize(size, 0);
            }
            let filled = reader.read_at(offset, &mut buffer[..size])?;
            Ok(deliver(&buffer[..filled]))
        })
    }

    /// Stores what one write(2) carries, at the partition's end whatever `_offset` says.
    pub fn write(&self, fh: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.files.get(fh)?;
        let writer = file
            .writer
            .as_ref()
            .ok_or_else(|| FsError::refused(libc::EBADF, "the file was not opened for writing"))?;
        let settings = file.topic.settings();
        let separator = settings.key_separator.as_deref();
        // The lines lie in `data` but for one begun by an earlier write: they go to the log
        // from there.
        let append = |messages: &[NewMessage<'_>]| {
            self.append(&file.topic, &writer.destination, messages, data)
        };
        let mut partial = writer.partial.lock();
        match settings.framing {
            Framing::Raw => {
                let limit = self.raw_write_limit.load(Ordering::Relaxed);
                if data.len() > limit {
                    return Err(FsError::refused(
                        libc::EFBIG,
                        format!(
                            "{}: a raw write of {} bytes or more exceeds {limit} bytes, \
                             the most the kernel always passes in one request; nothing of it is stored",
                            file.topic.name(),
                            data.len()
                        ),
                    ));
                }
                // A line left from before the topic switched to raw goes first, as written;
                // if it cannot be stored, this write fails and the line goes with it.
                if let Err(error) = partial.close(separator, append) {
                    partial.discard();
                    return Err(error);
                }
                append(&[message(data, separator)])?;
            }
            Framing::Lines => {
                let max = self.store.config().max_message_bytes;
                partial
                    .write(data, max, separator, append)
                    .map_err(|error| match error {
                        LineError::LineTooLong { size, max } => FsError::refused(
                            libc::EFBIG,
                            format!(
                                "{}: a line of {size} bytes or more exceeds max_message_bytes ({max}); \
                                 nothing of it is stored",
                                file.topic.name()
                            ),
                        ),
                        LineError::DroppedLine => FsError::refused(
                            libc::EFBIG,
                            format!(
                                "{}: more of a line already refused (too long, or begun in a write that failed); dropped",
                                file.topic.name()
                            ),
                        ),
                        LineError::Commit(error) => error,
                    })?;
            }
        }
        Ok(data.len() as u32)
    }

    /// Appends `messages` in one batch per partition, all of them or, on error, none: a
    /// message over `max_message_bytes` or a full disk for any partition refuses the whole
    /// write before anything is stored. Those read from `buffer` are written from there.
    fn append(
        &self,
        topic: &Topic,
        destination: &Destination,
        messages: &[NewMessage<'_>],
        buffer: &[u8],
    ) -> FsResult<()> {
        match destination {
            Destination::Partition(partition) => self
                .store
                .append_batch_from(partition, messages, buffer)
                .map(drop)
                .map_err(|error| {
                    FsError::from(error).context(format_args!(
                        "{}/{}",
                        topic.name(),
                        partition.index()
                    ))
                }),
            Destination::ByKey => self.append_by_key(topic, messages, buffer),
        }
    }

    /// Sends each message to the partition its key picks, every partition's batch in one
    /// append of the store; a message over `max_message_bytes` refuses the whole write.
    fn append_by_key(
        &self,
        topic: &Topic,
        messages: &[NewMessage<'_>],
        buffer: &[u8],
    ) -> FsResult<()> {
        self.store
            .append_by_key(topic, messages, buffer)
            .map(drop)
            .map_err(|error| match error {
                StoreError::MessageTooLarge { size, max } => FsError::refused(
                    libc::EFBIG,
                    format!(
                        "{}: a message of {size} bytes exceeds max_message_bytes ({max}); nothing of this write was stored",
                        topic.name(),
                    ),
                ),
                error => FsError::from(error).context(topic.name()),
            })
    }

    /// FLUSH comes with every close() of every copy of the descriptor; only the opening
    /// process's close commits the partial line.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let file = self.files.get(fh)?;
        match &file.writer {
            Some(writer) if writer.opener_pid == pid => self.commit_partial_line(&file, writer),
            _ => Ok(()),
        }
    }

    /// RELEASE: the last close. Commits a partial line still waiting and drops the reader.
    /// Nobody hears of a failure but the log, so it says what was lost.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let file = self.files.remove(fh)?;
        if let Some(Writer {
            destination: Destination::Partition(_),
            ..
        }) = &file.writer
        {
            let mut writers = self.writers_on.lock();
            if let Some(count) = writers.get_mut(&file.ino) {
                *count -= 1;
                if *count == 0 {
                    writers.remove(&file.ino);
                }
            }
        }
        match &file.writer {
            Some(writer) => self.commit_partial_line(&file, writer).map_err(|error| {
                error.context("the unfinished last line, held until the last close, is lost")
            }),
            None => Ok(()),
        }
    }

    fn commit_partial_line(&self, file: &OpenFile, writer: &Writer) -> FsResult<()> {
        let settings = file.topic.settings();
        writer
            .partial
            .lock()
            .close(settings.key_separator.as_deref(), |line| {
                self.append(&file.topic, &writer.destination, line, &[])
            })
    }

    /// Complete lines are stored as they arrive, so fsync only has to make them durable.
    pub fn fsync(&self) -> FsResult<()> {
        Ok(self.store.sync()?)
    }

    /// The attributes of a segment that retention or `rmdir` removed while it is open: the
    /// data its descriptors still read, with no links, like an unlinked file. `fstat` comes
    /// without a file handle, so any open reader of the inode serves.
    pub(super) fn removed_segment_attr(&self, ino: u64, fh: Option<u64>) -> Option<FsResult<Attr>> {
        let open = match fh {
            Some(fh) => self.files.get(fh).ok(),
            None => self
                .files
                .find(|file| file.ino == ino && file.reader.is_some()),
        }?;
        let Some(Reader::Segment(reader)) = &open.reader else {
            return None;
        };
        Some(
            reader
                .info()
                .map(|info| self.segment_attr(ino, &open.topic, &info, None, 0))
                .map_err(FsError::from),
        )
    }
}
