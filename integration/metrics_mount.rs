//! Prometheus metrics through a mount (issue 10): `metrics_listen` serves `/metrics`, whose
//! counters move with appends made by shell tools; unset, the daemon listens on nothing; an
//! address in use refuses the mount with a message naming the key.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

mod common;
use common::{http_get, Bounded, Config, Mount};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the sample `name` (with its labels, as written in the text) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().unwrap())
    })
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The TCP ports the process `pid` listens on (its socket descriptors that /proc/net/tcp
/// and tcp6 list in state LISTEN).
fn listening_ports(pid: i32) -> Vec<u16> {
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let fields: Vec<&str> = row.split_whitespace().collect();
            if fields[3] == "0A" && sockets.iter().any(|s| s == fields[9]) {
                let port = fields[1].rsplit_once(':').unwrap().1;
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// The daemon serving `mnt`: the commitfs process whose command line names it.
fn daemon_pid(mnt: &Path) -> i32 {
    let wanted = mnt.to_string_lossy().into_owned();
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let commitfs = args.first()?.ends_with("commitfs") && args.contains(&wanted);
            commitfs.then_some(pid)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "daemons serving {}: {found:?}",
        mnt.display()
    );
    found[0]
}

#[test]
fn the_endpoint_counts_appends_per_topic_reads_and_request_latencies() {
    let port = free_port();
    let listen = format!("\"127.0.0.1:{port}\"");
    let Some(m) = common::mount(Config::small().set("metrics_listen", &listen)) else {
        return;
    };
    assert_eq!(listening_ports(daemon_pid(&m.mnt)), vec![port]);
    m.sh_ok("mkdir orders other");
    let before = scrape(port);
    assert_eq!(
        sample(
            &before,
            "commitfs_appended_messages_total{topic=\"orders\"}"
        ),
        None
    );
    assert!(
        sample(&before, "commitfs_store_open_seconds").is_some(),
        "{before}"
    );
    assert!(
        sample(&before, "commitfs_disk_bytes").unwrap() > 0.0,
        "{before}"
    );

    m.sh_ok("echo hello >> orders/0/active && printf 'a\\nbb\\n' >> orders/1/active");
    let after = scrape(port);
    let orders = |name: &str| {
        sample(
            &after,
            &format!("commitfs_{name}_total{{topic=\"orders\"}}"),
        )
    };
    assert_eq!(orders("appended_messages"), Some(3.0), "{after}");
    assert_eq!(orders("appended_bytes"), Some(11.0), "{after}");
    assert_eq!(
        sample(&after, "commitfs_appended_messages_total{topic=\"other\"}"),
        None
    );
    let writes = sample(&after, "commitfs_fuse_request_seconds_count{op=\"write\"}");
    assert!(writes.is_some_and(|n| n >= 2.0), "{after}");
    let all_writes = "commitfs_fuse_request_seconds_bucket{le=\"+Inf\",op=\"write\"}";
    assert_eq!(sample(&after, all_writes), writes, "{after}");

    m.sh_ok("echo more >> other/0/active");
    assert_eq!(m.sh_ok("cat orders/0/active"), "hello\n");
    let last = scrape(port);
    assert_eq!(
        sample(&last, "commitfs_appended_messages_total{topic=\"other\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&last, "commitfs_appended_messages_total{topic=\"orders\"}"),
        Some(3.0)
    );
    assert!(
        sample(&last, "commitfs_reads_total").unwrap() >= 1.0,
        "{last}"
    );
    assert!(
        sample(&last, "commitfs_read_bytes_total").unwrap() >= 6.0,
        "{last}"
    );
    assert_eq!(http_get(port, "/").0, 404);
}

#[test]
fn without_metrics_listen_the_daemon_listens_on_nothing() {
    let Some(m) = common::mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && echo x >> t/0/active");
    assert_eq!(listening_ports(daemon_pid(&m.mnt)), Vec::<u16>::new());
}

#[test]
fn an_address_in_use_refuses_the_mount_naming_the_key() {
    if !common::fuse_available() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let m = Mount::prepare(Config::small());
    let config = m.work.join("metrics.toml");
    std::fs::write(&config, format!("metrics_listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let output = Bounded::new(common::COMMITFS, Duration::from_secs(60))
        .arg("mount")
        .arg("--config")
        .arg(&config)
        .arg(&m.data)
        .arg(&m.mnt)
        .output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("metrics_listen = \"127.0.0.1:{port}\""))
            && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!common::is_mounted(&m.mnt));
}
