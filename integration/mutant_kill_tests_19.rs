//! What a `cargo mutants` pass over `src/store/format.rs` (from line 230, `decode_header`'s
//! bounds, on) found untested (issue 9). Each test says which mutants it kills.

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::check::{check, CheckOptions, Finding};
use commitfs::store::Store;

/// README "On-disk format": the end-of-file marker's and the skip marker's magic.
const BLANK_MAGIC: u32 = 0xC0F5_B1A4;
const SKIP_MAGIC: u32 = 0xC0F5_5C1D;
/// The small store's commit-log files (`fixtures::small_store_config`).
const FILE_BYTES: usize = 64 * 1024;

fn log_file(dir: &Path, base: usize) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// Topic "t" (one partition, lines) holding `line 0` … `line 9`, one batch each in the first
/// commit-log file, left as a crash leaves it (no checkpoint: the next open scans the log).
fn crashed_store_with_ten_lines(dir: &Path) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 10);
    store.sync().unwrap();
    store.halt_without_cleanup();
}

/// The 4-byte fields a damage writes over a batch, given where it starts: (byte of the
/// batch, value).
type Damage = fn(usize) -> Vec<(usize, u32)>;

/// Writes each `(at, value)` that `fields` gives for the fourth batch of the first
/// commit-log file (given where it starts) as a 4-byte field at its byte `at`; returns where
/// that batch starts.
fn damage_the_fourth_batch(dir: &Path, fields: impl Fn(usize) -> Vec<(usize, u32)>) -> usize {
    let path = log_file(dir, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 10, "one batch a line");
    let start = starts[3];
    for (at, value) in fields(start) {
        bytes[start + at..start + at + 4].copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(&path, &bytes).unwrap();
    start
}

/// Opens the store in `dir`, which must be refused as damage at byte `at` of the first
/// commit-log file, for `reason`, with valid batches after it.
#[track_caller]
fn assert_open_refused_at(dir: &Path, at: usize, reason: &str) {
    let error = Store::open(dir, fixtures::small_store_config())
        .err()
        .expect("a log damaged before valid batches opened");
    let text = error.to_string();
    fixtures::assert_needs_repair(error, &format!("byte {at}: {reason}, "));
    assert!(text.contains("a valid record follows"), "{text}");
}

/// A batch that ends exactly 8 bytes before the end of its commit-log file leaves an
/// end-of-file marker that fills the file's last 8 bytes (README: every file keeps room for
/// it). After a crash the open scans past it into the next file and serves every message.
/// Kills `rest.len() < MARKER_BYTES` → `<=` in `scan_record` (line 279: the 8-byte marker
/// was taken for "fewer than 8 bytes left", damage followed by a valid batch, and the open
/// refused the store).
#[test]
fn a_file_ending_in_an_eight_byte_end_of_file_marker_recovers_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // One unkeyed message a batch: a 60-byte header and a 4-byte table before its bytes.
    let big: Vec<u8> = [vec![b'a'; 3999], b"\n".to_vec()].concat();
    let last_in_file: Vec<u8> = [vec![b'b'; 439], b"\n".to_vec()].concat();
    assert_eq!(
        16 * (64 + big.len()) + 64 + last_in_file.len(),
        FILE_BYTES - 8
    );
    let mut messages = vec![big; 16];
    messages.push(last_in_file);
    messages.extend((0..5).map(fixtures::line));
    {
        let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
        for message in &messages {
            store.append(&partition, message, None).unwrap();
        }
        store.sync().unwrap();
        store.halt_without_cleanup();
    }
    // What the test needs: the first file's batches end 8 bytes before its end, then the
    // marker, and the last five messages went to the next file.
    let first = std::fs::read(log_file(dir.path(), 0)).unwrap();
    assert_eq!(first.len(), FILE_BYTES);
    let starts = fixtures::batch_starts(&first);
    assert_eq!(starts.len(), 17);
    let marker = FILE_BYTES - 8;
    assert_eq!(first[marker..marker + 4], 8u32.to_le_bytes());
    assert_eq!(first[marker + 4..], BLANK_MAGIC.to_le_bytes());
    let second = std::fs::read(log_file(dir.path(), FILE_BYTES)).unwrap();
    assert_eq!(fixtures::batch_starts(&second).len(), 5);

    let store = Store::open(dir.path(), fixtures::small_store_config())
        .expect("a log whose first file ends in an 8-byte end-of-file marker opens");
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), messages.len() as u64);
    for (offset, message) in messages.iter().enumerate() {
        let read = store.read_message(&partition, offset as u64);
        assert_eq!(read.ok().as_ref(), Some(message), "offset {offset}");
    }
    // More appends go on after them.
    store.append(&partition, b"after\n", None).unwrap();
    assert_eq!(
        store
            .read_message(&partition, messages.len() as u64)
            .unwrap(),
        b"after\n"
    );
}

/// A batch whose magic was damaged into the end-of-file marker's, its size left as the
/// batch's (not the rest of the file), is damage: the open refuses the store, saying so and
/// that valid batches follow, rather than taking the file to end there (which would drop
/// `line 3` … `line 9` without a word). Kills the match guard `size == rest.len()` → `true`
/// in `scan_record` (line 284: the open served 3 messages) and the deleted `BLANK_MAGIC`
/// arm after it (line 285: the reason became "unknown magic").
#[test]
fn a_batch_damaged_into_an_end_of_file_marker_of_the_wrong_size_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_ten_lines(dir.path());
    // The size stays the batch's.
    let at = damage_the_fourth_batch(dir.path(), |_| vec![(4, BLANK_MAGIC)]);
    assert_open_refused_at(dir.path(), at, "end-of-file marker with a wrong size");
}

/// A skip marker (`commitfs check --repair`'s) whose size runs past the end of its file is
/// damage, and the open's refusal says what it found. Kills the deleted `SKIP_MAGIC` arm for a
/// wrong size in `scan_record` (line 287: the reason became "unknown magic").
#[test]
fn a_skip_marker_running_past_its_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_ten_lines(dir.path());
    let at = damage_the_fourth_batch(dir.path(), |start| {
        vec![(0, (FILE_BYTES - start + 1) as u32), (4, SKIP_MAGIC)]
    });
    assert_open_refused_at(dir.path(), at, "skip marker with a wrong size");
}

/// A write torn by a crash after the first bytes of a batch's size reached the log (its magic
/// still zeroes) is not the log's normal end: `commitfs check` notes a torn tail there, which
/// the next open cuts, serving every whole batch before it. Kills the match guard `size == 0`
/// → `true` in `scan_record` (line 298: the tail read as "zeroes (never written)", the
/// normal end, and check said nothing).
#[test]
fn a_torn_size_after_the_last_batch_is_noted_by_check_and_cut_by_the_open() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_ten_lines(dir.path());
    let path = log_file(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    let last = starts[9];
    let end = last + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
    assert!(
        bytes[end..end + 64].iter().all(|&b| b == 0),
        "the log ends at {end}"
    );
    bytes[end..end + 4].copy_from_slice(&68u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let report = check(dir.path(), &CheckOptions::default()).unwrap();
    assert!(!report.damaged(), "{:?}", report.findings);
    let torn = format!("byte {end}: unknown magic: a torn tail");
    assert!(
        report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Note(text) if text.contains(&torn))),
        "no note of the torn tail at {end}: {:?}",
        report.findings
    );

    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 10);
    fixtures::assert_reads(&store, &partition, 0, 10);
}

/// A batch whose size field was damaged to less than a batch header is refused for its size
/// (its CRC, over the bytes that size claims, is not what is wrong). Kills `size <
/// BATCH_HEADER_BYTES` → `==` and → `>` in `scan_record`'s first guard (line 290: the reason
/// became "CRC32C mismatch").
#[test]
fn a_batch_whose_size_is_damaged_below_a_header_is_refused_for_its_size() {
    let dir = tempfile::tempdir().unwrap();
    crashed_store_with_ten_lines(dir.path());
    let at = damage_the_fourth_batch(dir.path(), |_| vec![(0, 10)]);
    assert_open_refused_at(dir.path(), at, "batch size out of bounds");
}

/// A batch whose size field still holds at least a header and lies inside its file is judged
/// by its CRC first, whatever else is damaged: the CRC says best what is wrong with a damaged
/// batch, and the open's refusal says "CRC32C mismatch". Three damages: the message count
/// set to 0 (its size still right); the size set to exactly a header (60 bytes, no room for
/// the table); the count set to 0 and the size to the rest of the file. Kill, in
/// `scan_record`'s first guard `size < BATCH_HEADER_BYTES || size > rest.len()` (line 290):
/// the guard → `true` and `<` → `<=` and `>` → `>=` (the reasons became "batch without
/// messages" and "batch size out of bounds").
#[test]
fn a_damaged_batch_with_a_size_inside_its_file_is_refused_as_a_crc_mismatch() {
    let damages: [Damage; 3] = [
        |_| vec![(20, 0)],
        |_| vec![(0, 60)],
        |start| vec![(20, 0), (0, (FILE_BYTES - start) as u32)],
    ];
    for (case, damage) in damages.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        crashed_store_with_ten_lines(dir.path());
        let at = damage_the_fourth_batch(dir.path(), damage);
        eprintln!("damage {case}");
        assert_open_refused_at(dir.path(), at, "CRC32C mismatch");
    }
}

/// FNV-1a 64 over `topic_id` (4 bytes, little-endian) then `key`: README "Key-index files".
fn fnv1a(topic_id: u32, key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in topic_id.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// The key index on disk is the documented format, which a store written by another build
/// (or another reader of the files) relies on: each entry holds its key's FNV-1a hash over
/// the topic id and the key, and slot `hash % slot count` leads to it. Kills `key_hash` → `1`
/// and `^=` → `|=` (both timed out in the pass: every key in one slot chain) and `^=` → `&=`
/// (missed) in `src/store/format.rs` line 363/368.
#[test]
fn key_index_entries_hold_the_fnv1a_hash_of_topic_id_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys: [&[u8]; 3] = [b"alpha", b"beta", b"gamma"];
    let topic_id = {
        let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
        for (n, key) in keys.iter().enumerate() {
            let line = [*key, format!(":{n}\n").as_bytes()].concat();
            store.append(&partition, &line, Some(key.len())).unwrap();
        }
        let topic = store.topic("t").unwrap();
        assert_eq!(
            fixtures::key_matches(&store, &topic, "beta"),
            [(0, 1, "beta:1\n".to_string())]
        );
        let id = topic.id();
        store.close().unwrap();
        id
    };
    let index: Vec<_> = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(index.len(), 1, "{index:?}");
    let bytes = std::fs::read(&index[0]).unwrap();
    let le_u32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let le_u64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    // Header: slot count at 8, entries in use (counting the null entry 0) at 16.
    let slots = le_u32(8) as usize;
    assert_eq!(slots, 64);
    assert_eq!(le_u32(16), 4);
    let entries_at = 64 + 4 * slots;
    for (n, key) in keys.iter().enumerate() {
        let number = n as u32 + 1;
        let entry = entries_at + 24 * number as usize;
        let hash = le_u64(entry);
        assert_eq!(hash, fnv1a(topic_id, key), "entry {number}");
        assert_eq!(
            le_u32(entry + 16),
            0,
            "entry {number}: the only message of its batch"
        );
        // The slot's chain (newest first, 0 ends it) reaches the entry.
        let mut at = le_u32(64 + 4 * (hash % slots as u64) as usize);
        while at != 0 && at != number {
            at = le_u32(entries_at + 24 * at as usize + 20);
        }
        assert_eq!(at, number, "slot of entry {number}");
    }
}
