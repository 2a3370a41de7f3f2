//! The `[mirror]` section of the configuration file the mount reads: where the mirror ships
//! to, which topics, under which group. The mount ignores the section; the mirror ignores the
//! rest of the file. An unknown key or a bad value is an error naming the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// What `[mirror]` says, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorSection {
    brokers: String,
    topics: Option<Vec<String>>,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default)]
    target_prefix: String,
    #[serde(default)]
    metrics_listen: String,
    #[serde(default = "default_position_interval_ms")]
    position_interval_ms: u64,
    #[serde(default)]
    properties: BTreeMap<String, toml::Value>,
}

fn default_group() -> String {
    "mirror".to_owned()
}

/// Each position write is an atomic replace with an fsync: once a second per busy partition
/// keeps a mirror of many partitions from spending its time in fsync, and costs nothing in
/// safety (a restart resumes after the newest offset Kafka holds when that is further).
fn default_position_interval_ms() -> u64 {
    1000
}

/// The longest wait between position writes that the configuration accepts (10 minutes).
const MAX_POSITION_INTERVAL_MS: u64 = 600_000;

/// The settings a mirror runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorConfig {
    /// librdkafka's `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// The topics to ship; `None`: every topic of the mount, also those made later.
    pub topics: Option<Vec<String>>,
    /// The consumer group whose positions record the mirror's progress.
    pub group: String,
    /// Prepended to a topic's name to name its target topic.
    pub target_prefix: String,
    /// Where to serve Prometheus metrics (the lag); `None`: nothing listens.
    pub metrics_listen: Option<SocketAddr>,
    /// The least time between two writes of one partition's consumer position.
    pub position_interval: Duration,
    /// librdkafka properties, passed as they are, after (so over) the mirror's own.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct MirrorConfigError {
    origin: String,
    problem: String,
}

/// The longest consumer group name the mount accepts (DESIGN "Consumers and the mirror").
const MAX_GROUP_CHARS: usize = 200;

/// Kafka's longest topic name, which a target name (prefix and topic) must not exceed.
const MAX_TOPIC_CHARS: usize = 249;

impl MirrorConfig {
    /// The `[mirror]` section of the file at `path`.
    pub fn load(path: &Path) -> Result<MirrorConfig, MirrorConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| MirrorConfigError {
            origin: origin.clone(),
            problem: error.to_string(),
        })?;
        MirrorConfig::parse(&text, &origin)
    }

    /// The `[mirror]` section of TOML `text`; errors name `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<MirrorConfig, MirrorConfigError> {
        let error = |problem: String| MirrorConfigError {
            origin: origin.to_owned(),
            problem,
        };
        let mut file: toml::Table = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        let section = file.remove("mirror").ok_or_else(|| {
            error("no [mirror] section: the mirror needs at least `brokers`".into())
        })?;
        let section = MirrorSection::deserialize(section)
            .map_err(|e| error(format!("[mirror]: {}", e.message())))?;
        section.validate().map_err(error)
    }
}

fn bad(key: &str, problem: impl std::fmt::Display) -> String {
    format!("[mirror] key `{key}`: {problem}")
}

/// A name of 1 to `max` characters of `[A-Za-z0-9._-]`, as Kafka and the mount accept.
fn is_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MirrorSection {
    fn validate(self) -> Result<MirrorConfig, String> {
        if self.brokers.trim().is_empty() {
            return Err(bad("brokers", "names no broker (host:port[,host:port…])"));
        }
        if !is_name(&self.group, MAX_GROUP_CHARS) {
            return Err(bad(
                "group",
                format!(
                    "{:?} is not 1 to {MAX_GROUP_CHARS} characters of [A-Za-z0-9._-]",
                    self.group
                ),
            ));
        }
        if !self.target_prefix.is_empty() && !is_name(&self.target_prefix, MAX_TOPIC_CHARS - 1) {
            return Err(bad(
                "target_prefix",
                format!(
                    "{:?} is not characters of [A-Za-z0-9._-]",
                    self.target_prefix
                ),
            ));
        }
        for topic in self.topics.iter().flatten() {
            if !is_name(topic, MAX_TOPIC_CHARS - self.target_prefix.len()) || topic.starts_with('.')
            {
                return Err(bad(
                    "topics",
                    format!("{topic:?} is not a topic name that fits after the target prefix"),
                ));
            }
        }
        let metrics_listen = match self.metrics_listen.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                bad(
                    "metrics_listen",
                    format!("{text:?} is not an address and port like \"127.0.0.1:9465\""),
                )
            })?),
        };
        if !(1..=MAX_POSITION_INTERVAL_MS).contains(&self.position_interval_ms) {
            return Err(bad(
                "position_interval_ms",
                format!(
                    "{} is not 1 to {MAX_POSITION_INTERVAL_MS} (milliseconds)",
                    self.position_interval_ms
                ),
            ));
        }
        let mut properties = BTreeMap::new();
        for (name, value) in self.properties {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(flag) => flag.to_string(),
                other => {
                    return Err(bad(
                        &format!("properties.{name}"),
                        format!("{other} is not a string, integer or boolean"),
                    ))
                }
            };
            properties.insert(name, text);
        }
        Ok(MirrorConfig {
            brokers: self.brokers,
            topics: self.topics,
            group: self.group,
            target_prefix: self.target_prefix,
            metrics_listen,
            position_interval: Duration::from_millis(self.position_interval_ms),
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../mount-config/mirror.toml");

    fn error(text: &str) -> String {
        MirrorConfig::parse(text, "/etc/commitfs.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_example_parses_and_the_mount_accepts_it() {
        let config = MirrorConfig::parse(EXAMPLE, "mirror.toml").unwrap();
        assert_eq!(config.group, "mirror");
        assert!(!config.brokers.is_empty());
        crate::config::Config::parse(EXAMPLE, "mirror.toml").unwrap();
    }

    #[test]
    fn defaults_and_properties() {
        let config = MirrorConfig::parse(
            "segment_messages = 5\n[mirror]\nbrokers = \"127.0.0.1:9092\"\n\
             [mirror.properties]\n\"linger.ms\" = 20\n\"enable.idempotence\" = true\n\
             \"client.id\" = \"m\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(
            config,
            MirrorConfig {
                brokers: "127.0.0.1:9092".into(),
                topics: None,
                group: "mirror".into(),
                target_prefix: String::new(),
                metrics_listen: None,
                position_interval: Duration::from_secs(1),
                properties: [
                    ("client.id", "m"),
                    ("enable.idempotence", "true"),
                    ("linger.ms", "20"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            }
        );
    }

    #[test]
    fn bad_values_are_named_with_the_file() {
        for (text, expected) in [
            ("partitions = 2", "no [mirror] section"),
            ("[mirror]\ntopics = [\"a\"]", "missing field `brokers`"),
            ("[mirror]\nbrokers = \" \"", "key `brokers`"),
            (
                "[mirror]\nbrokers = \"b:1\"\ngroup = \"a b\"",
                "key `group`",
            ),
            ("[mirror]\nbrokers = \"b:1\"\ngroup = \"\"", "key `group`"),
            (
                "[mirror]\nbrokers = \"b:1\"\ntopics = [\"a/b\"]",
                "key `topics`",
            ),
            (
                "[mirror]\nbrokers = \"b:1\"\ntarget_prefix = \"x y\"",
                "key `target_prefix`",
            ),
            (
                "[mirror]\nbrokers = \"b:1\"\nmetrics_listen = \"here\"",
                "key `metrics_listen`",
            ),
            (
                "[mirror]\nbrokers = \"b:1\"\nposition_interval_ms = 0",
                "key `position_interval_ms`",
            ),
            (
                "[mirror]\nbrokers = \"b:1\"\nbroker = \"b:1\"",
                "unknown field `broker`",
            ),
            (
                "[mirror]\nbrokers = \"b:1\"\n[mirror.properties]\n\"linger.ms\" = 1.5",
                "key `properties.linger.ms`",
            ),
        ] {
            let message = error(text);
            assert!(message.starts_with("/etc/commitfs.toml: "), "{message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
