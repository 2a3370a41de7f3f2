//! Sealed segments as files of their own (issue 8): a background thread copies each sealed
//! segment to `DATA/segments/<topic id>/<partition>/<base>.log`; `user.materialized` says so;
//! opens are then passed through to that file (no READ reaches the daemon) or, with
//! passthrough off, served by the daemon from it. Retention and the disk ceiling delete
//! those files; lookups keep working; a damaged log is never copied; a `kill -9` part way
//! leaves no half file that is served.

mod common;

use std::fs;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{segment_name, wait_until, xattr_get, xattr_text, Config, Mount};

/// How long the background copy may take before a test calls it stuck.
const COPY_DEADLINE: Duration = Duration::from_secs(60);

/// One partition per topic, so `t/0` gets every line.
fn config() -> Config {
    Config::small()
        .set("partitions", "1")
        .set("retention_check_interval_ms", "200")
}

/// Lines `message-<from>` to `message-<to - 1>`, as `seq | sed` writes them.
fn lines(from: u64, to: u64) -> Vec<u8> {
    (from..to)
        .flat_map(|n| format!("message-{n}\n").into_bytes())
        .collect()
}

fn append_lines(m: &Mount, dir: &str, from: u64, to: u64) {
    m.sh_ok(&format!(
        "seq {from} {} | sed 's/^/message-/' >> {dir}/active",
        to - 1
    ));
}

fn segment(m: &Mount, dir: &str, base: u64) -> PathBuf {
    m.path(&format!("{dir}/{}", segment_name(base)))
}

/// The segment's own file in the data directory (topic id 1 is the first topic made).
fn own_file(m: &Mount, topic_id: u32, base: u64) -> PathBuf {
    m.data
        .join(format!("segments/{topic_id}/0"))
        .join(segment_name(base))
}

fn materialized(path: &Path) -> bool {
    xattr_text(path, "user.materialized") == "true"
}

fn wait_materialized(m: &Mount, path: &Path) {
    wait_until(
        COPY_DEADLINE,
        &format!("{} to be materialized\n{}", path.display(), m.log_tail(20)),
        || materialized(path),
    );
}

fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn sealed_segments_become_files_read_by_the_kernel_without_read_requests() {
    let Some(m) = common::mount(config()) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 250);
    for base in [0, 100] {
        wait_materialized(&m, &segment(&m, "t/0", base));
        assert_eq!(
            read_all(&own_file(&m, 1, base)),
            lines(base, base + 100),
            "the file of segment {base} in the data directory"
        );
    }
    assert_eq!(
        xattr_text(&m.path("t/0/active"), "user.materialized"),
        "false"
    );
    assert!(
        !own_file(&m, 1, 200).exists(),
        "the active segment has no file"
    );

    let before = m.read_requests();
    // Two opens at once share the kernel's backing file; a map reads through it too.
    let mut held = fs::File::open(segment(&m, "t/0", 0)).unwrap();
    for base in [0, 100] {
        assert_eq!(read_all(&segment(&m, "t/0", base)), lines(base, base + 100));
    }
    let mut through_held = Vec::new();
    held.read_to_end(&mut through_held).unwrap();
    assert_eq!(through_held, lines(0, 100));
    let mapped = m.sh_ok(&format!(
        "python3 -c 'import mmap,sys; f=open(sys.argv[1],\"rb\"); sys.stdout.write(mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)[:20].decode())' {}",
        segment(&m, "t/0", 100).display()
    ));
    assert_eq!(mapped, "message-100\nmessage-");
    assert_eq!(
        m.read_requests(),
        before,
        "reads of materialized segments reached the daemon"
    );
    // The active segment is still served by the daemon.
    assert_eq!(read_all(&m.path("t/0/active")), lines(200, 250));
    assert!(m.read_requests() > before);
}

/// Flips a byte of the commit log under the running daemon (its map sees the change).
fn damage_log(m: &Mount, at: u64) {
    let log = m.data.join("commitlog").join(format!("{:020}", 0));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x55], at).unwrap();
}

#[test]
fn with_passthrough_off_the_daemon_serves_a_segment_from_its_own_file() {
    let Some(m) = common::mount(config().set("passthrough", "false")) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 150);
    let sealed = segment(&m, "t/0", 0);
    wait_materialized(&m, &sealed);
    // Once the commit log gave back the segment's bytes (its marker is written), every read
    // of them comes from the segment's own file: the first batch (segment 0's messages)
    // damaged in the log changes nothing, even for `stream`.
    let released = own_file(&m, 1, 0).with_extension("log.released");
    wait_until(COPY_DEADLINE, "segment 0 to be released", || {
        released.exists()
    });
    damage_log(&m, 200);
    assert_eq!(m.sh_bytes("cat t/0/stream"), lines(0, 150));
    let before = m.read_requests();
    assert_eq!(read_all(&sealed), lines(0, 100));
    let served = m.read_requests() - before;
    assert!(
        served > 0,
        "no READ reached the daemon with passthrough off"
    );
    // Its pages stay cached: a second read asks the daemon for nothing.
    assert_eq!(read_all(&sealed), lines(0, 100));
    assert_eq!(m.read_requests() - before, served);
}

#[test]
fn a_damaged_log_is_not_copied() {
    let Some(mut m) = common::mount(config().set("materialize_segments", "false")) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 250);
    assert_eq!(
        xattr_text(&segment(&m, "t/0", 0), "user.materialized"),
        "false"
    );
    m.unmount();
    damage_log(&m, 200);
    let text = fs::read_to_string(m.config_path()).unwrap();
    fs::write(
        m.config_path(),
        text.replace(
            "materialize_segments = false",
            "materialize_segments = true",
        ),
    )
    .unwrap();
    m.start();
    wait_materialized(&m, &segment(&m, "t/0", 100));
    wait_until(COPY_DEADLINE, "the log line refusing segment 0", || {
        m.log_tail(50)
            .contains("segment 0 is served from the commit log, not copied")
    });
    assert_eq!(
        xattr_text(&segment(&m, "t/0", 0), "user.materialized"),
        "false"
    );
    assert!(!own_file(&m, 1, 0).exists(), "a damaged segment was copied");
    m.sh_fails_with(
        &format!("cat t/0/{}", segment_name(0)),
        "Input/output error",
    );
    assert_eq!(read_all(&segment(&m, "t/0", 100)), lines(100, 200));
}

#[cfg(feature = "failpoints")]
#[test]
fn kill_9_during_a_copy_leaves_no_half_file_and_the_copy_is_made_again() {
    if !common::fuse_available() {
        return;
    }
    // Segments of 3 MB, copied 1 MiB at a time.
    let mut m = Mount::prepare(
        config()
            .set("commit_log_file_bytes", "8388608")
            .set("max_message_bytes", "65536"),
    );
    m.start_with_failpoints("materialize::copy=sleep(120000)");
    m.sh_ok("mkdir t");
    let line = "x".repeat(29_999);
    m.sh_ok(&format!(
        "for i in $(seq 150); do echo {line}; done >> t/0/active"
    ));
    let expected: Vec<u8> = format!("{line}\n").repeat(100).into_bytes();
    let partial = m
        .data
        .join("segments/1/0")
        .join(format!("{}.partial", segment_name(0)));
    let copy_size = || {
        [&partial, &own_file(&m, 1, 0)]
            .iter()
            .find_map(|path| fs::metadata(path).ok().map(|meta| meta.len()))
    };
    wait_until(COPY_DEADLINE, "the copy to be under way", || {
        copy_size().is_some_and(|len| len > 0)
    });
    let written = copy_size().unwrap();
    assert!(
        written < expected.len() as u64,
        "the copy is not part way: {written} bytes"
    );
    assert!(
        !own_file(&m, 1, 0).exists(),
        "a copy part way is under the segment's own name"
    );
    assert_eq!(
        xattr_text(&segment(&m, "t/0", 0), "user.materialized"),
        "false"
    );
    assert_eq!(read_all(&segment(&m, "t/0", 0)), expected);

    m.kill9();
    m.start();
    wait_materialized(&m, &segment(&m, "t/0", 0));
    assert!(!partial.exists(), "the interrupted copy was left behind");
    assert_eq!(read_all(&own_file(&m, 1, 0)), expected);
    assert_eq!(read_all(&segment(&m, "t/0", 0)), expected);
}

#[test]
fn retention_deletes_materialized_segments() {
    let Some(m) = common::mount(config()) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 350);
    for base in [0, 100, 200] {
        wait_materialized(&m, &segment(&m, "t/0", base));
    }
    // Keep at least 1,300 bytes: the active segment and the newest sealed one.
    m.sh_ok("setfattr -n user.retention_bytes -v 1300 t");
    wait_until(COPY_DEADLINE, "retention to remove two segments", || {
        xattr_text(&m.path("t/0"), "user.start_offset") == "200"
    });
    for base in [0, 100] {
        wait_until(
            COPY_DEADLINE,
            "the removed segment's own file to go",
            || !own_file(&m, 1, base).exists(),
        );
    }
    // (A removed name may still `stat` for entry_ttl_ms; `ls` no longer shows it.)
    let listed: Vec<PathBuf> = common::segment_files(&m.path("t/0"));
    assert_eq!(listed, [segment(&m, "t/0", 200), segment(&m, "t/0", 300)]);
    assert!(own_file(&m, 1, 200).exists());
    assert_eq!(read_all(&segment(&m, "t/0", 200)), lines(200, 300));
}

#[test]
fn the_disk_ceiling_deletes_materialized_segments() {
    let Some(mut m) = common::mount(
        config()
            .set("commit_log_file_bytes", "65536")
            .set("max_message_bytes", "16384"),
    ) else {
        return;
    };
    m.sh_ok("mkdir t");
    // One batch per line: about 18 KB per segment, ten segments over three commit-log files.
    let line = "y".repeat(119);
    m.sh_ok(&format!(
        "for i in $(seq 1050); do echo {line}; done >> t/0/active"
    ));
    for base in (0..1000).step_by(100) {
        wait_materialized(&m, &segment(&m, "t/0", base));
    }
    m.unmount();
    let text = fs::read_to_string(m.config_path()).unwrap();
    fs::write(m.config_path(), format!("{text}max_disk_bytes = 1\n")).unwrap();
    m.start();
    let start = || -> u64 {
        xattr_text(&m.path("t/0"), "user.start_offset")
            .parse()
            .unwrap()
    };
    // Over the ceiling, messages go a commit-log file at a time, and with them the files of
    // their segments (the commit log gave back their bytes, so a stored segment's file is
    // their only copy and stays while the segment does).
    let files_match_start = || {
        let start = start();
        start > 0
            && (0..1000)
                .step_by(100)
                .all(|base| own_file(&m, 1, base).exists() == (base + 100 > start))
    };
    wait_until(
        COPY_DEADLINE,
        "the disk ceiling to remove segments and their own files",
        files_match_start,
    );
}

#[test]
fn keys_offsets_and_times_find_messages_in_materialized_segments() {
    let Some(m) = common::mount(config()) else {
        return;
    };
    m.sh_ok("mkdir t && setfattr -n user.key_separator -v : t");
    m.sh_ok("for i in $(seq 0 149); do echo \"k$i:value-$i\"; done >> t/0/active");
    let sealed = segment(&m, "t/0", 0);
    wait_materialized(&m, &sealed);
    assert_eq!(
        xattr_get(&m.path("t"), "user.key.k42").unwrap().unwrap(),
        b"k42:value-42\n"
    );
    let location = xattr_text(&m.path("t/0"), "user.offset.42");
    let fields: Vec<&str> = location.split(' ').collect();
    assert_eq!(fields[0], segment_name(0), "user.offset.42 = {location}");
    let (position, len): (u64, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let mut message = vec![0u8; len];
    fs::File::open(&sealed)
        .unwrap()
        .read_exact_at(&mut message, position)
        .unwrap();
    assert_eq!(message, b"k42:value-42\n");
    let first_time = xattr_text(&sealed, "user.first_timestamp");
    assert_eq!(
        xattr_text(&m.path("t/0"), &format!("user.time.{first_time}")),
        "0"
    );
}

#[test]
fn an_o_direct_read_of_a_materialized_segment_takes_any_buffer_size() {
    let Some(m) = common::mount(config()) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 150);
    let sealed = segment(&m, "t/0", 0);
    wait_materialized(&m, &sealed);
    // 1,000-byte reads: the daemon's direct I/O takes them, where ext4's O_DIRECT (what a
    // passed-through open would use) refuses a size that is not a multiple of its blocks.
    let read = m.sh_bytes(&format!(
        "dd if={} iflag=direct bs=1000 count=1 status=none",
        sealed.display()
    ));
    assert_eq!(read, lines(0, 100)[..1000]);
}

#[test]
fn the_metrics_count_the_segments_copied() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("\"127.0.0.1:{port}\"");
    let Some(m) = common::mount(config().set("metrics_listen", &listen)) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 250);
    for base in [0, 100] {
        wait_materialized(&m, &segment(&m, "t/0", base));
    }
    let scrape = m.sh_ok(&format!(
        "timeout 20 curl -sS http://127.0.0.1:{port}/metrics"
    ));
    let copied = scrape
        .lines()
        .find_map(|line| line.strip_prefix("commitfs_segments_materialized_total "))
        .unwrap_or_else(|| panic!("no commitfs_segments_materialized_total in\n{scrape}"));
    assert_eq!(copied, "2");
}

/// A segment read while it was active drops its cached pages once, at its first open after
/// sealing; from then on, with passthrough off, a second read asks the daemon for nothing.
#[test]
fn with_passthrough_off_a_segment_read_while_active_is_cached_again_once_sealed() {
    let Some(m) = common::mount(config().set("passthrough", "false")) else {
        return;
    };
    m.sh_ok("mkdir t");
    append_lines(&m, "t/0", 0, 50);
    let first = segment(&m, "t/0", 0);
    assert_eq!(read_all(&first), lines(0, 50));
    append_lines(&m, "t/0", 50, 150);
    wait_materialized(&m, &first);
    assert_eq!(read_all(&first), lines(0, 100));
    let before = m.read_requests();
    assert_eq!(read_all(&first), lines(0, 100));
    assert_eq!(
        m.read_requests(),
        before,
        "a second read of the sealed segment reached the daemon"
    );
}
