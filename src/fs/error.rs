//! The one error type the filesystem core returns: an errno for the kernel, a message for
//! the log, and the level that message is logged at. The FUSE adapter logs it once, at the
//! boundary, and replies with the errno.

use tracing::Level;

use crate::store::StoreError;

#[derive(Debug)]
pub struct FsError {
    errno: i32,
    message: String,
    level: Level,
}

impl FsError {
    /// A request commitfs turns down on purpose (read-only name, sealed segment, bad name…):
    /// logged at INFO so a user can find out why.
    pub fn refused(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
            level: Level::INFO,
        }
    }

    /// A name or attribute that does not exist: the normal answer to many lookups, so DEBUG.
    pub fn missing(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
            level: Level::DEBUG,
        }
    }

    /// Something that should not happen: logged at ERROR.
    pub fn internal(message: impl Into<String>) -> FsError {
        FsError {
            errno: libc::EIO,
            message: message.into(),
            level: Level::ERROR,
        }
    }

    /// The same error, its message led by what it concerns (a path, an attribute name).
    pub fn context(mut self, subject: impl std::fmt::Display) -> FsError {
        self.message = format!("{subject}: {}", self.message);
        self
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn level(&self) -> Level {
        self.level
    }
}

/// The errno a shell user sees for each store error, and the level its log line gets. An I/O
/// error never passes its own errno through (an `EEXIST` or `ENOMEM` from inside the store
/// would mislead whoever ran `echo`): a full disk or quota is `ENOSPC`, anything else `EIO`.
impl From<StoreError> for FsError {
    fn from(error: StoreError) -> FsError {
        use Level as L;
        let (errno, level) = match &error {
            StoreError::InvalidTopicName(_) => (libc::EINVAL, L::INFO),
            StoreError::TopicExists(_) => (libc::EEXIST, L::INFO),
            // Lookups find topics without the store's error; this one refuses a write or a
            // setting to a topic deleted meanwhile.
            StoreError::NoSuchTopic(_) => (libc::ENOENT, L::INFO),
            StoreError::NoSuchPartition { .. } => (libc::ENOENT, L::DEBUG),
            StoreError::NoSuchSegment { .. } => (libc::ENOENT, L::DEBUG),
            StoreError::OffsetOutOfRange { .. } => (libc::ENODATA, L::DEBUG),
            StoreError::BeforeStreamStart { .. } => (libc::ENXIO, L::DEBUG),
            StoreError::MessageTooLarge { .. } => (libc::EFBIG, L::INFO),
            StoreError::InvalidSetting(_) => (libc::EINVAL, L::INFO),
            StoreError::DiskFull(_) => (libc::ENOSPC, L::WARN),
            StoreError::Corrupt { .. } => (libc::EIO, L::ERROR),
            StoreError::NeedsRepair { .. } => (libc::EIO, L::ERROR),
            StoreError::UnsupportedFormat { .. } => (libc::EIO, L::ERROR),
            StoreError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => (libc::ENOSPC, L::WARN),
                _ => (libc::EIO, L::ERROR),
            },
            StoreError::Locked(_) => (libc::EBUSY, L::WARN),
            StoreError::Closed => (libc::EIO, L::WARN),
            StoreError::Fenced => (libc::EIO, L::ERROR),
        };
        FsError {
            errno,
            message: with_sources(&error),
            level,
        }
    }
}

/// `error`'s message followed by every error in its source chain that the message does not
/// already end with (some errors print their source themselves, some leave it to the chain).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(errno: i32) -> StoreError {
        StoreError::Io {
            context: "writing queues/1/0".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn io_errors_reach_the_user_as_enospc_or_eio_only() {
        for (inside, seen) in [
            (libc::ENOSPC, libc::ENOSPC),
            (libc::EDQUOT, libc::ENOSPC),
            (libc::EEXIST, libc::EIO),
            (libc::ENOMEM, libc::EIO),
            (libc::EACCES, libc::EIO),
            (libc::EIO, libc::EIO),
        ] {
            assert_eq!(FsError::from(io_error(inside)).errno(), seen, "{inside}");
        }
        let custom = StoreError::Io {
            context: "reading".into(),
            source: std::io::Error::other("no errno"),
        };
        assert_eq!(FsError::from(custom).errno(), libc::EIO);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("mapping the file")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_log_line_keeps_the_whole_source_chain() {
        let nested = StoreError::Io {
            context: "opening commitlog/00000000000000000000".into(),
            source: std::io::Error::other(Outer(std::io::Error::from_raw_os_error(libc::EACCES))),
        };
        let error = FsError::from(nested);
        assert_eq!(
            error.message(),
            "opening commitlog/00000000000000000000: mapping the file: Permission denied (os error 13)"
        );
    }

    #[test]
    fn every_refusal_has_the_errno_a_shell_user_knows() {
        let cases = [
            (StoreError::InvalidTopicName("x y".into()), libc::EINVAL),
            (StoreError::TopicExists("t".into()), libc::EEXIST),
            (StoreError::NoSuchTopic("t".into()), libc::ENOENT),
            (StoreError::MessageTooLarge { size: 2, max: 1 }, libc::EFBIG),
            (StoreError::DiskFull("creating a file".into()), libc::ENOSPC),
            (StoreError::Locked("/data".into()), libc::EBUSY),
            (StoreError::Closed, libc::EIO),
            (StoreError::Fenced, libc::EIO),
        ];
        for (error, errno) in cases {
            let text = error.to_string();
            assert_eq!(FsError::from(error).errno(), errno, "{text}");
        }
    }
}
