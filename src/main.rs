//! The `commitfs` command: parses its arguments and configuration, then hands over to
//! `commitfs::fs::mount`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commitfs::config::Config;
use commitfs::fs::MountRequest;

#[derive(Parser)]
#[command(
    name = "commitfs",
    version,
    about = "A log filesystem: Kafka-style topics and segment files over one commit log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the store in DATA_DIR on MOUNTPOINT; returns once the mount is ready.
    /// Stop it with `umount MOUNTPOINT` (or `fusermount3 -u`).
    Mount {
        /// Configuration file (TOML); without it the built-in defaults serve.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stay in the foreground and log to stderr instead of DATA_DIR/commitfs.log.
        #[arg(long)]
        foreground: bool,
        /// Directory holding the store; created if missing.
        data_dir: PathBuf,
        /// Directory to mount on.
        mountpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    // Fault-injection tests configure failpoints in the daemon through FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let Command::Mount {
        config,
        foreground,
        data_dir,
        mountpoint,
    } = Cli::parse().command;
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("commitfs: {error}");
            return ExitCode::from(2);
        }
    };
    let request = MountRequest {
        data_dir,
        mountpoint,
        foreground,
        log_level: config.log_level,
        store: config.store,
        fs: config.fs,
        mount: config.mount,
    };
    match commitfs::fs::mount(request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("commitfs: {error}");
            ExitCode::FAILURE
        }
    }
}
