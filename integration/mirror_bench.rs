//! The mirror's goals (issue 11), against Tansu on this machine, in one run:
//! `cargo bench --bench mirror_bench` (it needs what the mirror's tests need: FUSE and Tansu).
//!
//! 1. librdkafka's producer alone: N 100-byte messages (the mirror's producer settings and
//!    header), from the first send until the last acknowledgement: the broker's ceiling.
//! 2. The mirror: N 100-byte lines (99 bytes and `\n`) appended at once to a partition it
//!    follows, from the append until the group's position says Kafka acknowledged the last.
//! 3. 1,000,000 messages appended in rounds while the mirror is killed with SIGKILL at least
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
    let mirrored = mirror_throughput(&broker, messages);
    println!("| what | messages | seconds | messages/s |");
    println!("|---|---|---|---|");
    for (what, seconds) in [
        ("librdkafka producer alone", alone),
        ("commitfs mirror", mirrored),
    ] {
        println!(
            "| {what} | {messages} | {seconds:.3} | {:.0} |",
            messages as f64 / seconds
        );
    }
    println!("mirror / producer alone: {:.2}", alone / mirrored);
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

/// Waits until group `mirror`'s position on `dir` is `end`.
fn wait_for_position(dir: &std::path::Path, end: u64) {
    common::wait_until(DEADLINE, "the mirror's position at the end", || {
        common::xattr_get(dir, "user.consumer.mirror")
            .ok()
            .flatten()
            .is_some_and(|v| v == end.to_string().as_bytes())
    });
}

fn mirror_throughput(broker: &Broker, messages: u64) -> f64 {
    let m = Mount::new(bench_config(broker));
    let input = m.work.join("lines");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for n in 0..messages {
        file.write_all(line(n).as_bytes()).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    m.sh_ok("mkdir shipped");
    let mirror = MirrorProcess::start(&m);
    mirror.wait_for_log("shipping from offset 0", DEADLINE);
    let started = Instant::now();
    m.sh_ok_within(
        &format!("cat {} >> shipped/0/active", input.display()),
        DEADLINE,
    );
    wait_for_position(&m.path("shipped/0"), messages);
    started.elapsed().as_secs_f64()
}
