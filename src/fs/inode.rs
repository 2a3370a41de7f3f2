//! Inode numbers. A node's number is computed from what it is — (topic id, partition,
//! segment) — so it is the same across remounts and the daemon keeps no inode table, except
//! for segments whose fields do not fit the bits a number has: those get numbers from a
//! table the mount keeps ([`SegmentTable`]), handed out on first sight and never reused
//! while it runs, so no two live files ever share a number (sealed segments keep their pages
//! cached across opens: a shared number would serve one segment's pages as the other's).
//!
//! Layout of the 64 bits, most significant first:
//!
//! ```text
//! root              1 (the FUSE root inode)
//! other nodes       0 | kind (3) | topic id (32) | partition (28)
//! segment files     1 | topic id (20) | partition (17) | segment number (26)
//! other segments    0 | kind 5 (3) | serial (60), from the mount's table
//! ```
//!
//! `kind` is 1 for a topic directory, 2 for its `append` file, 3 for a partition directory,
//! 4 for a partition's `active` symlink and 6 for its `stream` file (the partition field is
//! 0 where unused). A
//! segment's number is its base offset divided by `segment_messages`, which it always
//! divides. A segment gets a derived number when its topic id is below 2^20 (a million
//! topics), its partition below 2^17 and its number below 2^26 (67 million segments);
//! otherwise a serial from the table, stable only for the mount.

use std::collections::HashMap;

use parking_lot::RwLock;

const SEGMENT_FLAG: u64 = 1 << 63;

const KIND_SHIFT: u32 = 60;
const KIND_MASK: u64 = 0b111;
const TOPIC_SHIFT: u32 = 28;
const PARTITION_MASK: u64 = (1 << 28) - 1;

const KIND_TOPIC: u64 = 1;
const KIND_APPEND: u64 = 2;
const KIND_PARTITION: u64 = 3;
const KIND_ACTIVE_LINK: u64 = 4;
const KIND_LISTED_SEGMENT: u64 = 5;
const KIND_STREAM: u64 = 6;

/// Bits of a topic id a derived segment number has room for.
pub const SEGMENT_TOPIC_BITS: u32 = 20;
/// Bits of a partition index a derived segment number has room for.
pub const SEGMENT_PARTITION_BITS: u32 = 17;
/// Bits of a segment number a derived segment number has room for.
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
    Stream {
        topic: u32,
        partition: u32,
    },
    /// A segment whose fields fit a derived number.
    Segment {
        topic: u32,
        partition: u32,
        number: u64,
    },
    /// A segment numbered by the mount's [`SegmentTable`].
    ListedSegment {
        serial: u64,
    },
}

impl Inode {
    /// The derived number of a segment, if its fields fit.
    pub fn segment(topic: u32, partition: u32, number: u64) -> Option<Inode> {
        let fits = u64::from(topic) <= low_bits(SEGMENT_TOPIC_BITS)
            && u64::from(partition) <= low_bits(SEGMENT_PARTITION_BITS)
            && number <= low_bits(SEGMENT_NUMBER_BITS);
        fits.then_some(Inode::Segment {
            topic,
            partition,
            number,
        })
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
            Inode::Stream { topic, partition } => tagged(KIND_STREAM, topic, partition),
            Inode::Segment {
                topic,
                partition,
                number,
            } => {
                SEGMENT_FLAG
                    | u64::from(topic) << SEGMENT_TOPIC_SHIFT
                    | u64::from(partition) << SEGMENT_PARTITION_SHIFT
                    | number
            }
            Inode::ListedSegment { serial } => {
                KIND_LISTED_SEGMENT << KIND_SHIFT | (serial & low_bits(KIND_SHIFT))
            }
        }
    }

    /// `None` for numbers commitfs never hands out.
    pub fn decode(ino: u64) -> Option<Inode> {
        if ino == ROOT {
            return Some(Inode::Root);
        }
        if ino & SEGMENT_FLAG != 0 {
            let field = |shift: u32, bits: u32| (ino >> shift) & low_bits(bits);
            return Some(Inode::Segment {
                topic: field(SEGMENT_TOPIC_SHIFT, SEGMENT_TOPIC_BITS) as u32,
                partition: field(SEGMENT_PARTITION_SHIFT, SEGMENT_PARTITION_BITS) as u32,
                number: field(0, SEGMENT_NUMBER_BITS),
            });
        }
        let topic = (ino >> TOPIC_SHIFT) as u32;
        let partition = (ino & PARTITION_MASK) as u32;
        match (ino >> KIND_SHIFT) & KIND_MASK {
            KIND_TOPIC if partition == 0 => Some(Inode::Topic { topic }),
            KIND_APPEND if partition == 0 => Some(Inode::Append { topic }),
            KIND_PARTITION => Some(Inode::Partition { topic, partition }),
            KIND_ACTIVE_LINK => Some(Inode::ActiveLink { topic, partition }),
            KIND_STREAM => Some(Inode::Stream { topic, partition }),
            KIND_LISTED_SEGMENT => Some(Inode::ListedSegment {
                serial: ino & low_bits(KIND_SHIFT),
            }),
            _ => None,
        }
    }
}

/// A segment as (topic id, partition, segment number).
pub type SegmentKey = (u32, u32, u64);

/// The numbers of segments without a derived one, for as long as the mount runs. A serial
/// is never handed out twice, so a stale number can only miss; an entry costs a few dozen
/// bytes per such segment looked up during the mount.
#[derive(Default)]
pub struct SegmentTable {
    numbers: RwLock<Numbers>,
}

#[derive(Default)]
struct Numbers {
    by_key: HashMap<SegmentKey, u64>,
    by_serial: HashMap<u64, SegmentKey>,
}

impl SegmentTable {
    /// The inode number of segment `number` of `partition` of topic `topic`: derived when
    /// its fields fit, else from the table (handed out now if it has none yet).
    pub fn inode(&self, topic: u32, partition: u32, number: u64) -> u64 {
        if let Some(derived) = Inode::segment(topic, partition, number) {
            return derived.encode();
        }
        let key = (topic, partition, number);
        if let Some(&serial) = self.numbers.read().by_key.get(&key) {
            return Inode::ListedSegment { serial }.encode();
        }
        let mut numbers = self.numbers.write();
        let next = numbers.by_serial.len() as u64 + 1;
        let serial = *numbers.by_key.entry(key).or_insert(next);
        numbers.by_serial.entry(serial).or_insert(key);
        Inode::ListedSegment { serial }.encode()
    }

    /// The segment a table serial names.
    pub fn segment(&self, serial: u64) -> Option<SegmentKey> {
        self.numbers.read().by_serial.get(&serial).copied()
    }
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
            Inode::segment(5, 2, 40).unwrap(),
            Inode::segment((1 << 20) - 1, (1 << 17) - 1, (1 << 26) - 1).unwrap(),
            Inode::ListedSegment { serial: 1 },
            Inode::ListedSegment {
                serial: (1 << 60) - 1,
            },
        ];
        for inode in inodes {
            assert_eq!(Inode::decode(inode.encode()), Some(inode), "{inode:?}");
        }
    }

    #[test]
    fn numbers_are_distinct_across_kinds_and_fields() {
        let table = SegmentTable::default();
        let mut seen = std::collections::HashSet::new();
        for topic in [0, 1, 2, 3, 1 << 20, (1 << 20) + 1] {
            for partition in 0..4 {
                let inodes = [
                    Inode::Topic { topic }.encode(),
                    Inode::Append { topic }.encode(),
                    Inode::Partition { topic, partition }.encode(),
                    Inode::ActiveLink { topic, partition }.encode(),
                    table.inode(topic, partition, 0),
                    table.inode(topic, partition, 1),
                ];
                seen.extend(inodes);
            }
        }
        // Topic and append inodes do not depend on the partition: 6 topics × 2 kinds, plus
        // 24 (topic, partition) pairs × 4 kinds.
        assert_eq!(seen.len(), 6 * 2 + 24 * 4);
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
        assert_eq!(Inode::decode(7 << KIND_SHIFT), None);
        assert_eq!(Inode::decode(KIND_TOPIC << KIND_SHIFT | 1), None);
    }

    #[test]
    fn segments_whose_fields_do_not_fit_get_no_derived_number() {
        assert_eq!(Inode::segment(1 << SEGMENT_TOPIC_BITS, 0, 0), None);
        assert_eq!(Inode::segment(1, 1 << SEGMENT_PARTITION_BITS, 0), None);
        assert_eq!(Inode::segment(1, 0, 1 << SEGMENT_NUMBER_BITS), None);
    }

    #[test]
    fn the_table_hands_out_each_serial_once_and_keeps_it() {
        let table = SegmentTable::default();
        let wide = (1 << SEGMENT_TOPIC_BITS) | 3;
        let first = table.inode(wide, 0, 0);
        let second = table.inode(wide, 0, 1);
        assert_ne!(first, second);
        assert_eq!(
            table.inode(wide, 0, 0),
            first,
            "asked again: the same number"
        );
        assert_ne!(
            first,
            table.inode(3, 0, 0),
            "the derived number of topic 3 differs"
        );
        let Some(Inode::ListedSegment { serial }) = Inode::decode(second) else {
            panic!("{second:#x} is not a listed segment");
        };
        assert_eq!(table.segment(serial), Some((wide, 0, 1)));
    }
}
