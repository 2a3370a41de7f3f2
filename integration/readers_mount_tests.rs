//! Readers through a mount (issue 9): sealed segments never serve bytes the kernel cached
//! while they were shorter (item 10), and damaged or missing records are `EIO` with a log
//! line naming the file, never an empty file (item 11).

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{mount, segment_name, wait_until, xattr_get, Config, Mount, COMMITFS};

fn lines(from: u64, to: u64) -> Vec<u8> {
    (from..to)
        .flat_map(|i| format!("{i:06}\n").into_bytes())
        .collect()
}

/// One partition of segments of 20 messages, as in the trial.
fn twenty_message_segments() -> Option<Mount> {
    let m = mount(
        Config::small()
            .set("segment_messages", "20")
            .set("partitions", "1"),
    )?;
    fs::create_dir(m.path("t")).unwrap();
    Some(m)
}

/// `mmap` of `path`'s first page with `flags`; the bytes up to `len`, or the errno.
fn mapped_bytes(path: &Path, flags: i32, len: usize) -> Result<Vec<u8>, i32> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    // SAFETY: a fresh read-only mapping of a file we hold open, read within its length
    // and unmapped before the file closes.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            flags,
            file.as_raw_fd(),
            0,
        );
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        let bytes = std::slice::from_raw_parts(map as *const u8, len).to_vec();
        libc::munmap(map, 4096);
        Ok(bytes)
    }
}

#[test]
fn a_private_map_of_the_active_segment_leaves_no_short_page_behind() {
    let Some(m) = twenty_message_segments() else {
        return;
    };
    let segment = m.path(&format!("t/0/{}", segment_name(0)));
    let mut writer = OpenOptions::new()
        .append(true)
        .open(m.path("t/0/active"))
        .unwrap();
    writer.write_all(&lines(0, 18)).unwrap();
    // Reads of the active segment bypass the page cache, so the kernel cannot keep a
    // shared map of it coherent: it refuses one. A private map works, through the cache.
    assert_eq!(
        mapped_bytes(&segment, libc::MAP_SHARED, 126),
        Err(libc::ENODEV)
    );
    assert_eq!(
        mapped_bytes(&segment, libc::MAP_PRIVATE, 126).unwrap(),
        lines(0, 18)
    );
    writer.write_all(&lines(18, 20)).unwrap();
    let sealed = fs::read(&segment).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sealed),
        String::from_utf8_lossy(&lines(0, 20))
    );
    // Sealed, but its writer still appends through it (to the next segment): read
    // uncached, since each such write grows the kernel's idea of segment 0's size.
    assert_eq!(
        mapped_bytes(&segment, libc::MAP_SHARED, 140),
        Err(libc::ENODEV)
    );
    drop(writer);
    // Sealed and no writer left: a shared map is fine — once the daemon has had the
    // writer's RELEASE, which the kernel sends after close(2) has returned.
    wait_until(
        Duration::from_secs(10),
        "a shared map of the sealed segment",
        || mapped_bytes(&segment, libc::MAP_SHARED, 140).is_ok(),
    );
    assert_eq!(
        mapped_bytes(&segment, libc::MAP_SHARED, 140).unwrap(),
        lines(0, 20)
    );
}

/// The trial, bounded: one writer of `%06d\n` lines, two readers of the active
/// segment, and a checker that reads each segment as soon as it is sealed.
#[test]
fn segments_read_just_after_sealing_never_hold_nul_bytes() {
    const SEGMENTS: u64 = 200;
    let Some(m) = twenty_message_segments() else {
        return;
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut writer = OpenOptions::new()
                .append(true)
                .open(m.path("t/0/active"))
                .unwrap();
            for i in 0..SEGMENTS * 20 {
                writer.write_all(&lines(i, i + 1)).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        for _ in 0..2 {
            scope.spawn(|| {
                while !done.load(Ordering::Acquire) {
                    let _ = fs::read(m.path("t/0/active"));
                }
            });
        }
        for k in 0..SEGMENTS - 1 {
            let next = m.path(&format!("t/0/{}", segment_name((k + 1) * 20)));
            wait_until(Duration::from_secs(60), "the next segment", || {
                next.exists()
            });
            let segment = m.path(&format!("t/0/{}", segment_name(k * 20)));
            let bytes = fs::read(&segment).unwrap();
            assert!(
                !bytes.contains(&0),
                "segment {k} read back with NUL bytes: {bytes:?}"
            );
            assert_eq!(bytes, lines(k * 20, (k + 1) * 20), "segment {k}");
        }
    });
}

/// Partition 0 of topic `t` with 1,500 lines of 1,000 bytes: about a megabyte and a half,
/// so the first commit-log file (1 MiB) holds only older messages.
fn two_files_of_messages() -> Option<Mount> {
    let m = mount(Config::small().set("partitions", "1"))?;
    fs::create_dir(m.path("t")).unwrap();
    let input: Vec<u8> = (0..1500)
        .flat_map(|i| format!("{i:06}:{}\n", "x".repeat(992)).into_bytes())
        .collect();
    fs::write(m.work.join("input"), input).unwrap();
    m.sh_ok("timeout 60 sh -c 'cat \"$WORK/input\" >> t/0/active'");
    assert_eq!(common::xattr_u64(&m.path("t/0"), "user.end_offset"), 1500);
    Some(m)
}

fn zero_file(path: &Path) {
    let len = fs::metadata(path).unwrap().len();
    let file = OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; len as usize], 0).unwrap();
}

fn daemon_log(m: &Mount) -> String {
    fs::read_to_string(m.data.join("commitfs.log")).unwrap_or_default()
}

#[track_caller]
fn assert_eio(m: &Mount, what: &str, result: std::io::Result<impl std::fmt::Debug>) {
    match result {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "{what}: {e}\n{}",
            m.log_tail(20)
        ),
        Ok(value) => panic!("{what}: expected EIO, got {value:?}\n{}", m.log_tail(20)),
    }
}

#[test]
fn messages_of_a_zeroed_commit_log_file_are_eio_with_a_log_line_naming_it() {
    let Some(mut m) = two_files_of_messages() else {
        return;
    };
    m.unmount();
    zero_file(&m.data.join("commitlog/00000000000000000000"));
    m.start();
    let first = m.path(&format!("t/0/{}", segment_name(0)));
    assert_eio(&m, "stat of a damaged segment", fs::metadata(&first));
    assert_eio(&m, "read of a damaged segment", fs::read(&first));
    assert_eio(
        &m,
        "user.offset.5",
        xattr_get(&m.path("t/0"), "user.offset.5"),
    );
    m.sh_fails_with(
        "timeout 20 cat t/0/00000000000000000000.log",
        "Input/output error",
    );
    assert!(
        daemon_log(&m).contains(&format!(
            "{}: byte 0",
            m.data.join("commitlog/00000000000000000000").display()
        )),
        "{}",
        m.log_tail(20)
    );
    // The newest messages, in the second file, are served.
    let newest = m.path(&format!("t/0/{}", segment_name(1400)));
    assert_eq!(fs::read(newest).unwrap().len(), 100 * 1000);
}

#[test]
fn a_garbled_consume_queue_is_eio_with_a_log_line_naming_it() {
    let Some(mut m) = two_files_of_messages() else {
        return;
    };
    m.unmount();
    let queue = m.data.join("queues/1/0").join(format!("{:020}", 0));
    let file = OpenOptions::new().write(true).open(&queue).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xab; 40], 0).unwrap();
    m.start();
    let first = m.path(&format!("t/0/{}", segment_name(0)));
    assert_eio(&m, "read of the segment", fs::read(&first));
    assert_eio(
        &m,
        "user.offset.1",
        xattr_get(&m.path("t/0"), "user.offset.1"),
    );
    assert!(
        daemon_log(&m).contains(&format!("{}: byte 20", queue.display())),
        "{}",
        m.log_tail(20)
    );
}

#[test]
fn a_zeroed_last_commit_log_file_refuses_the_mount_naming_it() {
    let Some(mut m) = two_files_of_messages() else {
        return;
    };
    m.unmount();
    let last = m.data.join("commitlog/00000000000001048576");
    zero_file(&last);
    let config = m.work.join("commitfs.toml");
    fs::write(
        &config,
        "segment_messages = 100\ncommit_log_file_bytes = 1048576\npartitions = 1\n\
         index_slots = 4096\nindex_entries = 65536\nmax_message_bytes = 262144\n",
    )
    .unwrap();
    let output = Command::new("timeout")
        .arg("60")
        .arg(COMMITFS)
        .arg("mount")
        .arg("--config")
        .arg(&config)
        .arg(&m.data)
        .arg(&m.mnt)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        daemon_log(&m)
    );
    assert!(!output.status.success(), "the mount went ahead:\n{said}");
    assert!(!common::is_mounted(&m.mnt));
    assert!(said.contains(&last.display().to_string()), "{said}");
}
