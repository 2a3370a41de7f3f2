//! Keys, offsets and times through extended attributes (issue 4), asked the way users ask: with
//! `getfattr`/`setfattr`, Python's `os.getxattr`, the `xattr` crate, and raw `getxattr(2)` where
//! the size-probe protocol itself is under test.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::{
    assert_errno, kafka_partition, mount, now_ms, raw_getxattr, raw_listxattr, segment_name,
    xattr_get, xattr_names, xattr_text, xattr_u64, Config, Mount,
};

/// `getfattr -n NAME --only-values PATH`: the value's raw bytes.
fn getfattr(m: &Mount, path: &str, name: &str) -> Vec<u8> {
    m.sh_bytes(&format!("getfattr -n '{name}' --only-values '{path}'"))
}

fn getfattr_text(m: &Mount, path: &str, name: &str) -> String {
    String::from_utf8(getfattr(m, path, name))
        .unwrap()
        .trim()
        .to_owned()
}

/// `PARTITION OFFSET` lines, as pairs.
fn parse_offsets(value: &[u8]) -> Vec<(u32, u64)> {
    String::from_utf8(value.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut fields = l.split_whitespace();
            let pair = (
                fields.next().unwrap().parse().unwrap(),
                fields.next().unwrap().parse().unwrap(),
            );
            assert_eq!(fields.next(), None, "offsets line {l:?}");
            pair
        })
        .collect()
}

/// What the store should hold: every keyed message in write order, with where it went.
#[derive(Default)]
struct Model {
    next_offset: HashMap<u32, u64>,
    messages: Vec<(String, u32, u64, String)>, // key, partition, offset, line
}

impl Model {
    /// Appends `key:payload` through the topic's `append` file, predicting its partition.
    fn append(&mut self, m: &Mount, topic: &str, partitions: u32, key: &str, payload: &str) {
        let line = format!("{key}:{payload}");
        m.sh_ok(&format!("echo '{line}' >> {topic}/append"));
        let partition = kafka_partition(key.as_bytes(), partitions);
        let offset = self.next_offset.entry(partition).or_default();
        self.messages
            .push((key.to_owned(), partition, *offset, format!("{line}\n")));
        *offset += 1;
    }

    fn newest(&self, key: &str) -> Option<&(String, u32, u64, String)> {
        self.messages.iter().rev().find(|(k, ..)| k == key)
    }

    fn offsets(&self, key: &str, partition: Option<u32>) -> Vec<(u32, u64)> {
        self.messages
            .iter()
            .filter(|(k, p, ..)| k == key && partition.is_none_or(|want| *p == want))
            .map(|(_, p, o, _)| (*p, *o))
            .collect()
    }

    /// Every key's newest message and offsets list, asked on the topic and on each partition.
    fn check(&self, m: &Mount, topic: &str, partitions: u32) {
        let mut keys: Vec<&str> = self.messages.iter().map(|(k, ..)| k.as_str()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (_, newest_partition, _, newest_line) = self.newest(key).unwrap();
            assert_eq!(
                String::from_utf8(getfattr(m, topic, &format!("user.key.{key}"))).unwrap(),
                *newest_line,
                "newest message with key {key} on {topic}"
            );
            assert_eq!(
                parse_offsets(&getfattr(m, topic, &format!("user.offsets.{key}"))),
                self.offsets(key, None),
                "offsets of key {key} on {topic}"
            );
            for p in 0..partitions {
                let dir = m.path(&format!("{topic}/{p}"));
                let in_partition = self.offsets(key, Some(p));
                let newest_here = xattr_get(&dir, &format!("user.key.{key}")).unwrap();
                let offsets_here = xattr_get(&dir, &format!("user.offsets.{key}")).unwrap();
                if in_partition.is_empty() {
                    assert_eq!(newest_here, None, "key {key} is not in {topic}/{p}");
                    assert_eq!(offsets_here, None, "key {key} is not in {topic}/{p}");
                    continue;
                }
                let newest_line_here = &self
                    .messages
                    .iter()
                    .rev()
                    .find(|(k, mp, ..)| k == key && *mp == p)
                    .unwrap()
                    .3;
                assert_eq!(
                    newest_here.as_deref(),
                    Some(newest_line_here.as_bytes()),
                    "{topic}/{p} key {key}"
                );
                assert_eq!(
                    parse_offsets(&offsets_here.unwrap()),
                    in_partition,
                    "{topic}/{p} offsets of {key}"
                );
                if p == *newest_partition {
                    assert_eq!(newest_line_here, newest_line);
                }
            }
        }
    }
}

fn keyed_topic(m: &Mount, topic: &str) {
    m.sh_ok(&format!(
        "mkdir {topic} && setfattr -n user.key_separator -v : {topic}"
    ));
}

#[test]
fn getfattr_user_key_returns_the_newest_message_with_that_key() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "orders");
    let mut model = Model::default();
    model.append(&m, "orders", 2, "order-42", "created");
    model.append(&m, "orders", 2, "order-7", "created");
    model.append(&m, "orders", 2, "order-42", "paid");

    assert_eq!(
        m.sh_ok("getfattr -n user.key.order-42 --only-values orders"),
        "order-42:paid\n",
        "the newest message, its bytes"
    );
    let p = kafka_partition(b"order-42", 2);
    assert_eq!(
        getfattr(&m, &format!("orders/{p}"), "user.key.order-42"),
        b"order-42:paid\n"
    );
    m.sh_fails_with(
        &format!("getfattr -n user.key.order-42 orders/{}", 1 - p),
        "No such attribute",
    );
    model.check(&m, "orders", 2);
}

#[test]
fn user_offsets_lists_every_message_with_the_key_oldest_first_across_partition_growth() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "orders");
    let mut model = Model::default();
    for round in 0..3 {
        for k in 0..12 {
            model.append(
                &m,
                "orders",
                2,
                &format!("order-{k}"),
                &format!("round-{round}"),
            );
        }
    }
    model.check(&m, "orders", 2);

    // Growing the topic moves keys from now on; lookups still find the older messages.
    m.sh_ok("setfattr -n user.partitions -v 8 orders");
    let moved = (0..12)
        .filter(|k| {
            kafka_partition(format!("order-{k}").as_bytes(), 2)
                != kafka_partition(format!("order-{k}").as_bytes(), 8)
        })
        .count();
    assert!(moved > 0, "some keys change partition when growing to 8");
    for k in 0..12 {
        model.append(&m, "orders", 8, &format!("order-{k}"), "after-growth");
    }
    model.check(&m, "orders", 8);
}

#[test]
fn getfattr_dump_lists_only_the_fixed_names() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "t");
    m.sh_ok("for i in $(seq 0 149); do echo \"key-$i:value\" >> t/0/active; done");

    let topic_names = [
        "user.framing",
        "user.key_separator",
        "user.partitions",
        "user.retention_bytes",
        "user.retention_ms",
    ];
    let partition_names = ["user.end_offset", "user.start_offset"];
    let segment_names = [
        "user.base_offset",
        "user.end_offset",
        "user.first_timestamp",
        "user.last_timestamp",
        "user.materialized",
        "user.messages",
        "user.sealed",
    ];
    let sealed = format!("t/0/{}", segment_name(0));
    for (path, fixed, required) in [
        (
            "t",
            &topic_names[..],
            &["user.framing", "user.key_separator", "user.partitions"][..],
        ),
        ("t/0", &partition_names[..], &partition_names[..]),
        (sealed.as_str(), &segment_names[..], &segment_names[..]),
        ("t/0/active", &segment_names[..], &segment_names[..]),
    ] {
        let listed = xattr_names(&m.path(path));
        for name in &listed {
            assert!(
                fixed.contains(&name.as_str()),
                "{path} lists {name}, not a fixed name"
            );
        }
        for name in required {
            assert!(
                listed.iter().any(|l| l == name),
                "{path} does not list {name}: {listed:?}"
            );
        }
        // `getfattr -d` shows the same names, each with a value it could read.
        let dump = m.sh_ok(&format!("getfattr -d {path}"));
        let dumped: Vec<&str> = dump
            .lines()
            .filter_map(|l| l.split_once('=').map(|(n, _)| n))
            .collect();
        assert_eq!(dumped, listed, "getfattr -d {path}:\n{dump}");
    }
}

#[test]
fn setfattr_user_partitions_grows_the_topic_and_shrinking_is_refused() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t");
    assert_eq!(getfattr_text(&m, "t", "user.partitions"), "2");

    m.sh_ok("setfattr -n user.partitions -v 8 t");
    let listing: Vec<String> = m.sh_ok("ls t").lines().map(str::to_owned).collect();
    assert_eq!(listing, ["0", "1", "2", "3", "4", "5", "6", "7", "append"]);
    assert_eq!(getfattr_text(&m, "t", "user.partitions"), "8");
    m.sh_ok("echo into-the-new-partition >> t/7/active");
    assert_eq!(m.sh_ok("cat t/7/active"), "into-the-new-partition\n");

    m.sh_fails_with("setfattr -n user.partitions -v 4 t", "Invalid argument");
    assert_errno(
        xattr::set(m.path("t"), "user.partitions", b"7"),
        libc::EINVAL,
        "shrinking partitions",
    );
    assert_errno(
        xattr::set(m.path("t"), "user.partitions", b"eight"),
        libc::EINVAL,
        "partitions = eight",
    );
    assert_eq!(getfattr_text(&m, "t", "user.partitions"), "8");
    assert_eq!(m.sh_ok("ls t").lines().count(), 9);
}

/// `date -u` in RFC 3339 with milliseconds, for a time in ms since the epoch.
fn rfc3339_ms(m: &Mount, ms: i64, zone: &str) -> String {
    let shown = m.sh_ok(&format!(
        "TZ={zone} date -d @{}.{:03} +%Y-%m-%dT%H:%M:%S.%3N%:z",
        ms / 1000,
        ms % 1000
    ));
    shown.trim().replace("+00:00", "Z")
}

#[test]
fn getfattr_user_time_finds_the_first_offset_at_or_after_a_time() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq 0 4 | sed 's/^/early-/' >> t/0/active");
    thread::sleep(Duration::from_millis(5)); // a millisecond between the batches
    let between = now_ms();
    thread::sleep(Duration::from_millis(5));
    m.sh_ok("seq 5 9 | sed 's/^/late-/' >> t/0/active");
    let after_all = now_ms();

    let time = |t: &str| getfattr_text(&m, "t/0", &format!("user.time.{t}"));
    assert_eq!(
        time("2026-01-01T00:00:00Z"),
        "0",
        "every message is newer than the start of 2026"
    );
    assert_eq!(time("2000-01-01T00:00:00Z"), "0");
    assert_eq!(
        time(&between.to_string()),
        "5",
        "milliseconds since the epoch"
    );
    assert_eq!(
        time(&rfc3339_ms(&m, between, "UTC")),
        "5",
        "RFC 3339 with milliseconds"
    );
    assert_eq!(
        time(&rfc3339_ms(&m, between, "IST-5:30")),
        "5",
        "RFC 3339 with a zone offset"
    );

    let segment = m.path(&format!("t/0/{}", segment_name(0)));
    let first = xattr_u64(&segment, "user.first_timestamp");
    let last = xattr_u64(&segment, "user.last_timestamp");
    assert!(first < between as u64 && (between as u64) <= last && last <= after_all as u64);
    assert_eq!(time(&first.to_string()), "0");
    // Several late messages may share the last millisecond: the first of them is the answer.
    let at_last: u64 = time(&last.to_string()).parse().unwrap();
    assert!((5..=9).contains(&at_last), "user.time.{last} = {at_last}");
}

#[test]
fn user_offset_locator_fed_to_dd_returns_exactly_that_message() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok(
        "mkdir t && i=0; while [ $i -lt 250 ]; do printf 'message-%d %*s\\n' $i $((i % 13)) '' \
         >> t/0/active; i=$((i+1)); done",
    );
    let message = |n: u64| format!("message-{n} {}\n", " ".repeat((n % 13) as usize));
    for n in [0, 1, 57, 99, 100, 101, 199, 200, 234, 249] {
        let locator = getfattr_text(&m, "t/0", &format!("user.offset.{n}"));
        let fields: Vec<&str> = locator.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            3,
            "SEGMENT_FILE BYTE_POSITION LENGTH, got {locator:?}"
        );
        assert_eq!(
            fields[0],
            segment_name(n / 100 * 100),
            "segment of message {n}"
        );
        let got = m.sh_bytes(&format!(
            "dd if=t/0/{} skip={} count={} iflag=skip_bytes,count_bytes status=none",
            fields[0], fields[1], fields[2]
        ));
        assert_eq!(
            String::from_utf8(got).unwrap(),
            message(n),
            "message {n} via {locator:?}"
        );
    }
    assert_errno(
        raw_getxattr(&m.path("t/0"), "user.offset.250", 4096),
        libc::ENODATA,
        "user.offset of the next, not yet stored offset",
    );
}

#[test]
fn python_os_getxattr_and_the_xattr_crate_see_what_getfattr_sees() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "orders");
    let mut model = Model::default();
    model.append(&m, "orders", 2, "order-42", "created");
    model.append(&m, "orders", 2, "order-42", "shipped");
    let p = kafka_partition(b"order-42", 2);
    let partition = format!("orders/{p}");

    let python = |path: &str, name: &str| -> Vec<u8> {
        m.sh_bytes(&format!(
            "python3 -c 'import os, sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2]))' \
             '{path}' '{name}'"
        ))
    };
    for (path, name) in [
        ("orders", "user.key.order-42"),
        ("orders", "user.offsets.order-42"),
        ("orders", "user.partitions"),
        (partition.as_str(), "user.key.order-42"),
        (partition.as_str(), "user.offset.1"),
        (partition.as_str(), "user.end_offset"),
        (partition.as_str(), "user.time.2026-01-01T00:00:00Z"),
    ] {
        let tool = getfattr(&m, path, name);
        assert_eq!(
            python(path, name),
            tool,
            "python vs getfattr: {path} {name}"
        );
        let from_crate = xattr_get(&m.path(path), name).unwrap();
        assert_eq!(
            from_crate.as_deref(),
            Some(&tool[..]),
            "xattr crate vs getfattr: {path} {name}"
        );
    }
    assert_eq!(
        getfattr(&m, "orders", "user.key.order-42"),
        b"order-42:shipped\n"
    );

    let errno = m.sh_ok(&format!(
        "python3 -c 'import os\ntry:\n os.getxattr(\"{partition}\", \"user.key.order-7\")\nexcept OSError as e:\n print(e.errno)'"
    ));
    assert_eq!(
        errno.trim(),
        libc::ENODATA.to_string(),
        "python sees ENODATA for an unknown key"
    );
}

#[test]
fn unknown_names_and_keys_are_enodata() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "t");
    m.sh_ok("echo known:1 >> t/append");
    for (path, name) in [
        ("t", "user.nosuch"),
        ("t", "user.key.unknown"),
        ("t", "user.offsets.unknown"),
        ("t/0", "user.key.unknown"),
        ("t/0", "user.nosuch"),
        ("t/0/active", "user.nosuch"),
    ] {
        for size in [0, 4096] {
            assert_errno(
                raw_getxattr(&m.path(path), name, size),
                libc::ENODATA,
                &format!("{path} {name} (size {size})"),
            );
        }
    }
    m.sh_fails_with("getfattr -n user.key.unknown t", "No such attribute");
}

#[test]
fn unparsable_values_are_einval() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && echo x >> t/0/active");
    for name in [
        "user.time.notatime",
        "user.time.2026-13-45T00:00:00Z",
        "user.offset.x",
        "user.offset.-1",
    ] {
        assert_errno(raw_getxattr(&m.path("t/0"), name, 4096), libc::EINVAL, name);
    }
    m.sh_fails_with("getfattr -n user.time.notatime t/0", "Invalid argument");
    m.sh_fails_with("setfattr -n user.framing -v bogus t", "Invalid argument");
    assert_errno(
        xattr::set(m.path("t"), "user.retention_ms", b"soon"),
        libc::EINVAL,
        "retention_ms = soon",
    );
}

#[test]
fn setting_read_only_names_is_eperm() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && echo x >> t/0/active");
    m.sh_fails_with(
        "setfattr -n user.end_offset -v 5 t/0",
        "Operation not permitted",
    );
    assert_errno(
        xattr::set(m.path("t/0"), "user.end_offset", b"5"),
        libc::EPERM,
        "set user.end_offset",
    );
    assert_errno(
        xattr::set(m.path("t/0"), "user.start_offset", b"0"),
        libc::EPERM,
        "set user.start_offset",
    );
    let segment = m.path(&format!("t/0/{}", segment_name(0)));
    assert_errno(
        xattr::set(&segment, "user.sealed", b"1"),
        libc::EPERM,
        "set user.sealed",
    );
    assert_eq!(xattr_u64(&m.path("t/0"), "user.end_offset"), 1);
}

#[test]
fn a_too_small_buffer_gets_erange_never_a_cut_value() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "t");
    m.sh_ok("echo 'k:0123456789' >> t/append");
    let topic = m.path("t");
    let value = b"k:0123456789\n";

    let (probed, _) = raw_getxattr(&topic, "user.key.k", 0).unwrap();
    assert_eq!(probed, value.len(), "size 0 asks for the length");
    for small in [1, value.len() - 1] {
        assert_errno(
            raw_getxattr(&topic, "user.key.k", small),
            libc::ERANGE,
            &format!("buffer of {small}"),
        );
    }
    assert_eq!(
        raw_getxattr(&topic, "user.key.k", value.len()).unwrap(),
        (value.len(), value.to_vec())
    );
    assert_eq!(raw_getxattr(&topic, "user.key.k", 4096).unwrap().1, value);

    let (list_len, _) = raw_listxattr(&topic, 0).unwrap();
    assert!(list_len > 1);
    assert_errno(
        raw_listxattr(&topic, list_len - 1),
        libc::ERANGE,
        "listxattr buffer one byte short",
    );
    assert_eq!(raw_listxattr(&topic, list_len).unwrap().0, list_len);
}

#[test]
fn a_message_over_64_kib_under_user_key_is_e2big() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "t");
    // One line from three writes: the key, 70,000 bytes, the newline.
    m.sh_ok("{ printf 'big:'; head -c 70000 /dev/zero | tr '\\0' x; echo; } >> t/append");
    let topic = m.path("t");
    for size in [0, 65536] {
        assert_errno(
            raw_getxattr(&topic, "user.key.big", size),
            libc::E2BIG,
            &format!("size {size}"),
        );
    }
    assert_errno(
        xattr_get(&topic, "user.key.big"),
        libc::E2BIG,
        "xattr crate",
    );
    m.sh_fails_with("getfattr -n user.key.big t", "Argument list too long");

    // The message itself is stored whole, and its offsets are small enough to ask for.
    let offsets = getfattr_text(&m, "t", "user.offsets.big");
    let (p, offset) = offsets.split_once(' ').unwrap();
    let locator = getfattr_text(&m, &format!("t/{p}"), &format!("user.offset.{offset}"));
    assert_eq!(
        locator.split_whitespace().nth(2),
        Some("70005"),
        "locator {locator}"
    );
}

#[test]
fn keys_survive_kill_9_and_a_remount() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    keyed_topic(&m, "orders");
    let mut model = Model::default();
    for round in 0..5 {
        for k in 0..40 {
            model.append(&m, "orders", 2, &format!("order-{k}"), &format!("v{round}"));
        }
    }
    model.check(&m, "orders", 2);

    m.kill9();
    m.start();
    model.check(&m, "orders", 2);

    model.append(&m, "orders", 2, "order-3", "after-crash");
    m.remount();
    model.check(&m, "orders", 2);
}

#[test]
fn topic_settings_persist_across_a_remount() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok(
        "mkdir t && setfattr -n user.partitions -v 5 t && setfattr -n user.framing -v raw t && \
         setfattr -n user.key_separator -v ';' t && setfattr -n user.retention_ms -v 86400000 t && \
         setfattr -n user.retention_bytes -v 1000000000 t",
    );
    let settings = [
        ("user.partitions", "5"),
        ("user.framing", "raw"),
        ("user.key_separator", ";"),
        ("user.retention_ms", "86400000"),
        ("user.retention_bytes", "1000000000"),
    ];
    let read_all = |m: &Mount| -> Vec<(String, String)> {
        settings
            .iter()
            .map(|(name, _)| (name.to_string(), getfattr_text(m, "t", name)))
            .collect()
    };
    let expected: Vec<(String, String)> = settings
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(read_all(&m), expected);

    m.remount();
    assert_eq!(read_all(&m), expected);
    assert_eq!(
        m.sh_ok("ls t").lines().count(),
        6,
        "five partitions and append"
    );
    // Raw framing still applies: one write, one message, newline or not.
    m.sh_ok("printf 'one;two' >> t/4/active");
    assert_eq!(xattr_u64(&m.path("t/4"), "user.end_offset"), 1);
    assert_eq!(getfattr(&m, "t", "user.key.one"), b"one;two");
}

fn parse_bool(text: &str) -> bool {
    match text {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" => false,
        other => panic!("not a boolean: {other:?}"),
    }
}

#[test]
fn segment_and_partition_facts() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    let before = now_ms() as u64;
    m.sh_ok("mkdir t && seq 0 149 | sed 's/^/line-/' >> t/0/active");
    let after = now_ms() as u64;

    let partition = m.path("t/0");
    assert_eq!(xattr_u64(&partition, "user.start_offset"), 0);
    assert_eq!(xattr_u64(&partition, "user.end_offset"), 150);
    assert_eq!(xattr_u64(&m.path("t/1"), "user.end_offset"), 0);

    for (base, end, sealed) in [(0, 100, true), (100, 150, false)] {
        let segment = m.path(&format!("t/0/{}", segment_name(base)));
        let name = segment.display().to_string();
        assert_eq!(xattr_u64(&segment, "user.base_offset"), base, "{name}");
        assert_eq!(xattr_u64(&segment, "user.end_offset"), end, "{name}");
        assert_eq!(xattr_u64(&segment, "user.messages"), end - base, "{name}");
        assert_eq!(
            parse_bool(&xattr_text(&segment, "user.sealed")),
            sealed,
            "{name}"
        );
        let first = xattr_u64(&segment, "user.first_timestamp");
        let last = xattr_u64(&segment, "user.last_timestamp");
        assert!(
            before <= first && first <= last && last <= after,
            "{name}: {first}..{last} not in {before}..{after}"
        );
    }
    // The `active` symlink leads to the active segment's facts.
    assert_eq!(getfattr_text(&m, "t/0/active", "user.base_offset"), "100");
    assert!(!fs::read_link(m.path("t/0/active")).unwrap().is_absolute());
    assert!(Path::new(&m.path("t/0/active")).exists());
}
