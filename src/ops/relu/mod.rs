//! ReLU: `y = max(x, 0)`; backward `d_x += d_y * [x > 0]`.

use super::ViewParams;
use crate::gpu::{Encoder, Kernel, Result, Shader, Tensor};

pub mod reference;
mod tape;

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
    crate::gpu::expect_shape(op, y.label(), &y.shape, &x.shape)?;
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        d_x: ViewParams::of(d_x),
        numel: crate::gpu::to_u32(op, "numel", x.numel())?,
        _pad: [0; 3],
    })
}

/// [`super::vectorise`] on this op's uniform.
fn vectorise(p: &mut Params, tensors: &[&Tensor]) -> &'static str {
    super::vectorise(&mut [&mut p.x, &mut p.y, &mut p.d_x], &mut p.numel, tensors)
}

/// `y = max(x, 0)` (overwrites `y`; `x` and `y` may be views of one shape).
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor) -> Result<()> {
    let mut p = params("relu forward", x, y, x)?;
    let entry = format!("forward{}", vectorise(&mut p, &[x, y]));
    let kernel = Kernel::new(&SHADER, &entry, WG);
    enc.launch_threads(kernel, &p, &[x], &[y], p.numel as usize)
}

/// `d_x += d_y * [x > 0]`.
pub fn backward(enc: &mut Encoder, d_x: &Tensor, x: &Tensor, d_y: &Tensor) -> Result<()> {
    let mut p = params("relu backward", x, d_y, d_x)?;
    let entry = format!("backward{}", vectorise(&mut p, &[x, d_y, d_x]));
    let kernel = Kernel::new(&SHADER, &entry, WG);
    enc.launch_threads(kernel, &p, &[x, d_y], &[d_x], p.numel as usize)
}
