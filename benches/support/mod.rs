//! Benchmark support shared by the benches: device ceilings (FMA throughput and copy
//! bandwidth, measured on the adapter in use), timing after a device sync, JSON lines.

#![allow(dead_code)] // each bench uses its own part

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use densenet_wgpu::gpu::{Arg, Encoder, Gpu, Launch, Result, Shader};
use densenet_wgpu::measure::median;

/// `benches/shaders/ceiling.wgsl` after the crate's common WGSL helpers.
pub const SHADER: Shader = Shader {
    name: "ceiling",
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        "\n",
        include_str!("../shaders/ceiling.wgsl")
    ),
};

const WG: u32 = 256;
const FMA_ITERS: u32 = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed: f32,
    _pad: [u32; 2],
}

/// Median seconds of `f` (which records work into an encoder), measured as whole
/// submissions each followed by a device sync. Runs `f` once first (pipeline compilation,
/// first-touch allocation), then repeats it in batches of `per_sample` launches.
pub fn time(
    gpu: &Gpu,
    samples: usize,
    mut f: impl FnMut(&mut Encoder) -> Result<()>,
) -> Result<f64> {
    let mut enc = gpu.encoder("bench warm-up");
    f(&mut enc)?;
    enc.submit()?;
    gpu.sync()?;
    // One timed call decides how many launches go into each sample (>= ~40 ms).
    let t = Instant::now();
    let mut enc = gpu.encoder("bench probe");
    f(&mut enc)?;
    enc.submit()?;
    gpu.sync()?;
    let once = t.elapsed().as_secs_f64();
    let per_sample = ((0.04 / once.max(1e-6)).ceil() as usize).clamp(1, 50);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let mut enc = gpu.encoder("bench");
        for _ in 0..per_sample {
            f(&mut enc)?;
        }
        enc.submit()?;
        gpu.sync()?;
        times.push(t.elapsed().as_secs_f64() / per_sample as f64);
    }
    Ok(median(&mut times))
}

/// The adapter's measured ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    pub gflops: f64,
    pub gbps: f64,
}

/// Measures a register-only FMA kernel and a 64 MiB vec4 copy.
pub fn ceilings(gpu: &Gpu) -> Result<Ceilings> {
    let invocations: u32 = if gpu.info.device_type == wgpu::DeviceType::Cpu {
        1 << 14
    } else {
        1 << 22
    };
    let out = gpu.zeros(&[invocations as usize * 4], "fma out")?;
    let p = Params {
        n: invocations,
        seed: 0.5,
        _pad: [0; 2],
    };
    let t_fma = time(gpu, 5, |enc| {
        enc.launch(Launch {
            shader: &SHADER,
            entry: "fma_loop",
            overrides: &[("WG", WG as f64), ("ITERS", FMA_ITERS as f64)],
            args: &[Arg::Uniform(bytemuck::bytes_of(&p)), Arg::Write(&out)],
            workgroups: Gpu::grid_1d((invocations as usize).div_ceil(WG as usize) as u32),
        })
    })?;
    let flops = invocations as f64 * FMA_ITERS as f64 * 3.0 * 4.0 * 2.0;
    let n_vec4 = (64 << 20) / 16;
    let src = gpu.zeros(&[n_vec4 * 4], "copy src")?;
    let dst = gpu.zeros(&[n_vec4 * 4], "copy dst")?;
    let p = Params {
        n: n_vec4 as u32,
        seed: 0.0,
        _pad: [0; 2],
    };
    let t_copy = time(gpu, 5, |enc| {
        enc.launch(Launch {
            shader: &SHADER,
            entry: "copy_vec4",
            overrides: &[("WG", WG as f64)],
            args: &[
                Arg::Uniform(bytemuck::bytes_of(&p)),
                Arg::Read(&src),
                Arg::Write(&dst),
            ],
            workgroups: Gpu::grid_1d(n_vec4.div_ceil(WG as usize) as u32),
        })
    })?;
    Ok(Ceilings {
        gflops: flops / t_fma / 1e9,
        gbps: 2.0 * 16.0 * n_vec4 as f64 / t_copy / 1e9,
    })
}

/// Minimal JSON string escaping for the JSON-lines output.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number, or `null` for NaN/absent values.
pub fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.6}"),
        _ => "null".into(),
    }
}

/// Writes JSON lines (one object per line) to `path`, creating its folder.
pub fn write_jsonl(path: &Path, lines: &[String]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(path)?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}
