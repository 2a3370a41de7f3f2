//! A full disk can be cleared through the mount (issue 10): the data directory on a 64 MiB
//! ext4 loop device, filled by a writer until `ENOSPC` and the rest by another file. Then `setfattr user.retention_bytes`
//! and `rmdir` still work (a reserve of preallocated files takes the topic file's new
//! content), `commitfs.log` still records why (it keeps blocks allocated past its end), and
//! once retention has removed what is no longer needed, writes work again and the reserve is
//! made whole again.

mod common;
mod fixtures;

use std::path::Path;
use std::time::Duration;

use common::{fuse_available, Bounded, Config, Mount, COMMAND_TIMEOUT};

/// A 64 MiB ext4 file system (no blocks reserved for root) on a loop device, mounted on
/// `dir`; `Mount`'s drop unmounts it.
fn mount_ext4(image: &Path, dir: &Path) {
    let run = |program: &str, args: &[&str]| {
        let out = Bounded::new(program, COMMAND_TIMEOUT).args(args).output();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let image = image.to_str().unwrap();
    run("truncate", &["-s", "64M", image]);
    run("mkfs.ext4", &["-q", "-F", "-m", "0", image]);
    run("mount", &["-o", "loop", image, dir.to_str().unwrap()]);
}

fn log(m: &Mount) -> String {
    std::fs::read_to_string(m.data.join("commitfs.log")).unwrap()
}

#[test]
fn a_full_ext4_disk_is_cleared_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let config = Config::small()
        .set("commit_log_file_bytes", "4194304")
        .set("segment_messages", "10000")
        .set("partitions", "1")
        .set("retention_check_interval_ms", "200");
    let mut m = Mount::prepare(config);
    mount_ext4(&m.work.join("disk.img"), &m.data);
    m.start();
    m.sh_ok("mkdir t other && for i in $(seq 1 50); do echo other-$i >> other/0/active; done");
    assert_eq!(fixtures::reserve_files(&m.data), 8);

    let filled = m.sh_within(
        "yes line-of-a-writer-that-fills-the-disk-$(printf %080d 0) | head -c 100M >> t/0/active",
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&filled.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // What is left short of a commit-log file, another writer on the file system takes,
    // until a one-block file cannot be written (delayed allocation frees some at sync).
    let data = m.data.to_str().unwrap().to_owned();
    let fill = format!(
        "for i in 1 2 3 4 5; do dd if=/dev/zero of={data}/filler$i bs=4k status=none; sync; \
         echo x > {data}/probe$i || exit 1; done"
    );
    m.sh_fails_with(&fill, "No space left on device");

    // Refusals that need no space, each logged: more lines than the log's last block holds.
    let refused =
        m.sh("for i in $(seq 1 100); do setfattr -n user.retention_bytes -v lots t; done 2>&1");
    let said = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(said.matches("Invalid argument").count(), 100, "{said}");

    m.sh_ok("setfattr -n user.retention_bytes -v 1048576 t");
    let value = m.sh_ok("getfattr --only-values -n user.retention_bytes t");
    assert_eq!(value.trim_end(), "1048576");
    m.sh_ok("rmdir other");
    assert_eq!(m.sh_ok("ls"), "t\n");

    let text = log(&m);
    assert!(
        text.contains("kept in reserve for metadata changes"),
        "{}",
        m.log_tail(20)
    );
    assert!(text.contains("deleted topic other"), "{}", m.log_tail(20));
    assert!(
        text.contains("No space left on device"),
        "{}",
        m.log_tail(20)
    );
    let lines_after_full = text
        .lines()
        .skip_while(|line| !line.contains("user.retention_bytes"))
        .count();
    assert!(lines_after_full > 100, "{}", m.log_tail(20));

    // Retention removes the files nothing needs any more; writes work again.
    m.sh_ok_within(
        "for i in $(seq 1 200); do echo again >> t/0/active 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        Duration::from_secs(60),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fixtures::reserve_files(&m.data) < 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fixtures::reserve_files(&m.data),
        8,
        "the reserve is made again"
    );
    assert!(
        log(&m).contains("the reserve for metadata changes is whole again"),
        "{}",
        m.log_tail(20)
    );
    assert_eq!(m.sh_ok("tail -n 1 t/0/active"), "again\n");
}
