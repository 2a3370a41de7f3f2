//! A full disk through the mount (issue 9): the data directory on a small tmpfs, `cat` of
//! numbered lines until `ENOSPC`. Nothing torn is stored — every stored line is one `cat`
//! wrote whole, in order — and the daemon serves on: reads at any offset, key and offset
//! lookups, and `rmdir`.

mod common;

use common::{
    cat_until_enospc, fuse_available, mount_tmpfs, partition_lines, xattr_text, xattr_u64, Config,
    Mount, COMMAND_TIMEOUT,
};

/// Line `i` of the input: 100 bytes with its newline, numbered so any cut shows.
fn line(i: usize) -> String {
    format!("line-{i:07}-{}", "x".repeat(87))
}

#[test]
fn after_enospc_no_torn_line_is_stored_and_reads_and_rmdir_still_work() {
    if !fuse_available() {
        return;
    }
    let mut m = Mount::prepare(Config::small().set("segment_messages", "10000"));
    mount_tmpfs(&m.data, "size=8m", COMMAND_TIMEOUT);
    m.start();
    m.sh_ok("mkdir t other && for i in $(seq 1 50); do echo other-$i >> other/0/active; done");

    let input: String = (0..300_000).map(|i| line(i) + "\n").collect();
    cat_until_enospc(&m, input, "t/0/active");

    // Every stored line is whole and in order: cat's writes cut lines anywhere, and the
    // start of a line whose rest was in the refused write is never stored.
    let stored = partition_lines(&m.path("t/0"));
    assert!(stored.len() > 10_000, "only {} lines stored", stored.len());
    for (i, got) in stored.iter().enumerate() {
        assert_eq!(got, &line(i), "stored line {i} of {}", stored.len());
    }
    let end = xattr_u64(&m.path("t/0"), "user.end_offset");
    assert_eq!(end, stored.len() as u64);

    // Reads go on: a message found by its offset, read with dd where it says.
    let n = stored.len() / 2;
    let located = xattr_text(&m.path("t/0"), &format!("user.offset.{n}"));
    let fields: Vec<&str> = located.split(' ').collect();
    let dd = format!(
        "dd if=t/0/{} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        fields[0], fields[1], fields[2]
    );
    assert_eq!(m.sh_ok(&dd), line(n) + "\n");
    assert_eq!(
        m.sh_ok("tail -n 1 t/0/active"),
        line(stored.len() - 1) + "\n"
    );
    assert_eq!(partition_lines(&m.path("other/0")).len(), 50);

    // And a topic can still be deleted.
    m.sh_ok("rmdir other");
    assert_eq!(m.sh_ok("ls"), "t\n");

    // With room again, a remount finds the same messages.
    mount_tmpfs(&m.data, "remount,size=64m", COMMAND_TIMEOUT);
    m.remount();
    assert_eq!(partition_lines(&m.path("t/0")), stored);
    assert_eq!(m.sh_ok("ls"), "t\n");
}
