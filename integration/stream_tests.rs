//! A partition's `stream` file (DESIGN "Reading and following"): every message of the
//! partition in offset order, as one file that never rolls, at positions that never move.
//! `tail -f stream` follows at any rate; `tail -n`, `wc`, `dd skip=` work; bytes below the
//! first message still stored fail with ENXIO and `user.start_position` says where the
//! readable bytes start; it is read-only.

mod common;

use std::time::Duration;

use common::{lines_of, mount, wait_until, xattr_u64, Config};

fn numbered(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("line-{i:05}")).collect()
}

#[test]
fn tail_f_on_stream_follows_every_line_across_hundreds_of_rolls() {
    // Five messages a segment: the 3,000 lines roll 600 segments, faster than any poll of
    // `tail -F active` could follow.
    let Some(m) = mount(Config::small().set("segment_messages", "5")) else {
        return;
    };
    m.sh_ok("mkdir t && echo line-00000 >> t/0/active");
    let deadline = Duration::from_secs(60);
    let tail = common::tail_f(&m, "t/0/stream", 1, deadline);
    // In bursts, with pauses shorter and longer than tail's one-second poll.
    for (burst, pause) in [(1..700, 0), (700..1400, 300), (1400..3000, 1500)] {
        let (from, to) = (burst.start, burst.end - 1);
        m.sh_ok(&format!(
            "seq -f 'line-%05g' {from} {to} >> t/0/active && sleep {}",
            f64::from(pause) / 1000.0
        ));
    }
    wait_until(deadline, "tail -f prints all 3,000 lines", || {
        lines_of(&tail.output()).len() >= 3000
    });
    assert_eq!(lines_of(&tail.output()), numbered(0..3000));
}

#[test]
fn stream_is_every_segment_as_one_file_for_wc_tail_dd_and_stat() {
    let Some(m) = mount(Config::small().set("segment_messages", "7")) else {
        return;
    };
    m.sh_ok("mkdir t && seq -f 'line-%05g' 0 99 >> t/0/active");
    let all = m.sh_bytes("cat t/0/0000*.log");
    assert_eq!(m.sh_bytes("cat t/0/stream"), all);
    assert_eq!(m.sh_ok("wc -l < t/0/stream").trim(), "100");
    assert_eq!(
        m.sh_ok("stat -c %s t/0/stream").trim(),
        all.len().to_string()
    );
    assert_eq!(
        lines_of(&m.sh_bytes("tail -n 3 t/0/stream")),
        numbered(97..100)
    );
    // Line 42 starts at byte 42 * 11 ("line-00042\n" is 11 bytes).
    assert_eq!(
        m.sh_ok("dd if=t/0/stream bs=11 skip=42 count=1 status=none"),
        "line-00042\n"
    );
    assert!(m.sh_ok("ls t/0").lines().any(|name| name == "stream"));
    assert_eq!(xattr_u64(&m.path("t/0/stream"), "user.start_position"), 0);
    // Read-only, like a sealed segment.
    m.sh_fails_with("echo x >> t/0/stream", "Operation not permitted");
    m.sh_fails_with("truncate -s 0 t/0/stream", "Operation not permitted");
    assert_eq!(m.sh_bytes("cat t/0/stream"), all);
}

#[test]
fn bytes_below_the_first_stored_message_are_enxio_and_later_positions_never_move() {
    let config = Config::small()
        .set("segment_messages", "1000")
        .set("retention_check_interval_ms", "100");
    let Some(mut m) = mount(config) else {
        return;
    };
    m.sh_ok("mkdir t && seq -f 'line-%05g' 0 1899 >> t/0/active");
    let before = m.sh_bytes("cat t/0/stream");
    m.sh_ok("setfattr -n user.retention_ms -v 1 t");
    // The sealed segment (offsets 0..999) expires; the active one stays.
    wait_until(Duration::from_secs(30), "the expired segment to go", || {
        xattr_u64(&m.path("t/0"), "user.start_offset") == 1000
    });
    let start = xattr_u64(&m.path("t/0/stream"), "user.start_position");
    assert_eq!(start, 1000 * 11);
    assert_eq!(
        m.sh_ok("stat -c %s t/0/stream").trim(),
        before.len().to_string(),
        "the size counts every byte ever stored"
    );
    m.sh_fails_with(
        "dd if=t/0/stream bs=11 count=1 status=none",
        "No such device or address",
    );
    m.sh_fails_with(
        "dd if=t/0/stream bs=11 skip=999 count=1 status=none",
        "No such device or address",
    );
    let kept = m.sh_bytes(&format!("dd if=t/0/stream bs={start} skip=1 status=none"));
    assert_eq!(kept, &before[start as usize..], "positions did not move");
    assert_eq!(
        lines_of(&m.sh_bytes("tail -n 2 t/0/stream")),
        numbered(1898..1900)
    );
    assert_eq!(
        lines_of(&m.sh_bytes("tail -c 22 t/0/stream")),
        numbered(1898..1900)
    );

    // After a remount too, and new lines go on from there.
    m.unmount();
    m.start();
    m.sh_ok("echo line-01900 >> t/0/active");
    let kept = m.sh_bytes(&format!("dd if=t/0/stream bs={start} skip=1 status=none"));
    assert_eq!(lines_of(&kept), numbered(1000..1901));
    assert_eq!(
        xattr_u64(&m.path("t/0/stream"), "user.start_position"),
        start
    );
}
