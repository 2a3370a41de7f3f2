//! How far a long walk over the commit log is: recovery logs it, `commitfs check` draws a
//! progress bar on a terminal (`indicatif`) and prints plain lines otherwise. A walk reports
//! the commit-log position it reached; a line says the percentage of the bytes it has to
//! walk and the speed since it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a walk logs or prints a line, in milliseconds.
static LINE_INTERVAL_MS: AtomicU64 = AtomicU64::new(3_000);

/// Sets how often walks report in lines (default 3 s), for the whole process: a test shrinks
/// it to see lines from a short walk.
pub fn set_line_interval(interval: Duration) {
    LINE_INTERVAL_MS.store(interval.as_millis() as u64, Ordering::Relaxed);
}

/// Where the progress goes.
pub(super) enum Output {
    /// Log lines (`tracing`, level info), as recovery writes them.
    Log,
    /// Plain lines on stderr, also one per finished commit-log file.
    Lines,
    /// A progress bar on stderr, a terminal.
    Bar(ProgressBar),
}

impl Output {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr(total: u64) -> Output {
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Output::Lines;
        }
        let bar = ProgressBar::with_draw_target(Some(total), target);
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        Output::Bar(bar)
    }
}

/// One walk from commit-log offset `from` to `to` (the end of its last file).
pub(super) struct ScanProgress {
    what: &'static str,
    output: Output,
    from: u64,
    to: u64,
    started: Instant,
    last_line: Instant,
    interval: Duration,
}

impl ScanProgress {
    pub fn new(what: &'static str, output: Output, from: u64, to: u64) -> ScanProgress {
        if let Output::Bar(bar) = &output {
            bar.set_message(what);
        }
        let now = Instant::now();
        ScanProgress {
            what,
            output,
            from,
            to: to.max(from),
            started: now,
            last_line: now,
            interval: Duration::from_millis(LINE_INTERVAL_MS.load(Ordering::Relaxed)),
        }
    }

    /// The walk reached commit-log offset `at`.
    pub fn at(&mut self, at: u64) {
        match &self.output {
            Output::Bar(bar) => bar.set_position(at.saturating_sub(self.from)),
            Output::Log | Output::Lines => {
                if self.last_line.elapsed() >= self.interval {
                    self.line(at);
                }
            }
        }
    }

    /// The walk finished a commit-log file, ending at `at`: plain lines say so at once.
    pub fn file_done(&mut self, at: u64) {
        match &self.output {
            Output::Lines => self.line(at),
            _ => self.at(at),
        }
    }

    /// The walk is over: plain lines say 100%, the rest of the last file being unused.
    pub fn finish(mut self) {
        if let Output::Lines = self.output {
            self.line(self.to);
        }
    }

    fn line(&mut self, at: u64) {
        self.last_line = Instant::now();
        let done = at.clamp(self.from, self.to) - self.from;
        let total = self.to - self.from;
        let percent = match total {
            0 => 100.0,
            _ => done as f64 * 100.0 / total as f64,
        };
        let seconds = self.started.elapsed().as_secs_f64().max(1e-6);
        let text = format!(
            "{}: {percent:.0}% of the commit log ({:.1} of {:.1} MiB), {:.1} MB/s",
            self.what,
            done as f64 / (1 << 20) as f64,
            total as f64 / (1 << 20) as f64,
            done as f64 / 1e6 / seconds
        );
        match &self.output {
            Output::Log => tracing::info!("{text}"),
            Output::Lines => eprintln!("{text}"),
            Output::Bar(_) => {}
        }
    }
}

impl Drop for ScanProgress {
    fn drop(&mut self) {
        if let Output::Bar(bar) = &self.output {
            bar.finish_and_clear();
        }
    }
}
