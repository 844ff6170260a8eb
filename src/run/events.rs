//! What a run reports while it goes: typed events, handed to an [`Observer`].
//!
//! The library never writes to the terminal. The `train` binary renders these events as
//! its progress bars and lines; a program that embeds the library shows them its own way,
//! or ignores them ([`Silent`]).

use std::path::PathBuf;

use crate::metrics::EpochMetrics;
use crate::models::BlockMode;
use crate::tape::OpTime;
use crate::train::StepError;

/// Receives a run's events, in the order they happen.
pub trait Observer {
    fn event(&mut self, event: &RunEvent);
    /// A failure of the observer's own that ends the run (the `train` binary: a
    /// metrics.csv it could not write). The run asks after it reports its start and after
    /// each [`RunEvent::EpochDone`], before it writes that epoch's best weights and
    /// checkpoint, and returns the failure.
    fn failure(&mut self) -> Option<super::RunError> {
        None
    }
}

/// Any `FnMut(&RunEvent)` is an observer.
impl<F: FnMut(&RunEvent)> Observer for F {
    fn event(&mut self, event: &RunEvent) {
        self(event)
    }
}

/// An observer that ignores every event.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: &RunEvent) {}
}

/// One thing that happened in a run. Every rank of a data-parallel run reports its own;
/// [`RunEvent::Adapter`] says which rank it is.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// The device this process trains on.
    Adapter {
        /// What wgpu says of the adapter ([`crate::gpu::describe_adapter`] in one line).
        adapter: Box<wgpu::AdapterInfo>,
        /// This process's place in a data-parallel run (`None` for one process).
        rank: Option<RankPlace>,
    },
    /// The validation split holds no image at all (`classes` empty), or none of `classes`.
    ValidationIncomplete { classes: Vec<String> },
    /// The memory the run will need on the device, estimated before it starts.
    MemoryPlanned(MemoryPlan),
    /// Weights were loaded from `file` (`--init`).
    Initialised {
        file: PathBuf,
        /// The file's classifier had another class count: a fresh one replaced it.
        replaced_classifier: Option<ReplacedClassifier>,
    },
    /// Only the classifier trains; the features are frozen.
    FeaturesFrozen {
        classifier_prefix: String,
        trainable: usize,
        parameters: usize,
    },
    /// The run continues from a checkpoint, at `epoch` (0-based) after `batch` batches.
    Resumed {
        checkpoint: PathBuf,
        epoch: usize,
        batch: usize,
        step: u32,
        /// The metrics of the epochs before `epoch` ([`crate::run::RunSpec::history`]
        /// up to the checkpoint, with the run's epoch count).
        history: Vec<EpochMetrics>,
    },
    /// Training starts (or goes on after a resume) with these settings.
    Started(Box<RunSummary>),
    /// An epoch's training begins; `done` images of it were trained before a resume.
    EpochStarted {
        epoch: usize,
        epochs: usize,
        images: usize,
        done: usize,
    },
    /// An optimizer step was applied. `images` is this step's images; `mean_loss` and
    /// `accuracy` are over the epoch so far.
    StepDone {
        step: u32,
        images: usize,
        mean_loss: f64,
        accuracy: f64,
    },
    /// The device time of each op of the step just done ([`super::RunSpec::profile`]).
    StepProfiled { ops: Vec<OpTime> },
    /// A batch whose loss or gradients were not finite was skipped (nothing of it applied).
    BatchSkipped {
        error: StepError,
        files: Vec<String>,
    },
    /// The run stopped on request after `step`, with a checkpoint written.
    Interrupted {
        step: u32,
        epoch: usize,
        batch: usize,
        checkpoint: PathBuf,
    },
    /// The epoch's last step is done.
    EpochTrained,
    /// An item could not be used and was left out of its batch.
    FileSkipped { skipped: crate::data::Skipped },
    /// Validation over `images` images begins.
    ValidationStarted { images: usize },
    /// `images` more validation images were evaluated.
    ValidationProgress { images: usize },
    /// Validation is over.
    ValidationDone,
    /// An epoch ended: its metrics and what happened in it.
    EpochDone(Box<EpochReport>),
    /// The study measures a model's step time and memory (`steps` steps per block mode).
    CostStarted {
        model: String,
        steps: usize,
        batch_size: usize,
        image_size: usize,
    },
    /// The study measured a model in one block mode.
    CostMeasured {
        model: String,
        mode: BlockMode,
        step_ms: f64,
        peak_bytes: u64,
        parameters: usize,
        gflops_per_image: f64,
    },
    /// The study starts training `model` (its run's events follow).
    ModelTraining { model: String },
    /// The study wrote its report and its figures.
    ReportWritten { report: PathBuf, figures: PathBuf },
    /// The run is over; these are the files it wrote.
    Finished {
        checkpoint: PathBuf,
        /// The best validation accuracy, with which `best.safetensors` was written.
        best_val_acc: Option<f64>,
    },
}

/// The classifier `--init` left out, initialised afresh for another class count.
#[derive(Debug, Clone)]
pub struct ReplacedClassifier {
    /// The prefix of the classifier's tensor names.
    pub prefix: String,
    pub classes_before: usize,
    pub classes_now: usize,
}

/// A process's place in a data-parallel run.
#[derive(Debug, Clone, Copy)]
pub struct RankPlace {
    pub rank: usize,
    pub ranks: usize,
    pub local_rank: usize,
    pub pid: u32,
}

/// The device memory a run needs, against what the adapter allows.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub peak_bytes: u64,
    /// Parameters, gradients and Adam state.
    pub state_bytes: u64,
    pub largest_tensor: String,
    pub largest_bytes: u64,
    pub max_binding_bytes: u64,
    /// The adapter's memory, where it says.
    pub memory_bytes: Option<u64>,
}

/// The settings a run trains with, as [`RunEvent::Started`] reports them.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub preset: String,
    pub parameters: usize,
    pub mode: BlockMode,
    pub image_size: usize,
    pub batch_size: usize,
    /// How the batch is split over ranks (`None` for one process).
    pub data_parallel: Option<DataParallel>,
    pub epochs: usize,
    pub lr: f64,
    /// The learning-rate schedule (its `Display` is the command line's spelling:
    /// `cosine`, `inverse-time:0.5`, ...).
    pub schedule: super::ScheduleSpec,
    pub augmentation: Option<&'static str>,
    pub out: PathBuf,
}

/// How a data-parallel run shares its work.
#[derive(Debug, Clone)]
pub struct DataParallel {
    /// How many processes share the batch, and what carries their collectives.
    pub ranks: usize,
    pub transport: crate::dist::Transport,
    pub per_rank_batch: usize,
    pub sync_bn: bool,
    /// Gradients are summed during backward (else after it).
    pub overlap: bool,
}

/// What one epoch measured.
#[derive(Debug, Clone)]
pub struct EpochReport {
    pub metrics: EpochMetrics,
    /// Files skipped this epoch, over all ranks.
    pub files_skipped: usize,
    /// Batches skipped for non-finite values on this rank.
    pub nonfinite_skipped: usize,
    /// Mean all-reduce and exposed communication time per step, in milliseconds, of a
    /// data-parallel run.
    pub communication_ms: Option<crate::collective::Communication>,
    /// A data-parallel run's replica check: the ranks and the parameters' common hash.
    pub replicas: Option<(usize, u64)>,
}
