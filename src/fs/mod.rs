//! The mount: a thin FUSE layer that shows the store's topics, partitions and segments as
//! directories and files, and its keys, offsets and settings as extended attributes.
//!
//! `core` holds every operation as a plain method returning a plain result; `fuse` adapts
//! it to fuser; `mount` and `daemon` run the process around it.

mod core;
mod daemon;
mod error;
mod framing;
mod fuse;
mod handles;
mod inode;
mod kernel_mount;
mod mount;
mod options;
mod passthrough;
mod time;
mod xattr;

pub use self::core::{FsSettings, TopicDefaults};
pub use self::mount::{exit_code, mount, MountError, MountRequest, MountSettings};
pub use self::options::{parse as parse_mount_options, MountFlags, MountOptions};
