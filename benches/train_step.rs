//! Whole training steps (forward, loss, backward, Adam): median ms, images/s, peak device
//! bytes (the crate's own allocation accounting) and process peak RSS, for both block
//! modes, DenseNet and ResNet; plus peak device memory against depth (DenseNet-121/169/201).
//! Prints a table and writes `target/bench/train_step.jsonl`.
//!
//! Each (config, mode) runs in a fresh child process, so peak RSS is that run's own.
//!
//! `cargo bench --bench train_step [-- FILTER]`; `BENCH_STEPS=N` sets the timed steps.

use std::time::Instant;

mod support;

use densenet_wgpu::budget::RunShape;
use densenet_wgpu::gpu::{DeviceOptions, Gpu};
use densenet_wgpu::measure::{median, peak_rss_bytes};
use densenet_wgpu::models::{self, BlockMode};
use densenet_wgpu::ops::conv2d;
use densenet_wgpu::rng::Rng;
use support::{json_num, json_str, write_jsonl};

struct Case {
    name: &'static str,
    preset: &'static str,
    size: usize,
    batch: usize,
    /// Timed steps (the depth series only needs memory: one step).
    steps: usize,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn cases(steps: usize) -> Vec<Case> {
    vec![
        Case {
            name: "densenet-bc_32_b64",
            preset: "densenet-bc",
            size: 32,
            batch: 64,
            steps,
        },
        Case {
            name: "densenet121_64_b8",
            preset: "densenet121",
            size: 64,
            batch: 8,
            steps,
        },
        Case {
            name: "densenet121_224_b8",
            preset: "densenet121",
            size: 224,
            batch: 8,
            steps,
        },
        Case {
            name: "resnet18_64_b8",
            preset: "resnet18",
            size: 64,
            batch: 8,
            steps,
        },
        Case {
            name: "resnet50_64_b8",
            preset: "resnet50",
            size: 64,
            batch: 8,
            steps,
        },
        Case {
            name: "resnet18_224_b8",
            preset: "resnet18",
            size: 224,
            batch: 8,
            steps,
        },
        Case {
            name: "resnet50_224_b8",
            preset: "resnet50",
            size: 224,
            batch: 8,
            steps,
        },
        Case {
            name: "resnetv2_18_64_b8",
            preset: "resnetv2_18",
            size: 64,
            batch: 8,
            steps,
        },
        Case {
            name: "resnetv2_50_64_b8",
            preset: "resnetv2_50",
            size: 64,
            batch: 8,
            steps,
        },
        Case {
            name: "resnetv2_18_224_b8",
            preset: "resnetv2_18",
            size: 224,
            batch: 8,
            steps,
        },
        Case {
            name: "resnetv2_50_224_b8",
            preset: "resnetv2_50",
            size: 224,
            batch: 8,
            steps,
        },
        Case {
            name: "depth_densenet169_64_b8",
            preset: "densenet169",
            size: 64,
            batch: 8,
            steps: 1,
        },
        Case {
            name: "depth_densenet201_64_b8",
            preset: "densenet201",
            size: 64,
            batch: 8,
            steps: 1,
        },
    ]
}

fn parse_mode(s: &str) -> BlockMode {
    if s == "Plain" {
        BlockMode::Plain
    } else {
        BlockMode::MemoryEfficient
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // Child: `--child CASE MODE` measures one configuration and prints one JSON line.
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let (name, mode) = (&args[i + 1], parse_mode(&args[i + 2]));
        let case = cases(steps)
            .into_iter()
            .find(|c| c.name == name)
            .expect("case");
        let gpu = Gpu::open(&DeviceOptions::from_env())?;
        let kernels = conv2d::kernels_from_env()?;
        let _forced = conv2d::force(&kernels);
        let r = measure(&gpu, &case, mode)?;
        println!(
            "{{\"name\":{},\"mode\":{},\"model\":{},\"image_size\":{},\"batch\":{},\"ms\":{},\"images_per_s\":{},\"peak_device_bytes\":{},\"param_state_bytes\":{},\"peak_rss_bytes\":{},\"first_step_s\":{},\"adapter\":{}}}",
            json_str(case.name),
            json_str(&format!("{mode:?}")),
            json_str(case.preset),
            case.size,
            case.batch,
            json_num(Some(r.median_ms)),
            json_num(Some(case.batch as f64 / (r.median_ms / 1e3))),
            r.peak_device,
            r.param_state,
            r.peak_rss,
            json_num(Some(r.first_s)),
            json_str(&gpu.describe())
        );
        return Ok(());
    }
    let filter: Option<String> = args.iter().find(|a| !a.starts_with('-')).cloned();
    let gpu = Gpu::open(&DeviceOptions::from_env())?;
    println!("adapter: {}\n", gpu.describe());
    drop(gpu);
    let exe = std::env::current_exe()?;
    println!(
        "{:<26} {:<16} {:>10} {:>9} {:>13} {:>17} {:>13} {:>11}",
        "config",
        "mode",
        "median ms",
        "img/s",
        "peak device",
        "peak - params",
        "peak RSS",
        "first step"
    );
    let mut lines = Vec::new();
    for case in &cases(steps) {
        if filter
            .as_ref()
            .is_some_and(|f| !case.name.contains(f.as_str()))
        {
            continue;
        }
        for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
            let out = std::process::Command::new(&exe)
                .args(["--child", case.name, &format!("{mode:?}")])
                .output()?;
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            if !out.status.success() || !line.starts_with('{') {
                println!(
                    "{:<26} {:<16} failed: {}",
                    case.name,
                    format!("{mode:?}"),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            let field = |k: &str| -> f64 {
                line.split(&format!("\"{k}\":"))
                    .nth(1)
                    .and_then(|r| r.split([',', '}']).next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let r = Measured {
                median_ms: field("ms"),
                first_s: field("first_step_s"),
                peak_device: field("peak_device_bytes") as u64,
                param_state: field("param_state_bytes") as u64,
                peak_rss: field("peak_rss_bytes") as u64,
            };
            println!(
                "{:<26} {:<16} {:>10.1} {:>9.1} {:>9.1} MiB {:>13.1} MiB {:>9.1} MiB {:>9.2} s",
                case.name,
                format!("{mode:?}"),
                r.median_ms,
                case.batch as f64 / (r.median_ms / 1e3),
                r.peak_device as f64 / 1048576.0,
                r.peak_device.saturating_sub(r.param_state) as f64 / 1048576.0,
                r.peak_rss as f64 / 1048576.0,
                r.first_s
            );
            lines.push(line);
        }
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/train_step.jsonl");
    write_jsonl(&path, &lines).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

struct Measured {
    median_ms: f64,
    first_s: f64,
    peak_device: u64,
    /// Parameters, their gradients and Adam's two moments (4 f32 per parameter): the part
    /// of the peak that does not depend on batch or image size.
    param_state: u64,
    peak_rss: u64,
}

fn measure(
    gpu: &Gpu,
    case: &Case,
    mode: BlockMode,
) -> std::result::Result<Measured, Box<dyn std::error::Error>> {
    let classes = 4;
    let config = models::preset(case.preset, classes).expect("preset");
    let shape = RunShape {
        config,
        mode,
        freeze_features: false,
        image_size: case.size,
    };
    let mut trainer = shape.default_trainer(gpu)?;
    let param_state = 16 * trainer.model.num_parameters() as u64;
    // `DENSENET_WGPU_PROFILE=1`: the device time of every op, after each step.
    trainer.profile = std::env::var("DENSENET_WGPU_PROFILE").is_ok_and(|v| v == "1");
    let mut rng = Rng::new(1);
    let images: Vec<f32> = (0..case.batch * 3 * case.size * case.size)
        .map(|_| rng.normal() as f32)
        .collect();
    let labels: Vec<usize> = (0..case.batch).map(|i| i % classes).collect();
    gpu.sync()?;
    gpu.memory().reset_peak();
    let t = Instant::now();
    pollster::block_on(trainer.train_step(&images, &labels, case.size))?;
    let first_s = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..case.steps {
        let t = Instant::now();
        pollster::block_on(trainer.train_step(&images, &labels, case.size))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(ops) = &trainer.last_profile {
            eprint!("{}", densenet_wgpu::tape::profile_table(ops));
        }
    }
    Ok(Measured {
        median_ms: median(&mut times),
        first_s,
        peak_device: gpu.memory().peak_bytes(),
        param_state,
        peak_rss: peak_rss_bytes(),
    })
}
