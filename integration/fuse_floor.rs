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
//! DESIGN.md rules out) meets on this machine.
//!
//! Then the same number of keyed lines (`kNNNNN:…`, 20,000 keys), each `cat` after a
//! warm-up of 20,000 lines, into:
//!
//! - the floor file system with 1 and with 10,000 partitions: besides its `pwrite`, it does
//!   the least any store must do per keyed line before the write returns: finds the line's
//!   key, picks its partition (Kafka's murmur2, as commitfs does), and for each partition a
//!   write reaches takes that partition's lock, advances its next offset and publishes its
//!   end (24 bytes of state a partition, side by side: 240 KB for 10,000);
//! - `append` of a commitfs topic of 1 and of 10,000 partitions.
//!
//! Issue 7 asks for keyed lines into 10,000 partitions at 0.9× one partition: the floor's own
//! ratio says what is left of that at best here. A first round warms up and is not counted;
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
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use commitfs::store::murmur2;
use parking_lot::Mutex;

use common::{Bounded, Config, Mount};
use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

const CAT_DEADLINE: Duration = Duration::from_secs(300);
/// A pause before each timed `cat`: a fresh commitfs mount makes its first files in the
/// background, and the last target's files may still be being freed.
const SETTLE: Duration = Duration::from_secs(1);
const LINE_BYTES: usize = 100;
const BLOCK_BYTES: u32 = 1 << 20;
const LOG_INODE: u64 = 2;
const DISTINCT_KEYS: usize = 20_000;
const WARM_UP_LINES: usize = 20_000;
const MANY_PARTITIONS: u32 = 10_000;

/// What the floor keeps of a partition: its next offset, under its lock, and its end as
/// readers would load it.
#[derive(Default)]
struct FloorPartition {
    next: Mutex<u64>,
    end: AtomicU64,
}

/// One file, `log`, whose writes land at the end of `backing`; with partitions, each line
/// is routed by its key first.
struct Floor {
    backing: File,
    size: AtomicU64,
    partitions: Arc<[FloorPartition]>,
}

impl Floor {
    /// Counts each complete line of `data` to the partition its key (before `:`) picks, then
    /// advances every partition reached.
    fn route(&self, data: &[u8]) {
        let count = self.partitions.len() as u32;
        if count == 0 {
            return;
        }
        let mut lines = vec![0u64; count as usize];
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', data) {
            let line = &data[start..end];
            let key = &line[..memchr::memchr(b':', line).unwrap_or(line.len())];
            let partition = if count == 1 {
                0
            } else {
                (murmur2(key) & 0x7fff_ffff) % count
            };
            lines[partition as usize] += 1;
            start = end + 1;
        }
        for (partition, &added) in self.partitions.iter().zip(&lines) {
            if added > 0 {
                let mut next = partition.next.lock();
                *next += added;
                partition.end.store(*next, Ordering::Release);
            }
        }
    }

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
        self.route(data);
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
    partitions: Arc<[FloorPartition]>,
}

impl FloorMount {
    fn new(backing: &Path, mnt: &Path, allocate: u64, partitions: u32) -> FloorMount {
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
        let partitions: Arc<[FloorPartition]> =
            (0..partitions).map(|_| FloorPartition::default()).collect();
        let floor = Floor {
            backing,
            size: AtomicU64::new(0),
            partitions: partitions.clone(),
        };
        let session = fuser::Session::new(floor, mnt, &config)
            .and_then(fuser::Session::spawn)
            .expect("mount the floor file system");
        FloorMount {
            session: Some(session),
            log: mnt.join("log"),
            partitions,
        }
    }

    /// Lines routed to its partitions so far.
    fn lines_routed(&self) -> u64 {
        let ends = self.partitions.iter();
        ends.map(|p| p.end.load(Ordering::Acquire)).sum()
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
    /// Keyed lines into the floor with this many partitions.
    FloorKeyed(u32),
    /// Keyed lines into `append` of a commitfs topic of this many partitions.
    CommitfsKeyed(u32),
}

const LINE_TARGETS: [Target; 3] = [Target::Native, Target::Floor, Target::Commitfs];
const KEYED_TARGETS: [Target; 4] = [
    Target::FloorKeyed(1),
    Target::FloorKeyed(MANY_PARTITIONS),
    Target::CommitfsKeyed(1),
    Target::CommitfsKeyed(MANY_PARTITIONS),
];

/// Seconds one `cat lines >> target` took.
fn timed_cat(lines: &Path, target: &Path) -> f64 {
    let command = format!("cat '{}' >> '{}'", lines.display(), target.display());
    std::thread::sleep(SETTLE);
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

/// The input files, and where each round's fresh targets go.
struct Inputs {
    lines: PathBuf,
    keyed: PathBuf,
    count: usize,
    work: PathBuf,
}

/// One round's `cat` into a fresh `target`.
fn cat_into(target: Target, inputs: &Inputs) -> f64 {
    let count = inputs.count;
    match target {
        Target::Native => {
            let file = inputs.work.join("native");
            let _ = fs::remove_file(&file);
            timed_cat(&inputs.lines, &file)
        }
        Target::Floor => {
            let floor = floor_mount(inputs, 0);
            let seconds = timed_cat(&inputs.lines, &floor.log);
            let bytes = fs::metadata(&floor.log).expect("floor log").len();
            assert_eq!(
                bytes,
                (count * LINE_BYTES) as u64,
                "the floor stored every byte"
            );
            seconds
        }
        Target::Commitfs => {
            let mount = commitfs_mount(count);
            mount.sh_ok("mkdir t && echo warm >> t/0/active");
            let seconds = timed_cat(&inputs.lines, &mount.path("t/0/active"));
            let stored = mount.sh_ok("getfattr --only-values -n user.end_offset t/0");
            assert_eq!(
                stored.trim(),
                (count + 1).to_string(),
                "commitfs stored every line"
            );
            seconds
        }
        Target::FloorKeyed(partitions) => {
            let floor = floor_mount(inputs, partitions);
            let warm_up = format!("head -n {WARM_UP_LINES} '{}'", inputs.keyed.display());
            floor_sh(&format!("{warm_up} >> '{}'", floor.log.display()));
            let seconds = timed_cat(&inputs.keyed, &floor.log);
            let routed = (WARM_UP_LINES + count) as u64;
            assert_eq!(floor.lines_routed(), routed, "the floor routed every line");
            seconds
        }
        Target::CommitfsKeyed(partitions) => {
            let mount = commitfs_mount(count);
            let warm_up = format!("head -n {WARM_UP_LINES} '{}'", inputs.keyed.display());
            mount.sh_ok(&format!(
                "mkdir k && setfattr -n user.key_separator -v : k && \
                 setfattr -n user.partitions -v {partitions} k && {warm_up} >> k/append"
            ));
            let seconds = timed_cat(&inputs.keyed, &mount.path("k/append"));
            if partitions == 1 {
                let stored = mount.sh_ok("getfattr --only-values -n user.end_offset k/0");
                let expected = (WARM_UP_LINES + count).to_string();
                assert_eq!(stored.trim(), expected, "commitfs stored every line");
            }
            seconds
        }
    }
}

fn floor_mount(inputs: &Inputs, partitions: u32) -> FloorMount {
    let mnt = inputs.work.join("floor");
    fs::create_dir_all(&mnt).expect("floor mountpoint");
    let allocate = 2 * fs::metadata(&inputs.keyed).expect("the keyed lines").len();
    FloorMount::new(
        &inputs.work.join("floor-backing"),
        &mnt,
        allocate,
        partitions,
    )
}

fn floor_sh(command: &str) {
    let output = Bounded::shell(command, CAT_DEADLINE).output();
    assert!(output.status.success(), "`{command}` failed");
}

/// Built-in defaults but one partition a topic and one segment for every line.
fn commitfs_mount(count: usize) -> Mount {
    let config = Config::built_in()
        .set("segment_messages", &(count + WARM_UP_LINES + 1).to_string())
        .set("partitions", "1");
    Mount::new(config)
}

/// `count` lines of `LINE_BYTES`, each starting with `prefix(n)`.
fn write_lines(path: &Path, count: usize, prefix: impl Fn(usize) -> String) {
    let mut block = Vec::with_capacity(count * LINE_BYTES);
    for n in 0..count {
        let start = block.len();
        block.extend_from_slice(prefix(n).as_bytes());
        block.resize(start + LINE_BYTES - 1, b'a' + (n % 23) as u8);
        block.push(b'\n');
    }
    fs::write(path, &block).expect("write the lines");
}

/// Runs every round over `targets` (rotating which goes first) and returns the seconds of
/// each target, the warm-up round left out.
fn rounds_of(targets: &[Target], rounds: usize, inputs: &Inputs) -> Vec<Vec<f64>> {
    let mut seconds = vec![Vec::new(); targets.len()];
    for round in 0..=rounds {
        let mut line = format!(
            "round {round}{}:",
            if round == 0 { " (warm-up)" } else { "" }
        );
        for turn in 0..targets.len() {
            let which = (round + turn) % targets.len();
            let took = cat_into(targets[which], inputs);
            line.push_str(&format!(" {}={took:.3}s", name(targets[which])));
            if round > 0 {
                seconds[which].push(took);
            }
        }
        println!("{line}");
    }
    seconds
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
    let inputs = Inputs {
        lines: work.path().join("lines"),
        keyed: work.path().join("keyed"),
        count,
        work: work.path().to_owned(),
    };
    write_lines(&inputs.lines, count, |n| format!("line {n:09} "));
    write_lines(&inputs.keyed, count, |n| {
        format!("k{:05}:", n % DISTINCT_KEYS)
    });
    let megabytes = (count * LINE_BYTES) as f64 / 1e6;

    let [native, floor, commitfs] = medians(rounds_of(&LINE_TARGETS, rounds, &inputs));
    println!(
        "cat of {count} lines ({megabytes:.0} MB), medians of {rounds} rounds: native \
         {native:.3} s, floor {floor:.3} s, commitfs {commitfs:.3} s"
    );
    let [floor_one, floor_many, commitfs_one, commitfs_many] =
        medians(rounds_of(&KEYED_TARGETS, rounds, &inputs));
    println!(
        "cat of {count} keyed lines, medians of {rounds} rounds: floor {floor_one:.3} s into 1 \
         partition, {floor_many:.3} s into {MANY_PARTITIONS}; commitfs {commitfs_one:.3} s and \
         {commitfs_many:.3} s"
    );
    println!("| ratio of speeds | |");
    println!("|---|---|");
    println!("| floor / native | {:.2} |", native / floor);
    println!("| commitfs / native | {:.2} |", native / commitfs);
    println!("| commitfs / floor | {:.2} |", floor / commitfs);
    println!(
        "| keyed, floor: {MANY_PARTITIONS} / 1 partition | {:.2} |",
        floor_one / floor_many
    );
    println!(
        "| keyed, commitfs: {MANY_PARTITIONS} / 1 partition | {:.2} |",
        commitfs_one / commitfs_many
    );
    println!(
        "| keyed into 1 partition, commitfs / floor | {:.2} |",
        floor_one / commitfs_one
    );
    println!(
        "| keyed into {MANY_PARTITIONS} partitions, commitfs / floor | {:.2} |",
        floor_many / commitfs_many
    );
}

fn medians<const N: usize>(seconds: Vec<Vec<f64>>) -> [f64; N] {
    let medians: Vec<f64> = seconds.into_iter().map(median).collect();
    medians.try_into().expect("one median a target")
}

fn name(target: Target) -> String {
    match target {
        Target::Native => "native".into(),
        Target::Floor => "floor".into(),
        Target::Commitfs => "commitfs".into(),
        Target::FloorKeyed(partitions) => format!("floor-keyed-{partitions}"),
        Target::CommitfsKeyed(partitions) => format!("commitfs-keyed-{partitions}"),
    }
}
