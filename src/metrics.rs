//! Per-epoch training metrics: the one-line summary, the CSV history (appended each epoch,
//! read back to resume or re-plot), and the confusion-matrix table.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Header line of the metrics CSV.
pub const CSV_HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds";

/// Metrics of one epoch. `epoch` counts from 1; `epochs` is the planned total.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    /// `epoch 3/10 train_loss=0.8123 train_acc=0.7012 val_loss=0.9001 val_acc=0.6637 time=41.2s`;
    /// a validation field is left out when it is `None`.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "epoch {}/{} train_loss={:.4} train_acc={:.4}",
            self.epoch, self.epochs, self.train_loss, self.train_acc
        );
        if let Some(loss) = self.val_loss {
            let _ = write!(line, " val_loss={loss:.4}");
        }
        if let Some(acc) = self.val_acc {
            let _ = write!(line, " val_acc={acc:.4}");
        }
        let _ = write!(line, " time={:.1}s", self.seconds);
        line
    }

    /// One CSV row (no newline). Numbers are written in Rust's shortest round-trip form,
    /// so reading the row back gives the same values.
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            opt(self.val_loss),
            opt(self.val_acc),
            self.lr,
            self.seconds
        )
    }
}

/// Appends `metrics` as one row to the CSV at `path`, writing [`CSV_HEADER`] first when the
/// file is new or empty.
pub fn append_csv(path: &Path, metrics: &EpochMetrics) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = String::new();
    if file.metadata()?.len() == 0 {
        text.push_str(CSV_HEADER);
        text.push('\n');
    }
    text.push_str(&metrics.csv_row());
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.flush()
}

/// Replaces the CSV at `path` with `history` (header and one row per epoch), atomically:
/// written to a temporary file next to it, then renamed. For resuming from a checkpoint
/// older than the last logged epoch.
pub fn write_csv(path: &Path, history: &[EpochMetrics]) -> io::Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for m in history {
        text.push_str(&m.csv_row());
        text.push('\n');
    }
    let tmp = temp_path(path);
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Reads a CSV written by [`append_csv`] or [`write_csv`]. The planned total `epochs` is not
/// stored; it is set to the largest epoch in the file. Blank lines are ignored; a wrong
/// header or a malformed row is an `InvalidData` error naming the file and line.
pub fn read_csv(path: &Path) -> io::Result<Vec<EpochMetrics>> {
    let text = fs::read_to_string(path)?;
    let bad = |line: usize, why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} line {line}: {why}", path.display()),
        )
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, header)) if header.trim() == CSV_HEADER => {}
        Some((i, header)) => {
            return Err(bad(
                i + 1,
                format!("expected header \"{CSV_HEADER}\", found \"{header}\""),
            ))
        }
        None => return Ok(Vec::new()),
    }
    let mut history = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.trim().split(',').map(str::trim).collect();
        if fields.len() != 7 {
            return Err(bad(
                i + 1,
                format!("expected 7 fields, found {}", fields.len()),
            ));
        }
        let num = |k: usize| -> io::Result<f64> {
            fields[k].parse::<f64>().map_err(|_| {
                bad(
                    i + 1,
                    format!("field {k} \"{}\" is not a number", fields[k]),
                )
            })
        };
        let opt = |k: usize| -> io::Result<Option<f64>> {
            if fields[k].is_empty() {
                Ok(None)
            } else {
                num(k).map(Some)
            }
        };
        let epoch = fields[0].parse::<usize>().map_err(|_| {
            bad(
                i + 1,
                format!("epoch \"{}\" is not a whole number", fields[0]),
            )
        })?;
        history.push(EpochMetrics {
            epoch,
            epochs: 0,
            train_loss: num(1)?,
            train_acc: num(2)?,
            val_loss: opt(3)?,
            val_acc: opt(4)?,
            lr: num(5)?,
            seconds: num(6)?,
        });
    }
    let epochs = history.iter().map(|m| m.epoch).max().unwrap_or(0);
    for m in &mut history {
        m.epochs = epochs;
    }
    Ok(history)
}

/// A text table of `matrix[true class][predicted class]`: one row per true class with its
/// count per predicted class and its recall, a precision row, and the overall accuracy.
/// Columns are headed by class number; rows give number and name.
pub fn confusion_matrix_table(classes: &[String], matrix: &[Vec<usize>]) -> String {
    let n = matrix
        .len()
        .max(matrix.iter().map(Vec::len).max().unwrap_or(0));
    let cell = |t: usize, p: usize| matrix.get(t).and_then(|r| r.get(p)).copied().unwrap_or(0);
    let name = |i: usize| classes.get(i).map(String::as_str).unwrap_or("?");
    let max_count = (0..n)
        .flat_map(|t| (0..n).map(move |p| (t, p)))
        .map(|(t, p)| cell(t, p))
        .max();
    let width = max_count
        .unwrap_or(0)
        .to_string()
        .len()
        .max(n.saturating_sub(1).to_string().len())
        .max("100.0%".len());
    let label_width = (0..n)
        .map(|i| format!("{i} {}", name(i)).chars().count())
        .max()
        .unwrap_or(0)
        .max("precision".len());
    let percent = |num: usize, den: usize| {
        if den == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * num as f64 / den as f64)
        }
    };

    let mut out = String::from("confusion matrix (rows: true class, columns: predicted class)\n");
    let _ = write!(out, "{:label_width$}", "");
    for p in 0..n {
        let _ = write!(out, " {p:>width$}");
    }
    out.push_str("  recall\n");
    let (mut correct, mut total) = (0, 0);
    for t in 0..n {
        let _ = write!(out, "{:<label_width$}", format!("{t} {}", name(t)));
        let mut row_total = 0;
        for p in 0..n {
            let _ = write!(out, " {:>width$}", cell(t, p));
            row_total += cell(t, p);
        }
        let _ = writeln!(out, "  {:>6}", percent(cell(t, t), row_total));
        correct += cell(t, t);
        total += row_total;
    }
    let _ = write!(out, "{:<label_width$}", "precision");
    for p in 0..n {
        let col_total: usize = (0..n).map(|t| cell(t, p)).sum();
        let _ = write!(out, " {:>width$}", percent(cell(p, p), col_total));
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "overall accuracy: {} ({correct}/{total})",
        percent(correct, total)
    );
    out
}

/// A temporary path next to `path` for atomic writes.
pub(crate) fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}
