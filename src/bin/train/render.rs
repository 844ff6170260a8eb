//! How the `train` binary shows a run: its progress bars and lines, rendered from the
//! library's events.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Shortest time between redraws on a terminal.
const TTY_INTERVAL: Duration = Duration::from_millis(200);
/// Shortest time between lines when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A progress line over `total` items on stderr. On a terminal it is redrawn in place at
/// most every [`TTY_INTERVAL`]; when stderr is a file or pipe (a log), a plain line is
/// printed at most every [`LOG_INTERVAL`].
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

use densenet_wgpu::budget::mib;
use densenet_wgpu::dist::Transport;
use densenet_wgpu::gpu::{describe_adapter, GpuError, ADAPTER_ENV};
use densenet_wgpu::progress::render_resumed;
use densenet_wgpu::run::events::{EpochReport, Observer, RunEvent, RunSummary};
use densenet_wgpu::run::RunError;
use densenet_wgpu::tape::profile_table;

use crate::files::{RunFiles, CURVES, METRICS};

/// Renders a run's events on the terminal, the way the binary always has: rank 0 shows
/// the run; every rank says which device it uses and which files or batches it skipped.
pub struct Terminal {
    /// Rank 0 of a data-parallel run, or the only process.
    pub writer: bool,
    /// The command that resumes this run, for the interrupted message.
    pub resume_command: String,
    /// metrics.csv and curves.png, on the process that writes files.
    pub files: Option<RunFiles>,
    bar: Option<Progress>,
}

impl Terminal {
    pub fn new(writer: bool, resume_command: String) -> Terminal {
        Terminal {
            writer,
            resume_command,
            files: None,
            bar: None,
        }
    }

    fn new_bar(&mut self, label: &str, total: usize) -> &mut Progress {
        let mut bar = Progress::new(label, total);
        bar.set_visible(self.writer);
        self.bar.insert(bar)
    }

    fn finish_bar(&mut self) {
        if let Some(mut bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Observer for Terminal {
    fn failure(&mut self) -> Option<RunError> {
        self.files.as_mut().and_then(RunFiles::failure)
    }

    fn event(&mut self, event: &RunEvent) {
        self.show(event);
        // After the terminal's line: the epoch's line comes before a warning about its files.
        if let Some(files) = &mut self.files {
            files.event(event);
        }
    }
}

impl Terminal {
    fn show(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Adapter {
                adapter,
                rank: None,
            } => eprintln!("adapter: {}", describe_adapter(adapter)),
            RunEvent::Adapter {
                adapter,
                rank: Some(r),
            } => eprintln!(
                "rank {}/{} (local rank {}, pid {}): adapter {}",
                r.rank,
                r.ranks,
                r.local_rank,
                r.pid,
                describe_adapter(adapter)
            ),
            RunEvent::BatchSkipped { error, files } => {
                eprintln!("warning: skipped {error}; batch: {}", files.join(", "))
            }
            RunEvent::FileSkipped { skipped } => eprintln!("warning: {skipped}"),
            RunEvent::StepProfiled { ops } => eprint!("{}", profile_table(ops)),
            RunEvent::EpochStarted {
                epoch,
                epochs,
                images,
                done,
            } => {
                let bar = self.new_bar(&format!("epoch {}/{epochs}", epoch + 1), *images);
                bar.resume_from(*done);
            }
            RunEvent::StepDone {
                images,
                mean_loss,
                accuracy,
                ..
            } => {
                if let Some(bar) = &mut self.bar {
                    bar.inc(*images, &format!("loss {mean_loss:.4} acc {accuracy:.3}"));
                }
            }
            RunEvent::ValidationStarted { images } => {
                self.new_bar("validation", *images);
            }
            RunEvent::ValidationProgress { images } => {
                if let Some(bar) = &mut self.bar {
                    bar.inc(*images, "");
                }
            }
            RunEvent::EpochTrained | RunEvent::ValidationDone => self.finish_bar(),
            _ if !self.writer => {}
            other => {
                if let Some(text) = writer_text(other, &self.resume_command) {
                    println!("{text}");
                }
            }
        }
    }
}

/// What rank 0 prints on stdout for an event, if anything.
fn writer_text(event: &RunEvent, resume_command: &str) -> Option<String> {
    Some(match event {
        RunEvent::ValidationIncomplete { classes } if classes.is_empty() => {
            "validation: none (--val-split 0); accuracy is reported on training batches only"
                .into()
        }
        RunEvent::ValidationIncomplete { classes } => format!(
            "warning: the validation split holds no image of class(es) {}; their accuracy is not measured (more images, a larger --val-split, or --val-split 0 to train without validation)",
            classes.join(", ")
        ),
        RunEvent::MemoryPlanned(p) => format!(
            "device memory: estimated peak {} ({} parameters, gradients and Adam state), largest tensor {:?} {}; the adapter allows {} per buffer, {}",
            mib(p.peak_bytes),
            mib(p.state_bytes),
            p.largest_tensor,
            mib(p.largest_bytes),
            mib(p.max_binding_bytes),
            p.memory_bytes
                .map_or("memory unknown".into(), |m| format!("{} memory", mib(m)))
        ),
        RunEvent::Initialised {
            file,
            replaced_classifier: Some(r),
        } => format!(
            "--init {}: loaded every tensor but the classifier; {}* replaced by a freshly initialised one ({} → {} classes)",
            file.display(),
            r.prefix,
            r.classes_before,
            r.classes_now
        ),
        RunEvent::Initialised { file, .. } => {
            format!("--init {}: loaded every tensor", file.display())
        }
        RunEvent::FeaturesFrozen {
            classifier_prefix,
            trainable,
            parameters,
        } => format!(
            "--freeze-features: training only {classifier_prefix}* ({trainable} of {parameters} parameters); frozen BNs use their running statistics"
        ),
        RunEvent::Resumed {
            checkpoint,
            epoch,
            batch,
            step,
            ..
        } => format!(
            "resumed from {} at epoch {} batch {batch} (step {step})",
            checkpoint.display(),
            epoch + 1
        ),
        RunEvent::Started(s) => banner(s),
        RunEvent::Interrupted {
            step,
            epoch,
            batch,
            checkpoint,
        } => format!(
            "interrupted after step {step} (epoch {}, batch {batch}): checkpoint written to {}\nresume with: {resume_command}",
            epoch + 1,
            checkpoint.display(),
        ),
        RunEvent::EpochDone(r) => epoch_line(r),
        RunEvent::CostStarted {
            model,
            steps,
            batch_size,
            image_size,
        } => format!(
            "cost: {model} ({steps} steps per block mode, batch {batch_size}, {image_size}x{image_size})"
        ),
        RunEvent::CostMeasured {
            model,
            mode,
            step_ms,
            peak_bytes,
            parameters,
            gflops_per_image,
        } => format!(
            "cost: {model} {mode:?}: {step_ms:.0} ms/step, peak {:.1} MiB; {:.2} M parameters, {gflops_per_image:.3} GFLOPs/image",
            *peak_bytes as f64 / (1024.0 * 1024.0),
            *parameters as f64 / 1e6,
        ),
        RunEvent::ModelTraining { model } => format!("== {model}: training"),
        RunEvent::ReportWritten { report, figures } => format!(
            "wrote {} and its figures in {}",
            report.display(),
            figures.display()
        ),
        RunEvent::Finished {
            checkpoint,
            best_val_acc,
        } => format!(
            "wrote {}, {}, {}{}",
            checkpoint.with_file_name(METRICS).display(),
            checkpoint.with_file_name(CURVES).display(),
            checkpoint.display(),
            best_val_acc.map_or(String::new(), |a| format!(", best.safetensors (val_acc {a:.4})"))
        ),
        _ => return None,
    })
}

/// The lines that open a run: the model and its settings, and the run folder.
fn banner(s: &RunSummary) -> String {
    let parallel = s.data_parallel.as_ref().map_or(String::new(), |d| {
        let group = match &d.transport {
            Transport::SingleProcess => "one process".to_string(),
            Transport::Mpi { library } => format!("MPI ({library}), {} ranks", d.ranks),
            Transport::Other { name } => format!("{name}, {} ranks", d.ranks),
        };
        format!(
            " over {group} ({} per rank{}{})",
            d.per_rank_batch,
            if d.sync_bn { ", synchronised BN" } else { "" },
            if d.overlap {
                ", gradients summed during backward"
            } else {
                ", gradients summed after backward"
            }
        )
    });
    format!(
        "model: {} ({} parameters, {:?} blocks), image {}x{}, batch {}{parallel}, {} epochs, Adam lr {} ({}){}\nrun folder: {}",
        s.preset,
        s.parameters,
        s.mode,
        s.image_size,
        s.image_size,
        s.batch_size,
        s.epochs,
        s.lr,
        s.schedule,
        s.augmentation
            .map(|a| format!(", augmentation: {a}"))
            .unwrap_or_default(),
        s.out.display()
    )
}

/// An epoch's metrics line, with what was skipped, the communication time and the replica
/// check of a data-parallel run.
fn epoch_line(r: &EpochReport) -> String {
    let mut line = r.metrics.summary_line();
    if r.files_skipped > 0 {
        line += &format!(" skipped={}", r.files_skipped);
    }
    if r.nonfinite_skipped > 0 {
        line += &format!(" nonfinite_skipped={}", r.nonfinite_skipped);
    }
    if let Some(c) = r.communication_ms {
        line += &format!(
            " allreduce={:.1}ms/step exposed={:.1}ms/step",
            c.summing, c.waited
        );
    }
    if let Some((ranks, hash)) = r.replicas {
        line += &format!("\nreplicas: {ranks} ranks, parameters identical (hash {hash:016x})");
    }
    line
}

/// The message for a run's error in the command line's words: the library names the
/// setting (the batch size, the weights to start from), the binary names its flag.
pub fn error(e: &RunError) -> String {
    match e {
        RunError::UnknownModel { name, choices } => {
            format!(
                "unknown --model {name:?}; choose one of {}",
                choices.join(", ")
            )
        }
        RunError::NothingToTrain { .. } => "--batch-size and --epochs must be positive".into(),
        RunError::BatchBelowRanks { batch_size, ranks } => format!(
            "--batch-size {batch_size} is the global batch: it must be at least the number of \
             ranks ({ranks})"
        ),
        RunError::LastBatchBelowRanks { last, ranks } => format!(
            "--sync-bn: the last batch of each epoch holds {last} images, fewer than the \
             {ranks} ranks; choose a --batch-size that leaves none or at least {ranks}"
        ),
        RunError::BatchDoesNotFit {
            batch_size,
            image_size: s,
            adapter,
            reason,
            largest,
        } => format!(
            "--batch-size {batch_size} at {s}x{s} does not fit {adapter}: {reason}. {}",
            match largest {
                Some(b) => format!("The largest batch that fits is {b} (--batch-size {b})."),
                None => "Not even batch 1 fits: use a smaller --image-size or model.".into(),
            }
        ),
        RunError::ClassesWithoutTrainingImage { data, classes } => format!(
            "{data}: the split leaves no training image for class(es) {} (add images, or \
             lower --val-split)",
            classes.join(", ")
        ),
        RunError::InitMismatch {
            path,
            file_model,
            model,
        } => format!(
            "--init {}: the file holds {file_model}, but the model is {model}",
            path.display()
        ),
        RunError::NoCheckpoint { checkpoint } => {
            format!("--resume: {} does not exist", checkpoint.display())
        }
        RunError::NonFiniteStep { .. } => {
            format!("{e} (--skip-nonfinite skips such batches; a lower --lr may avoid them)")
        }
        RunError::Device(GpuError::AdapterNotFound { .. }) => {
            format!("{e} (the name comes from {ADAPTER_ENV})")
        }
        other => other.to_string(),
    }
}
