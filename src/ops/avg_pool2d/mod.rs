//! 2-D average pooling, PyTorch `avg_pool2d` semantics (floor mode, `count_include_pad =
//! true`): `y[n,c,oh,ow] = (1/k²) Σ x[n,c,oh·s−p+ky,ow·s−p+kx]`; backward (gather form)
//! `d_x += (1/k²) Σ_{windows ∋ (ih,iw)} d_y`. Also home of [`Pool2dSpec`] and
//! [`output_size`], shared with [`max_pool2d`](super::max_pool2d).

use super::{plane_grid, ViewParams};
use crate::gpu::{
    check_distinct, nchw, to_u32, Arg, Bound, Encoder, GpuError, Launch, Limit, Result, Shader,
    ShapeProblem, Tensor,
};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("avg_pool2d");
const WG: u32 = 64;

/// Square pooling window: `kernel × kernel`, moved by `stride`, with `padding` on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Output `(OH, OW)` of a pool over an `h × w` input, floor mode like PyTorch:
/// `OH = (h + 2p − k) / s + 1`. Rejects a zero kernel or stride, `padding > kernel / 2`
/// (PyTorch's rule) and inputs smaller than the window (empty output).
pub fn output_size(spec: Pool2dSpec, h: usize, w: usize) -> Result<(usize, usize)> {
    output_size_of("pool2d", "input", spec, h, w)
}

/// [`output_size`], with the op and the input tensor's name for the error.
fn output_size_of(
    op: &str,
    tensor: &str,
    spec: Pool2dSpec,
    h: usize,
    w: usize,
) -> Result<(usize, usize)> {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        padding: p,
    } = spec;
    let parameter = |name, value, bound| ShapeProblem::Parameter { name, value, bound };
    let problem = if k == 0 {
        parameter("kernel", k, Bound::AtLeast(1))
    } else if s == 0 {
        parameter("stride", s, Bound::AtLeast(1))
    } else if p > k / 2 {
        parameter("padding", p, Bound::AtMost(k / 2))
    } else if h == 0 || w == 0 {
        let shape = vec![h, w];
        ShapeProblem::Empty {
            tensor: tensor.into(),
            shape,
        }
    } else if h + 2 * p < k || w + 2 * p < k {
        ShapeProblem::WindowTooLarge {
            tensor: tensor.into(),
            input: [h, w],
            kernel: [k, k],
            padding: p,
        }
    } else {
        return Ok(((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1));
    };
    Err(GpuError::shape(op, problem))
}

/// Checked geometry of one pooling call.
pub(crate) struct PoolShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolShape {
    /// `[H, W, OH, OW]` as a uniform holds them.
    pub(crate) fn sizes(&self, op: &str) -> Result<[u32; 4]> {
        let u = |what: &str, v: usize| to_u32(op, what, v);
        Ok([
            u("H", self.h)?,
            u("W", self.w)?,
            u("OH", self.oh)?,
            u("OW", self.ow)?,
        ])
    }
}

/// Validates an input-side tensor `x` (N, C, H, W) against an output-side tensor `y`
/// (N, C, OH, OW) for `spec`; the names go into the error messages.
pub(crate) fn check_pool(
    op: &str,
    y_name: &str,
    y: &Tensor,
    x_name: &str,
    x: &Tensor,
    spec: Pool2dSpec,
) -> Result<PoolShape> {
    let [n, c, h, w] = nchw(op, x_name, x)?;
    nchw(op, y_name, y)?;
    let (oh, ow) = output_size_of(op, x_name, spec, h, w)?;
    crate::gpu::expect_shape(op, y_name, &y.shape, &[n, c, oh, ow])?;
    for (name, t) in [(x_name, x), (y_name, y)] {
        to_u32(op, name, t.storage.numel)?;
    }
    Ok(PoolShape { n, c, h, w, oh, ow })
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams, // x (forward) or d_x (backward)
    y: ViewParams, // y (forward) or d_y (backward)
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    segs: u32,
    rows: u32,
    gx: u32,
    planes: u32,
    c: u32,
    inv_area: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 80);

/// Largest row span `(TW − 1)·S + K` the forward kernels keep in registers (`MAX_SPAN`).
pub(crate) const MAX_SPAN: usize = 64;

/// Outputs per invocation for the forward kernels: 8, fewer when the row span would not
/// fit `MAX_SPAN`; a `GpuError::Limit` for kernels wider than `MAX_SPAN`.
pub(crate) fn forward_tw(op: &str, spec: Pool2dSpec) -> Result<u32> {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        ..
    } = spec;
    if k > MAX_SPAN {
        let limit = Limit::KernelSize {
            size: k,
            max: MAX_SPAN,
        };
        return Err(GpuError::limit(op, limit));
    }
    Ok(((MAX_SPAN - k) / s + 1).min(8) as u32)
}

/// True when a view's rows of width `w` all start on a multiple of 4 elements, so the
/// kernels may bind it as `array<vec4<f32>>`.
pub(crate) fn vec4_rows(t: &Tensor, w: usize) -> bool {
    t.offset % 4 == 0 && t.batch_stride % 4 == 0 && w % 4 == 0
}

/// Entry point for a forward pool: `forward4` (x loaded as vec4s) when x's rows are
/// aligned and each TW-output span starts at a fixed offset modulo 4; `forward4_v4` when
/// y's rows are aligned too (y stored as vec4s).
fn forward_entry(x: &Tensor, y: &Tensor, g: &PoolShape, tw: u32, spec: Pool2dSpec) -> &'static str {
    let tw = tw as usize;
    if !vec4_rows(x, g.w) || (tw * spec.stride) % 4 != 0 {
        "forward"
    } else if vec4_rows(y, g.ow) && tw % 4 == 0 {
        "forward4_v4"
    } else {
        "forward4"
    }
}

/// The override constants of a pool kernel with `wg` invocations per workgroup and `tw`
/// elements per invocation along a row: those and the window's K, S and P.
pub(crate) fn window_constants(wg: u32, spec: Pool2dSpec, tw: u32) -> [(&'static str, f64); 5] {
    [
        ("WG", wg as f64),
        ("K", spec.kernel as f64),
        ("S", spec.stride as f64),
        ("P", spec.padding as f64),
        ("TW", tw as f64),
    ]
}

/// An entry point and what its pipeline is built with: the window and the elements per
/// invocation along a row.
struct Kernel {
    entry: &'static str,
    spec: Pool2dSpec,
    tw: u32,
}

/// Records one launch of `kernel` reading `input` and writing `output`; sets `p.gx` and
/// derives the grid from `p.rows * p.segs`.
fn launch(
    enc: &mut Encoder,
    op: &str,
    kernel: Kernel,
    mut p: Params,
    output: &Tensor,
    input: &Tensor,
) -> Result<()> {
    let Kernel { entry, spec, tw } = kernel;
    let per_plane = p.rows as usize * p.segs as usize;
    let (gx, workgroups) = plane_grid(op, per_plane, p.planes as usize, WG)?;
    p.gx = gx;
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &window_constants(WG, spec, tw),
        args: &Arg::bindings(&p, &[input], &[output]),
        workgroups,
    })
}

fn params(op: &str, g: &PoolShape, x: &Tensor, y: &Tensor, spec: Pool2dSpec) -> Result<Params> {
    let [h, w, oh, ow] = g.sizes(op)?;
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        h,
        w,
        oh,
        ow,
        segs: 0,
        rows: 0,
        gx: 0,
        planes: to_u32(op, "N * C", g.n * g.c)?,
        c: to_u32(op, "C", g.c)?,
        inv_area: 1.0 / (spec.kernel * spec.kernel) as f32,
        _pad: [0; 2],
    })
}

/// d_x elements per backward invocation: a multiple of the stride (so non-overlapping
/// windows align with it) and of 4 (vec4 access) when that is at most 16, else 8.
fn backward_tw(stride: usize) -> u32 {
    let step = (1..=16)
        .find(|m| m % stride == 0 && m % 4 == 0)
        .unwrap_or(8);
    (step * 8usize.div_ceil(step)) as u32
}

/// `y = avg_pool2d(x)` (overwrites `y`). `x` is (N, C, H, W), `y` is (N, C, OH, OW) with
/// `(OH, OW) = output_size(spec, H, W)`; both may be channel-slice views.
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor, spec: Pool2dSpec) -> Result<()> {
    let op = "avg_pool2d forward";
    let g = check_pool(op, "y", y, "x", x, spec)?;
    check_distinct(op, &[("y", y)], &[("x", x)])?;
    let tw = forward_tw(op, spec)?;
    let mut p = params(op, &g, x, y, spec)?;
    p.rows = p.oh;
    p.segs = p.ow.div_ceil(tw);
    let entry = forward_entry(x, y, &g, tw, spec);
    launch(enc, op, Kernel { entry, spec, tw }, p, y, x)
}

/// `d_x += avg_pool2d_backward(d_y)`: every d_x element gathers `d_y / k²` from the
/// windows containing it. `d_x` is (N, C, H, W), `d_y` is (N, C, OH, OW); views allowed.
pub fn backward(enc: &mut Encoder, d_x: &Tensor, d_y: &Tensor, spec: Pool2dSpec) -> Result<()> {
    let op = "avg_pool2d backward";
    let g = check_pool(op, "d_y", d_y, "d_x", d_x, spec)?;
    check_distinct(op, &[("d_x", d_x)], &[("d_y", d_y)])?;
    let tw = backward_tw(spec.stride);
    let mut p = params(op, &g, d_x, d_y, spec)?;
    p.rows = p.h;
    p.segs = p.w.div_ceil(tw);
    let vec4 = vec4_rows(d_x, g.w) && tw % 4 == 0;
    let entry = if vec4 { "backward4" } else { "backward" };
    launch(enc, op, Kernel { entry, spec, tw }, p, d_x, d_y)
}
