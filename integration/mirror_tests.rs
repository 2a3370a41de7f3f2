//! `commitfs mirror` against a real Kafka-protocol broker (Tansu, started per test; see
//! `broker/mod.rs`, and `COMMITFS_SKIP_KAFKA_TESTS=1` to skip): every message lands once, in
//! its partition, with its key, timestamp and `commitfs.offset` header, across `kill -9` of
//! the mirror; a broker that stops answering stalls the mirror, never the mount; topics and
//! partitions that appear are followed; a target with too few partitions is refused by name.
//! What landed is read back with an rdkafka consumer.

use std::time::Duration;

mod broker;
mod common;

use broker::{assert_mirrored, end_offsets, wait_for_positions, Broker, MirrorProcess};
use common::{Background, Config, Mount};

/// How long the mirror may take to catch up or log something before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn every_message_lands_once_with_key_timestamp_and_header_across_kill_9() {
    let config = Config::small()
        .set("partitions", "3")
        .set("key_separator", "\":\"");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    m.sh_ok("mkdir orders");
    let mut writer = Background::spawn(m.sh_command_within(
        "for round in $(seq 1 40); do \
           seq 1 1000 | sed \"s/.*/key&:round $round message &/\" >> orders/append || exit 1; \
           sleep 0.1; \
         done",
        DEADLINE,
    ));
    let mut mirror = MirrorProcess::start(&m);
    let mut rng = common::Rng::new(11);
    for start in 1..=6 {
        // Mid-stream: once every partition ships, at a random moment.
        mirror.wait_for_log_count("shipping from offset", 3 * start, DEADLINE);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        mirror.kill9();
        mirror = MirrorProcess::start(&m);
    }
    assert!(writer.wait().success(), "the appends failed");
    let ends = end_offsets(&m, "orders", 3);
    assert_eq!(ends.iter().sum::<u64>(), 40_000);
    let records = broker.read_when_shipped("orders", &ends);
    assert_mirrored(&m, "orders", &records, Some(b':'));
    assert!(records.iter().flatten().all(|r| r.headers.len() == 1));
    wait_for_positions(&m, "orders", "mirror", &ends);
    // The restarts resumed after what Kafka held, not from the start.
    let log = mirror.log();
    assert!(log.contains("Kafka's newest: Some("), "{log}");
}

/// The sample `name` (labels as written) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().unwrap())
    })
}

#[test]
fn a_broker_that_stops_answering_stalls_the_mirror_not_the_mount_and_it_catches_up() {
    let metrics_port = broker::free_port();
    let config = Config::small()
        .set("partitions", "2")
        .set(
            "mirror.metrics_listen",
            &format!("\"127.0.0.1:{metrics_port}\""),
        )
        // Connections time out during the pause, and what was in flight on them is sent
        // again when the broker answers, while the broker still reads the first copies from
        // the closed sockets: the idempotent producer must keep them from being stored twice.
        .set("mirror.properties.\"socket.timeout.ms\"", "3000");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    m.sh_ok("mkdir events && seq -f 'before %g' 1 500 >> events/0/active");
    let mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("events", &[500, 0]);

    broker.pause();
    // Appends go on while the broker does not answer.
    m.sh_ok("seq -f 'during %g' 1 3000 >> events/0/active && seq -f 'other %g' 1 700 >> events/1/active");
    mirror.wait_for_log("Kafka has acknowledged nothing for", DEADLINE);
    mirror.wait_for_log("brokers are down", DEADLINE);
    let (status, scrape) = common::http_get(metrics_port, "/metrics");
    assert_eq!(status, 200, "{scrape}");
    let lag = sample(
        &scrape,
        "commitfs_mirror_lag_messages{topic=\"events\",partition=\"0\"}",
    );
    assert_eq!(lag, Some(3000.0), "{scrape}");

    broker.resume();
    let ends = end_offsets(&m, "events", 2);
    assert_eq!(ends, [3500, 700]);
    let records = broker.read_when_shipped("events", &ends);
    assert_mirrored(&m, "events", &records, None);
    wait_for_positions(&m, "events", "mirror", &ends);
    common::wait_until(DEADLINE, "the lag metric back at 0", || {
        let (_, scrape) = common::http_get(metrics_port, "/metrics");
        sample(
            &scrape,
            "commitfs_mirror_lag_messages{topic=\"events\",partition=\"0\"}",
        ) == Some(0.0)
    });
}

/// New partitions of a mirrored topic ship once its target has them (Tansu cannot grow a
/// topic, so here the target was made with room for them), and growing past the target is
/// refused by name while the rest goes on. A topic made while mirroring is followed too.
/// No broker at all when the mirror starts: it says so in a few lines (not one per
/// connection attempt), appends go on, and once a broker listens everything ships.
#[test]
fn a_broker_absent_at_the_start_is_waited_for_with_few_log_lines() {
    if !broker::kafka_available() {
        return;
    }
    let port = broker::free_port();
    let m = Mount::new(broker::mirror_config_for(
        Config::small().set("partitions", "1"),
        port,
    ));
    m.sh_ok("mkdir late && seq -f 'early %g' 1 100 >> late/0/active");
    let mirror = MirrorProcess::start(&m);
    mirror.wait_for_log(
        "topic late is not mirrored: cannot read target topic late",
        DEADLINE,
    );
    m.sh_ok("seq -f 'meanwhile %g' 1 100 >> late/0/active");
    let broker = Broker::start_on(port);
    let records = broker.read_when_shipped("late", &[200]);
    assert_mirrored(&m, "late", &records, None);
    let log = mirror.log();
    let client_errors = log.matches("kafka: ").count();
    assert!(
        client_errors <= 10,
        "{client_errors} client error lines for one absent broker:\n{log}"
    );
}

#[test]
fn topics_and_partitions_that_appear_while_mirroring_are_followed() {
    let config = Config::small().set("partitions", "1");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    broker.create_topic("first", 3);
    m.sh_ok("mkdir first && seq -f 'one %g' 1 300 >> first/0/active");
    let mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("first", &[300]);

    m.sh_ok("setfattr -n user.partitions -v 3 first");
    m.sh_ok("seq -f 'two %g' 1 200 >> first/1/active && seq -f 'three %g' 1 100 >> first/2/active");
    m.sh_ok("mkdir second && seq -f 'new %g' 1 50 >> second/0/active");
    let records = broker.read_when_shipped("first", &[300, 200, 100]);
    assert_mirrored(&m, "first", &records, None);
    let records = broker.read_when_shipped("second", &[50]);
    assert_mirrored(&m, "second", &records, None);

    m.sh_ok("setfattr -n user.partitions -v 4 first && echo more >> first/0/active");
    mirror.wait_for_log(
        "topic first is not mirrored: its source grew to 4 partitions, and target topic first \
         (with 3) cannot be grown to match",
        DEADLINE,
    );
    let records = broker.read_when_shipped("first", &[301, 200, 100]);
    assert_mirrored(&m, "first", &records, None);
}

#[test]
fn a_target_topic_with_fewer_partitions_is_refused_by_name_and_others_go_on() {
    let config = Config::small()
        .set("partitions", "2")
        .set("mirror.target_prefix", "\"copy.\"");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    broker.create_topic("copy.narrow", 1);
    m.sh_ok("mkdir narrow wide && echo a >> narrow/0/active && echo b >> wide/1/active");
    let mirror = MirrorProcess::start(&m);
    mirror.wait_for_log(
        "topic narrow is not mirrored: target topic copy.narrow has 1 partitions, fewer than \
         the source's 2",
        DEADLINE,
    );
    let records = broker.read_when_shipped("copy.wide", &[0, 1]);
    assert_mirrored(&m, "wide", &records, None);
    assert!(broker.read_all("copy.narrow", 1)[0].is_empty());
}

#[test]
fn raw_messages_keep_their_bytes_newlines_included() {
    let config = Config::small()
        .set("partitions", "1")
        .set("framing", "\"raw\"")
        .set("key_separator", "\"=\"");
    let Some((broker, m)) = broker::broker_and_mount(config) else {
        return;
    };
    m.sh_ok("mkdir blobs");
    // One write(2) per message (printf's one write per call), newlines inside.
    m.sh_ok(
        "for i in $(seq 1 200); do printf 'k%s=line one\\nline two %s' $i $i >> blobs/0/active; done",
    );
    let _mirror = MirrorProcess::start(&m);
    let records = broker.read_when_shipped("blobs", &[200]);
    let records = &records[0];
    assert_eq!(records.len(), 200);
    for (n, record) in records.iter().enumerate() {
        let i = n + 1;
        assert_eq!(record.source_offset, Some(n as u64));
        assert_eq!(
            record.payload,
            format!("k{i}=line one\nline two {i}").as_bytes()
        );
        assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
    }
}

#[test]
fn the_mirror_unit_passes_systemd_analyze_verify() {
    if !common::fuse_available() {
        return;
    }
    let m = Mount::prepare(Config::small());
    common::assert_units_verify(&m.work, &["srv-commitfs.mount", "commitfs-mirror.service"]);
}

#[test]
fn a_bad_mirror_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("commitfs.toml");
    let run = |args: &[&str]| {
        common::Bounded::new(common::COMMITFS, Duration::from_secs(60))
            .arg("mirror")
            .args(args)
            .output()
    };
    for (text, expected) in [
        ("partitions = 2\n", "no [mirror] section"),
        (
            "[mirror]\nbrokers = \"127.0.0.1:9\"\ngroup = \"no spaces\"\n",
            "[mirror] key `group`",
        ),
        (
            "partitions = 0\n[mirror]\nbrokers = \"127.0.0.1:9\"\n",
            "key `partitions`",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = run(&["--config", config.to_str().unwrap(), "/nonexistent"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
    let out = run(&["/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config FILE is needed"));
}

/// The stall line is about messages that wait: after a quiet spell longer than the stall
/// report's 10 s, new messages that ship at once draw no stall line.
#[test]
fn a_mirror_idle_for_a_while_reports_no_stall_when_messages_come_again() {
    let Some((broker, m)) = broker::broker_and_mount(Config::small().set("partitions", "1")) else {
        return;
    };
    m.sh_ok("mkdir quiet && echo first >> quiet/0/active");
    let mirror = MirrorProcess::start(&m);
    broker.read_when_shipped("quiet", &[1]);
    std::thread::sleep(Duration::from_secs(12));
    m.sh_ok("seq 1 100 >> quiet/0/active");
    let records = broker.read_when_shipped("quiet", &[101]);
    assert_mirrored(&m, "quiet", &records, None);
    // Past the next lag measurement, when a stall line would come.
    std::thread::sleep(Duration::from_secs(2));
    let log = mirror.log();
    assert!(!log.contains("acknowledged nothing"), "{log}");
}
