//! The register-tiled forward and backward-data kernels (`shaders/conv2d/common.wgsl`,
//! `forward.wgsl`, `backward_data.wgsl`): a lane holds a tile of channels times pixels in
//! registers and reads its weights from a packed copy (`layout`).

use super::layout::pack_weight;
use super::{packed_weight_reads, ConvHead, DataPass};
use crate::gpu::{Arg, Encoder, Gpu, GpuError, Launch, Limit, Result, Tensor};
use crate::ops::conv2d::{BnReluPrologue, ConvKernel, Geom};
use crate::ops::groups;

/// Invocations per workgroup.
pub(super) const WG: u32 = 64;

/// Register tile of one invocation: `ch` channels on the workgroup-uniform axis times `px`
/// elements on the per-lane axis. General `backward_data` / `backward_weight_partial`: `ch`
/// at most 16, `px` (pixels / weight columns) at most 8. The blocked kernels (`conv1x1`,
/// `conv3x3`, `forward_tiled`, `backward_weight_strided`): `ch` in
/// {4, 8, 12, 16}, `px` = blocks of 4 per lane in {1, 2}. `backward_weight_rows`: `ch` in
/// {4, 8, 12, 16}, `px` = kernel rows in {1, 2}.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tile {
    pub ch: u32,
    pub px: u32,
}

/// `forward_tiled` (the general forward): 16 output channels x 2 groups of 4 pixels.
const FORWARD_TILED: Tile = Tile { ch: 16, px: 2 };
/// `backward_data` (general): 8 input channels x 2 pixels.
const GENERAL_BWD_DATA: Tile = Tile { ch: 8, px: 2 };
/// `conv1x1` and `conv3x3`: 16 channels x 2 groups of 4 pixels.
const CONV1X1: Tile = Tile { ch: 16, px: 2 };
const CONV3X3: Tile = Tile { ch: 16, px: 2 };

/// The uniform of the forward and backward-data register-tiled kernels.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(in crate::ops::conv2d) struct DataParams {
    /// The views, `inp` x (forward) or d_y (backward_data) and `out` y (forward) or d_x
    /// (backward_data), and the geometry.
    pub head: ConvHead,
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

/// Grid for `tiles` channel tiles (x) times `blocks` pixel blocks (folded over y and z;
/// see `block_id` in the shader for why the tiles come first).
fn pixel_grid(op: &str, blocks: u32, tiles: u32) -> Result<[u32; 3]> {
    let [gx, gz, _] = Gpu::grid_1d(blocks);
    if tiles > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        let (what, count) = ("channel tiles", tiles as usize);
        return Err(GpuError::limit(op, Limit::GridDimension { what, count }));
    }
    Ok([tiles, if blocks == 0 { 0 } else { gx }, gz])
}

/// The override constants of one launch: the register tile, which of its fields the entry
/// point reads as `PX_TILE` or `PXV`, the workgroup size and the prologue flag. Constants an
/// entry point does not read stay at their defaults so that no duplicate pipelines appear.
#[derive(Clone, Copy)]
pub(super) struct Consts {
    pub tile: Tile,
    pub vec4_groups: bool,
    pub prologue: bool,
    pub wg: u32,
}

impl Consts {
    pub fn new(tile: Tile, prologue: bool) -> Self {
        Consts {
            tile,
            vec4_groups: false,
            prologue,
            wg: WG,
        }
    }

    pub fn list(self) -> [(&'static str, f64); 5] {
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

/// Runs `pass` on `kernel`, one of the register-tiled kernels.
pub(super) fn data_pass(enc: &mut Encoder, kernel: ConvKernel, pass: &DataPass) -> Result<()> {
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
            args: &Arg::bindings(&p, &[read, weight], &[written]),
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
pub(super) struct Blocked<'a> {
    pub kernel: ConvKernel,
    pub g: &'a Geom,
    pub p: &'a DataParams,
    pub packed: &'a Tensor,
    pub read: &'a Tensor,
    pub written: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub prologue: Option<BnReluPrologue<'a>>,
    /// Invocations per workgroup; `None`: as [`grid_and_constants`] chooses.
    pub lanes: Option<u32>,
}

/// Launches `launch`.
pub(super) fn blocked(enc: &mut Encoder, op: &str, launch: Blocked) -> Result<()> {
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
    let reads = packed_weight_reads(read, packed, bias, prologue);
    enc.launch(Launch {
        shader,
        entry,
        overrides: &consts.list(),
        args: &Arg::bindings(p, &reads, &[written]),
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
pub(super) fn tile_for_channels(t: Tile, channels: usize) -> Tile {
    Tile {
        ch: t.ch.min(channels.next_multiple_of(4).max(4) as u32),
        px: t.px,
    }
}

/// Lanes per workgroup for `units` lanes' worth of work: [`WG`], or fewer (down to 8) for
/// the small feature maps of late DenseNet layers. On lavapipe the idle lanes of a
/// workgroup still run the whole reduction loop, so a 2x2 map in a 64-lane workgroup would
/// waste most of the work. One pipeline per distinct size (at most four).
pub(super) fn lanes_for(units: usize) -> u32 {
    (units.max(1).next_power_of_two() as u32).clamp(8, WG)
}
