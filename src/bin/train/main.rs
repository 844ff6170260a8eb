//! `train`: DenseNet and ResNet training on image folders, on any WebGPU adapter.
//!
//! This file parses the command line (clap), owns the process (signals, environment
//! variables, exit codes) and calls the library: the run itself is `densenet_wgpu::run`,
//! the study `densenet_wgpu::study`; `render` shows a run's events. Usage errors (an
//! unknown or misspelled option, a malformed value) exit with code 2, failures with code 1,
//! an interrupted run with 130 (SIGINT) or 143 (SIGTERM).

mod files;
mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use densenet_wgpu::data::folder::{load_image, Augmentation, ImageFolder};
use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::{split, Dataset, Normalization};
use densenet_wgpu::dist::{self, Collective, SingleProcess};
use densenet_wgpu::gpu::{DeviceOptions, Gpu};
use densenet_wgpu::metrics;
use densenet_wgpu::models::{self, BlockMode};
use densenet_wgpu::ops::conv2d;
use densenet_wgpu::run::{self, RunError, RunResult, RunSpec, ScheduleSpec};
use densenet_wgpu::study;
use densenet_wgpu::train::evaluate;
use densenet_wgpu::verify::verify_golden;

/// Train DenseNet and ResNet on any WebGPU adapter. Without a subcommand: train a small
/// DenseNet on the embedded synthetic dataset (6 procedural classes, no download).
#[derive(Parser)]
#[command(
    name = "train",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "environment: DENSENET_WGPU_ADAPTER=<name substring> picks an adapter; \
                  DENSENET_WGPU_NO_SUBGROUPS=1 keeps kernels off their subgroup variants; \
                  DENSENET_WGPU_CONV=<kernel>[,<kernel>...] forces conv2d kernels (docs/kernels.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    default: DefaultArgs,
}

#[derive(Subcommand)]
enum Command {
    // clap's text, not rustdoc: the angle brackets are meant literally.
    #[command(about = "Train on DIR/<class>/<image files>")]
    Fit(FitArgs),
    /// Evaluate weights on an image folder (or on the embedded validation split they were
    /// trained on).
    Eval(EvalArgs),
    /// Classify images.
    Predict(PredictArgs),
    /// Check one training step against a PyTorch reference file.
    VerifyTorch(VerifyArgs),
    /// The DenseNet-vs-ResNet study: measures each model's cost, trains each with identical
    /// settings, writes the report and its figures.
    Compare(CompareArgs),
    /// Print the adapter that would be used.
    Info,
}

/// Training options shared by the default run, `fit` and `compare`; unset ones take the
/// command's defaults.
#[derive(Args, Clone)]
struct TrainOpts {
    /// The architecture (a preset of the registry).
    #[arg(long, value_name = "NAME", value_parser = presets())]
    model: Option<String>,
    /// Images are resized to N x N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    image_size: Option<u32>,
    /// Images per step.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// Adam learning rate.
    #[arg(long, value_name = "X")]
    lr: Option<f64>,
    #[arg(
        long,
        value_name = "S",
        help = "constant | inverse-time:DECAY | cosine[:WARMUP_EPOCHS]"
    )]
    schedule: Option<ScheduleSpec>,
    /// L2 weight decay (decoupled with --adamw).
    #[arg(long, value_name = "X", default_value_t = 0.0)]
    weight_decay: f64,
    /// AdamW: weight decay applied to the weights, not added to the gradient.
    #[arg(long)]
    adamw: bool,
    /// Split, shuffle and initialisation seed.
    #[arg(long, value_name = "N", default_value_t = 123)]
    seed: u64,
    /// Random resized crops and horizontal flips.
    #[arg(long)]
    augment: bool,
    /// Random horizontal flips only.
    #[arg(long, conflicts_with = "augment")]
    flip: bool,
    /// Run folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from OUT/checkpoint.safetensors (mid-epoch too).
    #[arg(long)]
    resume: bool,
    /// Also checkpoint every M minutes within an epoch (0: only at epoch ends).
    #[arg(long, value_name = "M", default_value_t = 10.0)]
    checkpoint_minutes: f64,
    /// Also checkpoint every N steps within an epoch.
    #[arg(long, value_name = "N", default_value_t = 0)]
    checkpoint_steps: usize,
    /// Skip a batch whose loss or gradients are NaN or infinite (default: stop, naming
    /// the step, the batch's files and the first such parameter).
    #[arg(long)]
    skip_nonfinite: bool,
    /// Under mpirun: batch-norm statistics over the global batch (all ranks) rather than
    /// each rank's share, like PyTorch's SyncBatchNorm.
    #[arg(long)]
    sync_bn: bool,
    /// Materialise every BN+ReLU output and concatenation (default: memory-efficient,
    /// recomputed in backward).
    #[arg(long)]
    plain: bool,
    /// Start from these weights (same architecture); a classifier for another class count
    /// is replaced by a freshly initialised one.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Train only the classifier (frozen batch norms use their running statistics).
    #[arg(long)]
    freeze_features: bool,
}

#[derive(Args)]
struct DefaultArgs {
    /// Images in the embedded dataset.
    #[arg(long, value_name = "N", default_value_t = 3000)]
    images: usize,
    #[command(flatten)]
    train: TrainOpts,
}

#[derive(Args)]
struct FitArgs {
    /// One sub-folder per class, any of jpg/png/bmp/webp.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Validation fraction.
    #[arg(long, value_name = "X", default_value_t = 0.2)]
    val_split: f64,
    #[command(flatten)]
    train: TrainOpts,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Image folder (default: the embedded validation split the weights were trained on).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[arg(long, value_name = "N")]
    image_size: Option<usize>,
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
    /// Evaluate only this validation split of --data (with --seed).
    #[arg(long, value_name = "X")]
    val_split: Option<f64>,
    #[arg(long, value_name = "N", default_value_t = 123)]
    seed: u64,
}

#[derive(Args)]
struct PredictArgs {
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    #[arg(long, value_name = "N")]
    image_size: Option<usize>,
    /// Classes shown per image.
    #[arg(long, value_name = "K", default_value_t = 3)]
    top: usize,
    /// Decimal places of the percentages.
    #[arg(long, value_name = "D", default_value_t = 1)]
    digits: usize,
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

#[derive(Args)]
struct VerifyArgs {
    /// A reference file (`scripts/make_golden.py` makes them).
    golden: PathBuf,
    #[arg(long)]
    plain: bool,
}

#[derive(Args)]
struct CompareArgs {
    /// One sub-folder per class.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Models measured and trained.
    #[arg(
        long,
        value_name = "A,B,...",
        value_delimiter = ',',
        default_value = "densenet121,densenet169,resnet18,resnet50"
    )]
    models: Vec<String>,
    /// Models only measured (more depths for the memory figure).
    #[arg(
        long,
        value_name = "A,B,...",
        value_delimiter = ',',
        default_value = "densenet201,resnet34,resnet101"
    )]
    cost_only: Vec<String>,
    /// Timed steps per model and block mode.
    #[arg(long, value_name = "N", default_value_t = 3)]
    cost_steps: usize,
    /// The report (figures go to img/ beside it).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "docs/densenet-vs-resnet.md"
    )]
    doc: PathBuf,
    #[command(flatten)]
    train: TrainOpts,
}

/// `--model`'s values: the preset registry, each with its one-line description.
fn presets() -> clap::builder::PossibleValuesParser {
    let values = models::PRESETS
        .iter()
        .map(|p| clap::builder::PossibleValue::new(p.name).help(p.about));
    clap::builder::PossibleValuesParser::new(values)
}

/// Per-command defaults of the training options.
struct Defaults {
    model: &'static str,
    image_size: usize,
    batch_size: usize,
    epochs: usize,
    lr: f64,
    schedule: ScheduleSpec,
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Started by mpirun (with the `mpi` feature): one rank of a data-parallel run.
    let group = dist::init();
    // Training commands stop gracefully on the first Ctrl-C; the others keep the default.
    let training = matches!(
        cli.command,
        None | Some(Command::Fit(_)) | Some(Command::Compare(_))
    );
    if training {
        if let Err(e) = handle_interrupts() {
            eprintln!("error: cannot handle SIGINT/SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Every convolution runs on this thread, so forcing kernels here covers the whole run.
    let _forced = match conv2d::kernels_from_env() {
        Ok(kernels) => conv2d::force(&kernels),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let parallel = training && !matches!(cli.command, Some(Command::Compare(_)));
    let result = match cli.command {
        _ if group.size() > 1 && !parallel => Err(Failure::Usage(
            "only `fit` and the default run train data-parallel; run other commands without mpirun"
                .into(),
        )),
        None => cmd_default(&cli.default, group.as_ref()).map_err(Failure::Run),
        Some(Command::Fit(a)) => {
            let d = fit_defaults(&a.data);
            folder_spec(&a.data, a.val_split, &a.train, d, group.as_ref())
                .and_then(|spec| fit(spec, group.as_ref()))
                .map_err(Failure::Run)
        }
        Some(Command::Eval(a)) => cmd_eval(&a),
        Some(Command::Predict(a)) => cmd_predict(&a).map_err(Failure::Run),
        Some(Command::VerifyTorch(a)) => cmd_verify(&a).map_err(Failure::Run),
        Some(Command::Compare(a)) => cmd_compare(&a),
        Some(Command::Info) => open_gpu().map_err(Failure::Run).map(|gpu| {
            println!("{}", gpu.describe());
            let on = if gpu.subgroups() { "on" } else { "off" };
            println!("subgroup kernel variants: {on}");
            println!(
                "largest buffer: {}; memory: {}",
                densenet_wgpu::budget::mib(gpu.max_binding_bytes()),
                gpu.memory_bytes
                    .map_or("unknown".into(), densenet_wgpu::budget::mib)
            );
            ExitCode::SUCCESS
        }),
    };
    let e = match result {
        Ok(code) => return code,
        Err(Failure::Usage(message)) if group.size() > 1 => {
            eprintln!("error: rank {}: {message}", group.rank());
            group.abort(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
        Err(Failure::Run(e)) => e,
    };
    match interrupt_exit_code(&e) {
        // The run said what it saved and how to resume.
        Some(code) => ExitCode::from(code),
        None if group.size() > 1 => {
            // The other ranks may be waiting in a collective: end them all.
            eprintln!("error: rank {}: {}", group.rank(), render::error(&e));
            group.abort(1)
        }
        None if matches!(e, RunError::DeviceLost { .. }) => {
            eprintln!("error: {e}.\nresume with: {}", resume_command(group.size()));
            ExitCode::FAILURE
        }
        None => {
            eprintln!("error: {}", render::error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: the library's error, or one of this program's own checks of its
/// arguments, in its words.
#[derive(Debug)]
enum Failure {
    Run(RunError),
    Usage(String),
}

impl<E> From<E> for Failure
where
    RunError: From<E>,
{
    fn from(e: E) -> Self {
        Failure::Run(e.into())
    }
}

/// Which of SIGINT and SIGTERM arrived (see [`handle_interrupts`]).
static SIGINT_SEEN: AtomicBool = AtomicBool::new(false);
static SIGTERM_SEEN: AtomicBool = AtomicBool::new(false);

/// Set by the first SIGINT or SIGTERM: the run's cancellation flag.
fn stop_requested() -> &'static Arc<AtomicBool> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// From now on the first SIGINT or SIGTERM asks the run to stop after the current step: it
/// writes a checkpoint, and the binary prints the command that resumes and exits with
/// [`interrupt_exit_code`]. A second signal ends the process at once (code 130 for SIGINT,
/// 143 for SIGTERM).
fn handle_interrupts() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let any = stop_requested();
    let watch = |signal: i32, code: i32| -> std::io::Result<()> {
        // Registered first, so it sees `any` as the earlier signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, code, Arc::clone(any))?;
        signal_hook::flag::register(signal, Arc::clone(any))?;
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
    watch(SIGINT, 130).and_then(|_| watch(SIGTERM, 143))
}

/// The exit code of a run that stopped on a signal: 130 after SIGINT, 143 after SIGTERM,
/// and 130 on a rank that stopped because another rank was interrupted.
fn interrupt_exit_code(e: &RunError) -> Option<u8> {
    if SIGTERM_SEEN.load(Ordering::SeqCst) && !SIGINT_SEEN.load(Ordering::SeqCst) {
        Some(143)
    } else if SIGINT_SEEN.load(Ordering::SeqCst) || matches!(e, RunError::Interrupted { .. }) {
        Some(130)
    } else {
        None
    }
}

/// The command line that continues this run: the same arguments with `--resume` (under
/// `mpirun -n N` for a data-parallel run; any N resumes it).
fn resume_command(ranks: usize) -> String {
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

/// Environment variable choosing where a data-parallel run sums its gradient buckets:
/// `1` during backward, on a second thread, `0` after backward ([`RunSpec::overlap`]).
const OVERLAP_ENV: &str = "DENSENET_WGPU_OVERLAP";

/// Environment variable with the gradient bucket size of a data-parallel run, in bytes
/// ([`RunSpec::bucket_bytes`]).
const BUCKET_BYTES_ENV: &str = "DENSENET_WGPU_BUCKET_BYTES";

/// Environment variable: `1` prints the device time of every op after each training step
/// ([`RunSpec::profile`]).
const PROFILE_ENV: &str = "DENSENET_WGPU_PROFILE";

/// Trains `spec` as this process's part of `group`, showing the run on the terminal.
/// Rank 0 writes metrics.csv and curves.png, and hands the run the metrics so far when it
/// resumes.
fn fit(mut spec: RunSpec, group: &dyn Collective) -> RunResult<ExitCode> {
    let mut terminal = render::Terminal::new(group.is_writer(), resume_command(group.size()));
    if group.is_writer() {
        spec.history = files::history_to_resume(&spec.out, spec.resume)?;
        terminal.files = Some(files::RunFiles::default());
    }
    pollster::block_on(run::fit_as_rank(&spec, group, &mut terminal)).map(|_| ExitCode::SUCCESS)
}

/// Opens the adapter (`DENSENET_WGPU_ADAPTER` picks one) and says which it is.
fn open_gpu() -> RunResult<Gpu> {
    let gpu = Gpu::open(&DeviceOptions::from_env())?;
    eprintln!("adapter: {}", gpu.describe());
    Ok(gpu)
}

fn fit_defaults(data: &Path) -> Defaults {
    let name = data
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    Defaults {
        model: "densenet121",
        image_size: 224,
        batch_size: 8,
        epochs: 10,
        lr: 1e-3,
        schedule: ScheduleSpec::Constant,
        out: Path::new("runs").join(name),
    }
}

/// The run's settings: command-line options over the command's defaults.
fn run_spec(
    o: &TrainOpts,
    dataset: Arc<dyn Dataset>,
    (train, val): (Vec<usize>, Vec<usize>),
    image_size: usize,
    d: Defaults,
) -> RunResult<RunSpec> {
    let preset = o.model.clone().unwrap_or_else(|| d.model.to_string());
    let config = run::preset_config(&preset, dataset.classes().len())?;
    Ok(RunSpec {
        dataset,
        train,
        val,
        config,
        preset,
        init: o.init.clone(),
        freeze_features: o.freeze_features,
        image_size,
        batch_size: o.batch_size.map_or(d.batch_size, |v| v as usize),
        epochs: o.epochs.map_or(d.epochs, |v| v as usize),
        lr: o.lr.unwrap_or(d.lr),
        schedule: o.schedule.unwrap_or(d.schedule),
        weight_decay: o.weight_decay,
        adamw: o.adamw,
        seed: o.seed,
        augment: if o.augment {
            Some("random crops + flips")
        } else if o.flip {
            Some("flips")
        } else {
            None
        },
        out: o.out.clone().unwrap_or(d.out),
        resume: o.resume,
        device: DeviceOptions::from_env(),
        mode: if o.plain {
            BlockMode::Plain
        } else {
            BlockMode::MemoryEfficient
        },
        data: String::new(),
        checkpoint_minutes: o.checkpoint_minutes,
        checkpoint_steps: o.checkpoint_steps,
        skip_nonfinite: o.skip_nonfinite,
        sync_bn: o.sync_bn,
        after_step: None,
        cancel: Some(Arc::clone(stop_requested())),
        overlap: match std::env::var(OVERLAP_ENV).as_deref() {
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            _ => None,
        },
        bucket_bytes: std::env::var(BUCKET_BYTES_ENV)
            .ok()
            .and_then(|v| v.parse().ok()),
        profile: std::env::var(PROFILE_ENV).is_ok_and(|v| v == "1"),
        history: Vec::new(),
    })
}

fn cmd_default(a: &DefaultArgs, group: &dyn Collective) -> RunResult<ExitCode> {
    let writer = group.is_writer();
    let o = &a.train;
    let image_size = o.image_size.map_or(32, |v| v as usize);
    let (len, seed) = (a.images, o.seed);
    let defaults = Defaults {
        model: "densenet-tiny",
        image_size,
        batch_size: 32,
        epochs: 6,
        lr: 3e-3,
        schedule: ScheduleSpec::Cosine { warmup_epochs: 0.0 },
        out: PathBuf::from("runs/default"),
    };
    let normalization = normalization(o, defaults.model, group)?;
    let dataset = Synthetic::new(len, image_size, seed).with_normalization(normalization);
    let dataset: Arc<dyn Dataset> = Arc::new(dataset);
    let (train, val) = split(len, 0.2, seed)?;
    if writer {
        println!(
        "embedded dataset: {len} procedural {image_size}x{image_size} images of {} classes ({}), {} train / {} validation",
        dataset.classes().len(),
        dataset.classes().join(", "),
        train.len(),
        val.len()
    );
    }
    let mut spec = run_spec(o, dataset, (train, val.clone()), image_size, defaults)?;
    spec.data = format!("embedded:{len}:{seed}");
    let samples = Synthetic::new(len, image_size, seed);
    if writer {
        run::write_samples(&samples, &val, &spec.out.join("samples"))?;
    }
    fit(spec, group)
}

/// The input normalisation a run trains with: that of the `--init` weights (recorded, or
/// their family's), else the family's of the model (`--model`, else `default_model`).
fn normalization(
    o: &TrainOpts,
    default_model: &str,
    group: &dyn Collective,
) -> RunResult<Normalization> {
    if let Some(init) = &o.init {
        // Only the first rank reads --init (the others may not have the file); it sends
        // the normalisation as a sum to which every other rank adds zeros.
        let mut values = [0.0f64; 6];
        if group.is_writer() {
            let n = run::weights_normalization(init)?;
            for c in 0..3 {
                (values[c], values[3 + c]) = (n.mean[c] as f64, n.std[c] as f64);
            }
        }
        group.all_reduce_sum_f64(&mut values);
        let channel = |i: usize| values[i] as f32;
        return Ok(Normalization {
            mean: [0, 1, 2].map(channel),
            std: [3, 4, 5].map(channel),
        });
    }
    let preset = o.model.as_deref().unwrap_or(default_model);
    Ok(run::preset_config(preset, 2)?.normalization())
}

/// A run on an image folder; `d.image_size` applies unless `--image-size` is given.
fn folder_spec(
    data: &Path,
    val_split: f64,
    o: &TrainOpts,
    d: Defaults,
    group: &dyn Collective,
) -> RunResult<RunSpec> {
    let writer = group.is_writer();
    let image_size = o.image_size.map_or(d.image_size, |v| v as usize);
    let (folder, warnings) = ImageFolder::open(data, image_size)?;
    for w in warnings.iter().filter(|_| writer) {
        eprintln!("warning: {w}");
    }
    let folder = folder
        .with_augmentation(if o.augment {
            Augmentation::CropFlip
        } else {
            Augmentation::Flip
        })
        .with_normalization(normalization(o, d.model, group)?);
    let seed = o.seed;
    let (train, val) = split(folder.len(), val_split, seed)?;
    if writer {
        println!(
            "data: {} — {} images, {} classes ({}); {} train / {} validation (seed {seed})",
            data.display(),
            folder.len(),
            folder.classes().len(),
            folder.classes().join(", "),
            train.len(),
            val.len()
        );
    }
    let mut spec = run_spec(o, Arc::new(folder), (train, val), image_size, d)?;
    spec.data = data.display().to_string();
    Ok(spec)
}

fn cmd_compare(a: &CompareArgs) -> Result<ExitCode, Failure> {
    if a.train.model.is_some() {
        return Err(Failure::Usage(
            "compare takes --models A,B,... (not --model)".into(),
        ));
    }
    // The study trains every model with random crops and flips, cosine-decayed.
    let defaults = Defaults {
        model: "densenet121",
        image_size: 32,
        batch_size: 32,
        epochs: 8,
        lr: 1e-3,
        schedule: ScheduleSpec::Cosine { warmup_epochs: 0.0 },
        out: Path::new("runs").join("compare"),
    };
    let opts = TrainOpts {
        augment: true,
        flip: false,
        ..a.train.clone()
    };
    let base = folder_spec(&a.data, 0.2, &opts, defaults, &SingleProcess)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = study::Plan {
        base,
        models: a.models.clone(),
        cost_only: a
            .cost_only
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        cost_steps: a.cost_steps,
        doc: a.doc.clone(),
        resume: a.train.resume,
        histories: Default::default(),
        command: format!("train {}", args.join(" ")),
    };
    for name in &plan.models {
        let history = files::history_to_resume(&plan.base.out.join(name), plan.resume)?;
        plan.histories.insert(name.clone(), history);
    }
    let mut terminal = render::Terminal::new(true, resume_command(1));
    terminal.files = Some(files::RunFiles::default());
    pollster::block_on(study::compare(&plan, &mut terminal))?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_eval(a: &EvalArgs) -> Result<ExitCode, Failure> {
    let gpu = open_gpu()?;
    let (model, info) = run::load_model(&gpu, &a.weights)?;
    let image_size = a.image_size.or(info.image_size).unwrap_or(224);
    // The data: --data, else what the weights were trained on (the embedded dataset's
    // validation split for the default run).
    let embedded = info
        .data
        .as_deref()
        .and_then(|d| d.strip_prefix("embedded:"));
    let (dataset, indices, source): (Arc<dyn Dataset>, Vec<usize>, String) = match (
        &a.data, embedded,
    ) {
        (None, Some(spec)) => {
            let (len, seed) = spec
                .split_once(':')
                .and_then(|(l, s)| Some((l.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "{}: bad data metadata {spec:?}",
                        a.weights.display()
                    ))
                })?;
            let val = split(len, 0.2, seed)?.1;
            let source = format!("embedded dataset, validation split (seed {seed})");
            let data = Synthetic::new(len, image_size, seed).with_normalization(info.normalization);
            (Arc::new(data), val, source)
        }
        (None, None) => {
            return Err(Failure::Usage(format!(
                "--data is required: {} was not trained on the embedded dataset",
                a.weights.display()
            )))
        }
        (Some(data), _) => {
            let (folder, warnings) = ImageFolder::open(data, image_size)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if let Some(c) = &info.classes {
                if c != folder.classes() {
                    eprintln!(
                            "warning: class folders {:?} differ from the names stored with the weights {:?}",
                            folder.classes(),
                            c
                        );
                }
            }
            let indices: Vec<usize> = match a.val_split {
                Some(frac) => split(folder.len(), frac, a.seed)?.1,
                None => (0..folder.len()).collect(),
            };
            let folder = folder.with_normalization(info.normalization);
            (Arc::new(folder), indices, data.display().to_string())
        }
    };
    if dataset.classes().len() != model.num_classes() {
        return Err(Failure::Usage(format!(
            "{source} has {} classes but {} was trained for {}",
            dataset.classes().len(),
            a.weights.display(),
            model.num_classes()
        )));
    }
    let names = dataset.classes().to_vec();
    let mut terminal = render::Terminal::new(true, String::new());
    let e = pollster::block_on(run::evaluate_split(
        &gpu,
        model.as_ref(),
        &dataset,
        &indices,
        (a.batch_size, image_size),
        &mut terminal,
    ))?;
    println!(
        "{source}: {} images, loss={:.4} accuracy={:.4}",
        indices.len(),
        e.loss,
        e.accuracy
    );
    println!("{}", metrics::confusion_matrix_table(&names, &e.confusion));
    Ok(ExitCode::SUCCESS)
}

fn cmd_predict(a: &PredictArgs) -> RunResult<ExitCode> {
    let gpu = open_gpu()?;
    let (model, info) = run::load_model(&gpu, &a.weights)?;
    let image_size = a.image_size.or(info.image_size).unwrap_or(224);
    let top = a.top.min(model.num_classes());
    let names = info.classes.unwrap_or_else(|| {
        (0..model.num_classes())
            .map(|i| format!("class {i}"))
            .collect()
    });
    let mut failures = 0;
    for path in &a.images {
        let image = match load_image(path, image_size, &info.normalization) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
                continue;
            }
        };
        let r = pollster::block_on(evaluate(&gpu, model.as_ref(), &image, &[0], image_size))?;
        let mut ranked: Vec<(usize, f32)> = r.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = ranked[..top]
            .iter()
            .map(|(i, p)| {
                format!(
                    "{} {:.*}%",
                    names.get(*i).map(String::as_str).unwrap_or("?"),
                    a.digits,
                    p * 100.0
                )
            })
            .collect();
        println!("{}: {}", path.display(), shown.join(", "));
    }
    Ok(if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_verify(a: &VerifyArgs) -> RunResult<ExitCode> {
    let gpu = open_gpu()?;
    let mode = if a.plain {
        BlockMode::Plain
    } else {
        BlockMode::MemoryEfficient
    };
    let report = verify_golden(&gpu, &a.golden, mode)?;
    print!("{}", report.table());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
