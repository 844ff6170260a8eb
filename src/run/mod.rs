//! A training run: [`Run`] drives one step by step, and [`fit`] is the loop over it. A run
//! writes checkpoints (weights, Adam state and the position in the epoch) and the best
//! weights, resumes from its checkpoint, and reports what happens, each epoch's metrics
//! included, as [`events::RunEvent`]s: the `train` binary writes metrics.csv and
//! curves.png from them. Also here: evaluation over a split, and
//! reading weight files back.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::data::synthetic::Synthetic;
use crate::data::{Dataset, Normalization};
use crate::data::{Loader, LoaderOptions};
use crate::dist::{broadcast_tensors, Collective, SingleProcess};
use crate::gpu::{DeviceOptions, Gpu, GpuError};
use crate::metrics::EpochMetrics;
use crate::models::{BlockMode, Model, ModelConfig};
use crate::optim::Schedule;
use crate::train::{evaluate, Trainer};
use crate::weights::{self, infer_config, TensorFile, WeightsError};

pub mod events;
mod training;

use events::{MemoryPlan, Observer, RunEvent};
pub use training::{Run, StepDone};

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// [`RunSpec::cancel`] was set: the run wrote a checkpoint after `step` and stopped.
    #[error("interrupted after step {step}")]
    Interrupted { step: u32 },
    /// The device was lost during a step. Nothing after the last checkpoint was written.
    #[error("{error} during step {step}. Nothing after the last checkpoint was written: {} is intact{}", checkpoint.display(), if *written { "" } else { " (none was written yet)" })]
    DeviceLost {
        error: GpuError,
        step: u32,
        checkpoint: PathBuf,
        /// Whether a checkpoint had been written before.
        written: bool,
    },
    /// No image of the validation split could be loaded.
    #[error("no validation image could be loaded")]
    NoValidationImage,
    /// [`Run::step`] or [`Run::end_epoch`] was called outside an epoch: call
    /// [`Run::begin_epoch`] first.
    #[error("no epoch in progress: call Run::begin_epoch first")]
    NoEpochInProgress,
    /// The batch size or the number of epochs is zero.
    #[error("the batch size and the number of epochs must be positive (batch size {batch_size}, {epochs} epochs)")]
    NothingToTrain { batch_size: usize, epochs: usize },
    /// A group of several processes in a build without data-parallel training (the
    /// browser's: its gradient sums and synchronised batch norm wait on the device).
    #[error("data-parallel training over {ranks} processes needs a native build")]
    DataParallelUnsupported { ranks: usize },
    /// A data-parallel run's global batch has fewer images than there are ranks.
    #[error("the batch size {batch_size} is the global batch: it must be at least the number of ranks ({ranks})")]
    BatchBelowRanks { batch_size: usize, ranks: usize },
    /// With synchronised batch norm, the last batch of each epoch would leave a rank
    /// without an image.
    #[error("synchronised batch norm: the last batch of each epoch holds {last} images, fewer than the {ranks} ranks; choose a batch size that leaves none or at least {ranks}")]
    LastBatchBelowRanks { last: usize, ranks: usize },
    /// The (global) batch does not fit the device; `largest` is the largest that does
    /// (`None`: not even one image per rank).
    #[error("batch {batch_size} at {image_size}x{image_size} does not fit {adapter}: {reason}. {}", match largest { Some(b) => format!("The largest batch that fits is {b}."), None => "Not even batch 1 fits: use smaller images or a smaller model.".into() })]
    BatchDoesNotFit {
        batch_size: usize,
        image_size: usize,
        adapter: String,
        reason: Box<crate::budget::DoesNotFit>,
        largest: Option<usize>,
    },
    /// The train/validation split leaves classes without a training image.
    #[error("{data}: the split leaves no training image for class(es) {} (add images, or hold out fewer for validation)", classes.join(", "))]
    ClassesWithoutTrainingImage { data: String, classes: Vec<String> },
    /// The weights to start from ([`RunSpec::init`]) are for another architecture.
    #[error("{}: the file holds {file_model}, but the model is {model}", path.display())]
    InitMismatch {
        path: PathBuf,
        file_model: String,
        model: String,
    },
    /// The weights to start from were trained on inputs normalised otherwise than the
    /// dataset normalises them (give the dataset [`weights_normalization`]'s).
    #[error("{}: the weights were trained on inputs normalised with {}, but the data is normalised with {}", path.display(), weights.to_metadata(), data.to_metadata())]
    NormalizationMismatch {
        path: PathBuf,
        weights: Normalization,
        data: Normalization,
    },
    /// [`RunSpec::resume`] was set, but the run folder has no checkpoint.
    #[error("nothing to resume: {} does not exist", checkpoint.display())]
    NoCheckpoint { checkpoint: PathBuf },
    /// A step's loss or gradients were not finite and [`RunSpec::skip_nonfinite`] was not
    /// set. Nothing of the step was applied; `checkpoint` holds the last good state.
    #[error("{error}; batch: {}\nnothing of this step was applied; {} holds the last good checkpoint", files.join(", "), checkpoint.display())]
    NonFiniteStep {
        error: crate::train::StepError,
        /// The batch's images, as the dataset names them.
        files: Vec<String>,
        checkpoint: PathBuf,
    },
    /// A step that could not run: a data-parallel rank without an image under
    /// synchronised batch norm, or a gradient-reduce hook that skipped the pass.
    #[error(transparent)]
    Step(crate::train::StepError),
    /// The device could not be opened, or refused an op (a shape, a limit, a forced
    /// kernel that cannot run).
    #[error(transparent)]
    Device(#[from] GpuError),
    /// No model preset has this name; `choices` are the presets there are.
    #[error("unknown model {name:?}; choose among {}", choices.join(", "))]
    UnknownModel {
        name: String,
        choices: Vec<&'static str>,
    },
    /// Measuring a model's step time and memory for the study failed on the device.
    #[error("{model}: {error}")]
    CostNotMeasured {
        model: String,
        error: crate::train::StepError,
    },
    /// The dataset has fewer than two classes.
    #[error("{data}: {} class ({}); a classifier needs at least two", classes.len(), classes.join(", "))]
    TooFewClasses { data: String, classes: Vec<String> },
    /// No image of the training split could be loaded.
    #[error("no training image could be loaded")]
    NoTrainingImage,
    /// Every training image of a class was skipped as unreadable during the first epoch.
    #[error("class {class:?} of {data} has no readable training image left after skipping the files above")]
    ClassUnreadable { class: String, data: String },
    /// Every batch of an epoch was skipped for non-finite values.
    #[error("every batch of epoch {epoch} had non-finite values: lower the learning rate")]
    EveryBatchNonFinite { epoch: usize },
    /// The ranks of a data-parallel run no longer hold the same parameters.
    #[error("after epoch {epoch}: {mismatch}; the last checkpoint ({}) is from before the divergence", checkpoint.display())]
    ReplicasDiverged {
        epoch: usize,
        mismatch: crate::dist::ReplicaMismatch,
        checkpoint: PathBuf,
    },
    /// A file or folder of the run (the run folder, a sample image, the `train` binary's
    /// metrics.csv) could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A figure (the study's) could not be written.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// A weights or checkpoint file could not be read, written or applied (it names the
    /// file).
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The data could not be read (it names the file or the folder).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// A step's device error is the run's [`RunError::Device`]; its other failures are
/// [`RunError::Step`].
impl From<crate::train::StepError> for RunError {
    fn from(e: crate::train::StepError) -> Self {
        match e {
            crate::train::StepError::Gpu(e) => RunError::Device(e),
            other => RunError::Step(other),
        }
    }
}

impl RunError {
    /// A [`RunError::File`] for `path`.
    pub fn file<E: std::error::Error + Send + Sync + 'static>(
        path: &Path,
    ) -> impl FnOnce(E) -> RunError + '_ {
        move |e| RunError::File {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}

/// The result of a run's operations.
pub type RunResult<T> = Result<T, RunError>;

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
    fn from_str(s: &str) -> Result<Self, String> {
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
    /// Once set, the run writes a checkpoint after the current step and stops with
    /// [`RunError::Interrupted`] (every rank of a data-parallel run at the same step).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where a data-parallel run sums its gradient buckets: `Some(true)` during backward,
    /// on a second thread, `Some(false)` after it. The default is during backward except
    /// on a CPU adapter. The results are the same either way.
    pub overlap: Option<bool>,
    /// The gradient bucket size of a data-parallel run, in bytes (default
    /// [`crate::dist::GRAD_BUCKET_BYTES`]; the sums do not depend on it).
    pub bucket_bytes: Option<usize>,
    /// Which adapter to open, and whether kernels may use subgroup operations.
    pub device: DeviceOptions,
    /// With [`RunSpec::resume`]: the metrics of the epochs trained before (the `train`
    /// binary reads them from metrics.csv). The run keeps those up to its checkpoint's
    /// epoch as its history and takes its best validation accuracy from them, so that
    /// best.safetensors is replaced only by a better epoch. Empty: the history starts at the
    /// resumed epoch and so does the best accuracy, so the first epoch after the resume
    /// writes best.safetensors whatever its accuracy.
    pub history: Vec<EpochMetrics>,
    /// Time every op of each step and report it ([`events::RunEvent::StepProfiled`]).
    /// Slows the run down; for finding slow kernels.
    pub profile: bool,
}

impl RunSpec {
    /// A run of the model `preset` (one of [`crate::models::preset_names`]) on the `train`
    /// and `val` items of `dataset`, writing to `out`. The rest are the `train` binary's
    /// settings for its embedded default: batch 32, 6 epochs, Adam at 3e-3 on a cosine
    /// schedule, seed 123, memory-efficient blocks, no augmentation, a checkpoint at the end
    /// of each epoch. Every field is public: change what you need.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        (train, val): (Vec<usize>, Vec<usize>),
        preset: &str,
        out: impl Into<PathBuf>,
    ) -> RunResult<RunSpec> {
        let config = preset_config(preset, dataset.classes().len())?;
        Ok(RunSpec {
            image_size: dataset.image_size(),
            dataset,
            train,
            val,
            config,
            preset: preset.to_string(),
            init: None,
            freeze_features: false,
            batch_size: 32,
            epochs: 6,
            lr: 3e-3,
            schedule: ScheduleSpec::Cosine { warmup_epochs: 0.0 },
            weight_decay: 0.0,
            adamw: false,
            seed: 123,
            augment: None,
            out: out.into(),
            resume: false,
            mode: BlockMode::MemoryEfficient,
            data: String::new(),
            checkpoint_minutes: 0.0,
            checkpoint_steps: 0,
            skip_nonfinite: false,
            sync_bn: false,
            after_step: None,
            cancel: None,
            device: DeviceOptions::default(),
            overlap: None,
            bucket_bytes: None,
            profile: false,
            history: Vec::new(),
        })
    }

    /// Whether [`RunSpec::cancel`] was set.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// A callback run after each training step (see [`RunSpec::after_step`]).
pub type StepHook = Arc<dyn Fn(&Gpu, u32) + Send + Sync>;

/// Trains `spec.config` on `spec.train`, evaluating on `spec.val` after every epoch, and
/// writes the run folder. Returns the per-epoch metrics (resumed epochs included).
///
/// Nothing in a run blocks on the device: a native program waits for the returned future
/// (`pollster::block_on(fit(&spec, &mut observer))`); a web page awaits it.
pub async fn fit(spec: &RunSpec, observer: &mut dyn Observer) -> RunResult<Vec<EpochMetrics>> {
    fit_as_rank(spec, &SingleProcess, observer).await
}

/// [`fit`] as one rank of a data-parallel run over `group` (every rank calls it with the
/// same spec): `spec.batch_size` is the global batch, each rank trains on its share of it
/// and decodes only those images, gradients are summed over the ranks before the same
/// Adam step everywhere, and only rank 0 writes files. With one rank it is exactly the
/// single-process run. See docs/distributed.md.
pub async fn fit_as_rank(
    spec: &RunSpec,
    group: &dyn Collective,
    observer: &mut dyn Observer,
) -> RunResult<Vec<EpochMetrics>> {
    let gpu = if group.size() > 1 {
        Gpu::request_for_local_rank(group.local_rank(), &spec.device).await?
    } else {
        Gpu::request(&spec.device).await?
    };
    let mut run = Run::start(&gpu, spec, group, observer).await?;
    while run.begin_epoch() {
        while run.step().await?.is_some() {}
        run.end_epoch().await?;
    }
    Ok(run.finish())
}

/// Refuses settings and data a run cannot train with, naming the option or the class.
fn check_run(spec: &RunSpec, ranks: usize, observer: &mut dyn Observer) -> RunResult<()> {
    let batch_size = spec.batch_size;
    if batch_size == 0 || spec.epochs == 0 {
        return Err(RunError::NothingToTrain {
            batch_size,
            epochs: spec.epochs,
        });
    }
    #[cfg(target_arch = "wasm32")]
    if ranks > 1 {
        return Err(RunError::DataParallelUnsupported { ranks });
    }
    if batch_size < ranks {
        return Err(RunError::BatchBelowRanks { batch_size, ranks });
    }
    let last = spec.train.len() % batch_size;
    if spec.sync_bn && ranks > 1 && last > 0 && last < ranks {
        return Err(RunError::LastBatchBelowRanks { last, ranks });
    }
    check_classes(spec, observer)
}

/// The run's checkpoint: weights, optimizer state and the position in the run.
fn checkpoint_file(spec: &RunSpec) -> PathBuf {
    spec.out.join("checkpoint.safetensors")
}

/// Rank 0's weights, BN statistics and optimizer state, and where its run starts (epoch
/// and position in it), on every rank.
async fn share_start(
    gpu: &Gpu,
    trainer: &mut Trainer<'_>,
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
    broadcast_tensors(gpu, group, tensors).await?;
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

/// Refuses a batch and image size that would not fit the adapter (a tensor larger than
/// one buffer may be, or more memory than the adapter has), naming the tensor and the
/// largest (global) batch that fits; otherwise reports the estimate.
fn check_memory(
    gpu: &Gpu,
    spec: &RunSpec,
    ranks: usize,
    observer: &mut dyn Observer,
) -> RunResult<()> {
    use crate::budget::{largest_fitting_batch, plan_training, RunShape};
    // In a data-parallel run the limit is on each rank's share of the batch.
    let batch = spec.batch_size.div_ceil(ranks);
    let shape = RunShape {
        config: spec.config.clone(),
        mode: spec.mode,
        freeze_features: spec.freeze_features,
        image_size: spec.image_size,
    };
    let memory = gpu.memory_bytes;
    match plan_training(gpu, &shape, batch, memory)? {
        Ok(plan) => {
            observer.event(&RunEvent::MemoryPlanned(MemoryPlan {
                peak_bytes: plan.peak_bytes,
                state_bytes: plan.state_bytes,
                largest_tensor: plan.largest.1.clone(),
                largest_bytes: plan.largest.0,
                max_binding_bytes: gpu.max_binding_bytes(),
                memory_bytes: memory,
            }));
            Ok(())
        }
        Err(why) => {
            let fits = largest_fitting_batch(gpu, &shape, batch, memory)?;
            Err(RunError::BatchDoesNotFit {
                batch_size: spec.batch_size,
                image_size: spec.image_size,
                adapter: gpu.info.name.clone(),
                reason: Box::new(why),
                largest: fits.map(|b| b * ranks),
            })
        }
    }
}

/// The architecture of the model preset `name` for `num_classes` classes, or
/// [`RunError::UnknownModel`] listing the presets.
pub fn preset_config(name: &str, num_classes: usize) -> RunResult<ModelConfig> {
    crate::models::preset(name, num_classes).ok_or_else(|| RunError::UnknownModel {
        name: name.to_string(),
        choices: crate::models::preset_names(),
    })
}

/// Optimizer step `step` failed on the device: for a lost device, what was kept.
fn step_failure(error: &GpuError, step: u32, spec: &RunSpec) -> RunError {
    match error {
        GpuError::DeviceLost(_) => {
            let checkpoint = checkpoint_file(spec);
            RunError::DeviceLost {
                error: error.clone(),
                step,
                written: checkpoint.exists(),
                checkpoint,
            }
        }
        other => RunError::Device(other.clone()),
    }
}

/// A failed checkpoint write or evaluation: the lost device when the device is gone, else
/// the failure as it is.
fn device_lost_or(gpu: &Gpu, failure: RunError, trainer: &Trainer, spec: &RunSpec) -> RunError {
    match gpu.check_device_error() {
        Err(e @ GpuError::DeviceLost(_)) => step_failure(&e, trainer.opt.step + 1, spec),
        _ => failure,
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
    let normalization = spec.dataset.normalization().to_metadata();
    meta.insert("normalization".into(), normalization);
    meta
}

/// Refuses data a classifier cannot be trained on (one class, or a class with no training
/// image) and reports the classes the validation split leaves out.
fn check_classes(spec: &RunSpec, observer: &mut dyn Observer) -> RunResult<()> {
    let classes = spec.dataset.classes();
    if classes.len() < 2 {
        return Err(RunError::TooFewClasses {
            data: spec.data.clone(),
            classes: classes.to_vec(),
        });
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
        return Err(RunError::ClassesWithoutTrainingImage {
            data: spec.data.clone(),
            classes: untrained.iter().map(|c| c.to_string()).collect(),
        });
    }
    let unvalidated = missing(&count(&spec.val));
    if spec.val.is_empty() {
        observer.event(&RunEvent::ValidationIncomplete { classes: vec![] });
    } else if !unvalidated.is_empty() {
        let classes = unvalidated.iter().map(|c| c.to_string()).collect();
        observer.event(&RunEvent::ValidationIncomplete { classes });
    }
    Ok(())
}

/// The model's state_dict with the run's metadata (what `best.safetensors` holds).
pub async fn save_weights(
    gpu: &Gpu,
    model: &dyn Model,
    spec: &RunSpec,
    path: &Path,
    epoch: usize,
) -> RunResult<()> {
    let entries = model.store().state_dict(gpu).await?;
    weights::write(path, entries, run_metadata(spec, epoch)).map_err(RunError::from)
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
async fn save_checkpoint(
    gpu: &Gpu,
    t: &Trainer<'_>,
    spec: &RunSpec,
    epoch: usize,
    partial: Option<&EpochProgress>,
) -> RunResult<()> {
    let mut entries = t.model.store().state_dict(gpu).await?;
    entries.extend(t.opt.state_dict(gpu, t.model.params()).await?);
    let mut meta = run_metadata(spec, epoch);
    if let Some(p) = partial {
        p.to_metadata(&mut meta);
    }
    weights::write(&checkpoint_file(spec), entries, meta).map_err(RunError::from)
}

/// What [`evaluate_split`] measured.
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// Counts by (true class, predicted class).
    pub confusion: Vec<Vec<usize>>,
}

/// Mean loss, accuracy and confusion matrix of `model` over `indices` of `dataset`,
/// reporting progress to `observer`.
pub async fn evaluate_split(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    (batch_size, size): (usize, usize),
    observer: &mut dyn Observer,
) -> RunResult<Evaluation> {
    let ([loss_sum, correct, seen], confusion) =
        evaluate_into(gpu, model, dataset, indices, (batch_size, size), observer).await?;
    if seen == 0.0 {
        return Err(RunError::NoValidationImage);
    }
    Ok(Evaluation {
        loss: loss_sum / seen,
        accuracy: correct / seen,
        confusion,
    })
}

/// The summed loss, correct predictions and images, and the confusion matrix (`[label]
/// [prediction]`), of `model` over `indices` (the sums add up over the ranks' shares of a
/// split), reporting progress to `observer`.
async fn evaluate_into(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    (batch_size, size): (usize, usize),
    observer: &mut dyn Observer,
) -> RunResult<([f64; 3], Vec<Vec<usize>>)> {
    let k = dataset.classes().len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loader = Loader::new(
        dataset.clone(),
        indices.to_vec(),
        LoaderOptions::batches_of(batch_size),
    );
    observer.event(&RunEvent::ValidationStarted {
        images: indices.len(),
    });
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    for batch in loader.by_ref() {
        let r = evaluate(gpu, model, &batch.images, &batch.labels, size).await?;
        loss_sum += r.loss * r.count as f64;
        correct += r.correct;
        seen += r.count;
        for (p, l) in r.predictions.iter().zip(&batch.labels) {
            confusion[*l][*p] += 1;
        }
        observer.event(&RunEvent::ValidationProgress { images: r.count });
    }
    observer.event(&RunEvent::ValidationDone);
    for skipped in loader.take_skipped() {
        observer.event(&RunEvent::FileSkipped { skipped });
    }
    Ok(([loss_sum, correct as f64, seen as f64], confusion))
}

/// What a weight file's metadata says about its run.
pub struct RunInfo {
    pub classes: Option<Vec<String>>,
    pub image_size: Option<usize>,
    /// `embedded:<images>:<seed>` for the built-in dataset, else the data folder.
    pub data: Option<String>,
    /// The input normalisation the weights were trained with: the recorded one, else the
    /// family's ([`ModelConfig::normalization`]).
    pub normalization: Normalization,
}

/// Loads a weights or checkpoint file: the architecture comes from the tensor names and
/// shapes, class names and image size from the metadata when present.
pub fn load_model(gpu: &Gpu, path: &Path) -> RunResult<(Box<dyn Model>, RunInfo)> {
    let file = TensorFile::read(path)?;
    let config = infer_config(&file)?;
    let mut model = config.build(gpu, 0)?;
    model.store_mut().load(gpu, &file, &["optim."])?;
    let meta = &file.metadata;
    let info = RunInfo {
        classes: meta
            .get("classes")
            .map(|c| c.lines().map(String::from).collect()),
        image_size: meta.get("image_size").and_then(|s| s.parse().ok()),
        data: meta.get("data").cloned(),
        normalization: recorded_normalization(meta).unwrap_or(config.normalization()),
    };
    Ok((model, info))
}

/// The input normalisation of the weights in `path` ([`RunInfo::normalization`]): what
/// `--init` trains with, so fine-tuning sees inputs as the weights were trained on them.
pub fn weights_normalization(path: &Path) -> RunResult<Normalization> {
    match recorded_normalization(&read_metadata(path)) {
        Some(n) => Ok(n),
        None => Ok(infer_config(&TensorFile::read(path)?)?.normalization()),
    }
}

fn recorded_normalization(meta: &HashMap<String, String>) -> Option<Normalization> {
    meta.get("normalization")
        .and_then(|n| Normalization::from_metadata(n))
}

/// [`RunSpec::init`]: loads weights of the same architecture into `model`, trained on
/// inputs normalised as `data` (else [`RunError::NormalizationMismatch`]). When the file's
/// classifier is for another class count, the model keeps its freshly initialised one, and
/// the event says so.
pub fn init_from(
    gpu: &Gpu,
    model: &mut dyn Model,
    path: &Path,
    data: Normalization,
) -> RunResult<RunEvent> {
    let file = TensorFile::read(path)?;
    let theirs = infer_config(&file)?;
    let ours = model.config();
    if theirs.with_num_classes(ours.num_classes()) != ours {
        return Err(RunError::InitMismatch {
            path: path.to_path_buf(),
            file_model: theirs.to_string(),
            model: ours.to_string(),
        });
    }
    let weights = recorded_normalization(&file.metadata).unwrap_or(theirs.normalization());
    if weights != data {
        return Err(RunError::NormalizationMismatch {
            path: path.to_path_buf(),
            weights,
            data,
        });
    }
    let head = model.classifier_prefix();
    let replace = theirs.num_classes() != ours.num_classes();
    let keep = replace.then_some(head);
    model
        .store_mut()
        .load_except(gpu, &file, &["optim."], keep)?;
    Ok(RunEvent::Initialised {
        file: path.to_path_buf(),
        replaced_classifier: replace.then(|| events::ReplacedClassifier {
            prefix: head.to_string(),
            classes_before: theirs.num_classes(),
            classes_now: ours.num_classes(),
        }),
    })
}

/// Writes two validation images per class of the embedded dataset as PNGs, for
/// `train predict` to try.
pub fn write_samples(data: &Synthetic, val: &[usize], dir: &Path) -> RunResult<()> {
    std::fs::create_dir_all(dir).map_err(RunError::file(dir))?;
    let mut written = vec![0usize; data.classes().len()];
    for &i in val {
        let label = data.label(i);
        if written[label] >= 2 {
            continue;
        }
        written[label] += 1;
        let (img, _) = data.image(i);
        let path = dir.join(format!("{}_{i}.png", data.classes()[label]));
        img.save(&path).map_err(RunError::file(&path))?;
    }
    Ok(())
}
