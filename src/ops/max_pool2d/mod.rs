//! 2-D max pooling, PyTorch `max_pool2d` semantics (floor mode, padding acts as −∞):
//! `y[n,c,oh,ow] = max x[n,c,oh·s−p+ky,ow·s−p+kx]`. Forward also saves each window's argmax
//! — the first maximal element in row-major window order (PyTorch CPU), as `ky·k + kx` in
//! one byte (layout: [`indices_shape`]) — and backward routes `d_x += d_y` through the saved
//! indices without reading `x`.

use super::avg_pool2d::{check_pool, vec4_rows, window_constants, PoolShape};
use super::{grid_1d_or_none, ViewParams};
use crate::gpu::{
    check_distinct, to_u32, Arg, Encoder, Gpu, GpuError, Launch, Limit, Result, Shader,
    ShapeProblem, Tensor,
};

pub mod reference;
mod tape;

pub use super::avg_pool2d::{output_size, Pool2dSpec};

pub const SHADER: Shader = shader!("max_pool2d");
const WG: u32 = 64;

/// Largest kernel: a window position `ky·k + kx` must fit a byte.
pub const MAX_KERNEL: usize = 16;
/// Largest stride: the scalar forward keeps a span of `3·s + k <= 64` values (`MAX_SPAN`).
pub const MAX_STRIDE: usize = 16;

// Register budgets of the shader (`MAX_SPAN`, `MAX_OUT`, `MAX_Q`).
const MAX_SPAN: usize = 64;
const MAX_OUT: usize = 64;
const MAX_Q: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams,
    y: ViewParams, // y (forward) or d_y (backward)
    d_x: ViewParams,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    idx_row: u32,
    rows: u32,
    segs: u32,
    chunks: u32,
    tiles: u32,
    planes: u32,
    c: u32,
    neg_inf: f32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 96);

/// Shape of the saved argmax tensor for a pool output `y` of shape (N, C, OH, OW):
/// (N, C, OH, ⌈OW/4⌉) u32 words (stored in a 4-byte-element [`Tensor`]). Output
/// `(n, c, oh, ow)`'s window position `ky·k + kx` is byte `ow % 4` (bits `8·(ow%4)..`) of word
/// `(n, c, oh, ow / 4)`; each row is padded to whole words with zero bytes. A word covers the
/// same four outputs as one `vec4` of a 4-aligned y row.
pub fn indices_shape(y_shape: [usize; 4]) -> [usize; 4] {
    let [n, c, oh, ow] = y_shape;
    [n, c, oh, ow.div_ceil(4)]
}

/// Allocates a zeroed index tensor for a pool output of shape `y_shape`.
pub fn alloc_indices(gpu: &Gpu, y_shape: [usize; 4], label: &str) -> Result<Tensor> {
    gpu.zeros(&indices_shape(y_shape), label)
}

/// Decodes a downloaded index tensor (the f32 bit patterns of its words) into one window
/// position per output of shape `y_shape` (N, C, OH, OW).
pub fn unpack_indices(words: &[f32], y_shape: [usize; 4]) -> Vec<u8> {
    let [n, c, oh, ow] = y_shape;
    let row = ow.div_ceil(4);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for r in 0..n * c * oh {
        for o in 0..ow {
            out.push((words[r * row + o / 4].to_bits() >> (8 * (o % 4))) as u8);
        }
    }
    out
}

/// Validates the kernel and stride against what the kernels support.
fn check_spec(op: &str, spec: Pool2dSpec) -> Result<()> {
    // The argmax within a window is stored in a byte.
    if spec.kernel > MAX_KERNEL {
        let limit = Limit::KernelSize {
            size: spec.kernel,
            max: MAX_KERNEL,
        };
        return Err(GpuError::limit(op, limit));
    }
    if spec.stride > MAX_STRIDE {
        let limit = Limit::Stride {
            size: spec.stride,
            max: MAX_STRIDE,
        };
        return Err(GpuError::limit(op, limit));
    }
    Ok(())
}

/// Validates an index tensor: the shape [`indices_shape`] of `y`, a whole contiguous
/// buffer of its own, distinct from `others`.
fn check_indices(op: &str, idx: &Tensor, g: &PoolShape, others: &[(&str, &Tensor)]) -> Result<()> {
    crate::gpu::expect_shape(
        op,
        "indices",
        &idx.shape,
        &indices_shape([g.n, g.c, g.oh, g.ow]),
    )?;
    if idx.offset != 0 || !idx.is_contiguous() {
        let problem = ShapeProblem::NotWhole {
            tensor: "indices".into(),
            shape: idx.shape.clone(),
        };
        return Err(GpuError::shape(op, problem));
    }
    to_u32(op, "indices", idx.storage.numel)?;
    check_distinct(op, &[("indices", idx)], others)?;
    Ok(())
}

/// Outputs per invocation of the scalar forward: 8, or 4 when the span `7·s + k` would
/// not fit `MAX_SPAN` (`3·s + k <= 64` always holds within the limits). A multiple of 4, so
/// every invocation writes whole index words.
fn forward_tw(spec: Pool2dSpec) -> u32 {
    if 7 * spec.stride + spec.kernel <= MAX_SPAN {
        8
    } else {
        4
    }
}

/// forward4's strip width TW (outputs, a multiple of 4). Wider strips re-read less of x
/// but their loops no longer unroll on llvmpipe (16 measured 6x slower).
const FORWARD4_TW: usize = 8;

/// Whether `forward4` applies: 4-aligned rows of x and y, and the span quads and pending
/// output rows fitting the shader's registers.
fn forward4_fits(x: &Tensor, y: &Tensor, g: &PoolShape, spec: Pool2dSpec) -> bool {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        padding: p,
    } = spec;
    let tw = FORWARD4_TW;
    let shift = (4 - p % 4) % 4;
    let quads = ((tw - 1) * s + k + shift).div_ceil(4);
    let pending = (k - 1) / s + 1;
    vec4_rows(x, g.w) && vec4_rows(y, g.ow) && quads <= MAX_Q && pending * tw <= MAX_OUT
}

/// Rows of a walk (output rows for forward4, steps of S d_x rows for backward4) per
/// invocation: all of them, split in segments of at most 32 when longer (each segment
/// re-reads the rows it shares with the one above).
fn walk_rows(rows: usize) -> usize {
    rows.div_ceil(rows.div_ceil(32))
}

/// The scalar backward's d_x tile `(TH, TW)`: 2 × 8, shrunk while the windows that can meet
/// it, `((TH+K−2)/S + 1) · ((TW+K−2)/S + 1)`, exceed 64 (each adds a compare-select per
/// tile element): large kernels get small tiles, keeping the unrolled shader small.
fn backward_tile(spec: Pool2dSpec) -> (u32, u32) {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        ..
    } = spec;
    let windows = |t: usize| (t + k - 2) / s + 1;
    [(2, 8), (2, 4), (1, 4), (1, 2)]
        .into_iter()
        .find(|&(th, tw)| windows(th) * windows(tw) <= 64)
        .map_or((1, 1), |(th, tw)| (th as u32, tw as u32))
}

/// backward4's strip width TW: the largest multiple of 4·S (so that the windows of every
/// strip start on a quad) up to 16 (the shader's gather is written out for 4 quads of
/// d_x); 0 for strides over 4.
fn backward4_tw(stride: usize) -> usize {
    16 / (4 * stride) * (4 * stride)
}

/// Whether `backward4` applies: 4-aligned rows of d_x and d_y, a strip width, and at most
/// 4 window rows of `MAX_Q` quads per step.
fn backward4_fits(d_x: &Tensor, d_y: &Tensor, g: &PoolShape, spec: Pool2dSpec) -> bool {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        padding: p,
    } = spec;
    let tw = backward4_tw(s);
    if tw == 0 {
        return false;
    }
    let lead = (k - 1 - p) / s;
    let quads = lead.div_ceil(4) + ((tw - 1 + p) / s + 1).div_ceil(4);
    let rows = lead + p.div_ceil(s) + 1;
    vec4_rows(d_x, g.w) && vec4_rows(d_y, g.ow) && quads <= MAX_Q && rows <= 4
}

fn params(op: &str, g: &PoolShape, x: &Tensor, y: &Tensor) -> Result<Params> {
    let [h, w, oh, ow] = g.sizes(op)?;
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        d_x: ViewParams::of(x),
        h,
        w,
        oh,
        ow,
        idx_row: to_u32(op, "OW / 4", g.ow.div_ceil(4))?,
        rows: 0,
        segs: 0,
        chunks: 1,
        tiles: 0,
        planes: to_u32(op, "N * C", g.n * g.c)?,
        c: to_u32(op, "C", g.c)?,
        neg_inf: f32::NEG_INFINITY,
    })
}

/// An entry point and what its pipeline is built with: the window and the (rows,
/// columns) of elements per invocation.
struct Kernel {
    entry: &'static str,
    spec: Pool2dSpec,
    tile: (u32, u32),
}

/// Records one launch of `kernel` over `rows × segs` tiles per plane (for the walking
/// kernels: `rows` segments of `chunks` rows, `segs` strips) with `reads` bound read-only
/// and `writes` read-write, in that order.
fn launch(
    enc: &mut Encoder,
    op: &str,
    kernel: Kernel,
    mut p: Params,
    (rows, segs, chunks): (usize, usize, usize),
    reads: &[&Tensor],
    writes: &[&Tensor],
) -> Result<()> {
    let Kernel {
        entry,
        spec,
        tile: (th, tw),
    } = kernel;
    p.rows = to_u32(op, "tile rows", rows)?;
    p.segs = to_u32(op, "segments", segs)?;
    p.chunks = to_u32(op, "chunks", chunks)?;
    p.tiles = to_u32(op, "tiles per plane", rows * segs)?;
    let total = p.planes as usize * rows * segs;
    let workgroups = to_u32(op, "workgroups", total.div_ceil(WG as usize))?;
    to_u32(op, "invocations", workgroups as usize * WG as usize)?;
    let mut constants = window_constants(WG, spec, tw).to_vec();
    constants.push(("TH", th as f64));
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &constants,
        args: &Arg::bindings(&p, reads, writes),
        workgroups: grid_1d_or_none(workgroups),
    })
}

/// `y = max_pool2d(x)` (overwrites `y`) and, when `indices` is given, each output's window
/// argmax for [`backward`] (overwrites `indices`, shape [`indices_shape`]`(y)`). `x` is
/// (N, C, H, W), `y` is (N, C, OH, OW) with `(OH, OW) = output_size(spec, H, W)`; both may
/// be channel-slice views. Without `indices` (inference) nothing but y is written.
pub fn forward(
    enc: &mut Encoder,
    y: &Tensor,
    indices: Option<&Tensor>,
    x: &Tensor,
    spec: Pool2dSpec,
) -> Result<()> {
    let op = "max_pool2d forward";
    check_spec(op, spec)?;
    let g = check_pool(op, "y", y, "x", x, spec)?;
    check_distinct(op, &[("y", y)], &[("x", x)])?;
    if let Some(idx) = indices {
        check_indices(op, idx, &g, &[("x", x), ("y", y)])?;
    }
    let p = params(op, &g, x, y)?;
    let (entry, grid, tile) = if forward4_fits(x, y, &g, spec) {
        let tw = FORWARD4_TW;
        let chunks = walk_rows(g.oh);
        let grid = (g.oh.div_ceil(chunks), g.ow.div_ceil(tw), chunks);
        (("forward4", "forward4_inference"), grid, (1, tw as u32))
    } else {
        let tw = forward_tw(spec);
        let grid = (g.oh, g.ow.div_ceil(tw as usize), 1);
        (("forward", "forward_inference"), grid, (1, tw))
    };
    let kernel = |entry| Kernel { entry, spec, tile };
    match indices {
        Some(idx) => launch(enc, op, kernel(entry.0), p, grid, &[x], &[y, idx]),
        None => launch(enc, op, kernel(entry.1), p, grid, &[x], &[y]),
    }
}

/// `d_x += d_y` routed to each window's saved argmax (`indices` from [`forward`]). `d_x` is
/// (N, C, H, W), `d_y` is (N, C, OH, OW); both may be channel-slice views.
pub fn backward(
    enc: &mut Encoder,
    d_x: &Tensor,
    d_y: &Tensor,
    indices: &Tensor,
    spec: Pool2dSpec,
) -> Result<()> {
    let op = "max_pool2d backward";
    check_spec(op, spec)?;
    let g = check_pool(op, "d_y", d_y, "d_x", d_x, spec)?;
    check_distinct(op, &[("d_x", d_x)], &[("d_y", d_y)])?;
    check_indices(op, indices, &g, &[("d_x", d_x), ("d_y", d_y)])?;
    let mut p = params(op, &g, d_x, d_y)?;
    p.d_x = ViewParams::of(d_x);
    let (entry, grid, tile) = if backward4_fits(d_x, d_y, &g, spec) {
        let tw = backward4_tw(spec.stride);
        let steps = g.h.div_ceil(spec.stride);
        let chunks = walk_rows(steps);
        let grid = (steps.div_ceil(chunks), g.w.div_ceil(tw), chunks);
        ("backward4", grid, (1, tw as u32))
    } else {
        let (th, tw) = backward_tile(spec);
        let grid = (g.h.div_ceil(th as usize), g.w.div_ceil(tw as usize), 1);
        ("backward", grid, (th, tw))
    };
    let kernel = Kernel { entry, spec, tile };
    launch(enc, op, kernel, p, grid, &[d_y, indices], &[d_x])
}
