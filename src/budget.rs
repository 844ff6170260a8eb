//! What a training run will ask of the device, known before its first step.
//!
//! [`plan_training`] runs one training step and one evaluation batch of the chosen model,
//! image size and batch *dry* ([`Gpu::dry_run`]): every op checks its shapes and limits and
//! allocates exactly what the real step allocates, but nothing is run and no memory is
//! taken. That gives the peak of the crate's device accounting ([`crate::gpu::MemoryStats`])
//! and the largest single buffer, which [`MemoryPlan::check`] compares with the adapter's
//! binding limit and memory. When they do not fit, [`largest_fitting_batch`] searches the
//! batch that does.

use std::fmt;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use crate::gpu::{Gpu, GpuError};
use crate::models::{BlockMode, ModelConfig};
use crate::ops::adam::AdamConfig;
use crate::optim::{Adam, Schedule};
use crate::train::{evaluate_on, NoReduce, StepError, Trainer};

/// The model side of a run: what is built and trained.
#[derive(Clone, Debug)]
pub struct RunShape {
    pub config: ModelConfig,
    pub mode: BlockMode,
    pub freeze_features: bool,
    pub image_size: usize,
}

impl RunShape {
    /// A trainer of this model (seed 0) with the default Adam at a constant learning rate:
    /// the step that [`plan_training`] dry-runs and that the study times.
    pub fn default_trainer<'g>(&self, gpu: &'g Gpu) -> Result<Trainer<'g>, GpuError> {
        let mut model = self.config.build(gpu, 0)?;
        model.set_mode(self.mode);
        if self.freeze_features {
            model.freeze_features();
        }
        let opt = Adam::new(
            gpu,
            model.params(),
            AdamConfig::default(),
            Schedule::Constant,
        )?;
        Ok(Trainer::new(gpu, model, opt))
    }
}

/// The device memory one batch size needs.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub batch: usize,
    /// Batch of the evaluation after each epoch.
    pub eval_batch: usize,
    /// Peak bytes held on the device: parameters, Adam state, gradients and the
    /// activations of a training step or an evaluation batch, whichever is larger.
    pub peak_bytes: u64,
    /// Parameters, gradients and Adam state, held throughout.
    pub state_bytes: u64,
    /// The largest single buffer: bytes and tensor.
    pub largest: (u64, String),
}

/// Why a configuration does not fit the adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum DoesNotFit {
    /// One tensor is larger than one storage buffer may be.
    Buffer {
        tensor: String,
        bytes: u64,
        /// `min(max_buffer_size, max_storage_buffer_binding_size)`.
        limit: u64,
    },
    /// The estimated peak is more than the adapter's memory.
    Memory { plan: MemoryPlan, memory: u64 },
}

impl fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoesNotFit::Buffer {
                tensor,
                bytes,
                limit,
            } => write!(
                f,
                "tensor {tensor:?} needs {} but the adapter allows at most {} per buffer \
                 (max_buffer_size and max_storage_buffer_binding_size)",
                mib(*bytes),
                mib(*limit)
            ),
            DoesNotFit::Memory { plan, memory } => write!(
                f,
                "the estimated peak of {} is more than the adapter's {} of memory (largest \
                 tensor {:?}, {})",
                mib(plan.peak_bytes),
                mib(*memory),
                plan.largest.1,
                mib(plan.largest.0)
            ),
        }
    }
}

/// Bytes as MiB (or GiB from 10 GiB up), for messages.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / 1048576.0;
    if m >= 10240.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.1} MiB")
    }
}

/// The evaluation batch [`crate::run::fit`] uses for a training batch.
pub fn eval_batch(batch: usize) -> usize {
    batch.max(16)
}

/// Dry-runs one training step at each batch in `batches` (and an evaluation batch at
/// [`eval_batch`]) on one dry model, returning a plan or a buffer that does not fit for
/// each, in order. The Adam update and the non-finite check are part of the step.
fn dry_plans(
    gpu: &Gpu,
    shape: &RunShape,
    batches: &[usize],
) -> Result<Vec<Result<MemoryPlan, DoesNotFit>>, StepError> {
    let (out, stats) = gpu.dry_run(|| -> Result<_, StepError> {
        let mut trainer = shape.default_trainer(gpu)?;
        let stats = gpu.active_memory();
        let state_bytes = stats.live_bytes();
        let state_largest = stats.largest_buffer().unwrap_or((0, String::new()));
        let mut plans = Vec::new();
        for &batch in batches {
            stats.reset_peak();
            let eval = eval_batch(batch);
            let s = shape.image_size;
            let step = gpu
                .zeros(&[batch, 3, s, s], "images")
                .map_err(StepError::from)
                .and_then(|x| at_once(trainer.step(Some((x, &vec![0; batch])), &mut NoReduce)))
                .and_then(|_| {
                    let x = gpu.zeros(&[eval, 3, s, s], "images")?;
                    at_once(evaluate_on(gpu, trainer.model.as_ref(), x, &vec![0; eval]))
                        .map_err(StepError::from)
                });
            plans.push(match step {
                Ok(_) => {
                    let largest = stats
                        .largest_buffer()
                        .filter(|l| l.0 > state_largest.0)
                        .unwrap_or_else(|| state_largest.clone());
                    Ok(MemoryPlan {
                        batch,
                        eval_batch: eval,
                        peak_bytes: stats.peak_bytes(),
                        state_bytes,
                        largest,
                    })
                }
                Err(StepError::Gpu(GpuError::BufferTooLarge {
                    tensor,
                    bytes,
                    limit,
                })) => Err(DoesNotFit::Buffer {
                    tensor,
                    bytes,
                    limit,
                }),
                Err(e) => return Err(e),
            });
        }
        Ok(plans)
    });
    drop(stats);
    out
}

/// The output of a future from a dry run, where every read-back is ready at once (no
/// work reaches the device): one poll completes it, and nothing waits.
fn at_once<T, E: From<GpuError>>(future: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => Err(GpuError::DryRunWaited.into()),
    }
}

impl MemoryPlan {
    /// Whether the plan fits `memory` bytes (when known).
    pub fn check(&self, memory: Option<u64>) -> Result<(), DoesNotFit> {
        match memory {
            Some(memory) if self.peak_bytes > memory => Err(DoesNotFit::Memory {
                plan: self.clone(),
                memory,
            }),
            _ => Ok(()),
        }
    }
}

/// The plan for one batch size: `Ok(Err(_))` when a tensor exceeds the binding limit or
/// the peak exceeds `memory`.
pub fn plan_training(
    gpu: &Gpu,
    shape: &RunShape,
    batch: usize,
    memory: Option<u64>,
) -> Result<Result<MemoryPlan, DoesNotFit>, StepError> {
    let plan = dry_plans(gpu, shape, &[batch])?.remove(0);
    Ok(plan.and_then(|p| p.check(memory).map(|_| p)))
}

/// The largest batch below `limit` whose plan fits (`None` when not even 1 does).
pub fn largest_fitting_batch(
    gpu: &Gpu,
    shape: &RunShape,
    limit: usize,
    memory: Option<u64>,
) -> Result<Option<usize>, StepError> {
    let fits =
        |b: usize| -> Result<bool, StepError> { Ok(plan_training(gpu, shape, b, memory)?.is_ok()) };
    if limit <= 1 || !fits(1)? {
        return Ok(None);
    }
    // Memory grows with the batch: bisect between a batch that fits and one that does not.
    let (mut lo, mut hi) = (1, limit);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}
