//! Where the time of a register-tiled kernel goes on this adapter: conv1x1's inner loop
//! (benches/shaders/load_costs.wgsl, the shape of `conv1x1_n8_c256_k128_s56`) timed in full, without
//! its activation loads, without its weight loads and shuffles, and without either (the
//! multiply-adds and the register tile alone). The four variants run interleaved in one
//! process, round after round, so a change in machine speed hits them alike; each line
//! gives the median over the rounds and the FMA ceiling of the same run.
//!
//! `cargo bench --bench load_costs` (needs subgroup operations; `ROUNDS=N`, default 9).

mod support;

use densenet_wgpu::gpu::{Arg, DeviceOptions, Gpu, Launch, Shader};
use densenet_wgpu::measure::median;
use densenet_wgpu::rng::Rng;
use support::{ceilings, time};

const SHADER: Shader = Shader {
    name: "load_costs",
    source: include_str!("shaders/load_costs.wgsl"),
};
const WG: u32 = 64;
const N: usize = 8;
const RED_C: usize = 256;
const HW4: usize = 56 * 56 / 4;
const OUT_C: usize = 128;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::open(&DeviceOptions::from_env())?;
    println!("adapter: {}", gpu.describe());
    if !gpu.subgroups() {
        println!("this adapter has no subgroup operations: nothing to measure");
        return Ok(());
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let mut rng = Rng::new(1);
    let xv: Vec<f32> = (0..N * RED_C * HW4 * 4)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    let wv: Vec<f32> = (0..RED_C * OUT_C)
        .map(|_| rng.range(-1.0, 1.0) as f32)
        .collect();
    let x = gpu.upload(&xv, &[N, RED_C, HW4 * 4], "x")?;
    let w = gpu.upload(&wv, &[RED_C, OUT_C], "packed w")?;
    let out = gpu.zeros(&[N, OUT_C, HW4 * 4], "out")?;
    let params: [u32; 4] = [RED_C as u32, HW4 as u32, N as u32, OUT_C as u32];
    let groups = (N * HW4).div_ceil(2 * WG as usize) as u32;
    let launch = |enc: &mut densenet_wgpu::gpu::Encoder, x_loads: u32, w_loads: u32| {
        enc.launch(Launch {
            shader: &SHADER,
            entry: "conv1x1_costs",
            overrides: &[
                ("WG", WG as f64),
                ("X_LOADS", x_loads as f64),
                ("W_LOADS", w_loads as f64),
            ],
            args: &[
                Arg::Uniform(bytemuck::bytes_of(&params)),
                Arg::Read(&x),
                Arg::Read(&w),
                Arg::Write(&out),
            ],
            workgroups: [(OUT_C / 16) as u32, groups, 1],
        })
    };

    // The full variant computes the real product: check a sample of it.
    let mut enc = gpu.encoder("load_costs check");
    launch(&mut enc, 1, 1)?;
    enc.submit()?;
    let got = gpu.download(&out)?;
    let mut worst = 0.0f64;
    for s in 0..64 {
        let (n, oc, q) = ((s * 5) % N, (s * 37) % OUT_C, (s * 997) % (HW4 * 4));
        let want: f64 = (0..RED_C)
            .map(|rc| wv[rc * OUT_C + oc] as f64 * xv[(n * RED_C + rc) * HW4 * 4 + q] as f64)
            .sum();
        let g = got[(n * OUT_C + oc) * HW4 * 4 + q] as f64;
        worst = worst.max((g - want).abs() / (1.0 + want.abs()));
    }
    if worst > 1e-4 {
        return Err(format!("the full variant is wrong (relative error {worst:.2e})").into());
    }

    let variants = [
        ("full kernel", 1, 1),
        ("without activation loads", 0, 1),
        ("without weight loads and shuffles", 1, 0),
        ("neither (multiply-adds + tile)", 0, 0),
    ];
    let flops = 2.0 * (N * HW4 * 4 * RED_C * OUT_C) as f64;
    let mut times = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        // Alternate the order so that no variant always follows the same one.
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (_, xl, wl) = variants[i];
            times[i].push(time(&gpu, 3, |e| launch(e, xl, wl))?);
        }
    }
    let ceil = ceilings(&gpu)?;
    println!(
        "conv1x1 inner loop, x (8,256,56,56) w (128,256), {rounds} interleaved rounds; \
         FMA ceiling of this run {:.1} GFLOP/s\n",
        ceil.gflops
    );
    let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    for (i, (name, _, _)) in variants.iter().enumerate() {
        println!(
            "{name:<36} {:8.2} ms  {:6.1} GFLOP/s  {:4.0} % of the FMA ceiling",
            med[i] * 1e3,
            flops / med[i] / 1e9,
            100.0 * flops / med[i] / 1e9 / ceil.gflops
        );
    }
    println!(
        "\nof the full kernel's time: {:.0} % goes when the activation loads go, {:.0} % when \
         the weight loads and shuffles go; the multiply-adds and tile alone take {:.0} %",
        100.0 * (med[0] - med[1]) / med[0],
        100.0 * (med[0] - med[2]) / med[0],
        100.0 * med[3] / med[0]
    );
    Ok(())
}
