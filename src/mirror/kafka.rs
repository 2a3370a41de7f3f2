//! The Kafka side of the mirror, through librdkafka: an idempotent producer whose
//! acknowledgements come back as [`Ack`]s, target topics made or grown to the source's
//! partition count, and what each target partition already holds (the newest
//! `commitfs.offset` header).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::config::MirrorConfig;
use super::source::Message;

/// The header that carries each message's commitfs offset (decimal ASCII).
pub const OFFSET_HEADER: &str = "commitfs.offset";

/// How long one metadata, admin or probe request may take before it is tried again later.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka's answer for one message: `slot` is the partition the mirror gave it to.
#[derive(Debug)]
pub struct Ack {
    pub slot: usize,
    pub offset: u64,
    /// Why it was not stored (librdkafka's words); `None` when Kafka acknowledged it.
    pub error: Option<String>,
}

/// The newest message a target partition holds, as the mirror sent it: its `commitfs.offset`
/// and what it can be told apart by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    pub offset: u64,
    /// Its CreateTime (the mount's time, as the mirror set it); `None` when the topic keeps
    /// the broker's append time instead.
    pub create_time: Option<i64>,
    pub payload: Vec<u8>,
}

/// What travels with each message to its delivery report.
pub struct Delivery {
    slot: usize,
    offset: u64,
}

/// How often the same kind of client error is logged: librdkafka reports one per connection
/// attempt while a broker is away.
const ERROR_REPEAT: Duration = Duration::from_secs(10);

/// Collects delivery reports and sends librdkafka's log to `tracing`.
#[derive(Default)]
pub struct MirrorContext {
    acks: Mutex<Vec<Ack>>,
    fatal: Mutex<Option<String>>,
    /// When each kind of error (its code) was last logged, and how many of it were not since.
    errors_logged: Mutex<HashMap<Option<i32>, (Instant, u64)>>,
}

impl ClientContext for MirrorContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if matches!(code, Some(RDKafkaErrorCode::Fatal)) {
            *self.fatal.lock() = Some(format!("{error}: {reason}"));
        }
        let kind = code.map(|code| code as i32);
        let mut logged = self.errors_logged.lock();
        let now = Instant::now();
        match logged.get_mut(&kind) {
            Some((at, quiet)) if now < *at + ERROR_REPEAT => *quiet += 1,
            Some((at, quiet)) => {
                tracing::warn!(
                    "kafka: {error}: {reason} ({quiet} more like it since the last such line)"
                );
                (*at, *quiet) = (now, 0);
            }
            None => {
                tracing::warn!("kafka: {error}: {reason}");
                logged.insert(kind, (now, 0));
            }
        }
    }
}

impl ProducerContext for MirrorContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let error = result.as_ref().err().map(|(error, _)| error.to_string());
        self.acks.lock().push(Ack {
            slot: delivery.slot,
            offset: delivery.offset,
            error,
        });
    }
}

fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!("librdkafka {facility}: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!("librdkafka {facility}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!("librdkafka {facility}: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!("librdkafka {facility}: {message}"),
    }
}

/// The cluster: a producer, an admin client and the settings to probe partitions with.
pub struct Kafka {
    producer: BaseProducer<MirrorContext>,
    admin: AdminClient<DefaultClientContext>,
    probe_config: ClientConfig,
}

/// Why a message was not handed to librdkafka.
pub enum SendRefused {
    /// Its queue is full: poll, then offer it again.
    QueueFull,
    /// Anything else, in librdkafka's words.
    Failed(String),
}

impl Kafka {
    pub fn connect(config: &MirrorConfig) -> KafkaResult<Kafka> {
        let mut producer = ClientConfig::new();
        producer
            .set("bootstrap.servers", &config.brokers)
            // No loss, no duplicate, no reordering on retries; every replica has it.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A broker away stalls the mirror rather than failing messages.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000")
            // Target topics get the source's partition count, never the broker's default.
            .set("allow.auto.create.topics", "false");
        for (name, value) in &config.properties {
            producer.set(name, value);
        }
        let mut admin = ClientConfig::new();
        admin.set("bootstrap.servers", &config.brokers);
        let mut probe_config = ClientConfig::new();
        probe_config
            .set("bootstrap.servers", &config.brokers)
            .set(
                "group.id",
                format!("commitfs-mirror-probe-{}", config.group),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10");
        for (name, value) in &config.properties {
            // Security and address settings the probe needs too; producer-only ones would
            // only draw warnings from a consumer.
            if name.starts_with("security.")
                || name.starts_with("sasl.")
                || name.starts_with("ssl.")
                || name.starts_with("client.")
            {
                admin.set(name, value);
                probe_config.set(name, value);
            }
        }
        Ok(Kafka {
            producer: producer.create_with_context(MirrorContext::default())?,
            admin: admin.create()?,
            probe_config,
        })
    }

    /// Hands one message to librdkafka for partition `partition` of `topic`.
    pub fn send(
        &self,
        topic: &str,
        partition: u32,
        slot: usize,
        message: &Message<'_>,
    ) -> Result<(), SendRefused> {
        let offset = message.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: OFFSET_HEADER,
            value: Some(offset.as_bytes()),
        });
        let mut record = BaseRecord::with_opaque_to(
            topic,
            Box::new(Delivery {
                slot,
                offset: message.offset,
            }),
        )
        .partition(partition as i32)
        .payload(message.payload)
        .timestamp(message.timestamp)
        .headers(headers);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        self.producer
            .send(record)
            .map_err(|(error, _)| match error.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => SendRefused::QueueFull,
                _ => SendRefused::Failed(error.to_string()),
            })
    }

    /// Serves librdkafka's callbacks for up to `timeout`, then hands over the acks that came.
    pub fn poll(&self, timeout: Duration, acks: &mut Vec<Ack>) {
        self.producer.poll(timeout);
        acks.append(&mut self.producer.context().acks.lock());
    }

    /// A fatal producer error (the idempotent producer cannot go on), once one happened.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.context().fatal.lock().clone()
    }

    /// Messages librdkafka holds that Kafka has not acknowledged yet.
    pub fn waiting(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// The partition count of `topic` on the cluster; `None` when it does not exist.
    pub fn partition_count(&self, topic: &str) -> KafkaResult<Option<u32>> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match found.error() {
            None => Ok(Some(found.partitions().len() as u32)),
            Some(error) => match RDKafkaErrorCode::from(error) {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    Ok(None)
                }
                code => Err(KafkaError::MetadataFetch(code)),
            },
        }
    }

    /// Makes `topic` with `partitions` partitions (the cluster's default replication).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> KafkaResult<()> {
        let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
        let results =
            futures_executor::block_on(self.admin.create_topics([&new], &admin_options()))?;
        admin_result(results)
    }

    /// Grows `topic` to `partitions` partitions.
    pub fn grow_topic(&self, topic: &str, partitions: u32) -> KafkaResult<()> {
        let new = NewPartitions::new(topic, partitions as usize);
        let results =
            futures_executor::block_on(self.admin.create_partitions([&new], &admin_options()))?;
        admin_result(results)
    }

    /// For each of `partitions` of `topic`, the message with the greatest `commitfs.offset`
    /// header stored there (`None`: no message carries one). Reads each partition from just
    /// before its high watermark to its end, so a watermark reported too low (Tansu does that)
    /// only costs reading more. One topic at a time: an end-of-partition event names only the
    /// partition.
    pub fn newest_shipped(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> KafkaResult<Vec<Option<Shipped>>> {
        let consumer: BaseConsumer = self.probe_config.create()?;
        let mut assignment = TopicPartitionList::new();
        let mut open = HashMap::new();
        let mut newest: Vec<Option<Shipped>> = vec![None; partitions.len()];
        for (index, partition) in partitions.iter().enumerate() {
            let partition = *partition as i32;
            let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
            if high > low {
                let from = Offset::Offset((high - 1).max(low));
                assignment.add_partition_offset(topic, partition, from)?;
                open.insert(partition, index);
            }
        }
        if open.is_empty() {
            return Ok(newest);
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT * 3;
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::RequestTimedOut,
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    open.remove(&partition);
                }
                Some(Err(error)) => return Err(error),
                Some(Ok(message)) => {
                    let index = open.get(&message.partition());
                    if let (Some(index), Some(offset)) = (index, header_offset(&message)) {
                        if newest[*index].as_ref().is_none_or(|n| offset > n.offset) {
                            newest[*index] = Some(Shipped {
                                offset,
                                create_time: match message.timestamp() {
                                    rdkafka::Timestamp::CreateTime(time) => Some(time),
                                    _ => None,
                                },
                                payload: message.payload().unwrap_or_default().to_vec(),
                            });
                        }
                    }
                }
            }
        }
        Ok(newest)
    }
}

fn header_offset(message: &impl rdkafka::Message) -> Option<u64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == OFFSET_HEADER)
        .and_then(|header| std::str::from_utf8(header.value?).ok()?.parse().ok())
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(rdkafka::util::Timeout::After(REQUEST_TIMEOUT)))
}

fn admin_result(results: Vec<rdkafka::admin::TopicResult>) -> KafkaResult<()> {
    for result in results {
        if let Err((_, code)) = result {
            return Err(KafkaError::AdminOp(code));
        }
    }
    Ok(())
}
