//! Fine-tuning on an image folder, then predicting: torchvision-format weights start a run
//! on a folder with one sub-folder per class; a new classifier for its classes trains on
//! frozen features, and the run's best weights classify the given images.
//!
//! `cargo run --release --example finetune -- MODEL WEIGHTS.safetensors FOLDER [IMAGE...]`
//!
//! MODEL is the preset the weights are for (`densenet121`, `resnet18`, ...; `train --help`
//! lists them).
//!
//! The run writes `finetune-run/` in the current folder (checkpoint.safetensors,
//! best.safetensors); each epoch's metrics come as events. Images are 224x224, 20 % of the folder is
//! held out for validation (seed 123), and it trains for 5 epochs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use densenet_wgpu::data::folder::{load_image, ImageFolder};
use densenet_wgpu::data::{split, Dataset};
use densenet_wgpu::run::events::RunEvent;
use densenet_wgpu::run::{self, fit, RunSpec};
use densenet_wgpu::{train::evaluate, Gpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(weights), Some(folder_dir)) = (args.next(), args.next(), args.next())
    else {
        return Err("usage: finetune MODEL WEIGHTS.safetensors FOLDER [IMAGE...]".into());
    };
    let images: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let size = 224;
    let (folder, skipped) = ImageFolder::open(Path::new(&folder_dir), size)?;
    for file in &skipped {
        eprintln!("skipped: {file}");
    }
    // Inputs normalised as the weights were trained on them.
    let folder = folder.with_normalization(run::weights_normalization(Path::new(&weights))?);
    let (train, val) = split(folder.len(), 0.2, 123)?;
    let out = PathBuf::from("finetune-run");
    let mut spec = RunSpec::new(Arc::new(folder), (train, val), &model, &out)?;
    spec.init = Some(weights.into());
    spec.freeze_features = true;
    spec.epochs = 5;
    spec.batch_size = 16;
    spec.lr = 1e-3;
    let mut report = |event: &RunEvent| {
        if let RunEvent::EpochDone(report) = event {
            println!("{}", report.metrics.summary_line());
        }
    };
    pollster::block_on(fit(&spec, &mut report))?;

    let gpu = Gpu::new()?;
    let (model, info) = run::load_model(&gpu, &out.join("best.safetensors"))?;
    let classes = info.classes.unwrap_or_default();
    for path in &images {
        let image = load_image(path, size, &info.normalization)?;
        let result = pollster::block_on(evaluate(&gpu, model.as_ref(), &image, &[0], size))?;
        let best = result.predictions[0];
        let p = result.probabilities[best];
        println!("{}: {} ({:.1} %)", path.display(), classes[best], p * 100.0);
    }
    Ok(())
}
