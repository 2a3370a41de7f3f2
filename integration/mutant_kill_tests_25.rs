//! What a `cargo mutants` pass over `src/store/check.rs` (lines 1–697: `commitfs check`
//! reading the metadata, the checkpoint and the layout, and its walk over the commit log)
//! found untested (issue 9). Each test says which mutants it kills; each was seen failing
//! with them applied by hand.

mod fixtures;

use std::path::{Path, PathBuf};

use commitfs::store::check::{check, CheckOptions, CheckReport, Finding};
use commitfs::store::Store;

/// `commitfs check` of `dir` with `options`; one that walks on for a minute (over the same
/// file again and again) fails the test.
fn check_with(dir: &Path, options: CheckOptions) -> commitfs::store::Result<CheckReport> {
    let dir = dir.to_path_buf();
    fixtures::finishes("check", move || check(&dir, &options))
}

/// `commitfs check DIR`, which must be able to check it.
fn checked(dir: &Path) -> CheckReport {
    check_with(dir, CheckOptions::default()).expect("check runs")
}

/// `commitfs check --repair DIR`.
fn repaired(dir: &Path) -> commitfs::store::Result<CheckReport> {
    let options = CheckOptions {
        repair: true,
        ..CheckOptions::default()
    };
    check_with(dir, options)
}

/// The report's damage lines.
fn damages(report: &CheckReport) -> Vec<&str> {
    report
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Damage(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The report's note that gives the layout read from the files of a store without
/// `store.toml`.
fn layout_note(report: &CheckReport) -> &str {
    report
        .findings
        .iter()
        .find_map(|f| match f {
            Finding::Note(text) if text.starts_with("layout read from the files") => {
                Some(text.as_str())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no layout note in {:?}", report.findings))
}

/// A closed store (`small_store_config`: 64 KiB commit-log files, 10-message segments) whose
/// topic `t` holds lines `0..lines`, one append each.
fn store_with_lines(dir: &Path, lines: u64) {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    fixtures::append_lines(&store, &partition, 0, lines);
    store.close().unwrap();
}

/// Lines `0..3000` over several commit-log files, the newest made twice its size (zeroes
/// appended, as a copy gone wrong might leave it); its path.
fn store_with_a_log_file_twice_its_size(dir: &Path) -> PathBuf {
    store_with_lines(dir, 3000);
    fixtures::assert_several_log_files(dir);
    let newest = *fixtures::log_bases(dir).last().unwrap();
    let path = dir.join("commitlog").join(format!("{newest:020}"));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(128 * 1024).unwrap();
    path
}

/// A commit-log file of the wrong length is damage, named with its length. Kills `||` as `&&`
/// in `LogWalk::run` (`src/store/check.rs` line 344: a file of the wrong length at a right
/// offset walked as if it were whole, and the check passing a store the mount refuses).
#[test]
fn check_reports_a_commit_log_file_of_the_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_a_log_file_twice_its_size(dir.path());
    let report = checked(dir.path());
    let named = format!("{} is 131072 bytes long", path.display());
    assert!(
        damages(&report).iter().any(|d| d.contains(&named)),
        "{:?}",
        report.findings
    );
}

/// Without `store.toml`, the commit-log file size is the one most files have, not that of
/// one odd file, and `segment_messages` is read from the consume-queue files. Kills `+=` as
/// `-=` and as `*=` in `infer_layout` (line 210: the odd file's size taken, and every other
/// file then reported as damage) and `segment_size_of_queues` as `Some(1)` (line 240).
#[test]
fn check_without_store_toml_reads_the_layout_from_most_files() {
    let dir = tempfile::tempdir().unwrap();
    store_with_a_log_file_twice_its_size(dir.path());
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();
    let report = checked(dir.path());
    // No topic has keys: no index file tells the index sizes.
    let note = layout_note(&report);
    assert!(
        note.starts_with(
            "layout read from the files: commit_log_file_bytes = 65536, segment_messages = 10,"
        ),
        "{note}"
    );
    assert_eq!(damages(&report).len(), 2, "{:?}", report.findings);
}

/// A checkpoint that cannot be read (here a directory where the file should be) fails the
/// check, naming it, instead of being taken for a store without one. Kills the match guard
/// `NotFound` as `true` in `load_checkpoint` (line 193: every read error taken as "no
/// checkpoint", and the check passing).
#[test]
fn check_fails_naming_a_checkpoint_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 20);
    let checkpoint = dir.path().join("checkpoint");
    std::fs::remove_file(&checkpoint).unwrap();
    std::fs::create_dir(&checkpoint).unwrap();
    let error = check_with(dir.path(), CheckOptions::default())
        .expect_err("a checkpoint that cannot be read is no missing checkpoint");
    let text = error.to_string();
    assert!(text.contains(&checkpoint.display().to_string()), "{text}");
}

/// A store that lost `store.toml` and whose partition has a single consume-queue file: its
/// files do not tell `segment_messages`. The check still runs (and says so, with the default
/// it assumed); a repair refuses to guess and asks for `--segment-messages`, with which it
/// rebuilds `store.toml` and every line reads back. Kills the match guard `options.repair` as
/// `true` (line 220: the check refused) and as `false` (the repair guessing the default,
/// a layout the store was not made with).
#[test]
fn without_store_toml_a_repair_asks_for_segment_messages_the_files_do_not_tell() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 5);
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();

    let report = checked(dir.path());
    assert!(report.damaged());
    let note = layout_note(&report);
    assert!(note.contains("segment_messages = 300000,"), "{note}");

    let error = repaired(dir.path()).expect_err("the files do not tell segment_messages");
    assert!(error.to_string().contains("--segment-messages"), "{error}");
    assert!(!dir.path().join("store.toml").exists());

    let options = CheckOptions {
        repair: true,
        segment_messages: Some(10),
        ..CheckOptions::default()
    };
    check_with(dir.path(), options).unwrap();
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap();
    fixtures::assert_reads(&store, &partition, 0, 5);
    store.close().unwrap();
}

/// After retention removed a partition's oldest segments (its consume-queue files now start
/// at segment 20), a store that lost `store.toml` still has `segment_messages` read from the
/// queue files: the distance between two. Kills `-` as `+` in `segment_size_of_queues`
/// (line 245: the sum of two bases taken, 50 for 10).
#[test]
fn without_store_toml_segment_messages_is_read_from_queue_files_retention_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixtures::released::store_under_retention(dir.path());
    store.enforce_retention().unwrap();
    store.close().unwrap();
    drop(store);
    assert!(!fixtures::queue_file(dir.path(), 0).exists());
    assert!(fixtures::queue_file(dir.path(), 20).exists());
    std::fs::remove_file(dir.path().join("store.toml")).unwrap();

    let report = checked(dir.path());
    let note = layout_note(&report);
    assert!(note.contains("segment_messages = 10,"), "{note}");
}

/// `commitfs check DIR` with stderr not a terminal: the percentages of its progress lines.
fn check_progress_percentages(dir: &Path) -> Vec<f64> {
    let output = std::process::Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg("check")
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("check: ")?;
            let (percent, _) = rest.split_once("% of the commit log")?;
            Some(percent.parse().unwrap())
        })
        .collect()
}

/// Each commit-log file the check has walked moves its progress by that file's share of
/// the log: after file k of n, k/n. Kills `+` as `-` and as `*` in `LogWalk::run` (line
/// 372, where the log ends: 100 % two files early, or about 0 % until the end) and in
/// `LogWalk::scan_files` (line 432, where a walked file ends: a file behind, or past the end).
#[test]
fn check_progress_moves_by_one_commit_log_file_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 3000);
    let files = fixtures::log_bases(dir.path()).len();
    fixtures::assert_several_log_files(dir.path());
    let seen = check_progress_percentages(dir.path());
    // A line as each full file is done; the newest file's line is the walk's end, 100 %.
    assert_eq!(seen.len(), files, "{seen:?}");
    for (k, percent) in seen.iter().enumerate() {
        let share = 100.0 * (k + 1) as f64 / files as f64;
        assert!((percent - share).abs() <= 1.0, "file {k}: {seen:?}");
    }
}

/// Bytes in indicatif's binary units ("3.12 KiB").
fn binary_bytes(text: &str) -> f64 {
    let (number, unit) = text.split_once(' ').unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unit of {text:?}"),
    };
    number.parse::<f64>().unwrap() * scale
}

/// What the progress bar of `commitfs check DIR` drew on a terminal, one (done, total) in
/// bytes a draw ("check [=>   ]  5% 3.12 KiB/64.00 KiB 13.16 MiB/s").
fn check_bar_draws(dir: &Path) -> Vec<(f64, f64)> {
    // `script` runs the command on a pseudo-terminal of its own.
    let command = format!("{} check {}", env!("CARGO_BIN_EXE_commitfs"), dir.display());
    let output = std::process::Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let terminal = String::from_utf8_lossy(&output.stdout);
    terminal
        .split('\r')
        .filter_map(|draw| {
            let (_, shown) = draw.split_once("check [")?;
            let (_, bytes) = shown.split_once("% ")?;
            let (done, total) = bytes.split_once('/')?;
            let total: Vec<&str> = total.split(' ').take(2).collect();
            Some((binary_bytes(done), binary_bytes(&total.join(" "))))
        })
        .collect()
}

/// After retention removed the oldest commit-log files, the bar of a check on a terminal
/// counts only the files left: one file, 64 KiB; it moves as the walk goes through the file
/// and never past its end. Kills `-` as `+` in `LogWalk::run` (line 373: the bar's total the
/// sum of where the log starts and ends, 448 KiB) and `+` as `-` and as `*` in
/// `LogWalk::scan_file` (line 484: the bar at 0 until the file was done, or gibibytes done
/// of 64 KiB).
#[test]
fn check_bar_counts_only_the_commit_log_files_retention_left() {
    let dir = tempfile::tempdir().unwrap();
    let config = commitfs::store::StoreConfig {
        // Over it, whatever is left: every sealed commit-log file goes.
        max_disk_bytes: Some(1),
        ..fixtures::small_store_config()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let partition = fixtures::new_partition(&store, "t", fixtures::lines_topic(1));
    // 200 KB: on into the fourth 64 KiB commit-log file.
    for _ in 0..200 {
        store.append(&partition, &[b'f'; 1000], None).unwrap();
    }
    store.enforce_retention().unwrap();
    store.close().unwrap();
    drop(store);
    assert_eq!(fixtures::log_bases(dir.path()), [3 * 64 * 1024]);

    let draws = check_bar_draws(dir.path());
    assert!(!draws.is_empty(), "no bar drawn");
    for &(done, total) in &draws {
        assert_eq!(total, 65536.0, "{draws:?}");
        assert!(done <= total, "{draws:?}");
    }
    assert!(
        draws
            .iter()
            .any(|&(done, total)| 0.0 < done && done < total),
        "{draws:?}"
    );
}

/// A clean store of 3,000 lines over several commit-log files: the check walks each file
/// once and counts each record once. Fails within a minute with `+` as `*` in
/// `LogWalk::scan_files` (line 418: the walk stayed at index 0 and went on at the second file
/// again and again; the pass's tests only timed out), and kills `+=` as `-=` and as `*=` in
/// `LogWalk::scan_file` (line 470: the records miscounted).
#[test]
fn check_counts_each_record_of_several_commit_log_files_once() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 3000);
    fixtures::assert_several_log_files(dir.path());
    let report = checked(dir.path());
    assert!(!report.damaged(), "{:?}", report.findings);
    assert_eq!(report.records, 3000);
    assert!(report.summary().starts_with("3000 records, "));
}

/// Flips a bit of the magic of the batch at byte `at` of the commit-log file at `path` (its
/// header no longer decodes); returns that batch's first offset.
fn damage_the_batch_at(path: &Path, at: usize) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at + 5] ^= 0x40;
    std::fs::write(path, &bytes).unwrap();
    fixtures::batch_first_offset(&bytes, at)
}

/// [`damage_the_batch_at`] the middle batch of the commit-log file at `path`.
fn damage_the_middle_batch(path: &Path) -> u64 {
    let starts = fixtures::batch_starts(&std::fs::read(path).unwrap());
    damage_the_batch_at(path, starts[starts.len() / 2])
}

/// A damaged batch in the middle of the first and of the second commit-log file: the check
/// reports the two damaged spans and notes the offset each takes from the partition, and
/// does not take the partition's next batch for one out of order. Kills `+` as `-` and as `*`
/// in `LogWalk::scan_files` where a span ends (line 427: where the walk resumed, taken for a
/// place before the partition's last record, and the batch after each span reported as
/// damage, "message … where … was expected"); and the match guard `at == offset` as `true`,
/// and its `==` as `!=`, for what is not a valid batch in `LogWalk::with_record_at` (line
/// 636: after the entry of a lost offset, later entries were given that entry's "no valid
/// batch").
#[test]
fn check_notes_the_offsets_damaged_spans_take_in_any_commit_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let lost = store_damaged_in_the_first_two_files(dir.path());

    let report = checked(dir.path());
    let damages = damages(&report);
    let spans = damages
        .iter()
        .filter(|d| d.contains("valid records resume at"))
        .count();
    assert_eq!(spans, 2, "{damages:?}");
    assert!(
        damages.iter().all(|d| !d.contains("was expected")),
        "{damages:?}"
    );
    // Besides, the consume-queue entries of the two lost offsets point at no valid batch,
    // and only those.
    let entries: Vec<u64> = damages
        .iter()
        .filter_map(|d| {
            let (_, rest) = d.split_once("the entry of offset ")?;
            rest.split_once(' ')
                .map(|(offset, _)| offset.parse().unwrap())
        })
        .collect();
    assert_eq!(entries, lost, "{damages:?}");
    assert_eq!(damages.len(), 4, "{damages:?}");
    assert_notes_offsets_lost_in_spans(&report, &lost);
}

/// Lines `0..3000` over several commit-log files, the middle batch of the first and of the
/// second file damaged; the offsets of the two damaged batches.
fn store_damaged_in_the_first_two_files(dir: &Path) -> Vec<u64> {
    store_with_lines(dir, 3000);
    fixtures::assert_several_log_files(dir);
    fixtures::log_bases(dir)[..2]
        .iter()
        .map(|base| damage_the_middle_batch(&dir.join(format!("commitlog/{base:020}"))))
        .collect()
}

/// The report's notes of offsets lost in damaged or skipped spans.
fn lost_offset_notes(report: &CheckReport) -> Vec<&Finding> {
    report
        .findings
        .iter()
        .filter(|f| matches!(f, Finding::Note(text) if text.ends_with("lie in a damaged or skipped span")))
        .collect()
}

/// The report notes each of the `lost` offsets (one a span) as lying in a damaged or skipped
/// span.
#[track_caller]
fn assert_notes_offsets_lost_in_spans(report: &CheckReport, lost: &[u64]) {
    for offset in lost {
        let note = Finding::Note(format!(
            "topic id 1 partition 0: offsets {offset}..{} lie in a damaged or skipped span",
            offset + 1
        ));
        assert!(report.findings.contains(&note), "{:?}", report.findings);
    }
}

/// After a repair marked the damaged spans of the first and the second commit-log file as
/// skipped, the check steps over each, noting it and the offset it took, finds no damage
/// and counts every other record once. Kills `+=` as `*=` in `LogWalk::scan_file` where it
/// steps over a skipped span (line 493: the walk jumped past the rest of the file), and
/// fails within a minute with `-=` there (the walk going back over the span again and
/// again; the pass's tests only timed out).
#[test]
fn after_a_repair_check_steps_over_the_skipped_spans_and_finds_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let lost = store_damaged_in_the_first_two_files(dir.path());
    repaired(dir.path()).unwrap();

    let report = checked(dir.path());
    assert!(!report.damaged(), "{:?}", report.findings);
    assert_eq!(report.records, 2998);
    let skipped = report
        .findings
        .iter()
        .filter(|f| matches!(f, Finding::Note(text) if text.ends_with("a span skipped by an earlier repair")))
        .count();
    assert_eq!(skipped, 2, "{:?}", report.findings);
    assert_notes_offsets_lost_in_spans(&report, &lost);
}

/// In the first commit-log file of [`store_with_lines`] (3,000 lines): the middle batch
/// damaged (its magic), and the fourth after it copied over the second after it (lines
/// `100..1000` are all 9 bytes, so their batches are all one size). The walk resumes at the
/// batch after the damaged one; the batch after that then holds an offset too far, with no
/// damaged span before it since the partition's last record. Returns the file, the byte of
/// the copy and the damaged batch's offset `x`: the copy, at offset `x + 2`, holds `x + 4`.
fn store_with_a_batch_out_of_order_just_after_a_damaged_span(dir: &Path) -> (PathBuf, usize, u64) {
    store_with_lines(dir, 3000);
    let path = dir.join(format!("commitlog/{:020}", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    let m = starts.len() / 2;
    let x = fixtures::batch_first_offset(&bytes, starts[m]);
    assert!((100..995).contains(&x), "batch {m} holds line {x}");
    let size = starts[m + 1] - starts[m];
    bytes.copy_within(starts[m + 4]..starts[m + 4] + size, starts[m + 2]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(damage_the_batch_at(&path, starts[m]), x);
    (path, starts[m + 2], x)
}

/// A batch whose offset jumps ahead of its partition's, right after the batch where the walk
/// resumed past a damaged span, is damage: the span lies before the partition's last record,
/// not before this batch. Kills `>` as `>=` (line 517: the span taken to lie before it, and
/// the damage made a note), `&&` as `||` (line 518, the same) and `>` as `<` (line 523: the
/// damage said of the next batch, where the offsets go back) in `LogWalk::see`.
#[test]
fn check_reports_an_offset_jump_right_after_a_damaged_span_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (path, at, x) = store_with_a_batch_out_of_order_just_after_a_damaged_span(dir.path());
    let report = checked(dir.path());
    let jump = format!(
        "{} byte {at}: message {} of topic id 1 partition 0 where {} was expected",
        path.display(),
        x + 4,
        x + 2
    );
    assert!(
        damages(&report).contains(&jump.as_str()),
        "{:?}",
        report.findings
    );
    let noted = lost_offset_notes(&report);
    let lost = Finding::Note(format!(
        "topic id 1 partition 0: offsets {x}..{} lie in a damaged or skipped span",
        x + 1
    ));
    assert_eq!(noted, [&lost]);
}

/// Lines `0..1000` appended to partitions 0 and 1 of topic `t` in turn, one batch each, and
/// the middle batch of partition 0 in the first commit-log file damaged (its magic): a span
/// that holds none of partition 1's messages. Returns the offset of the damaged batch.
fn store_of_two_partitions_with_a_batch_of_one_damaged(dir: &Path) -> u64 {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::lines_topic(2)).unwrap();
    let partitions = [topic.partition(0).unwrap(), topic.partition(1).unwrap()];
    for number in 0..1000 {
        for partition in &partitions {
            fixtures::append_lines(&store, partition, number, number + 1);
        }
    }
    store.close().unwrap();
    drop((partitions, topic, store));
    // Batches alternate: partition 0's at the even places.
    let path = dir.join(format!("commitlog/{:020}", 0));
    let starts = fixtures::batch_starts(&std::fs::read(&path).unwrap());
    damage_the_batch_at(&path, starts[starts.len() / 4 * 2])
}

/// A damaged span that holds none of partition 1's messages takes none of its offsets: the
/// check notes only partition 0's lost offset. Kills `>` as `>=` (line 518: partition 1's
/// next batch, right on, taken to have lost "offsets n..n" in the span) and `&&` as `||`
/// (the same) in `LogWalk::see`.
#[test]
fn check_notes_lost_offsets_only_of_the_partition_a_damaged_span_held() {
    let dir = tempfile::tempdir().unwrap();
    let x = store_of_two_partitions_with_a_batch_of_one_damaged(dir.path());
    let report = checked(dir.path());
    let noted = lost_offset_notes(&report);
    let lost = Finding::Note(format!(
        "topic id 1 partition 0: offsets {x}..{} lie in a damaged or skipped span",
        x + 1
    ));
    assert_eq!(noted, [&lost]);
}

/// Damage to the first batch of the log (byte 0 of the first commit-log file): the walk
/// resumes at the second batch of that file. Kills, in `LogWalk::damaged_span`, `+` as `-`
/// (line 565: from byte 0 the search for the next valid batch wrapped around, found none in
/// the file, and the span took the rest of it) and `-` as `/` (line 566: a division by the
/// damage's position, 0).
#[test]
fn check_resumes_after_damage_at_the_first_byte_of_the_log_in_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 3000);
    fixtures::assert_several_log_files(dir.path());
    let first = dir.path().join(format!("commitlog/{:020}", 0));
    let second = fixtures::batch_starts(&std::fs::read(&first).unwrap())[1];
    assert_eq!(damage_the_batch_at(&first, 0), 0);

    let report = checked(dir.path());
    let resume = format!(
        "; valid records resume at {} byte {second}",
        first.display()
    );
    let start = format!("{} byte 0: ", first.display());
    assert!(
        damages(&report)
            .iter()
            .any(|d| d.starts_with(&start) && d.ends_with(&resume)),
        "{:?}",
        report.findings
    );
}

/// Puts `len` bytes of garbage before the batch at byte `at` of the commit-log file at
/// `path`, moving the rest of the file on by `len` (its unused zeroes at the end give way).
fn garbage_before_the_batch_at(path: &Path, at: usize, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let size = bytes.len();
    assert!(bytes[size - len..].iter().all(|&b| b == 0), "unused end");
    bytes.splice(at..at, std::iter::repeat_n(0xEE, len));
    bytes.truncate(size);
    std::fs::write(path, &bytes).unwrap();
}

/// Garbage before a batch, too short for a skip marker (3 bytes): the damaged span takes
/// that batch as well and ends at the next, so that a repair's marker fits. Kills, in
/// `LogWalk::damaged_span`, `<` as `==` and `>` and `-` as `+` (line 566: a 3-byte span,
/// which an 8-byte marker would overrun into the batch) and `+` as `-` and `*` where the
/// search goes on past the marker's room (line 567).
#[test]
fn check_ends_a_damaged_span_where_a_skip_marker_fits() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 3000);
    fixtures::assert_several_log_files(dir.path());
    let newest = *fixtures::log_bases(dir.path()).last().unwrap();
    let path = dir.path().join(format!("commitlog/{newest:020}"));
    let starts = fixtures::batch_starts(&std::fs::read(&path).unwrap());
    let m = starts.len() / 2;
    garbage_before_the_batch_at(&path, starts[m], 3);

    let report = checked(dir.path());
    let spans: Vec<(usize, usize)> = damages(&report)
        .iter()
        .filter_map(|d| {
            let rest = d.strip_prefix(&format!("{} byte ", path.display()))?;
            let (from, rest) = rest.split_once(": ")?;
            let (_, to) = rest.split_once(&format!(
                "; valid records resume at {} byte ",
                path.display()
            ))?;
            Some((from.parse().unwrap(), to.parse().unwrap()))
        })
        .collect();
    let given_up = starts[m + 1] - starts[m];
    assert_eq!(
        spans,
        [(starts[m], starts[m] + 3 + given_up)],
        "{:?}",
        report.findings
    );
}

/// The newest batch of a cleanly closed store zeroed in its commit-log file (as a lost write
/// leaves it): the checkpoint's log end lies past where the valid log now ends, and the check
/// says so. Kills `check_checkpoint` replaced with `()` (line 662).
#[test]
fn check_reports_a_checkpoint_that_vouches_for_more_log_than_there_is() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 20);
    let path = dir.path().join(format!("commitlog/{:020}", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = fixtures::batch_starts(&bytes);
    assert_eq!(starts.len(), 20, "one batch a line");
    let last = starts[19];
    // A batch starts with its size (README "Commit-log files").
    let end = last + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
    bytes[last..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let report = checked(dir.path());
    let past =
        format!("the checkpoint's commit-log end {end} lies past the log's valid end {last}");
    assert!(
        damages(&report).contains(&past.as_str()),
        "{:?}",
        report.findings
    );
}

/// A partition whose mark the checkpoint lacks (rewritten without it) but whose consume
/// queue has files: the check notes that the next mount rebuilds it. Kills the match guard
/// `holds_queue_files` as `false` in `check_queues` (line 697: nothing said).
#[test]
fn check_notes_a_consume_queue_the_checkpoint_does_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    store_with_lines(dir.path(), 20);
    assert_eq!(
        fixtures::rewrite_checkpoint_without(dir.path(), |_, _| true),
        1
    );
    let report = checked(dir.path());
    let note = Finding::Note(format!(
        "{}: not covered by the checkpoint; the next mount rebuilds it from the log",
        dir.path().join("queues/1/0").display()
    ));
    assert!(report.findings.contains(&note), "{:?}", report.findings);
}
