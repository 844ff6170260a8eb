//! Batches decoded and augmented on worker threads, so preparing the next batches overlaps
//! the GPU's work on the current one.
//!
//! Batch `b` is always built by worker `b % workers` and received in order, and the
//! augmentation of the item at epoch position `p` draws from a generator seeded by
//! `(shuffle_seed, p)` alone: a run gives the same batches whatever the number of workers.
//! Each worker's channel is bounded, so at most about [`PREFETCH_BATCHES`] batches wait in
//! memory. Items that fail to load are left out of their batch with a warning.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{derive_seed, Dataset};
use crate::rng::Rng;

/// Batches prepared ahead of the consumer (in flight and queued, over all workers).
pub const PREFETCH_BATCHES: usize = 4;
/// Most worker threads a loader starts by default.
pub const MAX_WORKERS: usize = 4;

/// One batch: `images` is NCHW (`labels.len() x 3 x size x size`), `indices` are the
/// dataset indices of the items, in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of items in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What a worker sends: a batch and the warnings raised while building it.
struct Prepared {
    batch: Batch,
    warnings: Vec<String>,
}

/// Everything a worker needs to build its batches.
struct Plan {
    dataset: Arc<dyn Dataset>,
    /// Dataset indices in epoch order.
    order: Vec<usize>,
    batch_size: usize,
    num_batches: usize,
    /// Seed of the per-item augmentation generators; `None`: no augmentation.
    augment_seed: Option<u64>,
    /// The first batch built: batches before it were consumed before an interruption.
    first_batch: usize,
    /// (rank, ranks): this process builds only its share of every batch
    /// ([`crate::dist::share`]), and yields a batch even when its share is empty, so
    /// that every rank takes part in every step.
    shard: (usize, usize),
    stop: AtomicBool,
}

/// An iterator over the batches of one epoch; see the module documentation.
pub struct Loader {
    plan: Arc<Plan>,
    receivers: Vec<Receiver<Prepared>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    warnings: Mutex<Vec<String>>,
}

impl Loader {
    /// Iterates `indices` in batches of `batch_size` (the last, partial batch is kept unless
    /// `drop_last`), shuffled by `Rng::new(seed)` when `shuffle_seed` is `Some` (use a new
    /// seed each epoch, e.g. `seed + epoch`), augmenting when `augment`. Starts
    /// [`default_workers`] worker threads.
    ///
    /// Panics if `batch_size` is 0.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        drop_last: bool,
    ) -> Loader {
        let workers = default_workers();
        Loader::with_workers(
            dataset,
            indices,
            batch_size,
            shuffle_seed,
            augment,
            drop_last,
            workers,
        )
    }

    /// As [`Loader::new`], with `workers` worker threads (at least one).
    pub fn with_workers(
        dataset: Arc<dyn Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        drop_last: bool,
        workers: usize,
    ) -> Loader {
        let plan = (shuffle_seed, augment, drop_last);
        Loader::build(dataset, indices, batch_size, plan, (workers, (0, 1)), 0)
    }

    /// The epoch [`Loader::new`] would give, from batch `first_batch` on: the same order
    /// and the same augmentation of every item (it depends on the item's position in the
    /// epoch only), so a run resumed after `first_batch` batches continues exactly as the
    /// uninterrupted one.
    pub fn resume_at(
        dataset: Arc<dyn Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        first_batch: usize,
    ) -> Loader {
        Loader::resume_shard_at(
            dataset,
            indices,
            batch_size,
            shuffle_seed,
            augment,
            first_batch,
            (0, 1),
        )
    }

    /// [`Loader::resume_at`] for rank `shard.0` of `shard.1` in a data-parallel run: each
    /// batch holds only this rank's share of the global batch of `batch_size`
    /// ([`crate::dist::share`] of the batch's positions), with the augmentation the item
    /// gets in a single-process run. Batches whose share is empty are yielded too.
    pub fn resume_shard_at(
        dataset: Arc<dyn Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        augment: bool,
        first_batch: usize,
        shard: (usize, usize),
    ) -> Loader {
        let plan = (shuffle_seed, augment, false);
        Loader::build(
            dataset,
            indices,
            batch_size,
            plan,
            (default_workers(), shard),
            first_batch,
        )
    }

    fn build(
        dataset: Arc<dyn Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        (shuffle_seed, augment, drop_last): (Option<u64>, bool, bool),
        (workers, shard): (usize, (usize, usize)),
        first_batch: usize,
    ) -> Loader {
        assert!(shard.0 < shard.1, "rank {} of {}", shard.0, shard.1);
        assert!(batch_size > 0, "batch size must be positive");
        let mut order = indices;
        if let Some(seed) = shuffle_seed {
            Rng::new(seed).shuffle(&mut order);
        }
        let num_batches = if drop_last {
            order.len() / batch_size
        } else {
            order.len().div_ceil(batch_size)
        };
        order.truncate(num_batches * batch_size);
        let plan = Arc::new(Plan {
            dataset,
            order,
            batch_size,
            num_batches,
            augment_seed: augment.then(|| shuffle_seed.unwrap_or(0)),
            first_batch: first_batch.min(num_batches),
            shard,
            stop: AtomicBool::new(false),
        });

        let left = num_batches - plan.first_batch;
        let workers = workers.clamp(1, left.max(1));
        let capacity = (PREFETCH_BATCHES / workers).saturating_sub(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        if left > 0 {
            for worker in 0..workers {
                let (tx, rx) = sync_channel(capacity);
                let plan = Arc::clone(&plan);
                let handle = std::thread::Builder::new()
                    .name(format!("data-loader-{worker}"))
                    .spawn(move || run_worker(&plan, worker, workers, &tx))
                    .expect("failed to start a data loader thread");
                receivers.push(rx);
                handles.push(handle);
            }
        }
        Loader {
            next: plan.first_batch,
            plan,
            receivers,
            workers: handles,
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// Number of batches planned for this epoch. A batch whose items all fail to load is
    /// not yielded, so the iterator can yield fewer.
    pub fn num_batches(&self) -> usize {
        self.plan.num_batches
    }

    /// Number of items planned for this epoch (after `drop_last`).
    pub fn num_items(&self) -> usize {
        self.plan.order.len()
    }

    /// Warnings collected so far (e.g. `skipped <path>: <decode error>`), emptying the list.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Worker threads a loader starts by default: one per available core, at most
/// [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS)
}

fn run_worker(plan: &Plan, worker: usize, workers: usize, tx: &SyncSender<Prepared>) {
    for b in (plan.first_batch + worker..plan.num_batches).step_by(workers) {
        let Some(prepared) = build_batch(plan, b) else {
            return;
        };
        if tx.send(prepared).is_err() {
            return; // The loader was dropped.
        }
    }
}

/// Builds batch `b`, or `None` when the loader is stopping.
fn build_batch(plan: &Plan, b: usize) -> Option<Prepared> {
    let size = plan.dataset.image_size();
    let item_len = 3 * size * size;
    let global_start = b * plan.batch_size;
    let global_end = (global_start + plan.batch_size).min(plan.order.len());
    let mine = crate::dist::share(global_end - global_start, plan.shard.0, plan.shard.1);
    let (start, end) = (global_start + mine.start, global_start + mine.end);
    let mut batch = Batch {
        images: Vec::with_capacity((end - start) * item_len),
        labels: Vec::with_capacity(end - start),
        indices: Vec::with_capacity(end - start),
    };
    let mut warnings = Vec::new();
    for position in start..end {
        if plan.stop.load(Ordering::Relaxed) {
            return None;
        }
        let index = plan.order[position];
        let mut rng = plan
            .augment_seed
            .map(|seed| Rng::new(derive_seed(seed, position as u64)));
        let result = catch_unwind(AssertUnwindSafe(|| plan.dataset.get(index, rng.as_mut())));
        let skip = |why: String| format!("skipped {}: {why}", plan.dataset.describe(index));
        match result {
            Ok(Ok((pixels, label))) if pixels.len() == item_len => {
                batch.images.extend_from_slice(&pixels);
                batch.labels.push(label);
                batch.indices.push(index);
            }
            Ok(Ok((pixels, _))) => warnings.push(skip(format!(
                "got {} values, expected 3 x {size} x {size} = {item_len}",
                pixels.len()
            ))),
            Ok(Err(e)) => warnings.push(skip(e.detail())),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                warnings.push(skip(format!("loading panicked: {message}")));
            }
        }
    }
    Some(Prepared { batch, warnings })
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        while self.next < self.plan.num_batches {
            let rx = &self.receivers[(self.next - self.plan.first_batch) % self.receivers.len()];
            let prepared = rx
                .recv()
                .expect("a data loader thread stopped unexpectedly");
            self.next += 1;
            if !prepared.warnings.is_empty() {
                self.warnings
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(prepared.warnings);
            }
            if !prepared.batch.is_empty() || self.plan.shard.1 > 1 {
                return Some(prepared.batch);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.plan.num_batches - self.next))
    }
}

impl Drop for Loader {
    /// Stops the workers: they notice the flag between items, and a worker blocked on a
    /// full channel wakes when its receiver is dropped.
    fn drop(&mut self) {
        self.plan.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
