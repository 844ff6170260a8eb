//! One training step, top to bottom: upload → forward on a tape → loss → backward →
//! Adam → read back the loss and the predictions. Everything between the upload and the
//! read-back is recorded without CPU round-trips.

use std::fmt;

use crate::dist::Collective;
use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::models::Model;
use crate::ops::finite;
use crate::optim::Adam;
use crate::tape::{Param, Tape};

/// Why a training step did not update the model.
#[derive(Debug, Clone)]
pub enum StepError {
    Gpu(GpuError),
    /// The loss or a gradient was NaN or infinite. Nothing was updated (the gradients
    /// were cleared), so the model is still the one before the step.
    NonFinite {
        /// The optimizer step this would have been (1-based).
        step: u32,
        loss: f32,
        /// The first parameter, in state_dict order, with a non-finite gradient.
        param: Option<String>,
    },
}

impl From<GpuError> for StepError {
    fn from(e: GpuError) -> Self {
        StepError::Gpu(e)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Gpu(e) => write!(f, "{e}"),
            StepError::NonFinite { step, loss, param } => write!(
                f,
                "non-finite values at step {step}: loss {loss}, first parameter with a non-finite gradient: {}",
                param.as_deref().unwrap_or("none")
            ),
        }
    }
}

impl std::error::Error for StepError {}

impl From<StepError> for GpuError {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Gpu(e) => e,
            other => GpuError::Device(other.to_string()),
        }
    }
}

/// A model and its optimizer on one device.
pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: Box<dyn Model>,
    pub opt: Adam,
    /// Print per-op device times after every step (`DENSENET_WGPU_PROFILE=1`).
    pub profile: bool,
    /// Synchronised batch norm in [`Trainer::train_step_group`]: statistics over the
    /// global batch rather than each rank's share.
    pub sync_bn: bool,
    /// Seconds the last [`Trainer::train_step_group`] spent summing gradients over the
    /// ranks (read-back, all-reduce, write-back).
    pub comm_seconds: f64,
}

/// Gradients are summed over the ranks in buckets of about this many bytes (PyTorch DDP's
/// default bucket size).
pub const GRAD_BUCKET_BYTES: usize = 25 << 20;

/// What one data-parallel step produced.
#[derive(Clone, Debug)]
pub struct GroupStep {
    /// This rank's share: its predictions and its own loss.
    pub local: BatchResult,
    /// Mean loss over the global batch.
    pub loss: f64,
    /// Correct predictions and images over the global batch.
    pub correct: usize,
    pub count: usize,
    /// The flags passed in, summed over the ranks.
    pub flags: [f64; 2],
}

/// What one batch produced.
#[derive(Clone, Debug, Default)]
pub struct BatchResult {
    /// Mean loss over the batch.
    pub loss: f64,
    pub correct: usize,
    pub count: usize,
    /// Arg-max class per image.
    pub predictions: Vec<usize>,
    /// Softmax probabilities, row-major (count x classes).
    pub probabilities: Vec<f32>,
}

fn check_batch(images: &[f32], labels: &[usize], size: usize, classes: usize) -> Result<usize> {
    let n = labels.len();
    if n == 0 || images.len() != n * 3 * size * size {
        return Err(GpuError::Shape(format!(
            "batch: {} image values for {n} labels of 3x{size}x{size}",
            images.len()
        )));
    }
    check_label_range(labels, classes)?;
    Ok(n)
}

fn check_label_range(labels: &[usize], classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l >= classes) {
        Some(&bad) => Err(GpuError::Shape(format!(
            "batch: label {bad} but the model has {classes} classes"
        ))),
        None => Ok(()),
    }
}

/// Images on the device must be (N, 3, H, W) with one label per image.
fn check_labels(x: &Tensor, labels: &[usize], classes: usize) -> Result<()> {
    match x.shape[..] {
        [n, 3, _, _] if n == labels.len() && n > 0 => check_label_range(labels, classes),
        _ => Err(GpuError::Shape(format!(
            "batch: images of shape {:?} for {} labels; expected (N, 3, H, W) with N = {}",
            x.shape,
            labels.len(),
            labels.len()
        ))),
    }
}

fn summarise(loss: f32, probs: Vec<f32>, labels: &[usize], classes: usize) -> BatchResult {
    let predictions: Vec<usize> = probs
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |best, (i, &p)| if p > best.1 { (i, p) } else { best },
                )
                .0
        })
        .collect();
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    BatchResult {
        loss: loss as f64,
        correct,
        count: labels.len(),
        predictions,
        probabilities: probs,
    }
}

impl<'g> Trainer<'g> {
    pub fn new(gpu: &'g Gpu, model: Box<dyn Model>, opt: Adam) -> Trainer<'g> {
        let profile = std::env::var("DENSENET_WGPU_PROFILE").is_ok_and(|v| v == "1");
        Trainer {
            gpu,
            model,
            opt,
            profile,
            sync_bn: false,
            comm_seconds: 0.0,
        }
    }

    /// One optimisation step on a batch of NCHW images (3 x size x size each). A step
    /// whose loss or gradients are not finite updates nothing ([`StepError::NonFinite`]).
    pub fn train_step(
        &mut self,
        images: &[f32],
        labels: &[usize],
        size: usize,
    ) -> std::result::Result<BatchResult, StepError> {
        let n = check_batch(images, labels, size, self.model.num_classes())?;
        let x = self.gpu.upload(images, &[n, 3, size, size], "images")?;
        self.train_step_on(x, labels)
    }

    /// [`Trainer::train_step`] on images already on the device (N, 3, H, W).
    pub fn train_step_on(
        &mut self,
        x: Tensor,
        labels: &[usize],
    ) -> std::result::Result<BatchResult, StepError> {
        let gpu = self.gpu;
        let classes = self.model.num_classes();
        let (loss_value, probs) = self.forward_backward(x, labels, None)?;

        // Count the non-finite values of every trainable gradient, and read them back with
        // the loss before Adam may touch the weights.
        let params = self.model.params();
        let trainable: Vec<_> = params.iter().filter(|p| p.trainable).collect();
        let flags = gpu.zeros(&[trainable.len().max(1)], "non-finite gradient counts")?;
        let mut enc = gpu.encoder("finite check");
        for (slot, p) in trainable.iter().enumerate() {
            finite::count_nonfinite(&mut enc, &flags, slot, &p.grad)?;
        }
        enc.submit()?;
        let loss = gpu.download(&loss_value)?[0];
        let counts = gpu.download(&flags)?;
        if !loss.is_finite() || counts.iter().any(|&c| c > 0.0) {
            let mut enc = gpu.encoder("clear gradients");
            for p in params {
                enc.clear(&p.grad);
            }
            enc.submit()?;
            let param = trainable
                .iter()
                .zip(&counts)
                .find(|(_, &c)| c > 0.0)
                .map(|(p, _)| p.name.clone());
            return Err(StepError::NonFinite {
                step: self.opt.step + 1,
                loss,
                param,
            });
        }

        // Adam on every parameter, then zero the gradients.
        let mut enc = gpu.encoder("adam");
        self.opt.update(&mut enc, params)?;
        enc.submit()?;

        // The probabilities, read back for accuracy.
        Ok(summarise(loss, gpu.download(&probs)?, labels, classes))
    }

    /// Forward and backward on a batch: the gradients accumulate into each parameter's
    /// `grad`. Returns the loss (one value) and the softmax probabilities.
    fn forward_backward(
        &mut self,
        x: Tensor,
        labels: &[usize],
        sync_bn: Option<&dyn Collective>,
    ) -> Result<(Tensor, Tensor)> {
        let gpu = self.gpu;
        check_labels(&x, labels, self.model.num_classes())?;
        let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let y = gpu.upload(&label_values, &[labels.len()], "labels")?;

        // Forward: every op launches its kernel and records what backward needs.
        let mut tape = Tape::new(gpu);
        if self.profile {
            tape.enable_profiling()?;
        }
        if let Some(group) = sync_bn {
            tape.sync_batch_norm(group);
        }
        let images = tape.input(x, "images");
        let logits = self.model.forward(&mut tape, images, true)?;
        let (loss, probs) = tape.cross_entropy(logits, &y, "loss")?;
        let loss_value = tape.value(loss)?.clone();

        // Backward: gradients accumulate into each parameter's `grad`.
        tape.backward(loss)?;
        if self.profile {
            eprint!("{}", tape.profile_report());
        }
        tape.finish()?;
        Ok((loss_value, probs))
    }

    /// One data-parallel step on this rank's share of a global batch (NCHW images, 3 x size
    /// x size each; the share may be empty). Every rank of `group` calls it for the same
    /// global batch.
    ///
    /// Each rank runs forward and backward on its share; the gradients are then summed over
    /// the ranks, each rank's weighted by its share of the batch (n_r / n), in buckets of
    /// [`GRAD_BUCKET_BYTES`], which gives the gradient of the global batch's mean loss. The
    /// check for non-finite values and the Adam step see the same summed gradients on every
    /// rank, so the replicas stay identical. `flags` are summed over the ranks alongside the
    /// loss (the run uses them to agree on stopping and checkpointing).
    pub fn train_step_group(
        &mut self,
        images: &[f32],
        labels: &[usize],
        size: usize,
        group: &dyn Collective,
        flags: [f64; 2],
    ) -> std::result::Result<GroupStep, StepError> {
        let gpu = self.gpu;
        let classes = self.model.num_classes();
        let n_local = labels.len();
        let mut local = (0.0f32, Vec::new());
        if n_local == 0 && self.sync_bn {
            // The other ranks wait for this one's batch statistics.
            return Err(StepError::Gpu(GpuError::Shape(format!(
                "--sync-bn: rank {} has no image in this batch (its share of the global batch is empty or unreadable)",
                group.rank()
            ))));
        }
        if n_local > 0 {
            check_batch(images, labels, size, classes)?;
            let x = gpu.upload(images, &[n_local, 3, size, size], "images")?;
            let sync = self.sync_bn.then_some(group);
            let (loss, probs) = self.forward_backward(x, labels, sync)?;
            local = (gpu.download(&loss)?[0], gpu.download(&probs)?);
        }
        let result = summarise(local.0, local.1, labels, classes);
        let started = std::time::Instant::now();
        let mut totals = [
            n_local as f64,
            local.0 as f64 * n_local as f64,
            result.correct as f64,
            flags[0],
            flags[1],
        ];
        group.all_reduce_sum_f64(&mut totals);
        let n = totals[0];
        let loss = (totals[1] / n.max(1.0)) as f32;

        // Gradients: weighted by this rank's share, summed over the ranks in buckets,
        // written back.
        let params = self.model.params();
        let trainable: Vec<_> = params.iter().filter(|p| p.trainable).collect();
        let weight = (n_local as f64 / n.max(1.0)) as f32;
        let mut first_nonfinite: Option<String> = None;
        let bucket_len = GRAD_BUCKET_BYTES / 4;
        // Backward produces the last layers' gradients first: buckets go in that order.
        let mut pending: Vec<&Param> = Vec::new();
        let mut pending_len = 0usize;
        let flush = |pending: &mut Vec<&Param>, first: &mut Option<String>| -> Result<()> {
            let grads: Vec<&Tensor> = pending.iter().map(|p| &p.grad).collect();
            let mut bucket: Vec<f32> = gpu.download_many(&grads)?.concat();
            for g in &mut bucket {
                *g *= weight;
            }
            group.all_reduce_sum(&mut bucket);
            let mut at = 0;
            for p in pending.iter() {
                let len = p.grad.numel();
                let values = &bucket[at..at + len];
                if values.iter().any(|v| !v.is_finite()) {
                    // Buckets run from the last parameter back: keep the earliest one.
                    *first = Some(p.name.clone());
                }
                gpu.write(&p.grad, values)?;
                at += len;
            }
            pending.clear();
            Ok(())
        };
        for p in trainable.iter().rev() {
            pending.push(p);
            pending_len += p.grad.numel();
            if pending_len >= bucket_len {
                flush(&mut pending, &mut first_nonfinite)?;
                pending_len = 0;
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut first_nonfinite)?;
        }
        self.comm_seconds = started.elapsed().as_secs_f64();

        if !loss.is_finite() || first_nonfinite.is_some() {
            let mut enc = gpu.encoder("clear gradients");
            for p in params {
                enc.clear(&p.grad);
            }
            enc.submit()?;
            return Err(StepError::NonFinite {
                step: self.opt.step + 1,
                loss,
                param: first_nonfinite,
            });
        }
        let mut enc = gpu.encoder("adam");
        self.opt.update(&mut enc, params)?;
        enc.submit()?;
        Ok(GroupStep {
            local: result,
            loss: loss as f64,
            correct: totals[2] as usize,
            count: n as usize,
            flags: [totals[3], totals[4]],
        })
    }

    /// Inference on a batch (running statistics, nothing recorded, nothing updated).
    pub fn evaluate(&self, images: &[f32], labels: &[usize], size: usize) -> Result<BatchResult> {
        evaluate(self.gpu, self.model.as_ref(), images, labels, size)
    }
}

/// Inference on a batch with any model.
pub fn evaluate(
    gpu: &Gpu,
    model: &dyn Model,
    images: &[f32],
    labels: &[usize],
    size: usize,
) -> Result<BatchResult> {
    let n = check_batch(images, labels, size, model.num_classes())?;
    let x = gpu.upload(images, &[n, 3, size, size], "images")?;
    evaluate_on(gpu, model, x, labels)
}

/// [`evaluate`] on images already on the device (N, 3, H, W).
pub fn evaluate_on(
    gpu: &Gpu,
    model: &dyn Model,
    x: Tensor,
    labels: &[usize],
) -> Result<BatchResult> {
    let classes = model.num_classes();
    check_labels(&x, labels, classes)?;
    let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let y = gpu.upload(&label_values, &[labels.len()], "labels")?;
    let mut tape = Tape::inference(gpu);
    let images = tape.input(x, "images");
    let logits = model.forward(&mut tape, images, false)?;
    let (loss, probs) = tape.cross_entropy(logits, &y, "loss")?;
    let loss_value = tape.value(loss)?.clone();
    tape.finish()?;
    let loss = gpu.download(&loss_value)?[0];
    Ok(summarise(loss, gpu.download(&probs)?, labels, classes))
}
