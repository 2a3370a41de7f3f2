//! `commitfs mirror`: ships topics of a mount into a Kafka cluster, each message exactly once.
//!
//! The mirror is an ordinary client of the mount (`source`): it follows every partition's
//! `stream` and hands each message to librdkafka's idempotent producer (`kafka`) for the same
//! partition number of the target topic, with its key, timestamp and a `commitfs.offset`
//! header. What Kafka acknowledged becomes the group's consumer position on the partition
//! directory, at most every `position_interval_ms` per partition. After a start, a crash or a
//! failed delivery, a partition resumes after the greater of that position and the newest
//! `commitfs.offset` the target partition holds, so nothing is sent twice and nothing is
//! skipped. SIGTERM or SIGINT stops it gracefully (`stop`): it waits a bounded time for what
//! is in flight, writes every acknowledged position and exits 0.

pub mod config;
mod kafka;
mod metrics;
mod source;
mod stop;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{MirrorConfig, MirrorConfigError};
use kafka::{Ack, Kafka, SendRefused, Shipped};
use metrics::{Board, MetricsServer, PartitionFigures};
use source::{PartitionSource, TopicSettings};
use stop::StopRequests;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{}: {source}", path.display())]
    Mount { path: PathBuf, source: io::Error },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the producer cannot go on ({0}); a restart resumes where Kafka stopped")]
    Fatal(String),
    #[error("metrics_listen: {0}")]
    Metrics(io::Error),
    #[error("watching for SIGTERM and SIGINT: {0}")]
    Signals(io::Error),
}

/// How often the mount is searched for new topics and partitions.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the partitions are looked at for a position due to be written (each one is
/// written at most every `position_interval_ms`).
const COMMIT_CHECK: Duration = Duration::from_millis(50);
/// After a stop signal, how long messages in flight may take to be acknowledged before they
/// are abandoned (well inside systemd's 90 s stop timeout).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the lag is measured (one `user.end_offset` per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// After this long without an acknowledgement while messages wait, the log says so (again).
const STALL_REPORT: Duration = Duration::from_secs(10);
/// How long a partition waits before trying again after an error.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest pause between two looks at a partition that had nothing new.
const MAX_IDLE: Duration = Duration::from_millis(50);
/// Messages one partition hands over before the next partition's turn.
const TURN: usize = 10_000;

/// Ships the mount at `mountpoint` per `config` until SIGTERM or SIGINT (then `Ok`) or an
/// error it cannot outlive.
pub fn run(config: MirrorConfig, mountpoint: &Path) -> Result<(), MirrorError> {
    let mount_error = |source| MirrorError::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    // Before any thread starts, so that every one inherits the blocked signals.
    let stops = StopRequests::watch().map_err(MirrorError::Signals)?;
    std::fs::read_dir(mountpoint).map_err(mount_error)?;
    let board = Arc::new(Board::default());
    let _metrics = match config.metrics_listen {
        Some(address) => {
            Some(MetricsServer::serve(address, board.clone()).map_err(MirrorError::Metrics)?)
        }
        None => None,
    };
    let kafka = Kafka::connect(&config)?;
    tracing::info!(
        "mirroring {} into {} as group {:?}",
        mountpoint.display(),
        config.brokers,
        config.group
    );
    let mut mirror = Mirror {
        config,
        mountpoint: mountpoint.to_owned(),
        kafka,
        board,
        stops,
        topics: HashMap::new(),
        slots: Vec::new(),
        last_progress: Instant::now(),
    };
    mirror.run()
}

/// A source topic the mirror knows.
struct KnownTopic {
    /// `None` while the topic was never seen in the mount.
    settings: Option<TopicSettings>,
    /// Its partitions that have a slot (they are 0..mirrored).
    mirrored: u32,
    /// When the log last said why it is not mirrored, to say it once a minute.
    refusal_logged: Option<Instant>,
}

impl KnownTopic {
    fn unseen() -> KnownTopic {
        KnownTopic {
            settings: None,
            mirrored: 0,
            refusal_logged: None,
        }
    }
}

/// One source partition and its target partition.
struct Slot {
    topic: String,
    target: String,
    partition: u32,
    source: PartitionSource,
    state: SlotState,
    /// Handed to librdkafka, not yet answered.
    in_flight: u64,
    /// Every offset below it is in Kafka.
    acked: u64,
    /// The consumer position last written.
    committed: u64,
    /// Acknowledged since the mirror started (for the metrics).
    shipped: u64,
    /// When the position was last written (or the slot made): the next write waits for
    /// `position_interval` after it.
    committed_at: Instant,
    idle_until: Instant,
    idle_pause: Duration,
    /// Whether the last commit failed (so the log says it once per streak).
    commit_failing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Must learn what Kafka holds before sending (at start, after a failed delivery or a
    /// read error), once nothing of it is in flight and not before the instant.
    Resync(Instant),
    Running,
    /// Its topic is gone from the mount.
    Gone,
}

struct Mirror {
    config: MirrorConfig,
    mountpoint: PathBuf,
    kafka: Kafka,
    board: Arc<Board>,
    stops: Arc<StopRequests>,
    topics: HashMap<String, KnownTopic>,
    slots: Vec<Slot>,
    last_progress: Instant,
}

impl Mirror {
    fn run(&mut self) -> Result<(), MirrorError> {
        let mut acks = Vec::new();
        let (mut discovered, mut committed, mut measured, mut stall_told) = (
            None::<Instant>,
            Instant::now(),
            None::<Instant>,
            Instant::now(),
        );
        loop {
            if let Some(reason) = self.kafka.fatal_error() {
                return Err(MirrorError::Fatal(reason));
            }
            if let Some(signal) = self.stops.requested() {
                self.stop(signal, &mut acks);
                return Ok(());
            }
            let now = Instant::now();
            if discovered.is_none_or(|at| now >= at + DISCOVERY_INTERVAL) {
                self.discover();
                discovered = Some(now);
            }
            self.resync_due(now);
            let (sent, queue_full) = self.pump(now);
            let wait = match (sent, queue_full) {
                (0, false) => Duration::from_millis(5),
                (_, true) => Duration::from_millis(10),
                _ => Duration::ZERO,
            };
            self.kafka.poll(wait, &mut acks);
            self.take_acks(&mut acks);
            let now = Instant::now();
            if self.kafka.waiting() == 0 {
                // Nothing waits for Kafka: whatever comes next is not late yet.
                self.last_progress = now;
            }
            if now >= committed + COMMIT_CHECK {
                self.commit_positions(now, false);
                committed = now;
            }
            if measured.is_none_or(|at| now >= at + LAG_INTERVAL) {
                self.measure_lag();
                measured = Some(now);
            }
            if self.kafka.waiting() > 0
                && now >= self.last_progress + STALL_REPORT
                && now >= stall_told + STALL_REPORT
            {
                tracing::warn!(
                    "Kafka has acknowledged nothing for {} s: {} messages wait in the producer; \
                     lag {} messages; appends to the mount go on",
                    self.last_progress.elapsed().as_secs(),
                    self.kafka.waiting(),
                    self.board.total_lag()
                );
                stall_told = now;
            }
        }
    }

    /// Finds new topics and partitions (and changed settings) and gives them slots.
    fn discover(&mut self) {
        let names = match &self.config.topics {
            Some(topics) => topics.clone(),
            None => match source::list_topics(&self.mountpoint) {
                Ok(names) => names,
                Err(error) => {
                    tracing::warn!("listing topics in {}: {error}", self.mountpoint.display());
                    return;
                }
            },
        };
        let mut remade = Vec::new();
        for slot in &mut self.slots {
            if slot.state == SlotState::Gone {
                continue;
            }
            if !names.contains(&slot.topic) {
                tracing::info!(
                    "{}/{}: the topic is gone from the mount",
                    slot.topic,
                    slot.partition
                );
                slot.state = SlotState::Gone;
            } else if slot.source.replaced() {
                tracing::info!(
                    "{}/{}: the topic was removed since the mirror opened it; following the \
                     topic of that name the mount has now",
                    slot.topic,
                    slot.partition
                );
                slot.state = SlotState::Gone;
                remade.push(slot.topic.clone());
            }
        }
        self.topics
            .retain(|name, _| names.contains(name) && !remade.contains(name));
        for name in names {
            match source::topic_settings(&self.mountpoint, &name) {
                Ok(settings) => self.follow_topic(&name, settings),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.refuse(&name, "no such topic in the mount (yet)")
                }
                Err(error) => tracing::warn!("topic {name}: reading its settings: {error}"),
            }
        }
    }

    /// Gives topic `name`'s new partitions slots, once its target has room for them.
    fn follow_topic(&mut self, name: &str, settings: TopicSettings) {
        let gone_in_flight = self
            .slots
            .iter()
            .any(|slot| slot.topic == name && slot.state == SlotState::Gone && slot.in_flight > 0);
        if gone_in_flight {
            // A topic of this name that was removed still has messages on their way: what
            // Kafka holds is known once they are answered.
            return;
        }
        let mirrored = self.topics.get(name).map_or(0, |known| known.mirrored);
        if self
            .topics
            .get(name)
            .is_some_and(|known| known.settings.as_ref() != Some(&settings))
        {
            for slot in self.slots.iter_mut().filter(|slot| slot.topic == name) {
                slot.source.set_settings(settings.clone());
            }
        }
        let target = format!("{}{name}", self.config.target_prefix);
        if settings.partitions > mirrored {
            if let Err(problem) = self.prepare_target(&target, mirrored, settings.partitions) {
                self.refuse(name, &problem);
                return;
            }
            for partition in mirrored..settings.partitions {
                match PartitionSource::open(&self.mountpoint, name, partition, settings.clone()) {
                    Ok(source) => self.slots.push(Slot::new(name, &target, partition, source)),
                    Err(error) => {
                        tracing::warn!("{name}/{partition}: opening its stream: {error}");
                        return;
                    }
                }
                self.topics
                    .entry(name.to_owned())
                    .or_insert_with(KnownTopic::unseen)
                    .mirrored = partition + 1;
            }
        }
        if let Some(known) = self.topics.get_mut(name) {
            known.settings = Some(settings);
        }
    }

    /// Makes the target topic when missing, grows it when the source grew while mirrored;
    /// refuses one that has fewer partitions than the source from the start.
    fn prepare_target(&self, target: &str, mirrored: u32, partitions: u32) -> Result<(), String> {
        let count = self
            .kafka
            .partition_count(target)
            .map_err(|e| format!("cannot read target topic {target}'s metadata: {e}"))?;
        match count {
            None => {
                self.kafka
                    .create_topic(target, partitions)
                    .map_err(|e| format!("cannot create target topic {target}: {e}"))?;
                tracing::info!("created target topic {target} with {partitions} partitions");
                Ok(())
            }
            Some(count) if count >= partitions => Ok(()),
            Some(count) if mirrored > 0 => {
                self.kafka.grow_topic(target, partitions).map_err(|e| {
                    format!(
                        "its source grew to {partitions} partitions, and target topic {target} \
                         (with {count}) cannot be grown to match: {e}"
                    )
                })?;
                tracing::info!(
                    "grew target topic {target} from {count} to {partitions} partitions, as its \
                     source grew"
                );
                Ok(())
            }
            Some(count) => Err(format!(
                "target topic {target} has {count} partitions, fewer than the source's \
                 {partitions}: each message goes to its own partition number, so grow the \
                 target to {partitions} (or set another target_prefix)"
            )),
        }
    }

    /// Says why topic `name` is not mirrored (at once, then once a minute); tries again at
    /// the next discovery.
    fn refuse(&mut self, name: &str, problem: &str) {
        let known = self
            .topics
            .entry(name.to_owned())
            .or_insert_with(KnownTopic::unseen);
        if known
            .refusal_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::error!("topic {name} is not mirrored: {problem}");
            known.refusal_logged = Some(Instant::now());
        }
    }

    /// Asks Kafka what it holds for every partition due to resync, one topic at a time.
    fn resync_due(&mut self, now: Instant) {
        let mut due: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, slot) in self.slots.iter().enumerate() {
            if matches!(slot.state, SlotState::Resync(at) if now >= at) && slot.in_flight == 0 {
                due.entry(slot.target.clone()).or_default().push(index);
            }
        }
        for (target, indexes) in due {
            let partitions: Vec<u32> = indexes.iter().map(|i| self.slots[*i].partition).collect();
            match self.kafka.newest_shipped(&target, &partitions) {
                Ok(newest) => {
                    for (index, newest) in indexes.into_iter().zip(newest) {
                        self.slots[index].resume(&self.config.group, newest);
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        "cannot ask Kafka what target topic {target} holds ({error}); \
                         trying again in {} s",
                        RETRY_AFTER.as_secs()
                    );
                    for index in indexes {
                        self.slots[index].state = SlotState::Resync(now + RETRY_AFTER);
                    }
                }
            }
        }
    }

    /// Hands new messages to librdkafka, a turn per partition; returns how many, and
    /// whether librdkafka's queue filled.
    fn pump(&mut self, now: Instant) -> (usize, bool) {
        let mut sent = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.state != SlotState::Running || now < slot.idle_until {
                continue;
            }
            match slot.pump(&self.kafka, index) {
                Ok(Pumped::Sent(count)) => {
                    sent += count;
                    slot.idle_pause = Duration::ZERO;
                }
                Ok(Pumped::Idle) => slot.pause(now),
                Ok(Pumped::QueueFull(count)) => return (sent + count, true),
                Err(error) => {
                    tracing::warn!(
                        "{}/{}: {error}; looking again in {} s",
                        slot.topic,
                        slot.partition,
                        RETRY_AFTER.as_secs()
                    );
                    slot.state = SlotState::Resync(now + RETRY_AFTER);
                }
            }
        }
        (sent, false)
    }

    fn take_acks(&mut self, acks: &mut Vec<Ack>) {
        if !acks.is_empty() {
            self.last_progress = Instant::now();
        }
        for ack in acks.drain(..) {
            self.slots[ack.slot].acknowledged(&ack);
        }
    }

    /// Writes the positions that are due (`all`: every one that moved).
    fn commit_positions(&mut self, now: Instant, all: bool) {
        let (group, interval) = (&self.config.group, self.config.position_interval);
        for slot in &mut self.slots {
            let due = all || now >= slot.committed_at + interval;
            if due && slot.acked > slot.committed && slot.state != SlotState::Gone {
                slot.commit(group, now);
            }
        }
    }

    /// The graceful stop: nothing new is sent; what is in flight has [`STOP_GRACE`] (or
    /// until a second signal) to be acknowledged; then every acknowledged position is written.
    /// Messages still unacknowledged are abandoned: Kafka may or may not store them, and the
    /// next start resumes after what it holds either way.
    fn stop(&mut self, signal: i32, acks: &mut Vec<Ack>) {
        let deadline = Instant::now() + STOP_GRACE;
        while self.kafka.waiting() > 0 && Instant::now() < deadline && !self.stops.urgent() {
            self.kafka.poll(Duration::from_millis(50), acks);
            self.take_acks(acks);
        }
        self.kafka.poll(Duration::ZERO, acks);
        self.take_acks(acks);
        self.commit_positions(Instant::now(), true);
        let unwritten = self
            .slots
            .iter()
            .filter(|slot| slot.acked > slot.committed && slot.state != SlotState::Gone)
            .count();
        match (self.kafka.waiting(), unwritten) {
            (0, 0) => tracing::info!(
                "stopped on signal {signal}: Kafka acknowledged every message the mirror sent, \
                 and the positions say so"
            ),
            (waiting, unwritten) => tracing::warn!(
                "stopped on signal {signal}: {waiting} messages sent were not acknowledged and \
                 are abandoned, {unwritten} positions could not be written; the next start \
                 resumes after what Kafka holds"
            ),
        }
    }

    fn measure_lag(&mut self) {
        for slot in &self.slots {
            if slot.state == SlotState::Gone {
                continue;
            }
            if let Ok(end) = slot.source.end_offset() {
                let figures = PartitionFigures {
                    lag: end.saturating_sub(slot.acked),
                    shipped: slot.shipped,
                };
                self.board.set(&slot.topic, slot.partition, figures);
            }
        }
    }
}

/// Where the newest message Kafka holds for a partition came from.
enum Lineage {
    /// From this partition.
    Same,
    /// From a partition of the same name before its topic was removed and made again: why
    /// that is certain.
    Other(String),
}

enum Pumped {
    Sent(usize),
    /// Nothing new was stored.
    Idle,
    QueueFull(usize),
}

impl Slot {
    fn new(topic: &str, target: &str, partition: u32, source: PartitionSource) -> Slot {
        let now = Instant::now();
        Slot {
            topic: topic.to_owned(),
            target: target.to_owned(),
            partition,
            source,
            state: SlotState::Resync(now),
            in_flight: 0,
            acked: 0,
            committed: 0,
            shipped: 0,
            committed_at: now,
            idle_until: now,
            idle_pause: Duration::ZERO,
            commit_failing: false,
        }
    }

    /// Up to a turn's worth of messages to librdkafka.
    fn pump(&mut self, kafka: &Kafka, index: usize) -> io::Result<Pumped> {
        let mut sent = 0;
        while sent < TURN {
            let Some(message) = self.source.next_message()? else {
                return Ok(if sent == 0 {
                    Pumped::Idle
                } else {
                    Pumped::Sent(sent)
                });
            };
            match kafka.send(&self.target, self.partition, index, &message) {
                Ok(()) => {
                    self.source.advance();
                    self.in_flight += 1;
                    sent += 1;
                }
                Err(SendRefused::QueueFull) => return Ok(Pumped::QueueFull(sent)),
                Err(SendRefused::Failed(reason)) => {
                    return Err(io::Error::other(format!(
                        "librdkafka refused message {}: {reason}",
                        message.offset
                    )))
                }
            }
        }
        Ok(Pumped::Sent(sent))
    }

    /// Nothing new: look again after a pause that grows to [`MAX_IDLE`].
    fn pause(&mut self, now: Instant) {
        self.idle_pause = (self.idle_pause * 2)
            .max(Duration::from_millis(1))
            .min(MAX_IDLE);
        self.idle_until = now + self.idle_pause;
    }

    fn acknowledged(&mut self, ack: &Ack) {
        self.in_flight -= 1;
        if let Some(error) = &ack.error {
            if !matches!(self.state, SlotState::Resync(_)) {
                tracing::error!(
                    "{}/{}: Kafka did not store message {} ({error}); resuming from what \
                     Kafka holds once the messages in flight are answered",
                    self.topic,
                    self.partition,
                    ack.offset
                );
                self.state = SlotState::Resync(Instant::now() + RETRY_AFTER);
            }
        } else if ack.offset == self.acked {
            self.acked += 1;
            self.shipped += 1;
        } else if self.state == SlotState::Running {
            tracing::error!(
                "{}/{}: Kafka acknowledged message {} while {} was next; resuming from what \
                 Kafka holds",
                self.topic,
                self.partition,
                ack.offset,
                self.acked
            );
            self.state = SlotState::Resync(Instant::now());
        }
    }

    /// Resumes after the greater of the group's position and the newest offset Kafka holds
    /// (when that came from this partition as it is now).
    fn resume(&mut self, group: &str, newest: Option<Shipped>) {
        let position = match self.source.consumer_position(group) {
            Ok(position) => position,
            Err(error) => {
                tracing::warn!(
                    "{}/{}: reading the position of group {group}: {error}",
                    self.topic,
                    self.partition
                );
                self.state = SlotState::Resync(Instant::now() + RETRY_AFTER);
                return;
            }
        };
        let newest_shipped = match newest.map(|shipped| (self.lineage(&shipped), shipped)) {
            None => None,
            Some((Ok(Lineage::Same), shipped)) => Some(shipped.offset),
            Some((Ok(Lineage::Other(why)), shipped)) => {
                tracing::warn!(
                    "{}/{}: the newest message in target topic {} (commitfs.offset {}) is not \
                     from this partition as it is now ({why}): the topic was removed and made \
                     again since it was shipped; shipping it from its group position or its \
                     start, after the old topic's messages",
                    self.topic,
                    self.partition,
                    self.target,
                    shipped.offset
                );
                None
            }
            Some((Err(error), _)) => {
                tracing::warn!(
                    "{}/{}: reading the message Kafka has last: {error}",
                    self.topic,
                    self.partition
                );
                self.state = SlotState::Resync(Instant::now() + RETRY_AFTER);
                return;
            }
        };
        let wanted = newest_shipped
            .map_or(0, |offset| offset + 1)
            .max(position.unwrap_or(0));
        match self.source.seek(wanted) {
            Ok(resumed) => {
                if resumed > wanted {
                    tracing::error!(
                        "{}/{}: messages {wanted} to {} were removed by retention before Kafka \
                         had them: they are not mirrored",
                        self.topic,
                        self.partition,
                        resumed - 1
                    );
                }
                tracing::info!(
                    "{}/{}: shipping from offset {resumed} (Kafka's newest: {newest_shipped:?}, \
                     group position: {position:?})",
                    self.topic,
                    self.partition
                );
                self.acked = resumed;
                self.committed = position.unwrap_or(0);
                self.state = SlotState::Running;
                self.idle_until = Instant::now();
            }
            Err(error) => {
                tracing::warn!(
                    "{}/{}: finding offset {wanted} in its stream: {error}",
                    self.topic,
                    self.partition
                );
                self.state = SlotState::Resync(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Whether `shipped`, the newest message Kafka holds, is this partition's message of that
    /// offset: the same bytes (a trailing `\n` aside, should the framing have changed) and
    /// the same time. A topic removed and made again starts again at offset 0, so a restart
    /// must not skip its messages because Kafka holds the old topic's with those offsets. Two
    /// topics' messages at one offset with the same bytes in the same millisecond cannot be
    /// told apart; they are taken for one.
    fn lineage(&mut self, shipped: &Shipped) -> io::Result<Lineage> {
        let end = self.source.end_offset()?;
        if shipped.offset >= end {
            return Ok(Lineage::Other(format!(
                "the partition holds offsets below {end} only"
            )));
        }
        let at = self.source.seek(shipped.offset)?;
        let Some(message) = self.source.next_message()? else {
            return Ok(Lineage::Same);
        };
        let later_in_time = shipped
            .create_time
            .is_some_and(|time| message.timestamp < time);
        if at > shipped.offset {
            // Retention removed it. The oldest message kept comes after it in the same
            // partition, so it cannot be older.
            return Ok(match later_in_time {
                true => Lineage::Other(format!(
                    "its oldest message, {at}, is older than Kafka's {}",
                    shipped.offset
                )),
                false => Lineage::Same,
            });
        }
        let bytes = |payload: &[u8]| payload.strip_suffix(b"\n").unwrap_or(payload).to_vec();
        let same_time = shipped
            .create_time
            .is_none_or(|time| time == message.timestamp);
        Ok(
            match same_time && bytes(message.payload) == bytes(&shipped.payload) {
                true => Lineage::Same,
                false => Lineage::Other(format!(
                    "its message {} has other bytes or another time",
                    shipped.offset
                )),
            },
        )
    }

    fn commit(&mut self, group: &str, now: Instant) {
        match self.source.commit_position(group, self.acked) {
            Ok(()) => {
                self.committed = self.acked;
                self.committed_at = now;
                self.commit_failing = false;
            }
            Err(error) => {
                if !self.commit_failing {
                    tracing::warn!(
                        "{}: setting user.consumer.{group} to {}: {error} (Kafka has the \
                         messages; trying again)",
                        self.source.path().display(),
                        self.acked
                    );
                }
                self.commit_failing = true;
            }
        }
    }
}
