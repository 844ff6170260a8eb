//! One training step, top to bottom: upload → forward on a tape → loss → backward →
//! Adam → read back the loss and the predictions. Everything between the upload and the
//! read-back is recorded without CPU round-trips.

use std::fmt;

use crate::dist::Collective;
use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::models::Model;
use crate::ops::finite;
use crate::optim::Adam;
use crate::tape::{GradReady, Param, Tape};

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

/// The loss of a step as [`Trainer::apply_or_reject`] gets it: on the device (one
/// process), or already summed over the ranks.
enum StepLoss<'t> {
    OnDevice(&'t Tensor),
    Known(f32),
}

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
    /// Synchronised batch norm in [`Trainer::train_step_group`]: statistics over the
    /// global batch rather than each rank's share.
    pub sync_bn: bool,
    /// Seconds the last [`Trainer::train_step_group`] spent summing gradients over the
    /// ranks (read-back and all-reduce; with [`Trainer::overlap`], the all-reduces alone),
    /// and the seconds it waited for them after backward (with overlap: what backward did
    /// not hide).
    pub comm_seconds: [f64; 2],
    /// A second channel to the ranks on which [`Trainer::train_step_group`] sums gradient
    /// buckets while backward runs ([`Collective::duplicate`]); `None`: after backward.
    pub overlap: Option<Box<dyn Collective + Send + Sync>>,
    /// Size of the gradient buckets of [`Trainer::train_step_group`] in bytes
    /// ([`GRAD_BUCKET_BYTES`] unless changed).
    pub bucket_bytes: usize,
}

/// Sends buckets, in order, to the gradient thread.
struct Outbox<'a> {
    gpu: &'a Gpu,
    buckets: &'a [Vec<usize>],
    grads: &'a [Tensor],
    /// This rank has no image: it sends zeros.
    empty: bool,
    tx: std::sync::mpsc::Sender<Pending>,
    /// The next bucket to send.
    next: usize,
}

impl Outbox<'_> {
    /// Starts reading back every bucket before `upto` not sent yet, and sends them.
    fn send_up_to(&mut self, upto: usize) -> Result<()> {
        while self.next < upto {
            let tensors: Vec<&Tensor> = self.buckets[self.next]
                .iter()
                .map(|&i| &self.grads[i])
                .collect();
            let pending = if self.empty {
                Pending::Zeros(tensors.iter().map(|t| t.numel()).sum())
            } else {
                Pending::Staged(self.gpu.stage_read(&tensors)?)
            };
            // A send fails only when the worker stopped on an error, which its join reports.
            let _ = self.tx.send(pending);
            self.next += 1;
        }
        Ok(())
    }
}

/// A bucket on its way to the gradient thread.
enum Pending {
    Staged(crate::gpu::Staged),
    /// A rank with no image in the batch contributes zeros.
    Zeros(usize),
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
        Trainer {
            gpu,
            model,
            opt,
            profile: false,
            last_profile: None,
            sync_bn: false,
            comm_seconds: [0.0; 2],
            overlap: None,
            bucket_bytes: GRAD_BUCKET_BYTES,
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
        let classes = self.model.num_classes();
        let (loss, probs) = self.forward_backward(x, labels, None, &mut |_, _| Ok(()))?;
        let loss = self.apply_or_reject(StepLoss::OnDevice(&loss))?;
        // The probabilities, read back for accuracy.
        Ok(summarise(loss, self.gpu.download(&probs)?, labels, classes))
    }

    /// The end of every step, once each trainable gradient holds the batch's gradient
    /// (summed over the ranks in a data-parallel step). Counts the non-finite values of
    /// every gradient on the device and reads them back with the loss, before Adam may touch
    /// the weights: if any, it clears the gradients, applies nothing and names the first
    /// such parameter (state_dict order); else Adam on every parameter, which zeroes the
    /// gradients. Returns the loss.
    fn apply_or_reject(&mut self, loss: StepLoss) -> std::result::Result<f32, StepError> {
        let gpu = self.gpu;
        let params = self.model.params();
        let trainable: Vec<_> = params.iter().filter(|p| p.trainable).collect();
        let flags = gpu.zeros(&[trainable.len().max(1)], "non-finite gradient counts")?;
        let mut enc = gpu.encoder("finite check");
        for (slot, p) in trainable.iter().enumerate() {
            finite::count_nonfinite(&mut enc, &flags, slot, &p.grad)?;
        }
        enc.submit()?;
        let loss = match loss {
            StepLoss::OnDevice(value) => gpu.download(value)?[0],
            StepLoss::Known(value) => value,
        };
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
        let mut enc = gpu.encoder("adam");
        self.opt.update(&mut enc, params)?;
        enc.submit()?;
        Ok(loss)
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
        tape.backward_with(loss, ready)?;
        self.last_profile = tape.profile();
        tape.finish()?;
        Ok((loss_value, probs))
    }

    /// One data-parallel step on this rank's share of a global batch (NCHW images, 3 x size
    /// x size each; the share may be empty). Every rank of `group` calls it for the same
    /// global batch.
    ///
    /// Each rank runs forward and backward on its share; the gradients are summed over the
    /// ranks, each rank's weighted by its share of the batch (n_r / n), which gives the
    /// gradient of the global batch's mean loss. They are summed in buckets of about
    /// [`Trainer::bucket_bytes`] in reverse parameter order, as PyTorch DDP does: with
    /// [`Trainer::overlap`] set, a bucket is read back (through a mapped staging buffer)
    /// and summed on a second thread as soon as backward has produced all its gradients,
    /// while backward goes on; otherwise after backward. The check for non-finite values
    /// and the Adam step see the same summed gradients on every rank, so the replicas stay
    /// identical. `flags` are summed over the ranks with the image counts (the run uses them
    /// to agree on stopping and checkpointing).
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
        if n_local == 0 && self.sync_bn {
            // The other ranks wait for this one's batch statistics.
            return Err(StepError::Gpu(GpuError::Shape(format!(
                "synchronised batch norm: rank {} has no image in this batch (its share of the global batch is empty or unreadable)",
                group.rank()
            ))));
        }
        let mut counts = [n_local as f64, flags[0], flags[1]];
        group.all_reduce_sum_f64(&mut counts);
        let n = counts[0];
        let weight = (n_local as f64 / n.max(1.0)) as f32;
        let buckets = self.bucket_plan();
        let overlap = self.overlap.take();
        let step = self.forward_backward_reduced(
            (images, labels, size),
            group,
            overlap.as_deref(),
            &buckets,
            weight,
        );
        self.overlap = overlap;
        let (local, reduced, [busy, exposed]) = step?;
        self.comm_seconds = [busy, exposed];
        let result = summarise(local.0, local.1, labels, classes);
        let mut totals = [local.0 as f64 * n_local as f64, result.correct as f64];
        group.all_reduce_sum_f64(&mut totals);
        let loss = (totals[0] / n.max(1.0)) as f32;

        // The sums replace each rank's gradients; then the same end as one process.
        let trainable: Vec<&Param> = self.model.params().iter().filter(|p| p.trainable).collect();
        for (bucket, values) in buckets.iter().zip(&reduced) {
            let mut at = 0;
            for &i in bucket {
                let grad = &trainable[i].grad;
                gpu.write(grad, &values[at..at + grad.numel()])?;
                at += grad.numel();
            }
        }
        self.apply_or_reject(StepLoss::Known(loss))?;
        Ok(GroupStep {
            local: result,
            loss: loss as f64,
            correct: totals[1] as usize,
            count: n as usize,
            flags: [counts[1], counts[2]],
        })
    }

    /// Trainable parameters (indices among them) in buckets of about
    /// [`Trainer::bucket_bytes`], from the last parameter back: the order backward roughly
    /// produces them in.
    fn bucket_plan(&self) -> Vec<Vec<usize>> {
        let trainable: Vec<&Param> = self.model.params().iter().filter(|p| p.trainable).collect();
        let mut buckets: Vec<Vec<usize>> = vec![Vec::new()];
        let mut bytes = 0;
        for i in (0..trainable.len()).rev() {
            if bytes >= self.bucket_bytes.max(1) {
                buckets.push(Vec::new());
                bytes = 0;
            }
            buckets.last_mut().unwrap().push(i);
            bytes += trainable[i].grad.numel() * 4;
        }
        buckets
    }

    /// Forward and backward on this rank's share (none when empty), with every bucket of
    /// gradients weighted by `weight` and summed over the ranks: on `overlap`'s thread while
    /// backward runs, or on `group` after it. Returns (local loss, local probabilities),
    /// the summed buckets, and the seconds spent summing and the seconds waited for the
    /// sums after backward.
    #[allow(clippy::type_complexity)]
    fn forward_backward_reduced(
        &mut self,
        (images, labels, size): (&[f32], &[usize], usize),
        group: &dyn Collective,
        overlap: Option<&(dyn Collective + Send + Sync)>,
        buckets: &[Vec<usize>],
        weight: f32,
    ) -> Result<((f32, Vec<f32>), Vec<Vec<f32>>, [f64; 2])> {
        let gpu = self.gpu;
        let n_local = labels.len();
        let grads: Vec<Tensor> = self
            .model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.grad.clone())
            .collect();
        let x = if n_local > 0 {
            check_batch(images, labels, size, self.model.num_classes())?;
            Some(gpu.upload(images, &[n_local, 3, size, size], "images")?)
        } else {
            None
        };
        let sync = self.sync_bn.then_some(group);
        let Some(channel) = overlap else {
            // After backward, on this thread.
            let local = match x {
                Some(x) => {
                    let (loss, probs) =
                        self.forward_backward(x, labels, sync, &mut |_, _| Ok(()))?;
                    (gpu.download(&loss)?[0], gpu.download(&probs)?)
                }
                None => (0.0, Vec::new()),
            };
            let started = std::time::Instant::now();
            let mut reduced = Vec::with_capacity(buckets.len());
            for bucket in buckets {
                let tensors: Vec<&Tensor> = bucket.iter().map(|&i| &grads[i]).collect();
                let mut values = gpu.download_many(&tensors)?.concat();
                values.iter_mut().for_each(|v| *v *= weight);
                group.all_reduce_sum(&mut values);
                reduced.push(values);
            }
            let took = started.elapsed().as_secs_f64();
            return Ok((local, reduced, [took, took]));
        };

        // Overlapped: buckets go, in order, to a thread that waits for their read-back and
        // sums them on the second channel.
        let index: std::collections::HashMap<String, usize> = self
            .model
            .params()
            .iter()
            .filter(|p| p.trainable)
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let mut bucket_of = vec![0; grads.len()];
        for (b, bucket) in buckets.iter().enumerate() {
            for &i in bucket {
                bucket_of[i] = b;
            }
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<Pending>();
            let worker = scope.spawn(move || -> Result<(Vec<Vec<f32>>, f64)> {
                let mut reduced = Vec::new();
                let mut busy = 0.0;
                for pending in rx {
                    let mut values = match pending {
                        Pending::Staged(staged) => staged.wait(gpu)?.concat(),
                        Pending::Zeros(len) => vec![0.0; len],
                    };
                    let started = std::time::Instant::now();
                    values.iter_mut().for_each(|v| *v *= weight);
                    channel.all_reduce_sum(&mut values);
                    busy += started.elapsed().as_secs_f64();
                    reduced.push(values);
                }
                Ok((reduced, busy))
            });
            let mut out = Outbox {
                gpu,
                buckets,
                grads: &grads,
                empty: n_local == 0,
                tx,
                next: 0,
            };
            let mut missing: Vec<usize> = buckets.iter().map(Vec::len).collect();
            let mut local = (0.0, Vec::new());
            let run = (|| -> Result<()> {
                if let Some(x) = x {
                    let mut ready = |tape: &mut Tape, done: &[(String, Tensor)]| -> Result<()> {
                        for (name, _) in done {
                            if let Some(&i) = index.get(name) {
                                missing[bucket_of[i]] -= 1;
                            }
                        }
                        let next = out.next;
                        let upto = next + missing[next..].iter().take_while(|&&m| m == 0).count();
                        if upto > next {
                            // The gradients are recorded, not yet computed: submit them first.
                            tape.flush()?;
                            out.send_up_to(upto)?;
                        }
                        Ok(())
                    };
                    let (loss, probs) = self.forward_backward(x, labels, sync, &mut ready)?;
                    local = (gpu.download(&loss)?[0], gpu.download(&probs)?);
                }
                // Gradients no op produced (a parameter the forward did not use) stay zero.
                out.send_up_to(buckets.len())
            })();
            // On an error the remaining buckets still go out (as zeros) so that the other
            // ranks' sums complete; the error is reported after.
            if run.is_err() {
                out.empty = true;
                let _ = out.send_up_to(buckets.len());
            }
            drop(out);
            let waited = std::time::Instant::now();
            let joined = worker.join().expect("the gradient thread panicked");
            let exposed = waited.elapsed().as_secs_f64();
            run?;
            let (reduced, busy) = joined?;
            Ok((local, reduced, [busy, exposed]))
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
