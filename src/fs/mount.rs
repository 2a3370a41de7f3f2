//! `commitfs mount`: check what can be checked up front, become a daemon unless told to
//! stay in the foreground, open the store, mount, serve until unmounted, and close the
//! store cleanly (a checkpoint). Ways to stop: `umount MOUNTPOINT` or `fusermount3 -u`, or
//! SIGTERM/SIGINT, which unmount (lazily if files are open: the daemon then stops when the
//! last one closes); a second signal closes the store and exits at once.

use std::io::{self, IsTerminal};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, Session, SessionACL, SessionUnmounter};

use crate::metrics::MetricsListener;
use crate::store::{Store, StoreConfig, StoreError};

use super::core::{CommitFs, FsSettings};
use super::daemon::{self, Forked};
use super::fuse::FuseAdapter;

/// The daemon's log, inside the data directory, when it runs in the background.
const LOG_FILE: &str = "commitfs.log";

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
}

/// Everything `commitfs mount` was asked to do.
pub struct MountRequest {
    pub data_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    /// The log filter when `RUST_LOG` is not set, e.g. "info".
    pub log_level: String,
    pub store: StoreConfig,
    pub fs: FsSettings,
    pub mount: MountSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {path}: {source}{}", stale_mount_hint(source))]
    Mountpoint { path: PathBuf, source: io::Error },
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error(
        "allow_other = true needs a line `user_allow_other` in /etc/fuse.conf when commitfs does not run as root"
    )]
    AllowOtherNotPermitted,
    #[error("starting the daemon: {0}")]
    Fork(io::Error),
    /// The reason the daemon gave for not mounting.
    #[error("{0}")]
    Daemon(String),
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

/// A mount point whose daemon died (kill -9, a crash) answers ENOTCONN until unmounted.
fn stale_mount_hint(error: &io::Error) -> &'static str {
    if error.raw_os_error() == Some(libc::ENOTCONN) {
        " (its daemon is gone: `fusermount3 -u` it, then mount again)"
    } else {
        ""
    }
}

/// Mounts and serves; in the background by default. Returns in the parent once the mount
/// is ready, and in the daemon (or in the foreground) once it has been unmounted.
pub fn mount(request: MountRequest) -> Result<(), MountError> {
    let mountpoint = check_mountpoint(&request.mountpoint)?;
    let data_dir = prepare_data_dir(&request.data_dir)?;
    if request.mount.allow_other && !allow_other_permitted() {
        return Err(MountError::AllowOtherNotPermitted);
    }
    if request.foreground {
        init_logging(&request.log_level);
        return serve(&request, &data_dir, &mountpoint, || {});
    }
    let log = data_dir.join(LOG_FILE);
    match daemon::fork().map_err(MountError::Fork)? {
        Forked::Parent(child) => child.wait_until_ready(&log).map_err(MountError::Daemon),
        Forked::Daemon(mut readiness) => {
            if let Err(error) = daemon::detach(&log) {
                readiness.fail(&format!("starting the daemon: {error}"));
                return Err(MountError::Fork(error));
            }
            init_logging(&request.log_level);
            let served = serve(&request, &data_dir, &mountpoint, || readiness.ready());
            if let Err(error) = &served {
                readiness.fail(&error.to_string());
            }
            served
        }
    }
}

fn prepare_data_dir(path: &Path) -> Result<PathBuf, MountError> {
    let failed = |source| MountError::DataDir {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(failed)?;
    path.canonicalize().map_err(failed)
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let failed = |source| MountError::Mountpoint {
        path: path.to_owned(),
        source,
    };
    let canonical = path.canonicalize().map_err(failed)?;
    match std::fs::metadata(&canonical) {
        Ok(metadata) if metadata.is_dir() => Ok(canonical),
        Ok(_) => Err(MountError::NotADirectory(path.to_owned())),
        Err(source) => Err(failed(source)),
    }
}

/// root may always allow others in; anyone else needs `user_allow_other` in fuse.conf.
fn allow_other_permitted() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|conf| conf.lines().any(|line| line.trim() == "user_allow_other"))
}

/// Logs go to stderr: the terminal in the foreground, the log file for a daemon. `RUST_LOG`,
/// when set, replaces the configured level. A log line that cannot be written (the data
/// directory's disk is full, or the terminal is gone) is dropped: the default would report
/// it with `eprintln!`, which panics when stderr itself fails.
fn init_logging(level: &str) {
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
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
    if let Some(rejected) = rejected {
        tracing::warn!("{rejected}");
    }
}

fn session_config(request: &MountRequest, data_dir: &Path) -> fuser::Config {
    // The data directory names the mount in `df` and /proc/mounts, unless a comma in it
    // would be read as an option separator.
    let source = data_dir
        .to_str()
        .filter(|path| !path.contains(','))
        .unwrap_or("commitfs");
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_owned()),
        MountOption::Subtype("commitfs".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.acl = if request.mount.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(request.mount.n_threads);
    config.clone_fd = request.mount.n_threads > 1;
    config
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
    let store =
        Store::open(data_dir, request.store.clone()).map_err(|source| MountError::Store {
            dir: data_dir.to_owned(),
            source,
        })?;
    let metrics = metrics.map(|listener| listener.serve(store.clone()));
    let metrics = match metrics.transpose() {
        Ok(metrics) => metrics,
        Err(error) => {
            close_store(&store);
            return Err(MountError::Session(error));
        }
    };
    let fs = CommitFs::new(store.clone(), request.fs.clone());
    let mut session = match Session::new(
        FuseAdapter::new(fs),
        mountpoint,
        &session_config(request, data_dir),
    ) {
        Ok(session) => session,
        Err(source) => {
            close_store(&store);
            return Err(MountError::Mount {
                mountpoint: mountpoint.to_owned(),
                source,
            });
        }
    };
    if let Err(error) = signals.watch(
        session.unmount_callable(),
        mountpoint.to_owned(),
        store.clone(),
    ) {
        close_store(&store);
        return Err(MountError::Session(error));
    }
    if request.mount.read_ahead_kb > 0 {
        set_read_ahead(mountpoint, request.mount.read_ahead_kb);
    }
    tracing::info!(
        "commitfs {} mounted on {}",
        data_dir.display(),
        mountpoint.display()
    );
    on_ready();
    let served = session.run();
    tracing::info!("{} unmounted; closing the store", mountpoint.display());
    drop(metrics);
    let closed = store.close();
    served.map_err(MountError::Session)?;
    closed.map_err(MountError::Close)
}

/// Raises the mount's read-ahead (the kernel offers FUSE 128 KiB), so a first read of a
/// segment reaches the daemon in fewer, larger requests. The device number comes from
/// /proc/self/mountinfo: a `stat` of the mountpoint would wait for this very daemon.
fn set_read_ahead(mountpoint: &Path, kib: u32) {
    let device = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|table| {
            table.lines().rev().find_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(4).map(Path::new) == Some(mountpoint))
                    .then(|| fields.get(2).map(|d| d.to_string()))?
            })
        });
    let Some(device) = device else {
        tracing::warn!(
            "read_ahead_kb: {} not found in /proc/self/mountinfo",
            mountpoint.display()
        );
        return;
    };
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

fn close_store(store: &Store) {
    if let Err(error) = store.close() {
        tracing::error!("closing the store: {error}");
    }
}

/// SIGTERM and SIGINT, blocked in every thread and taken by one watcher thread.
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls
        // only touch `set` and this thread's signal mask.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let error = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if error != 0 {
                return Err(io::Error::from_raw_os_error(error));
            }
            Ok(StopSignals { set })
        }
    }

    fn wait(&self) -> libc::c_int {
        let mut signal = 0;
        // SAFETY: `set` is initialised and `signal` is a valid place to write.
        while unsafe { libc::sigwait(&self.set, &mut signal) } != 0 {}
        signal
    }

    /// First signal: unmount, which ends the session and lets `serve` close the store.
    /// Second signal: close the store and exit without waiting for open files.
    fn watch(
        self,
        mut unmounter: SessionUnmounter,
        mountpoint: PathBuf,
        store: Arc<Store>,
    ) -> io::Result<()> {
        std::thread::Builder::new().name("commitfs-signals".to_owned()).spawn(move || {
            let signal = self.wait();
            tracing::info!("signal {signal}: unmounting {}", mountpoint.display());
            if let Err(error) = unmounter.unmount() {
                tracing::warn!(
                    "unmounting {}: {error}; detaching it instead: commitfs stops when the last open file closes \
                     (send the signal again to stop now)",
                    mountpoint.display()
                );
                detach_mount(&mountpoint);
            }
            let signal = self.wait();
            tracing::warn!("signal {signal} again: closing the store and exiting without waiting for open files");
            let code = match store.close() {
                Ok(()) => 0,
                Err(error) => {
                    tracing::error!("closing the store: {error}");
                    1
                }
            };
            std::process::exit(code);
        })?;
        Ok(())
    }
}

/// A lazy unmount: the mount point is free at once, open files keep working.
fn detach_mount(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::error!(
            "detaching {}: {}",
            mountpoint.display(),
            io::Error::last_os_error()
        );
    }
}
