//! The launchers of the convolution kernels, by family, each with its own uniform:
//! - the register-tiled kernels (`shaders/conv2d/{common,forward,backward_data}.wgsl`,
//!   [`DataParams`]; `backward_weight.wgsl`, [`WeightParams`] and [`ReduceParams`]), shaped
//!   for lavapipe: no workgroup memory, FMAs per load instruction maximised;
//! - their data movement (`layout.wgsl`, [`LayoutParams`]): weight packing, plane padding,
//!   the pixel-major copy of d_y;
//! - the implicit-GEMM kernels (`gemm.wgsl`, [`GemmParams`]), shaped for discrete GPUs:
//!   workgroup-memory tiles;
//! - Winograd F(2x2, 3x3) (`winograd.wgsl`, [`WinogradParams`]).
//!
//! Shapes, views and aliasing are checked by the pass functions in `mod.rs` before these run.

use super::shaders::{SHADER, WINOGRAD_SHADER};
use super::{BnReluPrologue, Conv2dSpec, ConvKernel, Geom};
use crate::gpu::{nchw, to_u32, Arg, Encoder, Gpu, GpuError, Launch, Result, Tensor};
use crate::ops::{groups, ViewParams};

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

/// The geometry of a convolution as the register-tiled kernels' uniforms carry it, after
/// their two views (the shaders' fields n .. pad).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct ConvDims {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
}

impl ConvDims {
    pub fn of(g: &Geom, spec: Conv2dSpec) -> ConvDims {
        ConvDims {
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
        }
    }
}

/// The uniform of the forward and backward-data register-tiled kernels.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct DataParams {
    /// x (forward) or d_y (backward_data).
    pub inp: ViewParams,
    /// y (forward) or d_x (backward_data).
    pub out: ViewParams,
    pub dims: ConvDims,
    /// Channels written: Cout (forward) or Cin (backward_data).
    pub out_c: u32,
    /// Channels summed over: Cin (forward) or Cout (backward_data).
    pub red_c: u32,
    /// 1: out += sum (backward_data); 0: out = sum + bias.
    pub accumulate: u32,
    pub has_bias: u32,
    pub b_off: u32,
    pub w_off: u32,
    pub sc_off: u32,
    pub sh_off: u32,
    /// conv1x1: floats between the packed weights of consecutive images (0: one weight).
    pub w_image_stride: u32,
}
const _: () = assert!(std::mem::size_of::<DataParams>() == 112);

/// The uniform of the weight-gradient kernels' first pass (partial sums per chunk).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct WeightParams {
    /// x.
    pub inp: ViewParams,
    /// d_y.
    pub out: ViewParams,
    pub dims: ConvDims,
    pub sc_off: u32,
    pub sh_off: u32,
    pub chunk_len: u32,
    pub chunks: u32,
    pub part_stride: u32,
}
const _: () = assert!(std::mem::size_of::<WeightParams>() == 96);

/// The uniform of `backward_weight_reduce`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    total: u32,
    nw: u32,
    chunks: u32,
    part_stride: u32,
    has_bias: u32,
    w_off: u32,
    b_off: u32,
    _pad: u32,
}

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

/// Where a pass finds the weights of its output and summed channels inside the OIHW
/// weight, and whether it rotates the taps (backward_data's conv_transpose).
#[derive(Clone, Copy, Debug)]
pub(super) struct Packing {
    pub out_c: usize,
    pub red_c: usize,
    pub w_off: u32,
    pub out_stride: usize,
    pub red_stride: usize,
    pub flip: bool,
}

impl Packing {
    pub fn forward(g: &Geom, w_off: u32) -> Packing {
        let kk = g.kh * g.kw;
        Packing {
            out_c: g.cout,
            red_c: g.cin,
            w_off,
            out_stride: g.cin * kk,
            red_stride: kk,
            flip: false,
        }
    }
    pub fn backward_data(g: &Geom, w_off: u32) -> Packing {
        let kk = g.kh * g.kw;
        Packing {
            out_c: g.cin,
            red_c: g.cout,
            w_off,
            out_stride: kk,
            red_stride: g.cin * kk,
            flip: true,
        }
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

/// One forward or backward-data pass, checked by the pass functions in mod.rs: `p.accumulate
/// == 0` overwrites `written` (y), else adds into it (d_x); `read` is x or d_y.
#[derive(Clone, Copy)]
pub(super) struct DataPass<'a> {
    pub op: &'a str,
    pub g: &'a Geom,
    pub spec: Conv2dSpec,
    pub p: DataParams,
    pub packing: Packing,
    pub weight: &'a Tensor,
    pub read: &'a Tensor,
    pub written: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub prologue: Option<BnReluPrologue<'a>>,
}

/// One weight-gradient pass, checked by `backward_weight` in mod.rs: the sums over pixels
/// of `d_y` against `x` (read through `prologue` when given).
#[derive(Clone, Copy)]
pub(super) struct WeightPass<'a> {
    pub op: &'a str,
    pub g: &'a Geom,
    pub spec: Conv2dSpec,
    pub d_y: &'a Tensor,
    pub x: &'a Tensor,
    pub prologue: Option<BnReluPrologue<'a>>,
}

/// Runs `pass` on `kernel`.
pub(super) fn data_pass(enc: &mut Encoder, kernel: ConvKernel, pass: &DataPass) -> Result<()> {
    match kernel {
        ConvKernel::GemmForward | ConvKernel::GemmBackwardData => return gemm_data_pass(enc, pass),
        ConvKernel::Winograd => return winograd(enc, pass),
        _ => {}
    }
    let DataPass {
        op,
        g,
        p,
        packing,
        weight,
        read,
        written,
        bias,
        prologue,
        ..
    } = *pass;
    if kernel == ConvKernel::BackwardData {
        let (workgroups, consts) = grid_and_constants(op, kernel, g, packing.out_c, None)?;
        let (shader, entry) = kernel.entry(enc.subgroups());
        // The general backward_data reads the weight as it is.
        return enc.launch(Launch {
            shader,
            entry,
            overrides: &consts.list(),
            args: &[
                Arg::Uniform(bytemuck::bytes_of(&p)),
                Arg::Read(read),
                Arg::Read(weight),
                Arg::Write(written),
            ],
            workgroups,
        });
    }
    // The blocked kernels read the packed weight; it stands in for the bias and prologue
    // bindings a pass does not use.
    let packed = pack_weight(enc, op, g, packing, weight)?;
    let p = DataParams { w_off: 0, ..p };
    let launch = Blocked {
        kernel,
        g,
        p: &p,
        packed: &packed,
        read,
        written,
        bias,
        prologue,
        lanes: None,
    };
    blocked(enc, op, launch)
}

/// One launch of a blocked kernel (`conv1x1`, `conv3x3`, `forward_tiled`) on a weight
/// packed by [`pack_weight`] (at float `p.w_off` of `packed`).
struct Blocked<'a> {
    kernel: ConvKernel,
    g: &'a Geom,
    p: &'a DataParams,
    packed: &'a Tensor,
    read: &'a Tensor,
    written: &'a Tensor,
    bias: Option<&'a Tensor>,
    prologue: Option<BnReluPrologue<'a>>,
    /// Invocations per workgroup; `None`: as [`grid_and_constants`] chooses.
    lanes: Option<u32>,
}

/// Launches `launch`.
fn blocked(enc: &mut Encoder, op: &str, launch: Blocked) -> Result<()> {
    let Blocked {
        kernel,
        g,
        p,
        packed,
        read,
        written,
        bias,
        prologue,
        lanes,
    } = launch;
    let (workgroups, mut consts) = grid_and_constants(op, kernel, g, p.out_c as usize, lanes)?;
    consts.prologue = prologue.is_some();
    let (shader, entry) = kernel.entry(enc.subgroups());
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (packed, packed),
    };
    enc.launch(Launch {
        shader,
        entry,
        overrides: &consts.list(),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(p)),
            Arg::Read(read),
            Arg::Read(packed),
            Arg::Read(bias.unwrap_or(packed)),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(written),
        ],
        workgroups,
    })
}

/// Grid and constants of `kernel` (forward or backward_data), producing `out_c` channels.
fn grid_and_constants(
    op: &str,
    kernel: ConvKernel,
    g: &Geom,
    out_c: usize,
    lanes: Option<u32>,
) -> Result<([u32; 3], Consts)> {
    let hw = g.h * g.w;
    let (t, wg, blocks) = match kernel {
        ConvKernel::Conv1x1 => {
            // Lane l of a block owns the pixel groups l, l + WG, ...
            let t = tile_for_channels(CONV1X1, out_c);
            let groups4 = g.n * hw / 4;
            let wg = lanes.unwrap_or_else(|| lanes_for(groups4.div_ceil(t.px as usize)));
            (t, wg, groups(groups4, wg * t.px))
        }
        ConvKernel::Conv3x3 => {
            // A lane owns 4 * px consecutive pixels, which must lie in one image.
            let mut t = tile_for_channels(CONV3X3, out_c);
            if hw % (4 * t.px as usize) != 0 {
                t.px = 1;
            }
            let lanes = g.n * hw / (4 * t.px as usize);
            let wg = lanes_for(lanes);
            (t, wg, groups(lanes, wg))
        }
        ConvKernel::ForwardTiled => {
            // Lane l of a block owns the groups of 4 output pixels l, l + WG.
            let t = FORWARD_TILED;
            let pixels = g.n * g.oh * g.ow;
            let wg = lanes_for(pixels.div_ceil(4 * t.px as usize));
            (t, wg, groups(pixels, 4 * wg * t.px))
        }
        ConvKernel::BackwardData => {
            let t = GENERAL_BWD_DATA;
            let tiles = groups(out_c, t.ch);
            let wg = lanes_for((hw * g.n).div_ceil(t.px as usize));
            let grid = pixel_grid(op, groups(hw * g.n, wg * t.px), tiles)?;
            let mut consts = Consts::new(t, false);
            consts.wg = wg;
            return Ok((grid, consts));
        }
        other => unreachable!("{other} is a weight-gradient kernel"),
    };
    let grid = pixel_grid(op, blocks, groups(out_c, t.ch))?;
    let mut consts = Consts::new(t, false);
    consts.vec4_groups = true;
    consts.wg = wg;
    Ok((grid, consts))
}

/// `t` with its channel tile cut to `channels` rounded up to 4 when that is smaller (a
/// DenseNet-BC layer with 12 output channels would waste a quarter of a 16-channel tile).
fn tile_for_channels(t: Tile, channels: usize) -> Tile {
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

/// Launches the layout kernel `entry` over `q.total` invocations, reading `read` and
/// writing `written`.
fn layout_launch(
    enc: &mut Encoder,
    entry: &'static str,
    q: &LayoutParams,
    read: &Tensor,
    written: &Tensor,
) -> Result<()> {
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(q)),
            Arg::Read(read),
            Arg::Write(written),
        ],
        workgroups: Gpu::grid_1d(groups(q.total as usize, WG)),
    })
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
fn to_pixel_major(enc: &mut Encoder, op: &str, t: &Tensor) -> Result<Tensor> {
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
pub(super) fn pad_planes(
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
pub(super) fn repad(
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

/// The scratch of the weight gradient's partial sums, `[chunks, part_stride]`, with `p`'s
/// chunking fields set.
pub(super) fn partial_sums_scratch(
    enc: &mut Encoder,
    op: &str,
    p: &mut WeightParams,
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
pub(super) fn weight_partial_sums(
    enc: &mut Encoder,
    kernel: ConvKernel,
    pass: &WeightPass,
    p: &mut WeightParams,
) -> Result<Tensor> {
    let WeightPass {
        op,
        g,
        d_y,
        x,
        prologue,
        ..
    } = *pass;
    let ncol = g.cin * g.kh * g.kw;
    // The reduction axis: pixels, or groups of 4 pixels for backward_weight_dot / _rows.
    let grouped = matches!(kernel, ConvKernel::WeightDot | ConvKernel::WeightRows);
    let npix = g.n * g.oh * g.ow / if grouped { 4 } else { 1 };
    let (t, wg_size, per_lane) = match kernel {
        ConvKernel::WeightStrided => (BWD_WEIGHT_STRIDED, BWD_WEIGHT_STRIDED_WG, ncol.div_ceil(4)),
        ConvKernel::WeightRows => (tile_for_channels(BWD_WEIGHT_ROWS, g.cout), WG, g.cin * g.kh),
        ConvKernel::WeightDot => (
            tile_for_channels(BWD_WEIGHT_DOT, g.cout),
            lanes_for(g.cin.div_ceil(8)),
            g.cin.div_ceil(8),
        ),
        ConvKernel::WeightPartial => (GENERAL_BWD_WEIGHT, WG, ncol),
        other => unreachable!("{other} is not a register-tiled weight-gradient kernel"),
    };
    let col_blocks = if kernel == ConvKernel::WeightDot {
        groups(per_lane, wg_size)
    } else {
        groups(per_lane, wg_size * t.px)
    };
    let tiles = groups(g.cout, t.ch);
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
        pixel_major = to_pixel_major(enc, op, d_y)?;
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

/// Pass 2 of the weight gradient: the chunks of `part` summed in a fixed order and added
/// into d_weight (at `w_off`) and d_bias.
pub(super) fn reduce_chunks(
    enc: &mut Encoder,
    op: &str,
    p: &WeightParams,
    part: &Tensor,
    (d_weight, w_off): (&Tensor, u32),
    d_bias: Option<(&Tensor, u32)>,
) -> Result<()> {
    let d = p.dims;
    let nw = (d.cout * d.cin * d.kh * d.kw) as usize;
    let total = if d_bias.is_some() {
        nw + d.cout as usize
    } else {
        nw
    };
    let q = ReduceParams {
        total: to_u32(op, "d_weight elements", total)?,
        nw: nw as u32,
        chunks: p.chunks,
        part_stride: p.part_stride,
        has_bias: d_bias.is_some() as u32,
        w_off,
        b_off: d_bias.map_or(0, |b| b.1),
        _pad: 0,
    };
    let dummy;
    let d_b = match d_bias {
        Some((b, _)) => b,
        None => {
            dummy = enc.gpu().zeros(&[1], "conv2d no d_bias")?;
            &dummy
        }
    };
    enc.launch(Launch {
        shader: &SHADER,
        entry: "backward_weight_reduce",
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&q)),
            Arg::Read(part),
            Arg::Write(d_weight),
            Arg::Write(d_b),
        ],
        workgroups: Gpu::grid_1d(groups(total, WG)),
    })
}

/// The workgroup tile of the GEMM kernels: a `bm` x `bn` block of the output staged `bk`
/// reduction steps at a time, `tm` x `tn` outputs per thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl GemmTile {
    /// 64 x 64 outputs, 16 reduction steps per stage, 4 x 4 per thread: 256 threads and
    /// 8 KiB of workgroup memory.
    pub const WIDE: GemmTile = GemmTile {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    };
    /// For 32 or fewer output rows (DenseNet's growth-rate convolutions).
    pub const NARROW: GemmTile = GemmTile {
        bm: 32,
        bn: 64,
        bk: 16,
        tm: 4,
        tn: 4,
    };

    fn for_rows(m: usize) -> GemmTile {
        if m <= 32 {
            GemmTile::NARROW
        } else {
            GemmTile::WIDE
        }
    }

    fn threads(self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    fn overrides(self, prologue: bool) -> [(&'static str, f64); 7] {
        // The shader's staging loops need these; the tiles above satisfy them.
        debug_assert!(self.threads() % self.bn == 0 && self.bm % 4 == 0);
        debug_assert!(self.bm * self.bk <= 2048 && self.bn * self.bk <= 2048);
        debug_assert!(self.tm <= 8 && self.tn <= 8);
        [
            ("BM", self.bm as f64),
            ("BN", self.bn as f64),
            ("BK", self.bk as f64),
            ("TM", self.tm as f64),
            ("TN", self.tn as f64),
            ("THREADS", self.threads() as f64),
            ("PROLOGUE", if prologue { 1.0 } else { 0.0 }),
        ]
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    inp: ViewParams,
    out: ViewParams,
    dims: ConvDims,
    m: u32,
    m_pad: u32,
    k: u32,
    cols: u32,
    has_bias: u32,
    b_off: u32,
    sc_off: u32,
    sh_off: u32,
    chunk_len: u32,
    part_stride: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

fn gemm_params(g: &Geom, spec: Conv2dSpec, inp: &Tensor, out: &Tensor) -> GemmParams {
    GemmParams {
        inp: ViewParams::of(inp),
        out: ViewParams::of(out),
        dims: ConvDims::of(g, spec),
        ..bytemuck::Zeroable::zeroed()
    }
}

/// Grid of `col_blocks` column blocks (folded over x and z) times `row_blocks` (y).
fn gemm_grid(op: &str, col_blocks: u32, row_blocks: u32) -> Result<[u32; 3]> {
    let [gx, gz, _] = Gpu::grid_1d(col_blocks);
    if row_blocks > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        return Err(GpuError::Limit(format!(
            "{op}: {row_blocks} row blocks in one grid dimension"
        )));
    }
    Ok([gx, row_blocks, gz])
}

/// `gemm_forward` (overwrites y) or `gemm_backward_data` (adds into d_x).
fn gemm_data_pass(enc: &mut Encoder, pass: &DataPass) -> Result<()> {
    let DataPass {
        op,
        g,
        spec,
        p,
        packing,
        weight,
        read,
        written,
        bias,
        prologue,
    } = *pass;
    let forward = p.accumulate == 0;
    // The gathers read the taps as they are: no 180-degree rotation for backward_data.
    let packing = Packing {
        flip: false,
        ..packing
    };
    let packed = pack_weight(enc, op, g, packing, weight)?;
    let (m, k) = (packing.out_c, packing.red_c * g.kh * g.kw);
    let cols = if forward {
        g.n * g.oh * g.ow
    } else {
        g.n * g.h * g.w
    };
    if m == 0 || cols == 0 {
        return Ok(());
    }
    let mut q = gemm_params(g, spec, read, written);
    q.m = m as u32;
    q.m_pad = to_u32(op, "packed weight", m.next_multiple_of(4))?;
    q.k = to_u32(op, "reduction length", k)?;
    q.cols = to_u32(op, "GEMM columns", cols)?;
    q.has_bias = p.has_bias;
    q.b_off = p.b_off;
    (q.sc_off, q.sh_off) = (p.sc_off, p.sh_off);
    let tile = GemmTile::for_rows(m);
    let grid = gemm_grid(op, groups(cols, tile.bn), groups(m, tile.bm))?;
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (&packed, &packed),
    };
    let kernel = if forward {
        ConvKernel::GemmForward
    } else {
        ConvKernel::GemmBackwardData
    };
    let (shader, entry) = kernel.entry(false);
    enc.launch(Launch {
        shader,
        entry,
        overrides: &tile.overrides(prologue.is_some()),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&q)),
            Arg::Read(read),
            Arg::Read(&packed),
            Arg::Read(bias.unwrap_or(&packed)),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(written),
        ],
        workgroups: grid,
    })
}

/// `gemm_backward_weight` splits its reduction until about this many workgroups run (a
/// few per multiprocessor of a large GPU), keeping every chunk at least
/// `GEMM_MIN_CHUNK_STAGES` stages long.
const GEMM_TARGET_WORKGROUPS: usize = 512;
const GEMM_MIN_CHUNK_STAGES: usize = 16;

/// Output tiles of `gemm_backward_weight` for d_w `[m, cols]`.
pub(super) fn gemm_blocks(m: usize, cols: usize) -> usize {
    let tile = GemmTile::for_rows(m);
    cols.div_ceil(tile.bn as usize) * m.div_ceil(tile.bm as usize)
}

/// The reduction chunks of `gemm_backward_weight` over `npix` pixels when d_w has `blocks`
/// output tiles: (pixels per chunk, a whole number of stages; chunks).
pub(super) fn gemm_weight_chunks(npix: usize, blocks: usize) -> (usize, usize) {
    let bk = GemmTile::WIDE.bk as usize;
    debug_assert_eq!(bk, GemmTile::NARROW.bk as usize);
    let stages = npix.div_ceil(bk).max(1);
    let max_chunks = stages.div_ceil(GEMM_MIN_CHUNK_STAGES);
    let want = GEMM_TARGET_WORKGROUPS
        .div_ceil(blocks.max(1))
        .clamp(1, max_chunks);
    let chunk_len = stages.div_ceil(want) * bk;
    (chunk_len, npix.div_ceil(chunk_len).max(1))
}

/// `gemm_backward_weight`: each chunk of `p.chunk_len` pixels writes its partial sums of
/// d_w (and of d_b) into `part` (layout as `backward_weight_partial`).
pub(super) fn gemm_backward_weight(
    enc: &mut Encoder,
    pass: &WeightPass,
    p: &WeightParams,
    part: &Tensor,
) -> Result<()> {
    let WeightPass {
        op,
        g,
        spec,
        d_y,
        x,
        prologue,
    } = *pass;
    let mut q = gemm_params(g, spec, x, d_y);
    let ncol = g.cin * g.kh * g.kw;
    q.m = g.cout as u32;
    q.k = to_u32(op, "pixels", g.n * g.oh * g.ow)?;
    q.cols = to_u32(op, "weight columns", ncol)?;
    (q.sc_off, q.sh_off) = (p.sc_off, p.sh_off);
    q.chunk_len = p.chunk_len;
    q.part_stride = p.part_stride;
    let tile = GemmTile::for_rows(g.cout);
    let col_blocks = groups(ncol, tile.bn);
    let row_blocks = groups(g.cout, tile.bm);
    let max = crate::gpu::MAX_WORKGROUPS_PER_DIM;
    if col_blocks > max || row_blocks > max || p.chunks > max {
        return Err(GpuError::Limit(format!(
            "{op}: grid [{col_blocks}, {row_blocks}, {}] exceeds 65,535 workgroups per dimension",
            p.chunks
        )));
    }
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (x, x),
    };
    let (shader, entry) = ConvKernel::GemmWeight.entry(false);
    enc.launch(Launch {
        shader,
        entry,
        overrides: &tile.overrides(prologue.is_some()),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&q)),
            Arg::Read(d_y),
            Arg::Read(x),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(part),
        ],
        workgroups: [col_blocks, row_blocks, p.chunks],
    })
}

/// Workgroup size of the Winograd transforms.
const WINOGRAD_WG: u32 = 64;
/// Floats of each of Winograd's three scratch tensors at most (4 MiB: the transformed
/// weights of a block of output channels, the transformed input of a chunk of images, their
/// products): Winograd runs block by block and chunk by chunk through the same three
/// tensors, so that its scratch stays small next to the activations (a pass's buffers are
/// held until its submission ends; ResNet-18's 512 -> 512 layers would otherwise hold
/// 16 MiB of transformed weights each).
const WINOGRAD_SCRATCH_FLOATS: usize = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WinogradParams {
    inp: ViewParams,
    out: ViewParams,
    n0: u32,
    h: u32,
    w: u32,
    out_c: u32,
    red_c: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles: u32,
    t_pad: u32,
    accumulate: u32,
    has_bias: u32,
    b_off: u32,
    sc_off: u32,
    sh_off: u32,
    w_off: u32,
    w_out_stride: u32,
    w_red_stride: u32,
    flip: u32,
    total: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<WinogradParams>() == 112);

/// Winograd F(2x2, 3x3) for a forward (overwrites y) or backward-data pass (adds into
/// d_x): per chunk of images the input transform, then per block of output channels the
/// weight transform, the 16 products on `conv1x1` and the output transform (see
/// winograd.wgsl).
fn winograd(enc: &mut Encoder, pass: &DataPass) -> Result<()> {
    let DataPass {
        op,
        g,
        p,
        packing,
        weight,
        read,
        written,
        bias,
        prologue,
        ..
    } = *pass;
    let (out_c, red_c) = (packing.out_c, packing.red_c);
    let (tiles_h, tiles_w) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let per_image = tiles_h * tiles_w;
    if out_c == 0 || g.n * per_image == 0 {
        return Ok(());
    }
    let hw = g.h * g.w;
    // Output channels per block (a multiple of 4), and images per chunk.
    let block = (WINOGRAD_SCRATCH_FLOATS / (16 * red_c.max(1)) / 4 * 4)
        .max(4)
        .min(out_c.next_multiple_of(4));
    let images = (WINOGRAD_SCRATCH_FLOATS / (16 * red_c.max(block) * per_image)).clamp(1, g.n);
    let written_view = ViewParams::of(written);
    let mut q = WinogradParams {
        inp: ViewParams::of(read),
        h: g.h as u32,
        w: g.w as u32,
        red_c: red_c as u32,
        tiles_h: tiles_h as u32,
        tiles_w: tiles_w as u32,
        accumulate: p.accumulate,
        has_bias: p.has_bias,
        sc_off: p.sc_off,
        sh_off: p.sh_off,
        w_out_stride: to_u32(op, "weight stride", packing.out_stride)?,
        w_red_stride: to_u32(op, "weight stride", packing.red_stride)?,
        flip: packing.flip as u32,
        ..bytemuck::Zeroable::zeroed()
    };
    let prologue_flag = ("PROLOGUE", if prologue.is_some() { 1.0 } else { 0.0 });
    // The products run as one conv1x1 over 16 images (one per e) of 1 x t_pad pixels, image
    // e with weight U[e]: its workgroups (lanes x 2 groups of 4 pixels) must not straddle
    // two images, so t_pad is a multiple of 8 * lanes.
    let padding = |tiles: usize| -> (u32, usize) {
        let lanes: u32 = [64, 32, 16, 8]
            .into_iter()
            .find(|&l| tiles.next_multiple_of(8 * l as usize) - tiles <= tiles / 8)
            .unwrap_or(8);
        (lanes, tiles.next_multiple_of(8 * lanes as usize))
    };
    // One set of scratch tensors, sized for the first (largest) chunk and block.
    let (_, t_pad_max) = padding(images.min(g.n) * per_image);
    to_u32(op, "Winograd scratch", 16 * red_c.max(block) * t_pad_max)?;
    let gpu = enc.gpu();
    let v = gpu.zeros(&[16, red_c.max(1), 1, t_pad_max], "conv2d Winograd input")?;
    let u = gpu.zeros(&[16 * red_c.max(1), block], "conv2d Winograd weight")?;
    let m = gpu.zeros(&[16, block, 1, t_pad_max], "conv2d Winograd products")?;
    // A view of 16 images of `channels` x t_pad at the start of a scratch tensor.
    let images16 = |channels: usize, t_pad: usize| ViewParams {
        offset: 0,
        batch_stride: (channels * t_pad) as u32,
        item: (channels * t_pad) as u32,
        _pad: 0,
    };
    for n0 in (0..g.n).step_by(images) {
        let tiles = images.min(g.n - n0) * per_image;
        let (lanes, t_pad) = padding(tiles);
        q.n0 = n0 as u32;
        q.tiles = tiles as u32;
        q.t_pad = t_pad as u32;
        if red_c > 0 {
            q.total = (red_c * tiles) as u32;
            let (scale, shift) = match prologue {
                Some(pr) => (pr.scale, pr.shift),
                None => (read, read),
            };
            enc.launch(Launch {
                shader: &WINOGRAD_SHADER,
                entry: "winograd_input",
                overrides: &[("WG", WINOGRAD_WG as f64), prologue_flag],
                args: &[
                    Arg::Uniform(bytemuck::bytes_of(&q)),
                    Arg::Read(read),
                    Arg::Read(scale),
                    Arg::Read(shift),
                    Arg::Write(&v),
                ],
                workgroups: Gpu::grid_1d(groups(red_c * tiles, WINOGRAD_WG)),
            })?;
        }
        for o0 in (0..out_c).step_by(block) {
            let oc = block.min(out_c - o0);
            let ocp = oc.next_multiple_of(4);
            q.out_c = oc as u32;
            q.w_off = to_u32(
                op,
                "weight offset",
                packing.w_off as usize + o0 * packing.out_stride,
            )?;
            q.b_off = p.b_off + o0 as u32;
            q.out = ViewParams {
                offset: to_u32(op, "output offset", written_view.offset as usize + o0 * hw)?,
                ..written_view
            };
            if red_c > 0 {
                q.total = (red_c * ocp) as u32;
                enc.launch(Launch {
                    shader: &WINOGRAD_SHADER,
                    entry: "winograd_weight",
                    overrides: &[("WG", WINOGRAD_WG as f64)],
                    args: &[
                        Arg::Uniform(bytemuck::bytes_of(&q)),
                        Arg::Read(weight),
                        Arg::Write(&u),
                    ],
                    workgroups: Gpu::grid_1d(groups(red_c * ocp, WINOGRAD_WG)),
                })?;
            }
            let product = Geom {
                n: 16,
                cin: red_c,
                h: 1,
                w: t_pad,
                cout: oc,
                oh: 1,
                ow: t_pad,
                kh: 1,
                kw: 1,
            };
            let pe = DataParams {
                inp: images16(red_c, t_pad),
                out: images16(oc, t_pad),
                dims: ConvDims::of(
                    &product,
                    Conv2dSpec {
                        stride: 1,
                        padding: 0,
                    },
                ),
                out_c: oc as u32,
                red_c: red_c as u32,
                w_image_stride: (red_c * ocp) as u32,
                ..bytemuck::Zeroable::zeroed()
            };
            let conv1x1 = ConvKernel::Conv1x1;
            let launch = Blocked {
                kernel: conv1x1,
                g: &product,
                p: &pe,
                packed: &u,
                read: &v,
                written: &m,
                bias: None,
                prologue: None,
                lanes: Some(lanes),
            };
            blocked(enc, op, launch)?;
            q.total = (oc * tiles) as u32;
            let (shader, entry) = ConvKernel::Winograd.entry(false);
            enc.launch(Launch {
                shader,
                entry,
                overrides: &[("WG", WINOGRAD_WG as f64)],
                args: &[
                    Arg::Uniform(bytemuck::bytes_of(&q)),
                    Arg::Read(&m),
                    Arg::Read(bias.unwrap_or(&m)),
                    Arg::Write(written),
                ],
                workgroups: Gpu::grid_1d(groups(oc * tiles, WINOGRAD_WG)),
            })?;
        }
    }
    Ok(())
}
