//! Progress of long walks over the commit log (issue 10): recovery logs how far it is
//! (percent and MB/s); `commitfs check` prints plain lines when it is not on a terminal and
//! draws a bar on one. The line interval is shrunk here (process-wide, so these tests have
//! a binary of their own) instead of making a scan that takes seconds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use commitfs::store::{NewMessage, Store};

mod fixtures;

/// 800 messages of 500 bytes `byte`, into topic "t"'s two partitions in turn.
fn append_800_messages(store: &Store, byte: u8) {
    let topic = store.topic("t").unwrap();
    let line = [byte; 500];
    for i in 0..800u32 {
        let partition = topic.partition(i % 2).unwrap();
        store
            .append_batch(
                &partition,
                &[NewMessage {
                    payload: &line,
                    key_len: None,
                }],
            )
            .unwrap();
    }
}

/// A store whose commit log fills several 64 KiB files; left as a crash leaves it when
/// `crash`, closed cleanly otherwise. Returns how many commit-log files it has.
fn store_of_several_files(dir: &Path, crash: bool) -> usize {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    append_800_messages(&store, b'x');
    if crash {
        store.halt_without_cleanup();
    }
    drop(store);
    let files = log_files(dir);
    assert!(files >= 5, "{files} commit-log files");
    files
}

fn log_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("commitlog")).unwrap().count()
}

/// Opens and closes the store in `dir`: the percentages its recovery logged, and its logs.
fn recovery_percentages(dir: &Path) -> (Vec<u32>, String) {
    commitfs::store::progress::set_line_interval(Duration::ZERO);
    let logs = fixtures::logs_of(|| {
        Store::open(dir, fixtures::small_store_config())
            .unwrap()
            .close()
            .unwrap();
    });
    (percentages(&logs, "recovery"), logs)
}

/// The percentages of lines like "WHAT: 45% of the commit log (… MiB), 12.3 MB/s".
fn percentages(text: &str, what: &str) -> Vec<u32> {
    let prefix = format!("{what}: ");
    text.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let (percent, rest) = rest.split_once("% of the commit log (")?;
            assert!(rest.ends_with(" MB/s"), "{line}");
            Some(percent.parse().unwrap())
        })
        .collect()
}

#[test]
fn recovery_logs_how_far_its_scan_is_in_percent_and_mb_per_second() {
    let dir = tempfile::tempdir().unwrap();
    store_of_several_files(dir.path(), true);
    let (seen, logs) = recovery_percentages(dir.path());
    assert!(seen.len() >= 5, "{logs}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(*seen.last().unwrap() >= 90, "{seen:?}");
}

/// A recovery that starts at a checkpoint in the middle of the log counts only what it has
/// to walk: from near 0 % to 100 %, never past it. Kills `-` as `+` in `ScanProgress::line`
/// (`at - from`: percentages past 100; `to - from`: a walk that ends at about a third).
#[test]
fn recovery_from_a_checkpoint_counts_only_the_rest_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // Closed cleanly: the checkpoint covers these files.
    let before = store_of_several_files(dir.path(), false);
    // Reopened, as many files again, then a crash: recovery walks from the checkpoint.
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    append_800_messages(&store, b'y');
    store.halt_without_cleanup();
    drop(store);
    let after = log_files(dir.path());
    assert!(
        after >= 2 * before - 1,
        "{before} then {after} commit-log files"
    );
    let (seen, logs) = recovery_percentages(dir.path());
    assert!(seen.len() >= 3, "{logs}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen[0] <= 50, "the walk starts at the checkpoint: {seen:?}");
    assert!(seen.iter().all(|&p| p <= 100), "{seen:?}");
    assert!(*seen.last().unwrap() >= 90, "{seen:?}");
}

#[test]
fn check_prints_a_plain_line_per_commit_log_file_when_not_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let files = store_of_several_files(dir.path(), false);
    let output = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_commitfs"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let seen = percentages(&stderr, "check");
    assert!(seen.len() >= files, "{stderr}");
    assert_eq!(seen.last(), Some(&100), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    // The report stays on stdout, without progress in it.
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.lines().last().unwrap().contains(" 0 damaged"),
        "{stdout}"
    );
    assert!(!stdout.contains("% of the commit log"), "{stdout}");
}

#[test]
fn check_draws_a_bar_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    store_of_several_files(dir.path(), false);
    // `script` runs the command on a pseudo-terminal of its own.
    let command = format!(
        "{} check {}",
        env!("CARGO_BIN_EXE_commitfs"),
        dir.path().display()
    );
    let output = Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(
        terminal.contains("check [") && terminal.contains("B/s"),
        "{terminal:?}"
    );
    assert!(percentages(&terminal, "check").is_empty(), "{terminal:?}");
}
