//! Global average pooling: `y[n,c] = mean_{h,w} x[n,c,h,w]` (y is contiguous (N, C));
//! backward `d_x[n,c,h,w] += d_y[n,c] / (H·W)`.

use super::{plane_grid, ViewParams};
use crate::gpu::{
    check_distinct, expect_contiguous, nchw, to_u32, Arg, Encoder, Kernel, Result, Shader, Tensor,
};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("global_avg_pool");
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams, // x (forward) or d_x (backward)
    y_offset: u32, // first element of y (forward) or d_y (backward)
    planes: u32,
    c: u32,
    hw: u32,
    inv_hw: f32,
    gx: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// Validates x (N, C, H, W) against a contiguous y (N, C); returns the uniform.
fn params(op: &str, y_name: &str, y: &Tensor, x_name: &str, x: &Tensor) -> Result<Params> {
    let [n, c, h, w] = nchw(op, x_name, x)?;
    crate::gpu::expect_shape(op, y_name, &y.shape, &[n, c])?;
    expect_contiguous(op, y_name, y)?;
    check_distinct(op, &[(y_name, y)], &[(x_name, x)])?;
    to_u32(op, x_name, x.storage.numel)?;
    to_u32(op, y_name, y.storage.numel)?;
    Ok(Params {
        x: ViewParams::of(x),
        y_offset: to_u32(op, y_name, y.offset)?,
        planes: to_u32(op, "N * C", n * c)?,
        c: c as u32,
        hw: to_u32(op, "H * W", h * w)?,
        inv_hw: 1.0 / (h * w).max(1) as f32,
        gx: 0,
        _pad: [0; 2],
    })
}

/// `y[n,c] = mean over (H, W) of x[n,c]` (overwrites `y`). `x` (N, C, H, W) may be a
/// channel-slice view; `y` is a contiguous (N, C) tensor.
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor) -> Result<()> {
    let p = params("global_avg_pool forward", "y", y, "x", x)?;
    let kernel = Kernel::new(&SHADER, "forward", WG);
    enc.launch_threads(kernel, &p, &[x], &[y], p.planes as usize)
}

/// `d_x[n,c,h,w] += d_y[n,c] / (H·W)`. `d_x` (N, C, H, W) may be a channel-slice view;
/// `d_y` is a contiguous (N, C) tensor.
pub fn backward(enc: &mut Encoder, d_x: &Tensor, d_y: &Tensor) -> Result<()> {
    let op = "global_avg_pool backward";
    let mut p = params(op, "d_y", d_y, "d_x", d_x)?;
    let item = if d_x.numel() == 0 {
        0
    } else {
        d_x.item_numel()
    };
    let grid;
    (p.gx, grid) = plane_grid(op, item, d_x.shape[0], WG)?;
    let kernel = Kernel::new(&SHADER, "backward", WG);
    enc.launch_grid(kernel, &Arg::bindings(&p, &[d_y], &[d_x]), grid)
}
