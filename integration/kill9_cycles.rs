//! kill -9 cycles through the mount (issue 9): three shell writers append numbered lines
//! concurrently — an `echo >>` loop, an `echo` loop on one descriptor of `append` held open
//! across writes (as a long `cat >>` holds it), and a `cat >>` of multi-line chunks — and the
//! daemon is killed with SIGKILL at a random moment, then mounted again (recovery), thirty
//! times. In the end every line whose write was acknowledged is stored exactly once and whole,
//! and nothing else is stored but the one write each writer had in flight when the daemon died.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::thread;
use std::time::Duration;

use common::{mount, partition_lines, wait_until, xattr_u64, Background, Config, Mount, Rng};

const CYCLES: usize = 30;
/// Lines per `cat` chunk: one write(2), so it is stored whole or not at all.
const CHUNK_LINES: usize = 8;
/// How long writers may take to notice the dead mount.
const WRITERS_STOP: Duration = Duration::from_secs(20);

/// A writer: its shell loop, given the cycle; it logs `N` to `$WORK/acked-C-W` after line
/// (or chunk) `N`'s write returned.
struct Writer {
    name: &'static str,
    lines_per_ack: usize,
    script: fn(usize) -> String,
}

/// The text of line `i` of writer `w` in cycle `c`: its length varies, so a torn or
/// interleaved line cannot pass for a whole one.
fn line(c: usize, w: usize, i: usize) -> String {
    format!("c{c}-w{w}-{i}-{}", "x".repeat((c * 7 + w * 3 + i) % 29))
}

/// The same text as the shell makes it (`printf %Ns | tr ' ' x` pads with `x`).
fn shell_line(c: usize, w: usize, index: &str) -> String {
    format!("c{c}-w{w}-{index}-$(printf %$(( ({c} * 7 + {w} * 3 + {index}) % 29 ))s | tr ' ' x)")
}

const WRITERS: [Writer; 3] = [
    Writer {
        name: "echo >> active",
        lines_per_ack: 1,
        script: |c| {
            format!(
                "i=0; while echo \"{}\" >> t/0/active; do echo $i >> \"$WORK/acked-{c}-0\"; \
                 i=$((i+1)); done",
                shell_line(c, 0, "$i")
            )
        },
    },
    Writer {
        name: "echo on a held descriptor of append",
        lines_per_ack: 1,
        script: |c| {
            format!(
                "exec 3>> t/append || exit 1; i=0; while echo \"{}\" >&3; \
                 do echo $i >> \"$WORK/acked-{c}-1\"; i=$((i+1)); done",
                shell_line(c, 1, "$i")
            )
        },
    },
    Writer {
        name: "cat >> active of chunks",
        lines_per_ack: CHUNK_LINES,
        script: |c| {
            format!(
                "j=0; while :; do k=0; : > \"$WORK/chunk\"; \
                 while [ $k -lt {CHUNK_LINES} ]; do i=$((j * {CHUNK_LINES} + k)); \
                 echo \"{}\" >> \"$WORK/chunk\"; k=$((k+1)); done; \
                 cat \"$WORK/chunk\" >> t/1/active || break; \
                 echo $j >> \"$WORK/acked-{c}-2\"; j=$((j+1)); done",
                shell_line(c, 2, "$i")
            )
        },
    },
];

/// How many acknowledgements writer `w` logged in cycle `c`.
fn acked(m: &Mount, c: usize, w: usize) -> usize {
    fs::read_to_string(m.work.join(format!("acked-{c}-{w}")))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// Runs one cycle: writers start, the daemon dies at a random moment, the mount comes back.
/// Returns the lines acknowledged per writer.
fn cycle(m: &mut Mount, c: usize, rng: &mut Rng) -> [usize; 3] {
    let mut writers: Vec<Background> = WRITERS
        .iter()
        .map(|writer| Background::spawn(m.sh_command(&(writer.script)(c))))
        .collect();
    thread::sleep(Duration::from_millis(50 + rng.below(1200)));
    m.kill9();
    wait_until(WRITERS_STOP, "the writers stop at the dead mount", || {
        writers.iter_mut().all(|writer| writer.try_wait().is_some())
    });
    m.start();
    let mut lines = [0; 3];
    for (w, writer) in WRITERS.iter().enumerate() {
        lines[w] = acked(m, c, w) * writer.lines_per_ack;
    }
    lines
}

/// Parses `c{c}-w{w}-{i}-x…` into (c, w, i); a line of any other shape is torn or foreign.
fn parse(stored: &str) -> Option<(usize, usize, usize)> {
    let rest = stored.strip_prefix('c')?;
    let (c, rest) = rest.split_once("-w")?;
    let (w, rest) = rest.split_once('-')?;
    let (i, _) = rest.split_once('-')?;
    Some((c.parse().ok()?, w.parse().ok()?, i.parse().ok()?))
}

#[test]
fn thirty_kill_9_cycles_with_three_writers_keep_every_acknowledged_line_once_and_whole() {
    let config = Config::small().set("segment_messages", "200");
    let Some(mut m) = mount(config) else {
        return;
    };
    m.sh_ok("mkdir t");
    let mut rng = Rng::new(0x6b69_6c6c_392d_3130);
    let acknowledged: Vec<[usize; 3]> = (0..CYCLES).map(|c| cycle(&mut m, c, &mut rng)).collect();

    // Every stored line, from both partitions, by (cycle, writer, number).
    let mut stored: BTreeMap<(usize, usize), BTreeSet<usize>> = BTreeMap::new();
    for p in ["t/0", "t/1"] {
        let lines = partition_lines(&m.path(p));
        assert_eq!(xattr_u64(&m.path(p), "user.end_offset"), lines.len() as u64);
        for text in lines {
            let (c, w, i) = parse(&text).unwrap_or_else(|| panic!("{p}: torn line {text:?}"));
            assert_eq!(text, line(c, w, i), "{p}: torn line");
            let first = stored.entry((c, w)).or_default().insert(i);
            assert!(first, "{p}: line {text:?} is stored twice");
        }
    }
    let mut total = 0;
    for (c, lines) in acknowledged.iter().enumerate() {
        for (w, writer) in WRITERS.iter().enumerate() {
            let got = stored.remove(&(c, w)).unwrap_or_default();
            let acked = lines[w];
            total += acked;
            // Beyond what was acknowledged, only the write in flight at the kill may be stored.
            let in_flight = acked + writer.lines_per_ack;
            let whole = got.len() == acked || got.len() == in_flight;
            let missing: Vec<usize> = (0..acked).filter(|i| !got.contains(i)).collect();
            let beyond: Vec<usize> = got.range(acked..).copied().collect();
            assert!(
                whole && got.iter().copied().eq(0..got.len()),
                "cycle {c}, writer {:?}: {acked} lines acknowledged; missing {missing:?}; \
                 stored beyond them {beyond:?}",
                writer.name,
            );
        }
    }
    assert!(stored.is_empty(), "lines of no writer: {stored:?}");
    eprintln!("{CYCLES} kill -9 cycles, {total} acknowledged lines, all stored once and whole");
    assert!(
        total >= CYCLES,
        "the writers got almost nothing written ({total} lines): the test did not test"
    );
}
