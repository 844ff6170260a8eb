//! 2-D max pooling, PyTorch `max_pool2d` semantics (floor mode, padding acts as −∞):
//! `y[n,c,oh,ow] = max x[n,c,oh·s−p+ky,ow·s−p+kx]`; backward `d_x += d_y` at each window's
//! argmax — the first maximal element in row-major window order (PyTorch CPU) —
//! recomputed from `x` (forward saves nothing).

use super::avg_pool2d::{
    check_pool, distinct, forward_entry, forward_tw, plane_grid, vec4_rows, PoolShape,
};
use super::ViewParams;
use crate::gpu::{to_u32, Arg, Encoder, Launch, Result, Shader, Tensor};

pub use super::avg_pool2d::{output_size, Pool2dSpec};

pub const SHADER: Shader = shader!("max_pool2d");
const WG: u32 = 64;

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
    segs: u32,
    rows: u32,
    gx: u32,
    planes: u32,
    c: u32,
    neg_inf: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 96);

/// Backward d_x tile `(TH, TW)`: 2 × 8 for small kernels, shrunk while the windows that can
/// meet it, `((TH+K−2)/S + 1) · ((TW+K−2)/S + 1)`, would need more than 1024 loads of x
/// (`K²` each): large kernels get small tiles, keeping the unrolled shader small.
fn backward_tile(spec: Pool2dSpec) -> (u32, u32) {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        ..
    } = spec;
    let windows = |t: usize| (t + k - 2) / s + 1;
    [(2, 8), (2, 4), (1, 4), (1, 2)]
        .into_iter()
        .find(|&(th, tw)| windows(th) * windows(tw) * k * k <= 1024)
        .map_or((1, 1), |(th, tw)| (th as u32, tw as u32))
}

/// Whether `backward4` applies: vec4-aligned rows of x and d_x, a tile aligned to the
/// stride and to 4, and one window row fitting the shader's registers (`nwc <= MAX_WIN`,
/// `K * quads <= MAX_V4`).
fn backward4_fits(x: &Tensor, d_x: &Tensor, w: usize, tile: (u32, u32), spec: Pool2dSpec) -> bool {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        padding: p,
    } = spec;
    let (th, tw) = (tile.0 as usize, tile.1 as usize);
    let l = (k - 1 - p) / s;
    let nwc = l + (tw - 1 + p) / s + 1;
    let shift = (4 - (l * s + p) % 4) % 4;
    let quads = ((nwc - 1) * s + k + shift).div_ceil(4);
    let aligned = tw % 4 == 0 && tw % s == 0 && th % s == 0;
    aligned && vec4_rows(x, w) && vec4_rows(d_x, w) && nwc <= 16 && k * quads <= 64
}

fn params(op: &str, g: &PoolShape, x: &Tensor, y: &Tensor) -> Result<Params> {
    let u = |what: &str, v: usize| to_u32(op, what, v);
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        d_x: ViewParams::of(x),
        h: u("H", g.h)?,
        w: u("W", g.w)?,
        oh: u("OH", g.oh)?,
        ow: u("OW", g.ow)?,
        segs: 0,
        rows: 0,
        gx: 0,
        planes: u("N * C", g.n * g.c)?,
        c: u("C", g.c)?,
        neg_inf: f32::NEG_INFINITY,
        _pad: [0; 2],
    })
}

/// Records one launch of `entry`; sets `p.gx` and derives the grid from `p.rows * p.segs`.
fn launch(
    enc: &mut Encoder,
    op: &str,
    entry: &str,
    mut p: Params,
    (th, tw): (u32, u32),
    spec: Pool2dSpec,
    data: &[&Tensor],
) -> Result<()> {
    let per_plane = p.rows as usize * p.segs as usize;
    let (gx, workgroups) = plane_grid(op, per_plane, p.planes as usize, WG)?;
    p.gx = gx;
    // Every entry point binds its inputs read-only and its one output (last) read-write.
    let (out, inputs) = data.split_last().expect("an output");
    let mut args = vec![Arg::Uniform(bytemuck::bytes_of(&p))];
    args.extend(inputs.iter().map(|t| Arg::Read(t)));
    args.push(Arg::Write(out));
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &[
            ("WG", WG as f64),
            ("K", spec.kernel as f64),
            ("S", spec.stride as f64),
            ("P", spec.padding as f64),
            ("TW", tw as f64),
            ("TH", th as f64),
        ],
        args: &args,
        workgroups,
    })
}

/// `y = max_pool2d(x)` (overwrites `y`). `x` is (N, C, H, W), `y` is (N, C, OH, OW) with
/// `(OH, OW) = output_size(spec, H, W)`; both may be channel-slice views.
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor, spec: Pool2dSpec) -> Result<()> {
    let op = "max_pool2d forward";
    let g = check_pool(op, "y", y, "x", x, spec)?;
    distinct(op, ("y", y), ("x", x))?;
    let tw = forward_tw(op, spec)?;
    let mut p = params(op, &g, x, y)?;
    p.rows = p.oh;
    p.segs = p.ow.div_ceil(tw);
    let entry = forward_entry(x, g.w, tw, spec);
    launch(enc, op, entry, p, (1, tw), spec, &[x, y])
}

/// `d_x += d_y` routed to each window's argmax in `x` (first maximum in row-major window
/// order). `d_x` and `x` are (N, C, H, W), `d_y` is (N, C, OH, OW); views allowed.
pub fn backward(
    enc: &mut Encoder,
    d_x: &Tensor,
    d_y: &Tensor,
    x: &Tensor,
    spec: Pool2dSpec,
) -> Result<()> {
    let op = "max_pool2d backward";
    let g = check_pool(op, "d_y", d_y, "x", x, spec)?;
    crate::gpu::expect_shape(op, "d_x", &d_x.shape, &x.shape)?;
    to_u32(op, "d_x", d_x.storage.numel)?;
    distinct(op, ("d_x", d_x), ("x", x))?;
    distinct(op, ("d_x", d_x), ("d_y", d_y))?;
    let (th, tw) = backward_tile(spec);
    let mut p = params(op, &g, x, d_y)?;
    p.d_x = ViewParams::of(d_x);
    p.rows = p.h.div_ceil(th);
    p.segs = p.w.div_ceil(tw);
    let entry = if backward4_fits(x, d_x, g.w, (th, tw), spec) {
        "backward4"
    } else {
        "backward"
    };
    launch(enc, op, entry, p, (th, tw), spec, &[x, d_y, d_x])
}

/// f64 CPU reference on contiguous NCHW data.
pub mod reference {
    use super::super::avg_pool2d::reference::{for_each_window, out_hw};
    use super::Pool2dSpec;

    /// For every output, the flat input index of its window's first maximum.
    pub fn argmax(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<usize> {
        let [n, c, h, w] = shape;
        let (oh, ow) = out_hw(spec, h, w);
        let mut best: Vec<Option<usize>> = vec![None; n * c * oh * ow];
        for_each_window(shape, spec, |o, i| match best[o] {
            Some(b) if x[i] <= x[b] => {}
            _ => best[o] = Some(i),
        });
        best.into_iter()
            .map(|b| b.expect("every window holds an element"))
            .collect()
    }

    /// `y` of shape (N, C, OH, OW) for `x` of shape `shape` = (N, C, H, W).
    pub fn forward(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
        argmax(x, shape, spec).into_iter().map(|i| x[i]).collect()
    }

    /// `d_x` (zero-initialised accumulator) of shape `shape` = (N, C, H, W).
    pub fn backward(x: &[f64], d_y: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
        let mut d_x = vec![0.0; x.len()];
        for (o, i) in argmax(x, shape, spec).into_iter().enumerate() {
            d_x[i] += d_y[o];
        }
        d_x
    }
}
