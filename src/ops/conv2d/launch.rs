//! Launchers of the implicit-GEMM kernels (`shaders/conv2d/gemm.wgsl`, shaped for discrete
//! GPUs: workgroup-memory tiles) and of the Winograd F(2x2, 3x3) kernel
//! (`shaders/conv2d/winograd.wgsl`). Each family has its own uniform; shapes and views are
//! checked by the pass functions in `mod.rs` before these run.

use super::{pack_weight, BnReluPrologue, Conv2dSpec, Geom, Params};
use crate::gpu::{to_u32, Arg, Encoder, Gpu, GpuError, Launch, Result, Shader, Tensor};
use crate::ops::ViewParams;

pub const GEMM_SHADER: Shader = shader!("conv2d_gemm" = ["conv2d/gemm"]);
pub const WINOGRAD_SHADER: Shader = shader!("conv2d_winograd" = ["conv2d/winograd"]);

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
    m: u32,
    m_pad: u32,
    k: u32,
    cols: u32,
    cin: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    has_bias: u32,
    b_off: u32,
    sc_off: u32,
    sh_off: u32,
    chunk_len: u32,
    part_stride: u32,
    _pad: [u32; 5],
}
const _: () = assert!(std::mem::size_of::<GemmParams>() == 128);

fn gemm_params(g: &Geom, spec: Conv2dSpec, inp: &Tensor, out: &Tensor) -> GemmParams {
    GemmParams {
        inp: ViewParams::of(inp),
        out: ViewParams::of(out),
        m: 0,
        m_pad: 0,
        k: 0,
        cols: 0,
        cin: g.cin as u32,
        h: g.h as u32,
        w: g.w as u32,
        oh: g.oh as u32,
        ow: g.ow as u32,
        kh: g.kh as u32,
        kw: g.kw as u32,
        stride: spec.stride as u32,
        pad: spec.padding as u32,
        has_bias: 0,
        b_off: 0,
        sc_off: 0,
        sh_off: 0,
        chunk_len: 0,
        part_stride: 0,
        _pad: [0; 5],
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

/// `gemm_forward` (overwrites y) or `gemm_backward_data` (adds into d_x). `p` is the
/// pass's conv2d uniform as `mod.rs` fills it for `pack_weight` (out_c, red_c, weight
/// strides); `read` is x or d_y, `written` y or d_x.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_data_pass(
    enc: &mut Encoder,
    op: &str,
    g: &Geom,
    spec: Conv2dSpec,
    p: &Params,
    weight: &Tensor,
    read: &Tensor,
    written: &Tensor,
    bias: Option<&Tensor>,
    prologue: Option<BnReluPrologue>,
) -> Result<()> {
    let forward = p.accumulate == 0;
    // The gathers read the taps as they are: no 180-degree rotation for backward_data.
    let packed = pack_weight(enc, op, g, &Params { flip: 0, ..*p }, weight)?;
    let (m, k) = (p.out_c as usize, p.red_c as usize * g.kh * g.kw);
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
    let grid = gemm_grid(
        op,
        super::super::groups(cols, tile.bn),
        super::super::groups(m, tile.bm),
    )?;
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (&packed, &packed),
    };
    enc.launch(Launch {
        shader: &GEMM_SHADER,
        entry: if forward {
            "gemm_forward"
        } else {
            "gemm_backward_data"
        },
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

/// `gemm_backward_weight`: each chunk of `chunk_len` pixels writes its partial sums of d_w
/// (and of d_b) into `part` (layout as `backward_weight_partial`).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_backward_weight(
    enc: &mut Encoder,
    op: &str,
    g: &Geom,
    spec: Conv2dSpec,
    p: &Params,
    (d_y, x): (&Tensor, &Tensor),
    prologue: Option<BnReluPrologue>,
    part: &Tensor,
) -> Result<()> {
    let mut q = gemm_params(g, spec, x, d_y);
    let ncol = g.cin * g.kh * g.kw;
    q.m = g.cout as u32;
    q.k = to_u32(op, "pixels", g.n * g.oh * g.ow)?;
    q.cols = to_u32(op, "weight columns", ncol)?;
    (q.sc_off, q.sh_off) = (p.sc_off, p.sh_off);
    q.chunk_len = p.chunk_len;
    q.part_stride = p.part_stride;
    let tile = GemmTile::for_rows(g.cout);
    let col_blocks = super::super::groups(ncol, tile.bn);
    let row_blocks = super::super::groups(g.cout, tile.bm);
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
    enc.launch(Launch {
        shader: &GEMM_SHADER,
        entry: "gemm_backward_weight",
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

/// Output channels per invocation of `winograd_3x3`, and its workgroup size.
const WINOGRAD_CH: u32 = 8;
const WINOGRAD_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct WinogradParams {
    inp: ViewParams,
    out: ViewParams,
    n: u32,
    h: u32,
    w: u32,
    out_c: u32,
    red_c: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles: u32,
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
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<WinogradParams>() == 112);

/// `winograd_3x3` for a forward (`p.accumulate == 0`: overwrites y) or backward-data pass
/// (adds into d_x); `p` as for [`gemm_data_pass`].
#[allow(clippy::too_many_arguments)]
pub(super) fn winograd(
    enc: &mut Encoder,
    op: &str,
    g: &Geom,
    p: &Params,
    weight: &Tensor,
    read: &Tensor,
    written: &Tensor,
    bias: Option<&Tensor>,
    prologue: Option<BnReluPrologue>,
) -> Result<()> {
    let (out_c, red_c) = (p.out_c as usize, p.red_c as usize);
    let (tiles_h, tiles_w) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let tiles = g.n * tiles_h * tiles_w;
    if out_c == 0 || tiles == 0 {
        return Ok(());
    }
    let ocp = out_c.next_multiple_of(4);
    let mut q = WinogradParams {
        inp: ViewParams::of(read),
        out: ViewParams::of(written),
        n: g.n as u32,
        h: g.h as u32,
        w: g.w as u32,
        out_c: out_c as u32,
        red_c: red_c as u32,
        tiles_h: tiles_h as u32,
        tiles_w: tiles_w as u32,
        tiles: to_u32(op, "Winograd tiles", tiles)?,
        accumulate: p.accumulate,
        has_bias: p.has_bias,
        b_off: p.b_off,
        sc_off: p.sc_off,
        sh_off: p.sh_off,
        w_off: p.w_off,
        w_out_stride: p.w_out_stride,
        w_red_stride: p.w_red_stride,
        flip: p.flip,
        total: to_u32(op, "Winograd weight", red_c * ocp)?,
        _pad: [0; 2],
    };
    to_u32(op, "Winograd weight", red_c * 16 * ocp)?;
    let u = enc
        .gpu()
        .zeros(&[red_c * 16, ocp], "conv2d Winograd weight")?;
    if red_c > 0 {
        enc.launch(Launch {
            shader: &WINOGRAD_SHADER,
            entry: "winograd_weight",
            overrides: &[("WG", WINOGRAD_WG as f64)],
            args: &[
                Arg::Uniform(bytemuck::bytes_of(&q)),
                Arg::Read(weight),
                Arg::Write(&u),
            ],
            workgroups: Gpu::grid_1d(super::super::groups(red_c * ocp, WINOGRAD_WG)),
        })?;
    }
    q.total = 0;
    let ch = if out_c <= 4 { 4 } else { WINOGRAD_CH };
    let grid = super::pixel_grid(
        op,
        super::super::groups(tiles, WINOGRAD_WG),
        super::super::groups(out_c, ch),
    )?;
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (&u, &u),
    };
    enc.launch(Launch {
        shader: &WINOGRAD_SHADER,
        entry: "winograd_3x3",
        overrides: &[
            ("WG", WINOGRAD_WG as f64),
            ("CH_TILE", ch as f64),
            ("PROLOGUE", if prologue.is_some() { 1.0 } else { 0.0 }),
        ],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&q)),
            Arg::Read(read),
            Arg::Read(&u),
            Arg::Read(bias.unwrap_or(&u)),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(written),
        ],
        workgroups: grid,
    })
}
