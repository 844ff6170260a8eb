//! A training run, the way the `train` binary makes one: the epoch loop with progress
//! output, per-epoch metrics (metrics.csv, curves.png), checkpoints (weights, Adam state
//! and the position in the epoch) and resuming from them, the best weights, evaluation
//! over a split, and reading weight files back. The binary only parses its command line
//! into a [`RunSpec`] and calls [`fit`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::data::synthetic::Synthetic;
use crate::data::Dataset;
use crate::data::{Loader, LoaderOptions, Shard};
use crate::dist::{average_tensors, broadcast_tensors, check_replicas, Collective, SingleProcess};
use crate::gpu::{Gpu, Tensor};
use crate::metrics::{self, EpochMetrics};
use crate::models::{BlockMode, Model, ModelConfig};
use crate::ops::adam::AdamConfig;
use crate::optim::{Adam, Schedule};
use crate::progress::Progress;
use crate::train::{evaluate, StepError, Trainer};
use crate::weights::{self, infer_config, TensorFile};

/// Errors of a run are messages that name what failed (file, option, tensor).
pub type RunResult<T> = Result<T, String>;

/// A learning-rate schedule as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleSpec {
    Constant,
    /// `lr / (1 + decay · step)`.
    InverseTime {
        decay: f64,
    },
    /// Cosine decay to 0 over the run, after a linear warm-up of this many epochs.
    Cosine {
        warmup_epochs: f64,
    },
}

impl ScheduleSpec {
    /// The per-step schedule for a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn schedule(self, epochs: usize, steps_per_epoch: usize) -> Schedule {
        match self {
            ScheduleSpec::Constant => Schedule::Constant,
            ScheduleSpec::InverseTime { decay } => Schedule::InverseTime { decay },
            ScheduleSpec::Cosine { warmup_epochs } => Schedule::Cosine {
                total_steps: epochs * steps_per_epoch,
                warmup_steps: (warmup_epochs * steps_per_epoch as f64) as usize,
                min_lr: 0.0,
            },
        }
    }
}

impl FromStr for ScheduleSpec {
    type Err = String;
    /// `constant`, `inverse-time:DECAY` or `cosine[:WARMUP_EPOCHS]`.
    fn from_str(s: &str) -> RunResult<Self> {
        let bad =
            || format!("{s:?}: expected constant, inverse-time:DECAY or cosine[:WARMUP_EPOCHS]");
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |a: &str| a.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        Ok(match (name, arg) {
            ("constant", None) => ScheduleSpec::Constant,
            ("inverse-time", Some(a)) => ScheduleSpec::InverseTime {
                decay: num(a).ok_or_else(bad)?,
            },
            ("cosine", None) => ScheduleSpec::Cosine { warmup_epochs: 0.0 },
            ("cosine", Some(a)) => ScheduleSpec::Cosine {
                warmup_epochs: num(a).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleSpec::Constant => write!(f, "constant"),
            ScheduleSpec::InverseTime { decay } => write!(f, "inverse-time:{decay}"),
            ScheduleSpec::Cosine { warmup_epochs } if *warmup_epochs == 0.0 => write!(f, "cosine"),
            ScheduleSpec::Cosine { warmup_epochs } => write!(f, "cosine:{warmup_epochs}"),
        }
    }
}

/// Everything a training run needs, however its data was chosen.
#[derive(Clone)]
pub struct RunSpec {
    pub dataset: Arc<dyn Dataset>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub config: ModelConfig,
    /// The `--model` preset name, as recorded with the weights.
    pub preset: String,
    /// Weights to start from (fine-tuning).
    pub init: Option<PathBuf>,
    pub freeze_features: bool,
    pub image_size: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub lr: f64,
    pub schedule: ScheduleSpec,
    pub weight_decay: f64,
    pub adamw: bool,
    pub seed: u64,
    /// Whether the dataset's augmentation is applied to training batches, and its name.
    pub augment: Option<&'static str>,
    pub out: PathBuf,
    pub resume: bool,
    pub mode: BlockMode,
    /// Where the data came from (stored with the weights, read by `eval`).
    pub data: String,
    /// Minutes between mid-epoch checkpoints (0: only at the end of each epoch).
    pub checkpoint_minutes: f64,
    /// Steps between mid-epoch checkpoints (0: none on a step count).
    pub checkpoint_steps: usize,
    /// Skip a batch whose loss or gradients are not finite, instead of stopping.
    pub skip_nonfinite: bool,
    /// In a data-parallel run, batch-norm statistics over the global batch.
    pub sync_bn: bool,
    /// Called after every optimizer step with the device and the step number, before
    /// the step's checkpoint (if any) is written.
    pub after_step: Option<StepHook>,
}

/// Environment variable choosing where a data-parallel run sums its gradient buckets:
/// `1` during backward, on a second thread, `0` after backward. The default is during
/// backward except on a CPU adapter. The results are the same either way.
pub const OVERLAP_ENV: &str = "DENSENET_WGPU_OVERLAP";

/// Environment variable with the gradient bucket size of a data-parallel run, in bytes
/// (default [`crate::train::GRAD_BUCKET_BYTES`]; the sums do not depend on it).
pub const BUCKET_BYTES_ENV: &str = "DENSENET_WGPU_BUCKET_BYTES";

/// A callback run after each training step (see [`RunSpec::after_step`]).
pub type StepHook = Arc<dyn Fn(&Gpu, u32) + Send + Sync>;

/// Which of SIGINT and SIGTERM arrived (see [`handle_interrupts`]), and whether either did.
static SIGINT_SEEN: AtomicBool = AtomicBool::new(false);
static SIGTERM_SEEN: AtomicBool = AtomicBool::new(false);
/// Another rank of a data-parallel run was interrupted, and this one stopped with it.
static GROUP_STOPPED: AtomicBool = AtomicBool::new(false);

/// From now on the first SIGINT or SIGTERM asks [`fit`] to stop after the current step:
/// it writes a checkpoint, prints the command that resumes, and returns an error; the
/// process should then exit with [`interrupt_exit_code`]. A second signal ends the
/// process at once (code 130 for SIGINT, 143 for SIGTERM).
pub fn handle_interrupts() -> RunResult<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let any = Arc::new(AtomicBool::new(false));
    let watch = |signal: i32, code: i32| -> std::io::Result<()> {
        // Registered first, so it sees `any` as the earlier signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, code, Arc::clone(&any))?;
        signal_hook::flag::register(signal, Arc::clone(&any))?;
        let seen = if signal == SIGINT {
            &SIGINT_SEEN
        } else {
            &SIGTERM_SEEN
        };
        // SAFETY: the handler only stores to a static atomic, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, move || seen.store(true, Ordering::SeqCst))
        }?;
        Ok(())
    };
    watch(SIGINT, 130)
        .and_then(|_| watch(SIGTERM, 143))
        .map_err(|e| format!("cannot handle SIGINT/SIGTERM: {e}"))
}

/// The exit code an interrupted run should end with: 130 after SIGINT, 143 after SIGTERM.
pub fn interrupt_exit_code() -> Option<u8> {
    if SIGINT_SEEN.load(Ordering::SeqCst) {
        Some(130)
    } else if SIGTERM_SEEN.load(Ordering::SeqCst) {
        Some(143)
    } else if GROUP_STOPPED.load(Ordering::SeqCst) {
        Some(130)
    } else {
        None
    }
}

/// Processes of the data-parallel run in progress (1 outside one), for [`resume_command`].
static RANKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The command line that continues this run: the same arguments with `--resume` (under
/// `mpirun -n N` for a data-parallel run; any N resumes it).
fn resume_command() -> String {
    let ranks = RANKS.load(Ordering::SeqCst);
    let mut args: Vec<String> = std::env::args().collect();
    if ranks > 1 {
        args.splice(0..0, ["mpirun".to_string(), "-n".into(), ranks.to_string()]);
    }
    if !args.iter().any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens the adapter (`DENSENET_WGPU_ADAPTER` picks one) and says which it is.
pub fn open_gpu() -> RunResult<Gpu> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    eprintln!("adapter: {}", gpu.describe());
    Ok(gpu)
}

/// Trains `spec.config` on `spec.train`, evaluating on `spec.val` after every epoch, and
/// writes the run folder. Returns the per-epoch metrics (resumed epochs included).
pub fn fit(spec: &RunSpec) -> RunResult<Vec<EpochMetrics>> {
    fit_group(spec, &SingleProcess)
}

/// [`fit`] as one rank of a data-parallel run over `group` (every rank calls it with the
/// same spec): `spec.batch_size` is the global batch, each rank trains on its share of it
/// and decodes only those images, gradients are summed over the ranks before the same
/// Adam step everywhere, and only rank 0 prints progress and writes files. With one rank
/// it is exactly the single-process run. See docs/distributed.md.
pub fn fit_group(spec: &RunSpec, group: &dyn Collective) -> RunResult<Vec<EpochMetrics>> {
    let writer = group.is_writer();
    let ranks = group.size();
    let distributed = ranks > 1;
    let shard = Shard {
        rank: group.rank(),
        ranks,
    };
    RANKS.store(ranks, Ordering::SeqCst);
    if spec.batch_size == 0 || spec.epochs == 0 {
        return Err("--batch-size and --epochs must be positive".into());
    }
    if spec.batch_size < ranks {
        return Err(format!(
            "--batch-size {} is the global batch: it must be at least the number of ranks ({ranks})",
            spec.batch_size
        ));
    }
    let last = spec.train.len() % spec.batch_size;
    if spec.sync_bn && distributed && last > 0 && last < ranks {
        return Err(format!(
            "--sync-bn: the last batch of each epoch holds {last} images, fewer than the {ranks} ranks; choose a --batch-size that leaves none or at least {ranks}"
        ));
    }
    check_classes(spec, writer)?;
    if writer {
        std::fs::create_dir_all(&spec.out).map_err(|e| format!("{}: {e}", spec.out.display()))?;
    }
    let gpu = if distributed {
        let gpu = Gpu::for_local_rank(group.local_rank()).map_err(|e| e.to_string())?;
        eprintln!(
            "rank {}/{ranks} (local rank {}, pid {}): adapter {}",
            group.rank(),
            group.local_rank(),
            std::process::id(),
            gpu.describe()
        );
        gpu
    } else {
        open_gpu()?
    };
    check_memory(&gpu, spec, ranks, writer)?;
    let mut model = spec
        .config
        .build(&gpu, spec.seed)
        .map_err(|e| e.to_string())?;
    model.set_mode(spec.mode);
    if let Some(init) = spec.init.as_ref().filter(|_| writer) {
        init_from(&gpu, model.as_mut(), init)?;
    }
    if spec.freeze_features {
        model.freeze_features();
        let trainable: usize = model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.value.numel())
            .sum();
        if writer {
            println!(
                "--freeze-features: training only {}* ({trainable} of {} parameters); frozen BNs use their running statistics",
                model.classifier_prefix(),
                model.num_parameters()
            );
        }
    }
    let steps_per_epoch = spec.train.len().div_ceil(spec.batch_size);
    let adam = AdamConfig {
        lr: spec.lr as f32,
        weight_decay: spec.weight_decay as f32,
        decoupled: spec.adamw,
        ..AdamConfig::default()
    };
    let schedule = spec.schedule.schedule(spec.epochs, steps_per_epoch);
    let opt = Adam::new(&gpu, model.params(), adam, schedule).map_err(|e| e.to_string())?;
    let mut trainer = Trainer::new(&gpu, model, opt);
    trainer.sync_bn = spec.sync_bn;
    // Summing during backward hides the all-reduce behind the device's work. A CPU adapter
    // has no idle cores to hide it on: there it costs more than it saves (docs/distributed.md).
    let overlap = match std::env::var(OVERLAP_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => gpu.info.device_type != wgpu::DeviceType::Cpu,
    };
    if distributed && overlap {
        trainer.overlap = group.duplicate();
    }
    if let Some(bytes) = std::env::var(BUCKET_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        trainer.bucket_bytes = bytes;
    }
    let checkpoint = spec.out.join("checkpoint.safetensors");
    let csv = spec.out.join("metrics.csv");
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut start_epoch = 0;
    let mut resume_partial: Option<EpochProgress> = None;
    // Rank 0 reads the checkpoint; the others get its state below.
    if spec.resume && writer {
        if !checkpoint.exists() {
            return Err(format!("--resume: {} does not exist", checkpoint.display()));
        }
        let file = TensorFile::read(&checkpoint).map_err(|e| e.to_string())?;
        trainer
            .model
            .store_mut()
            .load(&gpu, &file, &["optim."])
            .map_err(|e| e.to_string())?;
        trainer
            .opt
            .load(&gpu, trainer.model.params(), &file)
            .map_err(|e| e.to_string())?;
        history = if csv.exists() {
            metrics::read_csv(&csv).map_err(|e| format!("{}: {e}", csv.display()))?
        } else {
            vec![]
        };
        let meta = read_metadata(&checkpoint);
        start_epoch = meta
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| (trainer.opt.step as usize).div_ceil(steps_per_epoch));
        resume_partial = EpochProgress::from_metadata(&meta);
        history.truncate(start_epoch);
        for h in &mut history {
            h.epochs = spec.epochs;
        }
        metrics::write_csv(&csv, &history).map_err(|e| format!("{}: {e}", csv.display()))?;
        println!(
            "resumed from {} at epoch {} batch {} (step {})",
            checkpoint.display(),
            start_epoch + 1,
            resume_partial.as_ref().map_or(0, |p| p.batches_done),
            trainer.opt.step
        );
    } else if writer && csv.exists() {
        std::fs::remove_file(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    }
    if distributed {
        (start_epoch, resume_partial) =
            share_start(&gpu, &mut trainer, group, start_epoch, resume_partial)
                .map_err(|e| e.to_string())?;
    }
    if writer {
        println!(
            "model: {} ({} parameters, {:?} blocks), image {}x{}, batch {}{}, {} epochs, Adam lr {} ({}){}",
            spec.preset,
            trainer.model.num_parameters(),
            spec.mode,
            spec.image_size,
            spec.image_size,
            spec.batch_size,
            if distributed {
                format!(
                    " over {} ({} per rank{}{})",
                    group.describe(),
                    spec.batch_size.div_ceil(ranks),
                    if spec.sync_bn { ", synchronised BN" } else { "" },
                    if trainer.overlap.is_some() {
                        ", gradients summed during backward"
                    } else {
                        ", gradients summed after backward"
                    }
                )
            } else {
                String::new()
            },
            spec.epochs,
            spec.lr,
            spec.schedule,
            spec.augment
                .map(|a| format!(", augmentation: {a}"))
                .unwrap_or_default()
        );
        println!("run folder: {}", spec.out.display());
    }

    // The best validation accuracy so far, resumed epochs included.
    let mut best_val = history
        .iter()
        .filter_map(|m| m.val_acc)
        .fold(f64::NEG_INFINITY, f64::max);
    for epoch in start_epoch..spec.epochs {
        // The rate at the epoch's first step, also when resuming in the middle of it.
        let lr = (trainer.opt.schedule).lr(trainer.opt.base_lr, epoch * steps_per_epoch);
        let shuffle_seed = spec.seed.wrapping_add(epoch as u64 + 1);
        // A checkpoint written mid-epoch resumes after its last finished batch: the same
        // shuffled order and the same augmentation of every item, minus the batches done.
        let partial = resume_partial.take().unwrap_or_default();
        let from_start = partial.batches_done == 0;
        let mut nonfinite = 0usize;
        let mut loaded = vec![0f64; spec.dataset.classes().len()];
        let mut loader = Loader::new(
            spec.dataset.clone(),
            spec.train.clone(),
            LoaderOptions::batches_of(spec.batch_size)
                .shuffled(shuffle_seed)
                .augmented(spec.augment.is_some())
                .from_batch(partial.batches_done)
                .shard(shard),
        );
        let mut bar = Progress::new(
            &format!("epoch {}/{}", epoch + 1, spec.epochs),
            spec.train.len(),
        );
        bar.set_visible(writer);
        bar.resume_from(partial.seen);
        let mut part = partial;
        let t0 = Instant::now() - Duration::from_secs_f64(part.seconds);
        let mut last_save = Instant::now();
        let (mut comm_seconds, mut steps) = ([0.0; 2], 0usize);
        for batch in loader.by_ref() {
            let time_is_up = |last_save: Instant| {
                spec.checkpoint_minutes > 0.0
                    && last_save.elapsed().as_secs_f64() >= spec.checkpoint_minutes * 60.0
            };
            let step = if distributed {
                // Every rank stops or checkpoints at the same step: on any rank's signal,
                // and on rank 0's clock.
                let flags = [
                    interrupt_exit_code().is_some() as u8 as f64,
                    (time_is_up(last_save) && writer) as u8 as f64,
                ];
                trainer
                    .train_step_group(&batch.images, &batch.labels, spec.image_size, group, flags)
                    .map(|s| {
                        (
                            s.loss,
                            s.correct,
                            s.count,
                            s.flags[0] > 0.0,
                            s.flags[1] > 0.0,
                        )
                    })
            } else {
                trainer
                    .train_step(&batch.images, &batch.labels, spec.image_size)
                    .map(|r| {
                        let interrupted = interrupt_exit_code().is_some();
                        (
                            r.loss,
                            r.correct,
                            r.count,
                            interrupted,
                            time_is_up(last_save),
                        )
                    })
            };
            let (loss, correct, count, interrupted, by_time) = match step {
                Ok(r) => r,
                Err(e @ StepError::NonFinite { .. }) => {
                    let files: Vec<String> = batch
                        .indices
                        .iter()
                        .map(|&i| spec.dataset.describe(i))
                        .collect();
                    let what = format!("{e}; batch: {}", files.join(", "));
                    if !spec.skip_nonfinite {
                        return Err(format!(
                            "{what}\nnothing of this step was applied; {} holds the last good checkpoint (--skip-nonfinite skips such batches; a lower --lr may avoid them)",
                            checkpoint.display()
                        ));
                    }
                    eprintln!("warning: skipped {what}");
                    nonfinite += 1;
                    part.batches_done += 1;
                    continue;
                }
                Err(StepError::Gpu(e)) => return Err(step_failure(&e, &trainer, &checkpoint)),
            };
            if let Some(hook) = &spec.after_step {
                hook(&gpu, trainer.opt.step);
            }
            comm_seconds[0] += trainer.comm_seconds[0];
            comm_seconds[1] += trainer.comm_seconds[1];
            steps += 1;
            part.loss_sum += loss * count as f64;
            part.correct += correct;
            part.seen += count;
            part.batches_done += 1;
            for &l in &batch.labels {
                loaded[l] += 1.0;
            }
            bar.inc(
                count,
                &format!(
                    "loss {:.4} acc {:.3}",
                    part.loss_sum / part.seen as f64,
                    part.correct as f64 / part.seen as f64
                ),
            );
            let by_steps =
                spec.checkpoint_steps > 0 && part.batches_done % spec.checkpoint_steps == 0;
            if interrupted || by_time || by_steps {
                part.seconds = t0.elapsed().as_secs_f64();
                average_buffers(&gpu, &trainer, group)?;
                if writer {
                    save_checkpoint(&gpu, &trainer, spec, &checkpoint, epoch, Some(&part))
                        .map_err(|e| lost_or(&gpu, e, &trainer, &checkpoint))?;
                }
                last_save = Instant::now();
            }
            if interrupted {
                GROUP_STOPPED.store(true, Ordering::SeqCst);
                bar.finish();
                if writer {
                    println!(
                        "interrupted after step {} (epoch {}, batch {}): checkpoint written to {}\nresume with: {}",
                        trainer.opt.step,
                        epoch + 1,
                        part.batches_done,
                        checkpoint.display(),
                        resume_command()
                    );
                }
                return Err("interrupted".into());
            }
        }
        let (loss_sum, correct, seen) = (part.loss_sum, part.correct, part.seen);
        bar.finish();
        let skipped = loader.take_warnings();
        for w in &skipped {
            eprintln!("warning: {w}");
        }
        // Per-class counts and skipped files over all ranks.
        loaded.push(skipped.len() as f64);
        group.all_reduce_sum_f64(&mut loaded);
        let skipped_total = loaded.pop().unwrap_or(0.0) as usize;
        if seen == 0 && nonfinite > 0 {
            return Err(format!(
                "every batch of epoch {} had non-finite values: lower the learning rate",
                epoch + 1
            ));
        }
        if seen == 0 {
            return Err("no training image could be loaded".into());
        }
        // Every training image of a class skipped: the class cannot be learnt.
        if let Some(class) = loaded.iter().position(|&n| n == 0.0).filter(|_| from_start) {
            return Err(format!(
                "class {:?} of {} has no readable training image left after skipping the files above",
                spec.dataset.classes()[class],
                spec.data
            ));
        }
        average_buffers(&gpu, &trainer, group)?;
        let (val_loss, val_acc) = if spec.val.is_empty() {
            (None, None)
        } else {
            let mine = &spec.val[shard.range(spec.val.len())];
            let mut e = evaluate_sums(
                &gpu,
                trainer.model.as_ref(),
                &spec.dataset,
                mine,
                crate::budget::eval_batch(spec.batch_size.div_ceil(ranks)),
                spec.image_size,
                writer,
            )
            .map_err(|e| lost_or(&gpu, e, &trainer, &checkpoint))?;
            group.all_reduce_sum_f64(&mut e);
            if e[2] == 0.0 {
                return Err("no validation image could be loaded".into());
            }
            (Some(e[0] / e[2]), Some(e[1] / e[2]))
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            epochs: spec.epochs,
            train_loss: loss_sum / seen as f64,
            train_acc: correct as f64 / seen as f64,
            val_loss,
            val_acc,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let mut line = m.summary_line();
        if skipped_total > 0 {
            line += &format!(" skipped={skipped_total}");
        }
        if nonfinite > 0 {
            line += &format!(" nonfinite_skipped={nonfinite}");
        }
        if distributed && steps > 0 {
            line += &format!(
                " allreduce={:.1}ms/step exposed={:.1}ms/step",
                1000.0 * comm_seconds[0] / steps as f64,
                1000.0 * comm_seconds[1] / steps as f64
            );
        }
        history.push(m.clone());
        if distributed {
            let mut tensors: Vec<(String, Tensor)> = trainer
                .model
                .params()
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect();
            tensors.extend(trainer.model.store().buffers.iter().cloned());
            match check_replicas(&gpu, group, &tensors).map_err(|e| e.to_string())? {
                Ok(hash) => line += &format!("\nreplicas: {ranks} ranks, parameters identical (hash {hash:016x})"),
                Err(mismatch) => {
                    return Err(format!(
                        "after epoch {}: {mismatch}; the last checkpoint ({}) is from before the divergence",
                        epoch + 1,
                        checkpoint.display()
                    ))
                }
            }
        }
        if !writer {
            continue;
        }
        println!("{line}");
        metrics::append_csv(&csv, &m).map_err(|e| format!("{}: {e}", csv.display()))?;
        if let Err(e) = crate::plot::write_curves(&spec.out.join("curves.png"), &history) {
            eprintln!("warning: could not write curves.png: {e}");
        }
        // The best weights first: the checkpoint marks the epoch as done, so a run killed
        // in between redoes the epoch's end and writes the same best file again.
        if let Some(a) = val_acc {
            if a > best_val {
                best_val = a;
                let best = spec.out.join("best.safetensors");
                save_weights(&gpu, trainer.model.as_ref(), spec, &best, epoch + 1)
                    .map_err(|e| lost_or(&gpu, e, &trainer, &checkpoint))?;
            }
        }
        save_checkpoint(&gpu, &trainer, spec, &checkpoint, epoch + 1, None)
            .map_err(|e| lost_or(&gpu, e, &trainer, &checkpoint))?;
    }
    if writer {
        println!(
            "wrote {}, {}, {}{}",
            csv.display(),
            spec.out.join("curves.png").display(),
            checkpoint.display(),
            if best_val.is_finite() {
                format!(", best.safetensors (val_acc {best_val:.4})")
            } else {
                String::new()
            }
        );
    }
    Ok(history)
}

/// Rank 0's weights, BN statistics and optimizer state, and where its run starts (epoch
/// and position in it), on every rank.
fn share_start(
    gpu: &Gpu,
    trainer: &mut Trainer,
    group: &dyn Collective,
    start_epoch: usize,
    partial: Option<EpochProgress>,
) -> crate::gpu::Result<(usize, Option<EpochProgress>)> {
    let store = trainer.model.store();
    let tensors = store
        .params
        .iter()
        .map(|p| &p.value)
        .chain(store.buffers.iter().map(|(_, t)| t))
        .chain(trainer.opt.moments());
    broadcast_tensors(gpu, group, tensors)?;
    let p = partial.unwrap_or_default();
    let mut header = vec![
        start_epoch as u64,
        trainer.opt.step as u64,
        p.batches_done as u64,
        p.loss_sum.to_bits(),
        p.correct as u64,
        p.seen as u64,
        p.seconds.to_bits(),
    ];
    header.extend(store.batches_tracked.iter().map(|(_, c)| c.get() as u64));
    group.broadcast_u64(&mut header);
    for ((_, c), &v) in store.batches_tracked.iter().zip(&header[7..]) {
        c.set(v as i64);
    }
    trainer.opt.step = header[1] as u32;
    let partial = EpochProgress {
        batches_done: header[2] as usize,
        loss_sum: f64::from_bits(header[3]),
        correct: header[4] as usize,
        seen: header[5] as usize,
        seconds: f64::from_bits(header[6]),
    };
    Ok((
        header[0] as usize,
        (partial.batches_done > 0).then_some(partial),
    ))
}

/// The mean over the ranks of every BN running statistic, on every rank (before an
/// evaluation or a checkpoint; see the `dist` module).
fn average_buffers(gpu: &Gpu, trainer: &Trainer, group: &dyn Collective) -> RunResult<()> {
    if trainer.sync_bn {
        // Synchronised statistics are the same on every rank already.
        return Ok(());
    }
    let buffers = trainer.model.store().buffers.iter().map(|(_, t)| t);
    average_tensors(gpu, group, buffers).map_err(|e| e.to_string())
}

/// Refuses a batch and image size that would not fit the adapter (a tensor larger than
/// one buffer may be, or more memory than the adapter has), naming the tensor and the
/// largest (global) batch that fits; otherwise prints the estimate (on the writer).
fn check_memory(gpu: &Gpu, spec: &RunSpec, ranks: usize, writer: bool) -> RunResult<()> {
    use crate::budget::{largest_fitting_batch, mib, plan_training, RunShape};
    // In a data-parallel run the limit is on each rank's share of the batch.
    let batch = spec.batch_size.div_ceil(ranks);
    let shape = RunShape {
        config: spec.config.clone(),
        mode: spec.mode,
        freeze_features: spec.freeze_features,
        image_size: spec.image_size,
    };
    let memory = gpu.memory_bytes;
    let limits = format!(
        "{} per buffer, {}",
        mib(gpu.max_binding_bytes()),
        memory.map_or("memory unknown".into(), |m| format!("{} memory", mib(m)))
    );
    match plan_training(gpu, &shape, batch, memory).map_err(|e| e.to_string())? {
        Ok(_) if !writer => Ok(()),
        Ok(plan) => {
            println!(
                "device memory: estimated peak {} ({} parameters, gradients and Adam state), largest tensor {:?} {}; the adapter allows {limits}",
                mib(plan.peak_bytes),
                mib(plan.state_bytes),
                plan.largest.1,
                mib(plan.largest.0)
            );
            Ok(())
        }
        Err(why) => {
            let fits =
                largest_fitting_batch(gpu, &shape, batch, memory).map_err(|e| e.to_string())?;
            Err(format!(
                "--batch-size {} at {s}x{s} does not fit {}: {why}. {}",
                spec.batch_size,
                gpu.info.name,
                match fits {
                    Some(b) => format!(
                        "The largest batch that fits is {} (--batch-size {}).",
                        b * ranks,
                        b * ranks
                    ),
                    None => "Not even batch 1 fits: use a smaller --image-size or model.".into(),
                },
                s = spec.image_size
            ))
        }
    }
}

/// The message for a step that failed on the device: for a lost device, what was kept and
/// how to resume.
fn step_failure(e: &crate::gpu::GpuError, trainer: &Trainer, checkpoint: &Path) -> String {
    match e {
        crate::gpu::GpuError::DeviceLost(_) => format!(
            "{e} during step {}. Nothing after the last checkpoint was written: {} is intact{}.\nresume with: {}",
            trainer.opt.step + 1,
            checkpoint.display(),
            if checkpoint.exists() { "" } else { " (none was written yet)" },
            resume_command()
        ),
        other => other.to_string(),
    }
}

/// A failed checkpoint write or evaluation: the lost-device message when the device is
/// gone, else the failure as it is.
fn lost_or(gpu: &Gpu, message: String, trainer: &Trainer, checkpoint: &Path) -> String {
    match gpu.check_device_error() {
        Err(e @ crate::gpu::GpuError::DeviceLost(_)) => step_failure(&e, trainer, checkpoint),
        _ => message,
    }
}

fn run_metadata(spec: &RunSpec, epoch: usize) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("classes".into(), spec.dataset.classes().join("\n"));
    meta.insert("image_size".into(), spec.image_size.to_string());
    meta.insert("model".into(), spec.preset.clone());
    meta.insert("architecture".into(), spec.config.to_string());
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert("format".into(), "pt".into());
    meta.insert("data".into(), spec.data.clone());
    meta
}

/// Refuses data a classifier cannot be trained on (one class, or a class with no training
/// image) and says which classes the validation split leaves out.
fn check_classes(spec: &RunSpec, writer: bool) -> RunResult<()> {
    let classes = spec.dataset.classes();
    if classes.len() < 2 {
        return Err(format!(
            "{}: {} class ({}); a classifier needs at least two",
            spec.data,
            classes.len(),
            classes.join(", ")
        ));
    }
    let count = |indices: &[usize]| {
        let mut n = vec![0usize; classes.len()];
        for &i in indices {
            if let Some(l) = spec.dataset.label(i) {
                n[l] += 1;
            }
        }
        n
    };
    let missing = |n: &[usize]| -> Vec<&str> {
        classes
            .iter()
            .zip(n)
            .filter(|(_, &k)| k == 0)
            .map(|(c, _)| c.as_str())
            .collect()
    };
    let untrained = missing(&count(&spec.train));
    if !untrained.is_empty() {
        return Err(format!(
            "{}: the split leaves no training image for class(es) {} (add images, or lower --val-split)",
            spec.data,
            untrained.join(", ")
        ));
    }
    let unvalidated = missing(&count(&spec.val));
    if !writer {
    } else if spec.val.is_empty() {
        println!("validation: none (--val-split 0); accuracy is reported on training batches only");
    } else if !unvalidated.is_empty() {
        println!(
            "warning: the validation split holds no image of class(es) {}; their accuracy is not measured (more images, a larger --val-split, or --val-split 0 to train without validation)",
            unvalidated.join(", ")
        );
    }
    Ok(())
}

/// The model's state_dict with the run's metadata (what `best.safetensors` holds).
pub fn save_weights(
    gpu: &Gpu,
    model: &dyn Model,
    spec: &RunSpec,
    path: &Path,
    epoch: usize,
) -> RunResult<()> {
    let entries = model.store().state_dict(gpu).map_err(|e| e.to_string())?;
    weights::write(path, entries, run_metadata(spec, epoch)).map_err(|e| e.to_string())
}

/// Progress through an epoch, saved in mid-epoch checkpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochProgress {
    pub batches_done: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    pub seconds: f64,
}

impl EpochProgress {
    fn to_metadata(&self, meta: &mut BTreeMap<String, String>) {
        meta.insert("batches_done".into(), self.batches_done.to_string());
        meta.insert("partial_loss_sum".into(), self.loss_sum.to_string());
        meta.insert("partial_correct".into(), self.correct.to_string());
        meta.insert("partial_seen".into(), self.seen.to_string());
        meta.insert("partial_seconds".into(), self.seconds.to_string());
    }

    /// The progress a mid-epoch checkpoint recorded (`None` at an epoch boundary).
    pub fn from_metadata(meta: &HashMap<String, String>) -> Option<EpochProgress> {
        let get = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok());
        let batches_done = get("batches_done")? as usize;
        (batches_done > 0).then(|| EpochProgress {
            batches_done,
            loss_sum: get("partial_loss_sum").unwrap_or(0.0),
            correct: get("partial_correct").unwrap_or(0.0) as usize,
            seen: get("partial_seen").unwrap_or(0.0) as usize,
            seconds: get("partial_seconds").unwrap_or(0.0),
        })
    }
}

/// The string metadata of a safetensors file (empty if it has none or cannot be read).
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| {
            safetensors::SafeTensors::read_metadata(&bytes)
                .ok()
                .and_then(|(_, m)| m.metadata().clone())
        })
        .unwrap_or_default()
}

/// Weights + optimizer state; `epoch` counts finished epochs, `partial` the progress
/// through the next one (mid-epoch saves).
fn save_checkpoint(
    gpu: &Gpu,
    t: &Trainer,
    spec: &RunSpec,
    path: &Path,
    epoch: usize,
    partial: Option<&EpochProgress>,
) -> RunResult<()> {
    let mut entries = t.model.store().state_dict(gpu).map_err(|e| e.to_string())?;
    entries.extend(
        t.opt
            .state_dict(gpu, t.model.params())
            .map_err(|e| e.to_string())?,
    );
    let mut meta = run_metadata(spec, epoch);
    if let Some(p) = partial {
        p.to_metadata(&mut meta);
    }
    weights::write(path, entries, meta).map_err(|e| e.to_string())
}

/// What [`evaluate_split`] measured.
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// Counts by (true class, predicted class).
    pub confusion: Vec<Vec<usize>>,
}

/// Mean loss, accuracy and confusion matrix of `model` over `indices` of `dataset`.
pub fn evaluate_split(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    batch_size: usize,
    size: usize,
) -> RunResult<Evaluation> {
    let ([loss_sum, correct, seen], confusion) =
        evaluate_into(gpu, model, dataset, indices, batch_size, size, true)?;
    if seen == 0.0 {
        return Err("no validation image could be loaded".into());
    }
    Ok(Evaluation {
        loss: loss_sum / seen,
        accuracy: correct / seen,
        confusion,
    })
}

/// Summed loss, correct predictions and images of `model` over `indices` (one rank's
/// share of a validation split; the sums add up over ranks). `show`: draw the progress.
pub fn evaluate_sums(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    batch_size: usize,
    size: usize,
    show: bool,
) -> RunResult<[f64; 3]> {
    let (sums, _confusion) = evaluate_into(gpu, model, dataset, indices, batch_size, size, show)?;
    Ok(sums)
}

/// The summed loss, correct predictions and images, and the confusion matrix (`[label]
/// [prediction]`), over `indices`.
fn evaluate_into(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    batch_size: usize,
    size: usize,
    show: bool,
) -> RunResult<([f64; 3], Vec<Vec<usize>>)> {
    let k = dataset.classes().len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loader = Loader::new(
        dataset.clone(),
        indices.to_vec(),
        LoaderOptions::batches_of(batch_size),
    );
    let mut bar = Progress::new("validation", indices.len());
    bar.set_visible(show);
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    for batch in loader.by_ref() {
        let r =
            evaluate(gpu, model, &batch.images, &batch.labels, size).map_err(|e| e.to_string())?;
        loss_sum += r.loss * r.count as f64;
        correct += r.correct;
        seen += r.count;
        for (p, l) in r.predictions.iter().zip(&batch.labels) {
            confusion[*l][*p] += 1;
        }
        bar.inc(r.count, "");
    }
    bar.finish();
    for w in loader.take_warnings() {
        eprintln!("warning: {w}");
    }
    Ok(([loss_sum, correct as f64, seen as f64], confusion))
}

/// What a weight file's metadata says about its run.
pub struct RunInfo {
    pub classes: Option<Vec<String>>,
    pub image_size: Option<usize>,
    /// `embedded:<images>:<seed>` for the built-in dataset, else the data folder.
    pub data: Option<String>,
}

/// Loads a weights or checkpoint file: the architecture comes from the tensor names and
/// shapes, class names and image size from the metadata when present.
pub fn load_model(gpu: &Gpu, path: &Path) -> RunResult<(Box<dyn Model>, RunInfo)> {
    let file = TensorFile::read(path).map_err(|e| e.to_string())?;
    let config = infer_config(&file).map_err(|e| e.to_string())?;
    let mut model = config.build(gpu, 0).map_err(|e| e.to_string())?;
    model
        .store_mut()
        .load(gpu, &file, &["optim."])
        .map_err(|e| e.to_string())?;
    let meta = read_metadata(path);
    let info = RunInfo {
        classes: meta
            .get("classes")
            .map(|c| c.lines().map(String::from).collect()),
        image_size: meta.get("image_size").and_then(|s| s.parse().ok()),
        data: meta.get("data").cloned(),
    };
    Ok((model, info))
}

/// `--init FILE`: loads weights of the same architecture into `model`. When the file's
/// classifier is for another class count, the model keeps its freshly initialised one.
pub fn init_from(gpu: &Gpu, model: &mut dyn Model, path: &Path) -> RunResult<()> {
    let file = TensorFile::read(path).map_err(|e| e.to_string())?;
    let theirs = infer_config(&file).map_err(|e| e.to_string())?;
    let ours = model.config();
    if theirs.with_num_classes(ours.num_classes()) != ours {
        return Err(format!(
            "--init {}: the file holds {theirs}, but the model is {ours}",
            path.display()
        ));
    }
    let head = model.classifier_prefix();
    let replace = theirs.num_classes() != ours.num_classes();
    let keep = replace.then_some(head);
    model
        .store_mut()
        .load_except(gpu, &file, &["optim."], keep)
        .map_err(|e| e.to_string())?;
    if replace {
        println!(
            "--init {}: loaded every tensor but the classifier; {head}* replaced by a freshly initialised one ({} → {} classes)",
            path.display(),
            theirs.num_classes(),
            ours.num_classes()
        );
    } else {
        println!("--init {}: loaded every tensor", path.display());
    }
    Ok(())
}

/// Writes two validation images per class of the embedded dataset as PNGs, for
/// `train predict` to try.
pub fn write_samples(data: &Synthetic, val: &[usize], dir: &Path) -> RunResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = vec![0usize; data.classes().len()];
    for &i in val {
        let (pixels, label) = data.render(i);
        if written[label] >= 2 {
            continue;
        }
        written[label] += 1;
        let s = data.image_size();
        let img = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let at =
                |c: usize| (pixels[(c * s + y as usize) * s + x as usize] * 255.0).round() as u8;
            image::Rgb([at(0), at(1), at(2)])
        });
        let path = dir.join(format!("{}_{i}.png", data.classes()[label]));
        img.save(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
