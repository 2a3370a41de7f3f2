//! The mount side of the mirror: an ordinary client of the filesystem. It lists topics and
//! partitions, reads each partition's `stream` (positions that never move), cuts it into
//! messages per the topic's framing and key separator, learns each message's timestamp from
//! `user.time.<T>`, and records progress as the group's consumer position
//! (`user.consumer.<GROUP>`). It never looks at the data directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::XattrFlags;

/// A topic's settings, as its directory's attributes give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    /// `raw` framing: a message is one `write(2)`, with no boundary in the bytes.
    pub raw: bool,
    pub key_separator: Option<Vec<u8>>,
}

/// The names of the mount's topics, in no particular order.
pub fn list_topics(mountpoint: &Path) -> io::Result<Vec<String>> {
    let mut topics = Vec::new();
    for entry in std::fs::read_dir(mountpoint)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Ok(name) = entry.file_name().into_string() {
                topics.push(name);
            }
        }
    }
    Ok(topics)
}

/// The settings of topic `name` (`ENOENT` when it does not exist).
pub fn topic_settings(mountpoint: &Path, name: &str) -> io::Result<TopicSettings> {
    let dir = open_dir(&mountpoint.join(name))?;
    let partitions = parse_number(&required(&dir, "user.partitions")?, "user.partitions")?;
    let framing = required(&dir, "user.framing")?;
    let separator = required(&dir, "user.key_separator")?;
    Ok(TopicSettings {
        partitions: u32::try_from(partitions).map_err(|_| invalid("user.partitions", &[]))?,
        raw: framing == b"raw",
        key_separator: (!separator.is_empty()).then_some(separator),
    })
}

fn open_dir(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

/// An attribute's value; `None` for `ENODATA` (not set, or no such message yet).
fn attribute(file: &File, name: &str) -> io::Result<Option<Vec<u8>>> {
    // Every value the mirror asks for is a short fact: one call, no size probe, mostly.
    let mut value = vec![0; 256];
    loop {
        match rustix::fs::fgetxattr(file, name, &mut value[..]) {
            Ok(len) => {
                value.truncate(len);
                return Ok(Some(value));
            }
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(rustix::io::Errno::RANGE) => {
                let len = rustix::fs::fgetxattr_query(file, name)?;
                value.resize(len.max(value.len() * 2), 0);
            }
            Err(errno) => return Err(errno.into()),
        }
    }
}

fn required(file: &File, name: &str) -> io::Result<Vec<u8>> {
    attribute(file, name)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} is missing (ENODATA)"),
        )
    })
}

fn invalid(name: &str, value: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{name} reads {:?}, not what the contract says",
            String::from_utf8_lossy(value)
        ),
    )
}

fn parse_number(value: &[u8], name: &str) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| invalid(name, value))
}

/// One message of a partition, borrowed from the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub offset: u64,
    /// Milliseconds since the epoch, as the mount stamped it.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// The line without its `\n` (`raw`: the bytes as written).
    pub payload: &'a [u8],
}

/// Most bytes one `pread` of `stream` asks for; a bigger message grows the buffer.
const READ_BYTES: usize = 1 << 20;

/// A reader of one partition: its `stream` from a given offset on, message by message.
pub struct PartitionSource {
    dir: File,
    dir_path: PathBuf,
    stream: File,
    settings: TopicSettings,
    /// The offset and stream position of the next message to hand out.
    next_offset: u64,
    position: u64,
    /// Bytes of `stream` from `position` on: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The stored length of the message at `next_offset`, once known (`raw` framing: asked
    /// for before its bytes are read).
    next_len: Option<usize>,
    times: TimeCursor,
}

impl PartitionSource {
    /// Opens partition `partition` of topic `topic`; reading starts at its start offset until
    /// [`PartitionSource::seek`] says otherwise.
    pub fn open(
        mountpoint: &Path,
        topic: &str,
        partition: u32,
        settings: TopicSettings,
    ) -> io::Result<PartitionSource> {
        let dir_path = mountpoint.join(topic).join(partition.to_string());
        let dir = open_dir(&dir_path)?;
        let stream = File::open(dir_path.join("stream"))?;
        let mut source = PartitionSource {
            dir,
            dir_path,
            stream,
            settings,
            next_offset: 0,
            position: 0,
            buf: vec![0; READ_BYTES],
            start: 0,
            end: 0,
            next_len: None,
            times: TimeCursor::default(),
        };
        let start = source.start_offset()?;
        source.seek(start)?;
        Ok(source)
    }

    pub fn path(&self) -> &Path {
        &self.dir_path
    }

    /// Whether the partition directory this reader opened is no longer the one at its path:
    /// its topic was removed, and maybe made again under the same name (a new topic's
    /// directories are other inodes). Other errors say nothing either way: false.
    pub fn replaced(&self) -> bool {
        let not_found = |error: &rustix::io::Errno| *error == rustix::io::Errno::NOENT;
        match (
            rustix::fs::fstat(&self.dir),
            rustix::fs::stat(&self.dir_path),
        ) {
            (Ok(opened), Ok(now)) => (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino),
            (Err(error), _) | (_, Err(error)) => not_found(&error),
        }
    }

    /// Follows changed topic settings (framing, key separator) from the next message on.
    pub fn set_settings(&mut self, settings: TopicSettings) {
        self.settings = settings;
    }

    pub fn start_offset(&self) -> io::Result<u64> {
        let name = "user.start_offset";
        parse_number(&required(&self.dir, name)?, name)
    }

    pub fn end_offset(&self) -> io::Result<u64> {
        let name = "user.end_offset";
        parse_number(&required(&self.dir, name)?, name)
    }

    /// The group's consumer position: the next offset it will read; `None` when never set.
    pub fn consumer_position(&self, group: &str) -> io::Result<Option<u64>> {
        let name = format!("user.consumer.{group}");
        attribute(&self.dir, &name)?
            .map(|value| parse_number(&value, &name))
            .transpose()
    }

    /// Records the group's consumer position; durable when it returns (the contract).
    pub fn commit_position(&self, group: &str, offset: u64) -> io::Result<()> {
        let name = format!("user.consumer.{group}");
        rustix::fs::fsetxattr(
            &self.dir,
            name.as_str(),
            offset.to_string().as_bytes(),
            XattrFlags::empty(),
        )?;
        Ok(())
    }

    /// Reads on from message `offset` (the start offset when retention removed it); returns
    /// the offset reading goes on from.
    pub fn seek(&mut self, offset: u64) -> io::Result<u64> {
        for _ in 0..RACE_RETRIES {
            let start = self.start_offset()?;
            let offset = offset.max(start);
            if let Some(position) = self.stream_position(offset, start)? {
                self.next_offset = offset;
                self.position = position;
                self.start = 0;
                self.end = 0;
                self.next_len = None;
                self.times = TimeCursor::default();
                return Ok(offset);
            }
        }
        Err(io::Error::other(
            "retention kept removing segments while the mirror looked for its position",
        ))
    }

    /// The `stream` position of message `offset` (at or after `start`), or the end when
    /// `offset` is the end; `None` when retention moved the start meanwhile (try again).
    fn stream_position(&self, offset: u64, start: u64) -> io::Result<Option<u64>> {
        let first_position = self.stream_start()?;
        // A message's segment and place in it; at the end, the last message's end.
        let (located, past) = if offset < self.end_offset()? {
            (offset, false)
        } else if offset > start {
            (offset - 1, true)
        } else {
            return Ok(Some(first_position));
        };
        let Some((segment, within, len)) = self.locate(located)? else {
            return Ok(None);
        };
        // The first segment file begins at `first_position`; each later one after the
        // bytes of those before it (segment files hold their messages' bytes, in order).
        let mut segments: Vec<(String, u64)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir_path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") && name.as_str() < segment.as_str() {
                match entry.metadata() {
                    Ok(metadata) => segments.push((name, metadata.len())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
        if self.stream_start()? != first_position {
            return Ok(None);
        }
        let before: u64 = segments.iter().map(|(_, len)| len).sum();
        let position = first_position + before + within + if past { len } else { 0 };
        Ok(Some(position))
    }

    fn stream_start(&self) -> io::Result<u64> {
        let name = "user.start_position";
        parse_number(&required(&self.stream, name)?, name)
    }

    /// `user.offset.<N>`: the segment file, the byte in it and the length of message N;
    /// `None` when it is no longer stored.
    fn locate(&self, offset: u64) -> io::Result<Option<(String, u64, u64)>> {
        let name = format!("user.offset.{offset}");
        let Some(value) = attribute(&self.dir, &name)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&value);
        let mut fields = text.split(' ');
        let parsed = (|| {
            let segment = fields.next()?.to_owned();
            let within = fields.next()?.parse().ok()?;
            let len = fields.next()?.parse().ok()?;
            Some((segment, within, len))
        })();
        parsed.map(Some).ok_or_else(|| invalid(&name, &value))
    }

    /// The next message, reading `stream` as needed; `None` when none is stored yet. The
    /// message stays next until [`PartitionSource::advance`].
    pub fn next_message(&mut self) -> io::Result<Option<Message<'_>>> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        let timestamp = {
            let dir = &self.dir;
            self.times
                .timestamp_of(self.next_offset, |time| first_offset_at(dir, time))?
        };
        let bytes = &self.buf[self.start..self.start + len];
        let payload = match self.settings.raw {
            false => &bytes[..len - 1],
            true => bytes,
        };
        let key = key_len(payload, self.settings.key_separator.as_deref()).map(|n| &payload[..n]);
        Ok(Some(Message {
            offset: self.next_offset,
            timestamp,
            key,
            payload,
        }))
    }

    /// Moves past the message [`PartitionSource::next_message`] returned.
    pub fn advance(&mut self) {
        let len = self
            .next_len
            .take()
            .expect("advance follows a message that next_message returned");
        self.start += len;
        self.position += len as u64;
        self.next_offset += 1;
    }

    /// The stored length of the next message once its bytes are in the buffer.
    fn next_len(&mut self) -> io::Result<Option<usize>> {
        loop {
            if self.next_len.is_none() {
                self.next_len = if self.settings.raw {
                    match self.locate(self.next_offset)? {
                        Some((_, _, len)) => Some(len as usize),
                        None if self.next_offset >= self.end_offset()? => return Ok(None),
                        None => return Err(io::Error::from_raw_os_error(libc::ENXIO)),
                    }
                } else {
                    memchr::memchr(b'\n', &self.buf[self.start..self.end]).map(|at| at + 1)
                };
            }
            let held = self.end - self.start;
            if let Some(len) = self.next_len.filter(|len| *len <= held) {
                return Ok(Some(len));
            }
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads more of `stream` after what the buffer holds; returns how many bytes came.
    fn fill(&mut self) -> io::Result<usize> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            // One message bigger than the buffer.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let at = self.position + self.end as u64;
        let read = self.stream.read_at(&mut self.buf[self.end..], at)?;
        self.end += read;
        Ok(read)
    }
}

/// How often [`PartitionSource::seek`] tries again when retention moves the start under it.
const RACE_RETRIES: usize = 10;

/// `user.time.<T>`: the first offset whose timestamp is at or after `time`; `None` when no
/// message is there yet.
fn first_offset_at(dir: &File, time: i64) -> io::Result<Option<u64>> {
    let name = format!("user.time.{time}");
    attribute(dir, &name)?
        .map(|value| parse_number(&value, &name))
        .transpose()
}

/// How many leading bytes of `payload` are its key: those before the first `separator`
/// (the mount's rule, `src/fs/framing.rs`).
fn key_len(payload: &[u8], separator: Option<&[u8]>) -> Option<usize> {
    match separator? {
        [] => None,
        [byte] => memchr::memchr(*byte, payload),
        separator => memchr::memmem::find(payload, separator),
    }
}

/// Finds each message's timestamp through `user.time.<T>`, the contract's only per-message
/// view of time: timestamps never go backwards within a partition, so message N's time is the
/// greatest T whose first offset at or after T is at most N. Offsets are asked in order, and
/// messages stored in one millisecond share one answer, so a burst costs one lookup per
/// millisecond it spans; a quiet gap of G ms costs about 2·log2(G).
#[derive(Debug, Default)]
struct TimeCursor {
    run: Option<TimeRun>,
}

/// Messages from `first` on have timestamp `time`, up to `end` (the first offset at or after
/// `time + 1`) when known.
#[derive(Debug)]
struct TimeRun {
    first: u64,
    time: i64,
    end: Option<u64>,
}

impl TimeCursor {
    fn timestamp_of(
        &mut self,
        offset: u64,
        mut first_at: impl FnMut(i64) -> io::Result<Option<u64>>,
    ) -> io::Result<i64> {
        // Greatest known time whose first offset is at or below `offset` (time 0: the start).
        let mut low = 0;
        if let Some(run) = self.run.as_mut().filter(|run| offset >= run.first) {
            if run.end.is_none() {
                run.end = first_at(run.time + 1)?;
            }
            match run.end {
                // No message after `time` yet, so this stored one has it.
                None => return Ok(run.time),
                Some(end) if offset < end => return Ok(run.time),
                Some(_) => low = run.time + 1,
            }
        }
        // Gallop up from `low`, then halve: `first_at(low) <= offset < first_at(high)`.
        let mut step = 1;
        let (mut high, mut high_first) = loop {
            let probe = low + step;
            match first_at(probe)? {
                Some(first) if first <= offset => {
                    low = probe;
                    step *= 2;
                }
                beyond => break (probe, beyond),
            }
        };
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            match first_at(middle)? {
                Some(first) if first <= offset => low = middle,
                beyond => (high, high_first) = (middle, beyond),
            }
        }
        self.run = Some(TimeRun {
            first: offset,
            time: low,
            end: high_first,
        });
        Ok(low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `user.time.<T>` over a partition whose message N has time `times[N]`.
    fn first_at(times: &[i64], calls: &mut usize, time: i64) -> io::Result<Option<u64>> {
        *calls += 1;
        Ok(times.iter().position(|t| *t >= time).map(|n| n as u64))
    }

    /// Asks one cursor for every message's time in offset order, checking each; returns how
    /// many lookups that took.
    fn timestamps_of_every_message(times: &[i64]) -> usize {
        let mut cursor = TimeCursor::default();
        let mut calls = 0;
        for (offset, time) in times.iter().enumerate() {
            let found = cursor
                .timestamp_of(offset as u64, |t| first_at(times, &mut calls, t))
                .unwrap();
            assert_eq!(found, *time, "message {offset}");
        }
        calls
    }

    #[test]
    fn every_message_gets_its_own_timestamp() {
        timestamps_of_every_message(&[5, 5, 6, 9, 9, 9, 1_000_000, 1_000_001, 1_700_000_000_000]);
    }

    #[test]
    fn a_burst_costs_about_one_lookup_per_millisecond() {
        // 10,000 messages over 100 consecutive milliseconds.
        let times: Vec<i64> = (0..10_000).map(|n| 1_700_000_000_000 + n / 100).collect();
        let calls = timestamps_of_every_message(&times);
        // The first search from time 0 costs about 2·41 lookups; then two per millisecond.
        assert!(calls < 100 + 2 * 100, "{calls} lookups");
    }

    #[test]
    fn messages_stored_after_the_newest_time_was_asked_are_found() {
        let mut times = vec![7, 7];
        let mut cursor = TimeCursor::default();
        let mut calls = 0;
        assert_eq!(
            cursor
                .timestamp_of(0, |t| first_at(&times, &mut calls, t))
                .unwrap(),
            7
        );
        assert_eq!(
            cursor
                .timestamp_of(1, |t| first_at(&times, &mut calls, t))
                .unwrap(),
            7
        );
        times.extend([7, 12]);
        for (offset, time) in [(2, 7), (3, 12)] {
            let found = cursor
                .timestamp_of(offset, |t| first_at(&times, &mut calls, t))
                .unwrap();
            assert_eq!(found, time, "message {offset}");
        }
    }

    #[test]
    fn keys_end_at_the_first_separator() {
        assert_eq!(key_len(b"k:v:w", Some(b":")), Some(1));
        assert_eq!(key_len(b"k::v", Some(b"::")), Some(1));
        assert_eq!(key_len(b"no separator", Some(b":")), None);
        assert_eq!(key_len(b"k:v", None), None);
        assert_eq!(key_len(b":v", Some(b":")), Some(0));
    }
}
