//! The register-tiled weight-gradient kernels (`shaders/conv2d/backward_weight.wgsl`):
//! partial sums over chunks of the pixel axis, then one pass that adds the chunks in a
//! fixed order (no float atomics: the same run gives the same sums, bit for bit).

use super::layout::to_pixel_major;
use super::tiled::{lanes_for, tile_for_channels, Consts, Tile, WG};
use super::{prologue_bindings, ConvHead, WeightPass};
use crate::gpu::{to_u32, Arg, Encoder, GpuError, Kernel, Launch, Limit, Result, Tensor};
use crate::ops::conv2d::shaders::SHADER;
use crate::ops::conv2d::ConvKernel;
use crate::ops::groups;

/// `backward_weight_partial` (general): 8 output channels x 2 weight columns.
const GENERAL_BWD_WEIGHT: Tile = Tile { ch: 8, px: 2 };
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

/// The uniform of the weight-gradient kernels' first pass (partial sums per chunk).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(in crate::ops::conv2d) struct WeightParams {
    /// The views, `inp` x and `out` d_y, and the geometry.
    pub head: ConvHead,
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

/// The scratch of the weight gradient's partial sums, `[chunks, part_stride]`, with `p`'s
/// chunking fields set.
pub(in crate::ops::conv2d) fn partial_sums_scratch(
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
        let (what, count) = ("reduction chunks", chunks);
        return Err(GpuError::limit(op, Limit::GridDimension { what, count }));
    }
    enc.gpu()
        .zeros(&[chunks, part_stride], "conv2d d_weight partial sums")
}

/// Pass 1 of the weight gradient on the register-tiled kernels: partial sums of d_w and
/// d_b over chunks of the pixel axis.
pub(in crate::ops::conv2d) fn weight_partial_sums(
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
        let grid = [col_blocks as usize, tiles as usize, chunks];
        return Err(GpuError::limit(op, Limit::Workgroups { grid }));
    }
    let part = partial_sums_scratch(enc, op, p, chunk_len, chunks, g.cout * ncol + g.cout)?;
    let (scale, shift) = prologue_bindings(prologue, x);
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
        args: &Arg::bindings(&*p, &[d_y_read, x, scale, shift], &[&part]),
        workgroups: [col_blocks, tiles, chunks as u32],
    })?;
    Ok(part)
}

/// Pass 2 of the weight gradient: the chunks of `part` summed in a fixed order and added
/// into d_weight (at `w_off`) and d_bias.
pub(in crate::ops::conv2d) fn reduce_chunks(
    enc: &mut Encoder,
    op: &str,
    p: &WeightParams,
    part: &Tensor,
    (d_weight, w_off): (&Tensor, u32),
    d_bias: Option<(&Tensor, u32)>,
) -> Result<()> {
    let d = p.head.dims;
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
    let kernel = Kernel::new(&SHADER, "backward_weight_reduce", WG);
    enc.launch_threads(kernel, &q, &[part], &[d_weight, d_b], total)
}
