//! One training step, top to bottom: upload → forward on a tape → loss → backward →
//! Adam → read back the loss and the predictions. Everything between the upload and the
//! read-back is recorded without CPU round-trips.

use std::fmt;

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::models::Model;
use crate::ops::finite;
use crate::optim::Adam;
use crate::tape::Tape;

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
        check_labels(&x, labels, classes)?;
        let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let y = gpu.upload(&label_values, &[labels.len()], "labels")?;

        // Forward: every op launches its kernel and records what backward needs.
        let mut tape = Tape::new(gpu);
        if self.profile {
            tape.enable_profiling()?;
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
