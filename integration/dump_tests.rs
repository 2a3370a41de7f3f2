//! `commitfs dump` (issue 10): the messages a store holds, one line each, against what was
//! written — keys, arbitrary bytes, several topics and partitions, the filters — on a clean
//! store, after a crash, with damage, and its exit codes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use commitfs::store::{Framing, NewMessage, Store, TopicSettings};

mod fixtures;

/// One message as the test wrote it: (topic, partition, offset) → (key, payload).
type Written = BTreeMap<(String, u32, u64), (Option<Vec<u8>>, Vec<u8>)>;

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::small_store_config()).unwrap()
}

fn commitfs_dump(dir: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg("dump")
        .args(args)
        .arg(dir)
        .output()
        .expect("run commitfs dump")
}

fn raw_topic(partitions: u32) -> TopicSettings {
    TopicSettings {
        framing: Framing::Raw,
        key_separator: None,
        ..fixtures::keyed_topic(partitions)
    }
}

/// Messages whose bytes need every escape the README lists: newlines inside, tabs, a
/// backslash, control and non-UTF-8 bytes, spaces in keys, a key that is just `-`.
fn awkward_payloads() -> Vec<(Option<usize>, Vec<u8>)> {
    vec![
        (Some(5), b"user1:hello\n".to_vec()),
        (Some(6), b"user 2:two words and a tab\there\n".to_vec()),
        (None, b"no key, a backslash \\ and \\n literally\n".to_vec()),
        (Some(1), b"-:a key that is a dash\n".to_vec()),
        (Some(0), b":an empty key\n".to_vec()),
        (None, b"raw\nmessage\nof three lines".to_vec()),
        (None, vec![0, 1, 2, 0x7f, 0xff, 0xfe, b'\r', b'\n']),
        (Some(3), "clé:été\n".as_bytes().to_vec()),
        (None, Vec::new()),
    ]
}

/// Topic "orders" (3 partitions, keyed) and "blobs" (2 partitions, raw): every awkward
/// payload several times, some in batches of several messages. Returns what was written.
fn fill(store: &Store) -> Written {
    let mut written = Written::new();
    let orders = store
        .create_topic("orders", fixtures::keyed_topic(3))
        .unwrap();
    let blobs = store.create_topic("blobs", raw_topic(2)).unwrap();
    let payloads = awkward_payloads();
    for round in 0..4u32 {
        for (topic, partitions) in [(&orders, 3), (&blobs, 2)] {
            let partition = topic.partition(round % partitions).unwrap();
            let batch: Vec<NewMessage> = payloads
                .iter()
                .take(1 + round as usize * 3)
                .map(|(key_len, payload)| NewMessage {
                    payload,
                    key_len: *key_len,
                })
                .collect();
            let outcome = store.append_batch(&partition, &batch).unwrap();
            for (i, message) in batch.iter().enumerate() {
                let key = message.key_len.map(|k| message.payload[..k].to_vec());
                written.insert(
                    (
                        topic.name().to_owned(),
                        partition.index(),
                        outcome.first_offset + i as u64,
                    ),
                    (key, message.payload.to_vec()),
                );
            }
        }
    }
    written
}

/// One line of the dump, its fields by name (the payload is the rest of the line).
struct Line {
    fields: BTreeMap<String, String>,
}

impl Line {
    fn parse(text: &str) -> Line {
        let (head, payload) = text.split_once(" payload=").expect("a payload field");
        let mut fields: BTreeMap<String, String> = head
            .split(' ')
            .map(|field| {
                let (name, value) = field.split_once('=').expect("name=value");
                (name.to_owned(), value.to_owned())
            })
            .collect();
        fields.insert("payload".into(), payload.to_owned());
        Line { fields }
    }

    fn get(&self, name: &str) -> &str {
        &self.fields[name]
    }

    fn number(&self, name: &str) -> u64 {
        self.get(name).parse().unwrap()
    }

    fn key(&self) -> Option<Vec<u8>> {
        (self.get("key") != "-").then(|| unescape(self.get("key")))
    }

    fn payload(&self) -> Vec<u8> {
        unescape(self.get("payload"))
    }
}

/// The README's escaping, undone.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            other => panic!("unknown escape \\{}", other as char),
        }
        i += 2;
    }
    out
}

fn lines(output: &Output) -> Vec<Line> {
    let text = std::str::from_utf8(&output.stdout).expect("the dump is UTF-8 text");
    text.lines().map(Line::parse).collect()
}

/// The lines as (topic, partition, offset) → (key, payload), checking that each
/// partition's offsets rise and every line says crc=ok.
fn as_written(lines: &[Line]) -> Written {
    let mut dumped = Written::new();
    let mut last = BTreeMap::new();
    for line in lines {
        assert_eq!(line.get("crc"), "ok");
        let place = (
            line.get("topic").to_owned(),
            line.number("partition") as u32,
        );
        let offset = line.number("offset");
        if let Some(previous) = last.insert(place.clone(), offset) {
            assert!(offset > previous, "offsets of {place:?} do not rise");
        }
        assert_eq!(line.number("size") as usize, line.payload().len());
        dumped.insert((place.0, place.1, offset), (line.key(), line.payload()));
    }
    dumped
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn dump_prints_every_message_with_its_key_bytes_and_time_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let written = fill(&open(dir.path()));
    let output = commitfs_dump(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    let lines = lines(&output);
    assert_eq!(lines.len(), written.len());
    assert_eq!(as_written(&lines), written);
    for line in &lines {
        let timestamp = line.number("timestamp");
        assert!(timestamp >= before && timestamp < before + 600_000);
    }
    // Greppable: a key's messages are the lines that name it.
    let text = String::from_utf8(output.stdout).unwrap();
    let user2 = written
        .values()
        .filter(|(k, _)| k.as_deref() == Some(b"user 2"))
        .count();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(" key=user\\x202 "))
            .count(),
        user2
    );
}

#[test]
fn topic_partition_and_from_select_exactly_those_messages() {
    let dir = tempfile::tempdir().unwrap();
    let written = fill(&open(dir.path()));
    let selected = |topic: &str, partition: Option<u32>, from: u64| -> Written {
        written
            .iter()
            .filter(|((t, p, o), _)| t == topic && partition.is_none_or(|q| q == *p) && *o >= from)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let orders = commitfs_dump(dir.path(), &["--topic", "orders"]);
    assert_eq!(as_written(&lines(&orders)), selected("orders", None, 0));
    let from = commitfs_dump(
        dir.path(),
        &["--topic", "blobs", "--partition", "1", "--from", "3"],
    );
    let expected = selected("blobs", Some(1), 3);
    assert!(!expected.is_empty() && expected.len() < selected("blobs", Some(1), 0).len());
    assert_eq!(as_written(&lines(&from)), expected);
    // --partition alone: that partition of every topic.
    let partition = commitfs_dump(dir.path(), &["--partition", "2"]);
    let mut both = selected("orders", Some(2), 0);
    both.extend(selected("blobs", Some(2), 0));
    assert_eq!(as_written(&lines(&partition)), both);
    // Past the end: nothing, and no error.
    let past = commitfs_dump(dir.path(), &["--from", "1000000"]);
    assert_eq!((past.status.code(), past.stdout.len()), (Some(0), 0));
}

#[test]
fn a_deleted_topics_messages_still_in_the_log_are_shown_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let gone = store
        .create_topic("gone", fixtures::keyed_topic(1))
        .unwrap();
    store
        .append(&gone.partition(0).unwrap(), b"k:old\n", Some(1))
        .unwrap();
    store.delete_topic("gone").unwrap();
    drop(store);
    let output = commitfs_dump(dir.path(), &[]);
    let lines = lines(&output);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].get("topic"), format!("#{}", gone.id()));
    assert_eq!(lines[0].payload(), b"k:old\n");
}

/// A store stopped the way a crash stops it: its messages past the checkpoint are only in
/// the log, with the abort marker left behind.
fn crashed(dir: &Path) -> Written {
    let store = open(dir);
    let written = fill(&store);
    store.halt_without_cleanup();
    drop(store);
    assert!(dir.join("abort").exists());
    written
}

fn log_file(dir: &Path) -> std::path::PathBuf {
    dir.join("commitlog").join("0".repeat(20))
}

/// (start, size) of each batch of the first commit-log file.
fn batches(dir: &Path) -> Vec<(usize, usize)> {
    batches_from(&std::fs::read(log_file(dir)).unwrap())
}

fn damage(dir: &Path, at: usize) {
    let path = log_file(dir);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn after_a_crash_dump_shows_what_the_log_holds_and_says_the_stop_was_unclean() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed(dir.path());
    let output = commitfs_dump(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("unclean"), "{}", stderr(&output));
    assert_eq!(as_written(&lines(&output)), written);
    // The dump wrote nothing: the next mount still finds the crash to recover.
    assert!(dir.path().join("abort").exists());
}

#[test]
fn a_torn_last_batch_is_shown_as_bad_and_ends_the_log_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let written = crashed(dir.path());
    let &(last, size) = batches(dir.path()).last().unwrap();
    damage(dir.path(), last + size - 1);
    let output = commitfs_dump(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("torn"), "{}", stderr(&output));
    let lines = lines(&output);
    let (good, bad): (Vec<&Line>, Vec<&Line>) = lines.iter().partition(|l| l.get("crc") == "ok");
    assert!(!bad.is_empty());
    assert!(bad.iter().all(|l| l.number("batch") == last as u64));
    assert_eq!(good.len() + bad.len(), written.len());
}

#[test]
fn damage_before_the_end_exits_1_and_the_messages_after_it_are_still_shown() {
    let dir = tempfile::tempdir().unwrap();
    let written = fill(&open(dir.path()));
    let all = batches(dir.path());
    let (third, _) = all[2];
    // The batch's magic: its header no longer decodes, so the dump must find the next one.
    damage(dir.path(), third + 5);
    let output = commitfs_dump(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("damage:") && err.contains(&format!("byte {third}")),
        "{err}"
    );
    let lines = lines(&output);
    let shown: Vec<u64> = lines.iter().map(|l| l.number("batch")).collect();
    assert!(!shown.contains(&(third as u64)));
    assert!(shown.contains(&(all.last().unwrap().0 as u64)));
    assert_eq!(lines.len(), written.len() - count_of_batch(dir.path(), 2));
    // A payload byte: the CRC catches it, and the batch is shown marked bad.
    let (fourth, size) = all[3];
    damage(dir.path(), fourth + size - 2);
    let output = commitfs_dump(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(1));
    let lines = self::lines(&output);
    assert!(lines
        .iter()
        .filter(|l| l.number("batch") == fourth as u64)
        .all(|l| l.get("crc") == "bad"));
}

/// Messages in batch `n` of the first commit-log file (its count field).
fn count_of_batch(dir: &Path, n: usize) -> usize {
    let bytes = std::fs::read(log_file(dir)).unwrap();
    let (at, _) = batches_from(&bytes)[n];
    u32::from_le_bytes(bytes[at + 20..at + 24].try_into().unwrap()) as usize
}

fn batches_from(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if size < 52 || at + size > bytes.len() {
            break;
        }
        found.push((at, size));
        at += size;
    }
    found
}

#[test]
fn exit_status_2_when_there_is_nothing_to_dump_or_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let missing = commitfs_dump(&dir.path().join("missing"), &[]);
    assert_eq!(missing.status.code(), Some(2));
    let empty = commitfs_dump(dir.path(), &[]);
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        stderr(&empty).contains("holds no commitfs store"),
        "{}",
        stderr(&empty)
    );
    let store = open(dir.path());
    fill(&store);
    let busy = commitfs_dump(dir.path(), &[]);
    assert_eq!(busy.status.code(), Some(2));
    assert!(stderr(&busy).contains("already open"), "{}", stderr(&busy));
    drop(store);
    let unknown = commitfs_dump(dir.path(), &["--topic", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("\"nope\""),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_dump_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store
        .create_topic("many", fixtures::keyed_topic(1))
        .unwrap();
    let partition = topic.partition(0).unwrap();
    let line = [b'x'; 99];
    for _ in 0..200 {
        let batch = vec![
            NewMessage {
                payload: &line,
                key_len: None
            };
            100
        ];
        store.append_batch(&partition, &batch).unwrap();
    }
    drop(store);
    // 20,000 lines of about 200 bytes: far more than the pipe and the dump's buffer hold.
    let output = Command::new("timeout")
        .args([
            "60",
            "bash",
            "-c",
            "set -o pipefail; \"$0\" dump \"$1\" | head -n 1",
        ])
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    assert_eq!(output.stdout.iter().filter(|&&b| b == b'\n').count(), 1);
}
