//! The DenseNet-vs-ResNet study behind `train compare`: what each model costs (parameters,
//! forward FLOPs, peak device memory and step time in both block modes), and the report
//! (`docs/densenet-vs-resnet.md` and its figures) written from those measurements and the
//! training runs' per-epoch metrics.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::budget::RunShape;
use crate::gpu::Gpu;
use crate::measure::median;
use crate::metrics::EpochMetrics;
use crate::models::{BlockMode, ModelConfig, ResNetBlock};
use crate::plot::{write_chart, PlotError, Series};
use crate::rng::Rng;
use crate::run::events::{Observer, RunEvent};
use crate::run::{self, RunError, RunResult, RunSpec};
use crate::tape::Tape;
use crate::train::StepError;

/// Layers with weights on the longest path (convolutions and the classifier): the number
/// in a model's name (121 for DenseNet-121, 50 for ResNet-50).
pub fn depth(config: &ModelConfig) -> usize {
    match config {
        ModelConfig::DenseNet(c) => {
            1 + 2 * c.block_config.iter().sum::<usize>() + (c.block_config.len() - 1) + 1
        }
        ModelConfig::ResNet(c) => 1 + convs_per_block(c.block) * c.layers.iter().sum::<usize>() + 1,
        ModelConfig::ResNetV2(c) => {
            1 + convs_per_block(c.block) * c.layers.iter().sum::<usize>() + 1
        }
    }
}

fn convs_per_block(block: ResNetBlock) -> usize {
    match block {
        ResNetBlock::Basic => 2,
        ResNetBlock::Bottleneck => 3,
    }
}

/// One block mode's training-step cost.
#[derive(Clone, Debug)]
pub struct ModeCost {
    pub mode: BlockMode,
    /// Median of the timed steps.
    pub step_ms: f64,
    /// The crate's own device-allocation peak over the timed steps (parameters, gradients
    /// and Adam's moments included).
    pub peak_bytes: u64,
    /// The peak above that parameter state (4 f32 per parameter): what the batch's
    /// activations, saved tensors and gradients of the step take.
    pub step_bytes: u64,
}

/// What one model costs at the study's image size and batch.
#[derive(Clone, Debug)]
pub struct Cost {
    pub name: String,
    pub config: ModelConfig,
    pub params: usize,
    /// Forward FLOPs per image (2 per multiply-add of the convolutions and classifier).
    pub gflops_per_image: f64,
    pub depth: usize,
    pub modes: Vec<ModeCost>,
}

/// Measures `config` on random images of `image_size`: one forward for the FLOPs, then for
/// each block mode a warm-up step and `steps` timed training steps of `batch` images.
pub async fn measure_cost(
    gpu: &Gpu,
    name: &str,
    config: &ModelConfig,
    image_size: usize,
    batch: usize,
    steps: usize,
) -> std::result::Result<Cost, StepError> {
    let classes = config.num_classes();
    let mut rng = Rng::new(1);
    let images: Vec<f32> = (0..batch * 3 * image_size * image_size)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();

    let model = config.build(gpu, 0)?;
    let mut tape = Tape::inference(gpu);
    let x = gpu.upload(&images, &[batch, 3, image_size, image_size], "images")?;
    let xv = tape.input(x, "images");
    model.forward(&mut tape, xv, false)?;
    let flops = tape.flops();
    tape.finish()?;
    let params = model.num_parameters();
    drop(model);

    let mut modes = Vec::new();
    for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
        let shape = RunShape {
            config: config.clone(),
            mode,
            freeze_features: false,
            image_size,
        };
        let mut trainer = shape.default_trainer(gpu)?;
        trainer.train_step(&images, &labels, image_size).await?;
        gpu.finished().await?;
        gpu.memory().reset_peak();
        let mut times = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            trainer.train_step(&images, &labels, image_size).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let peak_bytes = gpu.memory().peak_bytes();
        modes.push(ModeCost {
            mode,
            step_ms: median(&mut times),
            peak_bytes,
            step_bytes: peak_bytes.saturating_sub(16 * params as u64),
        });
    }
    Ok(Cost {
        name: name.to_string(),
        config: config.clone(),
        params,
        gflops_per_image: flops as f64 / batch as f64 / 1e9,
        depth: depth(config),
        modes,
    })
}

/// The settings every model of the study was trained with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data: String,
    pub images: usize,
    pub classes: Vec<String>,
    pub train: usize,
    pub val: usize,
    pub image_size: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: String,
    pub augmentation: String,
    pub seed: u64,
    /// The command that made the report.
    pub command: String,
    pub adapter: String,
    pub date: String,
}

/// One model's training run.
pub struct Run {
    pub name: String,
    pub history: Vec<EpochMetrics>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
}

impl Run {
    pub fn best(&self) -> Option<(usize, f64)> {
        self.history
            .iter()
            .filter_map(|m| m.val_acc.map(|a| (m.epoch, a)))
            .fold(None, |best, (e, a)| match best {
                Some((_, b)) if b >= a => best,
                _ => Some((e, a)),
            })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn pct(v: f64) -> String {
    format!("{:.1} %", 100.0 * v)
}

fn mode_cost(c: &Cost, mode: BlockMode) -> Option<&ModeCost> {
    c.modes.iter().find(|m| m.mode == mode)
}

/// Writes `doc` (markdown) and its three figures into `img_dir`.
pub fn write_report(
    doc: &Path,
    img_dir: &Path,
    s: &Settings,
    costs: &[Cost],
    runs: &[Run],
) -> RunResult<()> {
    std::fs::create_dir_all(img_dir).map_err(RunError::file(img_dir))?;
    let figures = write_figures(img_dir, costs, runs)?;
    let rel = |p: &Path| -> String {
        let doc_dir = doc.parent().unwrap_or(Path::new("."));
        p.strip_prefix(doc_dir)
            .unwrap_or(p)
            .to_string_lossy()
            .to_string()
    };
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# DenseNet vs ResNet, measured\n");
    let _ = writeln!(
        w,
        "Generated by `{}` on {}.\nAdapter: {}.\n",
        s.command, s.date, s.adapter
    );
    let _ = writeln!(w, "## Settings (identical for every model)\n");
    let _ = writeln!(
        w,
        "- Data: `{}`, {} images of {} classes ({}); {} train / {} validation (80/20 split, seed {}).",
        s.data,
        s.images,
        s.classes.len(),
        s.classes.join(", "),
        s.train,
        s.val,
        s.seed
    );
    let _ = writeln!(
        w,
        "- Images resized to {0}x{0}; {1} epochs; global batch {2}; Adam (betas 0.9, 0.999, eps 1e-8, no weight decay), lr {3} with a {4} schedule; augmentation: {5}; seed {6} for initialisation, split and shuffling.",
        s.image_size, s.epochs, s.batch_size, s.lr, s.schedule, s.augmentation, s.seed
    );
    let _ = writeln!(
        w,
        "- Trained from scratch in the memory-efficient block mode (both modes compute the same function; see the golden tests). Step time and peak memory were measured for both modes on random images of the same size and batch, before any training: median of the timed steps after one warm-up step; peak is the crate's own count of device bytes allocated (parameters, gradients and Adam moments included).\n"
    );

    let _ = writeln!(w, "## Results\n");
    let _ = writeln!(
        w,
        "| model | depth | parameters | forward GFLOPs / image | step ms (mem-eff / plain) | peak device MiB (mem-eff / plain) | of which above the parameter state | best val acc (epoch) | training time |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
    for c in costs {
        let me = mode_cost(c, BlockMode::MemoryEfficient);
        let pl = mode_cost(c, BlockMode::Plain);
        let fmt_ms = |m: Option<&ModeCost>| m.map_or("—".into(), |m| format!("{:.0}", m.step_ms));
        let fmt_mib =
            |m: Option<&ModeCost>| m.map_or("—".into(), |m| format!("{:.1}", mib(m.peak_bytes)));
        let fmt_step =
            |m: Option<&ModeCost>| m.map_or("—".into(), |m| format!("{:.1}", mib(m.step_bytes)));
        let run = runs.iter().find(|r| r.name == c.name);
        let best = run
            .and_then(Run::best)
            .map_or("—".into(), |(e, a)| format!("{} ({e})", pct(a)));
        let time = run.map_or("—".into(), |r| format!("{:.0} min", r.seconds / 60.0));
        let _ = writeln!(
            w,
            "| {} | {} | {:.2} M | {:.3} | {} / {} | {} / {} | {} / {} | {} | {} |",
            c.name,
            c.depth,
            c.params as f64 / 1e6,
            c.gflops_per_image,
            fmt_ms(me),
            fmt_ms(pl),
            fmt_mib(me),
            fmt_mib(pl),
            fmt_step(me),
            fmt_step(pl),
            best,
            time
        );
    }
    let _ = writeln!(w, "\nValidation accuracy per epoch:\n");
    let epochs = runs.iter().map(|r| r.history.len()).max().unwrap_or(0);
    let _ = write!(w, "| model |");
    for e in 1..=epochs {
        let _ = write!(w, " {e} |");
    }
    let _ = writeln!(w, "\n|---|{}", "---|".repeat(epochs));
    for r in runs {
        let _ = write!(w, "| {} |", r.name);
        for m in &r.history {
            let _ = write!(w, " {} |", m.val_acc.map_or("—".into(), pct));
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w);
    for (title, path) in &figures {
        let _ = writeln!(w, "![{title}]({})\n", rel(path));
    }
    discussion(w, costs, runs);
    std::fs::write(doc, md).map_err(RunError::file(doc))
}

fn write_figures(
    img_dir: &Path,
    costs: &[Cost],
    runs: &[Run],
) -> std::result::Result<Vec<(String, std::path::PathBuf)>, PlotError> {
    let mut out = Vec::new();
    let acc: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            label: r.name.clone(),
            points: r
                .history
                .iter()
                .filter_map(|m| m.val_acc.map(|a| (m.epoch as f64, a)))
                .collect(),
            scatter: false,
        })
        .collect();
    let path = img_dir.join("compare_accuracy.png");
    write_chart(&path, "validation accuracy", "epoch", &acc)?;
    out.push(("validation accuracy per epoch".to_string(), path));

    let by_params: Vec<Series> = runs
        .iter()
        .filter_map(|r| {
            let c = costs.iter().find(|c| c.name == r.name)?;
            let (_, a) = r.best()?;
            Some(Series {
                label: r.name.clone(),
                points: vec![(c.params as f64 / 1e6, a)],
                scatter: true,
            })
        })
        .collect();
    if !by_params.is_empty() {
        let path = img_dir.join("compare_accuracy_vs_parameters.png");
        write_chart(
            &path,
            "best validation accuracy",
            "parameters (millions)",
            &by_params,
        )?;
        out.push((
            "best validation accuracy against parameters".to_string(),
            path,
        ));
    }

    let mut memory = Vec::new();
    for (family, prefix) in [("DenseNet", "densenet"), ("ResNet", "resnet")] {
        for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
            let mut points: Vec<(f64, f64)> = costs
                .iter()
                .filter(|c| c.name.starts_with(prefix))
                .filter_map(|c| mode_cost(c, mode).map(|m| (c.depth as f64, mib(m.step_bytes))))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !points.is_empty() {
                let tag = if mode == BlockMode::Plain {
                    "plain"
                } else {
                    "mem-eff"
                };
                memory.push(Series {
                    label: format!("{family} {tag}"),
                    points,
                    scatter: false,
                });
            }
        }
    }
    let path = img_dir.join("compare_memory_vs_depth.png");
    let title = "peak device memory above the parameter state (MiB)";
    write_chart(&path, title, "depth (layers)", &memory)?;
    out.push((
        "peak device memory above the parameter state, against depth".to_string(),
        path,
    ));
    Ok(out)
}

/// The explanation: the architecture argument, with this run's numbers where they bear
/// on it.
fn discussion(w: &mut String, costs: &[Cost], runs: &[Run]) {
    let find = |n: &str| costs.iter().find(|c| c.name == n);
    let best = |n: &str| runs.iter().find(|r| r.name == n).and_then(Run::best);
    let _ = writeln!(w, "## What the numbers say\n");

    let _ = writeln!(w, "### Concatenation (feature reuse) against summation\n");
    let _ = writeln!(
        w,
        "A ResNet block adds its output to its input (`x + F(x)`): the identity path carries the gradient unchanged, but after the sum a later layer can no longer tell the block's features from its input's. A dense layer concatenates instead (`[x, F(x)]`): every later layer of the block reads every earlier layer's features unchanged, so each layer only has to add a few new channels (the growth rate k = 32 for DenseNet-121/169) rather than re-encode everything it passes on."
    );
    if let (Some(d), Some(r)) = (find("densenet121"), find("resnet50")) {
        let _ = write!(
            w,
            "Here that shows as size: DenseNet-121 has {:.1} M parameters, {:.1}x fewer than ResNet-50's {:.1} M, and needs {:.2} forward GFLOPs per image against ResNet-50's {:.2}",
            d.params as f64 / 1e6,
            r.params as f64 / d.params as f64,
            r.params as f64 / 1e6,
            d.gflops_per_image,
            r.gflops_per_image
        );
        match (best("densenet121"), best("resnet50")) {
            (Some((_, a)), Some((_, b))) => {
                let _ = writeln!(
                    w,
                    "; its best validation accuracy was {} against ResNet-50's {}.",
                    pct(a),
                    pct(b)
                );
            }
            _ => {
                let _ = writeln!(w, ".");
            }
        }
    }
    if let (Some(d), Some(r)) = (find("densenet121"), find("resnet18")) {
        let _ = writeln!(
            w,
            "ResNet-18 needs {:.2} GFLOPs per image ({:.2}x DenseNet-121's) with {:.1} M parameters ({:.1}x DenseNet-121's): a few wide layers spend parameters, many narrow dense layers spend operations and activations.",
            r.gflops_per_image,
            r.gflops_per_image / d.gflops_per_image,
            r.params as f64 / 1e6,
            r.params as f64 / d.params as f64
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(
        w,
        "### Why dense connectivity needs blocks and transitions\n"
    );
    let _ = writeln!(
        w,
        "Concatenation needs equal spatial sizes, and the channel count grows by k with every layer: a 121-layer network densely connected end to end would carry about 64 + 58·32 = 1,920 channels at full resolution. DenseNet therefore connects densely only inside a block at one resolution, and between blocks a transition (BN, ReLU, 1x1 convolution halving the channels, 2x2 average pool) resets the width and halves the resolution. The 1x1 bottleneck inside each dense layer (to 4k channels) keeps the 3x3 convolution's cost independent of how many features the layer reads. ResNet needs none of this: a sum keeps the width, and a strided 1x1 shortcut handles each change of resolution.\n"
    );

    let _ = writeln!(w, "### What the memory idea buys each family\n");
    let _ = writeln!(
        w,
        "The memory-efficient mode never stores a BN+ReLU output that only feeds a convolution: the convolution applies it while reading its input, and backward recomputes it. In a DenseNet, the concatenation is also free (every layer writes into its slice of one block buffer) and each layer's BN+ReLU reads the whole, growing concatenation, so the saving grows with depth."
    );
    for c in costs {
        if let (Some(me), Some(pl)) = (
            mode_cost(c, BlockMode::MemoryEfficient),
            mode_cost(c, BlockMode::Plain),
        ) {
            let _ = writeln!(
                w,
                "- {}: {:.1} MiB above the parameter state memory-efficient against {:.1} MiB plain ({:.0} % less), step time {:.2}x of plain.",
                c.name,
                mib(me.step_bytes),
                mib(pl.step_bytes),
                100.0 * (1.0 - me.step_bytes as f64 / pl.step_bytes as f64),
                me.step_ms / pl.step_ms
            );
        }
    }
    let saving = |prefix: &str| -> Option<f64> {
        let v: Vec<f64> = costs
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .filter_map(|c| {
                let me = mode_cost(c, BlockMode::MemoryEfficient)?;
                let pl = mode_cost(c, BlockMode::Plain)?;
                Some(1.0 - me.step_bytes as f64 / pl.step_bytes as f64)
            })
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let _ = write!(
        w,
        "\nIn a ResNet only bn1 (and a Bottleneck's bn2) feed a convolution alone; the block's end (BN + shortcut + ReLU) is stored, because the next block's convolution and its shortcut both read it, and a ResNet's stored maps do not grow inside a stage the way a dense block's concatenation does."
    );
    if let (Some(d), Some(r)) = (saving("densenet"), saving("resnet")) {
        let _ = write!(
            w,
            " Measured: the mode saves {:.0} % of the memory above the parameter state on average for the DenseNets here and {:.0} % for the ResNets.",
            100.0 * d,
            100.0 * r
        );
    }
    let _ = writeln!(w, "\n");

    let _ = writeln!(w, "### Where dense connectivity went next\n");
    let _ = writeln!(
        w,
        "- Memory-efficient DenseNets: G. Pleiss et al., *Memory-Efficient Implementation of DenseNets*, arXiv:1707.06990 (2017): shared storage for concatenations and recomputed BN+ReLU, the idea implemented here.\n- Dual Path Networks: Y. Chen et al., NeurIPS 2017: one path sums (ResNet, feature re-use) and one concatenates (DenseNet, new features).\n- CondenseNet: G. Huang et al., CVPR 2018: learned group convolutions prune the dense connections for mobile inference.\n- Semantic segmentation: S. Jégou et al., *The One Hundred Layers Tiramisu*, CVPR Workshops 2017: dense blocks in an encoder-decoder.\n- Image restoration: Y. Zhang et al., *Residual Dense Network for Image Super-Resolution*, CVPR 2018: dense connections inside residual blocks.\n- Sequence models: DenseNet-style connections across recurrent or transformer layers, e.g. *DenseFormer* (M. Pagliardini et al., 2024), which averages the outputs of all earlier transformer blocks with learned weights.\n- Detection backbones: VoVNet (Y. Lee et al., CVPRW 2019) keeps DenseNet's concatenation but aggregates once per block (one-shot aggregation), for lower memory traffic."
    );
}

/// What `train compare` runs.
pub struct Plan {
    /// Settings shared by every model (`config`, `preset` and `out` are set per model:
    /// `out` is the parent of the per-model run folders).
    pub base: RunSpec,
    /// Models measured and trained.
    pub models: Vec<String>,
    /// Models only measured (more depths for the memory figure).
    pub cost_only: Vec<String>,
    pub cost_steps: usize,
    /// The report; its figures go to `img/` beside it.
    pub doc: std::path::PathBuf,
    /// Continue runs that have a checkpoint.
    pub resume: bool,
    /// With `resume`: each model's metrics so far ([`RunSpec::history`]), by model name.
    pub histories: std::collections::HashMap<String, Vec<crate::metrics::EpochMetrics>>,
    /// The command line, quoted in the report.
    pub command: String,
}

/// The study: costs first (before any training, on a quiet machine), then one training
/// run per model with identical settings, then the report.
pub async fn compare(plan: &Plan, observer: &mut dyn Observer) -> RunResult<()> {
    let base = &plan.base;
    let classes = base.dataset.classes().len();
    let preset = |n: &String| run::preset_config(n, classes).map(|c| (n.clone(), c));
    let trained: Vec<(String, ModelConfig)> =
        plan.models.iter().map(preset).collect::<RunResult<_>>()?;
    let extra: Vec<(String, ModelConfig)> = plan
        .cost_only
        .iter()
        .filter(|n| !plan.models.contains(n))
        .map(preset)
        .collect::<RunResult<_>>()?;

    let gpu = crate::gpu::Gpu::request(&base.device).await?;
    observer.event(&RunEvent::Adapter {
        adapter: Box::new(gpu.info.clone()),
        rank: None,
    });
    let adapter = gpu.describe();
    let mut costs = Vec::new();
    for (name, config) in trained.iter().chain(&extra) {
        observer.event(&RunEvent::CostStarted {
            model: name.clone(),
            steps: plan.cost_steps,
            batch_size: base.batch_size,
            image_size: base.image_size,
        });
        let c = measure_cost(
            &gpu,
            name,
            config,
            base.image_size,
            base.batch_size,
            plan.cost_steps,
        )
        .await
        .map_err(|error| RunError::CostNotMeasured {
            model: name.clone(),
            error,
        })?;
        for m in &c.modes {
            observer.event(&RunEvent::CostMeasured {
                model: name.clone(),
                mode: m.mode,
                step_ms: m.step_ms,
                peak_bytes: m.peak_bytes,
                parameters: c.params,
                gflops_per_image: c.gflops_per_image,
            });
        }
        costs.push(c);
    }
    drop(gpu);

    let mut runs = Vec::new();
    for (name, config) in &trained {
        let mut spec = base.clone();
        spec.out = base.out.join(name);
        spec.config = config.clone();
        spec.preset = name.clone();
        spec.resume = plan.resume && spec.out.join("checkpoint.safetensors").exists();
        spec.history = plan.histories.get(name).cloned().unwrap_or_default();
        observer.event(&RunEvent::ModelTraining {
            model: name.clone(),
        });
        let history = run::fit(&spec, observer).await?;
        let seconds = history.iter().map(|m| m.seconds).sum();
        runs.push(Run {
            name: name.clone(),
            history,
            seconds,
        });
    }

    let settings = Settings {
        data: base.data.clone(),
        images: base.train.len() + base.val.len(),
        classes: base.dataset.classes().to_vec(),
        train: base.train.len(),
        val: base.val.len(),
        image_size: base.image_size,
        epochs: base.epochs,
        batch_size: base.batch_size,
        lr: base.lr,
        schedule: base.schedule.to_string(),
        augmentation: base.augment.unwrap_or("none").to_string(),
        seed: base.seed,
        command: plan.command.clone(),
        adapter,
        date: today(),
    };
    let img = plan.doc.parent().unwrap_or(Path::new(".")).join("img");
    write_report(&plan.doc, &img, &settings, &costs, &runs)?;
    observer.event(&RunEvent::ReportWritten {
        report: plan.doc.clone(),
        figures: img,
    });
    Ok(())
}

/// Today's date (UTC) as YYYY-MM-DD.
pub fn today() -> String {
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
