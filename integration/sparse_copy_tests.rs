//! A data directory copied sparsely (`cp --sparse=always`, as `rsync -S` leaves it) onto a
//! disk that then fills (issue 9, item 7): the holes in its commit-log file must never turn
//! into a `SIGBUS` inside the process. A `SIGBUS` would kill this test binary, which is why
//! this test has a binary of its own.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use commitfs::store::{Store, StoreConfig, StoreError};

mod fixtures;

use fixtures::SmallDisk;

/// 512 KiB commit-log files, so that the sparse copy has holes to fill.
fn config() -> StoreConfig {
    StoreConfig {
        commit_log_file_bytes: 512 * 1024,
        segment_messages: 1000,
        ..fixtures::small_store_config()
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
        let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
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
