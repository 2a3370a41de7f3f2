//! Directories: listings taken once per pass over an open directory.

use std::ffi::OsString;
use std::sync::Arc;

use fuser::FileType;
use parking_lot::Mutex;

use crate::fs::error::{FsError, FsResult};
use crate::fs::inode::ROOT;

use super::{
    segment_file_name, CommitFs, DirectoryReplier, Node, ACTIVE_LINK, APPEND_FILE, STREAM_FILE,
};

/// An open directory: the listing taken when it was read from the start, so later pages
/// continue the same listing even while topics or segments come and go.
pub(super) struct DirStream {
    ino: u64,
    entries: Mutex<Arc<Vec<DirEntry>>>,
}

struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

impl CommitFs {
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        match self.resolve(ino)? {
            Node::Root | Node::Topic(_) | Node::Partition(..) => Ok(self.dirs.insert(DirStream {
                ino,
                entries: Mutex::new(Arc::new(Vec::new())),
            })),
            node => Err(FsError::refused(
                libc::ENOTDIR,
                format!("{} is not a directory", node.path()),
            )),
        }
    }

    pub fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.dirs.remove(fh).map(drop)
    }

    /// Entries from `offset` on; an entry's cookie is its index + 1. Reading from offset 0
    /// (a first read or a rewind) takes a fresh listing.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        replier: &mut impl DirectoryReplier,
    ) -> FsResult<()> {
        let stream = self.dirs.get(fh)?;
        let entries = if offset == 0 {
            let fresh = Arc::new(self.list(stream.ino)?);
            *stream.entries.lock() = fresh.clone();
            fresh
        } else {
            stream.entries.lock().clone()
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, entry) in entries.iter().enumerate().skip(start) {
            if replier.add(entry.ino, index as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        Ok(())
    }

    fn list(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let node = self.resolve(ino)?;
        let entry = |ino: u64, kind: FileType, name: &str| DirEntry {
            ino,
            kind,
            name: name.into(),
        };
        let mut entries = Vec::new();
        match &node {
            Node::Root => {
                entries.push(entry(ROOT, FileType::Directory, "."));
                entries.push(entry(ROOT, FileType::Directory, ".."));
                for topic in self.store.topics().into_iter().filter(|t| !t.is_deleted()) {
                    let ino = self.inode_of(&Node::Topic(topic.clone()));
                    entries.push(entry(ino, FileType::Directory, topic.name()));
                }
            }
            Node::Topic(topic) => {
                entries.push(entry(ino, FileType::Directory, "."));
                entries.push(entry(ROOT, FileType::Directory, ".."));
                entries.push(entry(
                    self.inode_of(&Node::Append(topic.clone())),
                    FileType::RegularFile,
                    APPEND_FILE,
                ));
                for partition in topic.partitions() {
                    let name = partition.index().to_string();
                    let ino = self.inode_of(&Node::Partition(topic.clone(), partition));
                    entries.push(entry(ino, FileType::Directory, &name));
                }
            }
            Node::Partition(topic, partition) => {
                entries.push(entry(ino, FileType::Directory, "."));
                entries.push(entry(
                    self.inode_of(&Node::Topic(topic.clone())),
                    FileType::Directory,
                    "..",
                ));
                for base in partition.segment_bases() {
                    let ino = self.segment_inode(topic, partition, base);
                    entries.push(entry(ino, FileType::RegularFile, &segment_file_name(base)));
                }
                let link = self.inode_of(&Node::ActiveLink(topic.clone(), partition.clone()));
                entries.push(entry(link, FileType::Symlink, ACTIVE_LINK));
                let stream = self.inode_of(&Node::Stream(topic.clone(), partition.clone()));
                entries.push(entry(stream, FileType::RegularFile, STREAM_FILE));
            }
            _ => {
                return Err(FsError::refused(
                    libc::ENOTDIR,
                    format!("{} is not a directory", node.path()),
                ))
            }
        }
        Ok(entries)
    }
}
