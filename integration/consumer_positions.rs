//! Consumer positions (DESIGN "Consumers and the mirror"): `user.consumer.<GROUP>` on a
//! partition directory is the next offset the group will read — set with `setfattr`, durable
//! before it returns, read with `getfattr`, forgotten with `setfattr -x`; on the topic
//! directory, one `PARTITION OFFSET LAG` line per partition. Driven from the shell and from
//! Python as consumers would, across `kill -9` of the daemon and remounts.

mod common;

use common::{mount, wait_until, Config};
use std::time::Duration;

/// `user.consumer.<group>` of topic `t`, exactly as served.
fn positions(m: &common::Mount, name: &str) -> String {
    let value = common::xattr_get(&m.path("t"), name).unwrap().unwrap();
    String::from_utf8(value).unwrap()
}

#[test]
fn a_shell_consumer_resumes_where_it_stopped_across_kill_9_and_remounts() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && setfattr -n user.partitions -v 2 t && seq -f 'm%g' 0 9 >> t/0/active");
    // A consumer that reads from its position (0 when it has none) and stores the next one.
    let consume = "p=$(getfattr --only-values -n user.consumer.reader t/0 2>/dev/null || echo 0); \
                   tail -n +$((p + 1)) t/0/stream | head -n 4; \
                   setfattr -n user.consumer.reader -v $((p + 4)) t/0";
    m.sh_fails_with("getfattr -n user.consumer.reader t/0", "No such attribute");
    assert_eq!(m.sh_ok(consume), "m0\nm1\nm2\nm3\n");
    assert_eq!(
        m.sh_ok("getfattr --only-values -n user.consumer.reader t/0"),
        "4"
    );
    m.kill9();
    m.start();
    assert_eq!(m.sh_ok(consume), "m4\nm5\nm6\nm7\n");
    m.remount();
    assert_eq!(
        m.sh_ok("getfattr --only-values -n user.consumer.reader t"),
        "0 8 2\n1 - -\n"
    );
    // Listed like any stored attribute, with its value.
    let dump = m.sh_ok("getfattr -d -m user.consumer t/0");
    assert!(dump.contains("user.consumer.reader=\"8\""), "{dump}");
    m.sh_ok("setfattr -x user.consumer.reader t/0");
    m.sh_fails_with("getfattr -n user.consumer.reader t/0", "No such attribute");
    m.sh_fails_with("setfattr -x user.consumer.reader t/0", "No such attribute");
    m.kill9();
    m.start();
    m.sh_fails_with("getfattr -n user.consumer.reader t", "No such attribute");
}

#[test]
fn groups_are_independent_and_the_topic_shows_each_partitions_lag() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok(
        "mkdir t && setfattr -n user.partitions -v 3 t \
         && seq 5 >> t/0/active && seq 7 >> t/2/active",
    );
    m.sh_ok("setfattr -n user.consumer.a -v 5 t/0 && setfattr -n user.consumer.a -v 1 t/2");
    m.sh_ok("setfattr -n user.consumer.b.v2_x-y -v 0 t/1");
    assert_eq!(positions(&m, "user.consumer.a"), "0 5 0\n1 - -\n2 1 6\n");
    assert_eq!(
        positions(&m, "user.consumer.b.v2_x-y"),
        "0 - -\n1 0 0\n2 - -\n"
    );
    let names = m.sh_ok("getfattr -m user.consumer t | sort");
    assert!(
        names.contains("user.consumer.a\nuser.consumer.b.v2_x-y\n"),
        "{names}"
    );
    // The lag follows new messages.
    m.sh_ok("seq 3 >> t/2/active");
    assert_eq!(positions(&m, "user.consumer.a"), "0 5 0\n1 - -\n2 1 9\n");
    // Removing on the topic forgets the group everywhere.
    m.sh_ok("setfattr -x user.consumer.a t");
    m.sh_fails_with("getfattr -n user.consumer.a t/2", "No such attribute");
    assert_eq!(
        m.sh_ok("getfattr --only-values -n user.consumer.b.v2_x-y t/1"),
        "0"
    );
}

#[test]
fn bad_positions_and_names_are_refused_with_the_usual_errors_and_change_nothing() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq 3 >> t/0/active && setfattr -n user.consumer.g -v 2 t/0");
    for (command, error) in [
        ("setfattr -n user.consumer.g -v x t/0", "Invalid argument"),
        ("setfattr -n user.consumer.g -v -1 t/0", "Invalid argument"),
        // Past the partition's end: nothing was ever there to read.
        ("setfattr -n user.consumer.g -v 4 t/0", "Invalid argument"),
        (
            "setfattr -n 'user.consumer.a b' -v 1 t/0",
            "Invalid argument",
        ),
        ("setfattr -n user.consumer. -v 1 t/0", "Invalid argument"),
        ("getfattr -n user.consumer.a/b t/0", "Invalid argument"),
        // Positions are set per partition.
        (
            "setfattr -n user.consumer.g -v 1 t",
            "Operation not permitted",
        ),
        (
            "setfattr -n user.consumer.g -v 1 t/0/00000000000000000000.log",
            "Operation not supported",
        ),
    ] {
        m.sh_fails_with(command, error);
    }
    assert_eq!(
        m.sh_ok("getfattr --only-values -n user.consumer.g t/0"),
        "2"
    );
    let group = "g".repeat(200);
    m.sh_ok(&format!("setfattr -n user.consumer.{group} -v 3 t/0"));
    m.sh_fails_with(
        &format!("setfattr -n user.consumer.{group}x -v 3 t/0"),
        "Invalid argument",
    );
    let log = m.log_tail(40);
    assert!(log.contains("past the end of partition 0"), "{log}");
}

#[test]
fn python_consumers_use_the_create_and_replace_flags_and_retention_raises_old_positions() {
    let config = Config::small()
        .set("segment_messages", "5")
        .set("retention_check_interval_ms", "100");
    let Some(m) = mount(config) else {
        return;
    };
    m.sh_ok("mkdir t && seq -f 'm%g' 0 29 >> t/0/active");
    let script = r#"
import errno, os
d = "t/0"
name = "user.consumer.py"
os.setxattr(d, name, b"3", os.XATTR_CREATE)
try:
    os.setxattr(d, name, b"4", os.XATTR_CREATE)
    raise SystemExit("XATTR_CREATE over an existing position succeeded")
except OSError as e:
    assert e.errno == errno.EEXIST, e
try:
    os.setxattr(d, "user.consumer.other", b"1", os.XATTR_REPLACE)
    raise SystemExit("XATTR_REPLACE of a missing position succeeded")
except OSError as e:
    assert e.errno == errno.ENODATA, e
os.setxattr(d, name, b"12", os.XATTR_REPLACE)
print(os.getxattr(d, name).decode())
print(sorted(n for n in os.listxattr(d) if n.startswith("user.consumer.")))
"#;
    assert_eq!(
        m.sh_ok(&format!("timeout 20 python3 -c '{script}'")),
        "12\n['user.consumer.py']\n"
    );
    // Retention removes whole segments the group had not read: its position reads as the
    // new start.
    m.sh_ok("setfattr -n user.retention_bytes -v 20 t");
    wait_until(
        Duration::from_secs(30),
        "retention removes old segments",
        || common::xattr_u64(&m.path("t/0"), "user.start_offset") > 12,
    );
    let start = common::xattr_u64(&m.path("t/0"), "user.start_offset");
    assert_eq!(common::xattr_u64(&m.path("t/0"), "user.consumer.py"), start);
}

#[test]
fn a_deleted_topics_positions_do_not_come_back_under_its_name() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq 3 >> t/0/active && setfattr -n user.consumer.g -v 3 t/0");
    m.sh_ok("rmdir t && mkdir t && seq 3 >> t/0/active");
    m.sh_fails_with("getfattr -n user.consumer.g t/0", "No such attribute");
}

#[test]
fn check_names_a_damaged_positions_file_and_repair_keeps_the_positions_before_the_damage() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq 9 >> t/0/active");
    for (group, position) in [("a", 1), ("b", 2), ("c", 3)] {
        m.sh_ok(&format!(
            "setfattr -n user.consumer.{group} -v {position} t/0"
        ));
    }
    m.unmount();
    let file = m.data.join("queues/1/0/consumers");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a 1\nb 2\nc 3\n");
    // A flipped bit in b's position.
    std::fs::write(&file, "a 1\nb 0\x02\nc 3\n").unwrap();
    let check = |args: &[&str]| {
        common::Bounded::new(common::COMMITFS, Duration::from_secs(60))
            .args(args)
            .arg(&m.data)
            .output()
    };
    let found = check(&["check"]);
    let report = String::from_utf8_lossy(&found.stdout);
    assert_eq!(found.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("{} byte 4:", file.display())),
        "{report}"
    );
    let repaired = check(&["check", "--repair"]);
    let report = String::from_utf8_lossy(&repaired.stdout);
    // Exit 1: damage was found (and repaired).
    assert_eq!(repaired.status.code(), Some(1), "{report}");
    assert!(
        report.contains("kept the positions of 1 group(s)"),
        "{report}"
    );
    assert_eq!(check(&["check"]).status.code(), Some(0));
    m.start();
    assert_eq!(
        m.sh_ok("getfattr --only-values -n user.consumer.a t/0"),
        "1"
    );
    m.sh_fails_with("getfattr -n user.consumer.b t/0", "No such attribute");
    assert!(m.data.join("queues/1/0/consumers.damaged").exists());
}

#[test]
fn a_damaged_positions_file_is_an_io_error_for_its_groups_and_hides_no_other_attribute() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq 3 >> t/0/active && setfattr -n user.consumer.g -v 2 t/0");
    m.unmount();
    std::fs::write(m.data.join("queues/1/0/consumers"), "g \u{1}\n").unwrap();
    m.start();
    m.sh_fails_with("getfattr -n user.consumer.g t/0", "Input/output error");
    let listed = m.sh_ok("getfattr -d t/0");
    assert!(listed.contains("user.end_offset=\"3\""), "{listed}");
    assert!(m.log_tail(20).contains("consumers"), "{}", m.log_tail(20));
}
