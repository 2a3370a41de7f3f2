//! The mounted tests' commands have time limits (issue 9): a command that runs past its limit
//! is killed with everything it started, and fails its test with a message naming it.

mod common;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use common::{mount, wait_until, Background, Bounded, Config};

/// The panic message of `run`, which must panic.
fn panic_message(run: impl FnOnce()) -> String {
    let payload = panic::catch_unwind(AssertUnwindSafe(run)).expect_err("it should have failed");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Whether any process's command line holds `marker`.
fn process_with_argument(marker: &str) -> bool {
    fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == marker.as_bytes())
        })
    })
}

#[test]
fn a_command_past_its_limit_fails_naming_it_and_what_it_started_is_killed() {
    // A shell that starts a child and then waits: both must go.
    let cmd = "sleep 41.25 & sleep 42.5; wait";
    let message = panic_message(|| {
        Bounded::shell(cmd, Duration::from_secs(1)).output();
    });
    assert!(
        message.contains(&format!("`{cmd}` timed out")),
        "the failure names the command: {message}"
    );
    wait_until(
        Duration::from_secs(10),
        "the timed-out sleeps are gone",
        || !process_with_argument("41.25") && !process_with_argument("42.5"),
    );
}

#[test]
fn a_command_that_ends_in_time_keeps_its_own_exit_status() {
    let out = Bounded::shell("echo out; echo err >&2; exit 124", Duration::from_secs(30)).output();
    assert_eq!(
        out.status.code(),
        Some(124),
        "an exit of 124 in time is no timeout"
    );
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
}

#[test]
fn a_background_command_past_its_limit_fails_when_waited_for() {
    let mut background = Background::spawn(Bounded::shell(
        "echo started; exec sleep 43.75",
        Duration::from_secs(1),
    ));
    let message = panic_message(|| {
        background.wait();
    });
    assert!(
        message.contains("`echo started; exec sleep 43.75` timed out"),
        "{message}"
    );
    assert_eq!(background.output(), b"started\n");
    assert!(!process_with_argument("43.75"));
}

#[test]
fn dropping_a_background_command_kills_everything_it_started() {
    // Its output goes elsewhere, so only the kill, not the end of the output, stops the sleeps.
    let background = Background::spawn(Bounded::shell(
        "exec >/dev/null; sleep 44.125 & sleep 44.25; wait",
        Duration::from_secs(60),
    ));
    wait_until(Duration::from_secs(10), "the sleeps run", || {
        process_with_argument("44.125") && process_with_argument("44.25")
    });
    drop(background);
    wait_until(Duration::from_secs(10), "the sleeps are gone", || {
        !process_with_argument("44.125") && !process_with_argument("44.25")
    });
}

#[test]
fn a_shell_command_on_the_mount_past_its_limit_fails_naming_it() {
    let Some(m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && echo hello >> t/0/active");
    // `tail -f` never ends by itself.
    let cmd = "tail -f t/0/active";
    let message = panic_message(|| {
        m.sh_ok_within(cmd, Duration::from_secs(1));
    });
    assert!(message.contains(&format!("`{cmd}` timed out")), "{message}");
    assert!(
        message.contains("hello"),
        "what it printed is shown: {message}"
    );
    // The mount is not kept busy by it: the unmount in Drop succeeds.
}
