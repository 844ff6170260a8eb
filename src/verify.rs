//! Checking one training step against a PyTorch reference file (the format of
//! `shared/golden/README.md`): torchvision weights, input, labels, and PyTorch's logits,
//! loss, gradients, updated running statistics and parameters after one Adam step.

use std::path::{Path, PathBuf};

use crate::gpu::{Gpu, Tensor};
use crate::models::{BlockMode, DenseNet};
use crate::ops::adam::{self, AdamConfig};
use crate::optim::{Adam, Schedule};
use crate::tape::Tape;
use crate::weights::{infer_config, TensorFile, WeightsError};

/// One compared group and its verdict.
#[derive(Clone, Debug)]
pub struct Check {
    pub group: String,
    pub metric: String,
    pub value: f64,
    pub tolerance: f64,
    /// Where the worst tensor of the group is, if any.
    pub worst: String,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.value <= self.tolerance
    }
}

/// All checks for one reference file.
pub struct Report {
    pub model: String,
    pub reference: PathBuf,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    /// A table: group, metric, value, tolerance, verdict.
    pub fn table(&self) -> String {
        let mut s = format!(
            "model: {}\nreference outputs: {}\n",
            self.model,
            self.reference.display()
        );
        s += &format!(
            "{:<34} {:<36} {:>11} {:>11}  result\n",
            "group", "metric", "value", "tolerance"
        );
        for c in &self.checks {
            s += &format!(
                "{:<34} {:<36} {:>11.3e} {:>11.1e}  {}{}\n",
                c.group,
                c.metric,
                c.value,
                c.tolerance,
                if c.passed() { "ok" } else { "FAIL" },
                if c.worst.is_empty() {
                    String::new()
                } else {
                    format!("  (worst: {})", c.worst)
                }
            );
        }
        s += if self.passed() {
            "all groups within tolerance\n"
        } else {
            "SOME GROUPS EXCEED TOLERANCE\n"
        };
        s
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn widen(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

/// Runs one training step of the model described by `path` and compares it with the
/// reference. Outputs are compared with `<stem>_f64.safetensors` next to `path` when it
/// exists (the tolerances are defined against the float64 computation), else with `path`.
pub fn verify_golden(gpu: &Gpu, path: &Path, mode: BlockMode) -> Result<Report, WeightsError> {
    let file = TensorFile::read(path)?;
    let f64_path = path.with_file_name(format!(
        "{}_f64.safetensors",
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("golden")
    ));
    let reference = if f64_path.exists() {
        TensorFile::read(&f64_path)?
    } else {
        TensorFile::read(path)?
    };
    let config = infer_config(&file)?;
    let mut model = DenseNet::new(gpu, config.clone(), 0)?;
    model.mode = mode;
    model.load(
        gpu,
        &file,
        &[
            "input", "labels", "logits", "loss", "grad.", "after.", "adam1.",
        ],
    )?;

    let input = file.get("input")?;
    let labels = file.get("labels")?;
    let x = gpu.upload(&input.to_f32(), &input.shape, "input")?;
    let y = gpu.upload(&labels.to_f32(), &labels.shape, "labels")?;

    let mut tape = Tape::new(gpu);
    let xv = tape.input(x, "input");
    let logits = model.forward(&mut tape, xv, true)?;
    let (loss, _) = tape.cross_entropy(logits, &y, "loss")?;
    let logits_t = tape.value(logits)?.clone();
    let loss_t = tape.value(loss)?.clone();
    tape.backward(loss)?;
    tape.finish()?;

    let mut checks = Vec::new();
    let got_logits = widen(gpu.download(&logits_t)?);
    let want_logits = &reference.get("logits")?.data;
    checks.push(Check {
        group: "logits".into(),
        metric: "max|d| / max|ref|".into(),
        value: max_diff(&got_logits, want_logits) / max_abs(want_logits).max(1e-30),
        tolerance: 1e-4 + 1e-6 / max_abs(want_logits).max(1e-30),
        worst: String::new(),
    });
    let got_loss = gpu.download(&loss_t)?[0] as f64;
    let want_loss = reference.get("loss")?.data[0];
    checks.push(Check {
        group: "loss".into(),
        metric: format!("relative (ours {got_loss:.7}, ref {want_loss:.7})"),
        value: ((got_loss - want_loss) / want_loss).abs(),
        tolerance: 1e-5,
        worst: String::new(),
    });

    // Running statistics after the train-mode forward.
    let mut worst = (0.0, String::new());
    for (name, t) in &model.buffers {
        let want = &reference.get(&format!("after.{name}"))?.data;
        let got = widen(gpu.download(t)?);
        let v = max_diff(&got, want) / max_abs(want).max(1e-30);
        if v >= worst.0 {
            worst = (v, name.clone());
        }
    }
    checks.push(Check {
        group: format!("after.* running stats ({})", model.buffers.len()),
        metric: "max|d| / max|ref| (worst tensor)".into(),
        value: worst.0,
        tolerance: 1e-5,
        worst: worst.1,
    });

    // Gradients. DenseNet-121 at 64x64 has ReLU inputs within rounding of zero whose sign
    // any float32 program may flip; the reference README allows rel-L2 5e-2 there.
    let deep = config.block_config.len() >= 4;
    let grad_rel_tol = if deep { 5e-2 } else { 1e-4 };
    let mut grads = Vec::new();
    let mut largest = 0.0f64;
    for p in &model.params {
        let want = reference.get(&format!("grad.{}", p.name))?.data.clone();
        largest = largest.max(max_abs(&want));
        grads.push((p.name.clone(), widen(gpu.download(&p.grad)?), want));
    }
    let mut worst_rel = (0.0, String::new());
    let mut worst_abs = (0.0, String::new());
    let mut norm0 = None;
    for (name, got, want) in &grads {
        if name == "features.norm0.weight" && !deep {
            norm0 = Some(max_diff(got, want));
            continue;
        }
        let r = rel_l2(got, want);
        if r >= worst_rel.0 {
            worst_rel = (r, name.clone());
        }
        let a = max_diff(got, want) / largest;
        if a >= worst_abs.0 {
            worst_abs = (a, name.clone());
        }
    }
    checks.push(Check {
        group: format!("grad.* ({} tensors)", grads.len()),
        metric: "rel-L2 (worst tensor)".into(),
        value: worst_rel.0,
        tolerance: grad_rel_tol,
        worst: worst_rel.1,
    });
    if !deep {
        checks.push(Check {
            group: "grad.*".into(),
            metric: "max|d| / largest |grad| overall".into(),
            value: worst_abs.0,
            tolerance: 5e-5,
            worst: worst_abs.1,
        });
    }
    if let Some(v) = norm0 {
        checks.push(Check {
            group: "grad.features.norm0.weight".into(),
            metric: "max|d| absolute".into(),
            value: v,
            tolerance: 1e-6,
            worst: String::new(),
        });
    }

    // One Adam step from our own gradients.
    let cfg = AdamConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
    };
    let mut opt = Adam::new(gpu, &model.params, cfg, Schedule::Constant)?;
    let mut enc = gpu.encoder("adam");
    opt.update(&mut enc, &model.params)?;
    enc.submit()?;
    let (mut close, mut total, mut worst_adam) = (0usize, 0usize, (0.0f64, String::new()));
    for p in &model.params {
        let want = &reference.get(&format!("adam1.{}", p.name))?.data;
        let got = widen(gpu.download(&p.value)?);
        for (a, b) in got.iter().zip(want) {
            let d = (a - b).abs();
            close += (d <= 1e-6) as usize;
            total += 1;
            if d > worst_adam.0 {
                worst_adam = (d, p.name.clone());
            }
        }
    }
    let share_far = 1.0 - close as f64 / total.max(1) as f64;
    checks.push(Check {
        group: "adam1.* from our gradients".into(),
        metric: "share of elements off by > 1e-6".into(),
        value: share_far,
        tolerance: 0.005,
        worst: String::new(),
    });
    checks.push(Check {
        group: "adam1.* from our gradients".into(),
        metric: "max|d|".into(),
        value: worst_adam.0,
        tolerance: 2.1e-3,
        worst: worst_adam.1,
    });

    // The Adam kernel alone: reference parameters and gradients in, one step.
    let mut worst_kernel = (0.0f64, String::new());
    let mut enc = gpu.encoder("adam kernel check");
    let mut outs: Vec<(String, Tensor)> = Vec::new();
    for p in &model.params {
        let value = gpu.upload(&file.get(&p.name)?.to_f32(), &p.value.shape, &p.name)?;
        let grad = gpu.upload(
            &file.get(&format!("grad.{}", p.name))?.to_f32(),
            &p.value.shape,
            "grad",
        )?;
        let m = gpu.zeros(&p.value.shape, "m")?;
        let v = gpu.zeros(&p.value.shape, "v")?;
        adam::step(&mut enc, &value, &m, &v, &grad, cfg, 1)?;
        outs.push((p.name.clone(), value));
    }
    enc.submit()?;
    for (name, t) in outs {
        let want = &file.get(&format!("adam1.{name}"))?.data;
        let d = max_diff(&widen(gpu.download(&t)?), want);
        if d >= worst_kernel.0 {
            worst_kernel = (d, name);
        }
    }
    checks.push(Check {
        group: "Adam kernel alone (ref params+grads)".into(),
        metric: "max|d|".into(),
        value: worst_kernel.0,
        tolerance: 2e-7,
        worst: worst_kernel.1,
    });

    let c = &config;
    Ok(Report {
        model: format!(
            "DenseNet(growth_rate={}, block_config={:?}, num_init_features={}, bn_size={}, num_classes={}), {:?} blocks, input {:?}",
            c.growth_rate, c.block_config, c.num_init_features, c.bn_size, c.num_classes, mode, input.shape
        ),
        reference: reference.path.clone(),
        checks,
    })
}
