//! Key-index and consume-queue entries faulted in ahead of the writer (issue 7): once a
//! file's entries pass the middle of its last allocation, the next is allocated and the
//! preparer thread faults its pages in, so the writer's stores find them mapped; a full disk
//! while allocating ahead fails no append that fits in the room already there. Every test
//! holds a `FailScenario` (failpoints are global).

#![cfg(feature = "failpoints")]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use commitfs::store::{Partition, Store, StoreConfig, StoreError, Topic};
use fail::FailScenario;

mod fixtures;

/// Entries an index file allocates at a time (`index.rs`), and the bytes of one.
const CHUNK_ENTRIES: u64 = 65_536;
const ENTRY_BYTES: u64 = 24;
const SLOTS: u32 = 64;

/// Index files of four chunks' entries.
fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 16 * 1024 * 1024,
        segment_messages: 1_000_000,
        index_slots: SLOTS,
        index_entries: 4 * CHUNK_ENTRIES as u32,
        ..fixtures::small_store_config()
    }
}

/// The byte where an index file's entry `number` starts (64-byte header, 4-byte slots).
fn entry_at(number: u64) -> u64 {
    64 + u64::from(SLOTS) * 4 + number * ENTRY_BYTES
}

fn index_file(store_dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store_dir.join("index"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.pop().expect("an index file")
}

/// The consume-queue file of partition 0's first segment.
fn queue_file(store_dir: &Path, topic: &Topic) -> PathBuf {
    store_dir
        .join("queues")
        .join(topic.id().to_string())
        .join("0")
        .join(format!("{:020}", 0))
}

/// Bytes of `path` the file system has allocated, up to its length (`st_blocks` also counts
/// the blocks of ext4's extent tree once a file has more than four extents).
fn allocated(path: &Path) -> u64 {
    let metadata = std::fs::metadata(path).unwrap();
    (metadata.blocks() * 512).min(metadata.len())
}

/// Waits (bounded: only a preparer that never does it runs into the deadline) until every
/// page of `[from, to)` of `path` is in the page cache.
fn wait_until_resident(path: &Path, from: u64, to: u64) {
    let start = Instant::now();
    while !resident(path, from, to) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bytes {from}..{to} of {} were never faulted in",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Appends unkeyed messages `from..to` to `partition`, `batch` to an append.
fn append_lines(
    store: &Store,
    partition: &Partition,
    from: u64,
    to: u64,
    batch: usize,
) -> Result<(), StoreError> {
    let lines: Vec<String> = (from..to).map(|n| format!("m{n}\n")).collect();
    for lines in lines.chunks(batch) {
        store.append_batch(partition, &fixtures::keyed_messages(lines))?;
    }
    Ok(())
}

/// Appends keyed messages `from..to` to `partition`, 1,000 to a batch.
fn append_keyed(
    store: &Store,
    partition: &Partition,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    let lines: Vec<String> = (from..to)
        .map(|n| format!("k{}:m{n}\n", n % 5000))
        .collect();
    for batch in lines.chunks(1000) {
        store.append_batch(partition, &fixtures::keyed_messages(batch))?;
    }
    Ok(())
}

/// Whether every page of `[from, to)` of `path` is in the page cache (`mincore` over a
/// mapping of the file: a page never faulted in or written is not).
fn resident(path: &Path, from: u64, to: u64) -> bool {
    let file = File::open(path).unwrap();
    let page = 4096;
    let (start, end) = (from / page * page, to.div_ceil(page) * page);
    let len = (end - start) as usize;
    let mut pages = vec![0u8; len / page as usize];
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file, unmapped
    // below; nothing reads through it (mincore only asks the kernel about its pages).
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            start as libc::off_t,
        );
        assert_ne!(map, libc::MAP_FAILED, "mapping {}", path.display());
        let result = libc::mincore(map, len, pages.as_mut_ptr());
        libc::munmap(map, len);
        assert_eq!(result, 0, "mincore of {}", path.display());
    }
    pages.iter().all(|&page| page & 1 == 1)
}

#[test]
fn the_next_chunk_of_index_entries_is_faulted_in_before_the_writer_reaches_it() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = &topic.partitions()[0];
    // Past the middle of the first chunk (entry 0 is the null entry).
    let written = CHUNK_ENTRIES / 2 + 1000;
    append_keyed(&store, partition, 0, written).unwrap();
    let index = index_file(dir.path());
    let allocated = allocated(&index);
    assert!(
        allocated >= entry_at(2 * CHUNK_ENTRIES),
        "{} has {allocated} bytes allocated: not the second chunk of entries",
        index.display()
    );
    wait_until_resident(&index, entry_at(CHUNK_ENTRIES), entry_at(2 * CHUNK_ENTRIES));
    // Nothing stored there yet, nothing read wrong: every key finds its newest message.
    for key in [0, 1234, 4999] {
        let newest = written - 1 - (written - 1 - key) % 5000;
        let found = fixtures::key_matches(&store, &topic, &format!("k{key}"));
        assert_eq!(found.first().map(|m| m.1), Some(newest), "k{key}");
    }
}

#[test]
fn a_full_disk_while_allocating_ahead_fails_no_append_that_fits() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(1)).unwrap();
    let partition = &topic.partitions()[0];
    append_keyed(&store, partition, 0, 1000).unwrap();
    fail::cfg("mapped::allocate", "return(enospc@/index/)").unwrap();
    // Up to the end of the first chunk, past its middle: the room is there.
    let fits = CHUNK_ENTRIES - 1 - 1000;
    append_keyed(&store, partition, 1000, 1000 + fits).unwrap();
    // The first message that needs the next chunk is refused, and nothing of it stored.
    let refused = append_keyed(&store, partition, 1000 + fits, 1001 + fits);
    assert!(
        matches!(refused, Err(StoreError::DiskFull(_))),
        "{refused:?}"
    );
    assert_eq!(partition.end_offset(), 1000 + fits);
    fail::remove("mapped::allocate");
    append_keyed(&store, partition, 1000 + fits, 1001 + fits).unwrap();
    let found = fixtures::key_matches(&store, &topic, &format!("k{}", (1000 + fits) % 5000));
    assert_eq!(found.first().map(|m| m.1), Some(1000 + fits));
}

#[test]
fn the_next_allocation_of_a_consume_queue_is_faulted_in_before_the_writer_reaches_it() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    let partition = &topic.partitions()[0];
    append_lines(&store, partition, 0, 50_000, 1000).unwrap();
    let queue = queue_file(dir.path(), &topic);
    // Past the page of the last entry, up to what is allocated.
    let entries_end = (50_000 * 20u64).div_ceil(4096) * 4096;
    let allocated = allocated(&queue);
    assert!(
        allocated > entries_end,
        "{} has {allocated} bytes allocated: nothing past its entries' {entries_end}",
        queue.display()
    );
    wait_until_resident(&queue, entries_end, allocated);
    let message = store.read_message(partition, 49_999).unwrap();
    assert_eq!(message, b"m49999\n");
}

#[test]
fn a_full_disk_while_allocating_a_consume_queue_ahead_fails_no_append_that_fits() {
    let _scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(1)).unwrap();
    let partition = &topic.partitions()[0];
    // Batches of 100: more than wait in memory, so each reserves room in the file.
    append_lines(&store, partition, 0, 1000, 100).unwrap();
    let room = allocated(&queue_file(dir.path(), &topic)) / 20;
    fail::cfg("mapped::allocate", "return(enospc@/queues/)").unwrap();
    let mut end = 1000;
    let refused = loop {
        assert!(end <= room, "appends went past the {room} entries of room");
        match append_lines(&store, partition, end, end + 100, 100) {
            Ok(()) => end += 100,
            Err(error) => break error,
        }
    };
    assert!(matches!(refused, StoreError::DiskFull(_)), "{refused:?}");
    // Every batch that fitted in the room went in; the one that did not stored nothing.
    assert_eq!(end, room / 100 * 100, "room for {room} entries");
    assert_eq!(partition.end_offset(), end);
    fail::remove("mapped::allocate");
    append_lines(&store, partition, end, end + 100, 100).unwrap();
    assert_eq!(
        store.read_message(partition, end).unwrap(),
        format!("m{end}\n").as_bytes()
    );
}
