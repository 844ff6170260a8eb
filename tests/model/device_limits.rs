//! Device limits: the dry-run memory plan equals what a real step allocates, a batch that
//! does not fit is refused before the first step (naming the tensor and the largest batch
//! that fits), and a lost device ends a run with its last checkpoint intact.

use pollster::block_on;
use std::path::Path;
use std::sync::Arc;

use densenet_wgpu::budget::{
    eval_batch, largest_fitting_batch, plan_training, DoesNotFit, RunShape,
};
use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::{split, Dataset};
use densenet_wgpu::dist::SingleProcess;
use densenet_wgpu::gpu::{DeviceOptions, Gpu};
use densenet_wgpu::models::{self, BlockMode, ModelConfig, ResNetBlock, ResNetConfig};
use densenet_wgpu::ops::adam::AdamConfig;
use densenet_wgpu::optim::{Adam, Schedule};
use densenet_wgpu::run::events::Silent;
use densenet_wgpu::run::{fit, Run, RunError, RunSpec, ScheduleSpec, StepHook};
use densenet_wgpu::train::Trainer;

use crate::{image_folder, text, train};

/// Peak held bytes, parameter-state bytes and the largest buffer of one real training step
/// at `batch` followed by one evaluation batch, on a device of its own (the shared one
/// counts the other tests' allocations too).
fn measure(shape: &RunShape, batch: usize) -> (u64, u64, (u64, String)) {
    let gpu = Gpu::open(&DeviceOptions::from_env()).unwrap();
    let mut model = shape.config.build(&gpu, 7).unwrap();
    model.set_mode(shape.mode);
    if shape.freeze_features {
        model.freeze_features();
    }
    let opt = Adam::new(
        &gpu,
        model.params(),
        AdamConfig::default(),
        Schedule::Constant,
    )
    .unwrap();
    let mut trainer = Trainer::new(&gpu, model, opt);
    let state = gpu.memory().live_bytes();
    let state_largest = gpu.memory().largest_buffer().unwrap();
    gpu.memory().reset_peak();
    let s = shape.image_size;
    let data = Synthetic::new(64, s, 3);
    let batch_of = |n: usize| {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let (x, l) = data.render(i);
            images.extend(x);
            labels.push(l % shape.config.num_classes());
        }
        (images, labels)
    };
    let (images, labels) = batch_of(batch);
    block_on(trainer.train_step(&images, &labels, s)).unwrap();
    let (images, labels) = batch_of(eval_batch(batch));
    block_on(trainer.evaluate(&images, &labels, s)).unwrap();
    let step_largest = gpu.memory().largest_buffer().unwrap();
    let largest = if step_largest.0 > state_largest.0 {
        step_largest
    } else {
        state_largest
    };
    (gpu.memory().peak_bytes(), state, largest)
}

fn small_resnet(block: ResNetBlock) -> ModelConfig {
    ModelConfig::ResNet(ResNetConfig {
        block,
        layers: vec![1, 1, 1, 1],
        width: 8,
        num_classes: 5,
    })
}

#[test]
fn dry_plan_equals_a_real_step() {
    let gpu = crate::gpu();
    let cases = [
        (
            models::preset("densenet-tiny", 6).unwrap(),
            BlockMode::MemoryEfficient,
            false,
            32,
            5,
        ),
        (
            models::preset("densenet-tiny", 6).unwrap(),
            BlockMode::Plain,
            false,
            24,
            3,
        ),
        (
            small_resnet(ResNetBlock::Basic),
            BlockMode::MemoryEfficient,
            false,
            40,
            4,
        ),
        (
            small_resnet(ResNetBlock::Bottleneck),
            BlockMode::Plain,
            true,
            32,
            17,
        ),
        // Large enough for the tape to flush on its allocation budget, not only on launches.
        (
            models::preset("densenet-tiny", 6).unwrap(),
            BlockMode::MemoryEfficient,
            false,
            96,
            24,
        ),
    ];
    for (config, mode, freeze_features, image_size, batch) in cases {
        let shape = RunShape {
            config,
            mode,
            freeze_features,
            image_size,
        };
        let plan = plan_training(gpu, &shape, batch, None).unwrap().unwrap();
        let (peak, state, largest) = measure(&shape, batch);
        assert_eq!(
            (plan.peak_bytes, plan.state_bytes, &plan.largest),
            (peak, state, &largest),
            "{shape:?} batch {batch}: plan vs real step"
        );
        assert!(peak > state, "{shape:?}: activations counted");
    }
}

#[test]
fn largest_fitting_batch_is_the_largest_that_fits() {
    let gpu = crate::gpu();
    let shape = RunShape {
        config: models::preset("densenet-tiny", 6).unwrap(),
        mode: BlockMode::MemoryEfficient,
        freeze_features: false,
        image_size: 32,
    };
    let at = |b: usize| plan_training(gpu, &shape, b, None).unwrap().unwrap();
    // A memory limit between the peaks of batch 20 and 21 (the evaluation batch is 16 up
    // to a training batch of 16, so the peak grows with the batch past it).
    let memory = (at(20).peak_bytes + at(21).peak_bytes) / 2;
    assert!(at(20).peak_bytes < at(21).peak_bytes);
    match plan_training(gpu, &shape, 30, Some(memory)).unwrap() {
        Err(DoesNotFit::Memory { plan, memory: m }) => {
            assert_eq!((plan.batch, m), (30, memory));
            let message = DoesNotFit::Memory { plan, memory }.to_string();
            assert!(message.contains("estimated peak"), "{message}");
        }
        other => panic!("batch 30 under {memory} bytes: {other:?}"),
    }
    assert_eq!(
        largest_fitting_batch(gpu, &shape, 30, Some(memory)).unwrap(),
        Some(20)
    );
    // Below the state of batch 1: nothing fits.
    assert_eq!(
        largest_fitting_batch(gpu, &shape, 30, Some(at(1).state_bytes)).unwrap(),
        None
    );
}

#[test]
fn fit_refuses_a_batch_over_the_buffer_limit() {
    let gpu = crate::gpu();
    let dir = std::env::temp_dir().join(format!("dnw-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    image_folder(&data, 3, 4, 5);
    // The images alone need more than one buffer may hold.
    let size = 64usize;
    let per_image = (3 * size * size * 4) as u64;
    let batch = (gpu.max_binding_bytes() / per_image + 1) as usize;
    let out = dir.join("run");
    let o = train(&[
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "densenet-tiny",
        "--image-size",
        &size.to_string(),
        "--batch-size",
        &batch.to_string(),
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("--batch-size {batch} at 64x64 does not fit")),
        "{t}"
    );
    assert!(t.contains("per buffer"), "{t}");
    let fits: usize = t
        .split("The largest batch that fits is ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no largest batch in: {t}"));
    let shape = RunShape {
        config: models::preset("densenet-tiny", 3).unwrap(),
        mode: BlockMode::MemoryEfficient,
        freeze_features: false,
        image_size: size,
    };
    let memory = gpu.memory_bytes;
    assert!(plan_training(gpu, &shape, fits, memory).unwrap().is_ok());
    assert!(plan_training(gpu, &shape, fits + 1, memory)
        .unwrap()
        .is_err());
    assert!(!out.join("checkpoint.safetensors").exists(), "no step ran");
    let _ = std::fs::remove_dir_all(&dir);
}

fn spec(out: &Path, resume: bool, after_step: Option<StepHook>) -> RunSpec {
    let data = Arc::new(Synthetic::new(48, 16, 11));
    let (train, val) = split(data.len(), 0.25, 123).unwrap();
    RunSpec {
        config: models::preset("densenet-tiny", data.classes().len()).unwrap(),
        dataset: data,
        train,
        val,
        preset: "densenet-tiny".into(),
        init: None,
        freeze_features: false,
        image_size: 16,
        batch_size: 6,
        epochs: 2,
        lr: 1e-3,
        schedule: ScheduleSpec::Constant,
        weight_decay: 0.0,
        adamw: false,
        seed: 1,
        augment: None,
        out: out.to_path_buf(),
        resume,
        mode: BlockMode::MemoryEfficient,
        data: "synthetic".into(),
        checkpoint_minutes: 0.0,
        checkpoint_steps: 2,
        skip_nonfinite: false,
        sync_bn: false,
        after_step,
        cancel: None,
        overlap: None,
        bucket_bytes: None,
        device: DeviceOptions::from_env(),
        profile: false,
        history: Vec::new(),
    }
}

#[test]
fn lost_device_keeps_the_last_checkpoint() {
    let dir = std::env::temp_dir().join(format!("dnw-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let checkpoint = dir.join("checkpoint.safetensors");
    let kept = dir.join("kept.safetensors");
    // After step 5, whose checkpoint would come at step 6: keep a copy of the checkpoint of
    // step 4 and lose the device.
    let (ck, kp) = (checkpoint.clone(), kept.clone());
    let hook: StepHook = Arc::new(move |gpu: &Gpu, step: u32| {
        if step == 5 {
            std::fs::copy(&ck, &kp).unwrap();
            gpu.device.destroy();
        }
    });
    let err = match block_on(fit(&spec(&dir, false, Some(hook)), &mut Silent)) {
        Err(e) => e,
        Ok(_) => panic!("a run on a lost device succeeded"),
    };
    eprintln!("{err}");
    assert!(
        matches!(&err, RunError::DeviceLost { step: 6, written: true, checkpoint: c, .. } if *c == checkpoint),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("the device was lost"), "{message}");
    assert!(message.contains("is intact"), "{message}");
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        std::fs::read(&kept).unwrap(),
        "the checkpoint of step 4 is untouched"
    );
    // It resumes on a working device and finishes the run.
    let history = block_on(fit(&spec(&dir, true, None), &mut Silent)).unwrap();
    assert_eq!(history.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run driven by hand refuses a step or an epoch end outside an epoch, with a typed
/// error, and goes on normally after.
#[test]
fn a_step_outside_an_epoch_is_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("dnw-no-epoch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = spec(&dir, false, None);
    let mut events = Silent;
    let mut run = block_on(Run::start(crate::gpu(), &spec, &SingleProcess, &mut events)).unwrap();
    assert!(matches!(
        block_on(run.step()),
        Err(RunError::NoEpochInProgress)
    ));
    assert!(matches!(
        block_on(run.end_epoch()),
        Err(RunError::NoEpochInProgress)
    ));
    assert!(run.begin_epoch());
    assert!(block_on(run.step()).unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings a run cannot train with are typed errors that name the setting, not a
/// command-line flag (the `train` binary adds its flags when it prints them).
#[test]
fn bad_settings_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("dnw-settings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut events = Silent;
    let mut no_batch = spec(&dir, false, None);
    no_batch.batch_size = 0;
    let e = block_on(Run::start(
        crate::gpu(),
        &no_batch,
        &SingleProcess,
        &mut events,
    ))
    .err();
    assert!(
        matches!(
            e,
            Some(RunError::NothingToTrain {
                batch_size: 0,
                epochs: 2
            })
        ),
        "{e:?}"
    );
    let nothing_to_resume = spec(&dir, true, None);
    match block_on(Run::start(
        crate::gpu(),
        &nothing_to_resume,
        &SingleProcess,
        &mut events,
    ))
    .err()
    {
        Some(e @ RunError::NoCheckpoint { .. }) => {
            let text = e.to_string();
            assert!(text.contains("checkpoint.safetensors"), "{text}");
            assert!(
                !text.contains("--"),
                "a flag in the library's message: {text}"
            );
        }
        other => panic!("expected NoCheckpoint, got {other:?}"),
    }
    let mut unknown = spec(&dir, false, None);
    let e = RunSpec::new(
        unknown.dataset.clone(),
        (vec![0], vec![1]),
        "densenet-7",
        &dir,
    )
    .err();
    assert!(
        matches!(&e, Some(RunError::UnknownModel { name, .. }) if name == "densenet-7"),
        "{e:?}"
    );
    unknown.init = Some(dir.join("no-such-weights.safetensors"));
    let e = block_on(Run::start(
        crate::gpu(),
        &unknown,
        &SingleProcess,
        &mut events,
    ))
    .err();
    assert!(matches!(e, Some(RunError::Weights(_))), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dry run is the calling thread's alone: another thread using the same device meanwhile
/// gets real buffers and real results.
#[test]
fn a_dry_run_leaves_other_threads_alone() {
    let gpu = crate::gpu();
    let inside = std::sync::Barrier::new(2);
    let done = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let (r, stats) = gpu.dry_run(|| -> densenet_wgpu::gpu::Result<usize> {
                let t = gpu.zeros(&[1 << 20], "dry")?;
                inside.wait();
                done.wait();
                Ok(t.numel())
            });
            assert_eq!(r.unwrap(), 1 << 20);
            assert_eq!(stats.peak_live_bytes(), 4 << 20);
        });
        inside.wait();
        assert!(!gpu.is_dry());
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let t = gpu.upload(&values, &[1000], "real").unwrap();
        assert_eq!(gpu.download(&t).unwrap(), values);
        done.wait();
    });
}
