//! ReLU: `y = max(x, 0)`; backward `d_x += d_y * [x > 0]`.

use super::{groups, ViewParams};
use crate::gpu::{Arg, Encoder, Gpu, GpuError, Launch, Result, Shader, Tensor};

pub const SHADER: Shader = shader!("relu");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams,
    y: ViewParams,
    d_x: ViewParams,
    numel: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

fn params(op: &str, x: &Tensor, y: &Tensor, d_x: &Tensor) -> Result<Params> {
    crate::gpu::expect_shape(op, "d_x", &d_x.shape, &x.shape)?;
    if x.shape != y.shape {
        return Err(GpuError::Shape(format!(
            "{op}: {} has shape {:?} but {} has {:?}",
            x.label(),
            x.shape,
            y.label(),
            y.shape
        )));
    }
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        d_x: ViewParams::of(d_x),
        numel: crate::gpu::to_u32(op, "numel", x.numel())?,
        _pad: [0; 3],
    })
}

/// `y = max(x, 0)` (overwrites `y`; `x` and `y` may be views of one shape).
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor) -> Result<()> {
    let p = params("relu forward", x, y, x)?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "forward",
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Write(y),
        ],
        workgroups: Gpu::grid_1d(groups(x.numel(), WG)),
    })
}

/// `d_x += d_y * [x > 0]`.
pub fn backward(enc: &mut Encoder, d_x: &Tensor, x: &Tensor, d_y: &Tensor) -> Result<()> {
    let p = params("relu backward", x, d_y, d_x)?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "backward",
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Read(d_y),
            Arg::Write(d_x),
        ],
        workgroups: Gpu::grid_1d(groups(x.numel(), WG)),
    })
}

/// f64 CPU reference.
pub mod reference {
    pub fn forward(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| v.max(0.0)).collect()
    }
    /// Returns `d_x` for a zero-initialised accumulator.
    pub fn backward(x: &[f64], d_y: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(d_y)
            .map(|(&v, &g)| if v > 0.0 { g } else { 0.0 })
            .collect()
    }
}
