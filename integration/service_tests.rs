//! commitfs as a service (issue 10): mount(8), fstab and systemd units; the daemon's
//! lifecycle (a mountpoint that is already a mount, an immediate remount, two signals, a
//! failed mount); its log; exit codes; a mount by a user who cannot open /dev/fuse.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{wait_until, Bounded, Config, Mount, COMMITFS};

const LIMIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

fn log_of(m: &Mount) -> String {
    fs::read_to_string(m.data.join("commitfs.log")).unwrap_or_default()
}

fn mount_line(mnt: &Path) -> Option<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let wanted = format!(" {} ", mnt.display());
    table
        .lines()
        .find(|l| l.contains(&wanted))
        .map(str::to_owned)
}

/// `commitfs mount [OPTIONS] --config C DATA MNT` with `m`'s config and mountpoint, not run.
fn mount_command(m: &Mount, options: &[&str], data: &Path) -> Bounded {
    Bounded::new(COMMITFS, LIMIT)
        .arg("mount")
        .args(options)
        .arg("--config")
        .arg(m.config_path())
        .arg(data)
        .arg(&m.mnt)
        .stdin(Stdio::null())
}

/// Asserts that `out` is a refusal with exit code `code` whose stderr says `says`.
fn assert_refused(out: &Output, code: i32, says: &str, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", describe(out));
    assert!(
        text(&out.stderr).contains(says),
        "{what}: {}",
        describe(out)
    );
}

/// Asserts that a namespace script ran to its end (else says why, with the log's end), and
/// returns what it printed.
fn stdout_of_success(out: &Output, m: &Mount) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(out),
        m.log_tail(30)
    );
    text(&out.stdout)
}

/// `commitfs mount --config C DATA MNT`, with `env` for the daemon (failpoints); adopts it.
fn start_with_env(m: &mut Mount, env: &[(&str, &str)]) {
    let mut command = mount_command(m, &[], &m.data);
    for (key, value) in env {
        command = command.env(key, value);
    }
    let out = command.output();
    assert!(out.status.success(), "mount: {}", describe(&out));
    m.adopt_daemon();
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: plain syscall on the pid of our own daemon.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill -{signal} {pid}"
    );
}

fn wait_for_exit(m: &mut Mount, what: &str) {
    wait_until(LIMIT, what, || m.daemon_exited());
}

// ---- mount(8), fstab, systemd ----

/// mount(8) hands helpers no PATH of the caller's, so mount.fuse3's shell looks commitfs up
/// on the standard PATH. In a mount namespace of its own the test puts the built binary in
/// /usr/local/sbin (a bind mount only that namespace sees) and runs `script` there; nothing
/// of it is visible outside, and a daemon left behind is stopped by the guard.
fn run_in_namespace_with_commitfs_on_path(m: &Mount, script: &str) -> Output {
    let bin = dir_with_commitfs(m);
    run_in_namespace(&format!(
        "mount --bind '{}' /usr/local/sbin\n{script}",
        bin.display()
    ))
}

/// A directory holding (a link to) the commitfs under test, to put on a PATH.
fn dir_with_commitfs(m: &Mount) -> std::path::PathBuf {
    let bin = m.work.join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(COMMITFS, bin.join("commitfs")).unwrap();
    bin
}

/// Runs `script` as root with `sh -eu` in a mount namespace of its own, whose mounts nothing
/// outside sees.
fn run_in_namespace(script: &str) -> Output {
    Bounded::new("unshare", Duration::from_secs(120))
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("set -eu\nmount --make-rprivate /\n{script}"))
        .stdin(Stdio::null())
        .output()
}

/// Stops a daemon that a failed namespace script left running (it serves a mount only that
/// namespace sees, so only a signal reaches it).
struct StopLeftovers<'a>(&'a Mount);

impl Drop for StopLeftovers<'_> {
    fn drop(&mut self) {
        let wanted = self.0.mnt.as_os_str().as_encoded_bytes().to_vec();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"commitfs")) && args.contains(&&wanted[..])
            {
                signal(pid, libc::SIGTERM);
            }
        }
    }
}

/// The shell steps both mount(8) tests share: use the mount, unmount, wait for the clean
/// stop with flock(1) on the store's lock (what the README tells users to do).
fn use_and_stop(m: &Mount) -> String {
    format!(
        "grep ' {mnt} ' /proc/self/mountinfo\n\
         mkdir -p {mnt}/orders\n\
         printf 'one\\ntwo\\n' >> {mnt}/orders/append\n\
         ls {mnt}/orders | tr '\\n' ' '\n\
         cat {mnt}/orders/*/active | sort\n\
         umount {mnt}\n\
         timeout 60 flock {data}/lock true\n",
        mnt = m.mnt.display(),
        data = m.data.display()
    )
}

#[test]
fn mount_t_fuse_commitfs_with_o_config_mounts_and_umount_stops_cleanly() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let _stop = StopLeftovers(&m);
    let script = format!(
        "mount -t fuse.commitfs {data} {mnt} -o config={config},allow_other,nofail,_netdev,x-systemd.automount,noexec\n{rest}",
        data = m.data.display(),
        mnt = m.mnt.display(),
        config = m.config_path().display(),
        rest = use_and_stop(&m)
    );
    let out = run_in_namespace_with_commitfs_on_path(&m, &script);
    let stdout = stdout_of_success(&out, &m);
    assert!(stdout.contains(" - fuse.commitfs "), "type: {stdout}");
    assert!(
        stdout.contains("allow_other"),
        "allow_other reached the kernel: {stdout}"
    );
    assert!(
        stdout.contains("noexec"),
        "noexec reached the kernel: {stdout}"
    );
    assert!(stdout.contains("one\ntwo\n"), "messages: {stdout}");
    assert!(
        stdout.contains("0 1 append"),
        "the config's two partitions: {stdout}"
    );
    let log = log_of(&m);
    assert!(log.contains("closed cleanly"), "{log}");
    assert!(!m.data.join("abort").exists());
}

#[test]
fn the_example_fstab_line_mounts_with_mount_capital_t() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let _stop = StopLeftovers(&m);
    let example = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mount-config/commitfs.fstab"
    ))
    .unwrap();
    let line = example
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .expect("an fstab line in the example");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[2], "fuse.commitfs");
    // The example's type and options, with this test's directories and config.
    let options = fields[3].replace(
        "/etc/commitfs/commitfs.toml",
        &m.config_path().to_string_lossy(),
    );
    let fstab = m.work.join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} {} {options} 0 0\n",
            m.data.display(),
            m.mnt.display(),
            fields[2]
        ),
    )
    .unwrap();
    let script = format!(
        "mount -T {fstab} {mnt}\n{rest}",
        fstab = fstab.display(),
        mnt = m.mnt.display(),
        rest = use_and_stop(&m)
    );
    let out = run_in_namespace_with_commitfs_on_path(&m, &script);
    let stdout = stdout_of_success(&out, &m);
    assert!(stdout.contains("one\ntwo\n"), "{}", describe(&out));
    assert!(log_of(&m).contains("closed cleanly"));
}

#[test]
fn mount_fuse3_runs_the_helper_form_found_on_the_path() {
    let Some(mut m) = common::prepared(Config::small()) else {
        return;
    };
    let bin = dir_with_commitfs(&m);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Bounded::new("mount.fuse3", LIMIT)
        .arg(&m.data)
        .arg(&m.mnt)
        .args(["-t", "fuse.commitfs", "-o"])
        .arg(format!("rw,config={},nofail,ro", m.config_path().display()))
        .env("PATH", path)
        .stdin(Stdio::null())
        .output();
    assert!(out.status.success(), "{}", describe(&out));
    m.adopt_daemon();
    let line = mount_line(&m.mnt).expect("mounted");
    assert!(line.contains(" ro,"), "ro reached the kernel: {line}");
    m.sh_fails_with("mkdir orders", "Read-only file system");
}

#[test]
fn unknown_mount_options_are_refused_by_name_and_leave_nothing_behind() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let data = m.work.join("new-data");
    let out = Bounded::new(COMMITFS, LIMIT)
        .arg(&data)
        .arg(&m.mnt)
        .arg("-o")
        .arg(format!("config={},allow_othr", m.config_path().display()))
        .output();
    assert_refused(&out, 2, "unknown mount option `allow_othr`", "allow_othr");
    assert!(mount_line(&m.mnt).is_none());
    assert!(!data.exists(), "the refused mount made {}", data.display());
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    common::assert_units_verify(&m.work, &["srv-commitfs.mount", "commitfs.service"]);
}

// ---- lifecycle ----

#[test]
fn a_mountpoint_that_is_already_a_mount_is_refused_with_exit_code_3() {
    let Some(m) = common::mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir orders && echo kept >> orders/append");
    let other = m.work.join("other-data");
    let out = mount_command(&m, &[], &other).output();
    assert_refused(
        &out,
        3,
        "is already a mount point",
        "a mount over the mount",
    );
    assert!(!other.exists(), "the refused mount made its data directory");
    // The mount beneath is untouched and still served.
    assert_eq!(m.sh_ok("cat orders/0/active orders/1/active"), "kept\n");
}

/// Unmounts the mount on top of a path when dropped, unless disarmed once the test
/// unmounted it itself: never the one beneath.
struct TopMount(Option<std::path::PathBuf>);

impl Drop for TopMount {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = Bounded::new("umount", LIMIT).arg(&path).output();
        }
    }
}

#[test]
fn over_mount_mounts_on_a_mount_point_on_purpose_and_umount_uncovers_the_one_beneath() {
    let Some(m) = common::mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir beneath && echo kept >> beneath/append");
    let other = m.work.join("other-data");
    let out = mount_command(&m, &["-o", "over_mount"], &other).output();
    let mut top = TopMount(out.status.success().then(|| m.mnt.clone()));
    assert!(out.status.success(), "{}", describe(&out));
    // The store on top is the other one; the one beneath is hidden, not gone.
    assert_eq!(m.sh_ok("ls"), "");
    m.sh_ok("mkdir on-top");
    let log = fs::read_to_string(other.join("commitfs.log")).unwrap();
    assert!(
        log.contains("mounting over the fuse.commitfs mount"),
        "{log}"
    );
    let out = Bounded::new("umount", LIMIT).arg(&m.mnt).output();
    assert!(out.status.success(), "umount: {}", describe(&out));
    top.0 = None;
    assert_eq!(m.sh_ok("ls"), "beneath\n");
    assert_eq!(m.sh_ok("cat beneath/0/active beneath/1/active"), "kept\n");
}

/// A daemon whose mount was lazily detached keeps serving its open files; when the last
/// closes it stops, and must not unmount what is on its old mountpoint by then.
#[test]
fn a_stopping_daemon_never_unmounts_what_is_mounted_on_its_path_now() {
    let Some(mut m) = common::mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir orders && echo x >> orders/append");
    let held = fs::File::open(m.path("orders/0/active")).expect("open a file on the mount");
    let out = Bounded::new("umount", LIMIT).arg("-l").arg(&m.mnt).output();
    assert!(out.status.success(), "umount -l: {}", describe(&out));
    common::mount_tmpfs(&m.mnt, "size=1m", LIMIT);
    fs::write(m.mnt.join("on-tmpfs"), "mine").unwrap();
    drop(held);
    wait_for_exit(
        &mut m,
        "the detached daemon to stop once its last file closed",
    );
    let still = fs::read_to_string(m.mnt.join("on-tmpfs"));
    let out = Bounded::new("umount", LIMIT).arg(&m.mnt).output();
    assert_eq!(
        still.ok().as_deref(),
        Some("mine"),
        "the tmpfs on the path was unmounted"
    );
    assert!(out.status.success(), "umount tmpfs: {}", describe(&out));
    assert!(log_of(&m).contains("closed cleanly"));
}

#[test]
fn umount_then_mount_at_once_waits_for_the_old_daemon_to_close() {
    let Some(mut m) = common::prepared(Config::small()) else {
        return;
    };
    // The old daemon's close takes 4 s, longer than the store's own 2 s wait for its lock.
    start_with_env(&mut m, &[("FAILPOINTS", "store::close=sleep(4000)")]);
    let old = m.daemon_pid().unwrap();
    m.sh_ok("mkdir orders && printf 'a\\nb\\n' >> orders/append");
    let out = Bounded::shell(
        &format!(
            "umount {mnt} && {bin} mount --config {config} {data} {mnt}",
            mnt = m.mnt.display(),
            bin = COMMITFS,
            config = m.config_path().display(),
            data = m.data.display()
        ),
        LIMIT,
    )
    .stdin(Stdio::null())
    .output();
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        m.log_tail(20)
    );
    assert!(
        text(&out.stderr).contains("waiting up to"),
        "the new mount says it waits: {}",
        describe(&out)
    );
    wait_until(LIMIT, "the old daemon to exit", || {
        !Path::new(&format!("/proc/{old}")).exists() || m.daemon_exited()
    });
    m.daemon_exited();
    m.adopt_daemon();
    assert_ne!(m.daemon_pid(), Some(old));
    assert_eq!(
        m.sh_ok("cat orders/0/active orders/1/active | sort"),
        "a\nb\n"
    );
    let log = log_of(&m);
    let closed = log
        .find("closed cleanly")
        .expect("the old daemon closed cleanly");
    assert!(log[closed..].contains("mounted on"), "{log}");
}

#[test]
fn a_second_sigint_during_the_close_lets_it_finish_cleanly() {
    let Some(mut m) = common::prepared(Config::small()) else {
        return;
    };
    start_with_env(&mut m, &[("FAILPOINTS", "store::close=sleep(1500)")]);
    m.sh_ok("mkdir orders && echo x >> orders/append");
    let pid = m.daemon_pid().unwrap();
    signal(pid, libc::SIGINT);
    wait_until(LIMIT, "the daemon to start closing", || {
        log_of(&m).contains("unmounted; closing the store")
    });
    signal(pid, libc::SIGINT);
    wait_for_exit(&mut m, "the daemon to exit after two SIGINTs");
    let log = log_of(&m);
    assert!(log.contains("closed cleanly"), "{log}");
    assert!(
        !m.data.join("abort").exists(),
        "abort marker left behind:\n{log}"
    );
}

#[test]
fn a_failed_mount_removes_the_data_directory_it_made() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let made = m.work.join("made");
    let out = mount_command(&m, &[], &made.join("data"))
        .env("FAILPOINTS", "kernel_mount::mount=return")
        .output();
    assert_refused(&out, 5, "injected failure", "a failed kernel mount");
    assert!(!made.exists(), "{} left behind", made.display());
    assert!(mount_line(&m.mnt).is_none());
}

#[test]
fn exit_codes_name_the_cause() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let run = |args: &[&std::ffi::OsStr]| {
        Bounded::new(COMMITFS, LIMIT)
            .args(args)
            .stdin(Stdio::null())
            .output()
    };
    let missing_mnt = m.work.join("no-such-mountpoint");
    let missing_config = m.work.join("no-such.toml");
    let bad_config = m.work.join("bad.toml");
    fs::write(&bad_config, "segment_messages = \"many\"\n").unwrap();
    let file = m.work.join("a-file");
    fs::write(&file, "").unwrap();
    let cases: [(Vec<&std::ffi::OsStr>, i32, &str); 5] = [
        (
            vec!["mount".as_ref(), m.data.as_ref(), missing_mnt.as_ref()],
            3,
            "No such file",
        ),
        (
            vec!["mount".as_ref(), m.data.as_ref(), file.as_ref()],
            3,
            "not a directory",
        ),
        (
            vec![
                "mount".as_ref(),
                "--config".as_ref(),
                missing_config.as_ref(),
                m.data.as_ref(),
                m.mnt.as_ref(),
            ],
            2,
            "No such file",
        ),
        (
            vec![
                "mount".as_ref(),
                "--config".as_ref(),
                bad_config.as_ref(),
                m.data.as_ref(),
                m.mnt.as_ref(),
            ],
            2,
            "segment_messages",
        ),
        (vec!["mount".as_ref(), "--bogus".as_ref()], 2, "--bogus"),
    ];
    for (args, code, says) in cases {
        assert_refused(&run(&args), code, says, &format!("{args:?}"));
    }
    // A store held by a live mount: refused with 4, without waiting out the bound.
    let mut live = Mount::prepare(Config::small());
    live.start();
    let out = run(&["mount".as_ref(), live.data.as_ref(), m.mnt.as_ref()]);
    assert_refused(
        &out,
        4,
        "is mounted by process",
        "a store held by a live mount",
    );
}

// ---- the log ----

#[test]
fn the_log_is_rotated_at_its_bound() {
    let Some(m) = common::mount(Config::small().set("log_max_bytes", "4096")) else {
        return;
    };
    // Every refused name logs a line saying why.
    m.sh("for i in $(seq 150); do mkdir .hidden-$i 2>/dev/null; done; true");
    m.sh_ok("mkdir after-rotation");
    let current = m.data.join("commitfs.log");
    let previous = m.data.join("commitfs.log.1");
    assert!(previous.exists(), "no commitfs.log.1:\n{}", log_of(&m));
    for log in [&current, &previous] {
        let len = fs::metadata(log).unwrap().len();
        assert!(len <= 4096, "{} holds {len} bytes", log.display());
    }
    assert!(
        log_of(&m).contains("created topic after-rotation"),
        "{}",
        log_of(&m)
    );
}

#[test]
fn a_first_mount_and_a_recovery_after_kill_9_log_no_warnings() {
    let Some(mut m) = common::mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir orders && seq 10 >> orders/append");
    let first = log_of(&m);
    assert!(first.contains("new store"), "{first}");
    m.kill9();
    m.start();
    assert_eq!(
        m.sh_ok("cat orders/0/active orders/1/active | wc -l")
            .trim(),
        "10"
    );
    let log = log_of(&m);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(
        warnings.is_empty(),
        "normal events logged as warnings: {warnings:#?}"
    );
    assert!(
        log.contains("records since the checkpoint recovered"),
        "{log}"
    );
}

// ---- a user who is not root ----

/// Runs `script` as root in a mount namespace of its own where /dev/fuse is a node of `mode`
/// (bind-mounted over the real one, which stays as it is), with `$NOBODY` a prefix that runs
/// a command as uid/gid 65534. The test's directories are made that user's.
fn run_as_nobody_with_dev_fuse_mode(m: &Mount, mode: &str, script: &str) -> Output {
    let base = m.mnt.parent().unwrap();
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_dir(&m.data).unwrap();
    let out = Bounded::new("chown", LIMIT)
        .args(["65534:65534"])
        .arg(base)
        .arg(&m.mnt)
        .output();
    assert!(out.status.success(), "chown: {}", describe(&out));
    run_in_namespace(&format!(
        "mknod -m {mode} {work}/fuse c 10 229\n\
         mount --bind {work}/fuse /dev/fuse\n\
         NOBODY='setpriv --reuid=65534 --regid=65534 --clear-groups --reset-env'\n\
         {script}",
        work = m.work.display()
    ))
}

/// Debian's /dev/fuse is 0666: a user opens it, mount(2) says EPERM, and commitfs mounts
/// through the setuid fusermount3 instead; it unmounts through fusermount3 -u on SIGTERM.
#[test]
fn a_user_mounts_through_fusermount3_and_sigterm_unmounts_it() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let _stop = StopLeftovers(&m);
    let script = format!(
        "$NOBODY {bin} mount --config {config} {data} {mnt}\n\
         $NOBODY sh -c 'mkdir {mnt}/mine && echo hello >> {mnt}/mine/append && cat {mnt}/mine/*/active && stat -c %u {mnt}/mine'\n\
         grep ' {mnt} ' /proc/self/mountinfo\n\
         for p in /proc/[0-9]*; do\n\
           if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^{bin} mount --config .* {mnt} $'; then kill -TERM ${{p#/proc/}}; fi\n\
         done\n\
         timeout 60 flock {data}/lock true\n\
         if grep ' {mnt} ' /proc/self/mountinfo; then echo still mounted; exit 1; fi\n",
        bin = COMMITFS,
        config = m.config_path().display(),
        data = m.data.display(),
        mnt = m.mnt.display()
    );
    let out = run_as_nobody_with_dev_fuse_mode(&m, "0666", &script);
    let stdout = stdout_of_success(&out, &m);
    assert!(stdout.starts_with("hello\n65534\n"), "{stdout}");
    assert!(
        stdout.contains("user_id=65534"),
        "mounted as the user: {stdout}"
    );
    let log = log_of(&m);
    assert!(log.contains("through fusermount3"), "{log}");
    assert!(log.contains("closed cleanly"), "{log}");
}

/// Where /dev/fuse is closed to the user, commitfs still goes to fusermount3 (which needs
/// the device too), says why it failed, and leaves no data directory behind.
#[test]
fn a_user_without_dev_fuse_is_told_why_and_nothing_is_left_behind() {
    let Some(m) = common::prepared(Config::small()) else {
        return;
    };
    let _stop = StopLeftovers(&m);
    let script = format!(
        "if $NOBODY {bin} mount --config {config} {data} {mnt}; then echo mounted; exit 1; else echo \"exit $?\"; fi\n\
         test ! -e {data} && echo 'no data directory'\n",
        bin = COMMITFS,
        config = m.config_path().display(),
        data = m.data.display(),
        mnt = m.mnt.display()
    );
    let out = run_as_nobody_with_dev_fuse_mode(&m, "0600", &script);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        text(&out.stdout),
        "exit 5\nno data directory\n",
        "{}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("fusermount3") && stderr.contains("/dev/fuse"),
        "{stderr}"
    );
}
