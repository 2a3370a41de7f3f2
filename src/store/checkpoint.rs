//! The checkpoint: a point of the commit log below which everything derived (consume-queue
//! entries, index entries) is known durable, with each partition's offsets at that point.
//! Recovery after an unclean stop starts from it.

use std::path::Path;

use super::error::{Result, StoreError};
use super::format::{le_u32, le_u64};
use super::index::IndexMark;
use super::meta::write_atomically;

pub const CHECKPOINT_FILE: &str = "checkpoint";
/// 2: each partition mark also holds its stream's size.
const MAGIC: &[u8; 8] = b"CFSCKPT2";
const MARK_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionMark {
    pub topic_id: u32,
    pub partition: u32,
    /// Offset the next message gets.
    pub end: u64,
    /// First offset still stored.
    pub start: u64,
    /// Size of the partition's `stream` at `end`: kept here because once retention has
    /// removed every message, no record says it.
    pub stream_end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub commit_log_end: u64,
    pub index: Option<IndexMark>,
    pub partitions: Vec<PartitionMark>,
}

impl Checkpoint {
    /// Each partition's start, by (topic id, partition).
    pub fn starts(&self) -> impl Iterator<Item = ((u32, u32), u64)> + '_ {
        (self.partitions.iter()).map(|m| ((m.topic_id, m.partition), m.start))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.partitions.len() * MARK_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.commit_log_end.to_le_bytes());
        let (has_index, index_base, index_count) = match self.index {
            Some(mark) => (1u32, mark.file_base, mark.count),
            None => (0, 0, 0),
        };
        out.extend_from_slice(&has_index.to_le_bytes());
        out.extend_from_slice(&index_count.to_le_bytes());
        out.extend_from_slice(&index_base.to_le_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
        for mark in &self.partitions {
            out.extend_from_slice(&mark.topic_id.to_le_bytes());
            out.extend_from_slice(&mark.partition.to_le_bytes());
            out.extend_from_slice(&mark.end.to_le_bytes());
            out.extend_from_slice(&mark.start.to_le_bytes());
            out.extend_from_slice(&mark.stream_end.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Checkpoint, &'static str> {
        if bytes.len() < 40 || &bytes[..8] != MAGIC {
            return Err("not a checkpoint");
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != le_u32(crc, 0) {
            return Err("checkpoint CRC mismatch");
        }
        let count = le_u32(body, 32) as usize;
        if body.len() as u64 != 36 + count as u64 * MARK_BYTES as u64 {
            return Err("checkpoint length does not match its partition count");
        }
        let index = (le_u32(body, 16) == 1).then(|| IndexMark {
            file_base: le_u64(body, 24),
            count: le_u32(body, 20),
        });
        let partitions = (0..count)
            .map(|i| {
                let at = 36 + i * MARK_BYTES;
                PartitionMark {
                    topic_id: le_u32(body, at),
                    partition: le_u32(body, at + 4),
                    end: le_u64(body, at + 8),
                    start: le_u64(body, at + 16),
                    stream_end: le_u64(body, at + 24),
                }
            })
            .collect();
        Ok(Checkpoint {
            commit_log_end: le_u64(body, 8),
            index,
            partitions,
        })
    }

    /// The checkpoint on disk; `Ok(None)` if there is none or it is unreadable (recovery then
    /// rebuilds from the start of the log).
    pub fn load(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match Checkpoint::decode(&bytes) {
                Ok(checkpoint) => Ok(Some(checkpoint)),
                Err(reason) => {
                    tracing::warn!(
                        "ignoring {}: {reason}; rebuilding from the whole log",
                        path.display()
                    );
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomically(dir, CHECKPOINT_FILE, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_refused() {
        let checkpoint = Checkpoint {
            commit_log_end: 123_456,
            index: Some(IndexMark {
                file_base: 4096,
                count: 77,
            }),
            partitions: vec![
                PartitionMark {
                    topic_id: 1,
                    partition: 0,
                    end: 10,
                    start: 0,
                    stream_end: 110,
                },
                PartitionMark {
                    topic_id: 2,
                    partition: 5,
                    end: 900,
                    start: 300,
                    stream_end: 9_900,
                },
            ],
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
        let mut damaged = bytes.clone();
        damaged[20] ^= 4;
        assert!(Checkpoint::decode(&damaged).is_err());
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn checkpoint() -> impl Strategy<Value = Vec<u8>> {
        let mark = any::<(u32, u32, u64, u64, u64)>().prop_map(
            |(topic_id, partition, end, start, stream_end)| PartitionMark {
                topic_id,
                partition,
                end,
                start,
                stream_end,
            },
        );
        let index = any::<Option<(u64, u32)>>()
            .prop_map(|mark| mark.map(|(file_base, count)| IndexMark { file_base, count }));
        (any::<u64>(), index, proptest::collection::vec(mark, 0..20)).prop_map(
            |(commit_log_end, index, partitions)| {
                Checkpoint {
                    commit_log_end,
                    index,
                    partitions,
                }
                .encode()
            },
        )
    }

    proptest! {
        #![proptest_config(fuzzing::config(1000))]

        /// Whatever decodes is exactly what encodes to those bytes (damage never decodes into
        /// some other checkpoint).
        #[test]
        fn a_checkpoint_decoded_from_any_bytes_re_encodes_to_them(
            bytes in fuzzing::garbage_or_damaged(checkpoint(), 600)
        ) {
            if let Ok(decoded) = Checkpoint::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }
}
