//! A Kafka-protocol broker for the mirror's tests: Tansu with its in-memory store on a free
//! 127.0.0.1 port, started per test and killed when its guard drops; a `commitfs mirror`
//! process; and an rdkafka consumer that reads back what landed.
//!
//! Tansu comes from `.ci/run` (`cargo install tansu --features dynostore` into the cache
//! directory, `$COMMITFS_CI_CACHE`, default `/var/cache/commitfs-ci`), or `$COMMITFS_TANSU`
//! names the binary. Without it the tests fail loudly, unless `COMMITFS_SKIP_KAFKA_TESTS=1`
//! says to skip them.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::common::{self, Background, Bounded, Mount, COMMITFS};

/// The Tansu binary the tests start.
pub fn tansu_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("COMMITFS_TANSU") {
        return binary.into();
    }
    let cache =
        std::env::var_os("COMMITFS_CI_CACHE").unwrap_or_else(|| "/var/cache/commitfs-ci".into());
    Path::new(&cache).join("tansu/bin/tansu")
}

/// Whether Kafka tests can run here (they also need a mount); fails loudly when they cannot
/// and nobody opted out with `COMMITFS_SKIP_KAFKA_TESTS=1`.
pub fn kafka_available() -> bool {
    let binary = tansu_binary();
    if std::env::var("COMMITFS_SKIP_KAFKA_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("COMMITFS_SKIP_KAFKA_TESTS=1: Kafka test not run");
        return false;
    }
    assert!(
        binary.is_file(),
        "the mirror's tests need a Kafka-protocol broker: {} is missing (.ci/run installs \
         Tansu there; COMMITFS_TANSU names another binary), or set COMMITFS_SKIP_KAFKA_TESTS=1 \
         to skip them explicitly",
        binary.display()
    );
    common::fuse_available()
}

/// How long a broker, a mirror or a read-back may run at most: a hang fails the test.
const PROCESS_LIMIT: Duration = Duration::from_secs(1800);

/// How long one read-back of Kafka may wait for its messages.
pub const READ_DEADLINE: Duration = Duration::from_secs(180);

/// How long the mirror may take to catch up before a test calls it a hang.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Tansu with its in-memory store on a port of its own; killed when dropped.
pub struct Broker {
    process: Background,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// Tansu on `port`, which nothing listens on.
    pub fn start_on(port: u16) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("commitfs-tansu-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let command = format!(
            "exec {} broker --listener-url {url} --advertised-listener-url {url} \
             --storage-engine memory://tansu/ >{} 2>&1",
            tansu_binary().display(),
            log.display()
        );
        let process = Background::spawn(Bounded::shell(&command, PROCESS_LIMIT));
        common::wait_until(Duration::from_secs(60), "Tansu listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker {
            process,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGSTOP): connections stay open and nothing is answered, as with a
    /// hung or unreachable broker; [`Broker::resume`] brings it back with its data.
    pub fn pause(&self) {
        signal_group(self.process.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal_group(self.process.pid(), libc::SIGCONT);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Makes `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()
            .unwrap();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let results =
            futures_executor::block_on(admin.create_topics([&new], &AdminOptions::new())).unwrap();
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("creating {name}: {code}"));
        }
    }

    /// How many partitions `topic` has (0 when it does not exist).
    pub fn partition_count(&self, topic: &str) -> usize {
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(20))
            .unwrap();
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len())
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("group.id", "commitfs-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap()
    }

    /// Every message of each of `topic`'s first `partitions` partitions, from the start to
    /// the end.
    pub fn read_all(&self, topic: &str, partitions: u32) -> Vec<Vec<Record>> {
        self.try_read_all(topic, partitions)
            .unwrap_or_else(|error| panic!("reading {topic}: {error}"))
    }

    fn try_read_all(&self, topic: &str, partitions: u32) -> Result<Vec<Vec<Record>>, KafkaError> {
        let consumer = self.consumer();
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = vec![Vec::new(); partitions as usize];
        let mut open: Vec<bool> = vec![true; partitions as usize];
        let started = Instant::now();
        while open.iter().any(|o| *o) {
            assert!(
                started.elapsed() < READ_DEADLINE,
                "reading {topic} back from Kafka took over {READ_DEADLINE:?}"
            );
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => open[partition as usize] = false,
                Some(Err(error)) => return Err(error),
                Some(Ok(message)) => {
                    records[message.partition() as usize].push(Record::of(&message))
                }
            }
        }
        Ok(records)
    }

    /// Waits until each partition `p` of `topic` holds a message whose `commitfs.offset`
    /// is `ends[p] - 1` (every message shipped), then reads everything back.
    pub fn read_when_shipped(&self, topic: &str, ends: &[u64]) -> Vec<Vec<Record>> {
        let started = Instant::now();
        loop {
            // The topic or its new partitions may not be there yet.
            let records = self.try_read_all(topic, ends.len() as u32);
            let shipped = records.as_ref().is_ok_and(|records| {
                records.iter().zip(ends).all(|(records, end)| {
                    *end == 0 || records.iter().any(|r| r.source_offset == Some(end - 1))
                })
            });
            if shipped {
                return records.unwrap();
            }
            assert!(
                started.elapsed() < READ_DEADLINE,
                "{topic}: Kafka did not get every message within {READ_DEADLINE:?}; it has {:?} \
                 of {ends:?}",
                records.map(|records| records.iter().map(Vec::len).collect::<Vec<_>>())
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn signal_group(pid: u32, signal: i32) {
    // SAFETY: plain syscall on the process group of our own unreaped child.
    assert_eq!(unsafe { libc::killpg(pid as i32, signal) }, 0, "killpg");
}

/// One message as Kafka holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp: Option<i64>,
    /// The `commitfs.offset` header, parsed.
    pub source_offset: Option<u64>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Record {
    fn of(message: &impl Message) -> Record {
        let mut headers = BTreeMap::new();
        if let Some(list) = message.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    header.value.unwrap_or_default().to_vec(),
                );
            }
        }
        let source_offset = headers
            .get("commitfs.offset")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        Record {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            timestamp: message.timestamp().to_millis(),
            source_offset,
            headers,
        }
    }
}

/// A running `commitfs mirror`, its stderr in a file; dropping it is a `kill -9`.
pub struct MirrorProcess {
    process: Option<Background>,
    pub log: PathBuf,
}

impl MirrorProcess {
    /// `commitfs mirror --config CONFIG MNT` for mount `m` (its config has the [mirror]
    /// section).
    pub fn start(m: &Mount) -> MirrorProcess {
        let log = m.work.join("mirror.log");
        let command = format!(
            "exec {COMMITFS} mirror --config {} {} 2>>{}",
            m.config_path().display(),
            m.mnt.display(),
            log.display()
        );
        let process = Background::spawn(Bounded::shell(&command, PROCESS_LIMIT));
        MirrorProcess {
            process: Some(process),
            log,
        }
    }

    /// SIGKILL, at whatever point it is.
    pub fn kill9(&mut self) {
        self.process.take();
    }

    /// Its exit status if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut()?.try_wait()
    }

    /// Sends `signal` to `commitfs mirror` itself (not to the `timeout` around it, which
    /// would pass it on a second time) and waits for it to exit; panics, with its log, if it
    /// is still running after `deadline`.
    pub fn stop_with(&mut self, signal: i32, deadline: Duration) -> std::process::ExitStatus {
        let timeout_pid = self.process.as_ref().expect("the mirror is running").pid();
        let children =
            std::fs::read_to_string(format!("/proc/{timeout_pid}/task/{timeout_pid}/children"))
                .unwrap();
        let mirror_pid: i32 = children.trim().parse().unwrap_or_else(|_| {
            panic!("the mirror is not the one child of timeout {timeout_pid}: {children:?}")
        });
        // SAFETY: plain syscall on the child of our own unreaped `timeout` process.
        assert_eq!(unsafe { libc::kill(mirror_pid, signal) }, 0, "kill");
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                self.process = None;
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "the mirror still runs {deadline:?} after signal {signal}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log has a line containing `text`.
    pub fn wait_for_log(&self, text: &str, deadline: Duration) {
        self.wait_for_log_count(text, 1, deadline);
    }

    /// Waits until its log (of every run so far) says `text` `count` times.
    pub fn wait_for_log_count(&self, text: &str, count: usize, deadline: Duration) {
        let started = Instant::now();
        while self.log().matches(text).count() < count {
            assert!(
                started.elapsed() < deadline,
                "the mirror's log never said {text:?} within {deadline:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A broker, and a mount of `config` with a [mirror] section shipping to it; `None` only
/// under the explicit opt-out (`COMMITFS_SKIP_KAFKA_TESTS=1`).
pub fn broker_and_mount(config: common::Config) -> Option<(Broker, Mount)> {
    if !kafka_available() {
        return None;
    }
    let broker = Broker::start();
    let mount = Mount::new(mirror_config(config, &broker));
    Some((broker, mount))
}

/// The mount's configuration with a [mirror] section shipping to `broker`.
pub fn mirror_config(config: common::Config, broker: &Broker) -> common::Config {
    mirror_config_for(config, broker.port)
}

/// The mount's configuration with a [mirror] section shipping to 127.0.0.1:`port`.
pub fn mirror_config_for(config: common::Config, port: u16) -> common::Config {
    config
        .set("mirror.brokers", &format!("\"127.0.0.1:{port}\""))
        .set("log_level", "\"info\"")
}

pub fn end_offsets(m: &Mount, topic: &str, partitions: u32) -> Vec<u64> {
    (0..partitions)
        .map(|p| common::xattr_u64(&m.path(&format!("{topic}/{p}")), "user.end_offset"))
        .collect()
}

/// `user.time.<T>` on a partition: the first offset at or after T, `None` past the newest.
pub fn first_offset_at(dir: &Path, time: i64) -> Option<u64> {
    common::xattr_get(dir, &format!("user.time.{time}"))
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// Kafka holds exactly the partition's messages, in order, once each: the line without its
/// `\n`, the key before `separator`, the time the mount stamped (message N has time T when T
/// is the greatest time whose first offset is at most N), and the `commitfs.offset` header.
pub fn assert_mirrored(m: &Mount, topic: &str, records: &[Vec<Record>], separator: Option<u8>) {
    for (partition, records) in records.iter().enumerate() {
        let dir = m.path(&format!("{topic}/{partition}"));
        let lines = common::partition_lines(&dir);
        let offsets: Vec<Option<u64>> = records.iter().map(|r| r.source_offset).collect();
        let expected: Vec<Option<u64>> = (0..lines.len() as u64).map(Some).collect();
        assert!(
            offsets == expected,
            "{topic}/{partition}: Kafka holds offsets {} (first mismatch at {:?}); expected \
             0..{} once each",
            offsets.len(),
            offsets.iter().zip(&expected).position(|(a, b)| a != b),
            lines.len()
        );
        for (offset, (record, line)) in records.iter().zip(&lines).enumerate() {
            let what = format!("{topic}/{partition} offset {offset}");
            assert_eq!(record.payload, line.as_bytes(), "{what}: payload");
            let key = separator.and_then(|s| line.split_once(s as char).map(|(k, _)| k));
            assert_eq!(record.key.as_deref(), key.map(str::as_bytes), "{what}: key");
            let time = record
                .timestamp
                .unwrap_or_else(|| panic!("{what}: no timestamp"));
            assert!(
                first_offset_at(&dir, time).is_some_and(|first| first <= offset as u64)
                    && first_offset_at(&dir, time + 1).is_none_or(|first| first > offset as u64),
                "{what}: timestamp {time} is not the one the mount stamped"
            );
        }
    }
}

/// Waits until the group's consumer position on each partition is its end offset.
pub fn wait_for_positions(m: &Mount, topic: &str, group: &str, ends: &[u64]) {
    for (partition, end) in ends.iter().enumerate() {
        let dir = m.path(&format!("{topic}/{partition}"));
        common::wait_until(
            CATCH_UP_DEADLINE,
            &format!("{topic}/{partition} position {end}"),
            || {
                common::xattr_get(&dir, &format!("user.consumer.{group}"))
                    .ok()
                    .flatten()
                    .is_some_and(|v| v == end.to_string().as_bytes())
            },
        );
    }
}

/// What [`kill9_run`] found in Kafka.
#[derive(Debug)]
pub struct Kill9Outcome {
    /// How many times the mirror started again after a SIGKILL.
    pub restarts: usize,
    /// Source messages Kafka does not hold, and copies it holds beyond one per message.
    pub lost: usize,
    pub duplicated: usize,
}

/// How long a long run (a million messages) may take before it is called a hang.
const LONG_RUN_DEADLINE: Duration = Duration::from_secs(900);

/// Appends `messages` lines in 100 rounds to a new topic `kill9` of mount `m` while the
/// mirror is killed with SIGKILL `kills` times at random moments mid-stream (each once every
/// partition ships again), waits until the last mirror's positions reach the end, then counts
/// how often Kafka holds each source offset.
pub fn kill9_run(broker: &Broker, m: &Mount, messages: u64, kills: usize) -> Kill9Outcome {
    const ROUNDS: u64 = 100;
    m.sh_ok("mkdir kill9");
    let partitions = common::xattr_u64(&m.path("kill9"), "user.partitions") as usize;
    let per_round = messages / ROUNDS;
    let mut writer = Background::spawn(m.sh_command_within(
        &format!(
            "for round in $(seq 1 {ROUNDS}); do \
               seq -f \"round $round message %g\" 1 {per_round} >> kill9/append || exit 1; \
               sleep 0.05; \
             done"
        ),
        LONG_RUN_DEADLINE,
    ));
    let mut mirror = MirrorProcess::start(m);
    let mut rng = common::Rng::new(5);
    for start in 1..=kills {
        mirror.wait_for_log_count(
            "shipping from offset",
            partitions * start,
            LONG_RUN_DEADLINE,
        );
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        mirror.kill9();
        mirror = MirrorProcess::start(m);
    }
    assert!(writer.wait().success(), "the appends failed");
    let ends: Vec<u64> = (0..partitions)
        .map(|p| common::xattr_u64(&m.path(&format!("kill9/{p}")), "user.end_offset"))
        .collect();
    assert_eq!(ends.iter().sum::<u64>(), messages);
    for (partition, end) in ends.iter().enumerate() {
        let dir = m.path(&format!("kill9/{partition}"));
        common::wait_until(
            LONG_RUN_DEADLINE,
            "the mirror's position at the end",
            || {
                common::xattr_get(&dir, "user.consumer.mirror")
                    .ok()
                    .flatten()
                    .is_some_and(|v| v == end.to_string().as_bytes())
            },
        );
    }
    let (mut lost, mut duplicated) = (0, 0);
    for (records, end) in broker
        .read_all("kill9", partitions as u32)
        .iter()
        .zip(&ends)
    {
        let mut seen = vec![0u32; *end as usize];
        for record in records {
            seen[record.source_offset.expect("a commitfs.offset header") as usize] += 1;
        }
        lost += seen.iter().filter(|n| **n == 0).count();
        duplicated += seen
            .iter()
            .map(|n| n.saturating_sub(1) as usize)
            .sum::<usize>();
    }
    Kill9Outcome {
        restarts: mirror.log().matches("mirroring ").count() - 1,
        lost,
        duplicated,
    }
}
