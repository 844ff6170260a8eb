//! The files the binary writes beside a run's checkpoints, from the run's events:
//! metrics.csv (one row per epoch, appended as each ends) and curves.png (redrawn each
//! epoch). On `--resume` the rows so far are read back and handed to the run
//! ([`RunSpec::history`](densenet_wgpu::run::RunSpec::history)), which keeps those up to
//! its checkpoint.

use std::path::{Path, PathBuf};

use densenet_wgpu::metrics::{self, EpochMetrics};
use densenet_wgpu::plot;
use densenet_wgpu::run::events::RunEvent;
use densenet_wgpu::run::RunError;

pub const METRICS: &str = "metrics.csv";
pub const CURVES: &str = "curves.png";

/// The metrics of the epochs a run in `out` has finished so far, when it resumes from a
/// checkpoint there (none without one, or without metrics.csv).
pub fn history_to_resume(out: &Path, resume: bool) -> Result<Vec<EpochMetrics>, RunError> {
    let csv = out.join(METRICS);
    if !resume || !out.join("checkpoint.safetensors").exists() || !csv.exists() {
        return Ok(Vec::new());
    }
    metrics::read_csv(&csv).map_err(RunError::file(&csv))
}

/// Writes metrics.csv and curves.png for the runs whose events it sees (rank 0 only). A
/// file it cannot write ends the run before that epoch's best weights and checkpoint (the
/// run asks [`RunFiles::failure`] through its observer), so `--resume` redoes the epoch's
/// end.
#[derive(Default)]
pub struct RunFiles {
    /// The run's folder, once it has started.
    out: Option<PathBuf>,
    history: Vec<EpochMetrics>,
    /// The history a resumed run continues from, until it starts.
    resumed: Option<Vec<EpochMetrics>>,
    /// The first file that could not be written, until the run takes it.
    error: Option<RunError>,
}

impl RunFiles {
    pub fn event(&mut self, event: &RunEvent) {
        let written = match event {
            RunEvent::Resumed { history, .. } => {
                self.resumed = Some(history.clone());
                Ok(())
            }
            // A fresh run replaces an old metrics.csv; a resumed one rewrites it up to its
            // checkpoint.
            RunEvent::Started(summary) => {
                let csv = summary.out.join(METRICS);
                self.out = Some(summary.out.clone());
                match self.resumed.take() {
                    Some(history) => {
                        self.history = history;
                        metrics::write_csv(&csv, &self.history).map_err(RunError::file(&csv))
                    }
                    None if csv.exists() => {
                        self.history.clear();
                        std::fs::remove_file(&csv).map_err(RunError::file(&csv))
                    }
                    None => {
                        self.history.clear();
                        Ok(())
                    }
                }
            }
            RunEvent::EpochDone(report) => self.epoch_done(&report.metrics),
            _ => Ok(()),
        };
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
    }

    /// The first file that could not be written since the last call.
    pub fn failure(&mut self) -> Option<RunError> {
        self.error.take()
    }

    /// Appends the epoch to metrics.csv and redraws curves.png (a figure that cannot be
    /// drawn is only a warning).
    fn epoch_done(&mut self, m: &EpochMetrics) -> Result<(), RunError> {
        let Some(out) = &self.out else {
            return Ok(());
        };
        let csv = out.join(METRICS);
        metrics::append_csv(&csv, m).map_err(RunError::file(&csv))?;
        self.history.push(m.clone());
        if let Err(e) = plot::write_curves(&out.join(CURVES), &self.history) {
            eprintln!("warning: could not write {CURVES}: {e}");
        }
        Ok(())
    }
}
