//! Mounted: once a sealed segment is a file of its own, the commit log gives back its
//! messages' bytes (issue 8, "a commit-log file ... is deleted early": the blocks are punched,
//! batch headers and tables stay). Every way a shell user reads a message still returns its
//! bytes; a `kill -9` at each step of a release loses nothing; a released segment whose file
//! is gone or altered is refused or EIO, naming the file, never zeroes.

#![cfg(feature = "failpoints")]

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{segment_name, wait_until, xattr_get, xattr_text, Bounded, Config, Mount};

const DEADLINE: Duration = Duration::from_secs(60);
/// Messages written: segments 0 and 100 seal (and are released), 200.. stays active.
const MESSAGES: u64 = 250;

/// One partition; no checkpoint after the first, so that recovery after a `kill -9` scans
/// every batch, the released ones included.
fn config() -> Config {
    Config::small()
        .set("partitions", "1")
        .set("checkpoint_interval_ms", "3600000")
}

/// About 200 bytes: a segment's batch then covers whole 4 KiB blocks of the log, which the
/// release punches.
fn line(i: u64) -> String {
    format!("k{i}:value-{i}-{}\n", "x".repeat(180))
}

fn lines(from: u64, to: u64) -> Vec<u8> {
    (from..to).flat_map(|i| line(i).into_bytes()).collect()
}

fn own_file(m: &Mount, base: u64) -> PathBuf {
    m.data.join("segments/1/0").join(segment_name(base))
}

fn marker(m: &Mount, base: u64) -> PathBuf {
    m.data
        .join("segments/1/0")
        .join(format!("{}.released", segment_name(base)))
}

/// Writes the messages with one `cat`: a batch per segment.
fn write_messages(m: &Mount) {
    m.sh_ok("mkdir t && setfattr -n user.key_separator -v : t");
    fs::write(m.work.join("lines"), lines(0, MESSAGES)).unwrap();
    m.sh_ok("cat \"$WORK/lines\" >> t/0/active");
}

fn wait_released(m: &Mount) {
    for base in [0, 100] {
        wait_until(
            DEADLINE,
            &format!("segment {base} to be released\n{}", m.log_tail(20)),
            || marker(m, base).exists(),
        );
    }
}

/// Every way of reading: segments with cat, dd and tail; the stream; keys, offsets, times.
fn assert_every_read_answers(m: &Mount) {
    let segment = |base: u64| m.path(&format!("t/0/{}", segment_name(base)));
    assert_eq!(
        fs::read(segment(0)).unwrap(),
        lines(0, 100),
        "cat segment 0"
    );
    let dd = m.sh_bytes(&format!(
        "dd if=t/0/{} bs=4k status=none",
        segment_name(100)
    ));
    assert_eq!(dd, lines(100, 200), "dd segment 100");
    let tail = m.sh_bytes(&format!("tail -n 3 t/0/{}", segment_name(100)));
    assert_eq!(tail, lines(197, 200), "tail -n 3 of segment 100");
    assert_eq!(
        m.sh_bytes("cat t/0/stream"),
        lines(0, MESSAGES),
        "cat stream"
    );
    assert_eq!(
        m.sh_bytes("dd if=t/0/stream bs=4k status=none"),
        lines(0, MESSAGES),
        "dd stream"
    );
    assert_eq!(m.sh_bytes("tail -n 2 t/0/stream"), lines(248, 250));
    for i in [0u64, 42, 99, 150, 230] {
        let by_key = xattr_get(&m.path("t"), &format!("user.key.k{i}"))
            .unwrap()
            .unwrap();
        assert_eq!(by_key, line(i).into_bytes(), "user.key.k{i}");
        let location = xattr_text(&m.path("t/0"), &format!("user.offset.{i}"));
        let fields: Vec<&str> = location.split(' ').collect();
        let (position, len): (u64, usize) =
            (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let mut bytes = vec![0u8; len];
        fs::File::open(m.path(&format!("t/0/{}", fields[0])))
            .unwrap()
            .read_exact_at(&mut bytes, position)
            .unwrap();
        assert_eq!(bytes, line(i).into_bytes(), "user.offset.{i} = {location}");
    }
    assert_eq!(xattr_text(&m.path("t/0"), "user.time.0"), "0");
}

fn check(data: &Path) -> std::process::Output {
    Bounded::new(common::COMMITFS, DEADLINE)
        .arg("check")
        .arg(data)
        .output()
}

/// Unmounts, then asserts that `commitfs check` passes the data directory (`what` names the
/// case in the failure message).
fn unmount_and_check_passes(m: &mut Mount, what: &str) {
    m.unmount();
    let checked = check(&m.data);
    assert!(
        checked.status.success(),
        "{what}: commitfs check: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
}

#[test]
fn every_read_returns_the_messages_whose_log_bytes_were_given_back() {
    let Some(mut m) = common::mount(config()) else {
        return;
    };
    write_messages(&m);
    wait_released(&m);
    assert_every_read_answers(&m);
    unmount_and_check_passes(&mut m, "after the release");
    m.start();
    assert_every_read_answers(&m);
}

/// `kill -9` after the marker, between two punches, and after the punches before any
/// checkpoint: the next mount recovers every message (reading the released batches back from
/// the segments' files), serves each right, and `commitfs check` passes.
#[test]
fn kill_9_at_each_step_of_a_release_loses_nothing() {
    if !common::fuse_available() {
        return;
    }
    for step in ["released::done", "released::punch", "released::marked"] {
        let mut m = Mount::prepare(config());
        m.start_with_failpoints(&format!("{step}=sleep(600000)"));
        write_messages(&m);
        wait_until(
            DEADLINE,
            &format!("segment 0 to be marked ({step})\n{}", m.log_tail(20)),
            || marker(&m, 0).exists(),
        );
        // The thread is asleep at the failpoint by now, or about to be.
        std::thread::sleep(Duration::from_millis(500));
        m.kill9();
        m.start();
        assert_every_read_answers(&m);
        wait_released(&m);
        assert_every_read_answers(&m);
        unmount_and_check_passes(&mut m, step);
    }
}

/// A released segment's file altered: reads that check the CRC32C fail with EIO and the log
/// names the file. Gone: the mount is refused, naming the file.
#[test]
fn a_released_segments_file_altered_or_gone_is_never_served_as_zeroes() {
    let Some(mut m) = common::mount(config()) else {
        return;
    };
    write_messages(&m);
    wait_released(&m);
    m.unmount();
    let file = own_file(&m, 100);
    let mut bytes = fs::read(&file).unwrap();
    bytes[50] ^= 1;
    fs::write(&file, &bytes).unwrap();
    m.start();
    m.sh_fails_with("cat t/0/stream", "Input/output error");
    assert!(
        m.log_tail(40).contains(&file.display().to_string()),
        "{}",
        m.log_tail(40)
    );
    assert_eq!(
        m.sh_bytes("dd if=t/0/stream bs=1 count=1000 status=none"),
        lines(0, MESSAGES)[..1000]
    );
    m.unmount();
    let checked = check(&m.data);
    assert!(
        !checked.status.success(),
        "check passed over an altered file"
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains(&file.display().to_string()));

    fs::remove_file(own_file(&m, 0)).unwrap();
    let out = Bounded::new(common::COMMITFS, Duration::from_secs(120))
        .arg("mount")
        .arg("--config")
        .arg(m.config_path())
        .arg(&m.data)
        .arg(&m.mnt)
        .stdin(std::process::Stdio::null())
        .output();
    assert!(!out.status.success(), "mounted without the only copy");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stderr), m.log_tail(20));
    assert!(
        said.contains(&own_file(&m, 0).display().to_string()),
        "{said}"
    );
}

/// Retention over released segments: the removed segments' files and markers go, what stays
/// reads right. Then the disk ceiling, which here can only remove copies (every message is in
/// the commit-log file being written): it never removes the file of a stored segment whose log
/// bytes were given back (their only copy), and what is stored still reads right.
#[test]
fn retention_and_the_disk_ceiling_over_released_segments() {
    let Some(mut m) = common::mount(config().set("retention_check_interval_ms", "200")) else {
        return;
    };
    write_messages(&m);
    wait_released(&m);
    // Keep at least the active segment's bytes and the newest sealed one's.
    let keep = lines(100, MESSAGES).len();
    m.sh_ok(&format!("setfattr -n user.retention_bytes -v {keep} t"));
    wait_until(DEADLINE, "retention to remove segment 0", || {
        xattr_text(&m.path("t/0"), "user.start_offset") == "100"
    });
    wait_until(DEADLINE, "segment 0's file and marker to go", || {
        !own_file(&m, 0).exists() && !marker(&m, 0).exists()
    });
    assert_stored_from_100(&m);
    m.unmount();

    let text = fs::read_to_string(m.config_path()).unwrap();
    fs::write(m.config_path(), format!("{text}max_disk_bytes = 1\n")).unwrap();
    m.start();
    wait_until(DEADLINE, "the disk ceiling to give up", || {
        m.log_tail(20)
            .contains("only the file being written is left")
    });
    assert!(own_file(&m, 100).exists() && marker(&m, 100).exists());
    assert_eq!(xattr_text(&m.path("t/0"), "user.start_offset"), "100");
    assert_stored_from_100(&m);
}

/// What `stream` holds from offset 100 on, and segment 100, read back whole.
fn assert_stored_from_100(m: &Mount) {
    let first_byte = xattr_text(&m.path("t/0/stream"), "user.start_position");
    assert_eq!(
        m.sh_bytes(&format!(
            "dd if=t/0/stream bs=4k skip={first_byte} iflag=skip_bytes status=none"
        )),
        lines(100, MESSAGES)
    );
    assert_eq!(
        fs::read(m.path(&format!("t/0/{}", segment_name(100)))).unwrap(),
        lines(100, 200)
    );
}
