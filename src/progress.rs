//! Progress lines for long work:
//! `[epoch 2/10] ███████░░░░ 412/3192 img  36.2 img/s  ETA 1m17s  loss 0.532`.
//!
//! Only the text: the `train` binary decides when to draw it and where.

/// Width of the bar in characters.
const BAR_WIDTH: usize = 20;

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
