//! The mount's configuration file (TOML). Every key is optional and has a built-in default;
//! `mount-config/commitfs.toml` lists them all with their defaults. An unknown key or a bad
//! value is an error that names the file and the key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::fs::{FsSettings, MountSettings, TopicDefaults};
use crate::store::{
    FlushPolicy, Framing, StoreConfig, MAX_OPEN_FILES, MAX_PARTITIONS, MIN_OPEN_FILES,
};

/// What the file says, key by key, with the defaults filled in.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    log_level: String,
    log_max_bytes: u64,

    allow_other: bool,
    n_threads: u32,
    entry_ttl_ms: u64,
    attr_ttl_ms: u64,
    sealed_segment_ttl_ms: u64,
    read_ahead_kb: u32,
    metrics_listen: String,
    passthrough: bool,

    commit_log_file_bytes: u64,
    segment_messages: u32,
    max_message_bytes: u64,
    flush: FlushMode,
    flush_interval_ms: u64,
    checkpoint_interval_ms: u64,
    retention_check_interval_ms: u64,
    max_disk_bytes: u64,
    index_slots: u32,
    index_entries: u32,
    materialize_segments: bool,
    max_open_files: u32,
    /// Retired: the commit log is written with `pwrite`, so there is nothing to pre-touch.
    /// Accepted so that older configuration files still mount.
    warm_mapped_files: Option<bool>,

    partitions: u32,
    framing: Framing,
    key_separator: String,
    retention_ms: i64,
    retention_bytes: i64,

    /// `commitfs mirror`'s section (`src/mirror/config.rs` reads it): the mount leaves it alone.
    mirror: Option<toml::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
enum FlushMode {
    Async,
    Sync,
}

impl Default for ConfigFile {
    fn default() -> Self {
        let store = StoreConfig::default();
        let (flush, flush_interval_ms) = match store.flush {
            FlushPolicy::Async { interval_ms } => (FlushMode::Async, interval_ms),
            FlushPolicy::Sync => (FlushMode::Sync, 500),
        };
        ConfigFile {
            log_level: "info".to_owned(),
            log_max_bytes: 10 << 20,
            allow_other: false,
            n_threads: 2,
            entry_ttl_ms: 1_000,
            attr_ttl_ms: 1_000,
            sealed_segment_ttl_ms: 3_600_000,
            read_ahead_kb: 1024,
            metrics_listen: String::new(),
            passthrough: true,
            commit_log_file_bytes: store.commit_log_file_bytes,
            segment_messages: store.segment_messages,
            max_message_bytes: store.max_message_bytes as u64,
            flush,
            flush_interval_ms,
            checkpoint_interval_ms: store.checkpoint_interval_ms,
            retention_check_interval_ms: store.retention_check_interval_ms,
            max_disk_bytes: store.max_disk_bytes.unwrap_or(0),
            index_slots: store.index_slots,
            index_entries: store.index_entries,
            materialize_segments: store.materialize_segments,
            max_open_files: store.max_open_files as u32,
            warm_mapped_files: None,
            partitions: 1,
            framing: Framing::Lines,
            key_separator: String::new(),
            retention_ms: -1,
            retention_bytes: -1,
            mirror: None,
        }
    }
}

/// The settings a mount runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The log filter when `RUST_LOG` is not set.
    pub log_level: String,
    /// The daemon's log file is renamed to `commitfs.log.1` when it reaches this size.
    pub log_max_bytes: u64,
    pub store: StoreConfig,
    pub fs: FsSettings,
    pub mount: MountSettings,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct ConfigError {
    /// The file, or "the built-in configuration".
    origin: String,
    problem: String,
}

impl Default for Config {
    fn default() -> Self {
        ConfigFile::default()
            .validate()
            .expect("the built-in defaults are valid")
    }
}

impl Config {
    /// The configuration in `path`, or the built-in defaults without one.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: origin.clone(),
            problem: error.to_string(),
        })?;
        Config::parse(&text, &origin)
    }

    /// Parses TOML `text`; errors name `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError {
            origin: origin.to_owned(),
            problem: describe_toml_error(text, &error),
        })?;
        file.validate().map_err(|problem| ConfigError {
            origin: origin.to_owned(),
            problem,
        })
    }
}

/// A TOML error as "line N: key `k`: what is wrong" (the key when the line assigns one).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let line_start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |at| at + 1);
    let line_number = text[..line_start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) if !line.trim_start().starts_with('[') => {
            let key = key.trim().trim_matches('"');
            format!("line {line_number}: key `{key}`: {message}")
        }
        _ => format!("line {line_number}: {message}"),
    }
}

fn bad(key: &str, problem: impl std::fmt::Display) -> String {
    format!("key `{key}`: {problem}")
}

/// `-1` means no limit, as in Kafka.
fn limit(key: &str, value: i64) -> Result<Option<u64>, String> {
    match value {
        -1 => Ok(None),
        0.. => Ok(Some(value as u64)),
        _ => Err(bad(
            key,
            format!("{value} is neither a limit (0 or more) nor -1 (no limit)"),
        )),
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    minimum: T,
) -> Result<T, String> {
    if value < minimum {
        return Err(bad(
            key,
            format!("{value} is below the minimum of {minimum}"),
        ));
    }
    Ok(value)
}

fn within<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    minimum: T,
    maximum: T,
) -> Result<T, String> {
    if value < minimum || value > maximum {
        return Err(bad(key, format!("{value} is not {minimum} to {maximum}")));
    }
    Ok(value)
}

/// `metrics_listen`: empty (nothing listens) or an address and port.
fn metrics_address(text: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        bad(
            "metrics_listen",
            format!(
                "{text:?} is not an address and port like \"127.0.0.1:9464\" or \"[::1]:9464\""
            ),
        )
    })
}

impl ConfigFile {
    fn validate(self) -> Result<Config, String> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|error| {
            bad(
                "log_level",
                format!("{:?} is not a log filter: {error}", self.log_level),
            )
        })?;
        let n_threads = within("n_threads", self.n_threads, 1, 64)?;
        let commit_log_file_bytes = within(
            "commit_log_file_bytes",
            self.commit_log_file_bytes,
            4096,
            u64::from(u32::MAX),
        )?;
        if self.max_message_bytes == 0 || self.max_message_bytes >= commit_log_file_bytes {
            return Err(bad(
                "max_message_bytes",
                format!(
                    "{} is not 1 to less than commit_log_file_bytes",
                    self.max_message_bytes
                ),
            ));
        }
        if self.key_separator.contains('\n') {
            return Err(bad(
                "key_separator",
                "may not contain a newline, which ends every `lines` message",
            ));
        }
        let store = self.store_config(commit_log_file_bytes)?;
        if self.warm_mapped_files.is_some() {
            tracing::warn!(
                "warm_mapped_files no longer has an effect (the commit log is written with pwrite, which needs no pre-touched pages); remove it from the configuration"
            );
        }
        let fs = FsSettings {
            entry_ttl: Duration::from_millis(self.entry_ttl_ms),
            attr_ttl: Duration::from_millis(self.attr_ttl_ms),
            sealed_segment_ttl: Duration::from_millis(self.sealed_segment_ttl_ms),
            topic_defaults: TopicDefaults {
                partitions: within("partitions", self.partitions, 1, MAX_PARTITIONS)?,
                framing: self.framing,
                key_separator: (!self.key_separator.is_empty())
                    .then(|| self.key_separator.into_bytes()),
                retention_ms: limit("retention_ms", self.retention_ms)?,
                retention_bytes: limit("retention_bytes", self.retention_bytes)?,
            },
        };
        let mount = MountSettings {
            allow_other: self.allow_other,
            n_threads: n_threads as usize,
            read_ahead_kb: within("read_ahead_kb", self.read_ahead_kb, 0, 16_384)?,
            metrics_listen: metrics_address(&self.metrics_listen)?,
            passthrough: self.passthrough,
        };
        Ok(Config {
            log_level: self.log_level,
            log_max_bytes: at_least("log_max_bytes", self.log_max_bytes, 4096)?,
            store,
            fs,
            mount,
        })
    }

    /// The store's settings, checked (`commit_log_file_bytes` already is).
    fn store_config(&self, commit_log_file_bytes: u64) -> Result<StoreConfig, String> {
        let flush = match self.flush {
            FlushMode::Async => FlushPolicy::Async {
                interval_ms: at_least("flush_interval_ms", self.flush_interval_ms, 1)?,
            },
            FlushMode::Sync => FlushPolicy::Sync,
        };
        Ok(StoreConfig {
            commit_log_file_bytes,
            segment_messages: at_least("segment_messages", self.segment_messages, 1)?,
            max_message_bytes: self.max_message_bytes as usize,
            flush,
            checkpoint_interval_ms: at_least(
                "checkpoint_interval_ms",
                self.checkpoint_interval_ms,
                1,
            )?,
            retention_check_interval_ms: at_least(
                "retention_check_interval_ms",
                self.retention_check_interval_ms,
                1,
            )?,
            max_disk_bytes: (self.max_disk_bytes > 0).then_some(self.max_disk_bytes),
            index_slots: at_least("index_slots", self.index_slots, 1)?,
            index_entries: at_least("index_entries", self.index_entries, 2)?,
            materialize_segments: self.materialize_segments,
            max_open_files: within(
                "max_open_files",
                self.max_open_files,
                MIN_OPEN_FILES,
                MAX_OPEN_FILES,
            )? as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../mount-config/commitfs.toml");
    const TINY: &str = include_str!("../mount-config/tiny-segments.toml");

    fn error(text: &str) -> String {
        Config::parse(text, "/etc/commitfs.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_follow_the_store_and_the_contract() {
        let config = Config::default();
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.log_level, "info");
        assert_eq!(
            config.mount,
            MountSettings {
                allow_other: false,
                n_threads: 2,
                read_ahead_kb: 1024,
                metrics_listen: None,
                passthrough: true,
            }
        );
        assert_eq!(config.fs.topic_defaults.partitions, 1);
        assert_eq!(config.fs.topic_defaults.framing, Framing::Lines);
        assert_eq!(config.fs.topic_defaults.key_separator, None);
        assert_eq!(Config::parse("", "empty").unwrap(), config);
    }

    #[test]
    fn the_example_lists_every_key_with_its_default() {
        assert_eq!(
            Config::parse(EXAMPLE, "commitfs.toml").unwrap(),
            Config::default()
        );
        let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let defaults = match toml::Value::try_from(ConfigFile::default()).unwrap() {
            toml::Value::Table(table) => table,
            other => panic!("defaults serialised as {other:?}"),
        };
        let mut listed: Vec<_> = example.keys().collect();
        let mut known: Vec<_> = defaults.keys().collect();
        listed.sort();
        known.sort();
        assert_eq!(listed, known);
    }

    #[test]
    fn the_tiny_segment_example_rolls_often() {
        let config = Config::parse(TINY, "tiny-segments.toml").unwrap();
        assert!(config.store.segment_messages <= 10);
        assert!(config.store.commit_log_file_bytes <= 1 << 20);
    }

    #[test]
    fn values_reach_the_store_and_the_mount() {
        let config = Config::parse(
            "segment_messages = 5\nflush = \"sync\"\nmax_disk_bytes = 1000000\npartitions = 3\n\
             key_separator = \"\\t\"\nretention_ms = 60000\nallow_other = true\nn_threads = 1\n\
             sealed_segment_ttl_ms = 5\nmetrics_listen = \"127.0.0.1:9464\"\n\
             passthrough = false\nmaterialize_segments = false",
            "f",
        )
        .unwrap();
        assert_eq!(config.store.segment_messages, 5);
        assert_eq!(config.store.flush, FlushPolicy::Sync);
        assert_eq!(config.store.max_disk_bytes, Some(1_000_000));
        assert_eq!(config.fs.topic_defaults.partitions, 3);
        assert_eq!(config.fs.topic_defaults.key_separator, Some(b"\t".to_vec()));
        assert_eq!(config.fs.topic_defaults.retention_ms, Some(60_000));
        assert_eq!(config.fs.topic_defaults.retention_bytes, None);
        assert_eq!(config.fs.sealed_segment_ttl, Duration::from_millis(5));
        assert!(!config.store.materialize_segments);
        assert_eq!(
            config.mount,
            MountSettings {
                allow_other: true,
                n_threads: 1,
                read_ahead_kb: 1024,
                metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
                passthrough: false,
            }
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let message = error("partitions = 2\nsegment_size = 10\n");
        assert!(
            message.starts_with("/etc/commitfs.toml: line 2: key `segment_size`"),
            "{message}"
        );
        assert!(
            message.contains("unknown field `segment_size`"),
            "{message}"
        );
        let message = error("[store]\nsegment_messages = 10\n");
        assert!(
            message.starts_with("/etc/commitfs.toml: line 1:"),
            "{message}"
        );
        assert!(message.contains("`store`"), "{message}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        let message = error("n_threads = \"two\"");
        assert!(
            message.starts_with("/etc/commitfs.toml: line 1: key `n_threads`:"),
            "{message}"
        );
        let message = error("framing = \"json\"");
        assert!(message.contains("key `framing`"), "{message}");
        assert!(message.contains("lines"), "{message}");
        let message = error("flush = \"sometimes\"");
        assert!(message.contains("key `flush`"), "{message}");
        let message = error("partitions = -3");
        assert!(message.contains("key `partitions`"), "{message}");
        let message = error("segment_messages = ");
        assert!(
            message.starts_with("/etc/commitfs.toml: line 1"),
            "{message}"
        );
    }

    #[test]
    fn a_value_out_of_range_is_named() {
        for (text, key) in [
            ("n_threads = 0", "n_threads"),
            ("n_threads = 65", "n_threads"),
            ("partitions = 0", "partitions"),
            ("partitions = 100001", "partitions"),
            ("segment_messages = 0", "segment_messages"),
            ("commit_log_file_bytes = 100", "commit_log_file_bytes"),
            ("max_message_bytes = 0", "max_message_bytes"),
            (
                "commit_log_file_bytes = 8192\nmax_message_bytes = 8192",
                "max_message_bytes",
            ),
            ("flush_interval_ms = 0", "flush_interval_ms"),
            ("retention_ms = -2", "retention_ms"),
            ("retention_bytes = -5", "retention_bytes"),
            ("index_entries = 1", "index_entries"),
            ("metrics_listen = \"localhost\"", "metrics_listen"),
            ("metrics_listen = \"127.0.0.1\"", "metrics_listen"),
            ("key_separator = \"a\\nb\"", "key_separator"),
            ("log_level = \"loud=[\"", "log_level"),
        ] {
            let message = error(text);
            assert!(
                message.starts_with(&format!("/etc/commitfs.toml: key `{key}`:")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = Config::load(Some(Path::new("/nonexistent/commitfs.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("/nonexistent/commitfs.toml: "),
            "{message}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    const EXAMPLES: [&str; 2] = [
        include_str!("../mount-config/commitfs.toml"),
        include_str!("../mount-config/tiny-segments.toml"),
    ];

    proptest! {
        #![proptest_config(fuzzing::config(300))]

        /// Any configuration text is accepted or refused with a message naming the file; a
        /// refusal of a damaged example names a line or a key.
        #[test]
        fn any_configuration_parses_or_is_refused_naming_the_file(
            bytes in fuzzing::garbage_or_damaged(
                proptest::sample::select(&EXAMPLES[..]).prop_map(|t| t.as_bytes().to_vec()),
                300,
            )
        ) {
            let text = String::from_utf8_lossy(&bytes);
            if let Err(error) = Config::parse(&text, "fuzz.toml") {
                let message = error.to_string();
                prop_assert!(message.starts_with("fuzz.toml: "), "{}", message);
                prop_assert!(message.len() > "fuzz.toml: ".len());
            }
        }
    }
}
