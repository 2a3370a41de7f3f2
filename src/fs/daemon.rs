//! Turning `commitfs mount` into a daemon: fork before any thread exists, let the child
//! mount, and have the parent wait on a pipe until the child says the mount is ready (or
//! why it is not), so `commitfs mount d m && ls m` never races the mount.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rustix::process::WaitOptions;

const READY: &[u8] = b"ready";
/// The exit code when the daemon died without saying why.
const FAILED: u8 = 1;

pub enum Forked {
    /// In the parent: wait for the child's word.
    Parent(Child),
    /// In the child: go on to mount, then report through this.
    Daemon(Readiness),
}

/// Forks. Call it while the process has one thread: a forked child gets only the caller's.
pub fn fork() -> io::Result<Forked> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (read_end, write_end) = (File::from(read_end), File::from(write_end));
    // SAFETY: the process is single-threaded here, so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Daemon(Readiness {
            pipe: Some(write_end),
        })),
        pid => Ok(Forked::Parent(Child {
            pid,
            pipe: read_end,
        })),
    }
}

/// The parent's view of the daemon it forked.
pub struct Child {
    pid: libc::pid_t,
    pipe: File,
}

impl Child {
    /// Waits until the daemon reports. `Ok` once the mount is ready; otherwise the exit
    /// code and reason it gave, or how it died without giving one.
    pub fn wait_until_ready(mut self, log: &Path) -> Result<(), (u8, String)> {
        let mut report = Vec::new();
        if let Err(error) = self.pipe.read_to_end(&mut report) {
            return Err((FAILED, format!("waiting for the daemon: {error}")));
        }
        if report == READY {
            return Ok(());
        }
        if let Some((code, reason)) = String::from_utf8_lossy(&report).split_once(':') {
            if let Ok(code) = code.parse() {
                return Err((code, reason.to_owned()));
            }
        }
        let pid = rustix::process::Pid::from_raw(self.pid);
        let waited = pid.map(|pid| rustix::process::waitpid(Some(pid), WaitOptions::empty()));
        let how = match waited {
            Some(Ok(Some((died, status)))) if Some(died) == pid => {
                let status = status.as_raw();
                if libc::WIFSIGNALED(status) {
                    format!("was killed by signal {}", libc::WTERMSIG(status))
                } else {
                    format!("exited with status {}", libc::WEXITSTATUS(status))
                }
            }
            _ => "exited".to_owned(),
        };
        Err((
            FAILED,
            format!(
                "the daemon {how} before the mount was ready; see {}",
                log.display()
            ),
        ))
    }
}

/// The daemon's end of the pipe: one report, then it is closed.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    pub fn ready(&mut self) {
        self.report(READY);
    }

    /// Reports why the mount failed and the exit code that says so, unless it was already
    /// reported ready.
    pub fn fail(&mut self, code: u8, reason: &str) {
        self.report(format!("{code}:{reason}").as_bytes());
    }

    fn report(&mut self, message: &[u8]) {
        if let Some(mut pipe) = self.pipe.take() {
            // The parent may have been killed; then nobody is waiting for the word.
            let _ = pipe.write_all(message);
        }
    }
}

/// Detaches the daemon from the terminal: a new session, the working directory at `/` (so
/// it holds no mount busy), stdin and stdout on /dev/null, and stderr — where the log and
/// any panic go — appended to `log`.
pub fn detach(log: &Path) -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let log_file = open_log(log)?;
    // dup2 replaces each standard descriptor atomically.
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&log_file)?;
    // setsid fails only if already a group leader, which a freshly forked child is not.
    rustix::process::setsid()?;
    std::env::set_current_dir("/")
}

/// The daemon's log file, kept under a size bound: once it reaches `max_bytes` it is renamed
/// to `NAME.1` (replacing the one before) and a new one is started. The daemon's stderr is
/// moved to each new file too, so a panic message lands where the log is.
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    /// The lock also keeps lines whole across threads.
    state: Mutex<LogState>,
}

struct LogState {
    /// Bytes in the current file.
    written: u64,
    /// Where the blocks allocated ahead of the file's end end.
    room_to: u64,
}

/// Blocks kept allocated past the log's end (`FALLOC_FL_KEEP_SIZE`), so that on a full disk
/// the log still says why writes fail and what freed space.
const LOG_ROOM: u64 = 1 << 20;

impl RotatingLog {
    /// The log at `path`, which `detach` made the daemon's stderr.
    pub fn new(path: &Path, max_bytes: u64) -> RotatingLog {
        let written = std::fs::metadata(path).map_or(0, |m| m.len());
        RotatingLog {
            path: path.to_owned(),
            max_bytes,
            state: Mutex::new(LogState {
                written,
                room_to: keep_room(written).unwrap_or(written),
            }),
        }
    }

    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.written > 0 && state.written + line.len() as u64 > self.max_bytes {
            // A log that cannot be rotated (the disk is full) keeps growing rather than
            // losing lines.
            if self.rotate().is_ok() {
                state.written = 0;
                state.room_to = keep_room(0).unwrap_or(0);
            }
        }
        io::stderr().write_all(line)?;
        state.written += line.len() as u64;
        if state.room_to < state.written + LOG_ROOM / 2 {
            // On a full disk this fails, and the room left is used up first.
            if let Some(room_to) = keep_room(state.written) {
                state.room_to = room_to;
            }
        }
        Ok(())
    }

    fn rotate(&self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let fresh = open_log(&self.path)?;
        // dup2 replaces stderr atomically.
        rustix::stdio::dup2_stderr(&fresh)?;
        Ok(())
    }
}

/// One event's writer: tracing formats a whole line, then writes it here in one call.
pub struct LogLine<'a>(&'a RotatingLog);

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RotatingLog {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine(self)
    }
}

/// Allocates `LOG_ROOM` bytes of the log (stderr) from `from` on, without changing its
/// size; where the room ends then (`u64::MAX` where it cannot be kept at all).
fn keep_room(from: u64) -> Option<u64> {
    // Stderr is the log file: `detach` made it so.
    let allocated = rustix::fs::fallocate(
        io::stderr().as_fd(),
        rustix::fs::FallocateFlags::KEEP_SIZE,
        from,
        LOG_ROOM,
    );
    match allocated {
        Ok(()) => Some(from + LOG_ROOM),
        // A file system without fallocate: no room can be kept, so stop asking.
        Err(errno) if errno.raw_os_error() == libc::EOPNOTSUPP => Some(u64::MAX),
        Err(_) => None,
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("opening the log {}: {error}", path.display()),
            )
        })
}
