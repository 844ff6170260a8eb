//! A soak run: many training steps of one model on the embedded dataset, reporting the
//! device bytes the crate holds and the process's resident memory at the start, the middle
//! and the end, so a leak shows as growth.
//!
//! `cargo run --release --example soak [-- STEPS [MODEL [IMAGE_SIZE [BATCH]]]]`
//! (defaults: 2000 densenet-tiny 32 32); `scripts/soak.sh` runs it.

use std::time::Instant;

use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::Dataset;
use densenet_wgpu::data::{Loader, LoaderOptions};
use densenet_wgpu::measure::rss_bytes;
use densenet_wgpu::models;
use densenet_wgpu::ops::adam::AdamConfig;
use densenet_wgpu::optim::{Adam, Schedule};
use densenet_wgpu::train::Trainer;
use densenet_wgpu::Gpu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let steps: usize = arg(0, "2000").parse()?;
    let model_name = arg(1, "densenet-tiny");
    let size: usize = arg(2, "32").parse()?;
    let batch: usize = arg(3, "32").parse()?;

    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    let data = std::sync::Arc::new(Synthetic::new(3000, size, 123));
    let config = models::preset(&model_name, data.classes().len())
        .ok_or_else(|| format!("unknown model {model_name}"))?;
    let model = config.build(&gpu, 123)?;
    let opt = Adam::new(
        &gpu,
        model.params(),
        AdamConfig::default(),
        Schedule::Constant,
    )?;
    let mut trainer = Trainer::new(&gpu, model, opt);
    println!("{model_name}, {size}x{size}, batch {batch}, {steps} steps");
    println!(
        "{:>6} {:>16} {:>12} {:>10}",
        "step", "held device MiB", "RSS MiB", "loss"
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let report = |step: usize, loss: f64, gpu: &Gpu| {
        let held = gpu.memory().held_bytes();
        println!(
            "{step:>6} {:>16.1} {:>12.1} {loss:>10.4}",
            mib(held),
            mib(rss_bytes())
        );
    };
    let t0 = Instant::now();
    let (mut step, mut epoch) = (0, 0u64);
    while step < steps {
        let order: Vec<usize> = (0..data.len()).collect();
        for b in Loader::new(
            data.clone(),
            order,
            LoaderOptions::batches_of(batch)
                .shuffled(epoch)
                .augmented(true)
                .drop_last(),
        ) {
            let r = pollster::block_on(trainer.train_step(&b.images, &b.labels, size))?;
            step += 1;
            if step == 1 || step == steps / 2 || step == steps {
                gpu.sync()?;
                report(step, r.loss, &gpu);
            }
            if step == steps {
                break;
            }
        }
        epoch += 1;
    }
    println!("{steps} steps in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
