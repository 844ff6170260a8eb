//! 2-D convolution (groups 1, dilation 1, zero padding), NCHW activations, OIHW weights:
//! `y = conv(x', w) + b`; backward `d_x += conv_transpose(d_y, w)`,
//! `d_w += sum d_y * x'`, `d_b += sum d_y`. `x'` is `x`, or `max(scale * x + shift, 0)` per
//! input channel when a [`BnReluPrologue`] is given (memory-efficient dense layers).
//!
//! The dispatch layout, the subgroup variants and the weight-gradient reduction are described
//! in `docs/kernels.md` (section conv2d).

mod launch;
mod plan;
pub mod reference;

pub use launch::GemmTile;
pub use plan::{
    force, last_kernel, not_applicable, parse_forced, plan, ConvKernel, ConvPass, ConvShape,
    Forced, FORCE_ENV,
};

use super::batch_norm::{self, BatchNormOp, BnConfig};
use super::ViewParams;
use crate::gpu::{expect_shape, nchw, to_u32, Arg, Encoder, Gpu, GpuError, Launch, Result};
use crate::gpu::{Shader, Tensor};
use crate::tape::{output_grad, Backward, RunningStats, Tape, Var};

/// The register-tiled kernels (`shaders/conv2d/`: common, one file per pass, layout) with
/// the plain forms of their workgroup-uniform loads.
pub const SHADER: Shader = shader!(
    "conv2d" = [
        "conv2d/common",
        "conv2d/forward",
        "conv2d/backward_data",
        "conv2d/backward_weight",
        "conv2d/layout",
        "conv2d/uniform_loads"
    ]
);
/// The same kernels plus the subgroup variants of the fast paths (adapters with subgroups of at
/// least 8 invocations, see [`Encoder::subgroups`]).
pub const SUBGROUP_SHADER: Shader = shader!(
    "conv2d_subgroup" = [
        "conv2d/common",
        "conv2d/forward",
        "conv2d/backward_data",
        "conv2d/backward_weight",
        "conv2d/layout",
        "conv2d/subgroup"
    ]
);

/// Invocations per workgroup.
const WG: u32 = 64;

/// Register tile of one invocation: `ch` channels on the workgroup-uniform axis times `px`
/// elements on the per-lane axis. General `backward_data` / `backward_weight_partial`: `ch`
/// at most 16, `px` (pixels / weight columns) at most 8. The blocked kernels (`conv1x1`,
/// `conv3x3`, `forward_tiled`, `backward_weight_strided`): `ch` in
/// {4, 8, 12, 16}, `px` = blocks of 4 per lane in {1, 2}. `backward_weight_rows`: `ch` in
/// {4, 8, 12, 16}, `px` = kernel rows in {1, 2}.
#[derive(Clone, Copy, Debug)]
struct Tile {
    ch: u32,
    px: u32,
}

/// `forward_tiled` (the general forward): 16 output channels x 2 groups of 4 pixels.
const FORWARD_TILED: Tile = Tile { ch: 16, px: 2 };
/// `backward_data` (general): 8 input channels x 2 pixels.
const GENERAL_BWD_DATA: Tile = Tile { ch: 8, px: 2 };
/// `backward_weight_partial` (general): 8 output channels x 2 weight columns.
const GENERAL_BWD_WEIGHT: Tile = Tile { ch: 8, px: 2 };
/// `conv1x1` and `conv3x3`: 16 channels x 2 groups of 4 pixels.
const CONV1X1: Tile = Tile { ch: 16, px: 2 };
const CONV3X3: Tile = Tile { ch: 16, px: 2 };
/// `backward_weight_dot` (1x1): 16 output channels x 8 input channels per lane.
const BWD_WEIGHT_DOT: Tile = Tile { ch: 16, px: 1 };
/// `backward_weight_strided`: 16 output channels x 1 block of 4 weight columns, 16 lanes
/// (the 7x7 stem has only 147 columns: small workgroups leave fewer lanes idle).
const BWD_WEIGHT_STRIDED: Tile = Tile { ch: 16, px: 1 };
const BWD_WEIGHT_STRIDED_WG: u32 = 16;
/// `backward_weight_rows` (3x3): 16 output channels x 2 kernel rows x 3 taps.
const BWD_WEIGHT_ROWS: Tile = Tile { ch: 16, px: 2 };

/// backward_weight: split the pixel reduction into chunks until about this many
/// workgroups run, but keep every chunk at least `MIN_CHUNK` pixels long.
const TARGET_WORKGROUPS: u32 = 64;
const MIN_CHUNK: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub stride: usize,
    pub padding: usize,
}

/// Optional on-the-fly input transform ("prologue") used by memory-efficient dense layers:
/// the conv reads `x' = max(scale[c] * x + shift[c], 0)` instead of x, for in-bounds pixels
/// only (zero padding stays exactly 0). scale, shift: `[Cin]` tensors.
#[derive(Clone, Copy)]
pub struct BnReluPrologue<'a> {
    pub scale: &'a Tensor,
    pub shift: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// The activation summed over: x (forward, backward_weight) or d_y (backward_data).
    inp: ViewParams,
    /// y (forward), d_x (backward_data) or d_y (backward_weight).
    out: ViewParams,
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    w_off: u32,
    b_off: u32,
    sc_off: u32,
    sh_off: u32,
    chunk_len: u32,
    chunks: u32,
    part_stride: u32,
    total: u32,
    out_c: u32,
    red_c: u32,
    w_out_stride: u32,
    w_red_stride: u32,
    flip: u32,
    accumulate: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 144);

/// Output height and width of a convolution; a typed error if the kernel does not fit
/// the padded input or the stride is 0.
pub fn output_size(
    spec: Conv2dSpec,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
) -> Result<(usize, usize)> {
    if spec.stride == 0 {
        return Err(GpuError::Shape("conv2d: stride must be at least 1".into()));
    }
    if kh == 0 || kw == 0 {
        return Err(GpuError::Shape(format!("conv2d: empty kernel {kh}x{kw}")));
    }
    let (ph, pw) = (h + 2 * spec.padding, w + 2 * spec.padding);
    if kh > ph || kw > pw {
        return Err(GpuError::Shape(format!(
            "conv2d: kernel {kh}x{kw} is larger than the padded input {ph}x{pw} \
             ({h}x{w} with padding {})",
            spec.padding
        )));
    }
    Ok(((ph - kh) / spec.stride + 1, (pw - kw) / spec.stride + 1))
}

/// Checked geometry of one convolution.
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
}

/// A parameter-like tensor (weight, bias, prologue vectors): exact shape, one dense run.
fn dense(op: &str, what: &str, t: &Tensor, want: &[usize]) -> Result<u32> {
    expect_shape(op, what, &t.shape, want)?;
    if !t.is_contiguous() {
        return Err(GpuError::Shape(format!(
            "{op}: {what} ({}) must be contiguous",
            t.label()
        )));
    }
    to_u32(op, what, t.offset + t.numel())?;
    Ok(t.offset as u32)
}

fn not_aliased(op: &str, out: (&str, &Tensor), inputs: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in inputs {
        if out.1.same_storage(t) {
            return Err(GpuError::Shape(format!(
                "{op}: {} must not share a buffer with {name} ({})",
                out.0,
                t.label()
            )));
        }
    }
    Ok(())
}

/// Validates x (or d_x), the weight, y (or d_y) and returns the geometry.
fn geometry(
    op: &str,
    x_name: &str,
    x: &Tensor,
    weight: (&str, &Tensor),
    y_name: &str,
    y: &Tensor,
    spec: Conv2dSpec,
) -> Result<Geom> {
    let [n, cin, h, w] = nchw(op, x_name, x)?;
    let [cout, wcin, kh, kw] = nchw(op, weight.0, weight.1)?;
    if wcin != cin {
        return Err(GpuError::Shape(format!(
            "{op}: {} {:?} expects {wcin} input channels but {x_name} {:?} has {cin}",
            weight.0, weight.1.shape, x.shape
        )));
    }
    let (oh, ow) = output_size(spec, h, w, kh, kw)
        .map_err(|e| GpuError::Shape(format!("{op}: {x_name} {:?}: {e}", x.shape)))?;
    expect_shape(op, y_name, &y.shape, &[n, cout, oh, ow])?;
    for (name, t) in [(x_name, x), (y_name, y)] {
        to_u32(op, name, t.offset + t.batch_stride * n.max(1))?;
    }
    to_u32(op, "N*OH*OW", n * oh * ow)?;
    to_u32(op, "N*H*W", n * h * w)?;
    to_u32(op, "padding", spec.padding)?;
    to_u32(op, "stride", spec.stride)?;
    Ok(Geom {
        n,
        cin,
        h,
        w,
        cout,
        oh,
        ow,
        kh,
        kw,
    })
}

fn params(g: &Geom, inp: &Tensor, out: &Tensor, spec: Conv2dSpec) -> Params {
    Params {
        inp: ViewParams::of(inp),
        out: ViewParams::of(out),
        n: g.n as u32,
        cin: g.cin as u32,
        h: g.h as u32,
        w: g.w as u32,
        cout: g.cout as u32,
        oh: g.oh as u32,
        ow: g.ow as u32,
        kh: g.kh as u32,
        kw: g.kw as u32,
        stride: spec.stride as u32,
        pad: spec.padding as u32,
        has_bias: 0,
        w_off: 0,
        b_off: 0,
        sc_off: 0,
        sh_off: 0,
        chunk_len: 0,
        chunks: 0,
        part_stride: 0,
        total: 0,
        out_c: 0,
        red_c: 0,
        w_out_stride: 0,
        w_red_stride: 0,
        flip: 0,
        accumulate: 0,
        _pad: [0; 2],
    }
}

fn aligned(t: &Tensor) -> bool {
    t.offset % 4 == 0 && t.batch_stride % 4 == 0
}

/// Same-size 1x1 / 3x3 convolutions whose channel planes break the vec4 layout
/// (H*W % 4 != 0: the 7x7 maps of DenseNet-121 at 224x224 ran their backward at ~1.3
/// GFLOP/s on the general kernels) run on zero-padded copies of their tensors instead:
/// - 1x1 as an [N, C, 1, H*W rounded up to 4] problem (no pixel reads another, and a pad
///   pixel's d_y is 0, so it adds nothing to d_w / d_b);
/// - 3x3 (W >= 4) with zero rows added below until H*W % 4 == 0: a zero row is what the
///   padding reads anyway. Not with a prologue, which would turn those zeros into
///   max(shift, 0) (backward_data has none).
///
/// Returns the padded (H, W), or None when the tensors are used as they are.
fn padded_plane(g: &Geom, spec: Conv2dSpec, prologue: bool) -> Option<(usize, usize)> {
    let hw = g.h * g.w;
    if spec.stride != 1 || g.kh != g.kw || g.kh != 2 * spec.padding + 1 || hw % 4 == 0 {
        return None;
    }
    if g.n * hw * g.cin * g.cout == 0 {
        return None;
    }
    match g.kh {
        1 => Some((1, hw.next_multiple_of(4))),
        3 if !prologue && g.w >= 4 => {
            let mut h = g.h;
            while (h * g.w) % 4 != 0 {
                h += 1;
            }
            Some((h, g.w))
        }
        _ => None,
    }
}

/// A dense `[N, C, H', W']` copy of `t` (`[N, C, H, W]`, any view) with each channel plane
/// zero-padded from H*W to H'*W' elements (see [`padded_plane`]).
fn pad_planes(enc: &mut Encoder, op: &str, t: &Tensor, hw: (usize, usize)) -> Result<Tensor> {
    let [n, c, h, w] = nchw(op, "padded tensor", t)?;
    let out = enc
        .gpu()
        .zeros(&[n, c, hw.0, hw.1], "conv2d zero-padded planes")?;
    repad(enc, op, &out, t, h * w, false)?;
    Ok(out)
}

/// out[n, c, e] (+)= (e < p_in ? inp[n, c, e] : 0) for e < P_out: copies (or adds) channel
/// planes of p_in elements into planes of P_out elements, where P_out = out's H*W.
fn repad(
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
    let mut p: Params = bytemuck::Zeroable::zeroed();
    p.inp = ViewParams::of(inp);
    p.out = ViewParams::of(out);
    p.cin = c as u32;
    p.h = to_u32(op, "plane", p_in)?;
    p.w = to_u32(op, "plane", h * w)?;
    p.total = to_u32(op, "padded copy", total)?;
    p.accumulate = accumulate as u32;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "repad",
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(inp),
            Arg::Write(out),
        ],
        workgroups: Gpu::grid_1d(super::groups(total, WG)),
    })
}

/// The planner's view of a pass over `a` (read) and `b` (written; for the weight gradient
/// x and d_y), `out` being the output-side activation (y or d_y).
fn conv_shape(
    g: &Geom,
    spec: Conv2dSpec,
    (a, b): (&Tensor, &Tensor),
    out: &Tensor,
    prologue: bool,
) -> ConvShape {
    ConvShape {
        n: g.n,
        cin: g.cin,
        h: g.h,
        w: g.w,
        cout: g.cout,
        kh: g.kh,
        kw: g.kw,
        spec,
        views_aligned: aligned(a) && aligned(b),
        out_aligned: aligned(out),
        prologue,
    }
}

/// Grid for `tiles` channel tiles (x) times `blocks` pixel blocks (folded over y and z;
/// see `block_id` in the shader for why the tiles come first).
fn pixel_grid(op: &str, blocks: u32, tiles: u32) -> Result<[u32; 3]> {
    let [gx, gz, _] = Gpu::grid_1d(blocks);
    if tiles > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        return Err(GpuError::Limit(format!(
            "{op}: {tiles} channel tiles in one grid dimension"
        )));
    }
    Ok([tiles, if blocks == 0 { 0 } else { gx }, gz])
}

/// Validates the optional prologue and returns (scale offset, shift offset).
fn prologue_offsets(op: &str, pro: Option<BnReluPrologue>, cin: usize) -> Result<(u32, u32)> {
    match pro {
        None => Ok((0, 0)),
        Some(pr) => Ok((
            dense(op, "prologue scale", pr.scale, &[cin])?,
            dense(op, "prologue shift", pr.shift, &[cin])?,
        )),
    }
}

/// The override constants of one launch: the register tile, which of its fields the entry
/// point reads as `PX_TILE` or `PXV`, the workgroup size and the prologue flag. Constants an
/// entry point does not read stay at their defaults so that no duplicate pipelines appear.
#[derive(Clone, Copy)]
struct Consts {
    tile: Tile,
    vec4_groups: bool,
    prologue: bool,
    wg: u32,
}

impl Consts {
    fn new(tile: Tile, prologue: bool) -> Self {
        Consts {
            tile,
            vec4_groups: false,
            prologue,
            wg: WG,
        }
    }

    fn list(self) -> [(&'static str, f64); 5] {
        let (px, pxv) = if self.vec4_groups {
            (2, self.tile.px)
        } else {
            (self.tile.px, 1)
        };
        [
            ("WG", self.wg as f64),
            ("CH_TILE", self.tile.ch as f64),
            ("PX_TILE", px as f64),
            ("PXV", pxv as f64),
            ("PROLOGUE", if self.prologue { 1.0 } else { 0.0 }),
        ]
    }
}

/// y = conv(x', weight) + bias  (overwrites y). x and y may be channel-slice views.
pub fn forward(
    enc: &mut Encoder,
    y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    prologue: Option<BnReluPrologue>,
    spec: Conv2dSpec,
) -> Result<()> {
    const OP: &str = "conv2d forward";
    let g = geometry(OP, "x", x, ("weight", weight), "y", y, spec)?;
    let shape = conv_shape(&g, spec, (x, y), y, prologue.is_some());
    let kernel = plan::choose(OP, ConvPass::Forward, &shape)?;
    let fast = matches!(kernel, ConvKernel::Conv1x1 | ConvKernel::Conv3x3);
    if let Some(hw) = padded_plane(&g, spec, prologue.is_some()).filter(|_| fast) {
        not_aliased(OP, ("y", y), &[("x", x), ("weight", weight)])?;
        let xp = pad_planes(enc, OP, x, hw)?;
        let yp = enc
            .gpu()
            .zeros(&[g.n, g.cout, hw.0, hw.1], "conv2d padded output")?;
        forward(enc, &yp, &xp, weight, bias, prologue, spec)?;
        return repad(enc, OP, y, &yp, hw.0 * hw.1, false);
    }
    let mut p = params(&g, x, y, spec);
    p.w_off = dense(OP, "weight", weight, &[g.cout, g.cin, g.kh, g.kw])?;
    if let Some(b) = bias {
        p.b_off = dense(OP, "bias", b, &[g.cout])?;
        p.has_bias = 1;
    }
    (p.sc_off, p.sh_off) = prologue_offsets(OP, prologue, g.cin)?;
    let mut ins = vec![("x", x), ("weight", weight)];
    ins.extend(bias.map(|b| ("bias", b)));
    if let Some(pr) = prologue {
        ins.extend([("prologue scale", pr.scale), ("prologue shift", pr.shift)]);
    }
    not_aliased(OP, ("y", y), &ins)?;

    p.out_c = p.cout;
    p.red_c = p.cin;
    p.w_out_stride = (g.cin * g.kh * g.kw) as u32;
    p.w_red_stride = (g.kh * g.kw) as u32;
    match kernel {
        ConvKernel::GemmForward => {
            return launch::gemm_data_pass(enc, OP, &g, spec, &p, weight, x, y, bias, prologue)
        }
        ConvKernel::Winograd => {
            return launch::winograd(enc, OP, &g, &p, weight, x, y, bias, prologue);
        }
        _ => {}
    }
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (x, x),
    };
    let (workgroups, mut consts) = pick(OP, kernel, &g, g.cout)?;
    consts.prologue = prologue.is_some();
    // Every forward kernel reads the packed weight.
    let packed = pack_weight(enc, OP, &g, &p, weight)?;
    let w_used = &packed;
    let (shader, entry) = kernel.entry(enc.subgroups());
    enc.launch(Launch {
        shader,
        entry,
        overrides: &consts.list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Read(w_used),
            Arg::Read(bias.unwrap_or(w_used)),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(y),
        ],
        workgroups,
    })
}

/// Grid and constants of `kernel` (forward or backward_data), producing `out_c` channels.
fn pick(op: &str, kernel: ConvKernel, g: &Geom, out_c: usize) -> Result<([u32; 3], Consts)> {
    let hw = g.h * g.w;
    let (t, wg, blocks) = match kernel {
        ConvKernel::Conv1x1 => {
            // Lane l of a block owns the pixel groups l, l + WG, ...
            let t = narrow(CONV1X1, out_c);
            let groups4 = g.n * hw / 4;
            let wg = lanes_for(groups4.div_ceil(t.px as usize));
            (t, wg, super::groups(groups4, wg * t.px))
        }
        ConvKernel::Conv3x3 => {
            // A lane owns 4 * px consecutive pixels, which must lie in one image.
            let mut t = narrow(CONV3X3, out_c);
            if hw % (4 * t.px as usize) != 0 {
                t.px = 1;
            }
            let lanes = g.n * hw / (4 * t.px as usize);
            let wg = lanes_for(lanes);
            (t, wg, super::groups(lanes, wg))
        }
        ConvKernel::ForwardTiled => {
            // Lane l of a block owns the groups of 4 output pixels l, l + WG.
            let t = FORWARD_TILED;
            let pixels = g.n * g.oh * g.ow;
            let wg = lanes_for(pixels.div_ceil(4 * t.px as usize));
            (t, wg, super::groups(pixels, 4 * wg * t.px))
        }
        ConvKernel::BackwardData => {
            let t = GENERAL_BWD_DATA;
            let tiles = super::groups(out_c, t.ch);
            let wg = lanes_for((hw * g.n).div_ceil(t.px as usize));
            let grid = pixel_grid(op, super::groups(hw * g.n, wg * t.px), tiles)?;
            let mut consts = Consts::new(t, false);
            consts.wg = wg;
            return Ok((grid, consts));
        }
        other => unreachable!("{other} is a weight-gradient kernel"),
    };
    let grid = pixel_grid(op, blocks, super::groups(out_c, t.ch))?;
    let mut consts = Consts::new(t, false);
    consts.vec4_groups = true;
    consts.wg = wg;
    Ok((grid, consts))
}

/// `t` with its channel tile cut to `channels` rounded up to 4 when that is smaller (a
/// DenseNet-BC layer with 12 output channels would waste a quarter of a 16-channel tile).
fn narrow(t: Tile, channels: usize) -> Tile {
    Tile {
        ch: t.ch.min(channels.next_multiple_of(4).max(4) as u32),
        px: t.px,
    }
}

/// Lanes per workgroup for `units` lanes' worth of work: [`WG`], or fewer (down to 8) for
/// the small feature maps of late DenseNet layers. On lavapipe the idle lanes of a
/// workgroup still run the whole reduction loop, so a 2x2 map in a 64-lane workgroup would
/// waste most of the work. One pipeline per distinct size (at most four).
fn lanes_for(units: usize) -> u32 {
    (units.max(1).next_power_of_two() as u32).clamp(8, WG)
}

/// For the vec4 fast paths (`conv1x1`, `conv3x3`): repacks the weight as
/// `[red_c * KH*KW, out_c rounded up to 4]` (tap rotated for backward_data, padding channels
/// 0), so the weights of 4 consecutive output channels are one aligned vec4 (see
/// `pack_weight` in the shader). `p` carries out_c / red_c / the weight strides / flip.
fn pack_weight(
    enc: &mut Encoder,
    op: &str,
    g: &Geom,
    p: &Params,
    weight: &Tensor,
) -> Result<Tensor> {
    let (out_c, red_c) = (p.out_c as usize, p.red_c as usize);
    let rows = red_c * g.kh * g.kw;
    let total = rows * out_c.div_ceil(4) * 4;
    let packed = enc
        .gpu()
        .zeros(&[rows, out_c.div_ceil(4) * 4], "conv2d packed weight")?;
    if total == 0 {
        return Ok(packed);
    }
    let mut pp = *p;
    pp.total = to_u32(op, "packed weight", total)?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "pack_weight",
        overrides: &Consts::new(Tile { ch: 8, px: 2 }, false).list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&pp)),
            Arg::Read(weight),
            Arg::Write(&packed),
        ],
        workgroups: Gpu::grid_1d(super::groups(total, WG)),
    })?;
    Ok(packed)
}

/// Pixel-major copy `[N*H*W, C rounded up to 4]` of `t` (N, C, H, W; vec4 layout), see
/// `to_pixel_major` in the shader.
fn to_pixel_major(
    enc: &mut Encoder,
    op: &str,
    p: &Params,
    t: &Tensor,
    [c, h, w]: [usize; 3],
) -> Result<Tensor> {
    let npix = p.n as usize * h * w;
    let cp = c.div_ceil(4) * 4;
    let out = enc.gpu().zeros(&[npix, cp], "conv2d pixel-major copy")?;
    let total = npix / 4 * cp / 4;
    if total == 0 {
        return Ok(out);
    }
    let mut pp = *p;
    pp.inp = ViewParams::of(t);
    pp.red_c = c as u32;
    pp.h = h as u32;
    pp.w = w as u32;
    pp.total = to_u32(op, "pixel-major copy", total)?;
    to_u32(op, "pixel-major copy", npix * cp)?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "to_pixel_major",
        overrides: &Consts::new(Tile { ch: 8, px: 2 }, false).list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&pp)),
            Arg::Read(t),
            Arg::Write(&out),
        ],
        workgroups: Gpu::grid_1d(super::groups(total, WG)),
    })?;
    Ok(out)
}

/// d_x += conv_transpose(d_y, weight)   (gradient w.r.t. the conv's actual input x', i.e. x when no prologue).
/// d_x and d_y may be channel-slice views.
pub fn backward_data(
    enc: &mut Encoder,
    d_x: &Tensor,
    d_y: &Tensor,
    weight: &Tensor,
    spec: Conv2dSpec,
) -> Result<()> {
    const OP: &str = "conv2d backward_data";
    let g = geometry(OP, "d_x", d_x, ("weight", weight), "d_y", d_y, spec)?;
    let shape = conv_shape(&g, spec, (d_y, d_x), d_y, false);
    let kernel = plan::choose(OP, ConvPass::BackwardData, &shape)?;
    let fast = matches!(kernel, ConvKernel::Conv1x1 | ConvKernel::Conv3x3);
    if let Some(hw) = padded_plane(&g, spec, false).filter(|_| fast) {
        not_aliased(OP, ("d_x", d_x), &[("d_y", d_y), ("weight", weight)])?;
        let dyp = pad_planes(enc, OP, d_y, hw)?;
        let dxp = enc
            .gpu()
            .zeros(&[g.n, g.cin, hw.0, hw.1], "conv2d padded d_x")?;
        backward_data(enc, &dxp, &dyp, weight, spec)?;
        return repad(enc, OP, d_x, &dxp, hw.0 * hw.1, true);
    }
    let mut p = params(&g, d_y, d_x, spec);
    p.w_off = dense(OP, "weight", weight, &[g.cout, g.cin, g.kh, g.kw])?;
    not_aliased(OP, ("d_x", d_x), &[("d_y", d_y), ("weight", weight)])?;

    p.out_c = p.cin;
    p.red_c = p.cout;
    p.w_out_stride = (g.kh * g.kw) as u32;
    p.w_red_stride = (g.cin * g.kh * g.kw) as u32;
    p.flip = 1;
    p.accumulate = 1;
    match kernel {
        ConvKernel::GemmBackwardData => {
            return launch::gemm_data_pass(enc, OP, &g, spec, &p, weight, d_y, d_x, None, None)
        }
        ConvKernel::Winograd => {
            return launch::winograd(enc, OP, &g, &p, weight, d_y, d_x, None, None);
        }
        _ => {}
    }
    let (workgroups, consts) = pick(OP, kernel, &g, g.cin)?;
    let packed;
    let mut w_used = weight;
    if fast {
        packed = pack_weight(enc, OP, &g, &p, weight)?;
        w_used = &packed;
    }
    // The general entry point binds (d_y, weight, d_x); the fast paths share forward's
    // layout, with the weight standing in for the unused bias / prologue bindings.
    let general = [
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(d_y),
        Arg::Read(weight),
        Arg::Write(d_x),
    ];
    let fast_args = [
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(d_y),
        Arg::Read(w_used),
        Arg::Read(w_used),
        Arg::Read(w_used),
        Arg::Read(w_used),
        Arg::Write(d_x),
    ];
    let (shader, entry) = kernel.entry(enc.subgroups());
    enc.launch(Launch {
        shader,
        entry,
        overrides: &consts.list(),
        args: if fast { &fast_args } else { &general },
        workgroups,
    })
}

/// d_weight += sum_{n,oh,ow} d_y * x'  ;  d_bias += sum_{n,oh,ow} d_y   (if Some). x' recomputed from the prologue if given.
/// x and d_y may be channel-slice views. d_weight `[Cout, Cin, KH, KW]`, d_bias `[Cout]`
/// contiguous.
///
/// Two passes, both deterministic: the pixel axis (n, oh, ow) is cut into chunks, each
/// chunk's partial sums go to a scratch tensor, and a second pass adds the chunks in order.
pub fn backward_weight(
    enc: &mut Encoder,
    d_weight: &Tensor,
    d_bias: Option<&Tensor>,
    d_y: &Tensor,
    x: &Tensor,
    prologue: Option<BnReluPrologue>,
    spec: Conv2dSpec,
) -> Result<()> {
    const OP: &str = "conv2d backward_weight";
    let g = geometry(OP, "x", x, ("d_weight", d_weight), "d_y", d_y, spec)?;
    let shape = conv_shape(&g, spec, (x, d_y), d_y, prologue.is_some());
    let kernel = plan::choose(OP, ConvPass::BackwardWeight, &shape)?;
    let fast = matches!(kernel, ConvKernel::WeightDot | ConvKernel::WeightRows);
    if let Some(hw) = padded_plane(&g, spec, prologue.is_some()).filter(|_| fast) {
        not_aliased(OP, ("d_weight", d_weight), &[("x", x), ("d_y", d_y)])?;
        let xp = pad_planes(enc, OP, x, hw)?;
        let dyp = pad_planes(enc, OP, d_y, hw)?;
        return backward_weight(enc, d_weight, d_bias, &dyp, &xp, prologue, spec);
    }
    let mut p = params(&g, x, d_y, spec);
    let w_off = dense(OP, "d_weight", d_weight, &[g.cout, g.cin, g.kh, g.kw])?;
    let b_off = match d_bias {
        Some(b) => dense(OP, "d_bias", b, &[g.cout])?,
        None => 0,
    };
    (p.sc_off, p.sh_off) = prologue_offsets(OP, prologue, g.cin)?;
    let mut ins = vec![("x", x), ("d_y", d_y)];
    if let Some(pr) = prologue {
        ins.extend([("prologue scale", pr.scale), ("prologue shift", pr.shift)]);
    }
    not_aliased(OP, ("d_weight", d_weight), &ins)?;
    if let Some(b) = d_bias {
        not_aliased(OP, ("d_bias", b), &ins)?;
        not_aliased(OP, ("d_bias", b), &[("d_weight", d_weight)])?;
    }

    let ncol = g.cin * g.kh * g.kw;
    let nw = g.cout * ncol;
    if nw == 0 {
        return Ok(());
    }
    let part = if kernel == ConvKernel::GemmWeight {
        let blocks = launch::gemm_blocks(g.cout, ncol);
        let (chunk_len, chunks) = launch::gemm_weight_chunks(g.n * g.oh * g.ow, blocks);
        let part = partial_sums_scratch(enc, OP, &mut p, chunk_len, chunks, nw + g.cout)?;
        launch::gemm_backward_weight(enc, OP, &g, spec, &p, (d_y, x), prologue, &part)?;
        part
    } else {
        weight_partial_sums(enc, OP, kernel, &g, &mut p, (d_y, x), prologue)?
    };

    // Pass 2: fixed-order sum over chunks, accumulated into d_weight / d_bias.
    p.w_off = w_off;
    p.b_off = b_off;
    p.has_bias = d_bias.is_some() as u32;
    let total = if d_bias.is_some() { nw + g.cout } else { nw };
    p.total = to_u32(OP, "d_weight elements", total)?;
    let dummy;
    let d_b = match d_bias {
        Some(b) => b,
        None => {
            dummy = enc.gpu().zeros(&[1], "conv2d no d_bias")?;
            &dummy
        }
    };
    enc.launch(Launch {
        shader: &SHADER,
        entry: "backward_weight_reduce",
        overrides: &Consts::new(Tile { ch: 8, px: 2 }, false).list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(&part),
            Arg::Write(d_weight),
            Arg::Write(d_b),
        ],
        workgroups: Gpu::grid_1d(super::groups(total, WG)),
    })
}

/// The scratch of the weight gradient's partial sums, `[chunks, part_stride]`, with `p`'s
/// chunking fields set.
fn partial_sums_scratch(
    enc: &mut Encoder,
    op: &str,
    p: &mut Params,
    chunk_len: usize,
    chunks: usize,
    part_stride: usize,
) -> Result<Tensor> {
    p.chunk_len = to_u32(op, "chunk length", chunk_len)?;
    p.chunks = to_u32(op, "chunks", chunks)?;
    p.part_stride = to_u32(op, "partial sums", part_stride)?;
    to_u32(op, "partial sums", chunks * part_stride)?;
    if chunks > crate::gpu::MAX_WORKGROUPS_PER_DIM as usize {
        return Err(GpuError::Limit(format!(
            "{op}: {chunks} reduction chunks exceed 65,535 workgroups per dimension"
        )));
    }
    enc.gpu()
        .zeros(&[chunks, part_stride], "conv2d d_weight partial sums")
}

/// Pass 1 of the weight gradient on the register-tiled kernels: partial sums of d_w and
/// d_b over chunks of the pixel axis.
fn weight_partial_sums(
    enc: &mut Encoder,
    op: &str,
    kernel: ConvKernel,
    g: &Geom,
    p: &mut Params,
    (d_y, x): (&Tensor, &Tensor),
    prologue: Option<BnReluPrologue>,
) -> Result<Tensor> {
    let ncol = g.cin * g.kh * g.kw;
    // The reduction axis: pixels, or groups of 4 pixels for backward_weight_dot / _rows.
    let grouped = matches!(kernel, ConvKernel::WeightDot | ConvKernel::WeightRows);
    let npix = g.n * g.oh * g.ow / if grouped { 4 } else { 1 };
    let (t, wg_size, per_lane) = match kernel {
        ConvKernel::WeightStrided => (BWD_WEIGHT_STRIDED, BWD_WEIGHT_STRIDED_WG, ncol.div_ceil(4)),
        ConvKernel::WeightRows => (narrow(BWD_WEIGHT_ROWS, g.cout), WG, g.cin * g.kh),
        ConvKernel::WeightDot => (
            narrow(BWD_WEIGHT_DOT, g.cout),
            lanes_for(g.cin.div_ceil(8)),
            g.cin.div_ceil(8),
        ),
        ConvKernel::WeightPartial => (GENERAL_BWD_WEIGHT, WG, ncol),
        other => unreachable!("{other} is not a register-tiled weight-gradient kernel"),
    };
    let col_blocks = if kernel == ConvKernel::WeightDot {
        super::groups(per_lane, wg_size)
    } else {
        super::groups(per_lane, wg_size * t.px)
    };
    let tiles = super::groups(g.cout, t.ch);
    // Chunks: enough workgroups to fill the device, chunks not too short.
    let base = (col_blocks as usize * tiles as usize).max(1);
    let min_chunk = if grouped { MIN_CHUNK / 4 } else { MIN_CHUNK };
    let max_chunks = npix.div_ceil(min_chunk).max(1);
    let want = (TARGET_WORKGROUPS as usize)
        .div_ceil(base)
        .clamp(1, max_chunks);
    let chunk_len = npix.div_ceil(want).max(1);
    let chunks = npix.div_ceil(chunk_len).max(1);
    if tiles > crate::gpu::MAX_WORKGROUPS_PER_DIM || col_blocks > crate::gpu::MAX_WORKGROUPS_PER_DIM
    {
        return Err(GpuError::Limit(format!(
            "{op}: grid [{col_blocks}, {tiles}, {chunks}] exceeds 65,535 workgroups per dimension"
        )));
    }
    let part = partial_sums_scratch(enc, op, p, chunk_len, chunks, g.cout * ncol + g.cout)?;
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (x, x),
    };
    let mut consts = Consts::new(t, prologue.is_some());
    consts.wg = wg_size;
    let (shader, entry) = kernel.entry(enc.subgroups());
    // backward_weight_strided reads d_y from a pixel-major copy.
    let pixel_major;
    let mut d_y_read = d_y;
    if kernel == ConvKernel::WeightStrided {
        pixel_major = to_pixel_major(enc, op, p, d_y, [g.cout, g.oh, g.ow])?;
        d_y_read = &pixel_major;
        consts.vec4_groups = true;
    }
    enc.launch(Launch {
        shader,
        entry,
        overrides: &consts.list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&*p)),
            Arg::Read(d_y_read),
            Arg::Read(x),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(&part),
        ],
        workgroups: [col_blocks, tiles, chunks as u32],
    })?;
    Ok(part)
}

// Tape entries.

impl Tape<'_> {
    /// Convolution, optionally writing into `out` (a slice of a larger buffer).
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, _, h, wd] = nchw(name, "x", self.value(x)?)?;
        let [co, ci, kh, kw] = nchw(name, "weight", self.value(w)?)?;
        let (oh, ow) = output_size(spec, h, wd, kh, kw)?;
        let y = self.output(out, &[n, co, oh, ow], name)?;
        self.count_multiply_adds(n * co * oh * ow * ci * kh * kw);
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let (yt, xt, wt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(w)?.clone(),
        );
        forward(self.enc(), &yt, &xt, &wt, bt.as_ref(), None, spec)?;
        let mut ins = vec![x, w];
        ins.extend(b);
        self.mark(y, &ins);
        self.record(Conv2dOp { y, x, w, b, spec })?;
        Ok(y)
    }

    /// Training-mode BN → ReLU → conv without storing the BN+ReLU output (memory-efficient
    /// layers). Statistics are computed once, here; backward recomputes the normalised
    /// input on the fly and never touches the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_relu_conv(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, c, h, wd] = nchw(name, "x", self.value(x)?)?;
        let [co, ci, kh, kw] = nchw(name, "weight", self.value(w)?)?;
        let (oh, ow) = output_size(spec, h, wd, kh, kw)?;
        let y = self.output(out, &[n, co, oh, ow], name)?;
        self.count_multiply_adds(n * co * oh * ow * ci * kh * kw);
        let g = self.gpu();
        let scale = g.zeros(&[c], &format!("{name}.scale"))?;
        let shift = g.zeros(&[c], &format!("{name}.shift"))?;
        let (yt, xt, gt, bt, wt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(gamma)?.clone(),
            self.value(beta)?.clone(),
            self.value(w)?.clone(),
        );
        let cfg = BnConfig { relu: true, ..cfg };
        let stats = self.bn_statistics(None, &xt, &gt, &bt, running, cfg, name)?;
        let (mean, inv_std, counts) = (stats.mean, stats.inv_std, stats.counts);
        let enc = self.enc();
        batch_norm::fold_scale_shift(enc, &scale, &shift, &gt, &bt, &mean, &inv_std)?;
        let pro = BnReluPrologue {
            scale: &scale,
            shift: &shift,
        };
        forward(enc, &yt, &xt, &wt, None, Some(pro), spec)?;
        self.probe_relu(name, |g| {
            batch_norm::pre_activation(g, &xt, [&gt, &bt, &mean, &inv_std], None)
        })?;
        self.mark(y, &[x, gamma, beta, w]);
        self.record(BnReluConvOp {
            y,
            w,
            bn: BatchNormOp {
                y,
                x,
                gamma,
                beta,
                mean,
                inv_std,
                cfg,
                counts,
            },
            scale,
            shift,
            spec,
        })?;
        Ok(y)
    }
}

struct Conv2dOp {
    y: Var,
    x: Var,
    w: Var,
    b: Option<Var>,
    spec: Conv2dSpec,
}

impl Backward for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn vars(&self) -> Vec<Var> {
        [Some(self.y), Some(self.x), Some(self.w), self.b]
            .into_iter()
            .flatten()
            .collect()
    }
    fn value_reads(&self) -> Vec<Var> {
        vec![self.x, self.w]
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Option<Tensor>) -> Result<()> {
        let d_y = output_grad(d_y, "conv2d")?;
        let xt = tape.value(self.x)?.clone();
        let wt = tape.value(self.w)?.clone();
        let d_w = tape.grad_if(self.w)?;
        let d_b = self.b.map(|b| tape.grad_if(b)).transpose()?.flatten();
        let d_x = tape.grad_if(self.x)?;
        if let Some(d_w) = d_w {
            backward_weight(tape.enc(), &d_w, d_b.as_ref(), &d_y, &xt, None, self.spec)?;
        }
        if let Some(d_x) = d_x {
            backward_data(tape.enc(), &d_x, &d_y, &wt, self.spec)?;
        }
        Ok(())
    }
}

/// BN (batch statistics) → ReLU → conv, with the BN+ReLU output never stored: the conv
/// applies `max(scale*x + shift, 0)` while reading x, and backward recomputes it.
struct BnReluConvOp {
    y: Var,
    w: Var,
    /// The BN (+ReLU) whose output the conv reads; `bn.y` is the conv's output.
    bn: BatchNormOp,
    scale: Tensor,
    shift: Tensor,
    spec: Conv2dSpec,
}

impl Backward for BnReluConvOp {
    fn name(&self) -> &'static str {
        "bn_relu_conv"
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.y, self.bn.x, self.bn.gamma, self.bn.beta, self.w]
    }
    fn value_reads(&self) -> Vec<Var> {
        vec![self.bn.x, self.bn.gamma, self.bn.beta, self.w]
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Option<Tensor>) -> Result<()> {
        let d_y = output_grad(d_y, "bn_relu_conv")?;
        let (xt, wt) = (tape.value(self.bn.x)?.clone(), tape.value(self.w)?.clone());
        let pro = BnReluPrologue {
            scale: &self.scale,
            shift: &self.shift,
        };
        if let Some(d_w) = tape.grad_if(self.w)? {
            backward_weight(tape.enc(), &d_w, None, &d_y, &xt, Some(pro), self.spec)?;
        }
        // Gradient w.r.t. the (never stored) BN+ReLU output: one transient buffer.
        let d_act = tape.gpu().zeros(&xt.shape, "d_bn_relu (transient)")?;
        backward_data(tape.enc(), &d_act, &d_y, &wt, self.spec)?;
        self.bn.push_grads(tape, &d_act)
    }
}
