//! Retention: each topic's `retention_ms` and `retention_bytes` move its partitions' starts
//! past whole sealed segments, commit-log files no partition needs are removed, and the
//! store-wide `max_disk_bytes` takes sealed segments' copies first, then the oldest messages.

use std::sync::atomic::Ordering;

use super::error::Result;
use super::partition::Partition;
use super::{now_ms, Store};

impl Store {
    /// Runs retention now (the background thread does so every
    /// `retention_check_interval_ms`). Applies every topic's retention, removes commit-log files no partition needs any
    /// more, and enforces the store-wide disk ceiling.
    pub fn enforce_retention(&self) -> Result<()> {
        let mut changed = false;
        let outcome = self.remove_expired(&mut changed);
        if !changed {
            return outcome;
        }
        // What was removed is recorded even when a later step failed: a crash must not move
        // a partition's start back (the next pass would see nothing changed, and write none).
        let index = self.index.remove_before(self.log.min_offset());
        let checkpoint = self.checkpoint();
        outcome.and(index).and(checkpoint)
    }

    /// Moves partition starts and removes commit-log files as retention and the disk ceiling
    /// say; `changed` tells whether anything was removed, also when a step then failed.
    fn remove_expired(&self, changed: &mut bool) -> Result<()> {
        let now = now_ms();
        for topic in self.topics() {
            let settings = topic.settings();
            if settings.retention_ms.is_none() && settings.retention_bytes.is_none() {
                continue;
            }
            for partition in topic.partitions() {
                *changed |=
                    partition.apply_retention(now, settings.retention_ms, settings.retention_bytes);
            }
        }
        if *changed {
            self.remove_files_before_starts()?;
        }
        let deleted = self.log.delete_files_before(self.needed_log_offset());
        *changed |= deleted.as_ref().map_or(true, |files| !files.is_empty());
        deleted?;
        if let Some(ceiling) = self.config.max_disk_bytes {
            while self.disk_usage() > ceiling {
                if self.discard_a_segment_copy(ceiling)? {
                    *changed = true;
                    continue;
                }
                let Some(oldest) = self.log.oldest_sealed_file() else {
                    tracing::warn!(
                        "the store uses {} bytes, over max_disk_bytes {ceiling}, but only the file being written is left",
                        self.disk_usage()
                    );
                    break;
                };
                let file_end = oldest + self.log.file_bytes();
                *changed = true;
                for topic in self.topics() {
                    for partition in topic.partitions() {
                        if let Some((from, to)) = partition.drop_messages_before(file_end) {
                            tracing::warn!(
                                "max_disk_bytes: topic {} partition {} lost offsets {from}..{to} early",
                                topic.name(),
                                partition.index()
                            );
                        }
                    }
                }
                self.remove_files_before_starts()?;
                self.log.delete_files_before(file_end)?;
            }
        }
        Ok(())
    }

    /// Records the partitions' new starts in a checkpoint, then removes the files below
    /// them. Recovery takes a partition's start from the checkpoint only (a queue whose first
    /// files are missing may have lost them in a crash): without the checkpoint first, a
    /// crash here would rebuild every queue from the log. On a full disk, where the
    /// checkpoint may fail, the files go anyway (the pass's last checkpoint reports it).
    fn remove_files_before_starts(&self) -> Result<()> {
        if let Err(error) = self.checkpoint() {
            tracing::warn!(
                "removing files below retention's new starts without a checkpoint first: {error}"
            );
        }
        for partition in self.all_partitions() {
            partition.remove_files_before_start()?;
        }
        Ok(())
    }

    /// Removes one sealed segment's own file, if any has one: the commit log still holds its
    /// bytes, so the disk ceiling takes copies before it takes any message.
    fn discard_a_segment_copy(&self, ceiling: u64) -> Result<bool> {
        for topic in self.topics() {
            for partition in topic.partitions() {
                if let Some(bytes) = partition.segment_files.discard_lowest()? {
                    tracing::info!(
                        "max_disk_bytes ({ceiling}): removed a {bytes}-byte copy of a sealed segment of topic {} partition {}; it is served from the commit log again",
                        topic.name(),
                        partition.index()
                    );
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The oldest commit-log offset some partition still needs.
    fn needed_log_offset(&self) -> u64 {
        let written_end = self.log.written_end();
        self.all_partitions()
            .iter()
            .filter(|p| p.start_offset() < p.end_offset())
            // Not through the partitions' maps: that would open a file per partition.
            .filter_map(|p| p.queue.peek_entry(p.start_offset()))
            .map(|e| e.commit_log_offset)
            .min()
            .unwrap_or(written_end)
            .min(written_end)
    }
}

impl Partition {
    /// Moves the start past whole sealed segments that are older than `retention_ms` (by their
    /// newest message) or not needed to keep `retention_bytes`, as Kafka does: it deletes a
    /// segment only if what remains is still at least `retention_bytes`.
    pub(super) fn apply_retention(
        &self,
        now: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> bool {
        let segments = match self.segments() {
            Ok(segments) => segments,
            Err(error) => {
                tracing::error!(
                    "retention skips topic {} partition {}: {error}",
                    self.topic_name,
                    self.index
                );
                return false;
            }
        };
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let start = self.start_offset();
        let mut new_start = start;
        for segment in segments.iter().take_while(|s| s.sealed) {
            let expired = retention_ms.is_some_and(|ms| {
                segment
                    .last_timestamp
                    .is_some_and(|t| t < now.saturating_sub(ms as i64))
            });
            let surplus = retention_bytes.is_some_and(|limit| total - segment.bytes >= limit);
            if !(expired || surplus) {
                break;
            }
            total -= segment.bytes;
            new_start = segment.base_offset + self.segment_messages;
        }
        if new_start == start {
            return false;
        }
        self.start.store(new_start, Ordering::Release);
        tracing::info!(
            "retention: topic {} partition {} now starts at offset {new_start} (was {start})",
            self.topic_name,
            self.index
        );
        true
    }

    /// Drops the messages stored in commit-log files ending at or before `log_offset` (the
    /// disk ceiling is removing them): sealed segments go whole; the active one may lose its
    /// oldest messages. Returns the offsets lost.
    pub(super) fn drop_messages_before(&self, log_offset: u64) -> Option<(u64, u64)> {
        let (start, end) = (self.start_offset(), self.end_offset());
        let low = self.queue.first_at_or_after(start, end, log_offset);
        if low == start {
            return None;
        }
        let base = self.segment_base(low);
        let new_start = if low > base && base + self.segment_messages <= end {
            base + self.segment_messages
        } else {
            low
        };
        self.start.store(new_start, Ordering::Release);
        Some((start, new_start))
    }

    /// Removes the queue files and segment copies wholly below the start.
    fn remove_files_before_start(&self) -> Result<()> {
        let start = self.start_offset();
        self.queue.remove_before(start)?;
        self.segment_files.remove_before(self.segment_base(start))
    }
}
