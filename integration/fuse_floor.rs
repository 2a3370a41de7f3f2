//! How fast can any write-through FUSE file system take one `cat` here? `cargo bench --bench
//! fuse_floor` times the same `cat` of 100-byte lines into three files, one after the other
//! in rotating order, each fresh every round:
//!
//! - a file on the native file system (where the data directories live);
//! - `log` of a file system mounted by this program that does the least any such daemon can:
//!   each FUSE write goes to a backing file with one `pwrite` (no lines, no CRC, no queue
//!   entries). Its backing file has its blocks allocated ahead, as commitfs's preparer does for
//!   commit-log files, and it asks for the same 1 MiB writes and two threads as commitfs;
//! - `active` of a commitfs partition (built-in defaults, one segment for every line).
//!
//! Issue 7 asks for the `cat` into commitfs at 0.5× native: this is the ceiling any daemon
//! that serves writes (rather than leaving them in the kernel's writeback cache, which
//! DESIGN.md rules out) meets on this machine. A first round warms up and is not counted;
//! medians of the others, and the ratios of speeds, are printed.
//!
//! `COMMITFS_FLOOR_ROUNDS` (default 6) and `COMMITFS_FLOOR_LINES` (default 2,000,000) change
//! the run.

mod common;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{Bounded, Config, Mount};
use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

const CAT_DEADLINE: Duration = Duration::from_secs(300);
const LINE_BYTES: usize = 100;
const BLOCK_BYTES: u32 = 1 << 20;
const LOG_INODE: u64 = 2;

/// One file, `log`, whose writes land at the end of `backing`.
struct Floor {
    backing: File,
    size: AtomicU64,
}

impl Floor {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size) = match u64::from(ino) {
            LOG_INODE => (
                FileType::RegularFile,
                0o644,
                self.size.load(Ordering::Acquire),
            ),
            _ => (FileType::Directory, 0o755, 0),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            // As commitfs says of its files: `cat` then writes 1 MiB at a time.
            blksize: BLOCK_BYTES,
        }
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(limit) = config.set_max_write(BLOCK_BYTES) {
            eprintln!("fuse_floor: the kernel takes writes of at most {limit} bytes");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "log" {
            let attr = self.attr(INodeNo(LOG_INODE));
            reply.entry(&Duration::ZERO, &attr, Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&Duration::ZERO, &self.attr(ino));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let at = self.size.fetch_add(data.len() as u64, Ordering::AcqRel);
        match self.backing.write_all_at(data, at) {
            Ok(()) => reply.written(data.len() as u32),
            Err(error) => {
                eprintln!("fuse_floor: writing the backing file: {error}");
                reply.error(Errno::EIO);
            }
        }
    }
}

/// The floor file system mounted on `mnt`; unmounted on drop, on every path.
struct FloorMount {
    session: Option<BackgroundSession>,
    log: PathBuf,
}

impl FloorMount {
    fn new(backing: &Path, mnt: &Path, allocate: u64) -> FloorMount {
        let backing = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(backing)
            .expect("create the floor's backing file");
        // SAFETY: a valid descriptor; KEEP_SIZE only allocates blocks.
        let allocated = unsafe {
            libc::fallocate(
                backing.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                allocate as libc::off_t,
            )
        };
        assert_eq!(allocated, 0, "fallocate the floor's backing file");
        let mut config = fuser::Config::default();
        config.n_threads = Some(2);
        config.clone_fd = true;
        let floor = Floor {
            backing,
            size: AtomicU64::new(0),
        };
        let session = fuser::Session::new(floor, mnt, &config)
            .and_then(fuser::Session::spawn)
            .expect("mount the floor file system");
        FloorMount {
            session: Some(session),
            log: mnt.join("log"),
        }
    }
}

impl Drop for FloorMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(error) = session.umount_and_join() {
                eprintln!("fuse_floor: unmounting the floor file system: {error}");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    Native,
    Floor,
    Commitfs,
}

const TARGETS: [Target; 3] = [Target::Native, Target::Floor, Target::Commitfs];

/// Seconds one `cat lines >> target` took.
fn timed_cat(lines: &Path, target: &Path) -> f64 {
    let command = format!("cat '{}' >> '{}'", lines.display(), target.display());
    let started = Instant::now();
    let output = Bounded::shell(&command, CAT_DEADLINE).output();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}

/// One round's `cat` into a fresh `target`.
fn cat_into(target: Target, lines: &Path, count: usize, work: &Path) -> f64 {
    let bytes = fs::metadata(lines).expect("the lines").len();
    match target {
        Target::Native => {
            let file = work.join("native");
            let _ = fs::remove_file(&file);
            timed_cat(lines, &file)
        }
        Target::Floor => {
            let mnt = work.join("floor");
            fs::create_dir_all(&mnt).expect("floor mountpoint");
            let floor = FloorMount::new(&work.join("floor-backing"), &mnt, 2 * bytes);
            let seconds = timed_cat(lines, &floor.log);
            assert_eq!(
                fs::metadata(&floor.log).expect("floor log").len(),
                bytes,
                "the floor file system stored every byte"
            );
            seconds
        }
        Target::Commitfs => {
            let config = Config::built_in()
                .set("segment_messages", &(count + 1).to_string())
                .set("partitions", "1");
            let mount = Mount::new(config);
            mount.sh_ok("mkdir t && echo warm >> t/0/active");
            let seconds = timed_cat(lines, &mount.path("t/0/active"));
            let stored = mount.sh_ok("getfattr --only-values -n user.end_offset t/0");
            assert_eq!(
                stored.trim(),
                (count + 1).to_string(),
                "commitfs stored every line"
            );
            seconds
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: a count, not {value:?}"))
    })
}

fn main() {
    if !common::fuse_available() {
        return;
    }
    let rounds = env_count("COMMITFS_FLOOR_ROUNDS", 6).max(1);
    let count = env_count("COMMITFS_FLOOR_LINES", 2_000_000);
    let work = tempfile::Builder::new()
        .prefix("commitfs-floor-")
        .tempdir_in(std::env::temp_dir())
        .expect("work directory");
    let lines = work.path().join("lines");
    let mut block = Vec::with_capacity(count * LINE_BYTES);
    for n in 0..count {
        let start = block.len();
        block.extend_from_slice(format!("line {n:09} ").as_bytes());
        block.resize(start + LINE_BYTES - 1, b'a' + (n % 23) as u8);
        block.push(b'\n');
    }
    fs::write(&lines, &block).expect("write the lines");
    drop(block);

    let mut seconds: [Vec<f64>; 3] = Default::default();
    for round in 0..=rounds {
        let mut line = format!(
            "round {round}{}:",
            if round == 0 { " (warm-up)" } else { "" }
        );
        for turn in 0..TARGETS.len() {
            let which = (round + turn) % TARGETS.len();
            let took = cat_into(TARGETS[which], &lines, count, work.path());
            line.push_str(&format!(" {}={took:.3}s", name(TARGETS[which])));
            if round > 0 {
                seconds[which].push(took);
            }
        }
        println!("{line}");
    }
    let [native, floor, commitfs] = seconds.map(median);
    let megabytes = (count * LINE_BYTES) as f64 / 1e6;
    println!(
        "cat of {count} lines ({megabytes:.0} MB), medians of {rounds} rounds: native \
         {native:.3} s, floor {floor:.3} s, commitfs {commitfs:.3} s"
    );
    println!("floor / native     {:.2}", native / floor);
    println!("commitfs / native  {:.2}", native / commitfs);
    println!("commitfs / floor   {:.2}", floor / commitfs);
}

fn name(target: Target) -> &'static str {
    match target {
        Target::Native => "native",
        Target::Floor => "floor",
        Target::Commitfs => "commitfs",
    }
}
