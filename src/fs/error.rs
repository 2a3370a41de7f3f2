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

impl From<StoreError> for FsError {
    fn from(error: StoreError) -> FsError {
        let errno = error.errno();
        let level = match &error {
            StoreError::NoSuchPartition { .. }
            | StoreError::NoSuchSegment { .. }
            | StoreError::OffsetOutOfRange { .. } => Level::DEBUG,
            // Lookups find topics without the store's error; this one refuses a write or a
            // setting to a topic deleted meanwhile.
            StoreError::NoSuchTopic(_)
            | StoreError::InvalidTopicName(_)
            | StoreError::TopicExists(_)
            | StoreError::MessageTooLarge { .. }
            | StoreError::InvalidSetting(_) => Level::INFO,
            StoreError::DiskFull(_) | StoreError::Locked(_) | StoreError::Closed => Level::WARN,
            StoreError::Corrupt { .. } | StoreError::NeedsRepair { .. } | StoreError::Io { .. } => {
                Level::ERROR
            }
        };
        FsError {
            errno,
            message: error.to_string(),
            level,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
