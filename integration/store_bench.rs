//! Storage-engine benchmarks for the goals of issues 2, 4 and 7: appends of 100-byte messages
//! in the batches the mount sends (one 128 KiB write), unkeyed and keyed, into 1 and 10,000
//! partitions; the first append to a fresh partition (p50/p99); sequential and random segment
//! reads; open after a clean and an unclean stop with 1 GiB of messages written; random key
//! lookups among 10 million keys (with p50/p99); and the anonymous memory of a process holding
//! 10 GB. Only the public `commitfs::store` API is used, nothing of the on-disk record format.
//!
//! `cargo bench --bench store_bench` runs everything (a few minutes). A criterion filter picks
//! groups and fixtures are only built for what runs: `-- append/`, `-- first_append`,
//! `-- read/`, `-- recovery/`, `-- keys` (criterion bench and the percentile loop), `-- memory`
//! (the RssAnon check).
//! Environment: `STORE_BENCH_DIR` (where data goes; default the temp dir), `STORE_BENCH_KEYS`
//! (default 10,000,000), `STORE_BENCH_MEMORY_GB` (default 10), `STORE_BENCH_MAX_OPEN_FILES`
//! (default the store's), `STORE_BENCH_PARTITIONS` (the append benches' partition counts,
//! e.g. `1,10,100,1000,10000`; default 1 and 10,000). Under `cargo test --benches`
//! (no `--bench` argument) everything runs once on tiny sizes (200 partitions where the
//! benches say 10,000), as a smoke test.

mod fixtures;

use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commitfs::store::{
    FlushPolicy, Framing, NewMessage, Partition, Store, StoreConfig, Topic, TopicSettings,
};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use fixtures::proc_status_kib;
use tempfile::TempDir;

const MESSAGE_BYTES: usize = 100;
const BATCH: usize = 1000;
const GIB: u64 = 1 << 30;
// File names inside a store directory (meta.rs, checkpoint.rs).
const CHECKPOINT_FILE: &str = "checkpoint";
const ABORT_MARKER: &str = "abort";

/// How big the fixtures are: full size under `cargo bench`, tiny under `cargo test --benches`.
struct Sizes {
    full: bool,
    /// The many-partitions case of `first_append`.
    many_partitions: u32,
    /// The partition counts of the append benches: 1 and `many_partitions` unless
    /// `STORE_BENCH_PARTITIONS` lists others (comma-separated), to see how the cost grows.
    append_partitions: Vec<u32>,
    keys: u64,
    memory_bytes: u64,
    recovery_bytes: u64,
    percentile_samples: usize,
}

impl Sizes {
    fn from_env() -> Sizes {
        let full = std::env::args().any(|a| a == "--bench");
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        let many_partitions = if full { 10_000 } else { 200 };
        let append_partitions = std::env::var("STORE_BENCH_PARTITIONS").map_or_else(
            |_| vec![1, many_partitions],
            |list| {
                list.split(',')
                    .map(|n| {
                        n.trim()
                            .parse()
                            .expect("STORE_BENCH_PARTITIONS: a list of counts")
                    })
                    .collect()
            },
        );
        Sizes {
            full,
            many_partitions,
            append_partitions,
            keys: env("STORE_BENCH_KEYS")
                .map_or(if full { 10_000_000 } else { 20_000 }, |v| v as u64),
            memory_bytes: (env("STORE_BENCH_MEMORY_GB").unwrap_or(if full { 10.0 } else { 0.01 })
                * 1e9) as u64,
            recovery_bytes: if full { GIB } else { 16 << 20 },
            percentile_samples: if full { 100_000 } else { 1_000 },
        }
    }
}

fn data_root() -> PathBuf {
    std::env::var_os("STORE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn scratch_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir_in(data_root())
        .expect("scratch dir")
}

/// The defaults (1 GiB commit-log files, async flush every 500 ms), but no periodic
/// checkpoint or retention pass in the middle of a measurement.
/// `STORE_BENCH_MAX_OPEN_FILES` sets `max_open_files` (below the partition count, appends
/// then reopen queue files the budget closed).
fn bench_config() -> StoreConfig {
    let default = StoreConfig::default();
    StoreConfig {
        flush: FlushPolicy::Async { interval_ms: 500 },
        checkpoint_interval_ms: 3_600_000,
        retention_check_interval_ms: 3_600_000,
        max_open_files: std::env::var("STORE_BENCH_MAX_OPEN_FILES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default.max_open_files),
        ..default
    }
}

fn topic_settings(partitions: u32, key_separator: Option<&[u8]>) -> TopicSettings {
    TopicSettings {
        partitions,
        framing: Framing::Raw,
        key_separator: key_separator.map(<[u8]>::to_vec),
        retention_ms: None,
        retention_bytes: None,
        owner_uid: 0,
        owner_gid: 0,
        mode: 0o755,
    }
}

/// A store in a scratch directory, closed before the directory goes.
struct Fixture {
    store: Arc<Store>,
    topic: Arc<Topic>,
    partitions: Vec<Arc<Partition>>,
    _dir: TempDir,
}

impl Fixture {
    fn new(partitions: u32, key_separator: Option<&[u8]>) -> Fixture {
        let dir = scratch_dir();
        let store = Store::open(dir.path(), bench_config()).expect("open store");
        let topic = store
            .create_topic("bench", topic_settings(partitions, key_separator))
            .expect("create topic");
        let partitions = topic.partitions();
        Fixture {
            store,
            topic,
            partitions,
            _dir: dir,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.store.close().expect("close store");
    }
}

/// `count` distinct-looking 100-byte payloads, back to back.
fn payload_block(count: usize) -> Vec<u8> {
    (0..count * MESSAGE_BYTES)
        .map(|i| b'a' + (i % 23) as u8)
        .collect()
}

fn unkeyed_batch(block: &[u8]) -> Vec<NewMessage<'_>> {
    block
        .chunks_exact(MESSAGE_BYTES)
        .map(|payload| NewMessage {
            payload,
            key_len: None,
        })
        .collect()
}

/// xorshift64*: enough randomness for positions and keys, no dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

// ---------------------------------------------------------------------------------------------
// Appends

/// 100-byte lines in one `write(2)` the kernel hands the mount: `cat` writes 128 KiB at a
/// time, which holds 1,310 whole lines.
const WRITE_BATCH: usize = (128 << 10) / MESSAGE_BYTES;
/// Distinct keys of the keyed appends (`kNNNNN:`), as in integration/bench.sh.
const DISTINCT_KEYS: usize = 20_000;

/// A store whose partitions already hold a message each: measurements see steady-state
/// appends, not the one-off creation of each partition's first consume-queue file (that has
/// its own check, `first_append`).
fn append_fixture(partitions: u32, key_separator: Option<&[u8]>) -> Fixture {
    let fixture = Fixture::new(partitions, key_separator);
    let payload = payload_block(1);
    let started = Instant::now();
    for partition in &fixture.partitions {
        fixture
            .store
            .append(partition, &payload, None)
            .expect("append");
    }
    println!(
        "append: first message to each of {partitions} partitions took {:.1?} ({:.1?} per partition)",
        started.elapsed(),
        started.elapsed() / partitions
    );
    fixture
}

/// `count` keyed 100-byte lines: `kNNNNN:` (key `n % DISTINCT_KEYS`) then filler.
fn keyed_block(count: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(count * MESSAGE_BYTES);
    for n in 0..count {
        let start = block.len();
        block.extend_from_slice(format!("k{:05}:", n % DISTINCT_KEYS).as_bytes());
        block.resize(start + MESSAGE_BYTES, b'a' + (n % 23) as u8);
    }
    block
}

fn keyed_messages(block: &[u8]) -> Vec<NewMessage<'_>> {
    block
        .chunks_exact(MESSAGE_BYTES)
        .map(|payload| NewMessage {
            payload,
            key_len: Some(payload.iter().position(|&b| b == b':').expect("separator")),
        })
        .collect()
}

/// What the mount does with one write to `<topic>/append`: each message to the partition its
/// key picks (keyless ones in turn), all of them in one append from the write's buffer.
fn append_by_key(store: &Store, topic: &Topic, messages: &[NewMessage<'_>], buffer: &[u8]) {
    store
        .append_by_key(topic, messages, buffer)
        .expect("append");
}

/// Page faults the calling thread took (minor and major) so far.
fn thread_page_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid rusage to fill; RUSAGE_THREAD exists on Linux.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    usage.ru_minflt + usage.ru_majflt
}

/// Prints the page faults the appending thread takes per 1,000 messages over `rounds` calls
/// of `append` (of `WRITE_BATCH` messages each): a figure a busy machine does not blur, and
/// each fault stalls the writer (to zero, map, or allocate a page).
fn print_writer_faults(id: &str, rounds: usize, mut append: impl FnMut()) {
    let before = thread_page_faults();
    for _ in 0..rounds {
        append();
    }
    let faults = thread_page_faults() - before;
    println!(
        "append/{id}: {:.1} page faults per 1,000 messages on the writer's thread",
        faults as f64 * 1000.0 / (rounds * WRITE_BATCH) as f64
    );
}

/// Batches of `WRITE_BATCH` 100-byte messages, `messages/s` in criterion's `elem/s`:
/// - `partition_unkeyed`: each batch into one partition, the partitions in turn (a `cat`
///   into a partition's `active` file, one writer after another);
/// - `append_unkeyed`, `append_keyed`: each batch as one write to the topic's `append` file
///   (keyless messages spread one by one, keyed ones grouped by key over 20,000 keys).
fn append_benches(c: &mut Criterion, sizes: &Sizes) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(WRITE_BATCH as u64));
    let unkeyed_block = payload_block(WRITE_BATCH);
    let unkeyed = unkeyed_batch(&unkeyed_block);
    // Every window of WRITE_BATCH messages starting below DISTINCT_KEYS.
    let keyed_block = keyed_block(DISTINCT_KEYS + WRITE_BATCH);
    let keyed = keyed_messages(&keyed_block);
    for &partitions in &sizes.append_partitions {
        // Enough appends for each partition's queue to fill a few pages of entries.
        let fault_rounds = (800 * partitions as usize).div_ceil(WRITE_BATCH).max(200);
        let mut fixture = None;
        let name = format!("partition_unkeyed_{WRITE_BATCH}");
        let id = BenchmarkId::new(&name, partitions);
        let mut next = 0;
        let mut append_in_turn = |f: &Fixture| {
            let outcome = f
                .store
                .append_batch_from(&f.partitions[next], &unkeyed, &unkeyed_block)
                .expect("append batch");
            next = (next + 1) % f.partitions.len();
            outcome
        };
        group.bench_function(id, |b| {
            let f: &Fixture = fixture.get_or_insert_with(|| append_fixture(partitions, None));
            b.iter(|| append_in_turn(f));
        });
        if let Some(f) = &fixture {
            print_writer_faults(&format!("{name}/{partitions}"), fault_rounds, || {
                append_in_turn(f);
            });
        }
        drop(fixture);

        let mut fixture = None;
        let name = format!("append_unkeyed_{WRITE_BATCH}");
        let id = BenchmarkId::new(&name, partitions);
        group.bench_function(id, |b| {
            let f: &Fixture = fixture.get_or_insert_with(|| append_fixture(partitions, None));
            b.iter(|| append_by_key(&f.store, &f.topic, &unkeyed, &unkeyed_block));
        });
        if let Some(f) = &fixture {
            print_writer_faults(&format!("{name}/{partitions}"), fault_rounds, || {
                append_by_key(&f.store, &f.topic, &unkeyed, &unkeyed_block)
            });
        }
        drop(fixture);

        let mut fixture = None;
        let name = format!("append_keyed_{WRITE_BATCH}");
        let id = BenchmarkId::new(&name, partitions);
        let mut start = 0;
        let mut append_keyed = |f: &Fixture| {
            let messages = &keyed[start..start + WRITE_BATCH];
            append_by_key(&f.store, &f.topic, messages, &keyed_block);
            start = (start + WRITE_BATCH) % DISTINCT_KEYS;
        };
        group.bench_function(id, |b| {
            let f: &Fixture = fixture.get_or_insert_with(|| append_fixture(partitions, Some(b":")));
            b.iter(|| append_keyed(f));
        });
        if let Some(f) = &fixture {
            print_writer_faults(&format!("{name}/{partitions}"), fault_rounds, || {
                append_keyed(f)
            });
        }
        drop(fixture);
    }
    group.finish();
}

/// The first append to each of `total` fresh partitions, timed one by one: first the half of
/// them a new topic has, then the other half, added to it with `update_topic` (`setfattr -n
/// user.partitions`). Every partition keeps its queue file open, so `total` stays within the
/// usual limit of open files. Criterion reports means; the goal (≤ 50 µs) is about p99.
fn first_append_check(total: u32) {
    let partitions = total / 2;
    let dir = scratch_dir();
    let store = Store::open(dir.path(), bench_config()).expect("open store");
    let payload = payload_block(1);
    let first_appends = |fresh: &[Arc<Partition>]| -> Vec<Duration> {
        fresh
            .iter()
            .map(|partition| {
                let started = Instant::now();
                store.append(partition, &payload, None).expect("append");
                started.elapsed()
            })
            .collect()
    };

    let started = Instant::now();
    let topic = store
        .create_topic("fresh", topic_settings(partitions, None))
        .expect("create topic");
    println!(
        "first_append: creating a topic of {partitions} partitions took {:.1?}",
        started.elapsed()
    );
    report_percentiles(
        &format!("first_append: first message into each partition of a new topic of {partitions}"),
        "appends",
        first_appends(&topic.partitions()),
    );

    let started = Instant::now();
    store
        .update_topic(&topic, topic_settings(total, None))
        .expect("grow partitions");
    println!(
        "first_append: growing the topic from {partitions} to {total} partitions took {:.1?}",
        started.elapsed()
    );
    report_percentiles(
        &format!(
            "first_append: first message into each of the {} partitions added to the topic",
            total - partitions
        ),
        "appends",
        first_appends(&topic.partitions()[partitions as usize..]),
    );
    store.close().expect("close store");
}

// ---------------------------------------------------------------------------------------------
// Segment reads

const SEQUENTIAL_CHUNK: usize = 128 << 10;
const RANDOM_READ: usize = 4 << 10;

/// Partition 0 of `partitions` has a sealed first segment (the default 300,000 messages). The
/// others get the same messages in turn, so partition 0's records are interleaved with theirs
/// in the commit log: with 10 partitions each 100-byte message lies on its own page.
fn sealed_segment_fixture(partitions: u32) -> (Fixture, u64) {
    let fixture = Fixture::new(partitions, None);
    let segment_messages = u64::from(fixture.store.config().segment_messages);
    let block = payload_block(1);
    for _ in 0..=segment_messages {
        for partition in &fixture.partitions {
            fixture
                .store
                .append(partition, &block, None)
                .expect("append");
        }
    }
    let info = fixture.partitions[0]
        .segment(0)
        .expect("readable")
        .expect("segment 0");
    assert!(info.sealed && info.messages == segment_messages);
    let bytes = info.bytes;
    (fixture, bytes)
}

fn read_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for partitions in [1u32, 10] {
        let mut fixture = None;
        let label = if partitions == 1 {
            "1_partition".to_owned()
        } else {
            format!("{partitions}_partitions_interleaved")
        };
        let segment_bytes = 300_000 * MESSAGE_BYTES as u64;
        group.throughput(Throughput::Bytes(segment_bytes));
        group.bench_function(
            BenchmarkId::new("sequential_128KiB_whole_segment", &label),
            |b| {
                let (f, bytes) = fixture.get_or_insert_with(|| sealed_segment_fixture(partitions));
                assert_eq!(*bytes, segment_bytes);
                let reader = f
                    .store
                    .open_segment(&f.partitions[0], 0)
                    .expect("open segment");
                let mut buf = vec![0u8; SEQUENTIAL_CHUNK];
                b.iter(|| {
                    let mut position = 0;
                    loop {
                        let n = reader.read_at(position, &mut buf).expect("read");
                        if n == 0 {
                            break;
                        }
                        position += n as u64;
                    }
                    assert_eq!(position, segment_bytes);
                });
            },
        );

        group.throughput(Throughput::Bytes(RANDOM_READ as u64));
        group.bench_function(BenchmarkId::new("random_4KiB", &label), |b| {
            let (f, bytes) = fixture.get_or_insert_with(|| sealed_segment_fixture(partitions));
            let reader = f
                .store
                .open_segment(&f.partitions[0], 0)
                .expect("open segment");
            let mut buf = vec![0u8; RANDOM_READ];
            let mut random = Random(0x9e37_79b9_7f4a_7c15);
            let span = *bytes - RANDOM_READ as u64;
            b.iter(|| {
                let n = reader.read_at(random.below(span), &mut buf).expect("read");
                assert_eq!(n, RANDOM_READ);
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// A store left by `halt_without_cleanup` with `message_bytes` of 100-byte messages written
/// (100 partitions; the commit log holds them plus whatever the record format adds), and its
/// only checkpoint, the empty one written when it was created: an unclean open scans all of it.
struct RecoveryFixture {
    dir: TempDir,
    checkpoint: Vec<u8>,
}

impl RecoveryFixture {
    fn new(message_bytes: u64) -> RecoveryFixture {
        let dir = scratch_dir();
        let store = Store::open(dir.path(), bench_config()).expect("open store");
        let checkpoint = std::fs::read(dir.path().join(CHECKPOINT_FILE)).expect("read checkpoint");
        let topic = store
            .create_topic("bench", topic_settings(100, None))
            .expect("create topic");
        let partitions = topic.partitions();
        let total = message_bytes / MESSAGE_BYTES as u64;
        let block = payload_block(BATCH);
        let mut written = 0;
        while written < total {
            let count = (total - written).min(BATCH as u64) as usize;
            let partition = &partitions[(written / BATCH as u64) as usize % partitions.len()];
            store
                .append_batch(partition, &unkeyed_batch(&block[..count * MESSAGE_BYTES]))
                .expect("append");
            written += count as u64;
        }
        store.halt_without_cleanup();
        RecoveryFixture { dir, checkpoint }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Back to the state right after the kill: the old checkpoint and the abort marker.
    fn make_unclean(&self) {
        std::fs::write(self.path().join(CHECKPOINT_FILE), &self.checkpoint)
            .expect("restore checkpoint");
        std::fs::write(self.path().join(ABORT_MARKER), b"").expect("abort marker");
    }

    fn make_clean(&self) {
        if self.path().join(ABORT_MARKER).exists() {
            Store::open(self.path(), bench_config())
                .expect("open")
                .close()
                .expect("close");
        }
    }

    /// Writes the commit-log files out and drops them from the page cache, so that the next
    /// open reads them from the disk.
    fn evict_log_from_page_cache(&self) {
        for entry in std::fs::read_dir(self.path().join("commitlog")).expect("list commit log") {
            let file = std::fs::File::open(entry.expect("entry").path()).expect("open log file");
            file.sync_all().expect("sync log file");
            // SAFETY: plain syscall on an fd we own.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(rc, 0, "posix_fadvise");
        }
    }
}

/// What a scenario does to the store directory before the timed open.
type BeforeOpen = fn(&RecoveryFixture);

fn recovery_benches(c: &mut Criterion, sizes: &Sizes) {
    let mut group = c.benchmark_group("recovery");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8));
    let mut fixture: Option<RecoveryFixture> = None;
    // Bytes of messages recovered per second, whatever the record format adds to them.
    group.throughput(Throughput::Bytes(
        sizes.recovery_bytes / MESSAGE_BYTES as u64 * MESSAGE_BYTES as u64,
    ));

    let scenarios: [(&str, BeforeOpen); 3] = [
        (
            "unclean_open_1GiB_page_cache",
            RecoveryFixture::make_unclean,
        ),
        ("unclean_open_1GiB_cold_cache", |f| {
            f.make_unclean();
            f.evict_log_from_page_cache();
        }),
        ("clean_open_1GiB", RecoveryFixture::make_clean),
    ];
    for (name, before_open) in scenarios {
        group.bench_function(name, |b| {
            let f: &RecoveryFixture =
                fixture.get_or_insert_with(|| RecoveryFixture::new(sizes.recovery_bytes));
            let unclean = name.starts_with("unclean");
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    before_open(f);
                    let started = Instant::now();
                    let store = Store::open(f.path(), bench_config()).expect("open");
                    took += started.elapsed();
                    if unclean {
                        store.halt_without_cleanup();
                    } else {
                        store.close().expect("close");
                    }
                }
                took
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Key lookups

/// `count` messages with distinct keys `key-<n>` (`<key>:<padding>`, 100 bytes), spread over
/// the partitions in turn, `batch` at a time.
struct KeysFixture {
    fixture: Fixture,
    count: u64,
    batch: u64,
}

fn key_of(n: u64) -> Vec<u8> {
    format!("key-{n}").into_bytes()
}

impl KeysFixture {
    fn new(count: u64, partitions: u32, batch: u64) -> KeysFixture {
        let started = Instant::now();
        let fixture = Fixture::new(partitions, Some(b":"));
        let mut block = Vec::with_capacity(BATCH * MESSAGE_BYTES);
        let mut n = 0;
        while n < count {
            let size = (count - n).min(batch);
            block.clear();
            for k in n..n + size {
                let start = block.len();
                block.extend_from_slice(&key_of(k));
                block.push(b':');
                block.resize(start + MESSAGE_BYTES, b'v');
            }
            let key_lens: Vec<usize> = block
                .chunks_exact(MESSAGE_BYTES)
                .map(|m| m.iter().position(|&b| b == b':').expect("separator"))
                .collect();
            let messages: Vec<NewMessage<'_>> = block
                .chunks_exact(MESSAGE_BYTES)
                .zip(&key_lens)
                .map(|(payload, &key_len)| NewMessage {
                    payload,
                    key_len: Some(key_len),
                })
                .collect();
            let partition = &fixture.partitions[(n / batch) as usize % fixture.partitions.len()];
            fixture
                .store
                .append_batch(partition, &messages)
                .expect("append keyed batch");
            n += size;
        }
        println!(
            "keys: wrote {count} keyed 100-byte messages to {partitions} partitions in {:.1?} ({:.2} M messages/s)",
            started.elapsed(),
            count as f64 / started.elapsed().as_secs_f64() / 1e6
        );
        KeysFixture {
            fixture,
            count,
            batch,
        }
    }

    /// The newest message with this key, through the index.
    fn newest(&self, key: &[u8]) -> Option<(u32, u64)> {
        let mut found = None;
        self.fixture
            .store
            .for_each_key_match(&self.fixture.topic, None, key, |m| {
                found = Some((m.partition, m.offset));
                ControlFlow::Break(())
            })
            .expect("key lookup");
        found
    }

    fn expected(&self, n: u64) -> (u32, u64) {
        let batch = n / self.batch;
        let partitions = self.fixture.partitions.len() as u64;
        let offset = batch / partitions * self.batch + n % self.batch;
        ((batch % partitions) as u32, offset)
    }
}

fn random_keys(count: u64, samples: usize, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut random = Random(seed);
    (0..samples)
        .map(|_| {
            let n = random.below(count);
            (n, key_of(n))
        })
        .collect()
}

fn key_benches(c: &mut Criterion, sizes: &Sizes) {
    let mut fixture: Option<KeysFixture> = None;
    let mut group = c.benchmark_group("keys");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("newest_match_random_key", sizes.keys),
        |b| {
            let f: &KeysFixture =
                fixture.get_or_insert_with(|| KeysFixture::new(sizes.keys, 8, BATCH as u64));
            let keys = random_keys(f.count, 1 << 16, 7);
            let mut next = 0;
            b.iter(|| {
                let found = f.newest(&keys[next].1);
                next = (next + 1) % keys.len();
                found
            });
        },
    );
    group.finish();

    if selected("keys/latency_percentiles") {
        let f = fixture.get_or_insert_with(|| KeysFixture::new(sizes.keys, 8, BATCH as u64));
        key_latency_percentiles(f, sizes.percentile_samples);
    }
    drop(fixture);
    // A lookup's cost must not grow with the topic's partition count.
    if selected("keys/latency_percentiles_10000_partitions") {
        let f = KeysFixture::new(sizes.keys / 10, 10_000, 100);
        key_latency_percentiles(&f, sizes.percentile_samples);
    }
}

/// Criterion reports means; the goal is a p99. Times each lookup on its own.
fn key_latency_percentiles(f: &KeysFixture, samples: usize) {
    let hits = random_keys(f.count, samples, 11);
    let mut latencies = Vec::with_capacity(samples);
    for (n, key) in &hits {
        let started = Instant::now();
        let found = f.newest(key);
        latencies.push(started.elapsed());
        assert_eq!(found, Some(f.expected(*n)), "key-{n}");
    }
    let topic = format!(
        "{} keys, {} partitions",
        f.count,
        f.fixture.partitions.len()
    );
    report_percentiles(
        &format!("keys/latency_percentiles: newest match of a random key ({topic})"),
        "lookups",
        latencies,
    );

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let key = format!("absent-{i}").into_bytes();
        let started = Instant::now();
        let found = f.newest(&key);
        latencies.push(started.elapsed());
        assert_eq!(found, None);
    }
    report_percentiles(
        &format!("keys/latency_percentiles: absent key ({topic})"),
        "lookups",
        latencies,
    );
}

fn report_percentiles(what: &str, samples: &str, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: {} {samples}, p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}",
        latencies.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Fields of `/proc/self/status`, in KiB.
fn memory_line(when: &str) -> u64 {
    let anon = proc_status_kib("RssAnon");
    println!(
        "memory/rss_anon: {when}: RssAnon {:.1} MiB, RssFile {:.1} MiB, VmPTE {:.1} MiB",
        anon as f64 / 1024.0,
        proc_status_kib("RssFile") as f64 / 1024.0,
        proc_status_kib("VmPTE") as f64 / 1024.0
    );
    anon
}

/// Writes `target` payload bytes of `message_bytes`-byte messages over `partitions`
/// partitions, in batches, with RssAnon printed along the way and at the end while the
/// store is held; then after a clean reopen and a read of every partition's first segment.
fn memory_check(target: u64, message_bytes: usize, partitions: u32) {
    const LIMIT_KIB: u64 = 64 * 1024;
    let scenario = format!(
        "{:.1} GB of {message_bytes}-byte messages over {partitions} partitions",
        target as f64 / 1e9
    );
    println!("memory/rss_anon: {scenario}");
    memory_line("before opening the store");
    let dir = scratch_dir();
    let config = bench_config();
    let store = Store::open(dir.path(), config.clone()).expect("open store");
    let topic = store
        .create_topic("bench", topic_settings(partitions, None))
        .expect("create topic");
    let handles = topic.partitions();
    memory_line("store open, topic created");
    let per_batch = (BATCH * MESSAGE_BYTES / message_bytes).max(1);
    let block: Vec<u8> = (0..per_batch * message_bytes)
        .map(|i| b'a' + (i % 23) as u8)
        .collect();
    let messages: Vec<NewMessage<'_>> = block
        .chunks_exact(message_bytes)
        .map(|payload| NewMessage {
            payload,
            key_len: None,
        })
        .collect();
    let started = Instant::now();
    let (mut written, mut batches, mut next_report) = (0u64, 0usize, GIB);
    while written < target {
        store
            .append_batch(&handles[batches % handles.len()], &messages)
            .expect("append batch");
        written += block.len() as u64;
        batches += 1;
        if written >= next_report {
            memory_line(&format!("{:.1} GB written", written as f64 / 1e9));
            next_report += GIB;
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "memory/rss_anon: wrote {:.2} GB ({} messages) in {took:.1} s: {:.0} MB/s, {:.2} M messages/s; store on disk {:.2} GB",
        written as f64 / 1e9,
        written / message_bytes as u64,
        written as f64 / took / 1e6,
        (written / message_bytes as u64) as f64 / took / 1e6,
        store.disk_usage() as f64 / 1e9
    );
    let held = memory_line("holding the store after writing");
    drop(handles);
    drop(topic);
    store.close().expect("close");
    drop(store);
    let store = Store::open(dir.path(), config).expect("reopen store");
    let topic = store.topic("bench").expect("topic");
    let mut buf = vec![0u8; SEQUENTIAL_CHUNK];
    for partition in topic.partitions() {
        let reader = store
            .open_segment(&partition, partition.start_offset())
            .expect("open segment");
        let mut position = 0;
        while let Ok(n @ 1..) = reader.read_at(position, &mut buf) {
            position += n as u64;
        }
    }
    let reopened = memory_line("after a clean reopen and reading each partition's first segment");
    store.close().expect("close");
    let verdict = if held.max(reopened) < LIMIT_KIB {
        "met"
    } else {
        "MISSED"
    };
    println!("memory/rss_anon: {scenario}: goal RssAnon < 64 MiB {verdict}");
}

// ---------------------------------------------------------------------------------------------

/// The criterion filter (first free argument), which also selects the checks that are not
/// criterion benchmarks.
fn filter_arg() -> Option<String> {
    const TAKES_VALUE: &[&str] = &[
        "-c",
        "--color",
        "--colour",
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn selected(name: &str) -> bool {
    !std::env::args().any(|a| a == "--list")
        && filter_arg().is_none_or(|filter| name.contains(&filter))
}

fn main() {
    let sizes = Sizes::from_env();
    let mut criterion = Criterion::default().configure_from_args();
    // First, while the process has allocated nothing else.
    if selected("memory/rss_anon") {
        memory_check(sizes.memory_bytes, MESSAGE_BYTES, 100);
        if sizes.full {
            memory_check(GIB, MESSAGE_BYTES, 10_000);
        }
    }
    if selected("first_append") {
        first_append_check(sizes.many_partitions);
    }
    append_benches(&mut criterion, &sizes);
    read_benches(&mut criterion);
    recovery_benches(&mut criterion, &sizes);
    key_benches(&mut criterion, &sizes);
    criterion.final_summary();
}
