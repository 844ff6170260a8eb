//! Per-kernel benchmarks on named shapes: median time after a device sync, GFLOP/s or
//! GB/s, and the share of the adapter's own measured ceiling (register-only FMA loop,
//! 64 MiB vec4 copy). Prints a table and writes `target/bench/kernels.jsonl`.
//!
//! `cargo bench --bench kernels [-- FILTER]` runs the cases whose name contains FILTER.
//! Each convolution pass is timed on the planner's kernel (marked `*`) and on every other
//! kernel that can run it, forced; `BENCH_PLANNED_ONLY=1` times the planner's alone.

mod support;

use densenet_wgpu::gpu::{DeviceOptions, Encoder, Gpu, Result, Tensor};
use densenet_wgpu::ops::avg_pool2d::Pool2dSpec;
use densenet_wgpu::ops::batch_norm::{
    Affine, AffineGrads, BatchStats, BnConfig, RunningStats, Saved,
};
use densenet_wgpu::ops::conv2d::{Conv2dSpec, ConvKernel, ConvPass};
use densenet_wgpu::ops::{avg_pool2d, batch_norm, concat, conv2d, linear, max_pool2d, relu};
use densenet_wgpu::rng::Rng;
use support::{ceilings, json_num, json_str, time, write_jsonl};

/// What a pass costs: floating-point operations and the minimum bytes it must move.
struct Cost {
    flops: f64,
    bytes: f64,
}

fn rand_tensor(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    gpu.upload(&v, shape, "bench input")
}

fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
    gpu.zeros(shape, "bench output")
}

type Pass<'a> = (
    &'static str,
    Cost,
    Box<dyn FnMut(&mut Encoder) -> Result<()> + 'a>,
);

/// A convolution of x (n, c, s, s) with k filters of ks x ks.
fn conv_case(
    gpu: &Gpu,
    [n, c, s]: [usize; 3],
    k: usize,
    ks: usize,
    spec: Conv2dSpec,
    data_grad: bool,
) -> Result<Vec<Pass<'static>>> {
    let x = rand_tensor(gpu, &[n, c, s, s], 1)?;
    let w = rand_tensor(gpu, &[k, c, ks, ks], 2)?;
    let (oh, ow) = conv2d::output_size(spec, s, s, ks, ks)?;
    let y = zeros(gpu, &[n, k, oh, ow])?;
    let d_y = rand_tensor(gpu, &[n, k, oh, ow], 3)?;
    let d_x = zeros(gpu, &[n, c, s, s])?;
    let d_w = zeros(gpu, &[k, c, ks, ks])?;
    let flops = 2.0 * (n * k * oh * ow * c * ks * ks) as f64;
    let (xb, wb, yb) = (
        (n * c * s * s * 4) as f64,
        (k * c * ks * ks * 4) as f64,
        (n * k * oh * ow * 4) as f64,
    );
    let mut passes: Vec<Pass> = Vec::new();
    let (x1, w1, y1) = (x.clone(), w.clone(), y.clone());
    passes.push((
        "forward",
        Cost {
            flops,
            bytes: xb + wb + yb,
        },
        Box::new(move |e| conv2d::forward(e, &y1, &x1, &w1, None, None, spec)),
    ));
    if data_grad {
        let (dy1, w2, dx1) = (d_y.clone(), w.clone(), d_x.clone());
        passes.push((
            "backward_data",
            Cost {
                flops,
                bytes: yb + wb + 2.0 * xb,
            },
            Box::new(move |e| conv2d::backward_data(e, &dx1, &dy1, &w2, spec)),
        ));
    }
    let (dy2, x2, dw1) = (d_y, x, d_w);
    passes.push((
        "backward_weight",
        Cost {
            flops,
            bytes: yb + xb + 2.0 * wb,
        },
        Box::new(move |e| conv2d::backward_weight(e, &dw1, None, &dy2, &x2, None, spec)),
    ));
    Ok(passes)
}

/// The convolution pass a row of a `conv*` case times.
fn conv_pass(case: &str, pass: &str) -> Option<ConvPass> {
    if !case.starts_with("conv") {
        return None;
    }
    match pass {
        "forward" => Some(ConvPass::Forward),
        "backward_data" => Some(ConvPass::BackwardData),
        "backward_weight" => Some(ConvPass::BackwardWeight),
        _ => None,
    }
}

fn cases(gpu: &Gpu) -> Result<Vec<(String, Vec<Pass<'static>>)>> {
    let mut out = Vec::new();
    // DenseNet-121's 3x3 convolutions (batch 8) at its four feature-map sizes, and
    // ResNet-18's.
    let three_by_three = [
        (128, 32, 56),
        (128, 32, 28),
        (128, 32, 14),
        (128, 32, 7),
        (64, 64, 56),
        (128, 128, 28),
        (256, 256, 14),
        (512, 512, 7),
    ];
    for (c, k, s) in three_by_three {
        out.push((
            format!("conv3x3_n8_c{c}_k{k}_s{s}"),
            conv_case(
                gpu,
                [8, c, s],
                k,
                3,
                Conv2dSpec {
                    stride: 1,
                    padding: 1,
                },
                true,
            )?,
        ));
    }
    out.push((
        "conv1x1_n8_c256_k128_s56".to_string(),
        conv_case(
            gpu,
            [8, 256, 56],
            128,
            1,
            Conv2dSpec {
                stride: 1,
                padding: 0,
            },
            true,
        )?,
    ));
    out.push((
        "conv7x7s2_n8_c3_k64_s224".to_string(),
        conv_case(
            gpu,
            [8, 3, 224],
            64,
            7,
            Conv2dSpec {
                stride: 2,
                padding: 3,
            },
            false,
        )?,
    ));

    // Batch norm (training) + fused ReLU, x(8,256,56,56).
    {
        let shape = [8, 256, 56, 56];
        let bytes = (8 * 256 * 56 * 56 * 4) as f64;
        let x = rand_tensor(gpu, &shape, 4)?;
        let y = zeros(gpu, &shape)?;
        let d_y = rand_tensor(gpu, &shape, 5)?;
        let d_x = zeros(gpu, &shape)?;
        let ch = |v: f32| gpu.upload(&[v; 256], &[256], "bn channel");
        let (g, b, mean, inv, rm, rv, dg, db) = (
            ch(1.0)?,
            ch(0.0)?,
            ch(0.0)?,
            ch(1.0)?,
            ch(0.0)?,
            ch(1.0)?,
            ch(0.0)?,
            ch(0.0)?,
        );
        let cfg = BnConfig {
            eps: 1e-5,
            momentum: 0.1,
            relu: true,
        };
        let (x1, y1, g1, b1, m1, i1) = (
            x.clone(),
            y.clone(),
            g.clone(),
            b.clone(),
            mean.clone(),
            inv.clone(),
        );
        let (x2, g2, b2, m2, i2, rm2, rv2) = (
            x.clone(),
            g.clone(),
            b.clone(),
            mean.clone(),
            inv.clone(),
            rm.clone(),
            rv.clone(),
        );
        let (x3, y3, g3, b3, rm3, rv3) = (
            x.clone(),
            y.clone(),
            g.clone(),
            b.clone(),
            rm.clone(),
            rv.clone(),
        );
        // Statistics only (memory-efficient layers): one read of x.
        let stats: Pass = (
            "stats",
            Cost { flops: 0.0, bytes },
            Box::new(move |e| {
                let stats = BatchStats {
                    mean: &m2,
                    inv_std: &i2,
                };
                let running = RunningStats {
                    mean: &rm2,
                    var: &rv2,
                };
                let affine = Affine {
                    gamma: &g2,
                    beta: &b2,
                };
                batch_norm::forward_train(e, None, stats, running, &x2, affine, cfg)
            }),
        );
        // Inference: x read, y written.
        let eval: Pass = (
            "eval",
            Cost {
                flops: 0.0,
                bytes: 2.0 * bytes,
            },
            Box::new(move |e| {
                let affine = Affine {
                    gamma: &g3,
                    beta: &b3,
                };
                let running = RunningStats {
                    mean: &rm3,
                    var: &rv3,
                };
                batch_norm::forward_eval(e, &y3, &x3, affine, running, cfg)
            }),
        );
        let fwd: Pass = (
            "forward",
            // statistics read x, normalisation reads x and writes y
            Cost {
                flops: 0.0,
                bytes: 3.0 * bytes,
            },
            Box::new(move |e| {
                let stats = BatchStats {
                    mean: &m1,
                    inv_std: &i1,
                };
                let running = RunningStats {
                    mean: &rm,
                    var: &rv,
                };
                let affine = Affine {
                    gamma: &g1,
                    beta: &b1,
                };
                batch_norm::forward_train(e, Some(&y1), stats, running, &x1, affine, cfg)
            }),
        );
        let bwd: Pass = (
            "backward",
            // reduction reads x and d_y; d_x pass reads x, d_y, d_x and writes d_x
            Cost {
                flops: 0.0,
                bytes: 6.0 * bytes,
            },
            Box::new(move |e| {
                let grads = AffineGrads {
                    d_gamma: &dg,
                    d_beta: &db,
                };
                let saved = Saved {
                    x: &x,
                    affine: Affine {
                        gamma: &g,
                        beta: &b,
                    },
                    stats: BatchStats {
                        mean: &mean,
                        inv_std: &inv,
                    },
                };
                batch_norm::backward(e, &d_x, grads, &d_y, saved, cfg)
            }),
        );
        out.push(("bn_n8_c256_s56".to_string(), vec![fwd, stats, eval, bwd]));
    }
    // ReLU x(8,256,56,56).
    {
        let shape = [8, 256, 56, 56];
        let bytes = (8 * 256 * 56 * 56 * 4) as f64;
        let x = rand_tensor(gpu, &shape, 6)?;
        let y = zeros(gpu, &shape)?;
        let d_y = rand_tensor(gpu, &shape, 7)?;
        let d_x = zeros(gpu, &shape)?;
        let (x1, y1) = (x.clone(), y.clone());
        out.push((
            "relu_n8_c256_s56".to_string(),
            vec![
                (
                    "forward",
                    Cost {
                        flops: 0.0,
                        bytes: 2.0 * bytes,
                    },
                    Box::new(move |e: &mut Encoder| relu::forward(e, &y1, &x1))
                        as Box<dyn FnMut(&mut Encoder) -> Result<()>>,
                ),
                (
                    "backward",
                    Cost {
                        flops: 0.0,
                        bytes: 4.0 * bytes,
                    },
                    Box::new(move |e: &mut Encoder| relu::backward(e, &d_x, &x, &d_y)),
                ),
            ],
        ));
    }
    // Average pool 2x2/s2 x(8,256,56,56).
    {
        let spec = Pool2dSpec {
            kernel: 2,
            stride: 2,
            padding: 0,
        };
        let xb = (8 * 256 * 56 * 56 * 4) as f64;
        let x = rand_tensor(gpu, &[8, 256, 56, 56], 8)?;
        let y = zeros(gpu, &[8, 256, 28, 28])?;
        let d_y = rand_tensor(gpu, &[8, 256, 28, 28], 9)?;
        let d_x = zeros(gpu, &[8, 256, 56, 56])?;
        out.push((
            "avgpool2_n8_c256_s56".to_string(),
            vec![
                (
                    "forward",
                    Cost {
                        flops: 0.0,
                        bytes: 1.25 * xb,
                    },
                    Box::new(move |e: &mut Encoder| avg_pool2d::forward(e, &y, &x, spec))
                        as Box<dyn FnMut(&mut Encoder) -> Result<()>>,
                ),
                (
                    "backward",
                    Cost {
                        flops: 0.0,
                        bytes: 2.25 * xb,
                    },
                    Box::new(move |e: &mut Encoder| avg_pool2d::backward(e, &d_x, &d_y, spec)),
                ),
            ],
        ));
    }
    // Concat (8,256,28,28) + (8,32,28,28).
    {
        let a = rand_tensor(gpu, &[8, 256, 28, 28], 10)?;
        let b = rand_tensor(gpu, &[8, 32, 28, 28], 11)?;
        let y = zeros(gpu, &[8, 288, 28, 28])?;
        let d_y = rand_tensor(gpu, &[8, 288, 28, 28], 12)?;
        let da = zeros(gpu, &[8, 256, 28, 28])?;
        let dbb = zeros(gpu, &[8, 32, 28, 28])?;
        let yb = (8 * 288 * 28 * 28 * 4) as f64;
        out.push((
            "concat_n8_c256p32_s28".to_string(),
            vec![
                (
                    "forward",
                    Cost {
                        flops: 0.0,
                        bytes: 2.0 * yb,
                    },
                    Box::new(move |e: &mut Encoder| concat::forward(e, &y, &[&a, &b]))
                        as Box<dyn FnMut(&mut Encoder) -> Result<()>>,
                ),
                (
                    "backward",
                    Cost {
                        flops: 0.0,
                        bytes: 3.0 * yb,
                    },
                    Box::new(move |e: &mut Encoder| concat::backward(e, &[&da, &dbb], &d_y)),
                ),
            ],
        ));
    }
    // Max pool 3x3/s2/p1 x(8,64,112,112): forward also writes the argmax bytes that
    // backward reads instead of x.
    {
        let spec = Pool2dSpec {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let (xs, ys) = ([8, 64, 112, 112], [8, 64, 56, 56]);
        let x = rand_tensor(gpu, &xs, 13)?;
        let y = zeros(gpu, &ys)?;
        let idx = max_pool2d::alloc_indices(gpu, ys, "bench indices")?;
        let d_y = rand_tensor(gpu, &ys, 14)?;
        let d_x = zeros(gpu, &xs)?;
        let bytes = |t: &Tensor| (t.numel() * 4) as f64;
        let (xb, yb, ib) = (bytes(&x), bytes(&y), bytes(&idx));
        // Real indices for backward: the argmax of x.
        let mut enc = gpu.encoder("bench maxpool indices");
        max_pool2d::forward(&mut enc, &y, Some(&idx), &x, spec)?;
        enc.submit()?;
        let (idx1, x1, y1) = (idx.clone(), x.clone(), y.clone());
        out.push((
            "maxpool3s2_n8_c64_s112".to_string(),
            vec![
                (
                    "inference",
                    // x read, y written (no indices)
                    Cost {
                        flops: 0.0,
                        bytes: xb + yb,
                    },
                    Box::new(move |e: &mut Encoder| max_pool2d::forward(e, &y1, None, &x1, spec))
                        as Box<dyn FnMut(&mut Encoder) -> Result<()>>,
                ),
                (
                    "forward",
                    // x read, y and indices written
                    Cost {
                        flops: 0.0,
                        bytes: xb + yb + ib,
                    },
                    Box::new(move |e: &mut Encoder| {
                        max_pool2d::forward(e, &y, Some(&idx1), &x, spec)
                    }),
                ),
                (
                    "backward",
                    // d_y and indices read, d_x read and written
                    Cost {
                        flops: 0.0,
                        bytes: yb + ib + 2.0 * xb,
                    },
                    Box::new(move |e: &mut Encoder| {
                        max_pool2d::backward(e, &d_x, &d_y, &idx, spec)
                    }),
                ),
            ],
        ));
    }
    // Linear layers: the classifier shape (y = x·Wᵀ + b) and a square 512 matmul
    // (C = A·B forward; its backward dA = dC·Bᵀ, dB = Aᵀ·dC is linear's backward without
    // bias, with W = Bᵀ).
    for (name, n, i, o, plain_matmul) in [
        ("linear_n8_1024_4", 8, 1024, 4, false),
        ("matmul_512", 512, 512, 512, true),
    ] {
        let x = rand_tensor(gpu, &[n, i], 15)?;
        let w = rand_tensor(gpu, &[o, i], 16)?;
        let bias = rand_tensor(gpu, &[o], 17)?;
        let y = zeros(gpu, &[n, o])?;
        let d_y = rand_tensor(gpu, &[n, o], 18)?;
        let d_x = zeros(gpu, &[n, i])?;
        let d_w = zeros(gpu, &[o, i])?;
        let d_b = zeros(gpu, &[o])?;
        let flops = 2.0 * (n * i * o) as f64;
        let bytes = ((n * i + o * i + n * o) * 4) as f64;
        let (x1, w1) = (x.clone(), w.clone());
        out.push((
            name.to_string(),
            vec![
                (
                    "forward",
                    Cost { flops, bytes },
                    Box::new(move |e: &mut Encoder| {
                        if plain_matmul {
                            linear::matmul(e, &y, &x1, &w1)
                        } else {
                            linear::forward(e, &y, &x1, &w1, Some(&bias))
                        }
                    }) as Box<dyn FnMut(&mut Encoder) -> Result<()>>,
                ),
                (
                    "backward",
                    Cost {
                        flops: 2.0 * flops,
                        bytes: 2.0 * bytes,
                    },
                    Box::new(move |e: &mut Encoder| {
                        let d_b = (!plain_matmul).then_some(&d_b);
                        linear::backward(e, Some(&d_x), &d_w, d_b, &d_y, &x, &w)
                    }),
                ),
            ],
        ));
    }
    Ok(out)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    // BENCH_PLANNED_ONLY=1: only the planner's convolution kernels (for before/after runs).
    let planned_only = std::env::var("BENCH_PLANNED_ONLY").is_ok_and(|v| v == "1");
    let gpu = Gpu::open(&DeviceOptions::from_env())?;
    let adapter = gpu.describe();
    println!("adapter: {adapter}");
    let ceil = ceilings(&gpu)?;
    println!(
        "measured ceilings: {:.1} GFLOP/s (register FMA loop), {:.2} GB/s (64 MiB vec4 copy)\n",
        ceil.gflops, ceil.gbps
    );
    println!(
        "{:<26} {:<16} {:<24} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "case", "pass", "kernel", "median ms", "GFLOP/s", "%peak", "GB/s", "%copy"
    );
    let mut rows = Vec::new();
    for (name, passes) in cases(&gpu)? {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        for (pass, cost, mut f) in passes {
            // Convolutions: the planner's kernel, then each other kernel that can run the
            // pass, forced.
            let mut variants: Vec<Option<ConvKernel>> = vec![None];
            if let Some(conv) = conv_pass(&name, pass).filter(|_| !planned_only) {
                variants.extend(
                    ConvKernel::ALL
                        .into_iter()
                        .filter(|k| k.serves(conv))
                        .map(Some),
                );
            }
            let mut planned = None;
            for forced in variants {
                let _guard = forced.map(|k| conv2d::force(&[k]));
                let secs = match time(&gpu, 7, |e| f(e)) {
                    Ok(secs) => secs,
                    Err(densenet_wgpu::GpuError::KernelNotApplicable(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                let ran = conv_pass(&name, pass).and_then(conv2d::last_kernel);
                if forced.is_none() {
                    planned = ran;
                } else if ran == planned {
                    continue;
                }
                let kernel = match ran {
                    Some(k) if forced.is_none() => format!("{k}*"),
                    Some(k) => k.to_string(),
                    None => String::new(),
                };
                record(
                    &mut rows, &name, pass, &kernel, secs, &cost, &ceil, &adapter,
                );
            }
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/kernels.jsonl");
    write_jsonl(&path, &rows).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("\nwrote {}", path.display());
    println!(
        "* the planner's kernel; the other rows force a kernel ({})",
        conv2d::FORCE_ENV
    );
    Ok(())
}

/// Prints one row and adds its JSON line to `rows`.
#[allow(clippy::too_many_arguments)]
fn record(
    rows: &mut Vec<String>,
    name: &str,
    pass: &'static str,
    kernel: &str,
    secs: f64,
    cost: &Cost,
    ceil: &support::Ceilings,
    adapter: &str,
) {
    let gflops = (cost.flops > 0.0).then(|| cost.flops / secs / 1e9);
    let gbps = cost.bytes / secs / 1e9;
    println!(
        "{:<26} {:<16} {:<24} {:>10.3} {:>10} {:>8} {:>10.2} {:>7.0}%",
        name,
        pass,
        kernel,
        secs * 1e3,
        gflops
            .map(|g| format!("{g:.2}"))
            .unwrap_or_else(|| "-".into()),
        gflops
            .map(|g| format!("{:.0}%", 100.0 * g / ceil.gflops))
            .unwrap_or_else(|| "-".into()),
        gbps,
        100.0 * gbps / ceil.gbps
    );
    rows.push(format!(
        "{{\"name\":{},\"pass\":{},\"kernel\":{},\"ms\":{},\"gflops\":{},\"gbps\":{},\"adapter\":{},\"ceiling_gflops\":{},\"ceiling_gbps\":{}}}",
        json_str(name),
        json_str(pass),
        json_str(kernel.trim_end_matches('*')),
        json_num(Some(secs * 1e3)),
        json_num(gflops),
        json_num(Some(gbps)),
        json_str(adapter),
        json_num(Some(ceil.gflops)),
        json_num(Some(ceil.gbps))
    ));
}
