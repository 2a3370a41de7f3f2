//! The mirror's goals (issue 11), against Tansu on this machine, in one run:
//! `cargo bench --bench mirror_bench` (it needs what the mirror's tests need: FUSE and Tansu).
//!
//! 1. librdkafka's producer alone: N 100-byte messages (the mirror's producer settings and
//!    header), from the first send until the last acknowledgement: the broker's ceiling.
//! 2. The mirror: N 100-byte lines (99 bytes and `\n`) appended at once to a partition it
//!    follows, from the append until its shipped counter says Kafka acknowledged the last.
//! 3. The same over 64 partitions, with positions written at most every 200 ms (as the
//!    mirror did before `position_interval_ms`) and every 1000 ms (its default).
//! 4. 1,000,000 messages appended in rounds while the mirror is killed with SIGKILL at least
//!    five times mid-stream; then every message is read back from Kafka and counted: lost and
//!    duplicated must both be 0.
//!
//! `COMMITFS_MIRROR_BENCH_MESSAGES` changes N (default 2,000,000).

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

mod broker;
mod common;

use broker::{Broker, MirrorProcess};
use common::{Config, Mount};

const DEADLINE: Duration = Duration::from_secs(900);

fn main() {
    if !broker::kafka_available() {
        return;
    }
    let messages: u64 = std::env::var("COMMITFS_MIRROR_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let broker = Broker::start();
    let alone = producer_alone(&broker, messages);
    let mirrored = mirror_throughput(&broker, "shipped", 1, messages, 1000);
    // Many busy partitions, positions written as often as before `position_interval_ms`
    // (every 200 ms) and at its default (every second).
    let often = mirror_throughput(&broker, "often", 64, messages, 200);
    let seldom = mirror_throughput(&broker, "seldom", 64, messages, 1000);
    println!("| what | messages | seconds | messages/s |");
    println!("|---|---|---|---|");
    for (what, seconds) in [
        ("librdkafka producer alone", alone),
        ("commitfs mirror", mirrored),
        (
            "commitfs mirror, 64 partitions, positions every 200 ms",
            often,
        ),
        (
            "commitfs mirror, 64 partitions, positions every 1000 ms",
            seldom,
        ),
    ] {
        println!(
            "| {what} | {messages} | {seconds:.3} | {:.0} |",
            messages as f64 / seconds
        );
    }
    println!("mirror / producer alone: {:.2}", alone / mirrored);
    println!(
        "64 partitions, positions every 1000 ms / every 200 ms: {:.2}",
        often / seldom
    );
    let m = Mount::new(bench_config(&broker).set("partitions", "2"));
    let outcome = broker::kill9_run(&broker, &m, 1_000_000, 6);
    println!(
        "kill -9 run: 1000000 messages, {} kill -9 of the mirror mid-stream: {} lost, {} \
         duplicated",
        outcome.restarts, outcome.lost, outcome.duplicated
    );
    assert_eq!((outcome.lost, outcome.duplicated), (0, 0));
}

/// A 100-byte line: 99 bytes and its `\n`.
fn line(n: u64) -> String {
    format!("{n:010} {}\n", "x".repeat(88))
}

fn producer_alone(broker: &Broker, messages: u64) -> f64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap();
    broker.create_topic("alone", 1);
    let started = Instant::now();
    for n in 0..messages {
        let payload = line(n);
        let payload = &payload.as_bytes()[..99];
        let offset = n.to_string();
        loop {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "commitfs.offset",
                value: Some(offset.as_bytes()),
            });
            let record = BaseRecord::<(), [u8]>::to("alone")
                .partition(0)
                .payload(payload)
                .timestamp(1_700_000_000_000)
                .headers(headers);
            match producer.send(record) {
                Ok(()) => break,
                Err((error, _)) => {
                    assert_eq!(
                        error.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::QueueFull),
                        "{error}"
                    );
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(DEADLINE).unwrap();
    started.elapsed().as_secs_f64()
}

fn bench_config(broker: &Broker) -> Config {
    let config = Config::small()
        .set("partitions", "1")
        .set("segment_messages", "300000")
        .set("commit_log_file_bytes", "268435456")
        .set("index_entries", "4000000");
    broker::mirror_config(config, broker)
}

/// `messages` 100-byte lines in a file of the mount's work directory.
fn write_lines(m: &Mount, messages: u64) -> std::path::PathBuf {
    let input = m.work.join("lines");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for n in 0..messages {
        file.write_all(line(n).as_bytes()).unwrap();
    }
    file.flush().unwrap();
    input
}

/// The sum of the mirror's `commitfs_mirror_shipped_messages_total` (acknowledged by Kafka).
fn shipped_total(metrics_port: u16) -> u64 {
    let (_, scrape) = common::http_get(metrics_port, "/metrics");
    scrape
        .lines()
        .filter(|line| line.starts_with("commitfs_mirror_shipped_messages_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Seconds from appending `messages` lines to topic `topic` of a mount with `partitions`
/// partitions (to `append`: keyless lines go to the partitions in turn) until Kafka
/// acknowledged the last, as the mirror's shipped counter says; positions are written at
/// most every `position_interval_ms`.
fn mirror_throughput(
    broker: &Broker,
    topic: &str,
    partitions: u32,
    messages: u64,
    position_interval_ms: u64,
) -> f64 {
    let metrics_port = broker::free_port();
    let config = bench_config(broker)
        .set("partitions", &partitions.to_string())
        .set(
            "mirror.metrics_listen",
            &format!("\"127.0.0.1:{metrics_port}\""),
        )
        .set(
            "mirror.position_interval_ms",
            &position_interval_ms.to_string(),
        );
    let m = Mount::new(config);
    let input = write_lines(&m, messages);
    m.sh_ok(&format!("mkdir {topic}"));
    let mirror = MirrorProcess::start(&m);
    mirror.wait_for_log_count("shipping from offset 0", partitions as usize, DEADLINE);
    let started = Instant::now();
    m.sh_ok_within(
        &format!("cat {} >> {topic}/append", input.display()),
        DEADLINE,
    );
    common::wait_until(DEADLINE, "Kafka acknowledging every message", || {
        shipped_total(metrics_port) >= messages
    });
    started.elapsed().as_secs_f64()
}
