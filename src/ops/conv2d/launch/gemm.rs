//! The implicit-GEMM kernels (`shaders/conv2d/gemm.wgsl`), shaped for discrete GPUs: each
//! workgroup stages tiles of the weight and of the im2col view in workgroup memory.

use super::layout::pack_weight;
use super::weight::WeightParams;
use super::{packed_weight_reads, prologue_bindings, ConvHead, DataPass, Packing, WeightPass};
use crate::gpu::{to_u32, Arg, Encoder, Gpu, GpuError, Launch, Limit, Result, Tensor};
use crate::ops::conv2d::{Conv2dSpec, ConvKernel, Geom};
use crate::ops::groups;

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
    /// The views, `inp` and `out` as in `DataParams` (x and d_y for the weight gradient),
    /// and the geometry.
    head: ConvHead,
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
        head: ConvHead::of(g, spec, inp, out),
        ..bytemuck::Zeroable::zeroed()
    }
}

/// Grid of `col_blocks` column blocks (folded over x and z) times `row_blocks` (y).
fn gemm_grid(op: &str, col_blocks: u32, row_blocks: u32) -> Result<[u32; 3]> {
    let [gx, gz, _] = Gpu::grid_1d(col_blocks);
    if row_blocks > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        let (what, count) = ("row blocks", row_blocks as usize);
        return Err(GpuError::limit(op, Limit::GridDimension { what, count }));
    }
    Ok([gx, row_blocks, gz])
}

/// `gemm_forward` (overwrites y) or `gemm_backward_data` (adds into d_x).
pub(super) fn data_pass(enc: &mut Encoder, pass: &DataPass) -> Result<()> {
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
    let reads = packed_weight_reads(read, &packed, bias, prologue);
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
        args: &Arg::bindings(&q, &reads, &[written]),
        workgroups: grid,
    })
}

/// `gemm_backward_weight` splits its reduction until about this many workgroups run (a
/// few per multiprocessor of a large GPU), keeping every chunk at least
/// `GEMM_MIN_CHUNK_STAGES` stages long.
const GEMM_TARGET_WORKGROUPS: usize = 512;
const GEMM_MIN_CHUNK_STAGES: usize = 16;

/// Output tiles of `gemm_backward_weight` for d_w `[m, cols]`.
pub(in crate::ops::conv2d) fn gemm_blocks(m: usize, cols: usize) -> usize {
    let tile = GemmTile::for_rows(m);
    cols.div_ceil(tile.bn as usize) * m.div_ceil(tile.bm as usize)
}

/// The reduction chunks of `gemm_backward_weight` over `npix` pixels when d_w has `blocks`
/// output tiles: (pixels per chunk, a whole number of stages; chunks).
pub(in crate::ops::conv2d) fn gemm_weight_chunks(npix: usize, blocks: usize) -> (usize, usize) {
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
pub(in crate::ops::conv2d) fn gemm_backward_weight(
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
        let grid = [col_blocks, row_blocks, p.chunks].map(|g| g as usize);
        return Err(GpuError::limit(op, Limit::Workgroups { grid }));
    }
    let (scale, shift) = prologue_bindings(prologue, x);
    let (shader, entry) = ConvKernel::GemmWeight.entry(false);
    enc.launch(Launch {
        shader,
        entry,
        overrides: &tile.overrides(prologue.is_some()),
        args: &Arg::bindings(&q, &[d_y, x, scale, shift], &[part]),
        workgroups: [col_blocks, row_blocks, p.chunks],
    })
}
