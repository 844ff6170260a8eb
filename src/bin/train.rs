//! `train`: DenseNet and ResNet training on image folders, on any WebGPU adapter.
//!
//! ```text
//! train                              train on the embedded synthetic dataset (no download)
//! train fit --data DIR [options]     train on a folder with one sub-folder per class
//! train eval --weights FILE --data DIR
//! train predict --weights FILE IMAGE...
//! train verify-torch GOLDEN.safetensors
//! train info                         print the adapter
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use densenet_wgpu::data::folder::{load_image, Augmentation, ImageFolder};
use densenet_wgpu::data::loader::Loader;
use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::{split, Dataset};
use densenet_wgpu::metrics::{self, EpochMetrics};
use densenet_wgpu::models::{self, BlockMode, Model, ModelConfig};
use densenet_wgpu::ops::adam::AdamConfig;
use densenet_wgpu::optim::{Adam, Schedule};
use densenet_wgpu::progress::Progress;
use densenet_wgpu::rng::Rng;
use densenet_wgpu::study;
use densenet_wgpu::train::{evaluate, Trainer};
use densenet_wgpu::verify::verify_golden;
use densenet_wgpu::weights::{self, infer_config, TensorFile};
use densenet_wgpu::Gpu;

const USAGE: &str = "\
usage:
  train [options]                        train a small DenseNet on the embedded synthetic
                                         dataset (6 procedural classes, no download);
                                         the fit options below apply (--model resnet18, ...)
  train fit --data DIR [options]         train on DIR/<class>/<image files>
      --model NAME        densenet121 (default), densenet169, densenet201, densenet-bc,
                          densenet-tiny, resnet18, resnet34, resnet50, resnet101, resnet152
      --init FILE         start from these weights (same architecture, e.g. torchvision's
                          ImageNet weights); a classifier for another class count is
                          replaced by a freshly initialised one
      --freeze-features   train only the classifier (frozen BNs use running statistics)
      --image-size N      images are resized to N x N (default 224)
      --batch-size N      default 8
      --epochs N          default 10
      --lr X              Adam learning rate (default 1e-3)
      --schedule S        constant (default) | inverse-time:DECAY | cosine[:WARMUP_EPOCHS]
      --weight-decay X    L2 weight decay (default 0); --adamw makes it decoupled
      --val-split X       validation fraction (default 0.2)
      --seed N            split / shuffle / init seed (default 123)
      --augment           random resized crops and horizontal flips
      --flip              random horizontal flips only
      --out DIR           run folder (default runs/<data folder name>)
      --resume            continue from DIR/checkpoint.safetensors (mid-epoch too)
      --checkpoint-minutes M  also checkpoint every M minutes within an epoch (default 10, 0: off)
      --plain             materialise every BN+ReLU output and concatenation
                          (default: memory-efficient, recomputed in backward)
  train eval --weights FILE [--data DIR] [--image-size N] [--batch-size N]
                          (no --data: the data the weights were trained on, when that was
                          the embedded dataset: its validation split)
                          [--val-split X --seed N: evaluate only that validation split]
  train predict --weights FILE [--image-size N] [--top K] IMAGE...
  train verify-torch GOLDEN.safetensors [--plain]
  train compare --data DIR [options]     the DenseNet-vs-ResNet study: measures each model's
                                         cost, trains each with identical settings, writes
                                         docs/densenet-vs-resnet.md and its figures
      --models A,B,...    default densenet121,densenet169,resnet18,resnet50
      --cost-only A,...   also measure these, without training (default densenet201,
                          resnet34,resnet101: more depths for the memory figure)
      --image-size N      default 32 (the lavapipe recipe; 224 on a GPU)
      --epochs N          default 8;  --batch-size N  default 32;  --lr X  default 1e-3
      --schedule S        default cosine;  --seed N  default 123
      --cost-steps N      timed steps per model and block mode (default 3)
      --out DIR           run folders (default runs/compare/<model>)
      --doc FILE          the report (default docs/densenet-vs-resnet.md; figures go to
                          img/ beside it)
      --resume            continue unfinished runs from their checkpoints
  train info                             print the adapter that would be used

environment: DENSENET_WGPU_ADAPTER=<name substring> picks an adapter.";

type CliResult<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> CliResult<i32> {
    let (cmd, rest) = match args.first().map(String::as_str) {
        None => ("default", &args[..0]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            return Ok(0);
        }
        // `train --epochs 3 ...`: the default run with options.
        Some(c) if c.starts_with("--") => ("default", args),
        Some(c) => (c, &args[1..]),
    };
    let opts = Opts::parse(rest)?;
    match cmd {
        "default" => cmd_default(&opts),
        "fit" => cmd_fit(&opts),
        "eval" => cmd_eval(&opts),
        "predict" => cmd_predict(&opts),
        "verify-torch" => cmd_verify(&opts),
        "compare" => cmd_compare(&opts),
        "info" => {
            let gpu = open_gpu()?;
            println!("{}", gpu.describe());
            println!(
                "subgroup kernel variants: {}",
                if gpu.subgroups() { "on" } else { "off" }
            );
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// `--key value` options, `--flag`s and positional arguments.
struct Opts {
    values: HashMap<String, String>,
    flags: Vec<String>,
    positional: Vec<String>,
}

const FLAGS: &[&str] = &[
    "augment",
    "flip",
    "resume",
    "plain",
    "adamw",
    "freeze-features",
];

impl Opts {
    fn parse(args: &[String]) -> CliResult<Opts> {
        let mut o = Opts {
            values: HashMap::new(),
            flags: vec![],
            positional: vec![],
        };
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if let Some(key) = a.strip_prefix("--") {
                if let Some((k, v)) = key.split_once('=') {
                    o.values.insert(k.to_string(), v.to_string());
                } else if FLAGS.contains(&key) {
                    o.flags.push(key.to_string());
                } else {
                    let v = args
                        .get(i + 1)
                        .ok_or_else(|| format!("--{key} needs a value"))?;
                    o.values.insert(key.to_string(), v.clone());
                    i += 1;
                }
            } else {
                o.positional.push(a.clone());
            }
            i += 1;
        }
        Ok(o)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> CliResult<T> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid number")),
        }
    }

    fn path(&self, name: &str) -> CliResult<PathBuf> {
        self.str(name)
            .map(PathBuf::from)
            .ok_or_else(|| format!("--{name} is required\n{USAGE}"))
    }
}

fn open_gpu() -> CliResult<Gpu> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    eprintln!("adapter: {}", gpu.describe());
    Ok(gpu)
}

/// Everything a training run needs, however its data was chosen.
struct RunSpec {
    dataset: Arc<dyn Dataset>,
    train: Vec<usize>,
    val: Vec<usize>,
    config: ModelConfig,
    preset: String,
    /// Weights to start from (fine-tuning).
    init: Option<PathBuf>,
    freeze_features: bool,
    image_size: usize,
    batch_size: usize,
    epochs: usize,
    lr: f64,
    schedule: String,
    weight_decay: f64,
    adamw: bool,
    seed: u64,
    augment: bool,
    augment_name: &'static str,
    out: PathBuf,
    resume: bool,
    mode: BlockMode,
    /// Where the data came from (stored with the weights, read by `eval`).
    data: String,
    /// Minutes between mid-epoch checkpoints (0: only at the end of each epoch).
    checkpoint_minutes: f64,
}

fn cmd_default(opts: &Opts) -> CliResult<i32> {
    let image_size = opts.num("image-size", 32usize)?;
    let seed = opts.num("seed", 123u64)?;
    let len = opts.num("images", 3000usize)?;
    let dataset: Arc<dyn Dataset> = Arc::new(Synthetic::new(len, image_size, seed));
    let (train, val) = split(len, 0.2, seed).map_err(|e| e.to_string())?;
    let classes = dataset.classes().len();
    println!(
        "embedded dataset: {len} procedural {image_size}x{image_size} images of {classes} classes ({}), {} train / {} validation",
        dataset.classes().join(", "),
        train.len(),
        val.len()
    );
    let defaults = Defaults {
        model: "densenet-tiny",
        batch_size: 32,
        epochs: 6,
        lr: 3e-3,
        schedule: "cosine",
        out: PathBuf::from("runs/default"),
    };
    let mut spec = run_spec(
        opts,
        dataset,
        (train, val.clone()),
        seed,
        image_size,
        defaults,
    )?;
    spec.data = format!("embedded:{len}:{seed}");
    write_samples(
        &Synthetic::new(len, image_size, seed),
        &val,
        &spec.out.join("samples"),
    )?;
    fit(spec)
}

/// Writes two validation images per class as PNGs, for `train predict` to try.
fn write_samples(data: &Synthetic, val: &[usize], dir: &Path) -> CliResult<()> {
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

fn unknown_model(name: &str) -> String {
    format!(
        "unknown --model {name:?}; choose one of {}",
        models::preset_names()
    )
}

fn cmd_fit(opts: &Opts) -> CliResult<i32> {
    fit(fit_spec(opts, false)?)
}

/// The run `fit` would make from these options (`compare`: the study's defaults, with
/// augmentation always on).
fn fit_spec(opts: &Opts, compare: bool) -> CliResult<RunSpec> {
    let data = opts.path("data")?;
    let image_size = opts.num("image-size", if compare { 32 } else { 224usize })?;
    let (folder, warnings) = ImageFolder::open(&data, image_size).map_err(|e| e.to_string())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let folder = folder.with_augmentation(if opts.flag("augment") || compare {
        Augmentation::CropFlip
    } else {
        Augmentation::Flip
    });
    let seed = opts.num("seed", 123u64)?;
    let val_split = opts.num("val-split", 0.2f64)?;
    let (train, val) = split(folder.len(), val_split, seed).map_err(|e| e.to_string())?;
    println!(
        "data: {} — {} images, {} classes ({}); {} train / {} validation (seed {seed})",
        data.display(),
        folder.len(),
        folder.classes().len(),
        folder.classes().join(", "),
        train.len(),
        val.len()
    );
    let name = data
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let defaults = if compare {
        Defaults {
            model: "densenet121",
            batch_size: 32,
            epochs: 8,
            lr: 1e-3,
            schedule: "cosine",
            out: Path::new("runs").join("compare"),
        }
    } else {
        Defaults {
            model: "densenet121",
            batch_size: 8,
            epochs: 10,
            lr: 1e-3,
            schedule: "constant",
            out: Path::new("runs").join(name),
        }
    };
    let mut spec = run_spec(
        opts,
        Arc::new(folder),
        (train, val),
        seed,
        image_size,
        defaults,
    )?;
    spec.data = data.display().to_string();
    if compare {
        spec.augment = true;
        spec.augment_name = "random crops + flips";
    }
    Ok(spec)
}

/// Per-command defaults for the training options.
struct Defaults {
    model: &'static str,
    batch_size: usize,
    epochs: usize,
    lr: f64,
    schedule: &'static str,
    out: PathBuf,
}

/// The run's settings: command-line options over the command's defaults.
fn run_spec(
    opts: &Opts,
    dataset: Arc<dyn Dataset>,
    (train, val): (Vec<usize>, Vec<usize>),
    seed: u64,
    image_size: usize,
    d: Defaults,
) -> CliResult<RunSpec> {
    let preset = opts.str("model").unwrap_or(d.model).to_string();
    let classes = dataset.classes().len();
    let config = models::preset(&preset, classes).ok_or_else(|| unknown_model(&preset))?;
    Ok(RunSpec {
        dataset,
        train,
        val,
        config,
        preset,
        init: opts.str("init").map(PathBuf::from),
        freeze_features: opts.flag("freeze-features"),
        image_size,
        batch_size: opts.num("batch-size", d.batch_size)?,
        epochs: opts.num("epochs", d.epochs)?,
        lr: opts.num("lr", d.lr)?,
        schedule: opts.str("schedule").unwrap_or(d.schedule).to_string(),
        weight_decay: opts.num("weight-decay", 0.0)?,
        adamw: opts.flag("adamw"),
        seed,
        augment: opts.flag("augment") || opts.flag("flip"),
        augment_name: if opts.flag("augment") {
            "random crops + flips"
        } else {
            "flips"
        },
        out: opts.str("out").map(PathBuf::from).unwrap_or(d.out),
        resume: opts.flag("resume"),
        mode: if opts.flag("plain") {
            BlockMode::Plain
        } else {
            BlockMode::MemoryEfficient
        },
        data: String::new(),
        checkpoint_minutes: opts.num("checkpoint-minutes", 10.0)?,
    })
}

fn parse_schedule(s: &str, epochs: usize, steps_per_epoch: usize) -> CliResult<Schedule> {
    let (name, arg) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    let bad = || {
        format!("--schedule {s:?}: expected constant, inverse-time:DECAY or cosine[:WARMUP_EPOCHS]")
    };
    Ok(match name {
        "constant" => Schedule::Constant,
        "inverse-time" => Schedule::InverseTime {
            decay: arg.ok_or_else(bad)?.parse().map_err(|_| bad())?,
        },
        "cosine" => {
            let warm: f64 = match arg {
                Some(a) => a.parse().map_err(|_| bad())?,
                None => 0.0,
            };
            Schedule::Cosine {
                total_steps: epochs * steps_per_epoch,
                warmup_steps: (warm * steps_per_epoch as f64) as usize,
                min_lr: 0.0,
            }
        }
        _ => return Err(bad()),
    })
}

fn fit(spec: RunSpec) -> CliResult<i32> {
    if spec.batch_size == 0 || spec.epochs == 0 {
        return Err("--batch-size and --epochs must be positive".into());
    }
    if spec.train.is_empty() {
        return Err("no training images".into());
    }
    std::fs::create_dir_all(&spec.out).map_err(|e| format!("{}: {e}", spec.out.display()))?;
    let gpu = open_gpu()?;
    let mut model = spec
        .config
        .build(&gpu, spec.seed)
        .map_err(|e| e.to_string())?;
    model.set_mode(spec.mode);
    if let Some(init) = &spec.init {
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
        println!(
            "--freeze-features: training only {}* ({trainable} of {} parameters); frozen BNs use their running statistics",
            model.classifier_prefix(),
            model.num_parameters()
        );
    }
    let steps_per_epoch = spec.train.len().div_ceil(spec.batch_size);
    let schedule = parse_schedule(&spec.schedule, spec.epochs, steps_per_epoch)?;
    let adam = AdamConfig {
        lr: spec.lr as f32,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: spec.weight_decay as f32,
        decoupled: spec.adamw,
    };
    let opt = Adam::new(&gpu, model.params(), adam, schedule).map_err(|e| e.to_string())?;
    let mut trainer = Trainer::new(&gpu, model, opt);
    let checkpoint = spec.out.join("checkpoint.safetensors");
    let csv = spec.out.join("metrics.csv");
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut start_epoch = 0;
    let mut resume_partial: Option<Partial> = None;
    if spec.resume {
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
        resume_partial = Partial::from_metadata(&meta);
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
    } else if csv.exists() {
        std::fs::remove_file(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    }
    println!(
        "model: {} ({} parameters, {:?} blocks), image {}x{}, batch {}, {} epochs, Adam lr {} ({}){}",
        spec.preset,
        trainer.model.num_parameters(),
        spec.mode,
        spec.image_size,
        spec.image_size,
        spec.batch_size,
        spec.epochs,
        spec.lr,
        spec.schedule,
        if spec.augment { format!(", augmentation: {}", spec.augment_name) } else { String::new() }
    );
    println!("run folder: {}", spec.out.display());

    let mut best_val = f64::NEG_INFINITY;
    for epoch in start_epoch..spec.epochs {
        let lr = trainer.opt.current_lr();
        let shuffle_seed = spec.seed.wrapping_add(epoch as u64 + 1);
        // A checkpoint written mid-epoch resumes after its last finished batch: the same
        // shuffled order, minus the batches already done.
        let partial = resume_partial.take().unwrap_or_default();
        let mut loader = if partial.batches_done == 0 {
            Loader::new(
                spec.dataset.clone(),
                spec.train.clone(),
                spec.batch_size,
                Some(shuffle_seed),
                spec.augment,
                false,
            )
        } else {
            let mut order = spec.train.clone();
            Rng::new(shuffle_seed).shuffle(&mut order);
            let rest = order.split_off((partial.batches_done * spec.batch_size).min(order.len()));
            Loader::new(
                spec.dataset.clone(),
                rest,
                spec.batch_size,
                None,
                spec.augment,
                false,
            )
        };
        let mut bar = Progress::new(
            &format!("epoch {}/{}", epoch + 1, spec.epochs),
            spec.train.len(),
        );
        bar.inc(partial.seen, "");
        let mut part = partial;
        let t0 = Instant::now() - std::time::Duration::from_secs_f64(part.seconds);
        let mut last_save = Instant::now();
        for batch in loader.by_ref() {
            let r = trainer
                .train_step(&batch.images, &batch.labels, spec.image_size)
                .map_err(|e| e.to_string())?;
            part.loss_sum += r.loss * r.count as f64;
            part.correct += r.correct;
            part.seen += r.count;
            part.batches_done += 1;
            bar.inc(
                r.count,
                &format!(
                    "loss {:.4} acc {:.3}",
                    part.loss_sum / part.seen as f64,
                    part.correct as f64 / part.seen as f64
                ),
            );
            if spec.checkpoint_minutes > 0.0
                && last_save.elapsed().as_secs_f64() >= spec.checkpoint_minutes * 60.0
            {
                part.seconds = t0.elapsed().as_secs_f64();
                save_checkpoint(&gpu, &trainer, &spec, &checkpoint, epoch, Some(&part))?;
                last_save = Instant::now();
            }
        }
        let (loss_sum, correct, seen) = (part.loss_sum, part.correct, part.seen);
        bar.finish();
        for w in loader.take_warnings() {
            eprintln!("warning: {w}");
        }
        if seen == 0 {
            return Err("no training image could be loaded".into());
        }
        let (val_loss, val_acc, _) = if spec.val.is_empty() {
            (None, None, vec![])
        } else {
            let (l, a, m) = run_eval(
                &gpu,
                trainer.model.as_ref(),
                &spec.dataset,
                &spec.val,
                spec.batch_size.max(16),
                spec.image_size,
            )?;
            (Some(l), Some(a), m)
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
        println!("{}", m.summary_line());
        metrics::append_csv(&csv, &m).map_err(|e| format!("{}: {e}", csv.display()))?;
        history.push(m);
        if let Err(e) = densenet_wgpu::plot::write_curves(&spec.out.join("curves.png"), &history) {
            eprintln!("warning: could not write curves.png: {e}");
        }
        save_checkpoint(&gpu, &trainer, &spec, &checkpoint, epoch + 1, None)?;
        if let Some(a) = val_acc {
            if a > best_val {
                best_val = a;
                save_weights(
                    &gpu,
                    trainer.model.as_ref(),
                    &spec,
                    &spec.out.join("best.safetensors"),
                    epoch + 1,
                )?;
            }
        }
    }
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
    Ok(0)
}

fn run_metadata(spec: &RunSpec, epoch: usize) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert("classes".into(), spec.dataset.classes().join("\n"));
    meta.insert("image_size".into(), spec.image_size.to_string());
    meta.insert("model".into(), spec.preset.clone());
    meta.insert("architecture".into(), spec.config.to_string());
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert("format".into(), "pt".into());
    meta.insert("data".into(), spec.data.clone());
    meta
}

fn save_weights(
    gpu: &Gpu,
    model: &dyn Model,
    spec: &RunSpec,
    path: &Path,
    epoch: usize,
) -> CliResult<()> {
    let entries = model.store().state_dict(gpu).map_err(|e| e.to_string())?;
    weights::write(path, entries, run_metadata(spec, epoch)).map_err(|e| e.to_string())
}

/// Progress through an epoch, saved in mid-epoch checkpoints.
#[derive(Clone, Debug, Default)]
struct Partial {
    batches_done: usize,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    seconds: f64,
}

impl Partial {
    fn to_metadata(&self, meta: &mut HashMap<String, String>) {
        meta.insert("batches_done".into(), self.batches_done.to_string());
        meta.insert("partial_loss_sum".into(), self.loss_sum.to_string());
        meta.insert("partial_correct".into(), self.correct.to_string());
        meta.insert("partial_seen".into(), self.seen.to_string());
        meta.insert("partial_seconds".into(), self.seconds.to_string());
    }

    fn from_metadata(meta: &HashMap<String, String>) -> Option<Partial> {
        let get = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok());
        let batches_done = get("batches_done")? as usize;
        (batches_done > 0).then(|| Partial {
            batches_done,
            loss_sum: get("partial_loss_sum").unwrap_or(0.0),
            correct: get("partial_correct").unwrap_or(0.0) as usize,
            seen: get("partial_seen").unwrap_or(0.0) as usize,
            seconds: get("partial_seconds").unwrap_or(0.0),
        })
    }
}

/// The string metadata of a safetensors file (empty if it has none or cannot be read).
fn read_metadata(path: &Path) -> HashMap<String, String> {
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
    partial: Option<&Partial>,
) -> CliResult<()> {
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

/// Mean loss, accuracy and confusion matrix (rows: true class) over `indices`.
fn run_eval(
    gpu: &Gpu,
    model: &dyn Model,
    dataset: &Arc<dyn Dataset>,
    indices: &[usize],
    batch_size: usize,
    size: usize,
) -> CliResult<(f64, f64, Vec<Vec<usize>>)> {
    let k = dataset.classes().len();
    let mut matrix = vec![vec![0usize; k]; k];
    let mut loader = Loader::new(
        dataset.clone(),
        indices.to_vec(),
        batch_size,
        None,
        false,
        false,
    );
    let mut bar = Progress::new("validation", indices.len());
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    for batch in loader.by_ref() {
        let r =
            evaluate(gpu, model, &batch.images, &batch.labels, size).map_err(|e| e.to_string())?;
        loss_sum += r.loss * r.count as f64;
        correct += r.correct;
        seen += r.count;
        for (p, l) in r.predictions.iter().zip(&batch.labels) {
            matrix[*l][*p] += 1;
        }
        bar.inc(r.count, "");
    }
    bar.finish();
    for w in loader.take_warnings() {
        eprintln!("warning: {w}");
    }
    if seen == 0 {
        return Err("no validation image could be loaded".into());
    }
    Ok((loss_sum / seen as f64, correct as f64 / seen as f64, matrix))
}

/// Loads a weights or checkpoint file: the architecture comes from the tensor names and
/// shapes, class names and image size from the metadata when present.
/// What a weight file's metadata says about its run.
struct RunInfo {
    classes: Option<Vec<String>>,
    image_size: Option<usize>,
    /// `embedded:<images>:<seed>` for the built-in dataset, else the data folder.
    data: Option<String>,
}

fn load_model(gpu: &Gpu, path: &Path) -> CliResult<(Box<dyn Model>, RunInfo)> {
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

fn cmd_eval(opts: &Opts) -> CliResult<i32> {
    let weights_path = opts.path("weights")?;
    let gpu = open_gpu()?;
    let (model, info) = load_model(&gpu, &weights_path)?;
    let image_size = opts.num("image-size", info.image_size.unwrap_or(224))?;
    // The data: --data, else what the weights were trained on (the embedded dataset's
    // validation split for the default run).
    let embedded = info
        .data
        .as_deref()
        .and_then(|d| d.strip_prefix("embedded:"));
    let (dataset, indices, source): (Arc<dyn Dataset>, Vec<usize>, String) = match (
        opts.str("data"),
        embedded,
    ) {
        (None, Some(spec)) => {
            let (len, seed) = spec
                .split_once(':')
                .and_then(|(l, s)| Some((l.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| format!("{}: bad data metadata {spec:?}", weights_path.display()))?;
            let val = split(len, 0.2, seed).map_err(|e| e.to_string())?.1;
            let source = format!("embedded dataset, validation split (seed {seed})");
            (Arc::new(Synthetic::new(len, image_size, seed)), val, source)
        }
        (data, _) => {
            let data = data
                .map(PathBuf::from)
                .ok_or_else(|| format!("--data is required\n{USAGE}"))?;
            let (folder, warnings) =
                ImageFolder::open(&data, image_size).map_err(|e| e.to_string())?;
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
            let indices: Vec<usize> = match opts.str("val-split") {
                Some(_) => {
                    let (frac, seed) = (opts.num("val-split", 0.2)?, opts.num("seed", 123)?);
                    split(folder.len(), frac, seed)
                        .map_err(|e| e.to_string())?
                        .1
                }
                None => (0..folder.len()).collect(),
            };
            (Arc::new(folder), indices, data.display().to_string())
        }
    };
    if dataset.classes().len() != model.num_classes() {
        return Err(format!(
            "{source} has {} classes but {} was trained for {}",
            dataset.classes().len(),
            weights_path.display(),
            model.num_classes()
        ));
    }
    let names = dataset.classes().to_vec();
    let batch = opts.num("batch-size", 16)?;
    let (loss, acc, matrix) =
        run_eval(&gpu, model.as_ref(), &dataset, &indices, batch, image_size)?;
    println!(
        "{source}: {} images, loss={loss:.4} accuracy={acc:.4}",
        indices.len()
    );
    println!("{}", metrics::confusion_matrix_table(&names, &matrix));
    Ok(0)
}

fn cmd_predict(opts: &Opts) -> CliResult<i32> {
    let weights_path = opts.path("weights")?;
    if opts.positional.is_empty() {
        return Err(format!("predict: no image given\n{USAGE}"));
    }
    let gpu = open_gpu()?;
    let (model, info) = load_model(&gpu, &weights_path)?;
    let (classes, image_size) = (
        info.classes,
        opts.num("image-size", info.image_size.unwrap_or(224))?,
    );
    let top = opts.num("top", 3usize)?.min(model.num_classes());
    let names = classes.unwrap_or_else(|| {
        (0..model.num_classes())
            .map(|i| format!("class {i}"))
            .collect()
    });
    let mut failures = 0;
    for path in &opts.positional {
        let image = match load_image(Path::new(path), image_size) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                failures += 1;
                continue;
            }
        };
        let r =
            evaluate(&gpu, model.as_ref(), &image, &[0], image_size).map_err(|e| e.to_string())?;
        let mut ranked: Vec<(usize, f32)> = r.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = ranked[..top]
            .iter()
            .map(|(i, p)| {
                format!(
                    "{} {:.1}%",
                    names.get(*i).map(String::as_str).unwrap_or("?"),
                    p * 100.0
                )
            })
            .collect();
        println!("{path}: {}", shown.join(", "));
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

fn cmd_verify(opts: &Opts) -> CliResult<i32> {
    let path = opts
        .positional
        .first()
        .ok_or_else(|| format!("verify-torch: give a golden file\n{USAGE}"))?;
    let gpu = open_gpu()?;
    let mode = if opts.flag("plain") {
        BlockMode::Plain
    } else {
        BlockMode::MemoryEfficient
    };
    let report = verify_golden(&gpu, Path::new(path), mode).map_err(|e| e.to_string())?;
    print!("{}", report.table());
    Ok(if report.passed() { 0 } else { 1 })
}

/// `--init FILE`: loads weights of the same architecture into `model`. When the file's
/// classifier is for another class count, the model keeps its freshly initialised one.
fn init_from(gpu: &Gpu, model: &mut dyn Model, path: &Path) -> CliResult<()> {
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

/// `train compare`: the DenseNet-vs-ResNet study. Costs first (on a quiet machine, before
/// any training), then one training run per model with identical settings, then the report.
fn cmd_compare(opts: &Opts) -> CliResult<i32> {
    let names: Vec<String> = opts
        .str("models")
        .unwrap_or("densenet121,densenet169,resnet18,resnet50")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let base = fit_spec(opts, true)?;
    let classes = base.dataset.classes().len();
    let configs: Vec<ModelConfig> = names
        .iter()
        .map(|n| models::preset(n, classes).ok_or_else(|| unknown_model(n)))
        .collect::<CliResult<_>>()?;
    let doc = opts
        .str("doc")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docs/densenet-vs-resnet.md"));
    let cost_steps = opts.num("cost-steps", 3usize)?;

    let gpu = open_gpu()?;
    let adapter = gpu.describe();
    let cost_only: Vec<String> = opts
        .str("cost-only")
        .unwrap_or("densenet201,resnet34,resnet101")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !names.contains(s))
        .collect();
    let measured: Vec<(String, ModelConfig)> = names
        .iter()
        .cloned()
        .zip(configs.iter().cloned())
        .chain(
            cost_only
                .iter()
                .map(|n| {
                    Ok((
                        n.clone(),
                        models::preset(n, classes).ok_or_else(|| unknown_model(n))?,
                    ))
                })
                .collect::<CliResult<Vec<_>>>()?,
        )
        .collect();
    let mut costs = Vec::new();
    for (name, config) in &measured {
        println!(
            "cost: {name} ({cost_steps} steps per block mode, batch {}, {}x{})",
            base.batch_size, base.image_size, base.image_size
        );
        let c = study::measure_cost(
            &gpu,
            name,
            config,
            base.image_size,
            base.batch_size,
            cost_steps,
        )
        .map_err(|e| format!("{name}: {e}"))?;
        for m in &c.modes {
            println!(
                "cost: {name} {:?}: {:.0} ms/step, peak {:.1} MiB; {:.2} M parameters, {:.3} GFLOPs/image",
                m.mode,
                m.step_ms,
                m.peak_bytes as f64 / (1 << 20) as f64,
                c.params as f64 / 1e6,
                c.gflops_per_image
            );
        }
        costs.push(c);
    }
    drop(gpu);

    let mut runs = Vec::new();
    for (name, config) in names.iter().zip(&configs) {
        let mut spec = fit_spec(opts, true)?;
        spec.out = base.out.join(name);
        spec.config = config.clone();
        spec.preset = name.clone();
        spec.resume = opts.flag("resume") && spec.out.join("checkpoint.safetensors").exists();
        println!("== {name}: training");
        fit(spec)?;
        let csv = base.out.join(name).join("metrics.csv");
        let history = metrics::read_csv(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
        let seconds = history.iter().map(|m| m.seconds).sum();
        runs.push(study::Run {
            name: name.clone(),
            history,
            seconds,
        });
    }

    let settings = study::Settings {
        data: base.data.clone(),
        images: base.train.len() + base.val.len(),
        classes: base.dataset.classes().to_vec(),
        train: base.train.len(),
        val: base.val.len(),
        image_size: base.image_size,
        epochs: base.epochs,
        batch_size: base.batch_size,
        lr: base.lr,
        schedule: base.schedule.clone(),
        augmentation: base.augment_name.to_string(),
        seed: base.seed,
        command: compare_command(),
        adapter,
        date: today(),
    };
    let img = doc.parent().unwrap_or(Path::new(".")).join("img");
    study::write_report(&doc, &img, &settings, &costs, &runs)?;
    println!(
        "wrote {} and its figures in {}",
        doc.display(),
        img.display()
    );
    Ok(0)
}

/// The command line as typed, for the report (the data path as given).
fn compare_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("train {}", args.join(" "))
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
