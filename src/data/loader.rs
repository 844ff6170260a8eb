//! Batches decoded and augmented on worker threads, so preparing the next batches overlaps
//! the GPU's work on the current one.
//!
//! Batch `b` is always built by worker `b % workers` and received in order, and the
//! augmentation of the item at epoch position `p` draws from a generator seeded by
//! `(shuffle_seed, p)` alone: a run gives the same batches whatever the number of workers.
//! Each worker's channel is bounded, so at most about [`PREFETCH_BATCHES`] batches wait in
//! memory. Items that fail to load are left out of their batch with a warning.

use std::ops::Range;
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

/// An item left out of its batch: which, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The dataset index of the item.
    pub index: usize,
    /// The item as the dataset names it (the file path for folders).
    pub item: String,
    pub reason: SkipReason,
}

/// Why an item was left out.
#[derive(Debug, Clone)]
pub enum SkipReason {
    /// The dataset could not load it (a file that does not decode, or cannot be read).
    Unreadable(super::DataError),
    /// The dataset returned `got` values for an image of `image_size` x `image_size`.
    WrongSize { got: usize, image_size: usize },
    /// Loading it panicked, with this message.
    Panicked(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {}: ", self.item)?;
        match &self.reason {
            SkipReason::Unreadable(e) => write!(f, "{}", e.detail()),
            SkipReason::WrongSize { got, image_size: s } => {
                write!(
                    f,
                    "got {got} values, expected 3 x {s} x {s} = {}",
                    3 * s * s
                )
            }
            SkipReason::Panicked(message) => write!(f, "loading panicked: {message}"),
        }
    }
}

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

/// What a worker sends: a batch and the items it left out.
struct Prepared {
    batch: Batch,
    skipped: Vec<Skipped>,
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
    shard: Shard,
    stop: AtomicBool,
}

/// An iterator over the batches of one epoch; see the module documentation.
pub struct Loader {
    plan: Arc<Plan>,
    receivers: Vec<Receiver<Prepared>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    skipped: Mutex<Vec<Skipped>>,
}

/// Which share of every batch a process builds: rank `rank` of `ranks` in a data-parallel
/// run, [`Shard::WHOLE`] otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub ranks: usize,
}

impl Shard {
    /// The whole batch: a single-process run.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1 };

    /// This rank's contiguous share of `len` positions, `len·rank/ranks ..
    /// len·(rank+1)/ranks`: the shares of the ranks differ in size by one at most.
    pub fn range(self, len: usize) -> Range<usize> {
        (len * self.rank / self.ranks)..(len * (self.rank + 1) / self.ranks)
    }
}

/// How a [`Loader`] cuts, orders and prepares one epoch. Start from
/// [`LoaderOptions::batches_of`] and change what differs:
///
/// ```
/// use densenet_wgpu::data::LoaderOptions;
/// let options = LoaderOptions::batches_of(32).shuffled(7).augmented(true);
/// assert_eq!((options.batch_size, options.shuffle_seed), (32, Some(7)));
/// assert!(!options.drop_last && options.first_batch == 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Items per batch (the global batch in a data-parallel run).
    pub batch_size: usize,
    /// Shuffles the indices with `Rng::new(seed)` (use a new seed each epoch, e.g. `seed +
    /// epoch`); `None` keeps their order.
    pub shuffle_seed: Option<u64>,
    /// Applies the dataset's augmentation. The augmentation of the item at epoch position
    /// `p` draws from a generator seeded by `(shuffle_seed, p)` alone.
    pub augment: bool,
    /// Leaves out the last, partial batch.
    pub drop_last: bool,
    /// Batches consumed before an interruption: the epoch starts after them, with the same
    /// order and the same augmentation of every item as the uninterrupted one.
    pub first_batch: usize,
    /// The share of every batch this process builds. A rank whose share of a batch is
    /// empty still gets that (empty) batch, so that every rank takes part in every step.
    pub shard: Shard,
    /// Worker threads (at least one); `None`: [`default_workers`].
    pub workers: Option<usize>,
}

impl LoaderOptions {
    /// Batches of `batch_size` in the order given, not augmented, the last partial batch
    /// kept, from the first batch, the whole batch, [`default_workers`] threads.
    pub fn batches_of(batch_size: usize) -> LoaderOptions {
        LoaderOptions {
            batch_size,
            shuffle_seed: None,
            augment: false,
            drop_last: false,
            first_batch: 0,
            shard: Shard::WHOLE,
            workers: None,
        }
    }

    /// Shuffled by `Rng::new(seed)`.
    pub fn shuffled(self, seed: u64) -> LoaderOptions {
        LoaderOptions {
            shuffle_seed: Some(seed),
            ..self
        }
    }

    /// Augmented when `augment`.
    pub fn augmented(self, augment: bool) -> LoaderOptions {
        LoaderOptions { augment, ..self }
    }

    /// Without the last, partial batch.
    pub fn drop_last(self) -> LoaderOptions {
        LoaderOptions {
            drop_last: true,
            ..self
        }
    }

    /// From batch `first_batch` on (a resumed epoch).
    pub fn from_batch(self, first_batch: usize) -> LoaderOptions {
        LoaderOptions {
            first_batch,
            ..self
        }
    }

    /// Only `shard`'s share of every batch.
    pub fn shard(self, shard: Shard) -> LoaderOptions {
        LoaderOptions { shard, ..self }
    }

    /// With `workers` worker threads.
    pub fn workers(self, workers: usize) -> LoaderOptions {
        LoaderOptions {
            workers: Some(workers),
            ..self
        }
    }
}

impl Loader {
    /// Iterates `indices` in batches as `options` say; see the module documentation.
    ///
    /// Panics if `options.batch_size` is 0 or `options.shard.rank` is not below
    /// `options.shard.ranks`.
    pub fn new(dataset: Arc<dyn Dataset>, indices: Vec<usize>, options: LoaderOptions) -> Loader {
        let LoaderOptions {
            batch_size,
            shuffle_seed,
            augment,
            drop_last,
            first_batch,
            shard,
            workers,
        } = options;
        assert!(
            shard.rank < shard.ranks,
            "rank {} of {}",
            shard.rank,
            shard.ranks
        );
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
        let workers = workers
            .unwrap_or_else(default_workers)
            .clamp(1, left.max(1));
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
            skipped: Mutex::new(Vec::new()),
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

    /// The items left out so far, emptying the list.
    pub fn take_skipped(&self) -> Vec<Skipped> {
        std::mem::take(&mut *self.skipped.lock().unwrap_or_else(|e| e.into_inner()))
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
    let mine = plan.shard.range(global_end - global_start);
    let (start, end) = (global_start + mine.start, global_start + mine.end);
    let mut batch = Batch {
        images: Vec::with_capacity((end - start) * item_len),
        labels: Vec::with_capacity(end - start),
        indices: Vec::with_capacity(end - start),
    };
    let mut skipped = Vec::new();
    for position in start..end {
        if plan.stop.load(Ordering::Relaxed) {
            return None;
        }
        let index = plan.order[position];
        let mut rng = plan
            .augment_seed
            .map(|seed| Rng::new(derive_seed(seed, position as u64)));
        let result = catch_unwind(AssertUnwindSafe(|| plan.dataset.get(index, rng.as_mut())));
        let reason = match result {
            Ok(Ok((pixels, label))) if pixels.len() == item_len => {
                batch.images.extend_from_slice(&pixels);
                batch.labels.push(label);
                batch.indices.push(index);
                continue;
            }
            Ok(Ok((pixels, _))) => SkipReason::WrongSize {
                got: pixels.len(),
                image_size: size,
            },
            Ok(Err(e)) => SkipReason::Unreadable(e),
            Err(panic) => SkipReason::Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into()),
            ),
        };
        skipped.push(Skipped {
            index,
            item: plan.dataset.describe(index),
            reason,
        });
    }
    Some(Prepared { batch, skipped })
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
            if !prepared.skipped.is_empty() {
                self.skipped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(prepared.skipped);
            }
            if !prepared.batch.is_empty() || self.plan.shard.ranks > 1 {
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
