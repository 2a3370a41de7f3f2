//! Typed store errors. Which errno a user sees for each is decided at the filesystem's edge
//! (`fs/error.rs`), not here.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "topic name {0:?} is invalid: 1-249 characters of [A-Za-z0-9._-], not starting with '.'"
    )]
    InvalidTopicName(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("no topic {0:?}")]
    NoSuchTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    NoSuchPartition { topic: String, partition: u32 },
    #[error("topic {topic:?} has no segment starting at offset {base}")]
    NoSuchSegment { topic: String, base: u64 },
    #[error("offset {offset} is not stored (start {start}, end {end})")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("byte {position} of the stream is no longer stored: it starts at byte {start}")]
    BeforeStreamStart { position: u64, start: u64 },
    #[error("message of {size} bytes exceeds max_message_bytes ({max})")]
    MessageTooLarge { size: usize, max: usize },
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("corrupt store: {path}: byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Damage or disagreement the store will not guess its way past: the mount is refused
    /// until `commitfs check --repair` decides.
    #[error("{what}; run `commitfs check --repair {}` to repair it", .dir.display())]
    NeedsRepair { dir: PathBuf, what: String },
    /// A store another release of commitfs wrote, in an on-disk format this one cannot read.
    #[error("{}: written in on-disk format {found}; this commitfs reads format {supported}: {advice}", .path.display())]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
        advice: &'static str,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store at {0} is already open in another process")]
    Locked(PathBuf),
    #[error("the store is closed")]
    Closed,
    /// An append was interrupted between copying its records and publishing them, or a
    /// background thread of the store ended in a panic: the store takes no more writes until
    /// it is reopened and recovers.
    #[error("the store is read-only after an internal error in the write path; remount")]
    Fenced,
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            return StoreError::DiskFull(format!("{}: {source}", context.into()));
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
