//! What a `cargo mutants` pass over `src/store/dump.rs` (from line 241, the walk's steps
//! over a repaired span and past damage, on) found untested (issue 9). Each test says which
//! mutants it kills.

mod fixtures;

use std::io::Write;
use std::path::{Path, PathBuf};

use commitfs::store::check::{check, CheckOptions};
use commitfs::store::dump::{dump, DumpOptions, DumpReport};
use commitfs::store::Store;

/// Lines `line 0` … `line 2999` in topic "t" (one partition), one append (one batch) each:
/// with the small store's 64 KiB commit-log files they fill several files. Closed cleanly.
fn store_with_lines(dir: &Path) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, 3000);
    store.close().unwrap();
}

/// The commit-log files, in log order.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "the test needs several commit-log files, has {}",
        files.len()
    );
    files
}

/// Flips a bit of the magic of the batch at `at` of `path`: its header no longer decodes.
fn damage_magic(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at + 5] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// An output that takes at most `limit` bytes: a dump that printed messages again and again
/// fails instead of filling the memory.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("far more output than the log holds"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The dump of `dir` (its 3,000 lines take about 250 KB; it may print 4 MB).
fn dumped(dir: &Path) -> (DumpReport, String) {
    let mut out = Bounded {
        bytes: Vec::new(),
        limit: 4 << 20,
    };
    let report = dump(dir, &DumpOptions::default(), &mut out)
        .expect("a dump prints each message of the log once");
    (report, String::from_utf8(out.bytes).unwrap())
}

/// Every offset of the 3,000 but `lost`.
fn all_but(lost: u64) -> Vec<u64> {
    (0..3000).filter(|&offset| offset != lost).collect()
}

/// After `commitfs check --repair` marked a damaged batch in the middle of the first
/// commit-log file as a span to skip, a dump steps over that span and shows every other
/// message once, in order, saying where the skipped span is. Kills `+=` replaced with `-=`
/// (the walk went back, printing messages again and again) and with `*=` (it jumped past
/// the rest of the file) where `Walk::file` steps over the span.
#[test]
fn a_dump_steps_over_a_span_that_repair_marked_and_shows_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path());
    let first = log_files(dir.path()).remove(0);
    let bytes = std::fs::read(&first).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    let (damaged, next) = (starts[starts.len() / 2], starts[starts.len() / 2 + 1]);
    let lost = fixtures::batch_first_offset(&bytes, damaged);
    damage_magic(&first, damaged);
    let options = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    check(dir.path(), &options).unwrap();
    assert!(
        !check(dir.path(), &CheckOptions::default())
            .unwrap()
            .damaged(),
        "the repair left no damage"
    );

    let (report, text) = dumped(dir.path());
    assert_eq!(fixtures::dumped_offsets(&text), all_but(lost));
    assert!(!report.damaged, "{:?}", report.notes);
    let note = format!(
        "note: {} bytes {damaged}..{next}: a damaged span an earlier `commitfs check --repair` skipped",
        first.display()
    );
    assert!(report.notes.contains(&note), "{:?}", report.notes);
}

/// Damage to the first batch of the log (at byte 0 of the first file): the dump finds the
/// next valid batch in the same file and shows every message but the damaged one. Kills `+`
/// replaced with `-` in `Walk::resume_after` (`position + 1`: from byte 0 the search wrapped
/// around, found nothing in the file, and went on at the next file, leaving out the rest of
/// the first).
#[test]
fn damage_at_the_first_byte_of_the_log_leaves_out_only_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path());
    let first = log_files(dir.path()).remove(0);
    let bytes = std::fs::read(&first).unwrap();
    let second = fixtures::batch_starts(&bytes)[1];
    damage_magic(&first, 0);

    let (report, text) = dumped(dir.path());
    assert_eq!(fixtures::dumped_offsets(&text), all_but(0));
    assert!(report.damaged, "{:?}", report.notes);
    let resume = format!(
        "; valid batches resume at {} byte {second}",
        first.display()
    );
    assert!(
        report.notes.iter().any(|note| note
            .starts_with(&format!("damage: {} byte 0: ", first.display()))
            && note.ends_with(&resume)),
        "{:?}",
        report.notes
    );
}

/// Damage to the last batch of the first commit-log file: nothing valid follows it in that
/// file, so the dump goes on at the start of the second file and shows every message but
/// the damaged one, once. `+` replaced with `-` in `Walk::resume_after` (`skip(i + 1)`) fails
/// it (from the first file the search looked at no later file and the dump ended there, as
/// if the log ended); other tests caught that mutant only by a timeout (at the never-written
/// end of a later file the walk went back to an earlier one, again and again). `*` there
/// fails it too (the walk went back to the start of the damaged file).
#[test]
fn damage_to_the_last_batch_of_a_file_goes_on_at_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path());
    let files = log_files(dir.path());
    let bytes = std::fs::read(&files[0]).unwrap();
    let last = *fixtures::batch_starts(&bytes).last().unwrap();
    let lost = fixtures::batch_first_offset(&bytes, last);
    damage_magic(&files[0], last);

    let (report, text) = dumped(dir.path());
    assert_eq!(fixtures::dumped_offsets(&text), all_but(lost));
    assert!(report.damaged, "{:?}", report.notes);
    let resume = format!("; valid batches resume at {} byte 0", files[1].display());
    assert!(
        report.notes.iter().any(|note| note
            .starts_with(&format!("damage: {} byte {last}: ", files[0].display()))
            && note.ends_with(&resume)),
        "{:?}",
        report.notes
    );
}
