//! [`Run`]: a training run driven step by step. [`super::fit`] is the loop over it.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::events::{DataParallel, Observer, RankPlace, RunEvent, RunSummary};
use super::{checkpoint_file, EpochProgress, RunError, RunResult, RunSpec};
use crate::collective::Communication;
use crate::data::{Batch, Loader, LoaderOptions, Shard};
use crate::dist::{average_tensors, check_replicas, Collective};
use crate::gpu::{Gpu, GpuError, Tensor};
use crate::metrics::EpochMetrics;
use crate::ops::adam::AdamConfig;
use crate::optim::Adam;
use crate::train::{StepError, Trainer};
use crate::weights::TensorFile;

/// One training run: the model, its optimizer and where the run stands. Built from a
/// [`RunSpec`] (resuming from its checkpoint when the spec says so), then driven epoch by
/// epoch and step by step:
///
/// ```no_run
/// # use densenet_wgpu::run::{Run, RunSpec, RunResult, events::Silent};
/// # use densenet_wgpu::dist::SingleProcess;
/// # async fn go(gpu: &densenet_wgpu::gpu::Gpu, spec: &RunSpec) -> RunResult<()> {
/// let mut observer = Silent;
/// let mut run = Run::start(gpu, spec, &SingleProcess, &mut observer).await?;
/// while run.begin_epoch() {
///     while run.step().await?.is_some() {}
///     let metrics = run.end_epoch().await?;
///     println!("{}", metrics.summary_line());
/// }
/// # Ok(()) }
/// ```
pub struct Run<'a> {
    gpu: &'a Gpu,
    spec: &'a RunSpec,
    group: &'a dyn Collective,
    observer: &'a mut dyn Observer,
    trainer: Trainer<'a>,
    /// How this process takes part in a data-parallel step (unused with one process;
    /// data-parallel training is native only).
    #[cfg(not(target_arch = "wasm32"))]
    parallel: crate::dist::DataParallel,
    shard: Shard,
    steps_per_epoch: usize,
    history: Vec<EpochMetrics>,
    /// The best validation accuracy so far, resumed epochs included.
    best_val: f64,
    /// The epoch in progress (0-based), or the next one between epochs.
    epoch: usize,
    /// Where a resumed run starts in its first epoch.
    resume_at: Option<EpochProgress>,
    /// The epoch in progress, between [`Run::begin_epoch`] and [`Run::end_epoch`].
    current: Option<Epoch>,
}

/// What a run keeps while an epoch goes on.
struct Epoch {
    loader: Loader,
    progress: EpochProgress,
    /// Whether the epoch started at its first batch in this process.
    from_start: bool,
    /// Images loaded per class on this rank (a class with none cannot be learnt).
    loaded: Vec<f64>,
    nonfinite_skipped: usize,
    /// Seconds spent summing gradients and waiting for the sums, over `steps`.
    communication: Communication,
    steps: usize,
    lr: f64,
    started: Instant,
    last_save: Instant,
}

/// A trained batch, over every rank.
struct Trained {
    loss: f64,
    correct: usize,
    images: usize,
    /// Stop after this step (a rank was asked to).
    stop: bool,
    /// A timed checkpoint is due (on rank 0's clock).
    checkpoint_due: bool,
    /// Seconds spent summing gradients over the ranks, and waited for after backward.
    communication: Communication,
}

/// One applied optimizer step, as [`Run::step`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct StepDone {
    pub step: u32,
    pub loss: f64,
    pub images: usize,
}

impl<'a> Run<'a> {
    /// Sets a run up on `gpu` as one rank of `group` (see [`super::fit_as_rank`]): checks the
    /// settings and the data, reports the device, checks the memory, builds the model and
    /// its optimizer, resumes from the checkpoint when `spec.resume`, and reports
    /// [`RunEvent::Started`].
    pub async fn start(
        gpu: &'a Gpu,
        spec: &'a RunSpec,
        group: &'a dyn Collective,
        observer: &'a mut dyn Observer,
    ) -> RunResult<Run<'a>> {
        let ranks = group.size();
        super::check_run(spec, ranks, observer)?;
        if group.is_writer() {
            std::fs::create_dir_all(&spec.out).map_err(RunError::file(&spec.out))?;
        }
        observer.event(&adapter_event(gpu, group));
        super::check_memory(gpu, spec, ranks, observer)?;
        let trainer = build_trainer(gpu, spec, group, observer)?;
        #[cfg(not(target_arch = "wasm32"))]
        let parallel = data_parallel(gpu, spec, group);
        #[cfg(not(target_arch = "wasm32"))]
        let overlap = parallel.overlap.is_some();
        #[cfg(target_arch = "wasm32")]
        let overlap = false;
        let steps_per_epoch = spec.train.len().div_ceil(spec.batch_size);
        let mut run = Run {
            gpu,
            spec,
            group,
            observer,
            trainer,
            #[cfg(not(target_arch = "wasm32"))]
            parallel,
            shard: Shard {
                rank: group.rank(),
                ranks,
            },
            steps_per_epoch,
            history: Vec::new(),
            best_val: f64::NEG_INFINITY,
            epoch: 0,
            resume_at: None,
            current: None,
        };
        run.resume().await?;
        run.report_start(overlap);
        if let Some(failure) = run.observer.failure() {
            return Err(failure);
        }
        Ok(run)
    }

    /// Reads the checkpoint (rank 0) and keeps the history up to its epoch, then gives every
    /// rank rank 0's state. Without `spec.resume` it starts afresh.
    async fn resume(&mut self) -> RunResult<()> {
        let (spec, gpu) = (self.spec, self.gpu);
        let checkpoint = checkpoint_file(spec);
        if spec.resume && self.group.is_writer() {
            if !checkpoint.exists() {
                return Err(RunError::NoCheckpoint { checkpoint });
            }
            let file = TensorFile::read(&checkpoint)?;
            let t = &mut self.trainer;
            t.model.store_mut().load(gpu, &file, &["optim."])?;
            t.opt.load(gpu, t.model.params(), &file)?;
            let mut history = spec.history.clone();
            let meta = super::read_metadata(&checkpoint);
            self.epoch = meta
                .get("epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| (t.opt.step as usize).div_ceil(self.steps_per_epoch));
            self.resume_at = EpochProgress::from_metadata(&meta);
            history.truncate(self.epoch);
            for h in &mut history {
                h.epochs = spec.epochs;
            }
            self.best_val = history
                .iter()
                .filter_map(|m| m.val_acc)
                .fold(f64::NEG_INFINITY, f64::max);
            self.observer.event(&RunEvent::Resumed {
                checkpoint,
                epoch: self.epoch,
                batch: self.resume_at.as_ref().map_or(0, |p| p.batches_done),
                step: self.trainer.opt.step,
                history: history.clone(),
            });
            self.history = history;
        }
        if self.group.size() > 1 {
            (self.epoch, self.resume_at) = super::share_start(
                gpu,
                &mut self.trainer,
                self.group,
                self.epoch,
                self.resume_at.take(),
            )
            .await?;
        }
        Ok(())
    }

    /// Reports the run's settings; `overlap`: gradient buckets are summed during backward.
    fn report_start(&mut self, overlap: bool) {
        let spec = self.spec;
        let ranks = self.group.size();
        let summary = RunSummary {
            preset: spec.preset.clone(),
            parameters: self.trainer.model.num_parameters(),
            mode: spec.mode,
            image_size: spec.image_size,
            batch_size: spec.batch_size,
            data_parallel: (ranks > 1).then(|| DataParallel {
                ranks,
                transport: self.group.transport(),
                per_rank_batch: spec.batch_size.div_ceil(ranks),
                sync_bn: spec.sync_bn,
                overlap,
            }),
            epochs: spec.epochs,
            lr: spec.lr,
            schedule: spec.schedule,
            augmentation: spec.augment,
            out: spec.out.clone(),
        };
        self.observer.event(&RunEvent::Started(Box::new(summary)));
    }

    /// The epochs still to train (0-based).
    pub fn epochs_left(&self) -> Range<usize> {
        self.epoch..self.spec.epochs
    }

    /// The model and optimizer being trained.
    pub fn trainer(&self) -> &Trainer<'a> {
        &self.trainer
    }

    /// The metrics of the epochs done so far (resumed ones included).
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// Starts the next epoch: `false` when every epoch is done. A resumed run starts its
    /// first epoch after the checkpoint's last batch, with the same shuffled order and
    /// augmentation as an uninterrupted run.
    pub fn begin_epoch(&mut self) -> bool {
        if self.epoch >= self.spec.epochs {
            return false;
        }
        let (spec, epoch) = (self.spec, self.epoch);
        let progress = self.resume_at.take().unwrap_or_default();
        let loader = Loader::new(
            spec.dataset.clone(),
            spec.train.clone(),
            LoaderOptions::batches_of(spec.batch_size)
                .shuffled(spec.seed.wrapping_add(epoch as u64 + 1))
                .augmented(spec.augment.is_some())
                .from_batch(progress.batches_done)
                .shard(self.shard),
        );
        self.observer.event(&RunEvent::EpochStarted {
            epoch,
            epochs: spec.epochs,
            images: spec.train.len(),
            done: progress.seen,
        });
        let opt = &self.trainer.opt;
        self.current = Some(Epoch {
            loader,
            from_start: progress.batches_done == 0,
            started: Instant::now() - Duration::from_secs_f64(progress.seconds),
            progress,
            loaded: vec![0.0; spec.dataset.classes().len()],
            nonfinite_skipped: 0,
            communication: Communication::default(),
            steps: 0,
            // The rate at the epoch's first step, also when resuming in the middle of it.
            lr: opt.schedule.lr(opt.base_lr, epoch * self.steps_per_epoch),
            last_save: Instant::now(),
        });
        true
    }

    /// Trains on the epoch's next batch: `None` when the epoch has no batch left
    /// ([`RunError::NoEpochInProgress`] outside an epoch). Writes a
    /// checkpoint when one is due (`spec.checkpoint_steps`, `spec.checkpoint_minutes`) and
    /// stops with one when `spec.cancel` is set (on any rank of a data-parallel run).
    pub async fn step(&mut self) -> RunResult<Option<StepDone>> {
        if self.current.is_none() {
            return Err(RunError::NoEpochInProgress);
        }
        let (batch, trained) = loop {
            let Some(batch) = self.epoch_mut().loader.next() else {
                return Ok(None);
            };
            // `None`: a non-finite batch, skipped.
            if let Some(r) = self.train_on(&batch).await? {
                break (batch, r);
            }
        };
        let (spec, gpu) = (self.spec, self.gpu);
        if let Some(ops) = self.trainer.last_profile.take() {
            self.observer.event(&RunEvent::StepProfiled { ops });
        }
        if let Some(hook) = &spec.after_step {
            hook(gpu, self.trainer.opt.step);
        }
        let Trained {
            loss,
            correct,
            images,
            stop,
            checkpoint_due: by_time,
            communication: comm,
        } = trained;
        let e = self.current.as_mut().expect("an epoch in progress");
        e.communication += comm;
        e.steps += 1;
        let p = &mut e.progress;
        p.loss_sum += loss * images as f64;
        p.correct += correct;
        p.seen += images;
        p.batches_done += 1;
        for &l in &batch.labels {
            e.loaded[l] += 1.0;
        }
        let done = StepDone {
            step: self.trainer.opt.step,
            loss,
            images,
        };
        self.observer.event(&RunEvent::StepDone {
            step: done.step,
            images,
            mean_loss: p.loss_sum / p.seen as f64,
            accuracy: p.correct as f64 / p.seen as f64,
        });
        let by_steps = spec.checkpoint_steps > 0 && p.batches_done % spec.checkpoint_steps == 0;
        if stop || by_time || by_steps {
            self.checkpoint().await?;
        }
        if stop {
            let e = self.epoch_mut();
            let batch = e.progress.batches_done;
            self.observer.event(&RunEvent::EpochTrained);
            self.observer.event(&RunEvent::Interrupted {
                step: self.trainer.opt.step,
                epoch: self.epoch,
                batch,
                checkpoint: checkpoint_file(spec),
            });
            return Err(RunError::Interrupted {
                step: self.trainer.opt.step,
            });
        }
        Ok(Some(done))
    }

    /// One step on `batch`: the loss, correct predictions and images over every rank, and
    /// whether to stop and whether a timed checkpoint is due (the same on every rank).
    /// `None` for a skipped non-finite batch.
    async fn train_on(&mut self, batch: &Batch) -> RunResult<Option<Trained>> {
        let spec = self.spec;
        let e = self.current.as_ref().expect("an epoch in progress");
        let time_is_up = spec.checkpoint_minutes > 0.0
            && e.last_save.elapsed().as_secs_f64() >= spec.checkpoint_minutes * 60.0;
        let cancelled = spec.is_cancelled();
        // The optimizer step this is (Adam counts it once the update is recorded, before
        // the step's last wait).
        let step_number = self.trainer.opt.step + 1;
        let step = match () {
            #[cfg(not(target_arch = "wasm32"))]
            () if self.group.size() > 1 => {
                // Every rank stops or checkpoints at the same step: on any rank's request,
                // and on rank 0's clock.
                let flags = [
                    cancelled as u8 as f64,
                    (time_is_up && self.group.is_writer()) as u8 as f64,
                ];
                let share = (&batch.images[..], &batch.labels[..], spec.image_size);
                let parallel = &mut self.parallel;
                parallel
                    .step(&mut self.trainer, self.group, share, flags)
                    .await
                    .map(|s| Trained {
                        loss: s.loss,
                        correct: s.correct,
                        images: s.count,
                        stop: s.flags[0] > 0.0,
                        checkpoint_due: s.flags[1] > 0.0,
                        communication: parallel.comm_seconds,
                    })
            }
            () => self
                .trainer
                .train_step(&batch.images, &batch.labels, spec.image_size)
                .await
                .map(|r| Trained {
                    loss: r.loss,
                    correct: r.correct,
                    images: r.count,
                    stop: cancelled,
                    checkpoint_due: time_is_up,
                    communication: Communication::default(),
                }),
        };
        match step {
            Ok(r) => Ok(Some(r)),
            Err(error @ StepError::NonFinite { .. }) => {
                let files: Vec<String> = batch
                    .indices
                    .iter()
                    .map(|&i| spec.dataset.describe(i))
                    .collect();
                if !spec.skip_nonfinite {
                    return Err(RunError::NonFiniteStep {
                        error,
                        files,
                        checkpoint: checkpoint_file(spec),
                    });
                }
                self.observer
                    .event(&RunEvent::BatchSkipped { error, files });
                let e = self.epoch_mut();
                e.nonfinite_skipped += 1;
                e.progress.batches_done += 1;
                Ok(None)
            }
            Err(StepError::Gpu(e)) => {
                // A device lost with work in flight may first fail a call that uses it; once
                // that work has settled, the loss is what is reported.
                let e = match self.gpu.finished().await {
                    Err(lost @ GpuError::DeviceLost(_)) => lost,
                    _ => e,
                };
                Err(super::step_failure(&e, step_number, spec))
            }
            Err(e @ (StepError::EmptyShare { .. } | StepError::PassNotRun)) => {
                Err(RunError::Step(e))
            }
        }
    }

    fn epoch_mut(&mut self) -> &mut Epoch {
        self.current.as_mut().expect("an epoch in progress")
    }

    /// Writes the checkpoint now (rank 0): weights, optimizer state and, inside an epoch,
    /// the position in it. BN running statistics are first averaged over the ranks.
    pub async fn checkpoint(&mut self) -> RunResult<()> {
        let (spec, gpu) = (self.spec, self.gpu);
        self.average_buffers().await?;
        let (epoch, partial) = match self.current.as_mut() {
            Some(e) => {
                e.progress.seconds = e.started.elapsed().as_secs_f64();
                e.last_save = Instant::now();
                (self.epoch, Some(e.progress.clone()))
            }
            None => (self.epoch, None),
        };
        if self.group.is_writer() {
            super::save_checkpoint(gpu, &self.trainer, spec, epoch, partial.as_ref())
                .await
                .map_err(|e| super::device_lost_or(gpu, e, &self.trainer, spec))?;
        }
        Ok(())
    }

    /// The mean over the ranks of every BN running statistic, on every rank (before an
    /// evaluation or a checkpoint; see the `dist` module).
    async fn average_buffers(&self) -> RunResult<()> {
        if self.spec.sync_bn {
            // Synchronised statistics are the same on every rank already.
            return Ok(());
        }
        let buffers = self.trainer.model.store().buffers.iter().map(|(_, t)| t);
        average_tensors(self.gpu, self.group, buffers)
            .await
            .map_err(RunError::from)
    }

    /// Validation loss and accuracy over `spec.val` (each rank evaluates its share);
    /// `None` without a validation split.
    pub async fn evaluate(&mut self) -> RunResult<Option<(f64, f64)>> {
        self.average_buffers().await?;
        self.evaluate_averaged().await
    }

    /// [`Run::evaluate`] once the BN statistics agree over the ranks.
    async fn evaluate_averaged(&mut self) -> RunResult<Option<(f64, f64)>> {
        let (spec, gpu) = (self.spec, self.gpu);
        if spec.val.is_empty() {
            return Ok(None);
        }
        let mine = &spec.val[self.shard.range(spec.val.len())];
        let batch = crate::budget::eval_batch(spec.batch_size.div_ceil(self.group.size()));
        let (mut sums, _confusion) = super::evaluate_into(
            gpu,
            self.trainer.model.as_ref(),
            &spec.dataset,
            mine,
            (batch, spec.image_size),
            &mut *self.observer,
        )
        .await
        .map_err(|e| super::device_lost_or(gpu, e, &self.trainer, spec))?;
        self.group.all_reduce_sum_f64(&mut sums);
        if sums[2] == 0.0 {
            return Err(RunError::NoValidationImage);
        }
        Ok(Some((sums[0] / sums[2], sums[1] / sums[2])))
    }

    /// Ends the epoch: reports skipped files, evaluates, checks that the replicas agree,
    /// reports the epoch's metrics, writes best.safetensors on a new best accuracy, then
    /// the checkpoint that marks the epoch done.
    pub async fn end_epoch(&mut self) -> RunResult<EpochMetrics> {
        let spec = self.spec;
        let Some(mut e) = self.current.take() else {
            return Err(RunError::NoEpochInProgress);
        };
        self.observer.event(&RunEvent::EpochTrained);
        let skipped = e.loader.take_skipped();
        for item in &skipped {
            self.observer.event(&RunEvent::FileSkipped {
                skipped: item.clone(),
            });
        }
        // Per-class counts and skipped files over all ranks.
        e.loaded.push(skipped.len() as f64);
        self.group.all_reduce_sum_f64(&mut e.loaded);
        let files_skipped = e.loaded.pop().unwrap_or(0.0) as usize;
        let p = &e.progress;
        if p.seen == 0 && e.nonfinite_skipped > 0 {
            return Err(RunError::EveryBatchNonFinite {
                epoch: self.epoch + 1,
            });
        }
        if p.seen == 0 {
            return Err(RunError::NoTrainingImage);
        }
        // Every training image of a class skipped: the class cannot be learnt.
        let empty = e.loaded.iter().position(|&n| n == 0.0);
        if let Some(class) = empty.filter(|_| e.from_start) {
            return Err(RunError::ClassUnreadable {
                class: spec.dataset.classes()[class].clone(),
                data: spec.data.clone(),
            });
        }
        // Also before the replica check and the epoch's checkpoint.
        self.average_buffers().await?;
        let validation = self.evaluate_averaged().await?;
        let m = EpochMetrics {
            epoch: self.epoch + 1,
            epochs: spec.epochs,
            train_loss: p.loss_sum / p.seen as f64,
            train_acc: p.correct as f64 / p.seen as f64,
            val_loss: validation.map(|v| v.0),
            val_acc: validation.map(|v| v.1),
            lr: e.lr,
            seconds: e.started.elapsed().as_secs_f64(),
        };
        self.history.push(m.clone());
        let distributed = self.group.size() > 1;
        let report = super::events::EpochReport {
            metrics: m.clone(),
            files_skipped,
            nonfinite_skipped: e.nonfinite_skipped,
            communication_ms: (distributed && e.steps > 0).then(|| Communication {
                summing: 1000.0 * e.communication.summing / e.steps as f64,
                waited: 1000.0 * e.communication.waited / e.steps as f64,
            }),
            replicas: if distributed {
                Some((self.group.size(), self.check_replicas().await?))
            } else {
                None
            },
        };
        self.observer.event(&RunEvent::EpochDone(Box::new(report)));
        if let Some(failure) = self.observer.failure() {
            return Err(failure);
        }
        self.epoch += 1;
        if self.group.is_writer() {
            self.write_epoch_files(&m).await?;
        }
        Ok(m)
    }

    /// The parameters' and buffers' common hash over the ranks, or which tensor differs.
    async fn check_replicas(&self) -> RunResult<u64> {
        let model = &self.trainer.model;
        let mut tensors: Vec<(String, Tensor)> = model
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        tensors.extend(model.store().buffers.iter().cloned());
        match check_replicas(self.gpu, self.group, &tensors).await? {
            Ok(hash) => Ok(hash),
            Err(mismatch) => Err(RunError::ReplicasDiverged {
                epoch: self.epoch + 1,
                mismatch,
                checkpoint: checkpoint_file(self.spec),
            }),
        }
    }

    /// best.safetensors on a new best, then the checkpoint. The best weights come first:
    /// the checkpoint marks the epoch as done, so a run killed in between redoes the
    /// epoch's end and writes the same best file again.
    async fn write_epoch_files(&mut self, m: &EpochMetrics) -> RunResult<()> {
        let (spec, gpu) = (self.spec, self.gpu);
        if let Some(a) = m.val_acc.filter(|&a| a > self.best_val) {
            self.best_val = a;
            let best = spec.out.join("best.safetensors");
            super::save_weights(gpu, self.trainer.model.as_ref(), spec, &best, m.epoch)
                .await
                .map_err(|e| super::device_lost_or(gpu, e, &self.trainer, spec))?;
        }
        super::save_checkpoint(gpu, &self.trainer, spec, m.epoch, None)
            .await
            .map_err(|e| super::device_lost_or(gpu, e, &self.trainer, spec))
    }

    /// Ends the run: reports the files written and returns every epoch's metrics.
    pub fn finish(self) -> Vec<EpochMetrics> {
        self.observer.event(&RunEvent::Finished {
            checkpoint: checkpoint_file(self.spec),
            best_val_acc: self.best_val.is_finite().then_some(self.best_val),
        });
        self.history
    }
}

/// The model (from `spec.init` when given, frozen features when asked), Adam with the
/// spec's schedule.
fn build_trainer<'a>(
    gpu: &'a Gpu,
    spec: &RunSpec,
    group: &dyn Collective,
    observer: &mut dyn Observer,
) -> RunResult<Trainer<'a>> {
    let mut model = spec.config.build(gpu, spec.seed)?;
    model.set_mode(spec.mode);
    // Only the first rank reads the weights to start from; the others receive them.
    if let Some(init) = spec.init.as_ref().filter(|_| group.is_writer()) {
        let data = spec.dataset.normalization();
        observer.event(&super::init_from(gpu, model.as_mut(), init, data)?);
    }
    if spec.freeze_features {
        model.freeze_features();
        let params = model.params();
        let trainable = params.iter().filter(|p| p.trainable);
        observer.event(&RunEvent::FeaturesFrozen {
            classifier_prefix: model.classifier_prefix().to_string(),
            trainable: trainable.map(|p| p.value.numel()).sum(),
            parameters: model.num_parameters(),
        });
    }
    let adam = AdamConfig {
        lr: spec.lr as f32,
        weight_decay: spec.weight_decay as f32,
        decoupled: spec.adamw,
        ..AdamConfig::default()
    };
    let steps_per_epoch = spec.train.len().div_ceil(spec.batch_size);
    let schedule = spec.schedule.schedule(spec.epochs, steps_per_epoch);
    let opt = Adam::new(gpu, model.params(), adam, schedule)?;
    let mut trainer = Trainer::new(gpu, model, opt);
    trainer.profile = spec.profile;
    Ok(trainer)
}

/// The spec's data-parallel settings for this process's steps.
#[cfg(not(target_arch = "wasm32"))]
fn data_parallel(gpu: &Gpu, spec: &RunSpec, group: &dyn Collective) -> crate::dist::DataParallel {
    let mut parallel = crate::dist::DataParallel {
        sync_bn: spec.sync_bn,
        ..crate::dist::DataParallel::default()
    };
    // Summing during backward hides the all-reduce behind the device's work. A CPU adapter
    // has no idle cores to hide it on: there it costs more than it saves (docs/distributed.md).
    let overlap = spec
        .overlap
        .unwrap_or(gpu.info.device_type != wgpu::DeviceType::Cpu);
    if group.size() > 1 && overlap {
        parallel.overlap = group.duplicate();
    }
    if let Some(bytes) = spec.bucket_bytes {
        parallel.bucket_bytes = bytes;
    }
    parallel
}

/// The event that says which device a process trains on.
fn adapter_event(gpu: &Gpu, group: &dyn Collective) -> RunEvent {
    RunEvent::Adapter {
        adapter: Box::new(gpu.info.clone()),
        rank: (group.size() > 1).then(|| RankPlace {
            rank: group.rank(),
            ranks: group.size(),
            local_rank: group.local_rank(),
            pid: std::process::id(),
        }),
    }
}
