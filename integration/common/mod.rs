//! A real commitfs mount for the integration tests.
//!
//! [`Mount`] starts the built binary (`commitfs mount --config FILE DATA MNT`) on a fresh temporary
//! data directory and mountpoint, and unmounts and reaps the daemon in `Drop`, so a failing test
//! never leaves a mount behind. The tests then use the mount as a user would: through `sh -c` with
//! the real tools, and through plain `std::fs` calls where an errno has to be checked exactly.
//!
//! Mounted tests never skip by themselves: without `/dev/fuse` they fail, unless the environment
//! says `COMMITFS_SKIP_MOUNT_TESTS=1` (an explicit opt-out).
//!
//! Every process these helpers start runs under a time limit ([`Bounded`]): a command that hangs
//! on a broken mount fails its test with a message naming the command, instead of hanging the
//! suite.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test, built by cargo for this test run.
pub const COMMITFS: &str = env!("CARGO_BIN_EXE_commitfs");

/// How long a clean unmount may take before the test calls it a hang (a checkpoint is written).
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// How long one command of a test may run unless the test gives it longer (`*_within`). Generous,
/// because five builds may share the machine: it only turns a hang into a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `commitfs mount` may take to report ready (it may recover after a kill -9 first).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// How long a `fusermount3`, `mount` or `umount` may take.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);

/// After the time limit's SIGTERM, how long a command has before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// A command run under coreutils `timeout` in a process group of its own: when its limit passes,
/// the whole group (a shell and whatever it started) gets SIGTERM, then SIGKILL. Ends of runs
/// that hit the limit fail the test with a message naming the command.
pub struct Bounded {
    command: Command,
    limit: Duration,
    what: String,
}

impl Bounded {
    /// `program` with a time limit of `limit` (whole seconds, at least one).
    pub fn new(program: impl AsRef<OsStr>, limit: Duration) -> Bounded {
        let limit = Duration::from_secs(limit.as_secs().max(1));
        let mut command = Command::new("timeout");
        command
            .arg(format!("--kill-after={}s", KILL_AFTER.as_secs()))
            .arg(format!("{}s", limit.as_secs()))
            .arg(program.as_ref())
            // A group from the fork on, so dropping a background command can kill all of it.
            .process_group(0);
        Bounded {
            command,
            limit,
            what: program.as_ref().to_string_lossy().into_owned(),
        }
    }

    /// `sh -c CMD` with a time limit.
    pub fn shell(cmd: &str, limit: Duration) -> Bounded {
        let mut bounded = Bounded::new("sh", limit);
        bounded.command.arg("-c").arg(cmd);
        bounded.what = cmd.to_owned();
        bounded
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Bounded {
        self.what.push(' ');
        self.what.push_str(&arg.as_ref().to_string_lossy());
        self.command.arg(arg);
        self
    }

    pub fn args<A: AsRef<OsStr>>(self, args: impl IntoIterator<Item = A>) -> Bounded {
        args.into_iter().fold(self, Bounded::arg)
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Bounded {
        self.command.current_dir(dir);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Bounded {
        self.command.env(key, value);
        self
    }

    pub fn stdin(mut self, stdin: Stdio) -> Bounded {
        self.command.stdin(stdin);
        self
    }

    /// What runs, for messages: the program and its arguments, or a shell's command line.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Runs it to its end and collects its output; panics if it ran into its time limit.
    pub fn output(mut self) -> Output {
        let started = Instant::now();
        let output = self
            .command
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", self.what));
        check_not_timed_out(&self.what, self.limit, started, output.status, &output);
        output
    }

    /// Starts it; `timeout` ends it at its limit even if nobody waits for it.
    pub fn spawn(mut self) -> io::Result<Child> {
        self.command.spawn()
    }
}

/// Panics, naming the command, if `status` is how `timeout` ends a command at its limit:
/// 124 after SIGTERM, or death by SIGKILL when the command outlived SIGTERM too.
fn check_not_timed_out(
    what: &str,
    limit: Duration,
    started: Instant,
    status: ExitStatus,
    output: &Output,
) {
    let killed = status.code() == Some(124) || status.signal() == Some(libc::SIGKILL);
    if killed && started.elapsed() >= limit {
        panic!(
            "`{what}` timed out: still running after {limit:?}, so it was killed\n\
             stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}

/// The mount configuration, as `key = value` lines of TOML (dotted keys work for sections too).
#[derive(Clone, Debug)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// Small files everywhere, so tests stay quick and light on disk, and segments roll often
    /// enough to be seen: 100 messages per segment, 1 MiB commit-log files (so messages up to
    /// 256 KiB), 2 partitions.
    pub fn small() -> Self {
        Config {
            entries: BTreeMap::new(),
        }
        .set("segment_messages", "100")
        .set("commit_log_file_bytes", "1048576")
        .set("partitions", "2")
        .set("index_slots", "4096")
        .set("index_entries", "65536")
        .set("max_message_bytes", "262144")
    }

    /// The built-in defaults, as a user's first mount has them.
    pub fn built_in() -> Self {
        Config {
            entries: BTreeMap::new(),
        }
    }

    /// Sets one key to a TOML value (strings need their quotes: `.set("flush", "\"sync\"")`).
    pub fn set(mut self, key: &str, toml_value: &str) -> Self {
        self.entries.insert(key.to_owned(), toml_value.to_owned());
        self
    }

    fn render(&self) -> String {
        let mut text = String::from("# written by the commitfs integration tests\n");
        for (key, value) in &self.entries {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    }
}

/// A mounted commitfs on temporary directories; unmounted (and the daemon reaped) on drop.
pub struct Mount {
    /// Kept out of `TempDir`'s own drop when the mount could not be removed: deleting a tree
    /// that is still mounted would walk into the live filesystem.
    root: ManuallyDrop<tempfile::TempDir>,
    /// `DATA_DIR`: the store (and the daemon's `commitfs.log`).
    pub data: PathBuf,
    /// `MOUNTPOINT`.
    pub mnt: PathBuf,
    /// Scratch space outside the mount, for input files and writer bookkeeping.
    pub work: PathBuf,
    config_path: PathBuf,
    daemon_pid: Option<i32>,
}

/// Returns whether mounted tests can run here; fails loudly when they cannot and nobody opted out.
pub fn fuse_available() -> bool {
    let opted_out = std::env::var("COMMITFS_SKIP_MOUNT_TESTS").is_ok_and(|v| v == "1");
    let fuse_device = Path::new("/dev/fuse").exists();
    let fusermount = Bounded::new("fusermount3", HELPER_DEADLINE)
        .arg("-V")
        .output()
        .status
        .success();
    if fuse_device && fusermount {
        return true;
    }
    if opted_out {
        eprintln!(
            "COMMITFS_SKIP_MOUNT_TESTS=1: mounted test not run (no /dev/fuse or fusermount3)"
        );
        return false;
    }
    panic!(
        "mounted tests need /dev/fuse (present: {fuse_device}) and fusermount3 (present: \
         {fusermount}); install fuse3, or set COMMITFS_SKIP_MOUNT_TESTS=1 to skip them explicitly"
    );
}

/// Mounts with `config`, or returns `None` only under the explicit opt-out.
pub fn mount(config: Config) -> Option<Mount> {
    fuse_available().then(|| Mount::new(config))
}

/// The directories and config file of a mount of `config`, not mounted yet, or `None` only
/// under the explicit opt-out.
pub fn prepared(config: Config) -> Option<Mount> {
    fuse_available().then(|| Mount::prepare(config))
}

impl Mount {
    pub fn new(config: Config) -> Mount {
        let mut mount = Mount::prepare(config);
        mount.start();
        mount
    }

    /// The directories and config file, not mounted yet (so a test can set up `data` first).
    pub fn prepare(config: Config) -> Mount {
        become_subreaper();
        let root = tempfile::Builder::new()
            .prefix("commitfs-test-")
            .tempdir()
            .expect("create temporary directory");
        let base = root.path().canonicalize().expect("canonicalize temp dir");
        let data = base.join("data");
        let mnt = base.join("mnt");
        let work = base.join("work");
        for dir in [&data, &mnt, &work] {
            fs::create_dir(dir).expect("create test directory");
        }
        let config_path = base.join("commitfs.toml");
        fs::write(&config_path, config.render()).expect("write config");
        Mount {
            root: ManuallyDrop::new(root),
            data,
            mnt,
            work,
            config_path,
            daemon_pid: None,
        }
    }

    /// `commitfs mount --config FILE DATA MNT`; returns once the daemon says it is ready.
    pub fn start(&mut self) {
        self.start_daemon(None);
    }

    /// [`start`](Self::start) with `FAILPOINTS` set for the daemon alone.
    pub fn start_with_failpoints(&mut self, failpoints: &str) {
        self.start_daemon(Some(failpoints));
    }

    fn start_daemon(&mut self, failpoints: Option<&str>) {
        assert!(self.daemon_pid.is_none(), "already mounted");
        let mut mount = Bounded::new(COMMITFS, START_DEADLINE)
            .arg("mount")
            .arg("--config")
            .arg(&self.config_path)
            .arg(&self.data)
            .arg(&self.mnt);
        if let Some(failpoints) = failpoints {
            mount = mount.env("FAILPOINTS", failpoints);
        }
        let output = mount.stdin(Stdio::null()).output();
        if !output.status.success() {
            panic!(
                "commitfs mount failed ({}):\nstdout: {}\nstderr: {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(60)
            );
        }
        assert!(
            is_mounted(&self.mnt),
            "commitfs mount returned success but {} is not in /proc/self/mountinfo\n{}",
            self.mnt.display(),
            self.log_tail(60)
        );
        let pid = find_daemon(&self.mnt).unwrap_or_else(|| {
            panic!(
                "no commitfs daemon process found serving {}",
                self.mnt.display()
            )
        });
        self.daemon_pid = Some(pid);
    }

    /// Makes topic `t` with raw framing (each write one message) and opens its partition 0's
    /// `active` file for appending.
    pub fn open_raw_topic(&self) -> fs::File {
        self.sh_ok("mkdir t && setfattr -n user.framing -v raw t");
        fs::OpenOptions::new()
            .append(true)
            .open(self.path("t/0/active"))
            .unwrap()
    }

    /// The config file the mount uses.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The pid of the daemon this guard stops on drop, if any.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon_pid
    }

    /// After a test mounted by other means (mount(8), another user, its own `commitfs
    /// mount`): finds the daemon serving `mnt`, so drop stops it.
    pub fn adopt_daemon(&mut self) {
        assert!(self.daemon_pid.is_none(), "already has a daemon");
        self.daemon_pid = Some(find_daemon(&self.mnt).unwrap_or_else(|| {
            panic!(
                "no commitfs daemon process found serving {}\n{}",
                self.mnt.display(),
                self.log_tail(40)
            )
        }));
    }

    /// Whether the daemon has exited (then drop no longer stops it).
    pub fn daemon_exited(&mut self) -> bool {
        match self.daemon_pid {
            Some(pid) if is_alive(pid) => false,
            _ => {
                self.daemon_pid = None;
                true
            }
        }
    }

    /// A clean stop (`fusermount3 -u`), waiting for the daemon to exit; panics if it does not.
    pub fn unmount(&mut self) {
        let pid = self.daemon_pid.take().expect("not mounted");
        let mut last = None;
        for _ in 0..50 {
            let out = fusermount(["-u"], &self.mnt);
            if out.status.success() {
                last = None;
                break;
            }
            last = Some(out);
            // EBUSY while some process of the test still lets go of the mount.
            thread::sleep(Duration::from_millis(100));
        }
        if let Some(failure) = last {
            self.daemon_pid = Some(pid);
            panic!("fusermount3 -u {} failed: {failure:?}", self.mnt.display());
        }
        if !wait_for_exit(pid, STOP_DEADLINE) {
            self.daemon_pid = Some(pid);
            panic!(
                "the daemon (pid {pid}) did not exit within {STOP_DEADLINE:?} of the unmount\n{}",
                self.log_tail(60)
            );
        }
    }

    /// Unmount cleanly and mount the same data directory again.
    pub fn remount(&mut self) {
        self.unmount();
        self.start();
    }

    /// Sends `signal` (SIGTERM, SIGINT) to the daemon, which should unmount and stop by itself;
    /// panics if it has not exited within the deadline.
    pub fn stop_with_signal(&mut self, signal: i32) {
        let pid = self.daemon_pid.take().expect("not mounted");
        // SAFETY: plain syscall on a pid we found serving our own mountpoint.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill -{signal} {pid}: {}",
            io::Error::last_os_error()
        );
        assert!(
            wait_for_exit(pid, STOP_DEADLINE),
            "the daemon (pid {pid}) did not stop within {STOP_DEADLINE:?} of signal {signal}\n{}",
            self.log_tail(40)
        );
    }

    /// SIGKILL the daemon (a crash), then clear the dead mount. Call [`Mount::start`] to recover.
    pub fn kill9(&mut self) {
        let pid = self.daemon_pid.take().expect("not mounted");
        // SAFETY: plain syscall on a pid we found serving our own mountpoint.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}: {}", io::Error::last_os_error());
        assert!(
            wait_for_exit(pid, Duration::from_secs(30)),
            "daemon {pid} survived SIGKILL"
        );
        let out = fusermount(["-u", "-z"], &self.mnt);
        assert!(
            out.status.success() || !is_mounted(&self.mnt),
            "fusermount3 -u -z after kill -9 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sh -c CMD` with the mountpoint as working directory; `$WORK` names the scratch dir.
    /// It may run for [`COMMAND_TIMEOUT`]; longer fails the test.
    pub fn sh(&self, cmd: &str) -> Output {
        self.sh_within(cmd, COMMAND_TIMEOUT)
    }

    /// [`Mount::sh`] with a time limit of the test's choosing.
    pub fn sh_within(&self, cmd: &str, limit: Duration) -> Output {
        self.sh_command_within(cmd, limit).output()
    }

    /// Like [`Mount::sh`], but the command must succeed; returns its stdout.
    pub fn sh_ok(&self, cmd: &str) -> String {
        self.sh_ok_within(cmd, COMMAND_TIMEOUT)
    }

    /// [`Mount::sh_ok`] with a time limit of the test's choosing.
    pub fn sh_ok_within(&self, cmd: &str, limit: Duration) -> String {
        let out = self.sh_within(cmd, limit);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Like [`Mount::sh_ok`] but returns stdout as raw bytes.
    pub fn sh_bytes(&self, cmd: &str) -> Vec<u8> {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The command must fail, and its stderr must say `expected` (the errno's text, as a user
    /// reads it, e.g. "Operation not permitted").
    pub fn sh_fails_with(&self, cmd: &str, expected: &str) {
        let out = self.sh(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "`{cmd}` should fail with \"{expected}\"; status {}, stderr: {stderr}",
            out.status
        );
    }

    /// A `sh -c` command, not started yet (for long-running tools such as `tail -f`), limited to
    /// [`COMMAND_TIMEOUT`].
    pub fn sh_command(&self, cmd: &str) -> Bounded {
        self.sh_command_within(cmd, COMMAND_TIMEOUT)
    }

    /// [`Mount::sh_command`] with a time limit of the test's choosing.
    pub fn sh_command_within(&self, cmd: &str, limit: Duration) -> Bounded {
        Bounded::shell(cmd, limit)
            .current_dir(&self.mnt)
            .env("WORK", &self.work)
            .stdin(Stdio::null())
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mnt.join(relative)
    }

    /// The last `lines` lines of the daemon's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.data.join("commitfs.log");
        match fs::read_to_string(&log) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!("--- last lines of {} ---\n{tail}", log.display())
            }
            Err(e) => format!("(no daemon log at {}: {e})", log.display()),
        }
    }

    /// The daemon's count of READ requests served (a root xattr), for the page-cache proof.
    pub fn read_requests(&self) -> u64 {
        xattr_u64(&self.mnt, "user.stats.read_requests")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(40));
        }
        if let Some(pid) = self.daemon_pid.take() {
            let mut unmounted = false;
            for _ in 0..30 {
                if fusermount(["-u"], &self.mnt).status.success() {
                    unmounted = true;
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            if !unmounted {
                fusermount(["-u", "-z"], &self.mnt);
            }
            if !wait_for_exit(pid, STOP_DEADLINE) {
                eprintln!("daemon {pid} still running after unmount; sending SIGKILL");
                // SAFETY: plain syscall on the pid of our own daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_for_exit(pid, Duration::from_secs(10));
            }
        }
        if is_mounted(&self.mnt) {
            fusermount(["-u", "-z"], &self.mnt);
        }
        // A test may have put the data directory on a filesystem of its own (a tmpfs).
        if is_mounted(&self.data) {
            Bounded::new("umount", HELPER_DEADLINE)
                .arg("-l")
                .arg(&self.data)
                .output();
        }
        if is_mounted(&self.mnt) || is_mounted(&self.data) {
            eprintln!(
                "{} is still mounted: leaving its temp dir in place",
                self.mnt.display()
            );
        } else {
            // SAFETY: dropped exactly once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.root) };
        }
    }
}

/// `fusermount3 FLAGS MNT`, bounded.
fn fusermount<const N: usize>(flags: [&str; N], mnt: &Path) -> Output {
    Bounded::new("fusermount3", HELPER_DEADLINE)
        .args(flags)
        .arg(mnt)
        .output()
}

/// Makes this test process adopt orphaned descendants, so the daemon (which `commitfs mount`
/// forks and leaves behind) becomes our child and can be waited for and reaped.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        );
    });
}

/// The lines of a command's output, without their newlines.
pub fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Starts `tail -f -n +1 FILE` on the mount in the background; returns it once it printed
/// exactly the `lines` lines the file holds now (waiting at most `deadline`).
pub fn tail_f(m: &Mount, file: &str, lines: usize, deadline: Duration) -> Background {
    let tail = Background::spawn(m.sh_command(&format!("exec tail -f -n +1 {file}")));
    wait_until(
        deadline,
        &format!("tail -f {file} prints {lines} lines"),
        || lines_of(&tail.output()).len() == lines,
    );
    tail
}

/// Asserts that `systemd-analyze verify` passes the units `names` of `mount-config/`, as
/// shipped but for the binary's path (it checks that ExecStart names an executable, and the
/// commitfs under test is not in /usr/local/bin): copies in `work`.
pub fn assert_units_verify(work: &Path, names: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-config");
    let mut units = Vec::new();
    for name in names {
        let unit = fs::read_to_string(dir.join(name)).unwrap();
        let copy = work.join(name);
        fs::write(&copy, unit.replace("/usr/local/bin/commitfs", COMMITFS)).unwrap();
        units.push(copy);
    }
    let out = Bounded::new("systemd-analyze", Duration::from_secs(60))
        .arg("verify")
        .args(&units)
        .output();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {names:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mount -t tmpfs -o OPTIONS tmpfs DIR` (root only), within `limit`: a small disk to fill,
/// or with `remount,size=…` the same one grown.
pub fn mount_tmpfs(dir: &Path, options: &str, limit: Duration) {
    let out = Bounded::new("mount", limit)
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .output();
    assert!(
        out.status.success(),
        "mounting a tmpfs needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `input` to the mount's `active` file with one `cat` and asserts that the disk
/// filled before its end: cat fails with ENOSPC.
pub fn cat_until_enospc(m: &Mount, input: String, active: &str) {
    fs::write(m.work.join("lines"), input).unwrap();
    let out = m.sh(&format!("cat \"$WORK/lines\" >> {active}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("No space left on device"),
        "{stderr}"
    );
}

/// Whether `mnt` is a mountpoint now (from /proc/self/mountinfo).
pub fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let wanted = mnt.to_string_lossy();
    // Field 5 is the mount point; octal escapes only matter for unusual characters we never use.
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// The pid of the commitfs process whose command line names `mnt`.
fn find_daemon(mnt: &Path) -> Option<i32> {
    let own = std::process::id() as i32;
    let wanted = mnt.as_os_str().as_bytes();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_commitfs = args.first().is_some_and(|a| a.ends_with(b"commitfs"));
        if is_commitfs && args.contains(&wanted) && is_alive(pid) {
            found.push(pid);
        }
    }
    assert!(
        found.len() <= 1,
        "several commitfs processes serve {}: {found:?}",
        mnt.display()
    );
    found.pop()
}

/// Alive and not a zombie; reaps it if it is our (adopted) child and has exited.
fn is_alive(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG never blocks.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc == pid {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn wait_for_exit(pid: i32, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if !is_alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !is_alive(pid)
}

/// Polls `done` every 50 ms until it holds; panics with `what` when `deadline` passes. Deadlines
/// only keep a broken filesystem from hanging the suite: no test measures time.
pub fn wait_until(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if done() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("gave up after {deadline:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A long-running tool (e.g. `tail -f`) whose stdout is collected in the background. Its time
/// limit ends it even if nobody waits; dropping it kills its whole process group (the shell and
/// whatever it started) and reaps it, so it never keeps the mount busy.
pub struct Background {
    child: Child,
    /// Once reaped, its process group id may name another group: no more kills.
    reaped: bool,
    what: String,
    limit: Duration,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Background {
    pub fn spawn(command: Bounded) -> Background {
        let (what, limit) = (command.what.clone(), command.limit);
        let mut command = command.command;
        // Before the spawn: `timeout` counts its limit from its own start, and a clock started
        // after it could read less than the limit when the command was killed at it.
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let mut pipe = child.stdout.take().expect("piped stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stdout);
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Background {
            child,
            reaped: false,
            what,
            limit,
            started,
            stdout,
            reader: Some(reader),
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has ended by itself, without waiting; a command that ran into
    /// its time limit fails the test.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("waitpid")?;
        self.reaped = true;
        self.check_not_timed_out(status);
        Some(status)
    }

    /// Waits for it to end (at most its time limit); a command that ran into the limit fails
    /// the test.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("waitpid");
        self.reaped = true;
        self.check_not_timed_out(status);
        status
    }

    fn check_not_timed_out(&self, status: ExitStatus) {
        let printed = Output {
            status,
            stdout: self.output(),
            stderr: Vec::new(),
        };
        check_not_timed_out(&self.what, self.limit, self.started, status, &printed);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if !self.reaped {
            // The child leads its own process group (see `Bounded`): kill all of it.
            // SAFETY: plain syscall on the process group of our own unreaped child.
            unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The errno of a failed call (panics if it succeeded).
pub fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got Ok({value:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no OS error in {e:?}")),
    }
}

/// Asserts that `result` failed with `expected` (an errno), naming both on failure.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(result: io::Result<T>, expected: i32, what: &str) {
    match result {
        Ok(value) => panic!(
            "{what}: expected {}, but it succeeded ({value:?})",
            errno_name(expected)
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(expected),
            "{what}: expected {}, got {e}",
            errno_name(expected)
        ),
    }
}

pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EFBIG => "EFBIG",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        _ => "errno",
    };
    format!("{name} ({code})")
}

/// An extended attribute through the `xattr` crate (following symlinks); `None` is ENODATA.
pub fn xattr_get(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    xattr::get_deref(path, name)
}

/// An extended attribute that must exist, as text with surrounding whitespace trimmed.
#[track_caller]
pub fn xattr_text(path: &Path, name: &str) -> String {
    let value = xattr_get(path, name)
        .unwrap_or_else(|e| panic!("getxattr {} {name}: {e}", path.display()))
        .unwrap_or_else(|| panic!("getxattr {} {name}: no such attribute", path.display()));
    String::from_utf8(value)
        .expect("UTF-8 attribute")
        .trim()
        .to_owned()
}

/// A numeric extended attribute.
#[track_caller]
pub fn xattr_u64(path: &Path, name: &str) -> u64 {
    let text = xattr_text(path, name);
    text.parse()
        .unwrap_or_else(|e| panic!("{name} = {text:?} is not a number: {e}"))
}

/// Raw `getxattr(2)` with a buffer of exactly `size` bytes: the size-probe protocol as it is.
/// Returns the call's result (the value's length) and the bytes it filled in.
pub fn raw_getxattr(path: &Path, name: &str, size: usize) -> io::Result<(usize, Vec<u8>)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: both strings are NUL-terminated; the buffer holds `size` bytes.
    let rc = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate((rc as usize).min(size));
    Ok((rc as usize, buf))
}

/// Raw `listxattr(2)` with a buffer of exactly `size` bytes.
pub fn raw_listxattr(path: &Path, size: usize) -> io::Result<(usize, Vec<u8>)> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: NUL-terminated path; the buffer holds `size` bytes.
    let rc = unsafe { libc::listxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate((rc as usize).min(size));
    Ok((rc as usize, buf))
}

/// The names `listxattr(2)` gives for `path` (following symlinks).
pub fn xattr_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = xattr::list_deref(path)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()))
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Segment files of a partition directory (20-digit names ending in `.log`), oldest first.
pub fn segment_files(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(partition_dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", partition_dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| is_segment_name(&path.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.ends_with(".log") && name[..20].bytes().all(|b| b.is_ascii_digit())
}

/// The name a segment file with this base offset has.
pub fn segment_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// All messages of a partition as stored: its segment files concatenated, oldest first.
pub fn partition_bytes(partition_dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for file in segment_files(partition_dir) {
        all.extend(fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display())));
    }
    all
}

/// The lines of a partition, without their newlines.
pub fn partition_lines(partition_dir: &Path) -> Vec<String> {
    let bytes = partition_bytes(partition_dir);
    String::from_utf8(bytes)
        .expect("UTF-8 messages")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), to predict where `append` puts a key.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's Java client picks for a keyed record.
pub fn kafka_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A small deterministic generator (splitmix64): reproducible inputs without extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// GET `path` from 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("headers, then a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}
