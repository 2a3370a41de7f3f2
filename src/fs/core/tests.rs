//! The core against a real store in a temporary directory, without a mount.

use std::ffi::OsStr;

use tempfile::TempDir;

use super::*;
use crate::fs::xattr::XattrReply;
use crate::store::StoreConfig;

const APPEND: i32 = libc::O_WRONLY | libc::O_APPEND;

/// A store and the core over it; fields drop in order, the directory last.
struct Fixture {
    fs: CommitFs,
    store: Arc<Store>,
    dir: TempDir,
}

fn fixture(segment_messages: u32, partitions: u32) -> Fixture {
    open(tempfile::tempdir().unwrap(), segment_messages, partitions)
}

fn open(dir: TempDir, segment_messages: u32, partitions: u32) -> Fixture {
    let config = StoreConfig {
        commit_log_file_bytes: 1 << 20,
        segment_messages,
        max_message_bytes: 4096,
        index_slots: 64,
        index_entries: 1024,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    Fixture {
        fs: CommitFs::new(store.clone(), test_settings(partitions, Some(b":"))),
        store,
        dir,
    }
}

impl Fixture {
    /// Closes the store and opens the directory again, as a remount does.
    fn remount(self, segment_messages: u32, partitions: u32) -> Fixture {
        let Fixture { fs, store, dir } = self;
        drop(fs);
        store.close().unwrap();
        drop(store);
        open(dir, segment_messages, partitions)
    }

    fn ino(&self, path: &str) -> u64 {
        path.split('/').fold(ROOT, |parent, name| {
            let entry = self.fs.lookup(parent, OsStr::new(name));
            entry
                .unwrap_or_else(|e| panic!("{path}: {}", e.message()))
                .attr
                .ino
                .0
        })
    }

    fn mkdir(&self, name: &str, uid: u32) -> FsResult<Entry> {
        self.fs
            .mkdir(ROOT, OsStr::new(name), 0o755, 0o022, uid, uid)
    }

    fn write_through(&self, path: &str, pid: u32, data: &[u8]) {
        let fh = self.fs.open(self.ino(path), APPEND, pid).unwrap().fh;
        self.fs.write(fh, data).unwrap();
        self.fs.flush(fh, pid).unwrap();
        self.fs.release(fh).unwrap();
    }

    fn read(&self, path: &str) -> Vec<u8> {
        let fh = self.fs.open(self.ino(path), libc::O_RDONLY, 1).unwrap().fh;
        let bytes = self.fs.read(fh, 0, 1 << 20, <[u8]>::to_vec).unwrap();
        self.fs.release(fh).unwrap();
        bytes
    }

    fn xattr(&self, path: &str, name: &str) -> FsResult<Vec<u8>> {
        let ino = if path.is_empty() {
            ROOT
        } else {
            self.ino(path)
        };
        match self.fs.getxattr(ino, OsStr::new(name), 1 << 16)? {
            XattrReply::Value(value) => Ok(value),
            XattrReply::Length(_) => panic!("asked for the value"),
        }
    }

    fn number(&self, path: &str, name: &str) -> u64 {
        String::from_utf8(self.xattr(path, name).unwrap())
            .unwrap()
            .parse()
            .unwrap()
    }

    fn list(&self, path: &str) -> Vec<String> {
        let ino = if path.is_empty() {
            ROOT
        } else {
            self.ino(path)
        };
        let fh = self.fs.opendir(ino).unwrap();
        let mut names = Names::default();
        self.fs.readdir(fh, 0, &mut names).unwrap();
        self.fs.releasedir(fh).unwrap();
        names.entries.into_iter().map(|(_, name)| name).collect()
    }
}

/// Collects (cookie, name) entries; full after `room` of them when set.
#[derive(Default)]
struct Names {
    entries: Vec<(u64, String)>,
    room: Option<usize>,
}

impl DirectoryReplier for Names {
    fn add(&mut self, _ino: u64, offset: u64, _kind: FileType, name: &OsStr) -> bool {
        if self.room == Some(self.entries.len()) {
            return true;
        }
        self.entries
            .push((offset, name.to_string_lossy().into_owned()));
        false
    }
}

fn errno<T>(result: FsResult<T>) -> i32 {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.errno(),
    }
}

const SEGMENT_0: &str = "t/0/00000000000000000000.log";
const SEGMENT_2: &str = "t/0/00000000000000000002.log";

#[test]
fn mkdir_makes_a_topic_with_its_partitions_append_file_and_active_link() {
    let f = fixture(10, 2);
    f.mkdir("t", 1000).unwrap();
    assert_eq!(f.list(""), [".", "..", "t"]);
    assert_eq!(f.list("t"), [".", "..", "append", "0", "1"]);
    assert_eq!(
        f.list("t/0"),
        [".", "..", "00000000000000000000.log", "active", "stream"]
    );
    let topic = f.fs.getattr(f.ino("t"), None).unwrap().attr;
    assert_eq!(
        (topic.uid, topic.perm, topic.kind),
        (1000, 0o755, FileType::Directory)
    );
    assert_eq!(errno(f.mkdir("t", 1000)), libc::EEXIST);
    assert_eq!(errno(f.mkdir(".t", 1000)), libc::EINVAL);
    assert_eq!(
        errno(f.fs.mkdir(f.ino("t"), OsStr::new("2"), 0o755, 0, 0, 0)),
        libc::EPERM
    );
}

#[test]
fn readdir_continues_from_the_offset_it_handed_out() {
    let f = fixture(10, 1);
    for name in ["a", "b", "c", "d"] {
        f.mkdir(name, 0).unwrap();
    }
    let fh = f.fs.opendir(ROOT).unwrap();
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let mut page = Names {
            entries: Vec::new(),
            room: Some(2),
        };
        f.fs.readdir(fh, offset, &mut page).unwrap();
        let Some(&(last, _)) = page.entries.last() else {
            break;
        };
        offset = last;
        seen.extend(page.entries.into_iter().map(|(_, name)| name));
    }
    assert_eq!(seen, [".", "..", "a", "b", "c", "d"]);
}

#[test]
fn a_partial_line_waits_for_the_close_of_the_process_that_opened_it() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    let fh = f.fs.open(f.ino(SEGMENT_0), APPEND, 10).unwrap().fh;
    f.fs.write(fh, b"a\nbc").unwrap();
    assert_eq!(f.number("t/0", "user.end_offset"), 1);
    f.fs.flush(fh, 11).unwrap();
    assert_eq!(
        f.number("t/0", "user.end_offset"),
        1,
        "a child's close commits nothing"
    );
    f.fs.flush(fh, 10).unwrap();
    assert_eq!(f.number("t/0", "user.end_offset"), 2);
    f.fs.write(fh, b"d").unwrap();
    f.fs.release(fh).unwrap();
    assert_eq!(
        f.read(SEGMENT_0),
        b"a\nbc\nd\n",
        "the last close commits the rest"
    );
}

#[test]
fn writes_go_to_the_partitions_end_across_rolls() {
    let f = fixture(2, 1);
    f.mkdir("t", 0).unwrap();
    let fh = f.fs.open(f.ino(SEGMENT_0), APPEND, 1).unwrap().fh;
    f.fs.write(fh, b"1\n2\n3\n").unwrap();
    f.fs.write(fh, b"4\n").unwrap();
    f.fs.release(fh).unwrap();
    assert_eq!(f.read(SEGMENT_0), b"1\n2\n");
    assert_eq!(f.read(SEGMENT_2), b"3\n4\n");
    assert_eq!(
        f.fs.readlink(f.ino("t/0/active"), 1).unwrap(),
        b"00000000000000000004.log"
    );
}

#[test]
fn sealed_segments_refuse_writers_except_an_append_through_active_that_raced_a_roll() {
    let f = fixture(2, 1);
    f.mkdir("t", 0).unwrap();
    let segment = f.ino(SEGMENT_0);
    // Thread 5 resolves `active`; before it opens, another writer fills the segment.
    assert_eq!(
        f.fs.readlink(f.ino("t/0/active"), 5).unwrap(),
        b"00000000000000000000.log"
    );
    f.write_through(SEGMENT_0, 9, b"a\nb\n");
    assert_eq!(errno(f.fs.open(segment, APPEND, 6)), libc::EPERM);
    let fh = f.fs.open(segment, APPEND, 5).unwrap().fh;
    f.fs.write(fh, b"c\n").unwrap();
    f.fs.release(fh).unwrap();
    assert_eq!(f.read(SEGMENT_2), b"c\n");
    // The link was followed once; opening by name again is refused.
    assert_eq!(errno(f.fs.open(segment, APPEND, 5)), libc::EPERM);
    assert_eq!(
        errno(f.fs.open(segment, libc::O_RDWR | libc::O_APPEND, 5)),
        libc::EPERM
    );
    let truncate = AttrChanges {
        mode: None,
        uid: None,
        gid: None,
        size: Some(0),
        atime: None,
        mtime: None,
    };
    assert_eq!(errno(f.fs.setattr(segment, &truncate)), libc::EPERM);
}

#[test]
fn the_active_segment_takes_appends_only() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    let active = f.ino(SEGMENT_0);
    assert_eq!(errno(f.fs.open(active, libc::O_WRONLY, 1)), libc::EPERM);
    assert_eq!(
        errno(f.fs.open(active, APPEND | libc::O_TRUNC, 1)),
        libc::EPERM
    );
    let opened = f.fs.open(active, APPEND, 1).unwrap();
    assert!(opened.flags.contains(FopenFlags::FOPEN_DIRECT_IO));
    f.fs.release(opened.fh).unwrap();
    assert_eq!(
        errno(f.fs.open(active, libc::O_RDONLY | libc::O_TRUNC, 1)),
        libc::EPERM
    );
    let reading = f.fs.open(active, libc::O_RDONLY, 1).unwrap();
    assert!(!reading.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));
    f.fs.release(reading.fh).unwrap();
    let attr = f.fs.getattr(active, None).unwrap();
    assert_eq!(
        attr.ttl,
        Duration::ZERO,
        "the active segment's size is never cached"
    );
}

#[test]
fn sealed_segments_keep_their_page_cache_and_a_long_ttl() {
    let f = fixture(2, 1);
    f.mkdir("t", 0).unwrap();
    f.write_through(SEGMENT_0, 1, b"a\nb\n");
    let sealed = f.ino(SEGMENT_0);
    assert_eq!(
        errno(f.fs.open(sealed, libc::O_RDONLY | libc::O_TRUNC, 1)),
        libc::EPERM
    );
    let opened = f.fs.open(sealed, libc::O_RDONLY, 1).unwrap();
    assert!(opened.flags.contains(FopenFlags::FOPEN_KEEP_CACHE));
    f.fs.release(opened.fh).unwrap();
    let attr = f.fs.getattr(sealed, None).unwrap();
    assert_eq!(
        (attr.attr.size, attr.attr.perm, attr.ttl),
        (4, 0o444, Duration::from_secs(60))
    );
    let before = f.fs.read_requests();
    f.read(SEGMENT_0);
    assert_eq!(f.fs.read_requests(), before + 1);
}

#[test]
fn a_line_over_the_limit_stores_nothing_of_itself() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    let fh = f.fs.open(f.ino(SEGMENT_0), APPEND, 1).unwrap().fh;
    f.fs.write(fh, &[b'x'; 3000]).unwrap();
    assert_eq!(errno(f.fs.write(fh, &[b'x'; 3000])), libc::EFBIG);
    assert_eq!(errno(f.fs.write(fh, b"xx")), libc::EFBIG);
    f.fs.write(fh, b"x\nok\n").unwrap();
    assert_eq!(errno(f.fs.write(fh, &[b'y'; 5000])), libc::EFBIG);
    // A held start of a line that ends too long goes with it, even at close.
    f.fs.write(fh, b"\nstart").unwrap();
    let rest = [&[b'z'; 4092][..], b"\nnext\n"].concat();
    assert_eq!(errno(f.fs.write(fh, &rest)), libc::EFBIG);
    f.fs.release(fh).unwrap();
    assert_eq!(f.read(SEGMENT_0), b"ok\n");
}

#[test]
fn a_segment_removed_while_open_reads_on_like_an_unlinked_file() {
    let f = fixture(2, 1);
    f.mkdir("t", 1000).unwrap();
    f.write_through(SEGMENT_0, 1, b"a\nb\nc\n");
    let segment = f.ino(SEGMENT_0);
    let fh = f.fs.open(segment, libc::O_RDONLY, 1).unwrap().fh;
    assert_eq!(errno(f.fs.rmdir(ROOT, OsStr::new("t"), 1001)), libc::EPERM);
    f.fs.rmdir(ROOT, OsStr::new("t"), 1000).unwrap();
    assert_eq!(errno(f.fs.lookup(ROOT, OsStr::new("t"))), libc::ENOENT);
    let attr = f.fs.getattr(segment, None).unwrap().attr;
    assert_eq!((attr.size, attr.nlink), (4, 0));
    assert_eq!(f.fs.read(fh, 0, 100, <[u8]>::to_vec).unwrap(), b"a\nb\n");
    f.fs.release(fh).unwrap();
    assert_eq!(errno(f.fs.getattr(segment, None)), libc::ENOENT);
}

#[test]
fn keys_route_appends_and_answer_lookups() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    f.write_through("t/append", 1, b"a:1\nb:2\na:3\nno key\n");
    assert_eq!(f.xattr("t", "user.key.a").unwrap(), b"a:3\n");
    assert_eq!(f.xattr("t/0", "user.key.b").unwrap(), b"b:2\n");
    assert_eq!(f.xattr("t", "user.offsets.a").unwrap(), b"0 0\n0 2\n");
    assert_eq!(
        f.xattr("t/0", "user.offset.1").unwrap(),
        b"00000000000000000000.log 4 4"
    );
    assert_eq!(f.xattr("t/0", "user.time.0").unwrap(), b"0");
    assert_eq!(errno(f.xattr("t", "user.key.zed")), libc::ENODATA);
    assert_eq!(errno(f.xattr("t/0", "user.offset.9")), libc::ENODATA);
    assert_eq!(errno(f.xattr("t/0", "user.offset.nine")), libc::EINVAL);
    assert_eq!(
        errno(f.xattr("t/0", "user.time.2999-01-01T00:00:00Z")),
        libc::ENODATA
    );
    assert_eq!(errno(f.xattr("t", "security.capability")), libc::ENODATA);
}

#[test]
fn settings_change_through_setxattr_and_persist() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    let topic = f.ino("t");
    let set =
        |name: &str, value: &[u8], flags: i32| f.fs.setxattr(topic, OsStr::new(name), value, flags);
    set("user.partitions", b"3", 0).unwrap();
    set("user.framing", b"raw", 0).unwrap();
    set("user.retention_ms", b"60000", 0).unwrap();
    assert_eq!(f.list("t"), [".", "..", "append", "0", "1", "2"]);
    assert_eq!(errno(set("user.partitions", b"2", 0)), libc::EINVAL);
    assert_eq!(
        errno(set("user.partitions", b"3", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(errno(set("user.key.a", b"x", 0)), libc::EPERM);
    assert_eq!(errno(set("user.colour", b"x", 0)), libc::EOPNOTSUPP);
    assert_eq!(
        errno(f.fs.removexattr(topic, OsStr::new("user.framing"))),
        libc::EPERM
    );
    assert_eq!(
        errno(f.fs.removexattr(topic, OsStr::new("user.colour"))),
        libc::ENODATA
    );
    let names = match f.fs.listxattr(topic, 1 << 16).unwrap() {
        XattrReply::Value(names) => names,
        XattrReply::Length(_) => panic!("asked for the value"),
    };
    assert_eq!(
        names,
        b"user.partitions\0user.framing\0user.key_separator\0user.retention_ms\0user.retention_bytes\0"
    );

    let f = f.remount(10, 1);
    assert_eq!(f.xattr("t", "user.partitions").unwrap(), b"3");
    assert_eq!(f.xattr("t", "user.framing").unwrap(), b"raw");
    assert_eq!(f.xattr("t", "user.retention_ms").unwrap(), b"60000");
    assert_eq!(f.xattr("t", "user.retention_bytes").unwrap(), b"-1");
    f.write_through("t/1/00000000000000000000.log", 1, b"one write");
    assert_eq!(f.read("t/1/00000000000000000000.log"), b"one write");
}

/// On a kernel that passes fewer pages per request (told at init), a raw write over what one
/// request always carries is refused whole, as the kernel would split it into messages.
#[test]
fn a_raw_write_over_the_kernels_request_size_is_refused_with_efbig() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    f.fs.setxattr(f.ino("t"), OsStr::new("user.framing"), b"raw", 0)
        .unwrap();
    // A kernel that takes writes of 3,000 bytes (the fixture's messages stop at 4 KiB).
    let limit = crate::fs::framing::raw_write_limit(3000, 256);
    f.fs.limit_raw_writes(limit);
    let fh =
        f.fs.open(f.ino("t/0/00000000000000000000.log"), APPEND, 1)
            .unwrap()
            .fh;
    let too_big = vec![b'x'; limit + 1];
    assert_eq!(errno(f.fs.write(fh, &too_big)), libc::EFBIG);
    assert_eq!(f.fs.write(fh, &too_big[..limit]).unwrap() as usize, limit);
    f.fs.release(fh).unwrap();
    let end = f.xattr("t/0", "user.end_offset").unwrap();
    assert_eq!(end, b"1", "only the write within the limit is stored");
}

#[test]
fn inode_numbers_survive_a_remount() {
    let f = fixture(2, 2);
    f.mkdir("t", 0).unwrap();
    f.write_through("t/1/00000000000000000000.log", 1, b"a\nb\nc\n");
    let paths = [
        "t",
        "t/append",
        "t/1",
        "t/1/active",
        "t/1/00000000000000000000.log",
        "t/1/00000000000000000002.log",
    ];
    let before: Vec<u64> = paths.iter().map(|path| f.ino(path)).collect();
    let f = f.remount(2, 2);
    let after: Vec<u64> = paths.iter().map(|path| f.ino(path)).collect();
    assert_eq!(before, after);
    let mut distinct = before.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), paths.len());
}

#[test]
fn nothing_is_created_removed_or_renamed_by_name() {
    let f = fixture(10, 1);
    f.mkdir("t", 0).unwrap();
    let partition = f.ino("t/0");
    assert_eq!(
        errno(f.fs.refuse_new_name(partition, OsStr::new("x.log"))),
        libc::EPERM
    );
    assert_eq!(
        errno(f.fs.unlink(partition, OsStr::new("00000000000000000000.log"))),
        libc::EPERM
    );
    assert_eq!(
        errno(f.fs.unlink(partition, OsStr::new("active"))),
        libc::EPERM
    );
    assert_eq!(
        errno(f.fs.unlink(partition, OsStr::new("missing"))),
        libc::ENOENT
    );
    assert_eq!(
        errno(f.fs.rmdir(f.ino("t"), OsStr::new("0"), 0)),
        libc::EPERM
    );
    assert_eq!(errno(f.fs.rename(ROOT, OsStr::new("t"))), libc::EPERM);
}

#[test]
fn segment_file_names_round_trip() {
    assert_eq!(segment_file_name(0), "00000000000000000000.log");
    assert_eq!(segment_file_name(300_000), "00000000000000300000.log");
    assert_eq!(
        parse_segment_file_name(b"00000000000000300000.log"),
        Some(300_000)
    );
    assert_eq!(
        parse_segment_file_name(segment_file_name(u64::MAX).as_bytes()),
        Some(u64::MAX)
    );
    for bad in [
        &b"300000.log"[..],
        b"00000000000000300000",
        b"0000000000000030000x.log",
        b"99999999999999999999.log",
    ] {
        assert_eq!(
            parse_segment_file_name(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn partition_names_are_canonical_decimals() {
    assert_eq!(parse_partition_name(b"0"), Some(0));
    assert_eq!(parse_partition_name(b"12"), Some(12));
    for bad in [&b""[..], b"01", b"-1", b"1a", b"99999999999"] {
        assert_eq!(
            parse_partition_name(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
