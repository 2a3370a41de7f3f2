//! The commit log gives back the bytes of messages whose sealed segments are files of their own
//! (issue 8, "a commit-log file ... is deleted early", first step: the blocks are punched out,
//! batch headers and tables stay). In-process: every way of reading a message still answers
//! with its bytes, now from the segment's file, and a message whose bytes are neither in the
//! log nor in an intact file is an error, never zeroes.

mod fixtures;

use fixtures::released::{
    closed_released_store, config, key, message, released_store, segment_file, store_with,
    MESSAGE_BYTES,
};

use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use commitfs::store::{NewMessage, Store, StoreConfig};

/// The blocks the first commit-log file occupies on disk, in bytes. It holds every message of
/// these tests; the next file, made ahead of need by a background thread at a moment of its
/// own (and removed unused at a close), would make any count of all files racy.
fn log_disk_bytes(dir: &Path) -> u64 {
    let first = dir.join("commitlog").join("00000000000000000000");
    std::fs::metadata(first).unwrap().blocks() * 512
}

/// Every message by offset, by key, through the `stream` and through its segment's reader.
fn assert_every_read_answers(store: &Store, messages: usize) {
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();
    for i in 0..messages {
        assert_eq!(
            store.read_message(&partition, i as u64).unwrap(),
            message(i),
            "message {i} by offset"
        );
        let mut found = None;
        store
            .for_each_key_match(&topic, None, &key(i), |m| {
                found = Some((m.offset, m.payload().unwrap()));
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(found, Some((i as u64, message(i))), "message {i} by key");
    }
    let all: Vec<u8> = (0..messages).flat_map(message).collect();
    let mut stream = vec![0u8; all.len()];
    let mut filled = 0;
    while filled < stream.len() {
        let n = partition
            .read_stream(filled as u64, &mut stream[filled..])
            .unwrap();
        assert!(n > 0, "the stream ended at byte {filled}");
        filled += n;
    }
    assert!(stream == all, "the stream differs from the messages");
    for (s, base) in [0u64, 10, 20, 30].into_iter().enumerate() {
        let reader = partition.open_segment(base).unwrap();
        let mut bytes = vec![0u8; 10 * MESSAGE_BYTES + 1];
        let n = reader.read_at(0, &mut bytes).unwrap();
        let want: Vec<u8> = (s * 10..messages.min(s * 10 + 10))
            .flat_map(message)
            .collect();
        assert!(bytes[..n] == want[..], "segment {base} differs");
    }
}

#[test]
fn messages_whose_log_bytes_were_given_back_are_read_from_their_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 35);
    assert_eq!(store.materialize_sealed().unwrap(), 3);
    let before = log_disk_bytes(dir.path());
    let released = store.release_materialized_log().unwrap();
    assert_eq!(released, 3 * 10 * MESSAGE_BYTES as u64);
    let after = log_disk_bytes(dir.path());
    // Each 10,000-byte stretch of messages covers at least one whole 4 KiB block.
    assert!(
        before - after >= 3 * 4096,
        "the log occupies {before} bytes before and {after} after"
    );
    assert_every_read_answers(&store, 35);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let location = partition.locate(12).unwrap();
    assert_eq!((location.segment_base, location.position), (10, 2000));
    assert_eq!(partition.offset_for_time(0).unwrap(), Some(0));
    store.close().unwrap();
}

#[test]
fn a_reader_opened_before_the_segment_had_a_file_reads_it_after_the_log_gave_its_bytes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 35);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let reader = partition.open_segment(10).unwrap();
    assert!(reader.materialized_file().is_none());
    store.materialize_sealed().unwrap();
    store.release_materialized_log().unwrap();
    let mut bytes = vec![0u8; 3 * MESSAGE_BYTES];
    let n = reader.read_at(4500, &mut bytes).unwrap();
    let want: Vec<u8> = (10..20).flat_map(message).collect();
    assert!(
        bytes[..n] == want[4500..7500],
        "the reader served other bytes"
    );
    store.close().unwrap();
}

#[test]
fn a_message_whose_bytes_are_neither_in_the_log_nor_in_an_intact_file_is_an_error_not_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let store = released_store(dir.path());
    let topic = store.topic("t").unwrap();
    let partition = topic.partition(0).unwrap();

    // A byte of segment 10's file changed: its batch no longer matches its CRC32C.
    let damaged = segment_file(dir.path(), 10);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let error = store.read_message(&partition, 15).unwrap_err();
    assert!(error.to_string().contains("CRC32C"), "{error}");
    let mut buf = vec![0u8; 100];
    assert!(partition.read_stream(10_500, &mut buf).is_err());

    // Segment 0's file gone: its messages cannot be read, nor found by key.
    std::fs::remove_file(segment_file(dir.path(), 0)).unwrap();
    assert!(store.read_message(&partition, 3).is_err());
    let found = store.for_each_key_match(&topic, None, &key(3), |_| ControlFlow::Break(()));
    assert!(found.is_err(), "a key whose bytes are gone was answered");
    // Messages of the active segment are still in the log.
    assert_eq!(store.read_message(&partition, 33).unwrap(), message(33));
}

/// `user.offsets.<KEY>` of a key whose messages live in segments' own files compares each
/// candidate's key bytes, read from the file, without reading and checking its whole batch
/// (up to 2 MiB per candidate; the log's batches are read the same way): a byte damaged in
/// another message of the batch leaves the offsets found, while the message's own bytes,
/// which a lookup serves, are refused.
#[test]
fn key_lookups_in_segment_files_compare_key_bytes_and_serve_only_checked_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = released_store(dir.path());
    let topic = store.topic("t").unwrap();
    // Message 15's bytes past its key, in the batch of messages 10..20 (segment 10's file).
    let damaged = segment_file(dir.path(), 10);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[5 * MESSAGE_BYTES + 500] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();

    let mut offsets = Vec::new();
    let mut served = Vec::new();
    store
        .for_each_key_match(&topic, None, &key(12), |m| {
            offsets.push(m.offset);
            served.push(m.payload());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(offsets, [12], "the offsets of key k12");
    let error = served.pop().unwrap().unwrap_err();
    assert!(
        error.to_string().contains("CRC32C")
            && error.to_string().contains("00000000000000000010.log"),
        "{error}"
    );
    // The other segments' files are intact: their keys answer with their messages.
    assert_eq!(
        fixtures::key_matches(&store, &topic, "k3"),
        [(0, 3, String::from_utf8(message(3)).unwrap())]
    );
    store.close().unwrap();
}

#[test]
fn the_log_keeps_the_bytes_of_a_segment_whose_file_does_not_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 35);
    store.materialize_sealed().unwrap();
    let damaged = segment_file(dir.path(), 0);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[9000] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    // The other segments give their bytes back; this one keeps them, and says why in the log.
    assert!(store.release_materialized_log().unwrap() > 0);
    assert!(
        !damaged.with_extension("log.released").exists(),
        "the segment was marked released"
    );
    assert!(segment_file(dir.path(), 10)
        .with_extension("log.released")
        .exists());
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    for i in 0..35 {
        let read = store.read_message(&partition, i as u64).unwrap();
        assert_eq!(read, message(i), "message {i} by offset");
    }
}

/// Bytes `dir` occupies on disk: the blocks of every file under it.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            disk_bytes(&entry.path())
        } else {
            metadata.blocks() * 512
        };
    }
    total
}

/// The disk goal of issue 8 (at most 1.35 times the message bytes for 100-byte messages,
/// queues included) once the log has given back what the segments' files hold: unkeyed 100-byte
/// messages written 1,300 at a time, as `cat` writes lines through the mount. What 100,100 more
/// messages add is measured, so the fixed cost of a store (the commit-log file being written and
/// the next, allocated whole) does not count.
#[test]
fn a_store_of_100_byte_messages_occupies_at_most_1_35_times_their_bytes_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 1 << 20,
        segment_messages: 13_000,
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    let line = [b'x'; 100];
    let batch = vec![
        NewMessage {
            payload: &line,
            key_len: None,
        };
        1300
    ];
    let mut measured = Vec::new();
    for _ in 0..2 {
        for _ in 0..77 {
            store.append_batch(&partition, &batch).unwrap();
        }
        store.materialize_sealed().unwrap();
        store.release_materialized_log().unwrap();
        measured.push(disk_bytes(dir.path()));
    }
    let added_bytes = (77 * 1300 * 100) as f64;
    let released = (measured[1] - measured[0]) as f64 / added_bytes;
    eprintln!("disk per message byte added, once released: {released:.3}");
    assert!(released <= 1.35, "{released:.3} times the message bytes");
    assert_eq!(store.read_message(&partition, 7).unwrap(), line);
    store.close().unwrap();
}

#[test]
fn after_a_clean_stop_the_messages_whose_log_bytes_were_given_back_are_read_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    closed_released_store(dir.path());
    reopen_and_read_everything(dir.path());
}

/// A segment file that does not match its segment is normally removed at open and copied
/// again; once the log gave back the segment's bytes, it is their only copy, so the open
/// refuses (naming the file) and keeps it.
#[test]
fn the_only_copy_of_a_segment_is_never_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_released_store(dir.path());
    let only_copy = segment_file(dir.path(), 10);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&only_copy)
        .unwrap();
    file.set_len(9000).unwrap();
    drop(file);
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open went on");
    assert!(error.to_string().contains("only copy"), "{error}");
    assert!(
        error.to_string().contains("00000000000000000010.log"),
        "{error}"
    );
    assert_eq!(std::fs::metadata(&only_copy).unwrap().len(), 9000);

    std::fs::remove_file(&only_copy).unwrap();
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open went on");
    assert!(error.to_string().contains("missing"), "{error}");
}

/// The open checks each partition's last message from the log with `pread`: when it is the
/// last of a segment whose bytes the log gave back, it is checked against the segment's file.
#[test]
fn a_partition_whose_last_message_lies_in_a_released_segment_opens_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 30);
    store.materialize_sealed().unwrap();
    store.release_materialized_log().unwrap();
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_every_read_answers(&store, 30);
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.stream_end(), 30 * MESSAGE_BYTES as u64);
    store.close().unwrap();
    drop(store);

    // Its file changed: the open refuses, naming the file.
    let damaged = segment_file(dir.path(), 20);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[9999] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let error = Store::open(dir.path(), config())
        .err()
        .expect("the open went on");
    assert!(error.to_string().contains("CRC32C"), "{error}");
    assert!(
        error.to_string().contains("00000000000000000020.log"),
        "{error}"
    );
}

/// [`released_store`] halted as by a crash (no checkpoint, no cleanup).
fn crashed_released_store(dir: &Path) {
    released_store(dir).halt_without_cleanup();
}

/// Opens the store in `dir` again, asserts that every read answers its 35 messages, closes it.
fn reopen_and_read_everything(dir: &Path) {
    let store = Store::open(dir, config()).unwrap();
    assert_every_read_answers(&store, 35);
    store.close().unwrap();
}

/// `commitfs check` of `dir`: its findings as text, and whether any is damage.
fn check(dir: &Path) -> (bool, String) {
    use commitfs::store::check::{check, CheckOptions};
    let options = CheckOptions {
        repair: false,
        segment_messages: None,
        progress: false,
    };
    let report = check(dir, &options).unwrap();
    let text: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    (report.damaged(), text.join("\n"))
}

/// `commitfs dump` of `dir`: its output and report.
fn dump(dir: &Path) -> (String, commitfs::store::dump::DumpReport) {
    use commitfs::store::dump::{dump, DumpOptions};
    let options = DumpOptions {
        topic: None,
        partition: None,
        from: 0,
    };
    let mut out = Vec::new();
    let report = dump(dir, &options, &mut out).unwrap();
    (String::from_utf8(out).unwrap(), report)
}

/// A crash after the punches, before any checkpoint recorded the batches: recovery scans
/// them from the last checkpoint (the empty store's) and reads their messages back from the
/// segments' files; a full rebuild (queues and index deleted) does too.
#[test]
fn recovery_scans_batches_whose_bytes_the_log_gave_back() {
    let dir = tempfile::tempdir().unwrap();
    crashed_released_store(dir.path());
    assert!(dir.path().join("abort").exists());
    reopen_and_read_everything(dir.path());

    std::fs::remove_dir_all(dir.path().join("queues")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    reopen_and_read_everything(dir.path());
}

/// A released segment whose file was altered: recovery refuses, naming the file, instead of
/// taking its batches for a damaged log.
#[test]
fn recovery_names_a_released_segments_file_that_does_not_hold_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    crashed_released_store(dir.path());
    let altered = segment_file(dir.path(), 10);
    let mut bytes = std::fs::read(&altered).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&altered, &bytes).unwrap();
    let Err(error) = Store::open(dir.path(), config()) else {
        panic!("opened over a released segment's altered file");
    };
    let error = error.to_string();
    assert!(
        error.contains(&altered.display().to_string()) && error.contains("CRC32C"),
        "{error}"
    );
    // And the commit-log file and byte of the batch (the log holds every batch of the test).
    let log_file = dir.path().join("commitlog").join(format!("{:020}", 0));
    assert!(
        error.contains(&format!("{}: byte ", log_file.display())),
        "{error}"
    );
}

/// A released segment's marker that cannot be read (a directory in its place) marks the
/// segment released all the same: recovery refuses naming the marker, rather than taking the
/// given-back bytes for damage in the log.
#[test]
fn recovery_names_a_released_segments_marker_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    crashed_released_store(dir.path());
    let marker = format!("{}.released", segment_file(dir.path(), 10).display());
    std::fs::remove_file(&marker).unwrap();
    std::fs::create_dir(&marker).unwrap();
    let Err(error) = Store::open(dir.path(), config()) else {
        panic!("opened over a released segment's unreadable marker");
    };
    let error = error.to_string();
    assert!(error.contains(&marker), "{error}");
}

#[test]
fn check_passes_on_a_released_store_and_names_a_damaged_segment_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = released_store(dir.path());
    store.checkpoint().unwrap();
    store.halt_without_cleanup();
    drop(store);
    let (damaged, findings) = check(dir.path());
    assert!(!damaged, "{findings}");

    let altered = segment_file(dir.path(), 20);
    let mut bytes = std::fs::read(&altered).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&altered, &bytes).unwrap();
    let (damaged, findings) = check(dir.path());
    assert!(damaged, "{findings}");
    assert!(
        findings.contains(&altered.display().to_string()),
        "{findings}"
    );
}

#[test]
fn dump_shows_the_messages_whose_bytes_the_log_gave_back() {
    let dir = tempfile::tempdir().unwrap();
    closed_released_store(dir.path());
    let (out, report) = dump(dir.path());
    assert!(!report.damaged, "{:?}", report.notes);
    assert_eq!(report.messages, 35);
    for i in 0..35 {
        let line = format!("offset={i} ");
        let found = out.lines().find(|l| l.contains(&line)).unwrap();
        let payload = String::from_utf8(message(i)).unwrap();
        assert!(
            found.contains("crc=ok") && found.ends_with(&format!("payload={payload}")),
            "message {i}: {found}"
        );
    }

    std::fs::remove_file(segment_file(dir.path(), 0)).unwrap();
    let (out, report) = dump(dir.path());
    assert!(report.damaged);
    let notes = report.notes.join("\n");
    assert!(
        notes.contains(&segment_file(dir.path(), 0).display().to_string()),
        "{notes}"
    );
    // Nothing of the lost segment is shown (its bytes in the log are holes), the rest is.
    assert_eq!(report.messages, 25, "{out}");
    assert!(!out.contains("offset=3 "));
}

/// The blocks the log gave back stay given back when the store is opened again (an open
/// allocates a log file only from where it is written), and the store's own count of its
/// disk use (the ceiling's measure) sees them go.
#[test]
fn the_log_stays_smaller_across_an_open_and_disk_usage_counts_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), 35);
    assert_eq!(store.materialize_sealed().unwrap(), 3);
    let usage_before = store.disk_usage();
    store.release_materialized_log().unwrap();
    let usage_after = store.disk_usage();
    assert!(
        usage_before - usage_after >= 3 * 4096,
        "disk_usage {usage_before} before the release, {usage_after} after"
    );
    let released = log_disk_bytes(dir.path());
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(
        log_disk_bytes(dir.path()),
        released,
        "the holes were filled"
    );
    assert_every_read_answers(&store, 35);
    store.close().unwrap();
}

/// Over the disk ceiling the copies of segments go first, but not the file of a segment the
/// log gave back: that is the only copy of its messages.
#[test]
fn the_disk_ceiling_never_removes_the_only_copy_of_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    closed_released_store(dir.path());
    let config = StoreConfig {
        max_disk_bytes: Some(1),
        ..config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    store.enforce_retention().unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    let start = partition.start_offset();
    for base in [0u64, 10, 20] {
        if base + 10 > start {
            assert!(segment_file(dir.path(), base).exists(), "segment {base}");
        }
    }
    for i in start..35 {
        let read = store.read_message(&partition, i).unwrap();
        assert_eq!(read, message(i as usize), "message {i}");
    }
    store.close().unwrap();
}

/// Batches smaller than a block give nothing back (only whole blocks are punched), yet reads
/// of a released segment take its bytes from its file: `check` checks that file too.
#[test]
fn check_names_an_altered_file_of_a_released_segment_whose_log_still_holds_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for i in 0..25u8 {
        let payload = [b'a' + i; 100];
        let message = NewMessage {
            payload: &payload,
            key_len: None,
        };
        store.append_batch(&partition, &[message]).unwrap();
    }
    assert_eq!(store.materialize_sealed().unwrap(), 2);
    store.release_materialized_log().unwrap();
    assert!(segment_file(dir.path(), 10)
        .with_extension("log.released")
        .exists());
    store.close().unwrap();
    drop(store);
    assert!(!check(dir.path()).0);
    let altered = segment_file(dir.path(), 10);
    let mut bytes = std::fs::read(&altered).unwrap();
    bytes[450] ^= 1;
    std::fs::write(&altered, &bytes).unwrap();
    let (damaged, findings) = check(dir.path());
    assert!(damaged, "{findings}");
    assert!(
        findings.contains(&altered.display().to_string()),
        "{findings}"
    );
}

/// Retention removes a released segment's file and marker while the log still holds its
/// batches' headers (the log file is shared with newer batches): a rebuild from the whole log,
/// `commitfs check` and `commitfs dump` pass over those batches as removed, not as damage
/// (they used to refuse the mount: "the log is damaged before its end").
#[test]
fn batches_of_released_segments_that_retention_removed_are_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = released_store(dir.path());
    let topic = store.topic("t").unwrap();
    let mut settings = topic.settings();
    settings.retention_bytes = Some(1);
    store.update_topic(&topic, settings).unwrap();
    store.enforce_retention().unwrap();
    assert_eq!(topic.partition(0).unwrap().start_offset(), 30);
    assert!(!segment_file(dir.path(), 20).exists());
    store.close().unwrap();

    let (damaged, findings) = check(dir.path());
    assert!(!damaged, "{findings}");
    let (out, report) = dump(dir.path());
    assert!(!report.damaged, "{:?}", report.notes);
    assert_eq!(report.messages, 5, "{out}");
    assert_eq!(report.removed_batches, 3);
    // A rebuild of the queues and the index from the whole log.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!((partition.start_offset(), partition.end_offset()), (30, 35));
    for i in 30..35 {
        assert_eq!(
            store.read_message(&partition, i).unwrap(),
            message(i as usize)
        );
    }
}

/// What a released segment's marker may hold: any bytes, the right shift moved by a little,
/// or text that is almost a number.
#[derive(Clone, Debug)]
enum MarkerText {
    Bytes(Vec<u8>),
    Shifted(i64),
    Text(String),
}

fn marker_text() -> impl proptest::strategy::Strategy<Value = MarkerText> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(MarkerText::Bytes),
        prop_oneof![-2000i64..2000, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
            .prop_map(MarkerText::Shifted),
        "[ \t\n+-]{0,2}[0-9]{0,22}[ \t\n.x]{0,2}".prop_map(MarkerText::Text),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("COMMITFS_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(16),
        failure_persistence: None,
        ..Default::default()
    })]

    /// Fuzz target of the one decoder of a released segment's marker (`<base>.log.released`:
    /// the segment position where the segment's file starts, read by recovery, `check` and
    /// `dump` to find batches the log gave back): whatever it holds, recovery after a crash
    /// serves every message as written or refuses naming the marker or the segment's file,
    /// `commitfs check` and `commitfs dump` find damage exactly when recovery refuses (and
    /// dump leaves out that segment's messages only), and nothing panics.
    #[test]
    fn any_text_in_a_released_segments_marker_reads_back_right_or_is_refused_naming_it(
        text in marker_text(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        crashed_released_store(dir.path());
        let file = segment_file(dir.path(), 10);
        let marker = std::path::PathBuf::from(format!("{}.released", file.display()));
        let written = std::fs::read_to_string(&marker).unwrap();
        let shift: i64 = written.trim().parse().unwrap();
        let bytes = match text {
            MarkerText::Bytes(bytes) => bytes,
            MarkerText::Shifted(by) => format!("{}\n", shift.wrapping_add(by)).into_bytes(),
            MarkerText::Text(text) => text.into_bytes(),
        };
        std::fs::write(&marker, &bytes).unwrap();
        let (damaged, findings) = check(dir.path());
        let (_, dumped) = dump(dir.path());
        proptest::prop_assert_eq!(dumped.damaged, damaged, "dump and check disagree: {}", findings);
        proptest::prop_assert_eq!(dumped.messages, if damaged { 25 } else { 35 });
        match Store::open(dir.path(), config()) {
            Ok(store) => {
                proptest::prop_assert!(!damaged, "check found damage the open did not: {}", findings);
                assert_every_read_answers(&store, 35);
                store.close().unwrap();
            }
            Err(error) => {
                let error = error.to_string();
                let names = |path: &Path| error.contains(&path.display().to_string());
                proptest::prop_assert!(names(&marker) || names(&file), "{}", error);
                proptest::prop_assert!(damaged, "the open refused ({}) but check found no damage", error);
            }
        }
    }
}
