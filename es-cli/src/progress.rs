//! Progress of a rebuild: an indicatif bar on a terminal, plain lines
//! otherwise (so that logs and tests can read them).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

/// Events done out of a total, with rate and time left, on stderr.
pub(crate) struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    note: Option<String>,
}

impl Progress {
    /// A bar when stderr is a terminal, else plain lines.
    pub(crate) fn new(label: String, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} events  {per_sec}  {eta} left  {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let mut progress = Self {
            label,
            total,
            done: 0,
            started: Instant::now(),
            bar,
            last_line: None,
            note: None,
        };
        progress.line();
        progress
    }

    /// Sets the events done so far.
    pub(crate) fn set(&mut self, done: u64) {
        self.done = done.min(self.total);
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None => {
                if self.last_line.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    self.line();
                }
            }
        }
    }

    /// A note beside the figures (for example "waiting for a worker"), or
    /// none.
    pub(crate) fn note(&mut self, note: Option<String>) {
        if self.note == note {
            return;
        }
        self.note = note;
        match &self.bar {
            Some(bar) => bar.set_message(self.note.clone().unwrap_or_default()),
            None => {
                if self.note.is_some() {
                    self.line();
                }
            }
        }
    }

    /// The events per second so far.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    fn line(&mut self) {
        self.last_line = Some(Instant::now());
        let rate = self.rate();
        let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
        let left = match (self.total - self.done, rate) {
            (0, _) => "0s".to_owned(),
            (_, r) if r <= 0.0 => "unknown".to_owned(),
            (rest, r) => crate::format::duration(Duration::from_secs_f64(rest as f64 / r)),
        };
        let note = self
            .note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "{}: {}/{} events ({percent}%), {rate:.0} events/s, {left} left{note}",
            self.label,
            self.done,
            self.total,
        );
    }

    /// Ends the bar and prints `summary`.
    pub(crate) fn finish(mut self, summary: &str) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.line(),
        }
        let _ = writeln!(std::io::stderr(), "{summary}");
    }

    /// How long it has run.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
