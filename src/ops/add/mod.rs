//! Element-wise add (the residual sum), with an optional fused ReLU:
//! `y = max(a + b, 0)`; backward `g = d_y * [y > 0]`, `d_a += g`, `d_b += g`.
//!
//! `accumulate_forward` adds in place (`y = max(y + b, 0)`): a batch norm writes y and
//! this adds the shortcut, so the end of a residual block (BN + add + ReLU) needs no
//! buffer beyond its output ([`Tape::batch_norm_add_relu`](crate::tape::Tape::batch_norm_add_relu)).

use super::{groups, ViewParams};
use crate::gpu::Tensor;
use crate::gpu::{check_distinct, expect_shape, to_u32, Arg, Encoder, Gpu, Launch, Result, Shader};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("add");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// a (forward) or d_a (backward).
    a: ViewParams,
    /// b (forward, accumulate) or d_b (backward).
    b: ViewParams,
    y: ViewParams,
    d_y: ViewParams,
    numel: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 80);

/// Checks that every tensor has `shape` and that outputs share no buffer with inputs.
fn params(op: &str, shape: &[usize], tensors: [(&str, Option<&Tensor>); 4]) -> Result<Params> {
    for (what, t) in tensors {
        if let Some(t) = t {
            expect_shape(op, what, &t.shape, shape)?;
        }
    }
    let view = |t: Option<&Tensor>| t.map(ViewParams::of).unwrap_or_default();
    Ok(Params {
        a: view(tensors[0].1),
        b: view(tensors[1].1),
        y: view(tensors[2].1),
        d_y: view(tensors[3].1),
        numel: to_u32(op, "numel", shape.iter().product())?,
        _pad: [0; 3],
    })
}

/// [`super::vectorise`] on this op's uniform.
fn vectorise(p: &mut Params, tensors: &[&Tensor]) -> &'static str {
    super::vectorise(
        &mut [&mut p.a, &mut p.b, &mut p.y, &mut p.d_y],
        &mut p.numel,
        tensors,
    )
}

/// Records `entry` (with the ReLU when `relu`) over `p.numel` invocations: the uniform `p`,
/// then the tensors it reads and those it writes.
fn launch(
    enc: &mut Encoder,
    entry: &str,
    relu: bool,
    p: &Params,
    reads: &[&Tensor],
    writes: &[&Tensor],
) -> Result<()> {
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &[("WG", WG as f64), ("RELU", if relu { 1.0 } else { 0.0 })],
        args: &Arg::bindings(p, reads, writes),
        workgroups: Gpu::grid_1d(groups(p.numel as usize, WG)),
    })
}

/// `y = a + b` (then `max(y, 0)` when `relu`). Overwrites y; all three of one shape.
pub fn forward(enc: &mut Encoder, y: &Tensor, a: &Tensor, b: &Tensor, relu: bool) -> Result<()> {
    let op = "add forward";
    let mut p = params(
        op,
        &y.shape,
        [("a", Some(a)), ("b", Some(b)), ("y", Some(y)), ("", None)],
    )?;
    check_distinct(op, &[("y", y)], &[("a", a), ("b", b)])?;
    let entry = format!("forward{}", vectorise(&mut p, &[a, b, y]));
    launch(enc, &entry, relu, &p, &[a, b], &[y])
}

/// `y = y + b` in place (then `max(y, 0)` when `relu`).
pub fn accumulate_forward(enc: &mut Encoder, y: &Tensor, b: &Tensor, relu: bool) -> Result<()> {
    let op = "add accumulate_forward";
    let mut p = params(
        op,
        &y.shape,
        [("", None), ("b", Some(b)), ("y", Some(y)), ("", None)],
    )?;
    check_distinct(op, &[("y", y)], &[("b", b)])?;
    let entry = format!("accumulate_forward{}", vectorise(&mut p, &[b, y]));
    launch(enc, &entry, relu, &p, &[b], &[y])
}

/// `g = d_y * [y > 0 if relu]`; `d_a += g`, `d_b += g`. `y` is the forward's output (its
/// sign is the ReLU's mask); d_a and d_b may be the same tensor only if that is wanted
/// twice (x + x).
pub fn backward(
    enc: &mut Encoder,
    d_a: &Tensor,
    d_b: &Tensor,
    y: &Tensor,
    d_y: &Tensor,
    relu: bool,
) -> Result<()> {
    let op = "add backward";
    let shape = &d_y.shape;
    let mut p = params(
        op,
        shape,
        [
            ("d_a", Some(d_a)),
            ("d_b", Some(d_b)),
            ("y", Some(y)),
            ("d_y", Some(d_y)),
        ],
    )?;
    let read = [("y", y), ("d_y", d_y)];
    check_distinct(op, &[("d_a", d_a)], &read)?;
    check_distinct(op, &[("d_b", d_b)], &read)?;
    let entry = format!("backward{}", vectorise(&mut p, &[d_a, d_b, y, d_y]));
    launch(enc, &entry, relu, &p, &[y, d_y], &[d_a, d_b])
}
