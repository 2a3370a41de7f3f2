//! Other users on the mount (issue 9): without `allow_other` they see nothing of it; with it,
//! a topic's mode bits decide who reads and appends (`EACCES`), `chmod` by its owner changes
//! them for good, and only a topic's owner (or root) may delete it.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;

use common::{mount, partition_lines, xattr_u64, Bounded, Config, Mount, COMMAND_TIMEOUT};

/// The unprivileged user the tests act as (nobody).
const OTHER: u32 = 65534;

/// Runs `cmd` through `sh -c` as user and group `uid`, from `/`.
fn as_user(uid: u32, cmd: &str) -> Output {
    Bounded::new("setpriv", COMMAND_TIMEOUT)
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "sh", "-c", cmd])
        .current_dir("/")
        .output()
}

/// `cmd` as `uid` must fail, saying `expected` (an errno's text).
#[track_caller]
fn refused(uid: u32, cmd: &str, expected: &str) {
    let out = as_user(uid, cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(expected),
        "`{cmd}` as uid {uid} should fail with \"{expected}\"; status {}, stderr: {stderr}",
        out.status
    );
}

/// `cmd` as `uid` must succeed; returns its stdout.
#[track_caller]
fn allowed(uid: u32, cmd: &str) -> String {
    let out = as_user(uid, cmd);
    assert!(
        out.status.success(),
        "`{cmd}` as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A mount whose temp dirs others may traverse, so only the mount's own rules decide.
fn mount_for_others(allow_other: bool) -> Option<Mount> {
    let m = mount(Config::small().set("allow_other", &allow_other.to_string()))?;
    fs::set_permissions(m.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    Some(m)
}

#[test]
fn without_allow_other_another_user_sees_nothing_of_the_mount() {
    let Some(m) = mount_for_others(false) else {
        return;
    };
    m.sh_ok("mkdir t && echo hello >> t/0/active && chmod 0777 t");
    let mnt = m.mnt.display();
    // Not even the root directory: listing, stat, attributes, creating.
    refused(OTHER, &format!("ls {mnt}"), "Permission denied");
    refused(OTHER, &format!("stat {mnt}/t"), "Permission denied");
    refused(OTHER, &format!("cat {mnt}/t/0/active"), "Permission denied");
    refused(
        OTHER,
        &format!("echo x >> {mnt}/t/0/active"),
        "Permission denied",
    );
    refused(
        OTHER,
        &format!("getfattr -n user.partitions {mnt}/t"),
        "Permission denied",
    );
    refused(OTHER, &format!("mkdir {mnt}/theirs"), "Permission denied");
    refused(OTHER, &format!("rmdir {mnt}/t"), "Permission denied");
    assert_eq!(m.sh_ok("ls"), "t\n");
    assert_eq!(partition_lines(&m.path("t/0")), ["hello"]);
}

#[test]
fn mode_bits_decide_who_reads_and_appends_and_chmod_by_the_owner_changes_them_for_good() {
    let Some(mut m) = mount_for_others(true) else {
        return;
    };
    m.sh_ok("mkdir t && echo hello >> t/0/active");
    let mnt = m.mnt.display().to_string();
    // 0755 (from the umask): others read, but neither append file takes their lines.
    assert_eq!(allowed(OTHER, &format!("cat {mnt}/t/0/active")), "hello\n");
    refused(
        OTHER,
        &format!("echo x >> {mnt}/t/0/active"),
        "Permission denied",
    );
    refused(
        OTHER,
        &format!("echo x >> {mnt}/t/append"),
        "Permission denied",
    );
    refused(
        OTHER,
        &format!("cat /etc/hostname >> {mnt}/t/1/active"),
        "Permission denied",
    );
    // Settings are the topic directory's attributes: writing them needs write permission.
    refused(
        OTHER,
        &format!("setfattr -n user.partitions -v 5 {mnt}/t"),
        "Permission denied",
    );
    assert_eq!(xattr_u64(&m.path("t"), "user.partitions"), 2);
    assert_eq!(xattr_u64(&m.path("t/0"), "user.end_offset"), 1);
    assert_eq!(xattr_u64(&m.path("t/1"), "user.end_offset"), 0);

    // Only the owner may change the mode; once it lets others write, they append.
    refused(
        OTHER,
        &format!("chmod 0777 {mnt}/t"),
        "Operation not permitted",
    );
    m.sh_ok("chmod 0757 t");
    allowed(OTHER, &format!("echo from-other >> {mnt}/t/0/active"));
    allowed(OTHER, &format!("echo from-other-append >> {mnt}/t/append"));
    let stored = [
        partition_lines(&m.path("t/0")),
        partition_lines(&m.path("t/1")),
    ]
    .concat();
    assert!(stored.contains(&"from-other".to_owned()), "{stored:?}");
    assert!(
        stored.contains(&"from-other-append".to_owned()),
        "{stored:?}"
    );

    // 0750: others may not even look inside. The mode survives a remount.
    m.sh_ok("chmod 0750 t");
    m.remount();
    assert_eq!(fs::metadata(m.path("t")).unwrap().mode() & 0o777, 0o750);
    refused(OTHER, &format!("ls {mnt}/t"), "Permission denied");
    refused(OTHER, &format!("cat {mnt}/t/0/active"), "Permission denied");
    refused(
        OTHER,
        &format!("echo x >> {mnt}/t/0/active"),
        "Permission denied",
    );
}

#[test]
fn only_a_topics_owner_or_root_deletes_it() {
    let Some(m) = mount_for_others(true) else {
        return;
    };
    m.sh_ok("mkdir mine && echo kept >> mine/0/active && chmod 0777 mine");
    let mnt = m.mnt.display().to_string();
    // Others may write into it (0777) but not delete it: deleting a topic is its owner's
    // right (the root is sticky, like /tmp), and rmdir says EPERM.
    allowed(OTHER, &format!("echo added >> {mnt}/mine/0/active"));
    refused(
        OTHER,
        &format!("rmdir {mnt}/mine"),
        "Operation not permitted",
    );
    assert_eq!(partition_lines(&m.path("mine/0")), ["kept", "added"]);

    // Another user's topic is theirs: they delete it; root may delete any topic.
    allowed(
        OTHER,
        &format!("mkdir {mnt}/theirs && mkdir {mnt}/theirs-too"),
    );
    assert_eq!(fs::metadata(m.path("theirs")).unwrap().uid(), OTHER);
    allowed(
        OTHER,
        &format!("setfattr -n user.partitions -v 3 {mnt}/theirs"),
    );
    assert_eq!(xattr_u64(&m.path("theirs"), "user.partitions"), 3);
    allowed(OTHER, &format!("rmdir {mnt}/theirs"));
    m.sh_ok("rmdir theirs-too");
    assert_eq!(m.sh_ok("ls"), "mine\n");
}
