//! Progress of long walks over the commit log (issue 10): recovery logs how far it is
//! (percent and MB/s); `commitfs check` prints plain lines when it is not on a terminal and
//! draws a bar on one. The line interval is shrunk here (process-wide, so these tests have
//! a binary of their own) instead of making a scan that takes seconds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use commitfs::store::{NewMessage, Store};

mod fixtures;

/// A store whose commit log fills several 64 KiB files; left as a crash leaves it when
/// `crash`, closed cleanly otherwise. Returns how many commit-log files it has.
fn store_of_several_files(dir: &Path, crash: bool) -> usize {
    let store = Store::open(dir, fixtures::small_store_config()).unwrap();
    let topic = store.create_topic("t", fixtures::keyed_topic(2)).unwrap();
    let line = [b'x'; 500];
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
    if crash {
        store.halt_without_cleanup();
    }
    drop(store);
    let files = std::fs::read_dir(dir.join("commitlog")).unwrap().count();
    assert!(files >= 5, "{files} commit-log files");
    files
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
    commitfs::store::progress::set_line_interval(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    store_of_several_files(dir.path(), true);
    let logs = fixtures::logs_of(|| {
        Store::open(dir.path(), fixtures::small_store_config())
            .unwrap()
            .close()
            .unwrap();
    });
    let seen = percentages(&logs, "recovery");
    assert!(seen.len() >= 5, "{logs}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(*seen.last().unwrap() >= 90, "{seen:?}");
}

/// A recovery that starts at a checkpoint in the middle of the log counts only what it has
/// to walk: from near 0 % to 100 %, never past it. Kills `-` as `+` in `ScanProgress::line`
/// (`at - from`: percentages past 100; `to - from`: a walk that ends at about a third).
#[test]
fn recovery_from_a_checkpoint_counts_only_the_rest_of_the_log() {
    commitfs::store::progress::set_line_interval(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    // Closed cleanly: the checkpoint covers these files.
    let before = store_of_several_files(dir.path(), false);
    // Reopened, as many files again, then a crash: recovery walks from the checkpoint.
    let store = Store::open(dir.path(), fixtures::small_store_config()).unwrap();
    let topic = store.topic("t").unwrap();
    let line = [b'y'; 500];
    for i in 0..800u32 {
        let message = NewMessage {
            payload: &line,
            key_len: None,
        };
        store
            .append_batch(&topic.partition(i % 2).unwrap(), &[message])
            .unwrap();
    }
    store.halt_without_cleanup();
    drop(store);
    let after = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .count();
    assert!(
        after >= 2 * before - 1,
        "{before} then {after} commit-log files"
    );
    let logs = fixtures::logs_of(|| {
        Store::open(dir.path(), fixtures::small_store_config())
            .unwrap()
            .close()
            .unwrap();
    });
    let seen = percentages(&logs, "recovery");
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
