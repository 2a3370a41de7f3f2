//! Recovery that never drops intact data, metadata that must agree with the data, and
//! `commitfs check [--repair]` (issue 9, items 1, 8 and 9), in-process with small files and
//! through the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use commitfs::store::{Store, StoreConfig, TopicSettings};

mod fixtures;

fn settings(partitions: u32) -> TopicSettings {
    fixtures::keyed_topic(partitions)
}

fn open(dir: &Path) -> Arc<Store> {
    Store::open(dir, fixtures::recovery_store_config()).expect("open store")
}

fn message(topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    format!("{topic}-{partition}:message {offset} {}\n", "x".repeat(60)).into_bytes()
}

/// A store with `topics` (name, partitions), `per_partition` messages in each partition
/// (interleaved, so every commit-log file holds every partition), closed cleanly.
fn filled_store(dir: &Path, topics: &[(&str, u32)], per_partition: u64) {
    let store = open(dir);
    for &(name, partitions) in topics {
        store.create_topic(name, settings(partitions)).unwrap();
    }
    for offset in 0..per_partition {
        for &(name, partitions) in topics {
            let topic = store.topic(name).unwrap();
            for index in 0..partitions {
                let payload = message(name, index, offset);
                let key_len = payload.iter().position(|&b| b == b':');
                let partition = topic.partition(index).unwrap();
                store.append(&partition, &payload, key_len).unwrap();
            }
        }
    }
    store.close().unwrap();
}

/// Asserts every message of the topic reads back as written, except the offsets in `lost`
/// (per partition), which must fail to read.
fn assert_messages(
    store: &Store,
    name: &str,
    per_partition: u64,
    lost: &[(u32, std::ops::Range<u64>)],
) {
    let topic = store.topic(name).unwrap_or_else(|| panic!("topic {name}"));
    for partition in topic.partitions() {
        assert_eq!(partition.end_offset(), per_partition, "{name} end");
        for offset in 0..per_partition {
            let read = store.read_message(&partition, offset);
            let is_lost = lost
                .iter()
                .any(|(p, range)| *p == partition.index() && range.contains(&offset));
            if is_lost {
                assert!(
                    read.is_err(),
                    "{name}/{} offset {offset} was lost",
                    partition.index()
                );
            } else {
                assert_eq!(
                    read.unwrap_or_else(|e| panic!(
                        "{name}/{} offset {offset}: {e}",
                        partition.index()
                    )),
                    message(name, partition.index(), offset)
                );
            }
        }
    }
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("commitlog")
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Runs the built `commitfs` with a timeout.
fn commitfs(args: &[&str], dir: &Path) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .args(args)
        .arg(dir)
        .output()
        .expect("run commitfs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `topic "NAME" (id N) partition P: offsets A..B lost` lines of a repair, per partition.
fn lost_offsets(report: &str) -> Vec<(u32, std::ops::Range<u64>)> {
    report
        .lines()
        .filter(|l| l.starts_with("repaired:") && l.contains(" lost in a damaged span"))
        .map(|line| {
            let after = |word: &str| {
                line.split(word)
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
            };
            let partition: u32 = after(" partition ").trim_end_matches(':').parse().unwrap();
            let (from, to) = after(" offsets ").split_once("..").unwrap();
            (partition, from.parse().unwrap()..to.parse().unwrap())
        })
        .collect()
}

/// Asserts that `commitfs check` of `dir` exits 0 (finds no damage); returns its report.
#[track_caller]
fn assert_check_passes(dir: &Path) -> String {
    let checked = commitfs(&["check"], dir);
    let report = stdout(&checked);
    assert_eq!(checked.status.code(), Some(0), "{report}");
    report
}

/// What [`flip_four_bytes_in_the_middle`] did to a commit-log file.
struct Flipped {
    /// Where the damaged batch starts.
    batch: usize,
    /// Its first offset, as written.
    first_offset: u64,
    /// The file's bytes as damaged.
    bytes: Vec<u8>,
}

/// Flips four bytes in the middle of commit-log file `path`, inside a batch.
fn flip_four_bytes_in_the_middle(path: &Path) -> Flipped {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    let batch = *fixtures::batch_starts(&bytes)
        .iter()
        .rev()
        .find(|&&s| s <= middle)
        .unwrap();
    let first_offset = fixtures::batch_first_offset(&bytes, batch);
    for byte in &mut bytes[middle..middle + 4] {
        *byte ^= 0xA5;
    }
    std::fs::write(path, &bytes).unwrap();
    Flipped {
        batch,
        first_offset,
        bytes,
    }
}

/// After a machine restart (the abort marker is older than this boot), damage past the
/// checkpoint is what a power loss leaves, pages written back in any order: the log is cut
/// at the first damage, and every later commit-log file, which holds valid records, is kept
/// aside as `<name>.unsynced`, never deleted (issue 9, item 1).
#[test]
fn after_a_machine_restart_damage_cuts_the_log_and_later_files_are_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 1)], 2000);
    let files = log_files(dir.path());
    assert!(files.len() >= 4, "{} commit-log files", files.len());
    // An unclean stop before any checkpoint past the start, in an earlier boot.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let marker = std::fs::File::create(dir.path().join("abort")).unwrap();
    marker
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))
        .unwrap();
    drop(marker);
    let cut_at = flip_four_bytes_in_the_middle(&files[1]).first_offset;
    let later: Vec<(PathBuf, Vec<u8>)> = files[2..]
        .iter()
        .map(|path| (path.clone(), std::fs::read(path).unwrap()))
        .collect();

    let store = open(dir.path());
    let partition = store.topic("a").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), cut_at, "cut at the damaged batch");
    for offset in 0..cut_at {
        assert_eq!(
            store.read_message(&partition, offset).unwrap(),
            message("a", 0, offset)
        );
    }
    for (path, bytes) in &later {
        // The name may hold a new file again, made ahead of need: none of the old records.
        if let Ok(now) = std::fs::read(path) {
            assert_eq!(
                fixtures::batch_starts(&now),
                [0usize; 0],
                "{}",
                path.display()
            );
        }
        let aside = path.with_extension("unsynced");
        assert_eq!(
            std::fs::read(&aside).ok().as_ref(),
            Some(bytes),
            "{} kept aside whole",
            aside.display()
        );
    }
    store.close().unwrap();
}

#[test]
fn damage_in_the_middle_of_the_log_refuses_the_open_and_repair_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 2), ("b", 1)], 1000);
    let files = log_files(dir.path());
    assert!(files.len() >= 4, "{} commit-log files", files.len());
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let second = &files[1];
    let Flipped {
        batch: damaged_record,
        bytes,
        ..
    } = flip_four_bytes_in_the_middle(second);

    let error = Store::open(dir.path(), fixtures::recovery_store_config())
        .err()
        .expect("the open is refused");
    fixtures::assert_needs_repair(
        error,
        &format!("{} byte {damaged_record}:", second.display()),
    );
    assert_eq!(
        log_files(dir.path()),
        files,
        "every later file is still there"
    );
    assert_eq!(std::fs::read(second).unwrap(), bytes, "nothing cut");

    let checked = commitfs(&["check"], dir.path());
    let report = stdout(&checked);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "damage: {} byte {damaged_record}:",
            second.display()
        )),
        "{report}"
    );
    assert_eq!(
        std::fs::read(second).unwrap(),
        bytes,
        "check writes nothing"
    );

    let repaired = commitfs(&["check", "--repair"], dir.path());
    let report = stdout(&repaired);
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    let lost = lost_offsets(&report);
    let lost_count: u64 = lost.iter().map(|(_, r)| r.end - r.start).sum();
    assert!(
        (1..=2).contains(&lost_count),
        "one damaged record, maybe two: {report}"
    );

    let store = open(dir.path());
    // Which topic lost them: the report names it.
    let lost_in = |name: &str| -> Vec<(u32, std::ops::Range<u64>)> {
        report
            .lines()
            .filter(|l| {
                l.contains(&format!("topic \"{name}\"")) && l.contains(" lost in a damaged span")
            })
            .flat_map(lost_offsets)
            .collect()
    };
    assert_messages(&store, "a", 1000, &lost_in("a"));
    assert_messages(&store, "b", 1000, &lost_in("b"));
    drop(store);
    assert_check_passes(dir.path());
}

#[test]
fn a_clean_store_and_a_crashed_one_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 3)], 300);
    let report = assert_check_passes(dir.path());
    assert!(report.contains("0 damaged"), "{report}");

    let store = open(dir.path());
    let partition = store.topic("a").unwrap().partition(1).unwrap();
    for offset in 300..400 {
        store
            .append(&partition, &message("a", 1, offset), None)
            .unwrap();
    }
    store.halt_without_cleanup();
    drop(store);
    assert_check_passes(dir.path());
}

#[test]
fn check_refuses_an_open_store_with_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let checked = commitfs(&["check"], dir.path());
    assert_eq!(checked.status.code(), Some(2));
    let error = String::from_utf8_lossy(&checked.stderr);
    assert!(error.contains("already open"), "{error}");
}

/// A process that is letting go of the store (a daemon finishing its close after `umount`,
/// or a child forked by the holder before its `exec`) holds the lock a moment longer: an
/// open waits for it rather than failing at once.
#[test]
fn an_open_waits_briefly_for_a_lock_that_is_being_released() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close().unwrap();
    let mut holder = Command::new("timeout")
        .args(["10", "flock", "--exclusive"])
        .arg(dir.path().join("lock"))
        .args(["sleep", "0.5"])
        .spawn()
        .unwrap();
    let lock = dir.path().join("lock");
    // Wait until the holder has it (a non-blocking try fails), so the open must wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while Command::new("timeout")
        .args(["10", "flock", "--nonblock", "--exclusive"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let store = open(dir.path());
    store.close().unwrap();
    assert!(holder.wait().unwrap().success());
}

/// A checkpoint file without the marks of `topic_id`'s partitions.
fn checkpoint_without_topic(dir: &Path, topic_id: u32) {
    let dropped = fixtures::rewrite_checkpoint_without(dir, |id, _| id == topic_id);
    assert!(dropped > 0);
}

#[test]
fn a_checkpoint_that_leaves_out_a_partition_never_empties_it() {
    for unclean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        filled_store(dir.path(), &[("a", 1), ("b", 3)], 250);
        checkpoint_without_topic(dir.path(), 2);
        if unclean {
            std::fs::write(dir.path().join("abort"), b"").unwrap();
        }
        let store = open(dir.path());
        assert_messages(&store, "a", 250, &[]);
        assert_messages(&store, "b", 250, &[]);
        store.close().unwrap();
        let store = open(dir.path());
        assert_messages(&store, "b", 250, &[]);
    }
}

/// Queue directories are not synced, so a power loss may take the names of a partition's
/// first queue files and keep a later one: the partition's start stays the checkpoint's, and
/// the lost files come back from the log (never a partition that starts where its first
/// remaining file does, dropping what the log still holds).
#[test]
fn a_partition_that_lost_its_first_queue_files_keeps_every_message() {
    for unclean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        filled_store(dir.path(), &[("t", 2)], 250);
        let queue = dir.path().join("queues/1/1");
        for base in [0u64, 100] {
            std::fs::remove_file(queue.join(format!("{base:020}"))).unwrap();
        }
        if unclean {
            std::fs::write(dir.path().join("abort"), b"").unwrap();
        }
        let store = open(dir.path());
        assert_eq!(
            store
                .topic("t")
                .unwrap()
                .partition(1)
                .unwrap()
                .start_offset(),
            0
        );
        assert_messages(&store, "t", 250, &[]);
        store.close().unwrap();
        let store = open(dir.path());
        assert_messages(&store, "t", 250, &[]);
    }
}

/// Replaces the first `from` in the metadata file `name` (`store.toml`, or `topics/<id>.toml`).
fn edit_meta_file(dir: &Path, name: &str, from: &str, to: &str) {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn refused(dir: &Path, expected: &str) {
    let error = Store::open(dir, fixtures::recovery_store_config())
        .err()
        .expect("the open is refused");
    fixtures::assert_needs_repair(error, expected);
}

#[test]
fn metadata_that_disagrees_with_the_data_is_refused_and_repair_fixes_counts() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 1), ("b", 3)], 150);
    let files = ["store.toml", "topics/1.toml", "topics/2.toml"];
    let original: Vec<String> = files
        .iter()
        .map(|name| std::fs::read_to_string(dir.path().join(name)).unwrap())
        .collect();
    let restore = || {
        for (name, text) in files.iter().zip(&original) {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
    };
    let checkpoint = std::fs::read(dir.path().join("checkpoint")).unwrap();

    edit_meta_file(
        dir.path(),
        "topics/1.toml",
        "partitions = 1",
        "partitions = 0",
    );
    refused(dir.path(), "topics/1.toml: topic \"a\" has partitions = 0");
    restore();

    edit_meta_file(dir.path(), "topics/2.toml", "name = \"b\"", "name = \"a\"");
    refused(dir.path(), "two topics are named \"a\"");
    restore();

    edit_meta_file(dir.path(), "topics/2.toml", "id = 2", "id = 1");
    refused(dir.path(), "topics/2.toml: byte ");
    refused(dir.path(), "holds topic id 1, but its name says 2");
    restore();

    edit_meta_file(
        dir.path(),
        "store.toml",
        "next_topic_id = 3",
        "next_topic_id = 2",
    );
    refused(dir.path(), "id 2");
    restore();

    // Fewer partitions than hold messages: the mount refuses, repair raises the count.
    edit_meta_file(
        dir.path(),
        "topics/2.toml",
        "partitions = 3",
        "partitions = 2",
    );
    refused(dir.path(), "partition 2 of topic \"b\"");
    assert_eq!(
        std::fs::read(dir.path().join("checkpoint")).unwrap(),
        checkpoint,
        "a refused open writes nothing"
    );
    let repaired = commitfs(&["check", "--repair"], dir.path());
    assert_eq!(repaired.status.code(), Some(1), "{}", stdout(&repaired));
    let store = open(dir.path());
    assert_eq!(store.topic("b").unwrap().partitions().len(), 3);
    assert_messages(&store, "a", 150, &[]);
    assert_messages(&store, "b", 150, &[]);
}

#[test]
fn lost_metadata_refuses_the_open_and_repair_rebuilds_it_without_reusing_ids() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 2), ("b", 1)], 250);
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    std::fs::remove_dir_all(dir.path().join("topics")).unwrap();
    refused(dir.path(), "store.toml is missing");
    assert!(
        dir.path().join("queues").join("1").exists(),
        "no queue removed"
    );
    assert!(
        !dir.path().join("store.toml").exists(),
        "no empty store.toml written"
    );

    let checked = commitfs(&["check"], dir.path());
    assert_eq!(checked.status.code(), Some(1), "{}", stdout(&checked));
    let repaired = commitfs(&["check", "--repair"], dir.path());
    let report = stdout(&repaired);
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    assert!(report.contains("store.toml written"), "{report}");

    let store = open(dir.path());
    // Names are lost with the files: topics come back as topic-<id>.
    assert_messages_renamed(&store, "topic-1", "a", 2, 250);
    assert_messages_renamed(&store, "topic-2", "b", 1, 250);
    let new = store.create_topic("c", settings(1)).unwrap();
    assert_eq!(new.id(), 3, "a new topic never takes an id the data holds");
    store.close().unwrap();
    // Even rebuilt from the whole log, the new topic shows none of the old messages.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.topic("c").unwrap().partition(0).unwrap().end_offset(),
        0
    );
}

fn assert_messages_renamed(
    store: &Store,
    name: &str,
    written_as: &str,
    partitions: u32,
    count: u64,
) {
    let topic = store.topic(name).unwrap_or_else(|| panic!("topic {name}"));
    assert_eq!(topic.partitions().len(), partitions as usize);
    for partition in topic.partitions() {
        assert_eq!(partition.end_offset(), count);
        for offset in 0..count {
            assert_eq!(
                store.read_message(&partition, offset).unwrap(),
                message(written_as, partition.index(), offset)
            );
        }
    }
}

#[test]
fn a_missing_commit_log_file_holding_the_checkpoints_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 1)], 1500);
    let files = log_files(dir.path());
    let last = files.last().unwrap();
    std::fs::remove_file(last).unwrap();
    let error = Store::open(dir.path(), fixtures::recovery_store_config())
        .err()
        .expect("the open is refused");
    let text = error.to_string();
    assert!(text.contains(&last.display().to_string()), "{text}");
    assert_eq!(
        log_files(dir.path()),
        files[..files.len() - 1],
        "nothing created or removed"
    );

    let repaired = commitfs(&["check", "--repair"], dir.path());
    let report = stdout(&repaired);
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    let store = open(dir.path());
    let partition = store.topic("a").unwrap().partition(0).unwrap();
    let end = partition.end_offset();
    assert!(end > 0 && end < 1500);
    assert!(
        report.contains(&format!("offsets {end}..1500 are gone")),
        "{report}"
    );
    for offset in 0..end {
        assert_eq!(
            store.read_message(&partition, offset).unwrap(),
            message("a", 0, offset)
        );
    }
}

#[test]
fn a_valid_record_past_the_log_end_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path(), &[("a", 1)], 1500);
    let files = log_files(dir.path());
    // The checkpoint says the log ends in the first file; later files hold records.
    let checkpoint = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    bytes[8..16].copy_from_slice(&100u64.to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&checkpoint, bytes).unwrap();
    assert!(Store::open(dir.path(), fixtures::recovery_store_config()).is_err());
    assert_eq!(log_files(dir.path()), files, "every file is still there");
}

#[test]
fn a_torn_tail_before_an_empty_prepared_file_is_still_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let partition = fixtures::new_partition(&store, "a", settings(1));
    for offset in 0..1200 {
        store
            .append(&partition, &message("a", 0, offset), None)
            .unwrap();
    }
    store.halt_without_cleanup();
    drop(store);
    let files = log_files(dir.path());
    let last = files.last().unwrap();
    // The file a killed daemon had prepared ahead of need: allocated, never written.
    let base: u64 = last.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let prepared = log_dir(dir.path()).join(format!("{:020}", base + 64 * 1024));
    std::fs::write(&prepared, vec![0u8; 64 * 1024]).unwrap();
    // The newest record torn.
    let mut bytes = std::fs::read(last).unwrap();
    let newest = *fixtures::batch_starts(&bytes).last().unwrap();
    bytes[newest + 20..newest + 60].fill(0);
    std::fs::write(last, &bytes).unwrap();

    let store = open(dir.path());
    let partition = store.topic("a").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 1199);
    for offset in 0..1199 {
        assert_eq!(
            store.read_message(&partition, offset).unwrap(),
            message("a", 0, offset)
        );
    }
    let next = store.append(&partition, b"after\n", None).unwrap();
    assert_eq!(next.first_offset, 1199);
}

/// Minor page faults of the calling thread so far.
fn thread_page_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given; zeroes are a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid, writable rusage.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
        0
    );
    usage.ru_minflt
}

/// Recovery after an unclean stop reads what was written since the checkpoint, not the
/// never-written rest of a 1 GiB commit-log file (which it used to read page by page,
/// zero-filling each: 4.7 s through the mount for 8 KB written). Counted in page faults of
/// the opening thread, not in time.
#[test]
fn recovery_after_a_crash_does_not_read_the_unwritten_rest_of_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        commit_log_file_bytes: 1 << 30,
        max_message_bytes: 4096,
        ..fixtures::recovery_store_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "a", settings(1));
    for offset in 0..100 {
        store
            .append(&partition, &message("a", 0, offset), None)
            .unwrap();
    }
    store.halt_without_cleanup();
    drop((store, partition));

    let before = thread_page_faults();
    let store = Store::open(dir.path(), config).unwrap();
    let faults = thread_page_faults() - before;
    let partition = store.topic("a").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 100);
    // Reading it all took 923 faults here (the kernel maps large folios of the rest at once);
    // what was written takes about 10.
    assert!(faults < 100, "{faults} page faults to recover 100 messages");
}
