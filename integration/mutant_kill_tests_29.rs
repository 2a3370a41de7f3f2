//! What in-order `cargo mutants` passes over `src/store/commitlog.rs` (lines 817–939),
//! `src/store/dump.rs` (lines 210–219) and `src/store/index.rs` (lines 399–929, the key-index
//! thread) found untested (issue 9). Each test says which mutants it kills; each was seen
//! failing with them applied by hand. Every test holds `FailScenario` (failpoints are global).

mod fixtures;

use commitfs::store::check::{check, CheckOptions};
use commitfs::store::dump::{dump, DumpOptions};

/// After `commitfs check --repair` marked the damaged last batch of the first commit-log
/// file as a span to skip (it runs to the file's last byte: nothing valid follows it in that
/// file), a dump steps over the span, goes on at the next file, shows every other message
/// once, and reports no damage: the repair left none. Kills `<` replaced with `<=` in
/// `Walk::file` (`src/store/dump.rs` line 212: at the end of the span, the file's end, the
/// walk read on, took the nothing there for damage and reported the repaired log damaged).
#[test]
fn a_dump_after_a_repair_that_skipped_a_files_tail_reports_no_damage() {
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    fixtures::closed_store_with_lines(dir.path(), 3000);
    fixtures::assert_several_log_files(dir.path());
    let first = dir.path().join("commitlog").join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let last = *fixtures::batch_starts(&bytes).last().unwrap();
    let lost = fixtures::batch_first_offset(&bytes, last);
    // Its magic no longer reads as a batch's.
    bytes[last + 5] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let repair = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    check(dir.path(), &repair).unwrap();

    let mut out = Vec::new();
    let report = dump(dir.path(), &DumpOptions::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected: Vec<u64> = (0..3000).filter(|&offset| offset != lost).collect();
    assert_eq!(fixtures::dumped_offsets(&text), expected);
    assert!(!report.damaged, "{:?}", report.notes);
    let note = format!(
        "note: {} bytes {last}..{}: a damaged span an earlier `commitfs check --repair` skipped",
        first.display(),
        bytes.len()
    );
    assert_eq!(report.notes, [note]);
}
