//! Stopping `commitfs mirror` gracefully (issue 11): SIGTERM (`systemctl stop`) or SIGINT
//! (Ctrl-C) mid-stream ends it with status 0 within a bounded wait, after Kafka acknowledged
//! what was in flight and every acknowledged position was written, and a restart ships the
//! rest once; and a partition's position is written at most every `position_interval_ms`.
//! Against Tansu, like `mirror_tests.rs` (`COMMITFS_SKIP_KAFKA_TESTS=1` skips).

use std::time::Duration;

mod broker;
mod common;

use broker::{assert_mirrored, end_offsets, wait_for_positions, MirrorProcess, Record};
use common::{Background, Config, Mount};

/// How long a stopped mirror may take to exit before the test calls it a hang (it waits at
/// most 10 s for Kafka).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

fn position(m: &Mount, partition_dir: &str) -> Option<u64> {
    common::xattr_get(&m.path(partition_dir), "user.consumer.mirror")
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// Kafka holds offsets 0..n of each partition once each, in order; returns each n.
fn held_once_each(records: &[Vec<Record>]) -> Vec<u64> {
    records
        .iter()
        .enumerate()
        .map(|(partition, records)| {
            let offsets: Vec<Option<u64>> = records.iter().map(|r| r.source_offset).collect();
            let expected: Vec<Option<u64>> = (0..records.len() as u64).map(Some).collect();
            assert!(
                offsets == expected,
                "partition {partition}: Kafka holds {} messages, not 0..n once each (first \
                 mismatch at {:?})",
                offsets.len(),
                offsets.iter().zip(&expected).position(|(a, b)| a != b)
            );
            records.len() as u64
        })
        .collect()
}

#[test]
fn sigterm_or_sigint_mid_stream_exits_0_with_positions_at_what_kafka_holds_and_a_restart_ships_the_rest_once(
) {
    let Some((broker, m)) = broker::broker_and_mount(Config::small().set("partitions", "2")) else {
        return;
    };
    m.sh_ok("mkdir orders");
    let mut writer = Background::spawn(m.sh_command_within(
        "for round in $(seq 1 30); do \
           seq -f \"round $round message %g\" 1 1000 >> orders/append || exit 1; \
           sleep 0.1; \
         done",
        broker::CATCH_UP_DEADLINE,
    ));
    let mut mirror = MirrorProcess::start(&m);
    let mut rng = common::Rng::new(17);
    for (run, signal) in [libc::SIGTERM, libc::SIGINT, libc::SIGTERM]
        .into_iter()
        .enumerate()
    {
        // Mid-stream: once both partitions ship, at a random moment.
        mirror.wait_for_log_count("shipping from offset", 2 * (run + 1), STOP_DEADLINE);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let status = mirror.stop_with(signal, STOP_DEADLINE);
        let log = mirror.log();
        assert_eq!(status.code(), Some(0), "signal {signal}: {status}\n{log}");
        let said = format!("stopped on signal {signal}: Kafka acknowledged every message");
        assert_eq!(log.matches(&said).count(), 1 + run / 2, "{log}");
        // Nothing Kafka acknowledged is left out of the positions, nothing beyond it is in.
        let held = held_once_each(&broker.read_all("orders", 2));
        for (partition, held) in held.iter().enumerate() {
            let position = position(&m, &format!("orders/{partition}")).unwrap_or(0);
            assert_eq!(position, *held, "orders/{partition} after signal {signal}");
        }
        mirror = MirrorProcess::start(&m);
    }
    assert!(writer.wait().success(), "the appends failed");
    let ends = end_offsets(&m, "orders", 2);
    assert_eq!(ends.iter().sum::<u64>(), 30_000);
    let records = broker.read_when_shipped("orders", &ends);
    assert_mirrored(&m, "orders", &records, None);
    wait_for_positions(&m, "orders", "mirror", &ends);
}

/// With `position_interval_ms` at its longest (10 minutes), the position is not written
/// while the messages ship; a graceful stop writes it at once.
#[test]
fn a_position_waits_for_its_interval_and_a_graceful_stop_writes_it() {
    let config = Config::small()
        .set("partitions", "1")
        .set("mirror.position_interval_ms", "600000");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    m.sh_ok("mkdir paced && seq 1 500 >> paced/0/active");
    let mut mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("paced", &[500]);
    // Kafka has them all, and no write is due yet.
    assert_eq!(position(&m, "paced/0"), None, "{}", mirror.log());
    let status = mirror.stop_with(libc::SIGTERM, STOP_DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", mirror.log());
    assert_eq!(position(&m, "paced/0"), Some(500), "{}", mirror.log());
}

/// A broker that does not answer: the stop waits its bounded grace for the messages in
/// flight, abandons them, says so, and still exits 0; a restart once the broker answers
/// again ships everything once.
#[test]
fn a_stop_while_the_broker_does_not_answer_abandons_what_is_in_flight_and_exits_0() {
    let Some((broker, m)) = broker::broker_and_mount(Config::small().set("partitions", "1")) else {
        return;
    };
    m.sh_ok("mkdir stalled && seq -f 'before %g' 1 200 >> stalled/0/active");
    let mut mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("stalled", &[200]);
    broker.pause();
    m.sh_ok("seq -f 'during %g' 1 300 >> stalled/0/active");
    // Long enough for the mirror (which looks every 50 ms at most) to send them.
    std::thread::sleep(Duration::from_secs(1));
    let status = mirror.stop_with(libc::SIGTERM, STOP_DEADLINE);
    let log = mirror.log();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(
        log.contains("messages sent were not acknowledged and are abandoned"),
        "{log}"
    );
    assert_eq!(position(&m, "stalled/0"), Some(200), "{log}");
    broker.resume();
    // The broker first serves what it had received before the stop.
    std::thread::sleep(Duration::from_secs(3));
    let _mirror = MirrorProcess::start(&m);
    let records = broker.read_when_shipped("stalled", &[500]);
    assert_mirrored(&m, "stalled", &records, None);
}
