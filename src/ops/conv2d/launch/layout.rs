//! The data movement of the register-tiled kernels (`shaders/conv2d/layout.wgsl`): the
//! weight packed for vec4 loads, channel planes padded for the fast kernels, and the
//! pixel-major copy of d_y that `backward_weight_strided` reads.

use super::tiled::WG;
use super::{Geom, Packing};
use crate::gpu::{nchw, to_u32, Encoder, Kernel, Result, Tensor};
use crate::ops::conv2d::shaders::SHADER;
use crate::ops::ViewParams;

/// The uniform of the layout kernels (`pack_weight`, `repad`, `to_pixel_major`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LayoutParams {
    inp: ViewParams,
    out: ViewParams,
    total: u32,
    channels: u32,
    plane_in: u32,
    plane_out: u32,
    accumulate: u32,
    out_c: u32,
    kk: u32,
    w_off: u32,
    w_out_stride: u32,
    w_red_stride: u32,
    flip: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<LayoutParams>() == 80);

/// Launches the layout kernel `entry` over `q.total` invocations, reading `read` and
/// writing `written`.
fn layout_launch(
    enc: &mut Encoder,
    entry: &'static str,
    q: &LayoutParams,
    read: &Tensor,
    written: &Tensor,
) -> Result<()> {
    let kernel = Kernel::new(&SHADER, entry, WG);
    enc.launch_threads(kernel, q, &[read], &[written], q.total as usize)
}

/// Repacks the weight as `[red_c * KH*KW, out_c rounded up to 4]` (taps rotated when
/// `packing.flip`, padding channels 0), so that the weights of 4 consecutive output channels
/// are one aligned vec4 (see `pack_weight` in layout.wgsl).
pub(super) fn pack_weight(
    enc: &mut Encoder,
    op: &str,
    g: &Geom,
    packing: Packing,
    weight: &Tensor,
) -> Result<Tensor> {
    let kk = g.kh * g.kw;
    let rows = packing.red_c * kk;
    let ocp = packing.out_c.div_ceil(4) * 4;
    let total = rows * ocp;
    let packed = enc.gpu().zeros(&[rows, ocp], "conv2d packed weight")?;
    if total == 0 {
        return Ok(packed);
    }
    let q = LayoutParams {
        total: to_u32(op, "packed weight", total)?,
        out_c: packing.out_c as u32,
        kk: kk as u32,
        w_off: packing.w_off,
        w_out_stride: to_u32(op, "weight stride", packing.out_stride)?,
        w_red_stride: to_u32(op, "weight stride", packing.red_stride)?,
        flip: packing.flip as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    layout_launch(enc, "pack_weight", &q, weight, &packed)?;
    Ok(packed)
}

/// Pixel-major copy `[N*H*W, C rounded up to 4]` of `t` (N, C, H, W; vec4 layout), see
/// `to_pixel_major` in layout.wgsl.
pub(super) fn to_pixel_major(enc: &mut Encoder, op: &str, t: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = nchw(op, "pixel-major source", t)?;
    let npix = n * h * w;
    let cp = c.div_ceil(4) * 4;
    let out = enc.gpu().zeros(&[npix, cp], "conv2d pixel-major copy")?;
    let total = npix / 4 * cp / 4;
    if total == 0 {
        return Ok(out);
    }
    to_u32(op, "pixel-major copy", npix * cp)?;
    let q = LayoutParams {
        inp: ViewParams::of(t),
        total: to_u32(op, "pixel-major copy", total)?,
        channels: c as u32,
        plane_in: to_u32(op, "plane", h * w)?,
        ..bytemuck::Zeroable::zeroed()
    };
    layout_launch(enc, "to_pixel_major", &q, t, &out)?;
    Ok(out)
}

/// A dense `[N, C, H', W']` copy of `t` (`[N, C, H, W]`, any view) with each channel plane
/// zero-padded from H*W to H'*W' elements (see `padded_plane` in mod.rs).
pub(in crate::ops::conv2d) fn pad_planes(
    enc: &mut Encoder,
    op: &str,
    t: &Tensor,
    hw: (usize, usize),
) -> Result<Tensor> {
    let [n, c, h, w] = nchw(op, "padded tensor", t)?;
    let out = enc
        .gpu()
        .zeros(&[n, c, hw.0, hw.1], "conv2d zero-padded planes")?;
    repad(enc, op, &out, t, h * w, false)?;
    Ok(out)
}

/// out[n, c, e] (+)= (e < p_in ? inp[n, c, e] : 0) for e < P_out: copies (or adds) channel
/// planes of p_in elements into planes of P_out elements, where P_out = out's H*W.
pub(in crate::ops::conv2d) fn repad(
    enc: &mut Encoder,
    op: &str,
    out: &Tensor,
    inp: &Tensor,
    p_in: usize,
    accumulate: bool,
) -> Result<()> {
    let [n, c, h, w] = nchw(op, "repad output", out)?;
    let total = n * c * h * w;
    if total == 0 {
        return Ok(());
    }
    let q = LayoutParams {
        inp: ViewParams::of(inp),
        out: ViewParams::of(out),
        total: to_u32(op, "padded copy", total)?,
        channels: c as u32,
        plane_in: to_u32(op, "plane", p_in)?,
        plane_out: to_u32(op, "plane", h * w)?,
        accumulate: accumulate as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    layout_launch(enc, "repad", &q, inp, out)
}
