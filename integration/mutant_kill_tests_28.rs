//! What `cargo mutants` passes over `src/store/faults.rs` (the failpoints and the power-loss
//! record), `src/store/format.rs` (lines 1–229) and `src/store/dump.rs` (lines 1–240) found
//! untested (issue 9). The fault tests count on the simulation: these show it does what it
//! claims. Each test says which mutants it kills. Every test holds `FailScenario` (failpoints
//! are global).

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::{FlushPolicy, Store, StoreConfig};

/// [`fixtures::small_store_config`] whose background flush never comes during a test: only
/// what a test syncs is made durable.
fn config() -> StoreConfig {
    StoreConfig {
        flush: FlushPolicy::Async {
            interval_ms: 3_600_000,
        },
        ..fixtures::small_store_config()
    }
}

/// The commit-log file of the store at `dir` that starts at log offset `base`.
fn log_file(dir: &Path, base: u64) -> PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// Where the last batch of the commit-log file `bytes` ends.
#[cfg(feature = "failpoints")]
fn end_of_batches(bytes: &[u8]) -> usize {
    let last = *fixtures::batch_starts(bytes).last().expect("a batch");
    last + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize
}

/// What a power loss would leave of a commit-log file when messages were synced, more were
/// written and never synced, and the next open cut a torn tail after them (zeroing it
/// durably): the synced messages' bytes, and the cut's zeroes, but not the unsynced messages
/// between them, although bytes before and after them are durable. Once a sync covers them
/// too, the whole file is one durable range.
/// Kills `DurableImage::store`'s `&&` as `||` and its second `<=` as `>` (line 58: ranges
/// with a gap between them merged, the unsynced messages counted durable), `delete !` (line
/// 62: a new range dropped the ranges it does not touch, the synced messages no longer
/// durable), and its first `<=` as `>` (line 58: a range overlapping later ones kept apart
/// from them).
#[cfg(feature = "failpoints")]
#[test]
fn a_power_loss_keeps_synced_messages_and_a_durable_cut_but_not_the_unsynced_between() {
    use commitfs::store::faults::{durable_image, record_durability};
    let _scenario = fail::FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 20);
    store.sync().unwrap();
    let path = log_file(dir.path(), 0);
    let synced = end_of_batches(&std::fs::read(&path).unwrap()) as u64;
    fixtures::append_lines(&store, &partition, 20, 40);
    store.halt_without_cleanup();
    drop((partition, store));

    // A torn batch after the unsynced messages, as a crash of the writer leaves one.
    let mut bytes = std::fs::read(&path).unwrap();
    let written = end_of_batches(&bytes);
    assert!(written as u64 > synced);
    for (i, byte) in bytes[written..written + 300].iter_mut().enumerate() {
        *byte = (i * 31 + 7) as u8 | 1;
    }
    std::fs::write(&path, &bytes).unwrap();

    // The open cuts the tail durably (the first flush of a file), and then its checkpoint,
    // which would sync the unsynced messages, finds the disk full and is put off.
    fail::cfg("mapped::flush", "1*off->return(enospc@commitlog)").unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    fail::remove("mapped::flush");
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 40);
    let image = durable_image(&path).expect("the log file is followed");
    assert_eq!(image.durable.len(), 2, "{:?}", image.durable);
    assert_eq!(image.durable[0], 0..synced, "the synced messages");
    let cut = &image.durable[1];
    assert_eq!(
        cut.start, written as u64,
        "the cut zeroes, from the log's end"
    );
    assert_eq!(image.bytes[..synced as usize], bytes[..synced as usize]);
    assert!(image.bytes[cut.start as usize..].iter().all(|&b| b == 0));

    // Once the messages after the synced ones are synced too, the file is durable whole.
    let cut_end = cut.end;
    store.append(&partition, b"after\n", None).unwrap();
    store.sync().unwrap();
    let image = durable_image(&path).unwrap();
    assert_eq!(image.durable.len(), 1, "{:?}", image.durable);
    assert_eq!(image.durable[0], 0..cut_end, "one range, merged");
    let after = std::fs::read(&path).unwrap();
    let end = end_of_batches(&after);
    assert_eq!(image.bytes[..end], after[..end]);
    store.close().unwrap();
}

/// The failpoints of a file replacement do what the README's "Testing" says: `short` runs
/// out of space part way, leaving half of the new bytes in the temporary file and failing
/// for a full disk; `eio` fails before writing anything; either leaves the file as it was.
/// Kills `faults::is_short` as `true` (an `eio` failure wrote half the file first), as
/// `false` and its `==` as `!=` (a `short` one wrote nothing).
#[cfg(feature = "failpoints")]
#[test]
fn an_injected_short_write_leaves_half_a_replacement_and_an_injected_error_nothing() {
    use commitfs::store::consumers::{self, CONSUMERS_FILE};
    use commitfs::store::StoreError;
    use std::collections::BTreeMap;
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (file, temporary) = (
        dir.path().join(CONSUMERS_FILE),
        dir.path().join(format!("{CONSUMERS_FILE}.tmp")),
    );
    let old = BTreeMap::from([("old".to_owned(), 1)]);
    consumers::write(dir.path(), &old).unwrap();
    let kept = std::fs::read(&file).unwrap();
    let new: BTreeMap<String, u64> = (0..10).map(|i| (format!("group-{i}"), i * 100)).collect();

    fail::cfg("meta::write_atomically", "return(eio)").unwrap();
    let failed = consumers::write(dir.path(), &new);
    fail::remove("meta::write_atomically");
    assert!(matches!(failed, Err(StoreError::Io { .. })), "{failed:?}");
    assert!(!temporary.exists(), "an eio failure wrote a temporary file");
    assert_eq!(std::fs::read(&file).unwrap(), kept);

    fail::cfg("meta::write_atomically", "return(short)").unwrap();
    let failed = consumers::write(dir.path(), &new);
    fail::remove("meta::write_atomically");
    assert!(matches!(failed, Err(StoreError::DiskFull(_))), "{failed:?}");
    assert_eq!(std::fs::read(&file).unwrap(), kept);
    let half = std::fs::read(&temporary).expect("a short failure leaves half of the file");

    consumers::write(dir.path(), &new).unwrap();
    let whole = std::fs::read(&file).unwrap();
    assert_eq!(half, whole[..whole.len() / 2]);
}

/// A file replaced whole (`write_atomically`: written, synced, renamed, its directory
/// synced) is durable whole, name included: a power loss right after keeps it. Kills
/// `faults::replaced` as `()` (such a file was not followed: a crash copy took whatever the
/// page cache held).
#[cfg(feature = "failpoints")]
#[test]
fn a_file_replaced_whole_is_durable_whole_with_its_name() {
    use commitfs::store::consumers::{self, CONSUMERS_FILE};
    use commitfs::store::faults::{durable_image, record_durability};
    use std::collections::BTreeMap;
    let _scenario = fail::FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let groups: BTreeMap<String, u64> = (0..5).map(|i| (format!("group-{i}"), i * 7)).collect();
    consumers::write(dir.path(), &groups).unwrap();
    let bytes = std::fs::read(dir.path().join(CONSUMERS_FILE)).unwrap();
    let image = durable_image(&dir.path().join(CONSUMERS_FILE)).expect("the file is followed");
    assert!(image.linked, "its name is durable");
    assert_eq!(image.durable.len(), 1, "{:?}", image.durable);
    assert_eq!(image.durable[0], 0..bytes.len() as u64);
    assert_eq!(image.bytes, bytes);
}

/// A consume-queue file made ahead of need and renamed into place by the first append is
/// followed under its new name, which a power loss loses until a checkpoint syncs it: a
/// crash copy before the checkpoint has no such file, one after it has. Kills
/// `faults::renamed` as `()` (the renamed file was not followed: its name counted as durable
/// at once, and its bytes were taken as they were).
#[cfg(feature = "failpoints")]
#[test]
fn a_queue_file_renamed_into_place_survives_a_power_loss_only_after_a_checkpoint() {
    use commitfs::store::faults::{durable_image, record_durability};
    use fixtures::power_loss::{crash_copy, PowerLoss};
    let _scenario = fail::FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data, config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    let queues = data.join("queues").join(topic.id().to_string()).join("0");
    let (prepared, queue_file) = (
        queues.join(format!("{:020}.prepared", 0)),
        queues.join(format!("{:020}", 0)),
    );
    fixtures::made_ahead(&prepared);
    let partition = topic.partition(0).unwrap();
    fixtures::append_lines(&store, &partition, 0, 3);
    assert!(!prepared.exists() && queue_file.exists());
    let image = durable_image(&queue_file).expect("the renamed file is followed");
    assert!(!image.linked, "its new name is not durable yet");
    assert!(durable_image(&prepared).is_none());
    let loss = PowerLoss::NAMES_LOST;
    let before = dir.path().join("before");
    crash_copy(&data, &before, loss);
    assert!(!before
        .join(queue_file.strip_prefix(&data).unwrap())
        .exists());

    store.checkpoint().unwrap();
    assert!(durable_image(&queue_file).unwrap().linked);
    let after = dir.path().join("after");
    crash_copy(&data, &after, loss);
    assert!(after.join(queue_file.strip_prefix(&data).unwrap()).exists());
    store.close().unwrap();
}

/// Setting a consumer position syncs its partition's queue directory: the names in that
/// directory are durable from then on, and only those: another partition's queue file,
/// whose directory was not synced, is still lost by a power loss. Kills
/// `faults::dir_synced`'s `==` as `!=` (a directory's sync made the names everywhere else
/// durable, and not its own).
#[cfg(feature = "failpoints")]
#[test]
fn a_directory_sync_makes_the_names_in_it_durable_and_no_others() {
    use commitfs::store::faults::{durable_image, record_durability};
    use fixtures::power_loss::{crash_copy, PowerLoss};
    let _scenario = fail::FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data, config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(2)).unwrap();
    let queue_file = |index: u32| {
        PathBuf::from("queues")
            .join(topic.id().to_string())
            .join(index.to_string())
            .join(format!("{:020}", 0))
    };
    for index in 0..2 {
        fixtures::append_lines(&store, &topic.partition(index).unwrap(), 0, 3);
        let image = durable_image(&data.join(queue_file(index))).expect("followed");
        assert!(!image.linked, "partition {index}'s queue file is new");
    }
    topic
        .partition(0)
        .unwrap()
        .set_consumer_position("g", 2)
        .unwrap();
    assert!(durable_image(&data.join(queue_file(0))).unwrap().linked);
    assert!(!durable_image(&data.join(queue_file(1))).unwrap().linked);
    let copy = dir.path().join("copy");
    let loss = PowerLoss::NAMES_LOST;
    crash_copy(&data, &copy, loss);
    assert!(copy.join(queue_file(0)).exists());
    assert!(!copy.join(queue_file(1)).exists());
    store.close().unwrap();
}

/// A crash copy's files are taken as durable as they are (`assume_durable`), so that what
/// the store changes in them afterwards without a sync is followed: a second power loss,
/// after messages were appended to the copy and never synced, loses those messages and
/// keeps the rest. Kills `faults::assume_durable` as `()` (a copied file was not followed:
/// the second loss kept the unsynced messages).
#[cfg(feature = "failpoints")]
#[test]
fn a_second_power_loss_loses_what_was_not_synced_since_the_first() {
    use commitfs::store::faults::{durable_image, record_durability};
    use fixtures::power_loss::{crash_copy, PowerLoss};
    let _scenario = fail::FailScenario::setup();
    record_durability();
    let dir = tempfile::tempdir().unwrap();
    let [data, first, second] = ["data", "first", "second"].map(|name| dir.path().join(name));
    let loss = PowerLoss::NAMES_LOST;
    let store = Store::open(&data, config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 5);
    store.checkpoint().unwrap();
    crash_copy(&data, &first, loss);
    store.halt_without_cleanup();
    drop((partition, store));
    assert!(durable_image(&log_file(&first, 0)).is_some_and(|image| image.linked));

    let store = Store::open(&first, config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 5);
    fixtures::append_lines(&store, &partition, 5, 8);
    crash_copy(&first, &second, loss);
    store.halt_without_cleanup();
    drop((partition, store));

    let store = Store::open(&second, config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(partition.end_offset(), 5, "the unsynced messages are lost");
    fixtures::assert_reads(&store, &partition, 0, 5);
    store.close().unwrap();
}

/// A log whose newest commit-log file ends in its end-of-file marker, with no file after it
/// (the next file's messages gone), dumps every message of that file and ends there. Kills
/// `Walk::run`'s `<` as `<=` and its `i + 1` as `i * 1` (line 196: the walk went on to a
/// file past the last one and panicked).
#[test]
fn a_dump_ends_at_an_end_of_file_marker_in_the_newest_file() {
    use commitfs::store::dump::{dump, DumpOptions};
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    // One unkeyed message a batch: 16 of 4,000 bytes and one of 440 fill the first 64 KiB
    // file up to its 8-byte end-of-file marker.
    let big: Vec<u8> = [vec![b'a'; 3999], b"\n".to_vec()].concat();
    let last_in_file: Vec<u8> = [vec![b'b'; 439], b"\n".to_vec()].concat();
    let mut messages = vec![big; 16];
    messages.push(last_in_file);
    messages.extend((0..5).map(fixtures::line));
    let store = Store::open(dir.path(), config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    for message in &messages {
        store.append(&partition, message, None).unwrap();
    }
    store.sync().unwrap();
    store.halt_without_cleanup();
    drop((partition, store));
    std::fs::remove_file(log_file(dir.path(), 64 * 1024)).unwrap();

    let mut out = Vec::new();
    let report = dump(dir.path(), &DumpOptions::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(fixtures::dumped_offsets(&text), (0..17).collect::<Vec<_>>());
    assert_eq!(report.messages, 17);
}
