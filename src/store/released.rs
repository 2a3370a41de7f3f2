//! The commit log gives back the bytes of messages that live in sealed segments' own files.
//!
//! Once a segment is a file of its own (`materialize`), the blocks of the commit log that hold
//! only its messages' bytes are punched out (`fallocate(PUNCH_HOLE)`): each batch keeps its
//! header and table (offsets, lengths, timestamps, keys' lengths, segment and stream
//! positions), so consume queues, the key index and every locator still find messages through
//! the log, while the bytes themselves are read from the segment's file. A batch read that way
//! is checked against its CRC32C with its header and table from the log and its messages'
//! bytes from the file, so a byte the log no longer holds is served from the file or not at
//! all (an error), never as the zeroes the hole reads as.
//!
//! A segment is marked released (in memory, after its `<base>.log.released` marker is
//! fsynced) before the first block of it is punched. Reads of unmarked segments copy from the
//! log as they always did, then check the mark again: a segment marked meanwhile may have
//! been punched under them, so they read again from the file.
//!
//! The order that makes a crash at any step lose nothing: the copy is fsynced under its final
//! name and its directory synced (`materialize`); the log is flushed, so the batches' headers
//! and tables, which vouch for the file's bytes, are on disk; each batch is checked against
//! the file; the marker is written and fsynced; then the blocks are punched. A crash before
//! the marker leaves the log whole; after it, every reader, recovery's scan, `check` and
//! `dump` take the segment's bytes from its file, whether the punches reached the disk or not,
//! and an open never removes or remakes that file. A later run punches marked segments again
//! (without re-reading them), finishing what a crash interrupted.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::commitlog::{LogFile, Record};
use super::error::{Result, StoreError};
use super::format::{self, RecordHeader, Scanned};
use super::materialize::{FILE_SUFFIX, RELEASED_SUFFIX, SEGMENTS_DIR};
use super::partition::{verify, Partition};
use super::Store;

impl Partition {
    /// Calls `take` with the bytes of `record`'s message and the rest of its batch (a stretch
    /// of its segment), checked against the batch's CRC32C: from the commit log, or from the
    /// segment's own file when it has one. `take` may be called twice (a file made during the
    /// read); its last result counts.
    pub(super) fn with_stretch<F: Deref<Target = LogFile>, T>(
        &self,
        record: &Record<F>,
        mut take: impl FnMut(&[u8]) -> T,
    ) -> Result<T> {
        let base = self.segment_base(record.header.offset);
        let from_log = self.read_from_log_unless_released(base, || {
            verify(record).map(|()| take(record.payload_to_batch_end()))
        });
        if let Some(from_log) = from_log {
            return from_log;
        }
        let (payload, from) = self.stretch_from_file(record, base)?;
        Ok(take(&payload[from..]))
    }

    /// What `read` takes from the commit log, unless segment `base` is marked released
    /// before or during the read (`None`): its blocks of the log may then be punched.
    fn read_from_log_unless_released<T>(&self, base: u64, read: impl FnOnce() -> T) -> Option<T> {
        if self.segment_files.is_marked(base) {
            return None;
        }
        let from_log = read();
        // The segment is marked before any block of the log is punched: a segment still
        // unmarked after the read was read whole from the log.
        fence(Ordering::SeqCst);
        (!self.segment_files.is_marked(base)).then_some(from_log)
    }

    /// The key bytes of `record`'s message, from the commit log or the segment's own file.
    /// They are compared, not served, so they are not checked against the batch's CRC32C:
    /// a key lookup reads a few bytes per candidate, not every candidate's whole batch (up
    /// to 2 MiB). Damage there can only make a candidate not match; the message a lookup
    /// then serves is read checked.
    pub(super) fn key_of<F: Deref<Target = LogFile>>(
        &self,
        record: &Record<F>,
    ) -> Result<Option<Vec<u8>>> {
        let Some(key_len) = record.header.key_len else {
            return Ok(None);
        };
        let key_len = key_len as usize;
        let base = self.segment_base(record.header.offset);
        let from_log = self.read_from_log_unless_released(base, || {
            record
                .payload_to_batch_end()
                .get(..key_len)
                .map(<[u8]>::to_vec)
        });
        if let Some(from_log) = from_log {
            return Ok(from_log);
        }
        let shift = self.segment_file_shift(base)?;
        let at = record
            .header
            .segment_position
            .checked_sub(shift)
            .ok_or_else(|| {
                self.file_damage(
                    base,
                    shift,
                    "a message lies before the segment's file starts",
                )
            })?;
        let mut key = vec![0u8; key_len];
        self.segment_files.read_exact_at(base, at, &mut key)?;
        Ok(Some(key))
    }

    /// The payload of `record`'s message (see [`Partition::with_stretch`]).
    pub(super) fn payload_of<F: Deref<Target = LogFile>>(
        &self,
        record: &Record<F>,
    ) -> Result<Vec<u8>> {
        let len = record.header.payload_len();
        self.with_stretch(record, |stretch| stretch[..len].to_vec())
    }

    /// `record`'s message and the rest of its batch read from segment `base`'s own file, the
    /// batch checked against its CRC32C over its header and table in the log and its
    /// messages' bytes in the file.
    /// Returns the batch's messages' bytes and where `record`'s message starts in them. The
    /// last batch read is kept: reads in small pieces (`dd bs=4k` of `stream`) read and check
    /// a batch once, not once a piece.
    fn stretch_from_file<F: Deref<Target = LogFile>>(
        &self,
        record: &Record<F>,
        base: u64,
    ) -> Result<(Arc<[u8]>, usize)> {
        let log_bytes = record.batch_bytes();
        let batch = format::decode_header(log_bytes).map_err(|why| StoreError::Corrupt {
            path: record.path(),
            offset: record.position(),
            reason: format!("a batch of a segment with its own file: {why}"),
        })?;
        let from = record.header.payload_at as usize - batch.header.payload_start();
        let at = record.at().batch;
        let last = self.segment_files.last_read.lock().clone();
        if let Some((_, payload)) = last.filter(|(batch, _)| *batch == at) {
            return Ok((payload, from));
        }
        let shift = self.segment_file_shift(base)?;
        let where_ = format!("{} at byte {}", record.path().display(), record.position());
        let payload: Arc<[u8]> = self
            .payload_from_file(base, &batch, log_bytes, shift, &where_)?
            .into();
        *self.segment_files.last_read.lock() = Some((at, payload.clone()));
        Ok((payload, from))
    }

    /// The messages' bytes of `batch` (whose bytes in the log are `log_bytes`, found at
    /// `where_`) from segment `base`'s own file, whose byte 0 is segment position `shift`,
    /// checked against the batch's CRC32C.
    fn payload_from_file(
        &self,
        base: u64,
        batch: &format::Batch<'_>,
        log_bytes: &[u8],
        shift: u64,
        where_: &str,
    ) -> Result<Vec<u8>> {
        let header = batch.header;
        let mut payload = vec![0u8; header.payload_bytes()];
        let at = header.segment_position.checked_sub(shift).ok_or_else(|| {
            self.file_damage(base, shift, "a batch lies before the segment's file starts")
        })?;
        self.segment_files.read_exact_at(base, at, &mut payload)?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&log_bytes[12..header.payload_start()]),
            &payload,
        );
        if crc != format::le_u32(log_bytes, 8) {
            return Err(self.file_damage(
                base,
                at,
                &format!(
                    "CRC32C mismatch in the batch of messages {}..{} (its header in {where_})",
                    header.first_offset,
                    header.end_offset()
                ),
            ));
        }
        Ok(payload)
    }

    /// Message `offset`, the last the partition stores, when its batch (`bytes`, read from
    /// the log with `pread` at open) gave its messages' bytes back to segment `base`'s file:
    /// `None` if the segment did not, else the message checked against its file.
    pub(super) fn released_last_record(
        &self,
        offset: u64,
        bytes: &[u8],
        where_: &str,
    ) -> Option<Result<RecordHeader>> {
        let base = self.segment_base(offset);
        if !self.segment_files.is_marked(base) {
            return None;
        }
        let batch = format::decode_header(bytes).ok()?;
        let message = batch
            .message(offset.checked_sub(batch.header.first_offset)? as u32)
            .filter(|m| {
                m.offset == offset && m.topic_id == self.topic_id && m.partition == self.index
            })?;
        // The segment's last message: its file ends where this message ends.
        let end = message.segment_position + message.payload_len() as u64;
        let checked = self
            .segment_files
            .len(base)
            .and_then(|len| end.checked_sub(len))
            .ok_or_else(|| {
                self.file_damage(base, 0, "the file does not end where the segment does")
            })
            .and_then(|shift| self.payload_from_file(base, &batch, bytes, shift, where_));
        Some(checked.map(|_| message))
    }

    /// The segment position of byte 0 of segment `base`'s own file: the file ends where the
    /// segment's last message ends.
    fn segment_file_shift(&self, base: u64) -> Result<u64> {
        let len = self.segment_files.len(base).ok_or_else(|| {
            self.file_damage(base, 0, "the segment's file went away while it was read")
        })?;
        let last = (base + self.segment_messages).min(self.end_offset()) - 1;
        let record = self.stored_record(last)?.ok_or_else(|| {
            self.file_damage(base, 0, "the segment's last message is no longer stored")
        })?;
        let end = record.header.segment_position + record.header.payload_len() as u64;
        end.checked_sub(len)
            .ok_or_else(|| self.file_damage(base, len, "the file is longer than its segment"))
    }

    pub(super) fn file_damage(&self, base: u64, offset: u64, why: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.segment_files.file_path(base),
            offset,
            reason: format!(
                "{} partition {} segment {base}: {why}",
                self.topic_name, self.index
            ),
        }
    }

    /// Punches out of the commit log the messages' bytes of every batch of sealed segment
    /// `base`, which has a file of its own, after checking each batch against that file
    /// (unless an earlier run marked the segment: its file is then what every read uses, and
    /// the punches that run may not have finished are done again).
    fn release_segment(&self, base: u64) -> Result<u64> {
        let end = (base + self.segment_messages).min(self.end_offset());
        let mut offset = base.max(self.start_offset());
        let mut released = 0;
        let mut marked = self.segment_files.is_marked(base);
        while offset < end {
            let Some(record) = self.stored_record(offset)? else {
                return Ok(released);
            };
            if !marked {
                // The file must hold the batch before the log lets its bytes go.
                self.stretch_from_file(&record, base)?;
            }
            let next = record.batch_end_offset();
            // Durable before the first block goes: from then on the file is never removed
            // or remade while the segment is stored, and recovery reads the batches from it.
            if !marked && next >= end {
                self.segment_files
                    .mark_released(base, self.segment_file_shift(base)?)?;
                marked = true;
                // Tests kill the daemon between the marker and the first punch.
                fail::fail_point!("released::marked");
            }
            offset = next;
        }
        if !marked {
            return Ok(0);
        }
        let mut offset = base.max(self.start_offset());
        while offset < end {
            let Some(record) = self.stored_record(offset)? else {
                break;
            };
            let header = format::decode_header(record.batch_bytes())
                .map_err(|why| StoreError::Corrupt {
                    path: record.path(),
                    offset: record.position(),
                    reason: why.to_owned(),
                })?
                .header;
            let from = record.position() + header.payload_start() as u64;
            record
                .log_file()
                .data
                .punch_hole(from, header.payload_bytes() as u64)?;
            released += header.payload_bytes() as u64;
            offset = record.batch_end_offset();
            // Tests kill the daemon part way through a segment's punches.
            fail::fail_point!("released::punch");
        }
        Ok(released)
    }
}

impl Store {
    /// Gives back to the file system the commit log's copy of the messages of every sealed
    /// segment that is a file of its own; returns the messages' bytes given back.
    pub fn release_materialized_log(&self) -> Result<u64> {
        let _one_at_a_time = self.materializing.lock();
        let mut pending = Vec::new();
        for topic in self.topics() {
            for partition in topic.partitions() {
                let files = &partition.segment_files;
                let first = partition.segment_base(partition.start_offset());
                let released = files.released.lock().clone();
                for base in files.bases() {
                    if base >= first && !released.contains(&base) {
                        pending.push((partition.clone(), base));
                    }
                }
            }
        }
        if pending.is_empty() {
            return Ok(0);
        }
        // The batches' headers and tables stay in the log and vouch for the files' bytes:
        // on disk before any of those bytes leave it.
        self.log.flush()?;
        let mut released = 0;
        for (partition, base) in pending {
            match partition.release_segment(base) {
                Ok(bytes) => released += bytes,
                // The log keeps the bytes; it serves them as before.
                Err(error @ StoreError::Corrupt { .. }) => tracing::error!(
                    "the commit log keeps the bytes of topic {} partition {} segment {base}: {error}",
                    partition.topic_name,
                    partition.index()
                ),
                Err(error) => return Err(error),
            }
            partition.segment_files.released.lock().insert(base);
        }
        // Tests kill the daemon after the punches, before any checkpoint records them.
        fail::fail_point!("released::done");
        Ok(released)
    }
}

/// Finds, for scans of the commit log that have no partitions (recovery, `check`, `dump`),
/// the bytes of batches whose messages the log gave back: a batch whose CRC32C does not
/// match in the log is read back whole (header and table from the log, messages from its
/// segment's file) when its segment is marked released.
pub(super) struct ReleasedFiles {
    segments_dir: PathBuf,
    segment_messages: u64,
    /// Per (topic id, partition, segment base): its file and the segment position of the
    /// file's first byte; `None` if the segment is not marked.
    segments: HashMap<(u32, u32, u64), Option<ReleasedSegment>>,
    /// Whether a released segment's file is checked also where the log still holds the
    /// batch's bytes (blocks only partly covered by a batch are not punched): `check` does,
    /// as reads take those bytes from the file.
    check_files: bool,
    /// Each partition's start: retention removed the segments below it, their files and
    /// markers with them, while the log may still hold their batches' headers and tables.
    starts: HashMap<(u32, u32), u64>,
}

struct ReleasedSegment {
    path: PathBuf,
    file: std::result::Result<File, String>,
    shift: u64,
}

impl ReleasedFiles {
    pub fn new(data_dir: &Path, segment_messages: u64, check_files: bool) -> ReleasedFiles {
        ReleasedFiles {
            segments_dir: data_dir.join(SEGMENTS_DIR),
            segment_messages: segment_messages.max(1),
            segments: HashMap::new(),
            check_files,
            starts: HashMap::new(),
        }
    }

    /// Takes the partitions' starts (`(topic id, partition)` → start), so that a batch wholly
    /// below its partition's start passes as the remains of a segment retention removed.
    pub fn with_starts(mut self, starts: impl IntoIterator<Item = ((u32, u32), u64)>) -> Self {
        self.starts = starts.into_iter().collect();
        self
    }

    /// [`format::scan_record`] at the start of `rest`, where a batch of a released segment
    /// is rebuilt into `buffer` from its segment's file. An error (naming the file) when its
    /// segment is released and the file does not hold its bytes.
    pub fn scan<'a>(
        &mut self,
        rest: &'a [u8],
        buffer: &'a mut Vec<u8>,
    ) -> std::result::Result<Scanned<'a>, String> {
        match format::scan_record(rest) {
            Scanned::Invalid(reason) => match self.restore(rest, buffer) {
                Some(Ok(())) => Ok(format::scan_record(buffer)),
                Some(Err(why)) => Err(why),
                None => Ok(self
                    .expired(rest)
                    .map_or(Scanned::Invalid(reason), Scanned::Record)),
            },
            Scanned::Record(batch) if self.check_files => match self.restore(rest, buffer) {
                Some(Err(why)) => Err(why),
                _ => Ok(Scanned::Record(batch)),
            },
            scanned => Ok(scanned),
        }
    }

    /// The batch at the start of `rest` if it lies wholly below its partition's start: a
    /// segment retention removed, whose bytes the log gave back while it was a file of its
    /// own (the CRC32C no longer matches). Its header and table still say its size, so a
    /// scan passes over it; nothing serves its messages.
    fn expired<'a>(&self, rest: &'a [u8]) -> Option<format::Batch<'a>> {
        let batch = format::decode_header(rest).ok()?;
        (self.removed_by_retention(&batch.header) && batch.table_is_consistent()).then_some(batch)
    }

    /// Whether the batch lies wholly below its partition's start (as given to
    /// [`with_starts`](Self::with_starts)).
    pub fn removed_by_retention(&self, header: &format::BatchHeader) -> bool {
        (self.starts.get(&(header.topic_id, header.partition)))
            .is_some_and(|&start| header.end_offset() <= start)
    }

    /// Rebuilds into `buffer` the batch at the start of `rest` whose messages' bytes the log
    /// gave back; `None` if its segment is not marked released (or `rest` holds no batch
    /// header), so that the log is what is damaged there.
    fn restore(
        &mut self,
        rest: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Option<std::result::Result<(), String>> {
        let header = format::decode_header(rest).ok()?.header;
        let base = header.first_offset - header.first_offset % self.segment_messages;
        let segment = self.segment(header.topic_id, header.partition, base)?;
        let file = match &segment.file {
            Ok(file) => file,
            Err(why) => return Some(Err(why.clone())),
        };
        let start = header.payload_start();
        buffer.clear();
        buffer.extend_from_slice(&rest[..start]);
        buffer.resize(header.size as usize, 0);
        let read = header
            .segment_position
            .checked_sub(segment.shift)
            .ok_or_else(|| "a batch lies before the file starts".to_string())
            .and_then(|at| {
                file.read_exact_at(&mut buffer[start..], at)
                    .map_err(|e| e.to_string())
            });
        let why = match read {
            Ok(()) if format::crc_matches(buffer) => return Some(Ok(())),
            Ok(()) => "CRC32C mismatch".to_string(),
            Err(why) => why,
        };
        Some(Err(format!(
            "{}: the only copy of messages {}..{} of topic id {} partition {} (the commit log gave back their bytes) does not hold them: {why}",
            segment.path.display(),
            header.first_offset,
            header.end_offset(),
            header.topic_id,
            header.partition
        )))
    }

    fn segment(&mut self, topic_id: u32, partition: u32, base: u64) -> Option<&ReleasedSegment> {
        let dir = self
            .segments_dir
            .join(topic_id.to_string())
            .join(partition.to_string());
        self.segments
            .entry((topic_id, partition, base))
            .or_insert_with(|| {
                let name = format::file_name(base);
                let marker = dir.join(format!("{name}{RELEASED_SUFFIX}"));
                // Any marker that is there marks the segment released, even one that cannot
                // be read: its batches are then the file's to answer for, not the log's.
                let written = match std::fs::read(&marker) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                    written => written.map_err(|e| format!("{}: {e}", marker.display())),
                };
                let path = dir.join(format!("{name}{FILE_SUFFIX}"));
                let shift = written.and_then(|bytes| {
                    std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|text| text.trim().parse::<u64>().ok())
                        .ok_or_else(|| {
                            format!(
                                "{}: does not say where segment {base}'s file starts",
                                marker.display()
                            )
                        })
                });
                let file = shift.clone().and_then(|_| {
                    File::open(&path).map_err(|e| {
                        format!("{}: {e}, and it is the only copy of segment {base}'s messages (the commit log gave back their bytes)", path.display())
                    })
                });
                Some(ReleasedSegment {
                    shift: shift.unwrap_or(0),
                    path,
                    file,
                })
            })
            .as_ref()
    }
}
