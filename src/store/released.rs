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
//! Readers that found no file when they started a read check again after copying from the
//! log: a segment whose file appeared meanwhile may have been punched under them, so they
//! read again from the file.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::atomic::{fence, Ordering};

use super::commitlog::{LogFile, Record};
use super::error::{Result, StoreError};
use super::format::{self, RecordHeader};
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
        take: impl FnMut(&[u8]) -> T,
    ) -> Result<T> {
        self.with_stretch_checked(record, true, take)
    }

    /// [`Partition::with_stretch`], where `check_log` false skips the CRC32C of a batch read
    /// from the log (a key compared, not served); one read from a file is always checked.
    fn with_stretch_checked<F: Deref<Target = LogFile>, T>(
        &self,
        record: &Record<F>,
        check_log: bool,
        mut take: impl FnMut(&[u8]) -> T,
    ) -> Result<T> {
        let base = self.segment_base(record.header.offset);
        if !self.segment_files.contains(base) {
            let checked = if check_log { verify(record) } else { Ok(()) };
            let from_log = checked.map(|()| take(record.payload_to_batch_end()));
            // The file is listed before any block of the log is punched: a segment still
            // without one after the copy was read whole from the log.
            fence(Ordering::SeqCst);
            if !self.segment_files.contains(base) {
                return from_log;
            }
        }
        let stretch = self.stretch_from_file(record, base)?;
        Ok(take(&stretch))
    }

    /// The key bytes of `record`'s message (see [`Partition::with_stretch`]; those read from
    /// the log are compared, not served, so they are not checked against the CRC32C, as
    /// before segments had files).
    pub(super) fn key_of<F: Deref<Target = LogFile>>(
        &self,
        record: &Record<F>,
    ) -> Result<Option<Vec<u8>>> {
        let Some(key_len) = record.header.key_len else {
            return Ok(None);
        };
        self.with_stretch_checked(record, false, |stretch| {
            stretch.get(..key_len as usize).map(<[u8]>::to_vec)
        })
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
    fn stretch_from_file<F: Deref<Target = LogFile>>(
        &self,
        record: &Record<F>,
        base: u64,
    ) -> Result<Cow<'static, [u8]>> {
        let log_bytes = record.batch_bytes();
        let batch = format::decode_header(log_bytes).map_err(|why| StoreError::Corrupt {
            path: record.path(),
            offset: record.position(),
            reason: format!("a batch of a segment with its own file: {why}"),
        })?;
        let shift = self.segment_file_shift(base)?;
        let where_ = format!("{} at byte {}", record.path().display(), record.position());
        let mut payload = self.payload_from_file(base, &batch, log_bytes, shift, &where_)?;
        let from = record.header.payload_at as usize - batch.header.payload_start();
        payload.drain(..from);
        Ok(Cow::Owned(payload))
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

    fn file_damage(&self, base: u64, offset: u64, why: &str) -> StoreError {
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
    /// `base`, which has a file of its own, after checking each batch against that file.
    fn release_segment(&self, base: u64) -> Result<u64> {
        let end = (base + self.segment_messages).min(self.end_offset());
        let mut offset = base.max(self.start_offset());
        let mut released = 0;
        let mut marked = false;
        while offset < end {
            let Some(record) = self.stored_record(offset)? else {
                return Ok(released);
            };
            // The file must hold the batch before the log lets its bytes go.
            self.stretch_from_file(&record, base)?;
            let header = format::decode_header(record.batch_bytes())
                .map_err(|why| StoreError::Corrupt {
                    path: record.path(),
                    offset: record.position(),
                    reason: why.to_owned(),
                })?
                .header;
            // Durable before the first block goes: from then on the file is never removed
            // or remade while the segment is stored.
            if !marked {
                self.segment_files.mark_released(base)?;
                marked = true;
            }
            let from = record.position() + header.payload_start() as u64;
            record
                .log_file()
                .data
                .punch_hole(from, header.payload_bytes() as u64)?;
            released += header.payload_bytes() as u64;
            offset = record.batch_end_offset();
        }
        Ok(released)
    }
}

impl Store {
    /// Gives back to the file system the commit log's copy of the messages of every sealed
    /// segment that is a file of its own; returns the messages' bytes given back.
    pub fn release_materialized_log(&self) -> Result<u64> {
        let _one_at_a_time = self.materializing.lock();
        self.log.flush()?;
        let mut released = 0;
        for topic in self.topics() {
            for partition in topic.partitions() {
                let files = &partition.segment_files;
                let first = partition.segment_base(partition.start_offset());
                for base in files.bases() {
                    if base < first || files.released.lock().contains(&base) {
                        continue;
                    }
                    released += partition.release_segment(base)?;
                    files.released.lock().insert(base);
                }
            }
        }
        Ok(released)
    }
}
