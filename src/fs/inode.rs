//! Inode numbers. Every node's number is computed from what it is — (topic id, partition,
//! segment) — never allocated, so it is the same across remounts and the daemon keeps no
//! inode table (FORGET needs no bookkeeping).
//!
//! Layout of the 64 bits, most significant first:
//!
//! ```text
//! root            1 (the FUSE root inode)
//! other nodes     0 | kind (3) | topic id (32) | partition (28)
//! segment files   1 | topic id mod 2^20 (20) | partition (17) | segment number mod 2^26 (26)
//! ```
//!
//! `kind` is 1 for a topic directory, 2 for its `append` file, 3 for a partition directory
//! and 4 for a partition's `active` symlink (the partition field is 0 where unused). A
//! segment's number is its base offset divided by `segment_messages`, which it always
//! divides. A segment number needs a whole 64-bit word in theory, so segment inodes keep
//! the low bits of each field: two segments share a number only when the topic ids differ
//! by a multiple of 2^20 (a million topics created in between) or the same partition has
//! 2^26 (67 million) segments; the newest match wins. Partitions fit as they are: the store
//! allows at most 100 000 per topic.

const SEGMENT_FLAG: u64 = 1 << 63;

const KIND_SHIFT: u32 = 60;
const KIND_MASK: u64 = 0b111;
const TOPIC_SHIFT: u32 = 28;
const PARTITION_MASK: u64 = (1 << 28) - 1;

const KIND_TOPIC: u64 = 1;
const KIND_APPEND: u64 = 2;
const KIND_PARTITION: u64 = 3;
const KIND_ACTIVE_LINK: u64 = 4;

/// Bits of a topic id kept in a segment inode.
pub const SEGMENT_TOPIC_BITS: u32 = 20;
/// Bits of a partition index kept in a segment inode.
pub const SEGMENT_PARTITION_BITS: u32 = 17;
/// Bits of a segment number kept in a segment inode.
pub const SEGMENT_NUMBER_BITS: u32 = 26;

const SEGMENT_TOPIC_SHIFT: u32 = SEGMENT_PARTITION_BITS + SEGMENT_NUMBER_BITS;
const SEGMENT_PARTITION_SHIFT: u32 = SEGMENT_NUMBER_BITS;

const fn low_bits(bits: u32) -> u64 {
    (1 << bits) - 1
}

pub const ROOT: u64 = 1;

/// What an inode number says about its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inode {
    Root,
    Topic {
        topic: u32,
    },
    Append {
        topic: u32,
    },
    Partition {
        topic: u32,
        partition: u32,
    },
    ActiveLink {
        topic: u32,
        partition: u32,
    },
    /// The low bits of a segment's topic id, partition and number (see the module docs).
    Segment {
        topic_bits: u32,
        partition_bits: u32,
        number_bits: u32,
    },
}

impl Inode {
    pub fn segment(topic: u32, partition: u32, number: u64) -> Inode {
        Inode::Segment {
            topic_bits: (u64::from(topic) & low_bits(SEGMENT_TOPIC_BITS)) as u32,
            partition_bits: (u64::from(partition) & low_bits(SEGMENT_PARTITION_BITS)) as u32,
            number_bits: (number & low_bits(SEGMENT_NUMBER_BITS)) as u32,
        }
    }

    pub fn encode(self) -> u64 {
        let tagged = |kind: u64, topic: u32, partition: u32| {
            kind << KIND_SHIFT
                | u64::from(topic) << TOPIC_SHIFT
                | (u64::from(partition) & PARTITION_MASK)
        };
        match self {
            Inode::Root => ROOT,
            Inode::Topic { topic } => tagged(KIND_TOPIC, topic, 0),
            Inode::Append { topic } => tagged(KIND_APPEND, topic, 0),
            Inode::Partition { topic, partition } => tagged(KIND_PARTITION, topic, partition),
            Inode::ActiveLink { topic, partition } => tagged(KIND_ACTIVE_LINK, topic, partition),
            Inode::Segment {
                topic_bits,
                partition_bits,
                number_bits,
            } => {
                SEGMENT_FLAG
                    | u64::from(topic_bits) << SEGMENT_TOPIC_SHIFT
                    | u64::from(partition_bits) << SEGMENT_PARTITION_SHIFT
                    | u64::from(number_bits)
            }
        }
    }

    /// `None` for numbers commitfs never hands out.
    pub fn decode(ino: u64) -> Option<Inode> {
        if ino == ROOT {
            return Some(Inode::Root);
        }
        if ino & SEGMENT_FLAG != 0 {
            let field = |shift: u32, bits: u32| ((ino >> shift) & low_bits(bits)) as u32;
            return Some(Inode::Segment {
                topic_bits: field(SEGMENT_TOPIC_SHIFT, SEGMENT_TOPIC_BITS),
                partition_bits: field(SEGMENT_PARTITION_SHIFT, SEGMENT_PARTITION_BITS),
                number_bits: field(0, SEGMENT_NUMBER_BITS),
            });
        }
        let topic = (ino >> TOPIC_SHIFT) as u32;
        let partition = (ino & PARTITION_MASK) as u32;
        match (ino >> KIND_SHIFT) & KIND_MASK {
            KIND_TOPIC if partition == 0 => Some(Inode::Topic { topic }),
            KIND_APPEND if partition == 0 => Some(Inode::Append { topic }),
            KIND_PARTITION => Some(Inode::Partition { topic, partition }),
            KIND_ACTIVE_LINK => Some(Inode::ActiveLink { topic, partition }),
            _ => None,
        }
    }
}

/// The full values whose low `bits` bits are `low`, newest (largest) first, up to `newest`.
/// Resolving a segment inode tries these in turn; without wrap-around there is exactly one.
pub fn candidates(low: u32, bits: u32, newest: u64) -> impl Iterator<Item = u64> {
    let low = u64::from(low);
    let step = 1u64 << bits;
    let laps = newest.saturating_sub(low) / step;
    (0..=laps)
        .rev()
        .map(move |lap| low + lap * step)
        .filter(move |&value| value <= newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let inodes = [
            Inode::Root,
            Inode::Topic { topic: 0 },
            Inode::Topic { topic: u32::MAX },
            Inode::Append { topic: 7 },
            Inode::Partition {
                topic: 7,
                partition: 0,
            },
            Inode::Partition {
                topic: 7,
                partition: 99_999,
            },
            Inode::ActiveLink {
                topic: 3,
                partition: 12,
            },
            Inode::segment(5, 2, 40),
            Inode::segment(u32::MAX, 99_999, u64::MAX),
        ];
        for inode in inodes {
            assert_eq!(Inode::decode(inode.encode()), Some(inode), "{inode:?}");
        }
    }

    #[test]
    fn numbers_are_distinct_across_kinds_and_fields() {
        let mut seen = std::collections::HashSet::new();
        for topic in 0..4 {
            for partition in 0..4 {
                let inodes = [
                    Inode::Topic { topic },
                    Inode::Append { topic },
                    Inode::Partition { topic, partition },
                    Inode::ActiveLink { topic, partition },
                    Inode::segment(topic, partition, 0),
                    Inode::segment(topic, partition, 1),
                ];
                for inode in inodes {
                    seen.insert(inode.encode());
                }
            }
        }
        // Topic and append inodes do not depend on the partition: 4 topics × 2 kinds, plus
        // 16 (topic, partition) pairs × 4 kinds.
        assert_eq!(seen.len(), 4 * 2 + 16 * 4);
        assert!(!seen.contains(&ROOT));
        assert!(!seen.contains(&0));
    }

    #[test]
    fn the_root_is_the_fuse_root() {
        assert_eq!(Inode::Root.encode(), 1);
        assert_eq!(Inode::decode(1), Some(Inode::Root));
    }

    #[test]
    fn foreign_numbers_do_not_decode() {
        assert_eq!(Inode::decode(0), None);
        assert_eq!(Inode::decode(2), None);
        assert_eq!(Inode::decode(5 << KIND_SHIFT), None);
        assert_eq!(Inode::decode(KIND_TOPIC << KIND_SHIFT | 1), None);
    }

    #[test]
    fn segment_fields_keep_their_low_bits() {
        let wrapped = Inode::segment(
            1 << SEGMENT_TOPIC_BITS | 3,
            9,
            (1 << SEGMENT_NUMBER_BITS) + 5,
        );
        assert_eq!(
            wrapped,
            Inode::Segment {
                topic_bits: 3,
                partition_bits: 9,
                number_bits: 5
            }
        );
    }

    #[test]
    fn candidates_run_newest_first() {
        assert_eq!(candidates(5, 4, 5).collect::<Vec<_>>(), vec![5]);
        assert_eq!(candidates(5, 4, 40).collect::<Vec<_>>(), vec![37, 21, 5]);
        assert_eq!(candidates(5, 4, 4).count(), 0);
        assert_eq!(candidates(0, 20, 0).collect::<Vec<_>>(), vec![0]);
    }
}
