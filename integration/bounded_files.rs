//! The store keeps at most `max_open_files` consume-queue and commit-log files open (issue
//! 10): the least recently used are closed and unmapped as others open, and opened again
//! when read, so any number of segments and partitions works within `ulimit -n` and
//! `vm.max_map_count`. In-process tests count this process's descriptors and maps, so they
//! run one at a time; the mounted ones count the daemon's under Debian's default limit of
//! 1024 descriptors.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use commitfs::store::{Partition, Store, StoreConfig};
use parking_lot::Mutex;

mod common;
mod fixtures;

use common::{Bounded, Config, Mount, COMMITFS};

/// In-process tests count the whole process's descriptors: one at a time.
static COUNTING: Mutex<()> = Mutex::new(());

const BUDGET: usize = 32;

fn config() -> StoreConfig {
    StoreConfig {
        segment_messages: 5,
        // Small commit-log files, so that the log too has more files than the budget.
        commit_log_file_bytes: 4096,
        max_message_bytes: 512,
        max_open_files: BUDGET,
        ..fixtures::small_store_config()
    }
}

/// Descriptors and maps of files under `dir` that process `pid` holds.
fn held_under(pid: &str, dir: &Path) -> (usize, usize) {
    let dir = dir.to_str().unwrap();
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with(dir))
                .count()
        })
        .unwrap_or(0);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(dir))
        .count();
    (descriptors, maps)
}

/// Asserts that process `pid` holds at most `budget` descriptors and as many maps of the
/// store files under `data`, give or take 8 (`what` says which budget, for the message).
#[track_caller]
fn assert_store_files_within(pid: &str, data: &Path, budget: usize, what: &str) {
    let (descriptors, maps) = held_under(pid, data);
    assert!(
        descriptors <= budget + 8 && maps <= budget + 8,
        "the daemon holds {descriptors} descriptors and {maps} maps of store files, {what}"
    );
}

fn line(n: u64) -> Vec<u8> {
    format!("message {n}\n").into_bytes()
}

fn append_lines(store: &Store, partition: &Partition, from: u64, to: u64) {
    for n in from..to {
        store.append(partition, &line(n), None).unwrap();
    }
}

/// The bytes of segment `base` of `partition`, read through a segment reader.
fn read_segment(store: &Store, partition: &Arc<Partition>, base: u64) -> Vec<u8> {
    let reader = store.open_segment(partition, base).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read_at(bytes.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return bytes;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

fn expected_segment(base: u64, end: u64) -> Vec<u8> {
    (base..end.min(base + 5)).flat_map(line).collect()
}

/// 400 segments over some 40 commit-log files, each read: the store holds no more files
/// open than its budget, and every segment reads back whole, also when read again after
/// its files were closed.
#[test]
fn reading_every_old_segment_keeps_descriptors_and_maps_within_max_open_files() {
    let _one = COUNTING.lock();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    append_lines(&store, &partition, 0, 2000);
    for round in 0..2 {
        for base in (0..2000).step_by(5) {
            assert_eq!(
                read_segment(&store, &partition, base),
                expected_segment(base, 2000),
                "segment {base}, round {round}"
            );
        }
        let (descriptors, maps) = held_under("self", dir.path());
        // The budget, plus the files being written (log, next log file, index, lock file).
        let bound = BUDGET + 6;
        assert!(
            descriptors <= bound && maps <= bound,
            "round {round}: {descriptors} descriptors and {maps} maps for 400 segments read, with max_open_files {BUDGET}"
        );
    }
    // The writer still appends where it left off.
    append_lines(&store, &partition, 2000, 2003);
    assert_eq!(store.read_message(&partition, 2002).unwrap(), line(2002));
}

/// Writers of 200 partitions in turn: each one's queue file is closed between its appends
/// when the budget needs the room, and opened again (also grown past its first chunk) by
/// the next append, which loses nothing, also across a reopen of the store.
#[test]
fn appends_to_more_partitions_than_the_budget_reopen_their_files_and_lose_nothing() {
    let _one = COUNTING.lock();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        segment_messages: 1000,
        commit_log_file_bytes: 1 << 20,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(200)).unwrap();
    let partitions = topic.partitions();
    // 300 messages each: past the first 4 KiB chunk (204 entries) of each queue file.
    for n in 0..300 {
        for partition in &partitions {
            store.append(partition, &line(n), None).unwrap();
        }
    }
    let (descriptors, maps) = held_under("self", dir.path());
    assert!(
        descriptors <= BUDGET + 6 && maps <= BUDGET + 6,
        "{descriptors} descriptors and {maps} maps after appends to 200 partitions, with max_open_files {BUDGET}"
    );
    let all = |store: &Store| {
        let topic = store.topic("t").unwrap();
        topic.partitions().iter().all(|p| {
            p.end_offset() == 300 && (0..300).all(|n| store.read_message(p, n).unwrap() == line(n))
        })
    };
    assert!(all(&store), "a message is missing or wrong");
    store.close().unwrap();
    drop((store, topic, partitions));
    let store = Store::open(dir.path(), config).unwrap();
    assert!(all(&store), "a message is missing or wrong after a reopen");
}

/// A reader keeps its segment's files mapped while the budget closes them for everyone
/// else: reads through it go on, and a file retention removes is closed once the reader
/// lets go, not kept open by the budget.
#[test]
fn a_reader_keeps_reading_a_closed_file_and_removed_files_are_let_go() {
    let _one = COUNTING.lock();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    append_lines(&store, &partition, 0, 1000);
    let reader = store.open_segment(&partition, 0).unwrap();
    let mut first = [0u8; 10];
    assert_eq!(reader.read_at(0, &mut first).unwrap(), 10);
    for base in (5..1000).step_by(5) {
        read_segment(&store, &partition, base);
    }
    let mut again = vec![0u8; 100];
    let n = reader.read_at(0, &mut again).unwrap();
    assert_eq!(&again[..n], &expected_segment(0, 1000)[..]);
    drop(reader);

    // Retention to the last 5 messages: every file of the old segments goes.
    let mut settings = topic.settings();
    settings.retention_bytes = Some(1);
    store.update_topic(&topic, settings).unwrap();
    store.enforce_retention().unwrap();
    assert!(partition.start_offset() >= 990);
    let deleted_held = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.starts_with(dir.path().to_str().unwrap()) && target.ends_with("(deleted)")
        })
        .count();
    assert_eq!(deleted_held, 0, "removed files are still held open");
}

/// Keyed messages over some 150 key-index files (7 entries each): looking up every key
/// keeps the index's files within the budget, finds each newest message, and after a
/// reopen of the store (whose checkpoint flushed files the budget had closed) still does.
#[test]
fn key_lookups_over_more_index_files_than_the_budget_stay_within_it() {
    let _one = COUNTING.lock();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        index_entries: 8,
        commit_log_file_bytes: 1 << 20,
        ..config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = topic.partition(0).unwrap();
    for n in 0..1000u64 {
        let message = format!("k{}:{n}\n", n % 500);
        store
            .append(
                &partition,
                message.as_bytes(),
                Some(message.find(':').unwrap()),
            )
            .unwrap();
    }
    let newest = |store: &Store, key: u64| {
        let topic = store.topic("t").unwrap();
        let mut found = None;
        store
            .for_each_key_match(&topic, None, format!("k{key}").as_bytes(), |m| {
                found = Some(m.offset);
                std::ops::ControlFlow::Break(())
            })
            .unwrap();
        found
    };
    for key in 0..500 {
        assert_eq!(newest(&store, key), Some(500 + key), "key k{key}");
    }
    let (descriptors, maps) = held_under("self", dir.path());
    assert!(
        descriptors <= BUDGET + 6 && maps <= BUDGET + 6,
        "{descriptors} descriptors and {maps} maps after lookups over 150 index files, with max_open_files {BUDGET}"
    );
    store.close().unwrap();
    drop((store, topic, partition));
    let store = Store::open(dir.path(), config).unwrap();
    for key in 0..500 {
        assert_eq!(
            newest(&store, key),
            Some(500 + key),
            "key k{key} after a reopen"
        );
    }
}

/// After a remount, partitions that are not read hold no descriptor, also once retention's
/// passes over every partition have run.
#[test]
fn partitions_not_read_hold_no_descriptor_after_a_remount() {
    if !common::fuse_available() {
        return;
    }
    let config = Config::small()
        .set("partitions", "300")
        .set("retention_check_interval_ms", "20");
    let mut mount = Mount::new(config);
    mount.sh_ok("mkdir t && seq 1 300 > t/append");
    mount.remount();
    // Some fifty passes of retention.
    std::thread::sleep(Duration::from_secs(1));
    let pid = mount.daemon_pid().unwrap().to_string();
    // Each retention pass opens every queue file for a moment (a `pread` of one entry, no
    // map): what is held for good shows in every sample, such a moment in few.
    let held = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(7));
            held_under(&pid, &mount.data.join("queues"))
        })
        .min()
        .unwrap();
    assert_eq!(
        held,
        (0, 0),
        "consume-queue descriptors and maps held after a remount by 300 partitions not read"
    );
    assert_eq!(mount.sh_ok("cat t/299/stream | wc -l").trim(), "1");
}

/// 100,000 lines into one partition of 5-message segments (20,000 segments), under Debian's
/// default limit of 1024 descriptors: the writes all succeed, every segment reads back
/// (`cat` of each), the daemon's descriptors and maps stay within `max_open_files`, and
/// appends go on while old segments are read.
#[test]
fn twenty_thousand_segments_read_through_the_mount_under_1024_descriptors() {
    if !common::fuse_available() {
        return;
    }
    let config = Config::small()
        .set("segment_messages", "5")
        .set("partitions", "1")
        .set("max_open_files", "256");
    let mut mount = Mount::prepare(config);
    start_with_1024_descriptors(&mut mount);
    let pid = mount.daemon_pid().unwrap().to_string();
    mount.sh_ok("mkdir t && seq 1 100000 > t/append");
    // 20,000 full segments and the empty active one.
    let segments = mount.sh_ok("ls t/0 | grep -c '\\.log$'");
    assert_eq!(segments.trim(), "20001");
    // Appends while every segment is read: none may fail.
    let writer = mount
        .sh_command_within(
            "for i in $(seq 100001 102000); do echo $i >> t/append || exit 1; done",
            Duration::from_secs(300),
        )
        .spawn()
        .unwrap();
    let read = mount.sh_ok_within(
        "cd t/0 && ls | grep '\\.log$' | xargs cat | head -n 100000 | md5sum",
        Duration::from_secs(300),
    );
    let written = mount.sh_ok("seq 1 100000 | md5sum");
    assert_eq!(read, written, "the segments do not hold the lines written");
    let status = writer.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "an append failed: {status:?}\n{}",
        mount.log_tail(20)
    );
    assert_store_files_within(&pid, &mount.data, 256, "with max_open_files 256");
    let lines = mount.sh_ok("cat t/0/stream | wc -l");
    assert_eq!(lines.trim(), "102000");
}

/// 2,000 topics of 10 partitions each, one message in every partition, under Debian's
/// default limit of 1024 descriptors and the default `max_open_files`, which the daemon lowers
/// to what that limit allows: every `mkdir` and write succeeds, and the daemon's descriptors
/// stay within the lowered budget.
#[test]
fn twenty_thousand_written_partitions_under_1024_descriptors() {
    if !common::fuse_available() {
        return;
    }
    let mut mount = Mount::prepare(Config::small().set("partitions", "10"));
    start_with_1024_descriptors(&mut mount);
    let pid = mount.daemon_pid().unwrap().to_string();
    assert!(
        mount
            .log_tail(20)
            .contains("keeping at most 896 store files open"),
        "the daemon does not say it lowered max_open_files to what 1024 descriptors allow\n{}",
        mount.log_tail(20)
    );
    mount.sh_ok_within(
        "for t in $(seq 1 2000); do mkdir t$t && seq 1 10 > t$t/append || exit 1; done",
        Duration::from_secs(600),
    );
    assert_store_files_within(
        &pid,
        &mount.data,
        896,
        "for 20,000 partitions, within 1024 descriptors",
    );
    let stored = mount.sh_ok("cat t1999/*/stream | sort -n | tr '\\n' ' '");
    assert_eq!(stored.trim(), "1 2 3 4 5 6 7 8 9 10");
}

/// After `kill -9`, recovery replays the messages of 2,000 partitions written since the
/// last checkpoint under 1024 descriptors: it opens their queue files within the budget too,
/// and every message is there after the remount.
#[test]
fn recovery_of_two_thousand_partitions_after_kill_9_under_1024_descriptors() {
    if !common::fuse_available() {
        return;
    }
    let config = Config::small()
        .set("partitions", "10")
        .set("checkpoint_interval_ms", "3600000");
    let mut mount = Mount::prepare(config);
    start_with_1024_descriptors(&mut mount);
    mount.sh_ok_within(
        "for t in $(seq 1 200); do mkdir t$t && seq 1 10 > t$t/append || exit 1; done",
        Duration::from_secs(300),
    );
    mount.kill9();
    start_with_1024_descriptors(&mut mount);
    let stored = mount.sh_ok("cat t*/*/stream | wc -l");
    assert_eq!(stored.trim(), "2000", "{}", mount.log_tail(20));
}

/// `commitfs mount` with the soft and hard limit of open files at Debian's default 1024,
/// so the daemon cannot raise it.
fn start_with_1024_descriptors(mount: &mut Mount) {
    let output = Bounded::new("prlimit", Duration::from_secs(60))
        .arg("--nofile=1024:1024")
        .arg(COMMITFS)
        .arg("mount")
        .arg("--config")
        .arg(mount.config_path())
        .arg(&mount.data)
        .arg(&mount.mnt)
        .output();
    assert!(
        output.status.success(),
        "commitfs mount failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        mount.log_tail(40)
    );
    mount.adopt_daemon();
}
