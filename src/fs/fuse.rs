//! The thin fuser adapter: each callback calls the core, replies, and on error logs the
//! reason once (at the error's own level) and replies with its errno. A panic in the core
//! becomes EIO for that one request instead of killing a session thread; one inside the
//! store's write path has also fenced the store (no more writes until a remount), so no
//! request after it can build on a half-finished append.

use std::ffi::OsStr;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Instant, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileHandle, FileType, Filesystem, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tracing::Level;

use super::core::{Attr, AttrChanges, CommitFs, DirectoryReplier, Entry, StatFs};
use super::error::{FsError, FsResult};
use super::framing::{raw_write_limit, MAX_RAW_WRITE_BYTES};
use super::passthrough::Passthrough;
use super::xattr::XattrReply;

/// The most one WRITE carries: 256 pages, the kernel's default ceiling (`max_pages_limit`),
/// which also keeps fuser from sizing its per-thread buffers for 16 MiB. A `write(2)` that
/// starts inside a page fills one request with less, which is why raw messages stop at 255
/// pages ([`MAX_RAW_WRITE_BYTES`]).
const MAX_WRITE_BYTES: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: CommitFs,
    passthrough: Passthrough,
}

impl FuseAdapter {
    /// `passthrough`: ask the kernel to read sealed segments' own files itself.
    pub fn new(fs: CommitFs, passthrough: bool) -> FuseAdapter {
        FuseAdapter {
            fs,
            passthrough: Passthrough::new(passthrough),
        }
    }

    /// Runs one core call; errors and panics are logged here and only here.
    fn call<T>(
        &self,
        op: &'static str,
        ino: INodeNo,
        core: impl FnOnce() -> FsResult<T>,
    ) -> Result<T, Errno> {
        let started = Instant::now();
        let guarded = catch_unwind(AssertUnwindSafe(|| {
            core().map_err(|error| {
                log_refusal(op, ino, &error);
                Errno::from_i32(error.errno())
            })
        }));
        crate::metrics::request_served(op, started.elapsed());
        guarded.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(
                op,
                ino = ino.0,
                "internal error (panic: {what}); replied EIO"
            );
            Err(Errno::EIO)
        })
    }

    /// Runs one core call and answers the kernel with what it returned, or its errno.
    fn answer<T>(
        &self,
        op: &'static str,
        ino: INodeNo,
        reply: impl Answer<T>,
        core: impl FnOnce() -> FsResult<T>,
    ) {
        match self.call(op, ino, core) {
            Ok(value) => reply.value(value),
            Err(errno) => reply.error(errno),
        }
    }

    /// mknod, symlink, link and create: the errno (and log line) of the refusal.
    fn refuse_new_name(&self, op: &'static str, parent: INodeNo, name: &OsStr) -> Errno {
        match self.call(op, parent, || self.fs.refuse_new_name(parent.0, name)) {
            Ok(never) => match never {},
            Err(errno) => errno,
        }
    }
}

/// A fuser reply that carries a core call's `T`, or its errno.
trait Answer<T> {
    fn value(self, value: T);
    fn error(self, errno: Errno);
}

/// [`Answer`] for a fuser reply type (each has an `error` of its own): `|reply, value: T|
/// body` answers with the value.
macro_rules! answer {
    ($type:ty, |$reply:ident, $value:ident: $t:ty| $body:expr) => {
        impl Answer<$t> for $type {
            fn value(self, $value: $t) {
                let $reply = self;
                $body;
            }

            fn error(self, errno: Errno) {
                <$type>::error(self, errno);
            }
        }
    };
}

answer!(ReplyEntry, |reply, entry: Entry| reply.entry_with_ttls(
    &entry.attr_ttl,
    &entry.entry_ttl,
    &entry.attr,
    fuser::Generation(0),
));
answer!(ReplyAttr, |reply, attr: Attr| reply
    .attr(&attr.ttl, &attr.attr));
answer!(ReplyEmpty, |reply, _done: ()| reply.ok());
answer!(ReplyData, |reply, bytes: Vec<u8>| reply.data(&bytes));
answer!(ReplyWrite, |reply, written: u32| reply.written(written));
answer!(ReplyOpen, |reply, fh: u64| reply
    .opened(FileHandle(fh), fuser::FopenFlags::empty()));
answer!(ReplyStatfs, |reply, s: StatFs| reply.statfs(
    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
));
answer!(ReplyXattr, |reply, answer: XattrReply| match answer {
    XattrReply::Length(length) => reply.size(length),
    XattrReply::Value(value) => reply.data(&value),
});

fn log_refusal(op: &str, ino: INodeNo, error: &FsError) {
    let reason = error.message();
    let errno = io::Error::from_raw_os_error(error.errno());
    match error.level() {
        Level::ERROR => tracing::error!(op, ino = ino.0, "{reason}: {errno}"),
        Level::WARN => tracing::warn!(op, ino = ino.0, "{reason}: {errno}"),
        Level::INFO => tracing::info!(op, ino = ino.0, "{reason}: {errno}"),
        Level::DEBUG => tracing::debug!(op, ino = ino.0, "{reason}: {errno}"),
        _ => tracing::trace!(op, ino = ino.0, "{reason}: {errno}"),
    }
}

struct DirectoryReply<'a>(&'a mut ReplyDirectory);

impl DirectoryReplier for DirectoryReply<'_> {
    fn add(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        self.0.add(INodeNo(ino), offset, kind, name)
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let max_write = config.set_max_write(MAX_WRITE_BYTES).map_or_else(
            |limit| {
                tracing::warn!("the kernel takes writes of at most {limit} bytes");
                limit
            },
            |_| MAX_WRITE_BYTES,
        );
        let max_pages = match config.capabilities().contains(InitFlags::FUSE_MAX_PAGES) {
            true => 256,
            false => 32,
        };
        let raw_limit = raw_write_limit(max_write as usize, max_pages);
        if raw_limit < MAX_RAW_WRITE_BYTES {
            tracing::warn!(
                "this kernel passes at most {max_pages} pages and {max_write} bytes per request: \
                 raw writes over {raw_limit} bytes are refused with EFBIG (they would arrive as \
                 several messages)"
            );
        }
        self.fs.limit_raw_writes(raw_limit);
        // O_TRUNC then reaches open(), which refuses it on segments in one step. Never ask
        // for the writeback cache (it would hold "stored" bytes in the kernel and cut
        // messages at page boundaries) nor symlink caching (`active` must be read fresh).
        if config
            .add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC)
            .is_err()
        {
            tracing::debug!("no FUSE_ATOMIC_O_TRUNC: O_TRUNC arrives as a truncate before open");
        }
        self.passthrough.init(config);
        self.fs.allow_passthrough(self.passthrough.granted());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.answer("lookup", parent, reply, || self.fs.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.answer("getattr", ino, reply, || {
            self.fs.getattr(ino.0, fh.map(|fh| fh.0))
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.answer("setattr", ino, reply, || self.fs.setattr(ino.0, &changes));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.answer("readlink", ino, reply, || {
            self.fs.readlink(ino.0, req.pid())
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_new_name("mknod", parent, name));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.answer("mkdir", parent, reply, || {
            self.fs
                .mkdir(parent.0, name, mode, umask, req.uid(), req.gid())
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.answer("unlink", parent, reply, || self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.answer("rmdir", parent, reply, || {
            self.fs.rmdir(parent.0, name, req.uid())
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_new_name("symlink", parent, link_name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.answer("rename", parent, reply, || self.fs.rename(parent.0, name));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_new_name("link", newparent, newname));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.call("open", ino, || self.fs.open(ino.0, flags.0, req.pid())) {
            Ok(opened) => {
                if !self.passthrough.reply(ino.0, opened, reply) {
                    self.fs.allow_passthrough(false);
                }
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let delivered = self.call("read", ino, || {
            self.fs.read(fh.0, offset, size, |bytes| {
                if let Some(reply) = reply.take() {
                    crate::metrics::read_served(bytes.len());
                    reply.data(bytes);
                }
            })
        });
        if let (Err(errno), Some(reply)) = (delivered, reply) {
            reply.error(errno);
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.answer("write", ino, reply, || self.fs.write(fh.0, data));
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.answer("flush", ino, reply, || self.fs.flush(fh.0, req.pid()));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.answer("release", ino, reply, || self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer("fsync", ino, reply, || self.fs.fsync());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.answer("opendir", ino, reply, || self.fs.opendir(ino.0));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.call("readdir", ino, || {
            self.fs
                .readdir(fh.0, offset, &mut DirectoryReply(&mut reply))
        }) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.answer("releasedir", ino, reply, || self.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer("fsyncdir", ino, reply, || self.fs.fsync());
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.answer("statfs", ino, reply, || self.fs.statfs());
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.answer("setxattr", ino, reply, || {
            self.fs.setxattr(ino.0, name, value, flags)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.answer("getxattr", ino, reply, || {
            self.fs.getxattr(ino.0, name, size)
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.answer("listxattr", ino, reply, || self.fs.listxattr(ino.0, size));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.answer("removexattr", ino, reply, || {
            self.fs.removexattr(ino.0, name)
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.refuse_new_name("create", parent, name));
    }
}
