//! A progress line on stderr:
//! `[epoch 2/10] ███████░░░░ 412/3192 img  36.2 img/s  ETA 1m17s  loss 0.532`.
//!
//! On a terminal the line is redrawn in place at most every [`TTY_INTERVAL`]; when stderr
//! is a file or pipe (a log), a plain line is printed at most every [`LOG_INTERVAL`].

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Shortest time between redraws on a terminal.
pub const TTY_INTERVAL: Duration = Duration::from_millis(200);
/// Shortest time between lines when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Width of the bar in characters.
const BAR_WIDTH: usize = 20;

/// Progress over `total` items; see the module documentation.
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    /// Items done before this process started (a resumed epoch): not part of the rate.
    resumed: usize,
    extra: String,
    start: Instant,
    last_draw: Option<Instant>,
    tty: bool,
    /// A line is on the terminal without its newline yet.
    open_line: bool,
    /// Draws nothing when false (the ranks of a data-parallel run other than rank 0).
    visible: bool,
    finished: bool,
}

impl Progress {
    /// Starts the clock for `total` items, labelled `label` (e.g. "epoch 2/10").
    pub fn new(label: &str, total: usize) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            resumed: 0,
            extra: String::new(),
            start: Instant::now(),
            last_draw: None,
            tty: std::io::stderr().is_terminal(),
            open_line: false,
            visible: true,
            finished: false,
        }
    }

    /// Counts `n_items` more items done; `extra` (e.g. "loss 0.532") replaces the text shown
    /// after the ETA. Redraws when enough time has passed since the last draw.
    pub fn inc(&mut self, n_items: usize, extra: &str) {
        self.done += n_items;
        if self.extra != extra {
            self.extra.clear();
            self.extra.push_str(extra);
        }
        let interval = if self.tty { TTY_INTERVAL } else { LOG_INTERVAL };
        let due = match self.last_draw {
            Some(t) => t.elapsed() >= interval,
            None => !self.tty || self.start.elapsed() >= interval,
        };
        if due {
            self.draw(false);
        }
    }

    /// Marks `n_items` as done before this run started (a resumed epoch): they fill the
    /// bar but not the rate or the ETA.
    pub fn resume_from(&mut self, n_items: usize) {
        self.done += n_items;
        self.resumed += n_items;
    }

    /// Shows or hides the bar (hidden, it still counts).
    pub fn set_visible(&mut self, visible: bool) {
        self.visible = visible;
    }

    /// Items counted so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Time since `new`.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Draws the final line (with the elapsed time instead of the ETA) and ends it.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.draw(true);
        }
    }

    /// The current line, as it would be drawn.
    pub fn line(&self, finished: bool) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        render_resumed(
            &self.label,
            self.done,
            self.resumed,
            self.total,
            elapsed,
            &self.extra,
            finished,
        )
    }

    fn draw(&mut self, finished: bool) {
        if !self.visible {
            return;
        }
        let line = self.line(finished);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            let end = if finished { "\n" } else { "" };
            write!(err, "\r{line}\x1b[K{end}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.open_line = self.tty && !finished;
        self.last_draw = Some(Instant::now());
    }
}

impl Drop for Progress {
    /// Ends a line left open on the terminal, so later output starts on a new line.
    fn drop(&mut self) {
        if self.open_line {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// The progress line for `done` of `total` items after `elapsed_s` seconds. Unfinished
/// lines show the estimated time left; finished ones the time taken.
pub fn render(
    label: &str,
    done: usize,
    total: usize,
    elapsed_s: f64,
    extra: &str,
    finished: bool,
) -> String {
    render_resumed(label, done, 0, total, elapsed_s, extra, finished)
}

/// [`render`] for a bar of which `resumed` items were done before `elapsed_s` started: the
/// rate and the ETA count only the others.
pub fn render_resumed(
    label: &str,
    done: usize,
    resumed: usize,
    total: usize,
    elapsed_s: f64,
    extra: &str,
    finished: bool,
) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let bar: String = "█".repeat(filled) + &"░".repeat(BAR_WIDTH - filled);
    let rate = if elapsed_s > 0.0 {
        done.saturating_sub(resumed) as f64 / elapsed_s
    } else {
        0.0
    };
    let mut line = format!("[{label}] {bar} {done}/{total} img  {rate:.1} img/s");
    if finished {
        line += &format!("  took {}", format_duration(elapsed_s));
    } else if rate > 0.0 {
        let left = total.saturating_sub(done) as f64 / rate;
        line += &format!("  ETA {}", format_duration(left));
    } else {
        line += "  ETA --";
    }
    if !extra.is_empty() {
        line += "  ";
        line += extra;
    }
    line
}

/// `17s`, `1m17s`, `2h05m`.
pub fn format_duration(seconds: f64) -> String {
    let s = if seconds.is_finite() {
        seconds.max(0.0).round() as u64
    } else {
        0
    };
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}
