//! The write path through the mount (issue 9, items 2, 3, 12 and 13): a failed `write()`
//! stores nothing and leaves no fragment of a line behind, a write to `append` for several
//! partitions is stored whole or not at all, a panic while appending fences writes until a
//! remount, and a raw write is one message or `EFBIG`, never several messages.
//!
//! Faults are injected in the daemon through its `FAILPOINTS` environment variable, set for
//! that daemon alone (never in this process's environment, which a remount by another test
//! running at the same time would inherit).

mod common;

use std::fs::OpenOptions;
use std::io::Write;

#[cfg(feature = "failpoints")]
use common::partition_lines;
use common::{assert_errno, kafka_partition, xattr_get, xattr_text, xattr_u64, Config, Mount};

/// Mounts with `failpoints` (the fail crate's `FAILPOINTS` syntax) set in the daemon.
fn mount_with(config: Config, failpoints: Option<&str>) -> Option<Mount> {
    if !common::fuse_available() {
        return None;
    }
    let mut mount = Mount::prepare(config);
    match failpoints {
        Some(failpoints) => mount.start_with_failpoints(failpoints),
        None => mount.start(),
    }
    Some(mount)
}

/// A key that `append` sends to another partition (of 2) than `key`.
fn key_for_the_other_partition(key: &str) -> String {
    (0..)
        .map(|n| format!("k{n}"))
        .find(|other| kafka_partition(other.as_bytes(), 2) != kafka_partition(key.as_bytes(), 2))
        .unwrap()
}

#[cfg(feature = "failpoints")]
#[test]
fn after_a_failed_write_no_fragment_of_a_line_is_stored() {
    // The daemon's first and third appends fail as on a full disk.
    let failpoints = "append::reserve-queue=1*return->1*off->1*return->off";
    let Some(m) = mount_with(Config::small(), Some(failpoints)) else {
        return;
    };
    m.sh_ok("mkdir t");
    let active = m.path("t/0/active");
    {
        let mut file = OpenOptions::new().append(true).open(&active).unwrap();
        file.write_all(b"held-start").unwrap();
        assert_errno(
            file.write(b"-rest\nnext-start"),
            libc::ENOSPC,
            "the write completing the held line (first append)",
        );
        // The rest of the line the failed write began is dropped with it.
        assert_eq!(file.write(b"-end\nwhole\n").unwrap(), 11);
    }
    {
        // As `cat` does on ENOSPC: the write fails, then the file is closed.
        let mut file = OpenOptions::new().append(true).open(&active).unwrap();
        file.write_all(b"held-again").unwrap();
        assert_errno(
            file.write(b"-rest\n"),
            libc::ENOSPC,
            "the write completing the held line (third append)",
        );
    }
    m.sh_ok("echo after >> t/0/active");
    assert_eq!(partition_lines(&m.path("t/0")), ["whole", "after"]);
}

/// Makes keyed topic `t` (two partitions) and returns one write to its `append` file for
/// both: `a:PARTIAL`, then a line of `x`s `long` bytes long keyed for the other partition;
/// with that other key, and `append` opened for writing.
fn write_for_two_partitions(m: &Mount, long: usize) -> (Vec<u8>, String, std::fs::File) {
    m.sh_ok("mkdir t && setfattr -n user.key_separator -v : t");
    let other = key_for_the_other_partition("a");
    let mut data = b"a:PARTIAL\n".to_vec();
    data.extend_from_slice(format!("{other}:{}\n", "x".repeat(long)).as_bytes());
    let file = OpenOptions::new()
        .write(true)
        .open(m.path("t/append"))
        .unwrap();
    (data, other, file)
}

#[test]
fn a_write_to_append_for_two_partitions_with_a_line_too_long_stores_neither() {
    let Some(m) = mount_with(Config::small().set("max_message_bytes", "4096"), None) else {
        return;
    };
    let (data, _, mut file) = write_for_two_partitions(&m, 5000);
    assert_errno(file.write(&data), libc::EFBIG, "a 5,000-byte line");
    drop(file);
    assert_eq!(xattr_get(&m.path("t"), "user.key.a").unwrap(), None);
    for partition in ["t/0", "t/1"] {
        assert_eq!(xattr_u64(&m.path(partition), "user.end_offset"), 0);
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn a_write_to_append_for_two_partitions_is_stored_whole_or_not_at_all_on_a_full_disk() {
    // The second partition's consume-queue room cannot be allocated.
    let failpoints = "append::reserve-queue=1*off->1*return->off";
    let Some(m) = mount_with(Config::small(), Some(failpoints)) else {
        return;
    };
    let (data, other, mut file) = write_for_two_partitions(&m, 60_000);
    assert_errno(
        file.write(&data),
        libc::ENOSPC,
        "the second partition's room",
    );
    assert_eq!(xattr_get(&m.path("t"), "user.key.a").unwrap(), None);
    assert_eq!(
        xattr_get(&m.path("t"), &format!("user.key.{other}")).unwrap(),
        None
    );

    // The writer retries; nothing is duplicated.
    assert_eq!(file.write(&data).unwrap(), data.len());
    drop(file);
    let partition_of_a = kafka_partition(b"a", 2);
    assert_eq!(
        xattr_text(&m.path("t"), "user.offsets.a"),
        format!("{partition_of_a} 0")
    );
    assert_eq!(xattr_text(&m.path("t"), "user.key.a"), "a:PARTIAL");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_panic_while_appending_gives_eio_and_refuses_writes_until_a_remount() {
    let failpoints = "append::after-log-publish=1*off->1*panic->off";
    let Some(mut m) = mount_with(Config::small(), Some(failpoints)) else {
        return;
    };
    m.sh_ok("mkdir t && echo before >> t/0/active");
    let append_line = |path: &str, line: &str| {
        let mut file = OpenOptions::new().append(true).open(m.path(path))?;
        file.write(line.as_bytes())
    };
    let eio = libc::EIO;
    assert_errno(append_line("t/0/active", "interrupted\n"), eio, "panic");
    assert_errno(append_line("t/1/active", "refused\n"), eio, "after it");
    assert_errno(std::fs::create_dir(m.path("u")), eio, "mkdir after it");
    assert_eq!(m.sh_ok("cat t/0/active"), "before\n", "reads go on");
    let log = std::fs::read_to_string(m.data.join("commitfs.log")).unwrap();
    assert!(
        log.contains("the store is read-only after an internal error in the write path; remount"),
        "{}",
        m.log_tail(20)
    );

    // The remount recovers from the log; the interrupted line was whole there and keeps its
    // offset (its writer got EIO: stored or not), and writes work again.
    m.remount();
    m.sh_ok("echo after >> t/0/active && mkdir u");
    assert_eq!(
        partition_lines(&m.path("t/0")),
        ["before", "interrupted", "after"]
    );
}

/// A panic on a background thread (here the consume-queue writer, which a partition's 25th
/// single-line append wakes) fences the store as a panic while appending does: writes get
/// `EIO`, the log says which thread, reads go on, and a remount recovers every line.
#[cfg(feature = "failpoints")]
#[test]
fn a_panic_on_a_background_thread_gives_eio_to_writes_until_a_remount() {
    let Some(mut m) = mount_with(Config::small(), Some("queue-writer::held-back=panic")) else {
        return;
    };
    m.sh_ok("mkdir t");
    let append_line = |line: &str| {
        let mut file = OpenOptions::new().append(true).open(m.path("t/0/active"))?;
        file.write(line.as_bytes())
    };
    let mut written = Vec::new();
    let refused = loop {
        let line = format!("line {}", written.len());
        match append_line(&format!("{line}\n")) {
            Ok(_) => written.push(line),
            Err(error) => break error,
        }
        assert!(written.len() < 100_000, "the store was never fenced");
    };
    assert_eq!(refused.raw_os_error(), Some(libc::EIO), "{refused}");
    assert!(written.len() >= 25, "refused after {} lines", written.len());
    assert_eq!(partition_lines(&m.path("t/0")), written, "reads go on");
    let log = std::fs::read_to_string(m.data.join("commitfs.log")).unwrap();
    assert!(
        log.contains("a panic on a background thread of the store (thread queue-writer)"),
        "{}",
        m.log_tail(20)
    );

    m.remount();
    m.sh_ok("echo after >> t/0/active");
    written.push("after".into());
    assert_eq!(partition_lines(&m.path("t/0")), written);
}

/// The most bytes one FUSE request always carries: 255 pages.
const RAW_LIMIT: usize = 1_044_480;

/// `len` bytes starting `offset` bytes into a page, each byte telling where it is.
fn bytes_in_page_at(offset: usize, len: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let buffer: Vec<u8> = (0..len + 2 * 4096).map(|i| (i % 251) as u8).collect();
    let misalignment = buffer.as_ptr() as usize % 4096;
    let start = (4096 - misalignment) % 4096 + offset;
    (buffer, start..start + len)
}

#[test]
fn a_raw_write_over_255_pages_is_refused_with_efbig_and_stores_nothing() {
    let config = Config::small()
        .set("commit_log_file_bytes", "8388608")
        .set("max_message_bytes", "4194304");
    let Some(m) = mount_with(config, None) else {
        return;
    };
    let mut file = m.open_raw_topic();
    for (what, offset, len) in [
        ("1,048,576 bytes from 100 bytes into a page", 100, 1 << 20),
        ("1,048,576 bytes from a page's start", 0, 1 << 20),
        ("1.5 MB", 0, 1_500_000),
        ("3 MB", 0, 3_000_000),
        ("255 pages and a byte", 4095, RAW_LIMIT + 1),
    ] {
        let (buffer, range) = bytes_in_page_at(offset, len);
        assert_errno(file.write(&buffer[range]), libc::EFBIG, what);
    }
    assert_eq!(xattr_u64(&m.path("t/0"), "user.end_offset"), 0);

    // 255 pages are one message, wherever the buffer starts.
    let mut written = Vec::new();
    for offset in [0, 100, 4095] {
        let (buffer, range) = bytes_in_page_at(offset, RAW_LIMIT);
        assert_eq!(file.write(&buffer[range.clone()]).unwrap(), RAW_LIMIT);
        written.extend_from_slice(&buffer[range]);
    }
    drop(file);
    assert_eq!(xattr_u64(&m.path("t/0"), "user.end_offset"), 3);
    for n in 0..3 {
        let location = xattr_text(&m.path("t/0"), &format!("user.offset.{n}"));
        assert_eq!(
            location,
            format!("00000000000000000000.log {} {RAW_LIMIT}", n * RAW_LIMIT)
        );
    }
    assert!(std::fs::read(m.path("t/0/active")).unwrap() == written);
}
