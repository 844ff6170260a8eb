//! A training run driven from Rust one step at a time: the embedded dataset, a small
//! DenseNet, the validation accuracy after each epoch, and a stop after a given number of
//! steps with a checkpoint that `RunSpec::resume` continues from.
//!
//! `cargo run --release --example step_by_step [-- EPOCHS [STOP_AFTER_STEPS]]`
//! (defaults: 3 epochs, no stop). Run it again after a stop to resume.

use std::sync::Arc;

use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::{split, Dataset};
use densenet_wgpu::dist::SingleProcess;
use densenet_wgpu::metrics;
use densenet_wgpu::run::events::Silent;
use densenet_wgpu::run::{Run, RunSpec};
use densenet_wgpu::Gpu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The run's calls are async (a web page awaits them); a native program blocks on them.
    pollster::block_on(train())
}

async fn train() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let epochs: usize = args.first().map_or(Ok(3), |a| a.parse())?;
    let stop_after: Option<u32> = args.get(1).map(|a| a.parse()).transpose()?;

    let data = Arc::new(Synthetic::new(600, 32, 123));
    let (train, val) = split(data.len(), 0.2, 123)?;
    let out = std::env::temp_dir().join("densenet-wgpu-step-by-step");
    let mut spec = RunSpec::new(data, (train, val), "densenet-tiny", &out)?;
    spec.epochs = epochs;
    spec.resume = out.join("checkpoint.safetensors").exists();
    // The epochs' metrics, kept here so that a resumed run knows its best accuracy so far.
    let csv = out.join("metrics.csv");
    if spec.resume && csv.exists() {
        spec.history = metrics::read_csv(&csv)?;
    }

    let gpu = Gpu::request(&Default::default()).await?;
    println!("adapter: {}; run folder: {}", gpu.describe(), out.display());
    let mut events = Silent; // this program prints its own lines
    let mut run = Run::start(&gpu, &spec, &SingleProcess, &mut events).await?;
    metrics::write_csv(&csv, run.history())?; // the epochs up to the checkpoint
    while run.begin_epoch() {
        while let Some(step) = run.step().await? {
            if step.step % 5 == 0 {
                println!("step {}: loss {:.4}", step.step, step.loss);
            }
            if stop_after == Some(step.step) {
                run.checkpoint().await?;
                println!("stopped after step {}; run again to resume", step.step);
                return Ok(());
            }
        }
        let m = run.end_epoch().await?;
        metrics::append_csv(&csv, &m)?;
        println!("{}", m.summary_line());
    }
    let history = run.finish();
    println!(
        "{} epochs; best weights in {}",
        history.len(),
        out.display()
    );
    Ok(())
}
