//! The data-parallel step: [`Trainer::step`] with a gradient-reduce hook that sums every
//! gradient over the ranks, in buckets, while backward runs or after it.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use crate::collective::{Collective, Communication};
use crate::gpu::{Gpu, Result, Staged, Tensor};
use crate::tape::Tape;
use crate::train::{upload_batch, BatchResult, GradientReduce, Pass, StepError, Trainer};

/// Gradients are summed over the ranks in buckets of about this many bytes (PyTorch DDP's
/// default bucket size).
pub const GRAD_BUCKET_BYTES: usize = 25 << 20;

/// How this process takes part in data-parallel steps.
pub struct DataParallel {
    /// Synchronised batch norm: statistics over the global batch rather than each rank's
    /// share.
    pub sync_bn: bool,
    /// A second channel to the ranks on which gradient buckets are summed while backward
    /// runs ([`Collective::duplicate`]); `None`: after backward.
    pub overlap: Option<Box<dyn Collective + Send + Sync>>,
    /// Size of the gradient buckets in bytes ([`GRAD_BUCKET_BYTES`] unless changed).
    pub bucket_bytes: usize,
    /// Seconds the last step spent summing gradients over the ranks, and waiting for the
    /// sums after backward.
    pub comm_seconds: Communication,
}

impl Default for DataParallel {
    fn default() -> Self {
        DataParallel {
            sync_bn: false,
            overlap: None,
            bucket_bytes: GRAD_BUCKET_BYTES,
            comm_seconds: Communication::default(),
        }
    }
}

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

impl DataParallel {
    /// One step of `trainer` on this rank's share of a global batch (NCHW images, 3 x size
    /// x size each; the share may be empty). Every rank of `group` calls it for the same
    /// global batch.
    ///
    /// Each rank runs forward and backward on its share; the gradients are summed over the
    /// ranks, each rank's weighted by its share of the batch (n_r / n), which gives the
    /// gradient of the global batch's mean loss. They are summed in buckets of about
    /// [`DataParallel::bucket_bytes`] in reverse parameter order, as PyTorch DDP does: with
    /// [`DataParallel::overlap`] set, a bucket is read back (through a mapped staging
    /// buffer) and summed on a second thread as soon as backward has produced all its
    /// gradients, while backward goes on; otherwise after backward. The check for
    /// non-finite values and the Adam step see the same summed gradients on every rank, so
    /// the replicas stay identical. `flags` are summed over the ranks with the image counts
    /// (the run uses them to agree on stopping and checkpointing).
    pub async fn step(
        &mut self,
        trainer: &mut Trainer<'_>,
        group: &dyn Collective,
        (images, labels, size): (&[f32], &[usize], usize),
        flags: [f64; 2],
    ) -> std::result::Result<GroupStep, StepError> {
        let n_local = labels.len();
        if n_local == 0 && self.sync_bn {
            // The other ranks wait for this one's batch statistics.
            return Err(StepError::EmptyShare { rank: group.rank() });
        }
        let mut counts = [n_local as f64, flags[0], flags[1]];
        group.all_reduce_sum_f64(&mut counts);
        let n = counts[0];
        let batch = if n_local > 0 {
            let classes = trainer.model.num_classes();
            let x = upload_batch(trainer.gpu, images, labels, size, classes)?;
            Some((x, labels))
        } else {
            None
        };
        let mut reduce = BucketReduce {
            gpu: trainer.gpu,
            group,
            overlap: self.overlap.as_deref(),
            sync_bn: self.sync_bn,
            bucket_bytes: self.bucket_bytes,
            weight: (n_local as f64 / n.max(1.0)) as f32,
            empty: n_local == 0,
            images: n,
            comm_seconds: Communication::default(),
            loss: 0.0,
            correct: 0.0,
        };
        let local = trainer.step(batch, &mut reduce).await?;
        self.comm_seconds = reduce.comm_seconds;
        Ok(GroupStep {
            local,
            loss: reduce.loss as f64,
            correct: reduce.correct as usize,
            count: n as usize,
            flags: [counts[1], counts[2]],
        })
    }
}

/// The hook of one data-parallel step.
struct BucketReduce<'a> {
    gpu: &'a Gpu,
    group: &'a dyn Collective,
    overlap: Option<&'a (dyn Collective + Send + Sync)>,
    sync_bn: bool,
    bucket_bytes: usize,
    /// This rank's share of the global batch, n_r / n.
    weight: f32,
    /// This rank has no image: it sends zeros.
    empty: bool,
    /// Images in the global batch.
    images: f64,
    comm_seconds: Communication,
    /// The mean loss and the correct predictions over the global batch (once
    /// [`GradientReduce::reduce_loss`] has run).
    loss: f32,
    correct: f64,
}

impl GradientReduce for BucketReduce<'_> {
    fn reduce(&mut self, grads: &[(String, Tensor)], pass: &mut Pass<'_>) -> Result<()> {
        let gpu = self.gpu;
        let buckets = bucket_plan(grads, self.bucket_bytes);
        let reduced = match self.overlap {
            None => self.after_backward(grads, &buckets, pass)?,
            Some(channel) => self.during_backward(channel, grads, &buckets, pass)?,
        };
        // The sums replace this rank's gradients.
        for (bucket, values) in buckets.iter().zip(&reduced) {
            let mut at = 0;
            for &i in bucket {
                let grad = &grads[i].1;
                gpu.write(grad, &values[at..at + grad.numel()])?;
                at += grad.numel();
            }
        }
        Ok(())
    }

    /// Sums the loss and the correct predictions over the ranks.
    fn reduce_loss(&mut self, local: &BatchResult) -> f32 {
        let mut totals = [local.loss * local.count as f64, local.correct as f64];
        self.group.all_reduce_sum_f64(&mut totals);
        self.loss = (totals[0] / self.images.max(1.0)) as f32;
        self.correct = totals[1];
        self.loss
    }
}

impl BucketReduce<'_> {
    /// Runs the pass, then reads back and sums every bucket on this thread. Returns the
    /// summed buckets.
    fn after_backward(
        &mut self,
        grads: &[(String, Tensor)],
        buckets: &[Vec<usize>],
        pass: &mut Pass<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        pass(self.sync_bn.then_some(self.group), &mut |_, _| Ok(()))?;
        let started = Instant::now();
        let mut reduced = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let tensors: Vec<&Tensor> = bucket.iter().map(|&i| &grads[i].1).collect();
            let mut values = if self.empty {
                vec![0.0; tensors.iter().map(|t| t.numel()).sum()]
            } else {
                self.gpu.download_many(&tensors)?.concat()
            };
            values.iter_mut().for_each(|v| *v *= self.weight);
            self.group.all_reduce_sum(&mut values);
            reduced.push(values);
        }
        let took = started.elapsed().as_secs_f64();
        self.comm_seconds = Communication {
            summing: took,
            waited: took,
        };
        Ok(reduced)
    }

    /// Runs the pass while a second thread sums each bucket on `channel` as soon as
    /// backward has recorded all its gradients. Returns the summed buckets.
    fn during_backward(
        &mut self,
        channel: &(dyn Collective + Send + Sync),
        grads: &[(String, Tensor)],
        buckets: &[Vec<usize>],
        pass: &mut Pass<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        let (gpu, weight) = (self.gpu, self.weight);
        let index: HashMap<&str, usize> = grads
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.as_str(), i))
            .collect();
        let mut bucket_of = vec![0; grads.len()];
        for (b, bucket) in buckets.iter().enumerate() {
            for &i in bucket {
                bucket_of[i] = b;
            }
        }
        let sync_bn = self.sync_bn.then_some(self.group);
        let (run, joined, exposed) = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Pending>();
            let worker = scope.spawn(move || -> Result<(Vec<Vec<f32>>, f64)> {
                let mut reduced = Vec::new();
                let mut busy = 0.0;
                for pending in rx {
                    let mut values = match pending {
                        Pending::Staged(staged) => staged.wait(gpu)?.concat(),
                        Pending::Zeros(len) => vec![0.0; len],
                    };
                    let started = Instant::now();
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
                grads,
                empty: self.empty,
                tx,
                next: 0,
            };
            let mut missing: Vec<usize> = buckets.iter().map(Vec::len).collect();
            let mut ready = |tape: &mut Tape, done: &[(String, Tensor)]| -> Result<()> {
                for (name, _) in done {
                    if let Some(&i) = index.get(name.as_str()) {
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
            // Gradients no op produced (a parameter the forward did not use) stay zero.
            let run = pass(sync_bn, &mut ready).and_then(|()| out.send_up_to(buckets.len()));
            // On an error the remaining buckets still go out (as zeros) so that the other
            // ranks' sums complete; the error is reported after.
            if run.is_err() {
                out.empty = true;
                let _ = out.send_up_to(buckets.len());
            }
            drop(out);
            let waited = Instant::now();
            let joined = worker.join().expect("the gradient thread panicked");
            (run, joined, waited.elapsed().as_secs_f64())
        });
        run?;
        let (reduced, busy) = joined?;
        self.comm_seconds = Communication {
            summing: busy,
            waited: exposed,
        };
        Ok(reduced)
    }
}

/// Trainable parameters (indices among `grads`) in buckets of about `bucket_bytes`, from
/// the last parameter back: the order backward roughly produces them in.
fn bucket_plan(grads: &[(String, Tensor)], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new()];
    let mut bytes = 0;
    for i in (0..grads.len()).rev() {
        if bytes >= bucket_bytes.max(1) {
            buckets.push(Vec::new());
            bytes = 0;
        }
        buckets.last_mut().unwrap().push(i);
        bytes += grads[i].1.numel() * 4;
    }
    buckets
}

/// Sends buckets, in order, to the gradient thread.
struct Outbox<'a> {
    gpu: &'a Gpu,
    buckets: &'a [Vec<usize>],
    grads: &'a [(String, Tensor)],
    /// This rank has no image: it sends zeros.
    empty: bool,
    tx: mpsc::Sender<Pending>,
    /// The next bucket to send.
    next: usize,
}

impl Outbox<'_> {
    /// Starts reading back every bucket before `upto` not sent yet, and sends them.
    fn send_up_to(&mut self, upto: usize) -> Result<()> {
        while self.next < upto {
            let tensors: Vec<&Tensor> = self.buckets[self.next]
                .iter()
                .map(|&i| &self.grads[i].1)
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
    Staged(Staged),
    /// A rank with no image in the batch contributes zeros.
    Zeros(usize),
}
