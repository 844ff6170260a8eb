//! One training step, top to bottom: upload → forward on a tape → loss → backward →
//! the gradient-reduce hook → the non-finite check → Adam. Everything between the upload
//! and the read-back of the loss and predictions is recorded without CPU round-trips.
//!
//! One process reduces nothing ([`NoReduce`]); data-parallel training passes its own hook
//! ([`crate::dist::DataParallel`]) to the same [`Trainer::step`].

use std::fmt;

use crate::collective::Collective;
use crate::gpu::{Gpu, GpuError, Result, ShapeProblem, Tensor};
use crate::models::Model;
use crate::ops::{cross_entropy, finite};
use crate::optim::Adam;
use crate::tape::{GradReady, Tape};

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
    /// A data-parallel step with synchronised batch norm on a rank whose share of the
    /// global batch is empty (or unreadable): the other ranks would wait for its batch
    /// statistics.
    EmptyShare {
        rank: usize,
    },
    /// The [`GradientReduce`] hook returned without running the pass, so Adam would apply
    /// gradients that no backward produced.
    PassNotRun,
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
            StepError::EmptyShare { rank } => write!(
                f,
                "synchronised batch norm: rank {rank} has no image in this batch (its share of \
                 the global batch is empty or unreadable)"
            ),
            StepError::PassNotRun => {
                f.write_str("the gradient-reduce hook did not run the forward and backward pass")
            }
        }
    }
}

impl std::error::Error for StepError {}

/// A model and its optimizer on one device.
pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: Box<dyn Model>,
    pub opt: Adam,
    /// Time every op of each step (a device sync after each op: slow; for finding slow
    /// kernels), keeping the times in [`Trainer::last_profile`].
    pub profile: bool,
    /// The per-op device times of the last step, when profiling.
    pub last_profile: Option<Vec<crate::tape::OpTime>>,
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

/// This process's forward and backward pass as a [`GradientReduce`] hook runs it: it takes
/// the group that synchronised batch norm computes its statistics over (none: each
/// process's own batch) and the hook that backward calls as it records gradients
/// ([`Tape::backward_with`]).
pub type Pass<'a> = dyn FnMut(Option<&dyn Collective>, &mut GradReady<'_>) -> Result<()> + 'a;

/// The gradient-reduce hook of [`Trainer::step`]: what happens to the gradients between
/// this process's backward pass and the optimizer. One process reduces nothing
/// ([`NoReduce`]); a data-parallel step sums them over the processes
/// ([`crate::dist::DataParallel`]).
pub trait GradientReduce {
    /// Runs `pass` once, then leaves every gradient in `grads` (the trainable parameters'
    /// names and gradients, in state_dict order) holding the reduced gradient.
    fn reduce(&mut self, grads: &[(String, Tensor)], pass: &mut Pass<'_>) -> Result<()>;
    /// The step's loss (the global batch's mean) from this process's result on its batch.
    fn reduce_loss(&mut self, local: &BatchResult) -> f32;
}

/// One process: the gradients and the loss are the batch's own.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReduce;

impl GradientReduce for NoReduce {
    fn reduce(&mut self, _: &[(String, Tensor)], pass: &mut Pass<'_>) -> Result<()> {
        pass(None, &mut |_, _| Ok(()))
    }
    fn reduce_loss(&mut self, local: &BatchResult) -> f32 {
        local.loss as f32
    }
}

/// A batch of NCHW images (3 x size x size each) on the device, once the number of values
/// and every label check out.
pub(crate) fn upload_batch(
    gpu: &Gpu,
    images: &[f32],
    labels: &[usize],
    size: usize,
    classes: usize,
) -> Result<Tensor> {
    let n = check_batch(images, labels, size, classes)?;
    gpu.upload(images, &[n, 3, size, size], "images")
}

fn check_batch(images: &[f32], labels: &[usize], size: usize, classes: usize) -> Result<usize> {
    let n = labels.len();
    if n == 0 || images.len() != n * 3 * size * size {
        let problem = ShapeProblem::ValueCount {
            tensor: "images".into(),
            values: images.len(),
            shape: vec![n, 3, size, size],
        };
        return Err(GpuError::shape("batch", problem));
    }
    cross_entropy::check_labels(labels, classes)?;
    Ok(n)
}

/// Images on the device must be (N, 3, H, W) with one label per image.
fn check_labels(x: &Tensor, labels: &[usize], classes: usize) -> Result<()> {
    match x.shape[..] {
        [n, 3, _, _] if n == labels.len() && n > 0 => cross_entropy::check_labels(labels, classes),
        _ => Err(GpuError::shape(
            "batch",
            ShapeProblem::Layout {
                tensor: "images".into(),
                shape: x.shape.clone(),
                layout: "(N, 3, H, W) with N the number of labels",
            },
        )),
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
        Trainer {
            gpu,
            model,
            opt,
            profile: false,
            last_profile: None,
        }
    }

    /// One optimisation step of this process alone on a batch of NCHW images (3 x size x
    /// size each): [`Trainer::step`] with [`NoReduce`]. A step whose loss or gradients are
    /// not finite updates nothing ([`StepError::NonFinite`]). Native programs block on it
    /// (`pollster::block_on(trainer.train_step(..))`); a web page awaits it.
    pub async fn train_step(
        &mut self,
        images: &[f32],
        labels: &[usize],
        size: usize,
    ) -> std::result::Result<BatchResult, StepError> {
        let x = upload_batch(self.gpu, images, labels, size, self.model.num_classes())?;
        self.step(Some((x, labels)), &mut NoReduce).await
    }

    /// The step: forward and backward on `batch` (none: this process has no image in a
    /// data-parallel step's global batch), the gradients through `reduce`, then the check
    /// for non-finite values and Adam: a step whose loss or gradients are not finite
    /// updates nothing ([`StepError::NonFinite`]). Returns this process's result on its
    /// batch.
    pub async fn step(
        &mut self,
        mut batch: Option<(Tensor, &[usize])>,
        reduce: &mut dyn GradientReduce,
    ) -> std::result::Result<BatchResult, StepError> {
        let gpu = self.gpu;
        let classes = self.model.num_classes();
        let grads: Vec<(String, Tensor)> = self
            .model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| (p.name.clone(), p.grad.clone()))
            .collect();
        // The loss and the probabilities, recorded by the pass and read after it.
        let given = batch.is_some();
        let mut outputs = None;
        let mut pass = |sync_bn: Option<&dyn Collective>, ready: &mut GradReady<'_>| {
            if let Some((x, labels)) = batch.take() {
                let (loss, probs) = self.forward_backward(x, labels, sync_bn, ready)?;
                outputs = Some((loss, probs, labels));
            }
            Ok(())
        };
        reduce.reduce(&grads, &mut pass)?;
        if given && outputs.is_none() {
            // Adam would apply gradients no backward produced.
            return Err(StepError::PassNotRun);
        }
        // The gradients are final: count their non-finite values, and read the counts with
        // the loss and the probabilities in one wait.
        let flags = gpu.zeros(&[grads.len().max(1)], "non-finite gradient counts")?;
        let mut enc = gpu.encoder("finite check");
        for (slot, (_, grad)) in grads.iter().enumerate() {
            finite::count_nonfinite(&mut enc, &flags, slot, grad)?;
        }
        enc.submit()?;
        let (local, counts) = match outputs {
            Some((loss, probs, labels)) => {
                let mut values = gpu.read_many(&[&flags, &loss, &probs]).await?.into_iter();
                let counts = values.next().unwrap();
                let (loss, probs) = (values.next().unwrap()[0], values.next().unwrap());
                (summarise(loss, probs, labels, classes), counts)
            }
            None => (BatchResult::default(), gpu.read(&flags).await?),
        };
        let loss = reduce.reduce_loss(&local);
        let nonfinite = grads.iter().zip(&counts).find(|(_, &c)| c > 0.0);
        self.apply_or_reject(loss, nonfinite.map(|((name, _), _)| name.clone()))?;
        // The step ends with the update done: left in flight, it runs beside the next
        // step's recording, which on a CPU adapter (the same cores) made steps slower
        // (docs/performance.md).
        gpu.finished().await?;
        Ok(local)
    }

    /// The end of every step, once each trainable gradient holds the batch's gradient
    /// (summed over the ranks in a data-parallel step), `loss` is the batch's loss and
    /// `nonfinite` the first trainable parameter (state_dict order) whose gradient holds a
    /// non-finite value, as read back before Adam may touch the weights: if there is one,
    /// or if the loss is not finite, it clears the gradients and applies nothing; else Adam
    /// on every parameter, which zeroes the gradients.
    fn apply_or_reject(
        &mut self,
        loss: f32,
        nonfinite: Option<String>,
    ) -> std::result::Result<(), StepError> {
        let gpu = self.gpu;
        let params = self.model.params();
        if !loss.is_finite() || nonfinite.is_some() {
            let mut enc = gpu.encoder("clear gradients");
            for p in params {
                enc.clear(&p.grad);
            }
            enc.submit()?;
            return Err(StepError::NonFinite {
                step: self.opt.step + 1,
                loss,
                param: nonfinite,
            });
        }
        let mut enc = gpu.encoder("adam");
        self.opt.update(&mut enc, params)?;
        enc.submit()?;
        Ok(())
    }

    /// Forward and backward on a batch: the gradients accumulate into each parameter's
    /// `grad`. Returns the loss (one value) and the softmax probabilities.
    fn forward_backward(
        &mut self,
        x: Tensor,
        labels: &[usize],
        sync_bn: Option<&dyn Collective>,
        ready: &mut GradReady<'_>,
    ) -> Result<(Tensor, Tensor)> {
        let gpu = self.gpu;
        check_labels(&x, labels, self.model.num_classes())?;
        let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let y = gpu.upload(&label_values, &[labels.len()], "labels")?;

        // Forward: every op launches its kernel and records what backward needs.
        let mut tape = Tape::new(gpu);
        #[cfg(not(target_arch = "wasm32"))]
        {
            if self.profile {
                tape.enable_profiling()?;
            }
            if let Some(group) = sync_bn {
                tape.sync_batch_norm(group);
            }
        }
        // Both wait for the device in the middle of the pass, which a browser cannot.
        #[cfg(target_arch = "wasm32")]
        if self.profile {
            return Err(GpuError::NeedsNative(crate::gpu::NativeFeature::Profiling));
        }
        #[cfg(target_arch = "wasm32")]
        if sync_bn.is_some() {
            return Err(GpuError::NeedsNative(
                crate::gpu::NativeFeature::SyncBatchNorm,
            ));
        }
        let images = tape.input(x, "images");
        let logits = self.model.forward(&mut tape, images, true)?;
        let (loss, probs) = tape.cross_entropy(logits, &y, "loss")?;
        let loss_value = tape.value(loss)?.clone();

        // Backward: gradients accumulate into each parameter's `grad`.
        tape.backward_with(loss, ready)?;
        self.last_profile = tape.profile();
        tape.finish()?;
        Ok((loss_value, probs))
    }

    /// Inference on a batch (running statistics, nothing recorded, nothing updated).
    pub async fn evaluate(
        &self,
        images: &[f32],
        labels: &[usize],
        size: usize,
    ) -> Result<BatchResult> {
        evaluate(self.gpu, self.model.as_ref(), images, labels, size).await
    }
}

/// Inference on a batch with any model.
pub async fn evaluate(
    gpu: &Gpu,
    model: &dyn Model,
    images: &[f32],
    labels: &[usize],
    size: usize,
) -> Result<BatchResult> {
    let x = upload_batch(gpu, images, labels, size, model.num_classes())?;
    evaluate_on(gpu, model, x, labels).await
}

/// [`evaluate`] on images already on the device (N, 3, H, W).
pub async fn evaluate_on(
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
    let mut values = gpu.read_many(&[&loss_value, &probs]).await?.into_iter();
    let (loss, probs) = (values.next().unwrap()[0], values.next().unwrap());
    Ok(summarise(loss, probs, labels, classes))
}
