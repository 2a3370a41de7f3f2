//! The page-cache race behind NUL bytes in sealed segments (issue 9, item 10), made
//! deterministic: the daemon holds a write to the active segment (failpoint
//! `fs::core::write` sleeps), and a reader reads the segment meanwhile. The kernel dropped
//! the segment's pages before sending the write, and raises the size it knows when the write
//! returns; a page the reader filled in between (the old bytes, then zeroes) would then be
//! served as the sealed segment's bytes. Failpoints reach the daemon through `FAILPOINTS`,
//! which every mount of this binary inherits: this binary holds only this test.

#![cfg(feature = "failpoints")]

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::Duration;

use common::{segment_name, Config, Mount};

fn lines(from: u64, to: u64) -> Vec<u8> {
    (from..to).flat_map(|i| format!("{i:06}\n").into_bytes()).collect()
}

#[test]
fn a_read_during_the_write_that_seals_a_segment_leaves_no_short_page_behind() {
    if !common::fuse_available() {
        return;
    }
    std::env::set_var("FAILPOINTS", "fs::core::write=sleep(1000)");
    let m = Mount::new(Config::small().set("segment_messages", "20").set("partitions", "1"));
    fs::create_dir(m.path("t")).unwrap();
    let segment = m.path(&format!("t/0/{}", segment_name(0)));
    let mut writer = OpenOptions::new().append(true).open(m.path("t/0/active")).unwrap();
    writer.write_all(&lines(0, 18)).unwrap();
    std::thread::scope(|scope| {
        let sealing = scope.spawn(move || writer.write_all(&lines(18, 20)).unwrap());
        // Only orders the read inside the held write; if it comes too early or late, the
        // test checks less, never more.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(fs::read(&segment).unwrap(), lines(0, 18), "read during the write");
        sealing.join().unwrap();
    });
    assert_eq!(common::xattr_text(&segment, "user.sealed"), "true");
    let sealed = fs::read(&segment).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sealed),
        String::from_utf8_lossy(&lines(0, 20)),
        "the sealed segment as read back"
    );
}
