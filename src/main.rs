//! The `commitfs` command: parses its arguments and configuration, then hands over to
//! `commitfs::fs::mount`. Besides its subcommands it takes the form mount(8) and fstab use
//! through mount.fuse3: `commitfs DATA_DIR MOUNTPOINT -o OPTIONS`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use commitfs::config::Config;
use commitfs::fs::{MountOptions, MountRequest};
use commitfs::mirror::MirrorConfig;
use commitfs::store::check::CheckOptions;
use commitfs::store::dump::DumpOptions;
use commitfs::store::StoreError;

#[derive(Parser)]
#[command(
    name = "commitfs",
    version,
    about = "A log filesystem: Kafka-style topics and segment files over one commit log",
    override_usage = "commitfs <COMMAND>\n       \
                      commitfs DATA_DIR MOUNTPOINT [-o OPTIONS]   (how mount(8) and fstab run it)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    helper: HelperArgs,
}

/// `mount -t fuse.commitfs DATA_DIR MOUNTPOINT -o OPTIONS` runs `commitfs DATA_DIR
/// MOUNTPOINT -o OPTIONS`: a mount in the background, as `commitfs mount` makes.
#[derive(Args)]
struct HelperArgs {
    /// Directory holding the store (the form mount(8) uses).
    #[arg(required = true)]
    data_dir: Option<PathBuf>,
    /// Directory to mount on.
    #[arg(required = true)]
    mountpoint: Option<PathBuf>,
    /// Mount options, comma-separated: config=FILE, allow_other, over_mount, ro, noexec, …; fstab's
    /// nofail, noauto, _netdev, x-systemd.* are ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the store in DATA_DIR on MOUNTPOINT; returns once the mount is ready.
    /// Stop it with `umount MOUNTPOINT` (or `fusermount3 -u`). Exit status: 0 mounted,
    /// 2 bad arguments, options or configuration, 3 mount point unusable (missing, not a
    /// directory, already a mount), 4 store unusable (in use, damaged, data directory not
    /// writable), 5 the kernel mount failed, 1 anything else.
    Mount {
        /// Configuration file (TOML); without it the built-in defaults serve.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stay in the foreground and log to stderr instead of DATA_DIR/commitfs.log.
        #[arg(long)]
        foreground: bool,
        /// Mount options, as with mount(8): allow_other, ro, noexec, config=FILE, …;
        /// over_mount mounts on a directory that is already a mount point, hiding it.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Directory holding the store; created if missing.
        data_dir: PathBuf,
        /// Directory to mount on.
        mountpoint: PathBuf,
    },
    /// Verify every file of the store in DATA_DIR, offline (refused while it is mounted).
    /// Exit status: 0 clean, 1 damage found (and repaired, with --repair), 2 could not
    /// check or repair.
    Check {
        /// Repair what was found: skip damaged spans of the commit log (their messages are
        /// reported lost), rebuild or complete the metadata (store.toml, topics/), rebuild
        /// queues and index.
        #[arg(long)]
        repair: bool,
        /// segment_messages of the store, for rebuilding a lost store.toml when the files
        /// cannot tell it.
        #[arg(long, value_name = "N")]
        segment_messages: Option<u32>,
        /// Directory holding the store.
        data_dir: PathBuf,
    },
    /// Print the messages of the store in DATA_DIR as text, one line each, in commit-log
    /// order, offline (refused while it is mounted). Exit status: 0 dumped, 1 damage found
    /// in the commit log (messages around it are still printed), 2 could not dump.
    Dump {
        /// Only this topic's messages.
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// Only this partition's messages (of every topic, without --topic).
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
        /// Only messages at this offset or later.
        #[arg(long, value_name = "OFFSET", default_value_t = 0)]
        from: u64,
        /// Directory holding the store.
        data_dir: PathBuf,
    },
    /// Ship the mount's topics into a Kafka cluster, each message exactly once, following
    /// new messages, partitions and topics; settings under [mirror] in the configuration
    /// file. Runs until stopped (kill it at any moment: a restart resumes). Exit status: 2
    /// bad arguments or configuration, 1 an error it cannot outlive.
    Mirror {
        /// Configuration file (TOML) with a [mirror] section: the file the mount reads.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the commitfs mount is.
        mountpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    // Fault-injection tests configure failpoints in the daemon through FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Mount {
            config,
            foreground,
            options,
            data_dir,
            mountpoint,
        }) => mount(config, foreground, &options, data_dir, mountpoint),
        Some(Command::Check {
            repair,
            segment_messages,
            data_dir,
        }) => check(
            &data_dir,
            &CheckOptions {
                repair,
                segment_messages,
                progress: true,
            },
        ),
        Some(Command::Dump {
            topic,
            partition,
            from,
            data_dir,
        }) => dump(
            &data_dir,
            &DumpOptions {
                topic,
                partition,
                from,
            },
        ),
        Some(Command::Mirror { config, mountpoint }) => mirror(config.as_deref(), &mountpoint),
        None => {
            let HelperArgs {
                data_dir,
                mountpoint,
                options,
            } = cli.helper;
            let (Some(data_dir), Some(mountpoint)) = (data_dir, mountpoint) else {
                unreachable!("clap requires DATA_DIR and MOUNTPOINT without a subcommand");
            };
            mount(None, false, &options, data_dir, mountpoint)
        }
    }
}

/// A bad command line, option or configuration: the exit code clap uses for usage errors.
const USAGE: u8 = 2;

fn mount(
    config: Option<PathBuf>,
    foreground: bool,
    options: &[String],
    data_dir: PathBuf,
    mountpoint: PathBuf,
) -> ExitCode {
    let refuse = |error: &dyn std::fmt::Display| {
        eprintln!("commitfs: {error}");
        ExitCode::from(USAGE)
    };
    let options = match commitfs::fs::parse_mount_options(options) {
        Ok(options) => options,
        Err(error) => return refuse(&error),
    };
    let MountOptions {
        config: config_option,
        allow_other,
        over_mount,
        flags,
    } = options;
    let config_path = match (config, config_option) {
        (Some(_), Some(_)) => return refuse(&"--config and -o config= both name a file"),
        (config, config_option) => config.or(config_option),
    };
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(error) => return refuse(&error),
    };
    let mut settings = config.mount;
    settings.allow_other |= allow_other;
    let request = MountRequest {
        data_dir,
        mountpoint,
        foreground,
        log_level: config.log_level,
        log_max_bytes: config.log_max_bytes,
        store: config.store,
        fs: config.fs,
        mount: settings,
        flags,
        over_mount,
    };
    match commitfs::fs::mount(request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("commitfs: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn mirror(config_path: Option<&Path>, mountpoint: &Path) -> ExitCode {
    let Some(config_path) = config_path else {
        eprintln!("commitfs mirror: --config FILE is needed: the file with its [mirror] section");
        return ExitCode::from(USAGE);
    };
    let settings = Config::load(Some(config_path)).map(|config| config.log_level);
    let (log_level, config) = match (settings, MirrorConfig::load(config_path)) {
        (Ok(log_level), Ok(config)) => (log_level, config),
        (Err(error), _) => {
            eprintln!("commitfs mirror: {error}");
            return ExitCode::from(USAGE);
        }
        (_, Err(error)) => {
            eprintln!("commitfs mirror: {error}");
            return ExitCode::from(USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| log_level.as_str().into()),
        )
        .init();
    match commitfs::mirror::run(config, mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("commitfs mirror: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one line per finding and a summary; recovery's own log lines go to stderr.
fn check(data_dir: &Path, options: &CheckOptions) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match commitfs::store::check::check(data_dir, options) {
        Ok(report) => {
            for finding in &report.findings {
                println!("{finding}");
            }
            println!("{}: {}", data_dir.display(), report.summary());
            ExitCode::from(u8::from(report.damaged()))
        }
        Err(error) => {
            eprintln!("commitfs check: {error}");
            ExitCode::from(2)
        }
    }
}

/// Messages to stdout (buffered: a dump may be gigabytes), notes and damage to stderr. A
/// reader that stops early (`| head`) ends the dump quietly.
fn dump(data_dir: &Path, options: &DumpOptions) -> ExitCode {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    match commitfs::store::dump::dump(data_dir, options, &mut out) {
        Ok(report) => {
            for note in &report.notes {
                eprintln!("{note}");
            }
            ExitCode::from(u8::from(report.damaged))
        }
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("commitfs dump: {error}");
            ExitCode::from(2)
        }
    }
}
