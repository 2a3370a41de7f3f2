//! `commitfs mount`: check what can be checked up front, become a daemon unless told to
//! stay in the foreground, open the store, mount, serve until unmounted, and close the
//! store cleanly (a checkpoint). Ways to stop: `umount MOUNTPOINT` or `fusermount3 -u`, or
//! SIGTERM/SIGINT, which unmount (lazily if files are open: the daemon then stops when the
//! last one closes); a second signal closes the store and exits at once, or, when the store
//! is already closing, lets that close finish.

use std::io::{self, IsTerminal};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Session, SessionACL};
use parking_lot::Mutex;

use crate::metrics::MetricsListener;
use crate::stop_signals::StopSignals;
use crate::store::{Store, StoreConfig, StoreError};

use super::core::{CommitFs, FsSettings};
use super::daemon::{self, Forked, RotatingLog};
use super::fuse::FuseAdapter;
use super::kernel_mount::{self, KernelMount, KernelOptions, UnmountError};
use super::options::MountFlags;

/// The daemon's log, inside the data directory, when it runs in the background.
const LOG_FILE: &str = "commitfs.log";

/// How long a new mount waits for another process to let go of the store: a daemon still
/// closing after `umount` (a checkpoint of many partitions takes seconds).
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// How long the store's holder may keep `/dev/fuse` open before it counts as serving a
/// mount (and the new mount is refused at once) rather than closing after one.
const SERVING_GRACE: Duration = Duration::from_secs(2);

/// How the kernel mount is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSettings {
    /// Let users other than the one who mounted in (the kernel still checks modes).
    pub allow_other: bool,
    /// Threads serving FUSE requests.
    pub n_threads: usize,
    /// Kernel read-ahead for the mount in KiB; 0 leaves the kernel's default.
    pub read_ahead_kb: u32,
    /// Where Prometheus metrics are served (`/metrics`); None: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Ask the kernel to serve sealed segments that have files of their own straight from
    /// those files (FUSE passthrough); off, or where the kernel or the daemon's privileges
    /// do not allow it, the daemon reads those files for the kernel.
    pub passthrough: bool,
}

/// Everything `commitfs mount` was asked to do.
pub struct MountRequest {
    pub data_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// The log filter when `RUST_LOG` is not set, e.g. "info".
    pub log_level: String,
    /// The size at which the daemon's log file is rotated.
    pub log_max_bytes: u64,
    pub store: StoreConfig,
    pub fs: FsSettings,
    pub mount: MountSettings,
    /// `ro`, `noexec` and the like, from `-o`.
    pub flags: MountFlags,
    /// Mount even on a directory that is already a mount point (`-o over_mount`).
    pub over_mount: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {path}: {source}{}", stale_mount_hint(source))]
    Mountpoint { path: PathBuf, source: io::Error },
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{path} is already a mount point ({fs_type}); unmount it first, choose another \
         directory, or mount over it on purpose with -o over_mount (it is hidden until then)"
    )]
    AlreadyMounted { path: PathBuf, fs_type: String },
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("{}", store_in_use(dir, *holder, *serving))]
    StoreInUse {
        dir: PathBuf,
        holder: Option<u32>,
        serving: bool,
    },
    #[error(
        "allow_other = true needs a line `user_allow_other` in /etc/fuse.conf when commitfs does not run as root"
    )]
    AllowOtherNotPermitted,
    #[error("starting the daemon: {0}")]
    Fork(io::Error),
    /// The reason the daemon gave for not mounting, and its exit code.
    #[error("{message}")]
    Daemon { message: String, code: u8 },
    #[error("opening the store in {dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error("mounting on {mountpoint}: {source}")]
    Mount {
        mountpoint: PathBuf,
        source: io::Error,
    },
    #[error("serving the mount: {0}")]
    Session(io::Error),
    #[error("closing the store: {0}")]
    Close(StoreError),
    #[error("metrics_listen = \"{address}\": {source}")]
    Metrics {
        address: std::net::SocketAddr,
        source: io::Error,
    },
}

/// Exit codes of `commitfs mount` (the README lists them).
pub mod exit_code {
    /// Anything else: the daemon died, serving or closing failed.
    pub const OTHER: u8 = 1;
    /// A bad command line or configuration (also an address `metrics_listen` cannot bind).
    pub const CONFIG: u8 = 2;
    /// The mount point is missing, not a directory, already a mount, or stale.
    pub const MOUNTPOINT: u8 = 3;
    /// The data directory cannot be made, the store is in use, or it refused to open.
    pub const STORE: u8 = 4;
    /// The kernel mount failed (no /dev/fuse, fusermount3 refused, allow_other not allowed).
    pub const KERNEL_MOUNT: u8 = 5;
}

impl MountError {
    pub fn exit_code(&self) -> u8 {
        match self {
            MountError::Mountpoint { .. }
            | MountError::NotADirectory(_)
            | MountError::AlreadyMounted { .. } => exit_code::MOUNTPOINT,
            MountError::DataDir { .. }
            | MountError::StoreInUse { .. }
            | MountError::Store { .. } => exit_code::STORE,
            MountError::AllowOtherNotPermitted | MountError::Mount { .. } => {
                exit_code::KERNEL_MOUNT
            }
            MountError::Daemon { code, .. } => *code,
            // A bad metrics_listen is the configuration's fault.
            MountError::Metrics { .. } => exit_code::CONFIG,
            MountError::Fork(_) | MountError::Session(_) | MountError::Close(_) => exit_code::OTHER,
        }
    }
}

/// A mount point whose daemon died (kill -9, a crash) answers ENOTCONN until unmounted.
fn stale_mount_hint(error: &io::Error) -> &'static str {
    if error.raw_os_error() == Some(libc::ENOTCONN) {
        " (its daemon is gone: `fusermount3 -u` it, then mount again)"
    } else {
        ""
    }
}

fn store_in_use(dir: &Path, holder: Option<u32>, serving: bool) -> String {
    let who = holder.map_or("another process".to_owned(), |pid| format!("process {pid}"));
    if serving {
        format!(
            "the store in {} is mounted by {who}: unmount that mount first",
            dir.display()
        )
    } else {
        format!(
            "the store in {} is still open in {who} after waiting {}s for it to let go",
            dir.display(),
            RELEASE_WAIT.as_secs()
        )
    }
}

/// Mounts and serves; in the background by default. Returns in the parent once the mount
/// is ready, and in the daemon (or in the foreground) once it has been unmounted. A mount
/// that fails removes the data directory if it made it.
pub fn mount(request: MountRequest) -> Result<(), MountError> {
    let mountpoint = check_mountpoint(&request.mountpoint, request.over_mount)?;
    if request.mount.allow_other && !allow_other_permitted() {
        return Err(MountError::AllowOtherNotPermitted);
    }
    let data = DataDir::prepare(&request.data_dir)?;
    let mut ready = false;
    let mounted = wait_for_store_release(&data.path)
        .and_then(|()| mount_prepared(&request, &data.path, &mountpoint, &mut ready));
    match mounted {
        Err(_) if !ready => data.remove_if_created(),
        _ => {}
    }
    mounted
}

/// After the checks, in the process that will serve or in the parent of the daemon.
/// `ready` tells whether the mount ever served (then nothing may be removed).
fn mount_prepared(
    request: &MountRequest,
    data_dir: &Path,
    mountpoint: &Path,
    ready: &mut bool,
) -> Result<(), MountError> {
    if request.foreground {
        init_logging(&request.log_level, io::stderr);
        return serve(request, data_dir, mountpoint, || *ready = true);
    }
    let log = data_dir.join(LOG_FILE);
    match daemon::fork().map_err(MountError::Fork)? {
        Forked::Parent(child) => child
            .wait_until_ready(&log)
            .map_err(|(code, message)| MountError::Daemon { message, code }),
        Forked::Daemon(mut readiness) => {
            // The daemon never removes the data directory: its parent does, on the word.
            *ready = true;
            if let Err(error) = daemon::detach(&log) {
                readiness.fail(exit_code::OTHER, &format!("starting the daemon: {error}"));
                return Err(MountError::Fork(error));
            }
            init_logging(
                &request.log_level,
                RotatingLog::new(&log, request.log_max_bytes),
            );
            let served = serve(request, data_dir, mountpoint, || readiness.ready());
            if let Err(error) = &served {
                readiness.fail(error.exit_code(), &error.to_string());
            }
            served
        }
    }
}

/// The data directory, and the topmost directory this mount created for it, if any.
struct DataDir {
    path: PathBuf,
    created: Option<PathBuf>,
}

impl DataDir {
    fn prepare(path: &Path) -> Result<DataDir, MountError> {
        let failed = |source| MountError::DataDir {
            path: path.to_owned(),
            source,
        };
        let absolute = std::path::absolute(path).map_err(failed)?;
        let created = absolute
            .ancestors()
            .take_while(|dir| !dir.exists())
            .last()
            .map(Path::to_owned);
        std::fs::create_dir_all(&absolute).map_err(failed)?;
        Ok(DataDir {
            path: absolute.canonicalize().map_err(failed)?,
            created,
        })
    }

    fn remove_if_created(&self) {
        if let Some(created) = &self.created {
            if let Err(error) = std::fs::remove_dir_all(created) {
                eprintln!(
                    "commitfs: removing {}, made for this mount: {error}",
                    created.display()
                );
            }
        }
    }
}

fn check_mountpoint(path: &Path, over_mount: bool) -> Result<PathBuf, MountError> {
    let failed = |source| MountError::Mountpoint {
        path: path.to_owned(),
        source,
    };
    let canonical = path.canonicalize().map_err(failed)?;
    match std::fs::metadata(&canonical) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(MountError::NotADirectory(path.to_owned())),
        Err(source) => return Err(failed(source)),
    }
    match kernel_mount::top_mount(&canonical).map_err(failed)? {
        Some(_) if over_mount => Ok(canonical),
        Some(top) => Err(MountError::AlreadyMounted {
            path: canonical,
            fs_type: top.fs_type,
        }),
        None => Ok(canonical),
    }
}

/// Waits, telling the user, while another process holds the store's lock: after `umount`
/// the old daemon may still be writing its checkpoint. A holder that keeps serving a FUSE
/// mount is another live mount of this store: refused without waiting out the bound.
fn wait_for_store_release(data_dir: &Path) -> Result<(), MountError> {
    let path = data_dir.join("lock");
    let lock = match std::fs::File::open(&path) {
        Ok(lock) => lock,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MountError::DataDir { path, source });
        }
    };
    let started = Instant::now();
    let mut told = false;
    let mut serving_since = None;
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = lock_holder(&lock);
        let serving = holder.is_some_and(holds_dev_fuse);
        serving_since = serving.then(|| serving_since.unwrap_or_else(Instant::now));
        let refused = |serving| MountError::StoreInUse {
            dir: data_dir.to_owned(),
            holder,
            serving,
        };
        if serving_since.is_some_and(|since| since.elapsed() >= SERVING_GRACE) {
            return Err(refused(true));
        }
        if started.elapsed() >= RELEASE_WAIT {
            return Err(refused(false));
        }
        if !told {
            let who = holder.map_or("another process".to_owned(), |pid| format!("process {pid}"));
            eprintln!(
                "commitfs: the store in {} is still open in {who} (a daemon finishing its close after umount?); waiting up to {}s for it",
                data_dir.display(),
                RELEASE_WAIT.as_secs()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if told {
        eprintln!("commitfs: the store was let go; mounting");
    }
    Ok(())
}

/// The process holding the flock on `lock`, from /proc/locks (`… FLOCK ADVISORY WRITE PID
/// MAJOR:MINOR:INODE …`, the device numbers in hex).
fn lock_holder(lock: &std::fs::File) -> Option<u32> {
    let metadata = lock.metadata().ok()?;
    let dev = metadata.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        metadata.ino()
    );
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kind = fields.iter().position(|field| *field == "FLOCK")?;
        // A "->" before the kind marks a waiter, not a holder.
        if fields.get(kind - 1) == Some(&"->") || fields.get(kind + 4) != Some(&wanted.as_str()) {
            return None;
        }
        fields.get(kind + 3)?.parse().ok()
    })
}

/// Whether process `pid` has `/dev/fuse` open (a daemon serving a mount; one that is
/// closing its store has let go of it). Unknown (another user's process) counts as no.
fn holds_dev_fuse(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new("/dev/fuse"))
    })
}

/// root may always allow others in; anyone else needs `user_allow_other` in fuse.conf.
fn allow_other_permitted() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|conf| conf.lines().any(|line| line.trim() == "user_allow_other"))
}

/// Logs go to stderr in the foreground, to the rotating log file for a daemon. `RUST_LOG`,
/// when set, replaces the configured level. A log line that cannot be written (the data
/// directory's disk is full, or the terminal is gone) is dropped: the default would report
/// it with `eprintln!`, which panics when stderr itself fails.
fn init_logging<W>(level: &str, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let mut rejected = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&spec)
            .unwrap_or_else(|error| {
                rejected = Some(format!("ignoring RUST_LOG={spec:?}: {error}"));
                tracing_subscriber::EnvFilter::new(level)
            }),
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
    if let Some(rejected) = rejected {
        tracing::warn!("{rejected}");
    }
}

fn kernel_options(request: &MountRequest, data_dir: &Path) -> KernelOptions {
    // The data directory names the mount in `df` and /proc/mounts, unless a comma in it
    // would be read as an option separator.
    let fsname = data_dir
        .to_str()
        .filter(|path| !path.contains(','))
        .unwrap_or("commitfs");
    let flags = request.flags;
    KernelOptions {
        fsname: fsname.to_owned(),
        allow_other: request.mount.allow_other,
        read_only: flags.read_only,
        suid: flags.suid,
        dev: flags.dev,
        no_exec: flags.no_exec,
        atime: flags.atime,
    }
}

fn session_config(request: &MountRequest) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.acl = session_acl(request);
    config.n_threads = Some(request.mount.n_threads);
    config.clone_fd = request.mount.n_threads > 1;
    config
}

fn session_acl(request: &MountRequest) -> SessionACL {
    if request.mount.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    }
}

fn serve(
    request: &MountRequest,
    data_dir: &Path,
    mountpoint: &Path,
    on_ready: impl FnOnce(),
) -> Result<(), MountError> {
    // Before the store starts its threads, so every thread inherits the blocked mask and
    // only the watcher ever sees SIGTERM/SIGINT.
    let signals = StopSignals::block().map_err(MountError::Session)?;
    let metrics = request.mount.metrics_listen.map(bind_metrics).transpose()?;
    let store = open_store(request, data_dir)?;
    let closer = Arc::new(Closer::new(store.clone()));
    let metrics = match metrics
        .map(|listener| listener.serve(store.clone()))
        .transpose()
    {
        Ok(metrics) => metrics,
        Err(error) => {
            closer.close_and_log();
            return Err(MountError::Session(error));
        }
    };
    let session = match start_session(request, data_dir, mountpoint, &store, signals, &closer) {
        Ok(session) => session,
        Err(error) => {
            closer.close_and_log();
            return Err(error);
        }
    };
    on_ready();
    let served = session.run();
    tracing::info!("{} unmounted; closing the store", mountpoint.display());
    drop(metrics);
    let closed = closer.close();
    served.map_err(MountError::Session)?;
    match closed {
        Closed::Now(result) => result.map_err(MountError::Close),
        Closed::Before => Ok(()),
    }
}

/// Mounts `mountpoint` and starts serving `store` there, with the watcher of stop signals;
/// if the session cannot start, the kernel mount is undone (the caller closes the store).
fn start_session(
    request: &MountRequest,
    data_dir: &Path,
    mountpoint: &Path,
    store: &Arc<Store>,
    signals: StopSignals,
    closer: &Arc<Closer>,
) -> Result<Session<FuseAdapter>, MountError> {
    let mount_failed = |source| MountError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    };
    if request.over_mount {
        log_mount_beneath(mountpoint);
    }
    let (fd, kernel_mount) = kernel_mount::mount(mountpoint, &kernel_options(request, data_dir))
        .map_err(mount_failed)?;
    let kernel_mount = Arc::new(kernel_mount);
    let fs = CommitFs::new(store.clone(), request.fs.clone());
    let started = Session::from_fd(
        FuseAdapter::new(fs, request.mount.passthrough),
        fd,
        session_acl(request),
        session_config(request),
    )
    .map_err(mount_failed)
    .and_then(|session| {
        watch_signals(signals, kernel_mount.clone(), closer.clone())
            .map_err(MountError::Session)?;
        Ok(session)
    });
    if started.is_err() {
        if let Err(unmount) = kernel_mount.unmount(true) {
            tracing::error!("unmounting {}: {unmount}", mountpoint.display());
        }
        return started;
    }
    if request.mount.read_ahead_kb > 0 {
        set_read_ahead(
            mountpoint,
            kernel_mount.device(),
            request.mount.read_ahead_kb,
        );
    }
    let how = match kernel_mount.method {
        kernel_mount::Method::Direct => "",
        kernel_mount::Method::Fusermount => " (through fusermount3)",
    };
    tracing::info!(
        "commitfs {} mounted on {}{how}",
        data_dir.display(),
        mountpoint.display(),
    );
    started
}

/// Opens the store to serve; one another process holds is "in use".
fn open_store(request: &MountRequest, data_dir: &Path) -> Result<Arc<Store>, MountError> {
    Store::open(data_dir, request.store.clone()).map_err(|source| match source {
        StoreError::Locked(dir) => MountError::StoreInUse {
            dir,
            holder: None,
            serving: false,
        },
        source => MountError::Store {
            dir: data_dir.to_owned(),
            source,
        },
    })
}

/// Says which mount an `over_mount` mount hides.
fn log_mount_beneath(mountpoint: &Path) {
    if let Ok(Some(beneath)) = kernel_mount::top_mount(mountpoint) {
        tracing::info!(
            "mounting over the {} mount on {} (over_mount): it is hidden until this one is unmounted",
            beneath.fs_type,
            mountpoint.display()
        );
    }
}

/// Raises the mount's read-ahead (the kernel offers FUSE 128 KiB), so a first read of a
/// segment reaches the daemon in fewer, larger requests. `device` is the mount's
/// `major:minor`: a `stat` of the mountpoint would wait for this very daemon.
fn set_read_ahead(mountpoint: &Path, device: &str, kib: u32) {
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => tracing::debug!("read-ahead of {} set to {kib} KiB", mountpoint.display()),
        Err(error) => tracing::warn!(
            "read_ahead_kb: writing {knob}: {error} (needs root); keeping the kernel's default"
        ),
    }
}

fn bind_metrics(address: std::net::SocketAddr) -> Result<MetricsListener, MountError> {
    MetricsListener::bind(address).map_err(|source| MountError::Metrics { address, source })
}

/// Closes the store once, whoever asks first (the end of the session or a second signal);
/// a second caller waits until that close has finished, so the process never exits in the
/// middle of one (which would leave the abort marker behind).
struct Closer {
    store: Arc<Store>,
    closed: Mutex<bool>,
}

enum Closed {
    /// This call closed the store.
    Now(Result<(), StoreError>),
    /// Another call had closed it (and has finished).
    Before,
}

impl Closer {
    fn new(store: Arc<Store>) -> Closer {
        Closer {
            store,
            closed: Mutex::new(false),
        }
    }

    fn close(&self) -> Closed {
        let mut closed = self.closed.lock();
        if *closed {
            return Closed::Before;
        }
        *closed = true;
        Closed::Now(self.store.close())
    }

    fn close_and_log(&self) {
        if let Closed::Now(Err(error)) = self.close() {
            tracing::error!("closing the store: {error}");
        }
    }
}

/// Watches `signals`. First signal: unmount our mount, which ends the session and lets
/// `serve` close the store. Second signal: close the store and exit without waiting for open
/// files — or, if `serve` is already closing it, let that finish (`serve` then exits).
fn watch_signals(
    signals: StopSignals,
    mount: Arc<KernelMount>,
    closer: Arc<Closer>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("commitfs-signals".to_owned())
        .spawn(move || {
            let signal = signals.wait();
            tracing::info!("signal {signal}: unmounting {}", mount.mountpoint().display());
            unmount_on_signal(&mount);
            let signal = signals.wait();
            match closer.close() {
                Closed::Now(result) => {
                    tracing::warn!(
                        "signal {signal} again: closed the store without waiting for open files; exiting"
                    );
                    let code = match result {
                        Ok(()) => 0,
                        Err(error) => {
                            tracing::error!("closing the store: {error}");
                            1
                        }
                    };
                    std::process::exit(code);
                }
                Closed::Before => tracing::info!(
                    "signal {signal} again: the store was already being closed, and now is"
                ),
            }
        })?;
    Ok(())
}

/// Unmounts our mount; if files are open, detaches it instead. A mount that is no longer
/// ours on top of the path is left alone.
fn unmount_on_signal(mount: &KernelMount) {
    let path = mount.mountpoint().display();
    match mount.unmount(false) {
        Ok(()) => {}
        Err(UnmountError::Failed(error)) if error.raw_os_error() == Some(libc::EBUSY) => {
            tracing::warn!(
                "unmounting {path}: {error}; detaching it instead: commitfs stops when the last open file closes \
                 (send the signal again to stop now)"
            );
            if let Err(error) = mount.unmount(true) {
                tracing::error!("detaching {path}: {error}");
            }
        }
        Err(error) => tracing::error!(
            "unmounting {path}: {error} (send the signal again to close the store and exit)"
        ),
    }
}
