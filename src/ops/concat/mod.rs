//! Channel concatenation of NCHW tensors (dim 1) and the strided [`copy`] it is built on.
//! Forward copies each input into its channel slice of `y`; backward adds each channel
//! slice of `d_y` into its `d_input`. In a dense block most concatenation is avoided
//! altogether by writing straight into channel-slice views; `copy` covers the rest.

use super::{grid_1d_or_none, ViewParams};
use crate::gpu::{
    check_distinct, nchw, to_u32, Arg, Encoder, GpuError, Launch, Result, Shader, ShapeProblem,
    Tensor,
};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("concat");
const WG: u32 = 64;
/// Elements (or vec4s) per invocation.
const V: u32 = 4;
/// Plain copies use one buffer-to-buffer transfer per batch item when there are at most
/// this many items ...
const TRANSFER_MAX_RUNS: usize = 256;
/// ... or when each item holds at least this many elements; otherwise one kernel launch.
const TRANSFER_MIN_RUN: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    dst: ViewParams,
    src: ViewParams,
    n: u32,
    gx: u32,
    accumulate: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 48);

/// Strided copy between two views of one shape: `dst = src`, or `dst += src` when
/// `accumulate`. (Writing a tensor into a channel slice of a larger preallocated buffer.)
pub fn copy(enc: &mut Encoder, dst: &Tensor, src: &Tensor, accumulate: bool) -> Result<()> {
    copy_op("concat copy", enc, dst, src, accumulate)
}

fn copy_op(op: &str, enc: &mut Encoder, dst: &Tensor, src: &Tensor, acc: bool) -> Result<()> {
    crate::gpu::expect_shape(op, "dst", &dst.shape, &src.shape)?;
    check_distinct(op, &[("dst", dst)], &[("src", src)])?;
    to_u32(op, "dst", dst.storage.numel)?;
    to_u32(op, "src", src.storage.numel)?;
    let (mut dv, mut sv) = (ViewParams::of(dst), ViewParams::of(src));
    let mut n = dst.shape.first().copied().unwrap_or(1);
    if dst.shape.is_empty() || (dst.is_contiguous() && src.is_contiguous()) {
        // One dense run each: copy it as a single item (no per-item workgroup rounding).
        n = 1;
        let numel = dst.numel() as u32;
        dv.item = numel;
        sv.item = numel;
    }
    if dst.numel() == 0 {
        return Ok(());
    }
    if !acc && (n <= TRANSFER_MAX_RUNS || dv.item as usize >= TRANSFER_MIN_RUN) {
        // A plain copy is one transfer per batch item: far faster than a kernel on lavapipe
        // (a memcpy instead of per-lane gathers and scatters).
        for b in 0..n {
            let s = sv.offset as usize + b * sv.batch_stride as usize;
            let d = dv.offset as usize + b * dv.batch_stride as usize;
            enc.copy(src, s, dst, d, dv.item as usize);
        }
        return Ok(());
    }
    // vec4 loads and stores when every offset and stride is a multiple of 4.
    let vec4 = [
        dv.offset,
        dv.batch_stride,
        dv.item,
        sv.offset,
        sv.batch_stride,
    ]
    .iter()
    .all(|v| v % 4 == 0);
    let (entry, unit) = if vec4 { ("copy4", 4) } else { ("copy", 1) };
    for v in [&mut dv, &mut sv] {
        v.offset /= unit;
        v.batch_stride /= unit;
        v.item /= unit;
    }
    let gx = (sv.item as usize).div_ceil((WG * V) as usize);
    let p = Params {
        dst: dv,
        src: sv,
        n: to_u32(op, "N", n)?,
        gx: gx as u32,
        accumulate: acc as u32,
        _pad: 0,
    };
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &[("WG", WG as f64), ("V", V as f64)],
        args: &Arg::bindings(&p, &[src], &[dst]),
        workgroups: grid_1d_or_none(to_u32(op, "workgroups", gx * n)?),
    })
}

/// Checks that `parts` (N, C_i, H, W) concatenate along channels to `whole` (N, ΣC_i, H, W).
fn check(
    op: &str,
    whole_name: &str,
    whole: &Tensor,
    part_name: &str,
    parts: &[&Tensor],
) -> Result<()> {
    let [n, c, h, w] = nchw(op, whole_name, whole)?;
    if parts.is_empty() {
        let problem = ShapeProblem::Empty {
            tensor: part_name.into(),
            shape: vec![0],
        };
        return Err(GpuError::shape(op, problem));
    }
    let mut total = 0;
    for (i, t) in parts.iter().enumerate() {
        let what = format!("{part_name}[{i}]");
        let [tn, tc, th, tw] = nchw(op, &what, t)?;
        if (tn, th, tw) != (n, h, w) {
            let problem = ShapeProblem::Mismatch {
                tensor: what,
                shape: t.shape.clone(),
                dim: "N, H or W",
                other: whole_name.into(),
                other_shape: whole.shape.clone(),
            };
            return Err(GpuError::shape(op, problem));
        }
        total += tc;
    }
    if total != c {
        let problem = ShapeProblem::ChannelSum {
            parts: part_name.into(),
            total,
            tensor: whole_name.into(),
            channels: c,
        };
        return Err(GpuError::shape(op, problem));
    }
    Ok(())
}

/// `y = cat(inputs, dim = 1)`: one copy launch per input into its channel slice of `y`.
/// All tensors are NCHW with equal N, H, W and may be channel-slice views.
pub fn forward(enc: &mut Encoder, y: &Tensor, inputs: &[&Tensor]) -> Result<()> {
    let op = "concat forward";
    check(op, "y", y, "inputs", inputs)?;
    let mut c0 = 0;
    for x in inputs {
        let c = x.shape[1];
        copy_op(op, enc, &y.channels(c0, c)?, x, false)?;
        c0 += c;
    }
    Ok(())
}

/// `d_inputs[i] += d_y[:, c_i .. c_i + C_i]`, one launch per input.
pub fn backward(enc: &mut Encoder, d_inputs: &[&Tensor], d_y: &Tensor) -> Result<()> {
    let op = "concat backward";
    check(op, "d_y", d_y, "d_inputs", d_inputs)?;
    let mut c0 = 0;
    for d_x in d_inputs {
        let c = d_x.shape[1];
        copy_op(op, enc, d_x, &d_y.channels(c0, c)?, true)?;
        c0 += c;
    }
    Ok(())
}
