//! A data directory copied sparsely (`cp --sparse=always`, as `rsync -S` leaves it) onto a
//! disk that then fills (issue 9, item 7): the holes in its commit-log file must never turn
//! into a `SIGBUS` inside the process. A `SIGBUS` would kill this test binary, which is why
//! this test has a binary of its own.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use commitfs::store::{FlushPolicy, Framing, Store, StoreConfig, StoreError, TopicSettings};

fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 512 * 1024,
        segment_messages: 1000,
        max_message_bytes: 4096,
        flush: FlushPolicy::Async { interval_ms: 1000 },
        checkpoint_interval_ms: 3_600_000,
        retention_check_interval_ms: 3_600_000,
        max_disk_bytes: None,
        index_slots: 64,
        index_entries: 1000,
        materialize_segments: false,
        ..StoreConfig::default()
    }
}

fn settings() -> TopicSettings {
    TopicSettings {
        partitions: 1,
        framing: Framing::Lines,
        key_separator: None,
        retention_ms: None,
        retention_bytes: None,
        owner_uid: 0,
        owner_gid: 0,
        mode: 0o755,
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("timeout")
            .args([
                "20",
                "mount",
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["20", "umount"])
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeroes to `path` until the disk refuses.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// Blocks of `path` actually allocated, in bytes.
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_sparse_copy_on_a_full_disk_refuses_the_open_and_never_faults() {
    let source = tempfile::tempdir().unwrap();
    {
        let store = Store::open(source.path(), config()).unwrap();
        let partition = store
            .create_topic("t", settings())
            .unwrap()
            .partition(0)
            .unwrap();
        for i in 0..10 {
            store
                .append(&partition, format!("before {i}\n").as_bytes(), None)
                .unwrap();
        }
        store.close().unwrap();
    }
    let disk = SmallDisk::new(4 << 20);
    let data = disk.dir.path().join("data");
    let copied = Command::new("timeout")
        .args(["20", "cp", "-r", "--sparse=always"])
        .arg(source.path())
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    let log_file = data.join("commitlog/00000000000000000000");
    assert!(
        allocated_bytes(&log_file) < 64 * 1024,
        "the copy of the 512 KiB commit-log file is sparse"
    );
    let filler = disk.dir.path().join("filler");
    fill(&filler);

    // Opening would map the file's holes; filling them needs room the disk does not have.
    let error = Store::open(&data, config())
        .err()
        .expect("the open is refused");
    assert!(matches!(error, StoreError::DiskFull(_)), "{error}");
    assert!(
        error.to_string().contains(&log_file.display().to_string()),
        "{error} does not name {}",
        log_file.display()
    );

    // With room again, the copy opens whole and takes appends into what were holes.
    std::fs::remove_file(&filler).unwrap();
    let store = Store::open(&data, config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    assert_eq!(store.read_message(&partition, 9).unwrap(), b"before 9\n");
    assert!(
        allocated_bytes(&log_file) >= 512 * 1024,
        "the holes are filled"
    );
    let payload = vec![b'x'; 4000];
    for _ in 0..100 {
        store.append(&partition, &payload, None).unwrap();
    }
    assert_eq!(store.read_message(&partition, 109).unwrap(), payload);
}
