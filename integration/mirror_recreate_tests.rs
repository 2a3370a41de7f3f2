//! A topic removed and made again under the same name starts again at offset 0, while its
//! target topic in Kafka still holds the old topic's messages with those `commitfs.offset`
//! headers: the mirror must ship the new topic's messages from its start, after the old ones,
//! not skip them (issue 11). Against Tansu, like `mirror_tests.rs`
//! (`COMMITFS_SKIP_KAFKA_TESTS=1` skips).

use std::time::{Duration, Instant};

mod broker;
mod common;

use broker::{Broker, MirrorProcess, Record};
use common::{Config, Mount};

/// A broker and a mount of one-partition topics mirrored to it.
fn setup() -> Option<(Broker, Mount)> {
    broker::broker_and_mount(Config::small().set("partitions", "1"))
}

/// Waits until Kafka's partition 0 of `topic` holds `count` messages; returns them.
fn wait_for_count(
    broker: &Broker,
    mirror: &MirrorProcess,
    topic: &str,
    count: usize,
) -> Vec<Record> {
    let started = Instant::now();
    loop {
        let held = broker.read_all(topic, 1).remove(0);
        if held.len() >= count {
            return held;
        }
        assert!(
            started.elapsed() < broker::CATCH_UP_DEADLINE,
            "Kafka holds {} messages of {topic}, not {count}; the mirror's log:\n{}",
            held.len(),
            mirror.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kafka holds the old topic's 300 messages once each, then the new topic's 100 once each.
fn assert_old_then_new(held: &[Record]) {
    let expected: Vec<(Option<u64>, Vec<u8>)> = (0..300)
        .map(|n| (Some(n), format!("old {}", n + 1).into_bytes()))
        .chain((0..100).map(|n| (Some(n), format!("new {}", n + 1).into_bytes())))
        .collect();
    let found: Vec<(Option<u64>, Vec<u8>)> = held
        .iter()
        .map(|r| (r.source_offset, r.payload.clone()))
        .collect();
    assert!(
        found == expected,
        "Kafka holds {} messages, not the old topic's 300 then the new one's 100 (first \
         mismatch at {:?})",
        found.len(),
        found.iter().zip(&expected).position(|(a, b)| a != b)
    );
}

#[test]
fn a_topic_made_again_while_the_mirror_was_stopped_ships_from_its_start() {
    let Some((broker, m)) = setup() else {
        return;
    };
    m.sh_ok("mkdir again && seq -f 'old %g' 1 300 >> again/0/active");
    let mut mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("again", &[300]);
    assert_eq!(
        mirror
            .stop_with(libc::SIGTERM, broker::CATCH_UP_DEADLINE)
            .code(),
        Some(0)
    );
    m.sh_ok("rmdir again && mkdir again && seq -f 'new %g' 1 100 >> again/0/active");
    let mirror = MirrorProcess::start(&m);
    mirror.wait_for_log(
        "the topic was removed and made again",
        broker::CATCH_UP_DEADLINE,
    );
    let held = wait_for_count(&broker, &mirror, "again", 400);
    // Nothing more comes: the new messages were not sent twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_old_then_new(&broker.read_all("again", 1)[0]);
    assert_old_then_new(&held);
}

#[test]
fn a_topic_made_again_while_the_mirror_runs_ships_from_its_start() {
    let Some((broker, m)) = setup() else {
        return;
    };
    m.sh_ok("mkdir again && seq -f 'old %g' 1 300 >> again/0/active");
    let mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("again", &[300]);
    m.sh_ok("rmdir again && mkdir again && seq -f 'new %g' 1 100 >> again/0/active");
    wait_for_count(&broker, &mirror, "again", 400);
    std::thread::sleep(Duration::from_secs(2));
    assert_old_then_new(&broker.read_all("again", 1)[0]);
    let log = mirror.log();
    assert!(
        log.contains("the topic was removed and made again"),
        "{log}"
    );
}
