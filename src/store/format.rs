//! Byte layouts of everything the store writes. All integers are little-endian.

/// Commit-log record header: see README "On-disk format".
pub const RECORD_HEADER_BYTES: usize = 48;
pub const RECORD_MAGIC: u32 = 0xC0F5_1A01;
/// Marks the unused tail of a commit-log file: the next record is in the next file.
pub const BLANK_MAGIC: u32 = 0xC0F5_B1A4;
/// Marks a damaged span that `commitfs check --repair` gave up: scans pass over it.
pub const SKIP_MAGIC: u32 = 0xC0F5_5C1D;
/// A marker (end-of-file or skip) is a size and a magic.
pub const MARKER_BYTES: usize = 8;
/// Every file keeps room for an end-of-file marker.
pub const BLANK_BYTES: usize = MARKER_BYTES;
/// `key_len` value of a message without a key.
pub const NO_KEY: u32 = u32::MAX;

pub const QUEUE_ENTRY_BYTES: usize = 20;
/// The `commit_log_offset` of a queue entry whose message was lost in a damaged span that
/// `commitfs check --repair` skipped: it points nowhere, so reading the message fails.
pub const LOST_MESSAGE: u64 = u64::MAX;

/// The fixed fields of one message as stored in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub size: u32,
    pub topic_id: u32,
    pub partition: u32,
    pub key_len: Option<u32>,
    pub offset: u64,
    pub timestamp: i64,
    /// Byte position of this message inside its segment (sum of the earlier messages' sizes).
    pub segment_position: u64,
}

impl RecordHeader {
    pub fn payload_len(&self) -> usize {
        self.size as usize - RECORD_HEADER_BYTES
    }

    /// Encodes everything but the CRC (bytes 8..12), which covers bytes 12..size.
    pub fn encode(&self, out: &mut [u8; RECORD_HEADER_BYTES]) {
        out[0..4].copy_from_slice(&self.size.to_le_bytes());
        out[4..8].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[8..12].fill(0);
        out[12..16].copy_from_slice(&self.topic_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.partition.to_le_bytes());
        out[20..24].copy_from_slice(&self.key_len.unwrap_or(NO_KEY).to_le_bytes());
        out[24..32].copy_from_slice(&self.offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.timestamp.to_le_bytes());
        out[40..48].copy_from_slice(&self.segment_position.to_le_bytes());
    }

    /// Decodes a header whose size and magic were already checked ([`decode_header`]).
    fn decode(bytes: &[u8]) -> RecordHeader {
        let key_len = le_u32(bytes, 20);
        RecordHeader {
            size: le_u32(bytes, 0),
            topic_id: le_u32(bytes, 12),
            partition: le_u32(bytes, 16),
            key_len: (key_len != NO_KEY).then_some(key_len),
            offset: le_u64(bytes, 24),
            timestamp: le_u64(bytes, 32) as i64,
            segment_position: le_u64(bytes, 40),
        }
    }
}

/// CRC32C of a record: header bytes 12..48, then the payload.
pub fn record_crc(header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[12..]), payload)
}

/// Whether a whole record's bytes (header and payload) match the CRC32C stored in it.
pub fn crc_matches(record: &[u8]) -> bool {
    record.len() >= RECORD_HEADER_BYTES && crc32c::crc32c(&record[12..]) == le_u32(record, 8)
}

/// The one decoder of a record header: the bytes at the start of `rest` (the remainder of
/// one commit-log file) must be a record's magic, a size that fits in `rest` and a key no
/// longer than the payload. The CRC is not checked here: the scan checks it at once
/// ([`scan_record`]), a reader where it serves the payload ([`crc_matches`]).
pub fn decode_header(rest: &[u8]) -> Result<RecordHeader, &'static str> {
    if rest.len() < RECORD_HEADER_BYTES {
        return Err("record size out of bounds");
    }
    if le_u32(rest, 4) != RECORD_MAGIC {
        return Err("unknown magic");
    }
    let size = le_u32(rest, 0) as usize;
    if size < RECORD_HEADER_BYTES || size > rest.len() {
        return Err("record size out of bounds");
    }
    let header = RecordHeader::decode(rest);
    if header
        .key_len
        .is_some_and(|k| k as usize > header.payload_len())
    {
        return Err("key longer than the message");
    }
    Ok(header)
}

/// What a scan finds at a commit-log position.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    Record(RecordHeader),
    /// The rest of the file is unused.
    EndOfFile,
    /// A span `commitfs check --repair` marked as damaged: this many bytes (the marker
    /// included) hold no record; the next record follows them.
    Skip(usize),
    /// Not a valid record: the log ends here, or it is damaged.
    Invalid(&'static str),
}

/// Validates the bytes at the start of `rest` (the remainder of one commit-log file).
pub fn scan_record(rest: &[u8]) -> Scanned {
    if rest.len() < MARKER_BYTES {
        return Scanned::Invalid("fewer than 8 bytes left in the file");
    }
    let size = le_u32(rest, 0) as usize;
    match le_u32(rest, 4) {
        BLANK_MAGIC if size == rest.len() => Scanned::EndOfFile,
        BLANK_MAGIC => Scanned::Invalid("end-of-file marker with a wrong size"),
        SKIP_MAGIC if (MARKER_BYTES..=rest.len()).contains(&size) => Scanned::Skip(size),
        SKIP_MAGIC => Scanned::Invalid("skip marker with a wrong size"),
        // The CRC first: it says best what is wrong with a damaged record.
        RECORD_MAGIC => match decode_header(rest) {
            Err(reason) if size < RECORD_HEADER_BYTES || size > rest.len() => {
                Scanned::Invalid(reason)
            }
            _ if !crc_matches(&rest[..size]) => Scanned::Invalid("CRC32C mismatch"),
            Ok(header) => Scanned::Record(header),
            Err(reason) => Scanned::Invalid(reason),
        },
        0 if size == 0 => Scanned::Invalid("zeroes (never written)"),
        _ => Scanned::Invalid("unknown magic"),
    }
}

/// The position of the first valid record (its CRC checks) that starts at or after `from`
/// in `file` (a whole commit-log file). Candidates are the places the record magic occurs.
pub fn next_valid_record(file: &[u8], from: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let search_from = from.checked_add(4).filter(|&at| at <= file.len())?;
    memchr::memmem::find_iter(&file[search_from..], &magic)
        .map(|found| search_from + found - 4)
        .find(|&start| matches!(scan_record(&file[start..]), Scanned::Record(_)))
}

/// The marker `commitfs check --repair` writes over a damaged span of `len` bytes.
pub fn skip_marker(len: u32) -> [u8; MARKER_BYTES] {
    let mut marker = [0u8; MARKER_BYTES];
    marker[0..4].copy_from_slice(&len.to_le_bytes());
    marker[4..8].copy_from_slice(&SKIP_MAGIC.to_le_bytes());
    marker
}

/// One consume-queue entry: where message N of a partition lives in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub commit_log_offset: u64,
    pub size: u32,
    pub key_hash: u64,
}

impl QueueEntry {
    pub fn encode(&self) -> [u8; QUEUE_ENTRY_BYTES] {
        let mut out = [0u8; QUEUE_ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.commit_log_offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out[12..20].copy_from_slice(&self.key_hash.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> QueueEntry {
        QueueEntry {
            commit_log_offset: le_u64(bytes, 0),
            size: le_u32(bytes, 8),
            key_hash: le_u64(bytes, 12),
        }
    }
}

/// The 64-bit key hash used by the consume queue and the index: FNV-1a over the topic id
/// and the key bytes. Fixed by the on-disk format, so it is written out here rather than
/// taken from a hasher whose algorithm may change between Rust releases.
pub fn key_hash(topic_id: u32, key: &[u8]) -> u64 {
    // Tests make every key collide, so that only the key bytes can tell keys apart.
    fail::fail_point!("format::key_hash", |_| 0x5EED);
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for &byte in topic_id.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // 0 means "no key" in a queue entry.
    hash.max(1)
}

/// Commit-log and consume-queue files are named by a 20-digit number, as in Kafka and RocketMQ.
pub fn file_name(number: u64) -> String {
    format!("{number:020}")
}

pub fn parse_file_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

pub fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(header: RecordHeader, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; RECORD_HEADER_BYTES];
        header.encode(&mut head);
        let crc = record_crc(&head, payload);
        head[8..12].copy_from_slice(&crc.to_le_bytes());
        [&head[..], payload].concat()
    }

    fn sample() -> RecordHeader {
        RecordHeader {
            size: (RECORD_HEADER_BYTES + 5) as u32,
            topic_id: 7,
            partition: 3,
            key_len: Some(2),
            offset: 42,
            timestamp: 1_700_000_000_000,
            segment_position: 99,
        }
    }

    #[test]
    fn a_record_round_trips_and_every_flipped_bit_is_caught() {
        let bytes = encoded(sample(), b"k:abc");
        assert_eq!(scan_record(&bytes), Scanned::Record(sample()));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(scan_record(&damaged), Scanned::Record(h) if h == sample()),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn a_cut_record_is_invalid() {
        let bytes = encoded(sample(), b"k:abc");
        for len in 0..bytes.len() {
            assert!(matches!(scan_record(&bytes[..len]), Scanned::Invalid(_)));
        }
    }

    #[test]
    fn scans_pass_skip_markers_and_find_the_next_valid_record() {
        let record = encoded(sample(), b"k:abc");
        let mut file = vec![0u8; 300];
        file[..8].copy_from_slice(&skip_marker(100));
        file[100..100 + record.len()].copy_from_slice(&record);
        assert_eq!(scan_record(&file), Scanned::Skip(100));
        assert_eq!(next_valid_record(&file, 1), Some(100));
        assert_eq!(next_valid_record(&file, 100), Some(100));
        assert_eq!(next_valid_record(&file, 101), None);
        // The magic alone is not a record: its CRC must check.
        file[200..204].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        assert_eq!(next_valid_record(&file, 101), None);
        assert!(matches!(scan_record(&skip_marker(4)), Scanned::Invalid(_)));
    }

    #[test]
    fn file_names_are_twenty_digits() {
        assert_eq!(file_name(300_000), "00000000000000300000");
        assert_eq!(parse_file_name("00000000000000300000"), Some(300_000));
        assert_eq!(parse_file_name("0000000000000030000"), None);
        assert_eq!(parse_file_name("0000000000000030000x"), None);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn record() -> impl Strategy<Value = Vec<u8>> {
        let payload = proptest::collection::vec(any::<u8>(), 0..200);
        (
            payload,
            any::<(u32, u32, u64, i64, u64)>(),
            any::<Option<u8>>(),
        )
            .prop_map(
                |(payload, (topic_id, partition, offset, timestamp, segment_position), key)| {
                    let header = RecordHeader {
                        size: (RECORD_HEADER_BYTES + payload.len()) as u32,
                        topic_id,
                        partition,
                        key_len: key.map(|k| u32::from(k).min(payload.len() as u32)),
                        offset,
                        timestamp,
                        segment_position,
                    };
                    encode(&header, &payload)
                },
            )
    }

    fn encode(header: &RecordHeader, payload: &[u8]) -> Vec<u8> {
        let mut head = [0u8; RECORD_HEADER_BYTES];
        header.encode(&mut head);
        let crc = record_crc(&head, payload);
        head[8..12].copy_from_slice(&crc.to_le_bytes());
        [&head[..], payload].concat()
    }

    /// A commit-log file's bytes: records, then an end-of-file marker over the rest.
    fn log_file() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(record(), 0..6), 0usize..64).prop_map(|(records, spare)| {
            let mut bytes = records.concat();
            let blank = (BLANK_BYTES + spare) as u32;
            bytes.extend_from_slice(&blank.to_le_bytes());
            bytes.extend_from_slice(&BLANK_MAGIC.to_le_bytes());
            bytes.resize(bytes.len() + spare, 0);
            bytes
        })
    }

    proptest! {
        #![proptest_config(fuzzing::config(500))]

        /// Recovery's walk over a file: every record it accepts lies inside the file and
        /// re-encodes to exactly the bytes it was decoded from.
        #[test]
        fn scanning_any_bytes_accepts_only_records_that_re_encode_identically(
            bytes in fuzzing::garbage_or_damaged(log_file(), 2048)
        ) {
            let mut position = 0;
            while position < bytes.len() {
                match scan_record(&bytes[position..]) {
                    Scanned::Record(header) => {
                        let size = header.size as usize;
                        prop_assert!(size >= RECORD_HEADER_BYTES && position + size <= bytes.len());
                        let payload = &bytes[position + RECORD_HEADER_BYTES..position + size];
                        prop_assert!(header.key_len.is_none_or(|k| k as usize <= payload.len()));
                        prop_assert_eq!(&encode(&header, payload)[..], &bytes[position..position + size]);
                        position += size;
                    }
                    // A repaired span: its size is checked against the rest of the file.
                    Scanned::Skip(size) => {
                        prop_assert!(size >= MARKER_BYTES && position + size <= bytes.len());
                        position += size;
                    }
                    Scanned::EndOfFile | Scanned::Invalid(_) => break,
                }
            }
        }

        #[test]
        fn queue_entries_and_file_names_round_trip(
            entry in proptest::collection::vec(any::<u8>(), QUEUE_ENTRY_BYTES),
            name in prop_oneof!["[0-9]{18,22}", ".{0,24}"],
        ) {
            prop_assert_eq!(&QueueEntry::decode(&entry).encode()[..], &entry[..]);
            if let Some(number) = parse_file_name(&name) {
                prop_assert_eq!(file_name(number), name);
            }
        }
    }
}
