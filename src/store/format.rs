//! Byte layouts of everything the store writes. All integers are little-endian.

/// Commit-log batch header: see README "On-disk format". A batch holds consecutive
/// messages of one partition, appended together; its header and CRC are paid once.
pub const BATCH_HEADER_BYTES: usize = 60;
pub const BATCH_MAGIC: u32 = 0xC0F5_BA7C;
/// Marks the unused tail of a commit-log file: the next batch is in the next file.
pub const BLANK_MAGIC: u32 = 0xC0F5_B1A4;
/// Marks a damaged span that `commitfs check --repair` gave up: scans pass over it.
pub const SKIP_MAGIC: u32 = 0xC0F5_5C1D;
/// A marker (end-of-file or skip) is a size and a magic.
pub const MARKER_BYTES: usize = 8;
/// Every file keeps room for an end-of-file marker.
pub const BLANK_BYTES: usize = MARKER_BYTES;
/// A key-length slot of a message without a key.
pub const NO_KEY: u32 = u32::MAX;
/// Batch flag: the batch has a key-length table.
const HAS_KEYS: u32 = 1;
/// Table bytes per message: its end, and in a keyed batch its key length.
pub const SLOT_BYTES: usize = 4;
/// The largest batch an append writes (the mount's largest write is 1 MiB): bounds the bytes
/// a reader checks against one CRC.
pub const MAX_BATCH_BYTES: usize = 2 << 20;

pub const QUEUE_ENTRY_BYTES: usize = 20;
/// The `commit_log_offset` of a queue entry whose message was lost in a damaged span that
/// `commitfs check --repair` skipped: it points nowhere, so reading the message fails.
pub const LOST_MESSAGE: u64 = u64::MAX;

/// The fixed fields of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The whole batch's bytes, header included.
    pub size: u32,
    pub topic_id: u32,
    pub partition: u32,
    pub count: u32,
    pub first_offset: u64,
    pub timestamp: i64,
    /// Byte position of the first message inside its segment; a batch never spans segments.
    pub segment_position: u64,
    /// Byte position of the first message in its partition's `stream`: every byte the
    /// partition stored before it.
    pub stream_position: u64,
    pub keyed: bool,
}

impl BatchHeader {
    /// Bytes of the per-message table after the header.
    pub fn table_bytes(&self) -> usize {
        table_bytes(self.count as usize, self.keyed)
    }

    /// Where the messages' bytes start, from the batch's start.
    pub fn payload_start(&self) -> usize {
        BATCH_HEADER_BYTES + self.table_bytes()
    }

    /// The messages' bytes, back to back: a stretch of the segment.
    pub fn payload_bytes(&self) -> usize {
        self.size as usize - self.payload_start()
    }

    pub fn end_offset(&self) -> u64 {
        self.first_offset + u64::from(self.count)
    }

    /// Encodes everything but the CRC (bytes 8..12), which covers bytes 12..size.
    pub fn encode(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut out = [0u8; BATCH_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.size.to_le_bytes());
        out[4..8].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[12..16].copy_from_slice(&self.topic_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.partition.to_le_bytes());
        out[20..24].copy_from_slice(&self.count.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.timestamp.to_le_bytes());
        out[40..48].copy_from_slice(&self.segment_position.to_le_bytes());
        out[48..56].copy_from_slice(&self.stream_position.to_le_bytes());
        let flags = if self.keyed { HAS_KEYS } else { 0 };
        out[56..60].copy_from_slice(&flags.to_le_bytes());
        out
    }
}

/// Table bytes of a batch of `count` messages.
pub fn table_bytes(count: usize, keyed: bool) -> usize {
    count * SLOT_BYTES * if keyed { 2 } else { 1 }
}

/// The bytes of a batch of messages whose payloads total `payload_bytes`.
pub fn batch_size(count: usize, keyed: bool, payload_bytes: usize) -> usize {
    BATCH_HEADER_BYTES + table_bytes(count, keyed) + payload_bytes
}

/// CRC32C of a batch's bytes 12..size (everything after the CRC field).
pub fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[12..])
}

/// One message of a batch, as the batch's fields and table give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub topic_id: u32,
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    /// Byte position of this message inside its segment.
    pub segment_position: u64,
    /// Byte position of this message in its partition's `stream`.
    pub stream_position: u64,
    pub key_len: Option<u32>,
    pub len: u32,
    /// Its number inside the batch.
    pub index: u32,
    /// Where its bytes start, from the batch's start.
    pub payload_at: u32,
}

impl RecordHeader {
    pub fn payload_len(&self) -> usize {
        self.len as usize
    }
}

/// A batch's header and table over its bytes (`bytes` holds at least `header.size`).
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Whether the batch's bytes are those at the start of `bytes` (not a copy of them).
    pub fn lies_at(&self, bytes: &[u8]) -> bool {
        std::ptr::eq(self.bytes.as_ptr(), bytes.as_ptr())
    }

    /// Message `index` of the batch; `None` if the table is inconsistent there. O(1): a
    /// reader reaches a message without walking the ones before it.
    pub fn message(&self, index: u32) -> Option<RecordHeader> {
        let header = &self.header;
        if index >= header.count {
            return None;
        }
        let slot = BATCH_HEADER_BYTES + index as usize * SLOT_BYTES;
        let end = le_u32(self.bytes, slot) as usize;
        let start = match index {
            0 => 0,
            _ => le_u32(self.bytes, slot - SLOT_BYTES) as usize,
        };
        let key_len = match header.keyed {
            true => {
                let keys = BATCH_HEADER_BYTES + header.count as usize * SLOT_BYTES;
                Some(le_u32(self.bytes, keys + index as usize * SLOT_BYTES))
                    .filter(|&k| k != NO_KEY)
            }
            false => None,
        };
        let len = end.checked_sub(start)?;
        if end > header.payload_bytes() || key_len.is_some_and(|k| k as usize > len) {
            return None;
        }
        Some(RecordHeader {
            topic_id: header.topic_id,
            partition: header.partition,
            offset: header.first_offset + u64::from(index),
            timestamp: header.timestamp,
            segment_position: header.segment_position + start as u64,
            stream_position: header.stream_position + start as u64,
            key_len,
            len: len as u32,
            index,
            payload_at: (header.payload_start() + start) as u32,
        })
    }

    /// The bytes of a message of this batch.
    pub fn payload(&self, message: &RecordHeader) -> &'a [u8] {
        let at = message.payload_at as usize;
        &self.bytes[at..at + message.payload_len()]
    }

    /// Every message, in order (the table was checked whole by [`scan_record`]).
    pub fn messages(&self) -> impl Iterator<Item = RecordHeader> + '_ {
        (0..self.header.count).filter_map(|index| self.message(index))
    }

    /// Whether every message's table slots agree with each other and the batch's size: each
    /// message is readable (its end at or after the previous one's, inside the batch, its key
    /// no longer than it), and the last one ends where the batch does.
    pub fn table_is_consistent(&self) -> bool {
        let mut end = 0;
        for index in 0..self.header.count {
            match self.message(index) {
                Some(message) => end = message.payload_at as usize + message.payload_len(),
                None => return false,
            }
        }
        end == self.header.size as usize
    }
}

/// The one decoder of a batch header: the bytes at the start of `rest` (the remainder of
/// one commit-log file) must be a batch's magic, a size that fits in `rest` and holds the
/// header and table, and at least one message. Neither the CRC nor the table is checked
/// here: the scan checks both at once ([`scan_record`]), a reader the CRC where it serves
/// bytes and the table slots it uses ([`Batch::message`]).
pub fn decode_header(rest: &[u8]) -> Result<Batch<'_>, &'static str> {
    if rest.len() < BATCH_HEADER_BYTES {
        return Err("batch size out of bounds");
    }
    if le_u32(rest, 4) != BATCH_MAGIC {
        return Err("unknown magic");
    }
    let flags = le_u32(rest, 56);
    if flags & !HAS_KEYS != 0 {
        return Err("unknown batch flags");
    }
    let header = BatchHeader {
        size: le_u32(rest, 0),
        topic_id: le_u32(rest, 12),
        partition: le_u32(rest, 16),
        count: le_u32(rest, 20),
        first_offset: le_u64(rest, 24),
        timestamp: le_u64(rest, 32) as i64,
        segment_position: le_u64(rest, 40),
        stream_position: le_u64(rest, 48),
        keyed: flags & HAS_KEYS != 0,
    };
    let size = header.size as usize;
    // In u64: a damaged count must not overflow the table's size.
    let table_end = BATCH_HEADER_BYTES as u64
        + u64::from(header.count) * (SLOT_BYTES as u64) * if header.keyed { 2 } else { 1 };
    if size > rest.len() || table_end > size as u64 {
        return Err("batch size out of bounds");
    }
    if header.count == 0 {
        return Err("batch without messages");
    }
    let payload_bytes = size as u64 - table_end;
    let overflows = |position: u64| position.checked_add(payload_bytes).is_none();
    if header
        .first_offset
        .checked_add(u64::from(header.count))
        .is_none()
        || overflows(header.segment_position)
        || overflows(header.stream_position)
    {
        return Err("batch offsets out of bounds");
    }
    Ok(Batch {
        header,
        bytes: &rest[..size],
    })
}

/// Whether a whole batch's bytes match the CRC32C stored in it.
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES && batch_crc(batch) == le_u32(batch, 8)
}

/// What a scan finds at a commit-log position.
#[derive(Clone, Copy, Debug)]
pub enum Scanned<'a> {
    Record(Batch<'a>),
    /// The rest of the file is unused.
    EndOfFile,
    /// A span `commitfs check --repair` marked as damaged: this many bytes (the marker
    /// included) hold no batch; the next batch follows them.
    Skip(usize),
    /// Not a valid batch: the log ends here, or it is damaged.
    Invalid(&'static str),
}

/// Validates the bytes at the start of `rest` (the remainder of one commit-log file): a
/// batch is valid when its CRC checks and its table agrees with its size.
pub fn scan_record(rest: &[u8]) -> Scanned<'_> {
    if rest.len() < MARKER_BYTES {
        return Scanned::Invalid("fewer than 8 bytes left in the file");
    }
    let size = le_u32(rest, 0) as usize;
    match le_u32(rest, 4) {
        BLANK_MAGIC if size == rest.len() => Scanned::EndOfFile,
        BLANK_MAGIC => Scanned::Invalid("end-of-file marker with a wrong size"),
        SKIP_MAGIC if (MARKER_BYTES..=rest.len()).contains(&size) => Scanned::Skip(size),
        SKIP_MAGIC => Scanned::Invalid("skip marker with a wrong size"),
        // The CRC first: it says best what is wrong with a damaged batch.
        BATCH_MAGIC => match decode_header(rest) {
            Err(reason) if size < BATCH_HEADER_BYTES || size > rest.len() => {
                Scanned::Invalid(reason)
            }
            _ if !crc_matches(&rest[..size]) => Scanned::Invalid("CRC32C mismatch"),
            Ok(batch) if batch.table_is_consistent() => Scanned::Record(batch),
            Ok(_) => Scanned::Invalid("message table does not match the batch"),
            Err(reason) => Scanned::Invalid(reason),
        },
        0 if size == 0 => Scanned::Invalid("zeroes (never written)"),
        _ => Scanned::Invalid("unknown magic"),
    }
}

/// The position of the first valid batch (its CRC checks) that starts at or after `from`
/// in `file` (a whole commit-log file). Candidates are the places the batch magic occurs.
pub fn next_valid_record(file: &[u8], from: usize) -> Option<usize> {
    let magic = BATCH_MAGIC.to_le_bytes();
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

/// Where a message lies in the commit log: its batch's global offset and its number in it.
/// The key index stores these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageAt {
    pub batch: u64,
    pub index: u32,
}

/// One consume-queue entry: where message N of a partition lives in the commit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Global offset of the message's bytes.
    pub commit_log_offset: u64,
    /// The message's length.
    pub size: u32,
    /// Global offset of its batch, whose header and CRC vouch for it.
    pub batch: u64,
}

impl QueueEntry {
    pub fn encode(&self) -> [u8; QUEUE_ENTRY_BYTES] {
        let mut out = [0u8; QUEUE_ENTRY_BYTES];
        out[0..8].copy_from_slice(&self.commit_log_offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out[12..20].copy_from_slice(&self.batch.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> QueueEntry {
        QueueEntry {
            commit_log_offset: le_u64(bytes, 0),
            size: le_u32(bytes, 8),
            batch: le_u64(bytes, 12),
        }
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The 64-bit key hash used by the key index: FNV-1a over the topic id
/// and the key bytes. Fixed by the on-disk format, so it is written out here rather than
/// taken from a hasher whose algorithm may change between Rust releases.
pub fn key_hash(topic_id: u32, key: &[u8]) -> u64 {
    // Tests make every key collide, so that only the key bytes can tell keys apart.
    fail::fail_point!("format::key_hash", |_| 0x5EED);
    let hash = fnv1a(FNV_OFFSET_BASIS, &topic_id.to_le_bytes());
    // 0 means "no key" to an append.
    fnv1a(hash, key).max(1)
}

/// How many keys [`key_hashes`] hashes side by side.
pub const KEYS_AT_ONCE: usize = 4;

/// [`key_hash`] of each of `keys`, worked out side by side: FNV-1a waits on a multiply per
/// byte, so one key at a time the processor idles between them (about 13 ns a key, a tenth of
/// the appending thread's time for keyed lines into one partition).
pub fn key_hashes(topic_id: u32, keys: [&[u8]; KEYS_AT_ONCE]) -> [u64; KEYS_AT_ONCE] {
    fail::fail_point!("format::key_hash", |_| [0x5EED; KEYS_AT_ONCE]);
    let mut hashes = [fnv1a(FNV_OFFSET_BASIS, &topic_id.to_le_bytes()); KEYS_AT_ONCE];
    let shortest = keys.iter().map(|key| key.len()).min().unwrap_or(0);
    for at in 0..shortest {
        for (hash, key) in hashes.iter_mut().zip(keys) {
            *hash = (*hash ^ u64::from(key[at])).wrapping_mul(FNV_PRIME);
        }
    }
    for (hash, key) in hashes.iter_mut().zip(keys) {
        *hash = fnv1a(*hash, &key[shortest..]).max(1);
    }
    hashes
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

/// Appends a batch's table (each message's end, then in a keyed batch each key length) for
/// messages of `(length, key length)`.
pub fn encode_table(
    out: &mut Vec<u8>,
    messages: impl Iterator<Item = (usize, Option<usize>)> + Clone,
    keyed: bool,
) {
    let mut end = 0u32;
    for (len, _) in messages.clone() {
        end += len as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    if keyed {
        for (_, key_len) in messages {
            let slot = key_len.map_or(NO_KEY, |k| k as u32);
            out.extend_from_slice(&slot.to_le_bytes());
        }
    }
}

/// A whole encoded batch of `messages` (bytes, key length) with `header`'s fields (its size,
/// count and keyed flag are set here).
#[cfg(test)]
pub fn encode_batch(header: BatchHeader, messages: &[(&[u8], Option<usize>)]) -> Vec<u8> {
    let keyed = header.keyed || messages.iter().any(|(_, key)| key.is_some());
    let payload: usize = messages.iter().map(|(bytes, _)| bytes.len()).sum();
    let header = BatchHeader {
        size: batch_size(messages.len(), keyed, payload) as u32,
        count: messages.len() as u32,
        keyed,
        ..header
    };
    let mut bytes = header.encode().to_vec();
    encode_table(
        &mut bytes,
        messages.iter().map(|(b, k)| (b.len(), *k)),
        keyed,
    );
    for (message, _) in messages {
        bytes.extend_from_slice(message);
    }
    let crc = batch_crc(&bytes);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> BatchHeader {
        BatchHeader {
            size: 0,
            topic_id: 7,
            partition: 3,
            count: 0,
            first_offset: 42,
            timestamp: 1_700_000_000_000,
            segment_position: 99,
            stream_position: 1099,
            keyed: false,
        }
    }

    fn sample() -> Vec<u8> {
        encode_batch(
            sample_header(),
            &[(b"k:abc", Some(1)), (b"", None), (b"xyz\n", None)],
        )
    }

    #[test]
    fn a_batch_round_trips_and_every_flipped_bit_is_caught() {
        let bytes = sample();
        let Scanned::Record(batch) = scan_record(&bytes) else {
            panic!("a valid batch was refused");
        };
        let messages: Vec<RecordHeader> = batch.messages().collect();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            (
                messages[2].offset,
                messages[2].segment_position,
                messages[2].stream_position,
                messages[2].len
            ),
            (44, 99 + 5, 1099 + 5, 4)
        );
        assert_eq!(batch.payload(&messages[0]), b"k:abc");
        assert_eq!(messages[0].key_len, Some(1));
        assert_eq!(messages[1].key_len, None);
        assert_eq!(batch.payload(&messages[2]), b"xyz\n");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(scan_record(&damaged), Scanned::Record(_)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn a_cut_batch_is_invalid() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(matches!(scan_record(&bytes[..len]), Scanned::Invalid(_)));
        }
    }

    #[test]
    fn a_table_that_disagrees_with_the_size_is_refused_even_with_a_good_crc() {
        let mut bytes = sample();
        // The second message's end moved past the third's: no longer in order.
        let slot = BATCH_HEADER_BYTES + SLOT_BYTES;
        bytes[slot..slot + 4].copy_from_slice(&10u32.to_le_bytes());
        let crc = batch_crc(&bytes);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(scan_record(&bytes), Scanned::Invalid(_)));
    }

    /// A count whose table would not fit in the batch is refused before any slot is read:
    /// a reader of one message (no scan) must not read past the batch.
    #[test]
    fn a_count_beyond_the_room_for_its_table_is_refused() {
        let mut bytes = sample();
        let room = (bytes.len() - BATCH_HEADER_BYTES) / (2 * SLOT_BYTES);
        for count in [room as u32 + 1, u32::MAX / 4, u32::MAX] {
            bytes[20..24].copy_from_slice(&count.to_le_bytes());
            assert!(decode_header(&bytes).is_err(), "count {count} accepted");
        }
    }

    #[test]
    fn a_batch_of_empty_messages_is_valid() {
        let bytes = encode_batch(sample_header(), &[(b"", None), (b"", None)]);
        let Scanned::Record(batch) = scan_record(&bytes) else {
            panic!("a batch of empty messages was refused");
        };
        let lengths: Vec<usize> = batch.messages().map(|m| m.payload_len()).collect();
        assert_eq!(lengths, [0, 0]);
    }

    /// Positions may reach the last byte u64 can count, never past it (a damaged position
    /// must not overflow in a reader's arithmetic).
    #[test]
    fn segment_and_stream_positions_that_would_overflow_are_refused() {
        let payload = b"k:abcxyz\n".len() as u64;
        let at = |field: usize, position: u64| {
            let mut bytes = sample();
            bytes[field..field + 8].copy_from_slice(&position.to_le_bytes());
            decode_header(&bytes).is_ok()
        };
        for field in [40, 48] {
            assert!(
                at(field, u64::MAX - payload),
                "field {field}: the last fitting position"
            );
            assert!(
                !at(field, u64::MAX - payload + 1),
                "field {field}: one past it"
            );
        }
    }

    #[test]
    fn scans_pass_skip_markers_and_find_the_next_valid_batch() {
        let batch = sample();
        let mut file = vec![0u8; 300];
        file[..8].copy_from_slice(&skip_marker(100));
        file[100..100 + batch.len()].copy_from_slice(&batch);
        assert!(matches!(scan_record(&file), Scanned::Skip(100)));
        assert_eq!(next_valid_record(&file, 1), Some(100));
        assert_eq!(next_valid_record(&file, 100), Some(100));
        assert_eq!(next_valid_record(&file, 101), None);
        // The magic alone is not a batch: its CRC must check.
        file[200..204].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        assert_eq!(next_valid_record(&file, 101), None);
        assert!(matches!(scan_record(&skip_marker(4)), Scanned::Invalid(_)));
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config(256))]

        /// Keys hashed side by side get the hashes they get one at a time.
        #[test]
        fn keys_hashed_side_by_side_hash_as_one_at_a_time(
            topic_id in proptest::prelude::any::<u32>(),
            keys in proptest::array::uniform4(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)),
        ) {
            let one_at_a_time = keys.each_ref().map(|key| key_hash(topic_id, key));
            proptest::prop_assert_eq!(key_hashes(topic_id, keys.each_ref().map(|k| &k[..])), one_at_a_time);
        }
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
pub(crate) mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    pub fn batch() -> impl Strategy<Value = Vec<u8>> {
        let message = (
            proptest::collection::vec(any::<u8>(), 0..60),
            any::<Option<u8>>(),
        );
        (
            proptest::collection::vec(message, 1..6),
            any::<(u32, u32, u64, i64, u64, u64)>(),
        )
            .prop_map(
                |(messages, (topic_id, partition, first, timestamp, position, stream))| {
                    let header = BatchHeader {
                        size: 0,
                        topic_id,
                        partition,
                        count: 0,
                        first_offset: first >> 1,
                        timestamp,
                        segment_position: position >> 1,
                        stream_position: stream >> 1,
                        keyed: false,
                    };
                    let messages: Vec<(&[u8], Option<usize>)> = messages
                        .iter()
                        .map(|(bytes, key)| {
                            let key = key.map(|k| usize::from(k).min(bytes.len()));
                            (&bytes[..], key)
                        })
                        .collect();
                    encode_batch(header, &messages)
                },
            )
    }

    /// A commit-log file's bytes: batches, then an end-of-file marker over the rest.
    fn log_file() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(batch(), 0..4), 0usize..64).prop_map(|(batches, spare)| {
            let mut bytes = batches.concat();
            let blank = (BLANK_BYTES + spare) as u32;
            bytes.extend_from_slice(&blank.to_le_bytes());
            bytes.extend_from_slice(&BLANK_MAGIC.to_le_bytes());
            bytes.resize(bytes.len() + spare, 0);
            bytes
        })
    }

    proptest! {
        #![proptest_config(fuzzing::config(500))]

        /// Recovery's walk over a file: every batch it accepts lies inside the file, its
        /// messages tile its payload exactly, and it re-encodes to the bytes it came from.
        #[test]
        fn scanning_any_bytes_accepts_only_batches_that_re_encode_identically(
            bytes in fuzzing::garbage_or_damaged(log_file(), 2048)
        ) {
            let mut position = 0;
            while position < bytes.len() {
                match scan_record(&bytes[position..]) {
                    Scanned::Record(batch) => {
                        let size = batch.header.size as usize;
                        prop_assert!(size >= BATCH_HEADER_BYTES && position + size <= bytes.len());
                        let messages: Vec<RecordHeader> = batch.messages().collect();
                        prop_assert_eq!(messages.len(), batch.header.count as usize);
                        let mut at = batch.header.payload_start();
                        let mut pairs = Vec::new();
                        for message in &messages {
                            prop_assert_eq!(message.payload_at as usize, at);
                            at += message.payload_len();
                            prop_assert!(message.key_len.is_none_or(|k| k <= message.len));
                            pairs.push((batch.payload(message), message.key_len.map(|k| k as usize)));
                        }
                        prop_assert_eq!(at, size);
                        prop_assert_eq!(&encode_batch(batch.header, &pairs)[..], &bytes[position..position + size]);
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

        /// A reader reaches message N of a batch without the scan's checks: whatever the
        /// bytes, `decode_header` and `message` stay inside the batch.
        #[test]
        fn any_message_of_any_bytes_stays_inside_its_batch(
            bytes in fuzzing::garbage_or_damaged(batch(), 600),
            indexes in proptest::collection::vec(any::<u32>(), 1..8),
        ) {
            if let Ok(batch) = decode_header(&bytes) {
                for index in indexes.iter().flat_map(|&i| [i, i % 8]) {
                    if let Some(message) = batch.message(index) {
                        let end = message.payload_at as usize + message.payload_len();
                        prop_assert!(end <= batch.header.size as usize);
                        prop_assert_eq!(batch.payload(&message).len(), message.payload_len());
                    }
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
