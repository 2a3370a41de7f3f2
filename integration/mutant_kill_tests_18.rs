//! What a `cargo mutants` pass over `src/store/mapped.rs` and `src/store/mod.rs` found
//! untested (issue 9). Each test says which mutants it kills. Every test holds
//! `FailScenario` (failpoints are global: a one-shot failpoint is taken by whichever test's
//! store reaches it first).

mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

use commitfs::store::{Store, StoreConfig};

/// A 32 MiB ext2 file system on a loop device (needs root), unmounted on drop: a file system
/// without `fallocate`, where every call of it fails with `EOPNOTSUPP`.
struct Ext2Disk {
    dir: tempfile::TempDir,
    _image: tempfile::NamedTempFile,
}

impl Ext2Disk {
    fn new() -> Ext2Disk {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(32 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("timeout")
                .arg("20")
                .args(args)
                .output()
                .expect("run a command");
            assert!(
                out.status.success(),
                "{args:?} (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let image_path = image.path().to_str().unwrap();
        run(&["mkfs.ext2", "-q", "-F", "-m", "0", image_path]);
        run(&[
            "mount",
            "-o",
            "loop",
            image_path,
            dir.path().to_str().unwrap(),
        ]);
        Ext2Disk { dir, _image: image }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Ext2Disk {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["20", "umount"])
            .arg(self.dir.path())
            .status();
    }
}

/// Lines `line 0` … `line 99` in topic "t" (one partition) of a fresh store at `dir`, closed
/// cleanly.
fn store_of_100_lines(dir: &Path) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 100);
    store.close().unwrap();
}

/// On a file system without `fallocate` (ext2) a store is made, reopened and appended to:
/// its files' blocks are written as zeroes instead. Kills, in `MappedFile`,
/// `open_allocating_from`'s match guard `EOPNOTSUPP` as `false` (the reopen failed) and
/// `allocate`'s `!=` as `==` (the creation failed).
#[test]
fn a_store_on_a_file_system_without_fallocate_opens_again_and_takes_appends() {
    let _scenario = fail::FailScenario::setup();
    let disk = Ext2Disk::new();
    let data = disk.data();
    store_of_100_lines(&data);

    let store = Store::open(&data, fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 100);
    fixtures::append_lines(&store, &partition, 100, 200);
    store.close().unwrap();
    drop((partition, store));

    let store = Store::open(&data, fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 200);
    store.close().unwrap();
}

/// 4 MiB commit-log files: a torn tail cut at open spans several of `zero_range`'s 1 MiB
/// chunks.
fn large_log_config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 4 << 20,
        ..fixtures::small_store_config()
    }
}

/// Where the last batch of the commit-log file `bytes` ends.
fn end_of_batches(bytes: &[u8]) -> usize {
    let last = *fixtures::batch_starts(bytes).last().expect("a batch");
    last + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize
}

/// A store stopped the way a killed process stops, with stale bytes left after its log's end
/// (as a crash leaves a write that never completed): right after the end, and 3 MiB further.
/// The open cuts the torn tail: the stale bytes are zeroes in the file afterwards, and the
/// messages are all served. On ext2 the cut writes zeroes (no `fallocate`), elsewhere it
/// zeroes the range with `fallocate`. Kills `MappedFile::zero_range`'s `<` as `==` and as
/// `>` (nothing zeroed), its `+=` as `-=` and as `*=` (only the first 1 MiB zeroed) and its
/// `-` as `+` (the last chunk ran past the file's allocated bytes: a panic), and
/// `MappedFile::zero_from` as `Ok(())`, its `>=` as `<` (nothing zeroed) and its `-` as `/`
/// (only `end / at` bytes zeroed).
#[test]
fn a_torn_tail_cut_at_open_reads_as_zeroes_in_the_file() {
    let _scenario = fail::FailScenario::setup();
    let disk = Ext2Disk::new();
    let plain = tempfile::tempdir().unwrap();
    for data in [disk.data(), plain.path().join("data")] {
        let store = Store::open(&data, large_log_config()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
        fixtures::append_lines(&store, &partition, 0, 100);
        store.sync().unwrap();
        store.halt_without_cleanup();
        drop((partition, store));

        let log = data.join("commitlog").join(format!("{:020}", 0));
        let mut bytes = std::fs::read(&log).unwrap();
        assert_eq!(bytes.len(), 4 << 20);
        let end = end_of_batches(&bytes);
        for at in [end, end + (3 << 20)] {
            for (i, byte) in bytes[at..at + 300].iter_mut().enumerate() {
                *byte = (i * 31 + 7) as u8 | 1;
            }
        }
        std::fs::write(&log, &bytes).unwrap();

        let store = Store::open(&data, large_log_config()).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap();
        fixtures::assert_reads(&store, &partition, 0, 100);
        let after = std::fs::read(&log).unwrap();
        assert_eq!(after.len(), 4 << 20, "{}", data.display());
        assert_eq!(after[..end], bytes[..end], "{}", data.display());
        let stale = after[end..].iter().rposition(|&b| b != 0);
        assert_eq!(
            stale,
            None,
            "{}: stale bytes left after the log's end",
            data.display()
        );
        // New messages go where the stale bytes were, and read back after a clean reopen.
        fixtures::append_lines(&store, &partition, 100, 150);
        store.close().unwrap();
        drop((partition, store));
        let store = Store::open(&data, large_log_config()).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap();
        fixtures::assert_reads(&store, &partition, 0, 150);
        store.close().unwrap();
    }
}

/// What a sync makes durable survives a power loss: two syncs (the second flushes from
/// past the log's start), then a crash copy that keeps of the log only what was written
/// back, as a power loss does; the copy serves every message. Kills `MappedFile::flush` as
/// `Ok(())`, its `<=` as `>` (nothing written back) and its `-` as `/` (the first flush,
/// from byte 0, divided by zero).
#[cfg(feature = "failpoints")]
#[test]
fn what_a_sync_made_durable_survives_a_power_loss() {
    use fixtures::power_loss::{crash_copy, Fill, PowerLoss};
    let _scenario = fail::FailScenario::setup();
    commitfs::store::faults::record_durability();
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let store = Store::open(&data, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 50);
    store.sync().unwrap();
    fixtures::append_lines(&store, &partition, 50, 100);
    store.sync().unwrap();
    crash_copy(
        &data,
        &copy,
        PowerLoss {
            fill: Fill::Zeros,
            unsynced_names_survive: true,
        },
    );
    store.halt_without_cleanup();
    drop((partition, store));

    let store = Store::open(&copy, fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 100);
    fixtures::assert_reads(&store, &partition, 0, 100);
    store.close().unwrap();
}

/// With `flush = "sync"` an append returns durable: a power loss right after it keeps it,
/// with no `sync` called. Kills `Store::appending`'s `==` as `!=` (a sync store's appends
/// returned before a flush).
#[cfg(feature = "failpoints")]
#[test]
fn with_sync_flushes_an_append_survives_a_power_loss_as_soon_as_it_returns() {
    use commitfs::store::FlushPolicy;
    use fixtures::power_loss::{crash_copy, Fill, PowerLoss};
    let _scenario = fail::FailScenario::setup();
    commitfs::store::faults::record_durability();
    let config = StoreConfig {
        flush: FlushPolicy::Sync,
        ..fixtures::small_store_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let store = Store::open(&data, config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 20);
    crash_copy(
        &data,
        &copy,
        PowerLoss {
            fill: Fill::Zeros,
            unsynced_names_survive: true,
        },
    );
    store.halt_without_cleanup();
    drop((partition, store));

    let store = Store::open(&copy, config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 20);
    fixtures::assert_reads(&store, &partition, 0, 20);
    store.close().unwrap();
}

/// `GET /metrics` from a metrics server of `store`, on a port that was free.
fn scrape(store: &std::sync::Arc<Store>) -> String {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listener = commitfs::metrics::MetricsListener::bind(([127, 0, 0, 1], port).into())
        .expect("bind the metrics port");
    let _server = listener.serve(store.clone()).unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("headers, then a body");
    body.to_owned()
}

/// The value of sample `series` (name and labels as written) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<u64> {
    scrape.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

/// The metrics count each topic's appended messages and bytes, whichever entry point took
/// them: `append`, `append_batch`, and `append_to_partitions` with batches of two topics
/// (two partitions of one, then one of the other). Kills `count_appended` as `()`, its
/// `+=`s as `-=` and `*=`, and its `==` as `!=` (another topic's batch counted with the
/// run before it).
#[test]
fn the_metrics_count_appended_messages_and_bytes_per_topic() {
    let _scenario = fail::FailScenario::setup();
    use commitfs::store::NewMessage;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let counted = store
        .create_topic("counted", fixtures::lines_topic(2))
        .unwrap();
    let other = store
        .create_topic("counted-other", fixtures::lines_topic(1))
        .unwrap();
    let (a0, a1, b0) = (
        counted.partition(0).unwrap(),
        counted.partition(1).unwrap(),
        other.partition(0).unwrap(),
    );
    store.append(&a0, b"one\n", None).unwrap();
    let two = [
        NewMessage {
            payload: b"two\n",
            key_len: None,
        },
        NewMessage {
            payload: b"three\n",
            key_len: None,
        },
    ];
    store.append_batch(&a1, &two).unwrap();
    fixtures::append_to_partitions(
        &store,
        &[
            (a0.clone(), vec!["four\n".into(), "five\n".into()]),
            (a1.clone(), vec!["six\n".into()]),
            (b0.clone(), vec!["seven\n".into(), "eight-8\n".into()]),
        ],
    )
    .unwrap();

    let text = scrape(&store);
    let of = |family: &str, topic: &str| {
        sample(
            &text,
            &format!("commitfs_{family}_total{{topic=\"{topic}\"}}"),
        )
    };
    assert_eq!(of("appended_messages", "counted"), Some(6), "{text}");
    assert_eq!(
        of("appended_bytes", "counted"),
        Some(4 + 4 + 6 + 5 + 5 + 4),
        "{text}"
    );
    assert_eq!(of("appended_messages", "counted-other"), Some(2), "{text}");
    assert_eq!(of("appended_bytes", "counted-other"), Some(6 + 8), "{text}");
    store.close().unwrap();
}

/// A key lookup that the index sends to a batch which is not valid any more fails naming
/// the commit-log file and the byte of that file where the batch is. Kills
/// `Store::for_each_key_match`'s `%` as `/` and as `+` (the wrong byte).
#[test]
fn a_key_lookup_reaching_a_damaged_batch_names_its_file_and_byte() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    {
        let store = Store::open(dir.path(), config.clone()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::keyed_topic(1));
        for line in ["a:0\n", "b:1\n", "c:2\n"] {
            store.append(&partition, line.as_bytes(), Some(1)).unwrap();
        }
        store.close().unwrap();
    }
    let log_file = dir.path().join("commitlog").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&log_file).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 3, "one batch an append");
    // A size smaller than a batch's header: no valid batch starts there any more.
    bytes[starts[1]..starts[1] + 4].copy_from_slice(&10u32.to_le_bytes());
    std::fs::write(&log_file, &bytes).unwrap();

    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(fixtures::key_matches(&store, &topic, "c").len(), 1);
    let error = store
        .for_each_key_match(&topic, None, b"b", |_| std::ops::ControlFlow::Continue(()))
        .expect_err("the damaged batch is an error");
    match error {
        commitfs::store::StoreError::Corrupt { path, offset, .. } => {
            assert_eq!(path, log_file);
            assert_eq!(offset, starts[1] as u64);
        }
        other => panic!("{other}"),
    }
    store.close().unwrap();
}

/// Two topics changed and deleted in turn, each change persisted, the rest untouched:
/// `update_topic` of `a` (same partitions), of `b` (more partitions), `delete_topic` of
/// `a`, `update_topic` of `b` again; after a reopen only `b` is left, with its last
/// settings and its messages. Kills `Store::delete_topic`'s `==` as `!=` and
/// `Store::update_topic`'s `==` as `!=` (the record of the other topic was removed or
/// replaced: a later change of it panicked), and `update_topic`'s `<` as `<=` and as `==`
/// (a change keeping the partitions refused) and as `>` (growing refused).
#[test]
fn changes_and_deletions_of_two_topics_each_reach_their_own_topic() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    {
        let store = Store::open(dir.path(), config.clone()).unwrap();
        let a = store.create_topic("a", fixtures::lines_topic(1)).unwrap();
        let b = store.create_topic("b", fixtures::lines_topic(1)).unwrap();
        fixtures::append_lines(&store, &a.partition(0).unwrap(), 0, 3);
        fixtures::append_lines(&store, &b.partition(0).unwrap(), 0, 5);

        let mut settings = a.settings();
        settings.retention_ms = Some(3_600_000);
        store.update_topic(&a, settings).unwrap();
        let mut settings = b.settings();
        settings.partitions = 3;
        store.update_topic(&b, settings.clone()).unwrap();
        assert_eq!(b.partitions().len(), 3);
        store.delete_topic("a").unwrap();
        settings.retention_bytes = Some(1 << 30);
        store.update_topic(&b, settings).unwrap();
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), config).unwrap();
    assert!(store.topic("a").is_none());
    let names: Vec<String> = store.topics().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(names, ["b"]);
    let b = store.topic("b").unwrap();
    let settings = b.settings();
    assert_eq!(
        (settings.partitions, settings.retention_bytes),
        (3, Some(1 << 30))
    );
    fixtures::assert_reads(&store, &b.partition(0).unwrap(), 0, 5);
    store.close().unwrap();
}

/// Dropping a store closes it cleanly: the next open needs no recovery. Kills `Drop for
/// Store` as `()` (the abort marker stayed and the next open recovered).
#[test]
fn a_dropped_store_was_closed_cleanly() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    {
        let store = Store::open(dir.path(), config.clone()).unwrap();
        let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
        fixtures::append_lines(&store, &partition, 0, 10);
    }
    assert!(
        !dir.path().join("abort").exists(),
        "the abort marker is gone"
    );
    let logs = fixtures::logs_of(|| {
        let store = Store::open(dir.path(), config).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap();
        fixtures::assert_reads(&store, &partition, 0, 10);
        store.close().unwrap();
    });
    assert!(!logs.contains("unclean"), "{logs}");
}

/// The very first append of a store fails part way through writing its batch (half of it
/// reached the file, at byte 0): the append is refused, the half-written bytes are zeroes in
/// the commit-log file at once, and after a reopen the log is empty and takes appends from
/// offset 0. Kills `MappedFile::zero_range`'s `-` as `/` (a range from byte 0 divided by
/// zero, and the half-written batch stayed).
#[cfg(feature = "failpoints")]
#[test]
fn a_failed_first_append_leaves_zeroes_at_the_start_of_the_log() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    let lines: Vec<String> = (0..40).map(|i| format!("failed {i}\n")).collect();
    fail::cfg("mapped::write_at", "1*return(short@commitlog)").unwrap();
    let refused = store.append_batch(&partition, &fixtures::keyed_messages(&lines));
    fail::remove("mapped::write_at");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(partition.end_offset(), 0);
    let log_file = dir.path().join("commitlog").join(format!("{:020}", 0));
    let bytes = std::fs::read(&log_file).unwrap();
    assert!(
        bytes[..4096].iter().all(|&b| b == 0),
        "the half-written batch is left in the log"
    );
    drop((partition, store));

    let store = Store::open(dir.path(), config).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 0);
    let next = store.append(&partition, b"after\n", None).unwrap();
    assert_eq!(next.first_offset, 0);
    assert_eq!(store.read_message(&partition, 0).unwrap(), b"after\n");
    store.close().unwrap();
}

/// A topic whose file cannot be removed (made immutable) is not deleted: `delete_topic`
/// fails, and the topic and its messages are still there, also after a reopen. Kills
/// `mapped::remove_file`'s match guard `NotFound` as `true` (every failure to remove a file
/// taken as success: the deletion was reported, and the topic came back at the next open).
#[test]
fn a_topic_whose_file_cannot_be_removed_is_not_deleted() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::small_store_config();
    let store = Store::open(dir.path(), config.clone()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    fixtures::append_lines(&store, &topic.partition(0).unwrap(), 0, 5);
    let topic_file = dir.path().join("topics").join("1.toml");
    assert!(topic_file.exists(), "{}", topic_file.display());
    let immutable = fixtures::Immutable::new(&topic_file);
    let deleted = store.delete_topic("t");
    drop(immutable);
    assert!(deleted.is_err(), "the deletion was reported: {deleted:?}");
    assert!(store.topic("t").is_some());
    fixtures::assert_reads(&store, &topic.partition(0).unwrap(), 0, 5);
    store.close().unwrap();
    drop((topic, store));

    let store = Store::open(dir.path(), config).unwrap();
    let topic = store.topic("t").expect("the topic is still there");
    fixtures::assert_reads(&store, &topic.partition(0).unwrap(), 0, 5);
    store.close().unwrap();
}

/// A topic of more partitions than `MAX_PARTITIONS`, or of none, is refused, at creation and
/// as a change, and nothing is made. Kills `validate_settings`'s `>` as `==` (one more than
/// the most accepted).
#[test]
fn more_partitions_than_the_most_a_topic_may_have_are_refused() {
    let _scenario = fail::FailScenario::setup();
    use commitfs::store::{StoreError, MAX_PARTITIONS};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    for partitions in [0, MAX_PARTITIONS + 1] {
        let refused = store.create_topic("t", fixtures::lines_topic(partitions));
        assert!(
            matches!(refused, Err(StoreError::InvalidSetting(_))),
            "{partitions} partitions: {:?}",
            refused.map(|t| t.partitions().len())
        );
    }
    assert!(store.topics().is_empty());
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    let refused = store.update_topic(&topic, fixtures::lines_topic(MAX_PARTITIONS + 1));
    assert!(
        matches!(refused, Err(StoreError::InvalidSetting(_))),
        "{refused:?}"
    );
    assert_eq!(topic.partitions().len(), 1);
    store.close().unwrap();
}
