//! Segment inode numbers and the page-cache policy of segment opens, through the core
//! against a real store (issue 9, items 6 and 10).

use std::ffi::OsStr;
use std::path::Path;

use tempfile::TempDir;

use super::*;
use crate::store::StoreConfig;

const APPEND: i32 = libc::O_WRONLY | libc::O_APPEND;

fn open_store(dir: &Path, segment_messages: u32) -> Arc<Store> {
    let config = StoreConfig {
        commit_log_file_bytes: 1 << 20,
        segment_messages,
        index_slots: 64,
        index_entries: 1024,
        ..StoreConfig::default()
    };
    Store::open(dir, config).unwrap()
}

fn core(store: &Arc<Store>) -> CommitFs {
    CommitFs::new(store.clone(), test_settings(1, None))
}

fn ino(fs: &CommitFs, path: &str) -> u64 {
    path.split('/').fold(ROOT, |parent, name| {
        let entry = fs.lookup(parent, OsStr::new(name));
        entry
            .unwrap_or_else(|e| panic!("{path}: {}", e.message()))
            .attr
            .ino
            .0
    })
}

fn append(fs: &CommitFs, path: &str, data: &[u8]) {
    let fh = fs.open(ino(fs, path), APPEND, 7).unwrap().fh;
    fs.write(fh, data).unwrap();
    fs.flush(fh, 7).unwrap();
    fs.release(fh).unwrap();
}

fn read_ino(fs: &CommitFs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY, 7).unwrap().fh;
    let bytes = fs.read(fh, 0, 1 << 16, <[u8]>::to_vec).unwrap();
    fs.release(fh).unwrap();
    bytes
}

fn mkdir(fs: &CommitFs, name: &str) {
    fs.mkdir(ROOT, OsStr::new(name), 0o755, 0o022, 0, 0)
        .unwrap();
}

/// Topic `a` gets id 1; `store.toml` then says the next id is 2^20 + 1 (as if a million
/// topics had come and gone), so `b` gets an id whose low 20 bits are those of `a`'s.
fn two_topics_2_pow_20_apart(dir: &TempDir) -> (Arc<Store>, CommitFs) {
    {
        let store = open_store(dir.path(), 10);
        let fs = core(&store);
        mkdir(&fs, "a");
        drop(fs);
        store.close().unwrap();
    }
    let meta = dir.path().join("store.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains("next_topic_id = 2\n"), "{text}");
    let raised = text.replace("next_topic_id = 2\n", "next_topic_id = 1048577\n");
    std::fs::write(&meta, raised).unwrap();
    let store = open_store(dir.path(), 10);
    let fs = core(&store);
    mkdir(&fs, "b");
    assert_eq!(
        store.topic("b").unwrap().id() - store.topic("a").unwrap().id(),
        1 << 20
    );
    (store, fs)
}

#[test]
fn segments_of_topics_whose_ids_differ_by_2_pow_20_have_their_own_inodes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, fs) = two_topics_2_pow_20_apart(&dir);
    append(&fs, "a/append", b"from a\n");
    append(&fs, "b/append", b"from b, longer\n");
    let segment = "0/00000000000000000000.log";
    let (in_a, in_b) = (
        ino(&fs, &format!("a/{segment}")),
        ino(&fs, &format!("b/{segment}")),
    );
    assert_ne!(in_a, in_b, "two live segments share an inode number");
    assert_eq!(read_ino(&fs, in_a), b"from a\n");
    assert_eq!(read_ino(&fs, in_b), b"from b, longer\n");
    assert_eq!(fs.getattr(in_a, None).unwrap().attr.size, 7);
    assert_eq!(fs.getattr(in_b, None).unwrap().attr.size, 15);
    // readdir hands out the numbers lookup does.
    let fh = fs.opendir(ino(&fs, "b/0")).unwrap();
    let mut listed = Listed::default();
    fs.readdir(fh, 0, &mut listed).unwrap();
    assert!(listed
        .0
        .contains(&(in_b, "00000000000000000000.log".to_owned())));
}

#[test]
fn a_segment_that_fits_keeps_its_derived_number_across_remounts() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = open_store(dir.path(), 10);
        let fs = core(&store);
        mkdir(&fs, "a");
        append(&fs, "a/append", b"x\n");
        let number = ino(&fs, "a/0/00000000000000000000.log");
        drop(fs);
        store.close().unwrap();
        number
    };
    let store = open_store(dir.path(), 10);
    let fs = core(&store);
    assert_eq!(ino(&fs, "a/0/00000000000000000000.log"), first);
}

#[derive(Default)]
struct Listed(Vec<(u64, String)>);

impl DirectoryReplier for Listed {
    fn add(&mut self, ino: u64, _offset: u64, _kind: FileType, name: &OsStr) -> bool {
        self.0.push((ino, name.to_string_lossy().into_owned()));
        false
    }
}

fn open_flags(fs: &CommitFs, ino: u64, flags: i32) -> FopenFlags {
    let opened = fs.open(ino, flags, 7).unwrap();
    fs.release(opened.fh).unwrap();
    opened.flags
}

/// A core over a store of 2-message segments whose topic `t` holds one message: the inode of
/// segment 0, still active (the store is returned to outlive the core).
fn one_message_in_active_segment(dir: &Path) -> (Arc<Store>, CommitFs, u64) {
    let store = open_store(dir, 2);
    let fs = core(&store);
    mkdir(&fs, "t");
    append(&fs, "t/append", b"000000\n");
    let first = ino(&fs, "t/0/00000000000000000000.log");
    (store, fs, first)
}

#[test]
fn the_active_segment_is_read_uncached_and_sealing_drops_what_its_readers_cached() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, fs, first) = one_message_in_active_segment(dir.path());
    let active = open_flags(&fs, first, libc::O_RDONLY);
    assert!(active.contains(FopenFlags::FOPEN_DIRECT_IO), "{active:?}");
    assert!(!active.contains(FopenFlags::FOPEN_KEEP_CACHE), "{active:?}");
    append(&fs, "t/append", b"000001\n000002\n");
    // Segment 0 is sealed now; it was opened while active, so its first open drops the
    // kernel's pages of it, and later opens keep them.
    let once_sealed = open_flags(&fs, first, libc::O_RDONLY);
    assert!(
        !once_sealed.contains(FopenFlags::FOPEN_KEEP_CACHE),
        "{once_sealed:?}"
    );
    assert!(
        !once_sealed.contains(FopenFlags::FOPEN_DIRECT_IO),
        "{once_sealed:?}"
    );
    let again = open_flags(&fs, first, libc::O_RDONLY);
    assert!(again.contains(FopenFlags::FOPEN_KEEP_CACHE), "{again:?}");
    // Segment 1 fills and seals without a reader ever opening it while active.
    append(&fs, "t/append", b"000003\n");
    let second = ino(&fs, "t/0/00000000000000000002.log");
    let never_active = open_flags(&fs, second, libc::O_RDONLY);
    assert!(
        never_active.contains(FopenFlags::FOPEN_KEEP_CACHE),
        "{never_active:?}"
    );
    assert_eq!(read_ino(&fs, first), b"000000\n000001\n");
}

#[test]
fn a_sealed_segment_a_writer_still_appends_through_is_read_uncached() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, fs, first) = one_message_in_active_segment(dir.path());
    // A long `cat >> active`: its descriptor stays on segment 0 across the roll.
    let writer = fs.open(first, APPEND, 7).unwrap();
    fs.write(writer.fh, b"000001\n000002\n000003\n").unwrap();
    let while_writing = open_flags(&fs, first, libc::O_RDONLY);
    assert!(
        while_writing.contains(FopenFlags::FOPEN_DIRECT_IO),
        "{while_writing:?}"
    );
    fs.release(writer.fh).unwrap();
    // Its writes may have left the kernel's pages and size of segment 0 wrong: dropped
    // at the first open once the writer is gone, kept from then on.
    let after = open_flags(&fs, first, libc::O_RDONLY);
    assert!(!after.contains(FopenFlags::FOPEN_KEEP_CACHE), "{after:?}");
    assert!(!after.contains(FopenFlags::FOPEN_DIRECT_IO), "{after:?}");
    let again = open_flags(&fs, first, libc::O_RDONLY);
    assert!(again.contains(FopenFlags::FOPEN_KEEP_CACHE), "{again:?}");
    assert_eq!(read_ino(&fs, first), b"000000\n000001\n");
}
