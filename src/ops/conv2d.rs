//! 2-D convolution (groups 1, dilation 1, zero padding), NCHW activations, OIHW weights:
//! `y = conv(x', w) + b`; backward `d_x += conv_transpose(d_y, w)`,
//! `d_w += sum d_y * x'`, `d_b += sum d_y`. `x'` is `x`, or `max(scale * x + shift, 0)` per
//! input channel when a [`BnReluPrologue`] is given (memory-efficient dense layers).
//!
//! See `docs/kernels/conv2d.md` for the dispatch layout.

use super::ViewParams;
use crate::gpu::{expect_shape, nchw, to_u32, Arg, Encoder, Gpu, GpuError, Launch, Result};
use crate::gpu::{Shader, Tensor};

pub const SHADER: Shader = shader!("conv2d");

/// Invocations per workgroup.
const WG: u32 = 64;
/// Channels per invocation (the workgroup-uniform axis); at most `MAX_CH` (16) in the shader.
const CH_TILE: u32 = 8;
/// Pixels (general forward / backward_data) or weight columns (backward_weight) per
/// invocation; at most `MAX_PX` (8) in the shader. The vec4 paths own 4 pixels per lane.
const PX_TILE: u32 = 2;
// Register arrays in the shader: MAX_CH = 16, MAX_PX = 8, vec4 tiles of at most 16.
const _: () = assert!(CH_TILE <= 16 && PX_TILE <= 8 && CH_TILE * PX_TILE <= 16);
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
/// the conv reads x' = max(scale[c] * x + shift[c], 0) instead of x, for in-bounds pixels only
/// (zero padding stays exactly 0). scale, shift: [Cin] tensors.
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

/// Which kernel a convolution takes (see the shader): the vec4 fast paths need
/// stride 1, "same" output size, H*W % 4 == 0 and 16-byte aligned views.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// 1x1, stride 1, padding 0.
    Conv1x1,
    /// 3x3, stride 1, padding 1.
    Conv3x3,
    /// Anything else.
    General,
}

fn aligned(t: &Tensor) -> bool {
    t.offset % 4 == 0 && t.batch_stride % 4 == 0
}

/// True when the kernel keeps the spatial size at stride 1 and the vec4 layout holds.
fn same_size_vec4(g: &Geom, spec: Conv2dSpec, a: &Tensor, b: &Tensor) -> bool {
    spec.stride == 1
        && g.kh == g.kw
        && g.kh == 2 * spec.padding + 1
        && (g.h * g.w) % 4 == 0
        && g.w >= 4
        && aligned(a)
        && aligned(b)
}

fn path(g: &Geom, spec: Conv2dSpec, a: &Tensor, b: &Tensor) -> Path {
    if !same_size_vec4(g, spec, a, b) {
        Path::General
    } else if g.kh == 1 {
        Path::Conv1x1
    } else if g.kh == 3 {
        Path::Conv3x3
    } else {
        Path::General
    }
}

/// Grid for `blocks` pixel blocks (folded over x and z) times `tiles` channel tiles (y).
fn pixel_grid(op: &str, blocks: u32, tiles: u32) -> Result<[u32; 3]> {
    let [gx, gz, _] = Gpu::grid_1d(blocks);
    if tiles > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        return Err(GpuError::Limit(format!(
            "{op}: {tiles} channel tiles in one grid dimension"
        )));
    }
    Ok([if blocks == 0 { 0 } else { gx }, tiles, gz])
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

fn overrides(prologue: bool) -> [(&'static str, f64); 4] {
    [
        ("WG", WG as f64),
        ("CH_TILE", CH_TILE as f64),
        ("PX_TILE", PX_TILE as f64),
        ("PROLOGUE", if prologue { 1.0 } else { 0.0 }),
    ]
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
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (x, x),
    };
    let (entry, workgroups) = pick(OP, true, &g, spec, x, y, g.cout)?;
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &overrides(prologue.is_some()),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Read(weight),
            Arg::Read(bias.unwrap_or(weight)),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(y),
        ],
        workgroups,
    })
}

/// Entry point and grid for forward (`is_forward`) or backward_data: `inp` is read,
/// `out` written, `out_c` channels are produced.
fn pick(
    op: &str,
    is_forward: bool,
    g: &Geom,
    spec: Conv2dSpec,
    inp: &Tensor,
    out: &Tensor,
    out_c: usize,
) -> Result<(&'static str, [u32; 3])> {
    let tiles = super::groups(out_c, CH_TILE);
    let entry = match path(g, spec, inp, out) {
        Path::Conv1x1 => "conv1x1",
        Path::Conv3x3 => "conv3x3",
        Path::General => {
            let (entry, pixels) = if is_forward {
                ("forward", g.n * g.oh * g.ow)
            } else {
                ("backward_data", g.n * g.h * g.w)
            };
            return Ok((
                entry,
                pixel_grid(op, super::groups(pixels, WG * PX_TILE), tiles)?,
            ));
        }
    };
    // Fast paths: one lane per group of 4 pixels.
    Ok((
        entry,
        pixel_grid(op, super::groups(g.n * g.h * g.w / 4, WG), tiles)?,
    ))
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
    let mut p = params(&g, d_y, d_x, spec);
    p.w_off = dense(OP, "weight", weight, &[g.cout, g.cin, g.kh, g.kw])?;
    not_aliased(OP, ("d_x", d_x), &[("d_y", d_y), ("weight", weight)])?;

    p.out_c = p.cin;
    p.red_c = p.cout;
    p.w_out_stride = (g.kh * g.kw) as u32;
    p.w_red_stride = (g.cin * g.kh * g.kw) as u32;
    p.flip = 1;
    p.accumulate = 1;
    let (entry, workgroups) = pick(OP, false, &g, spec, d_y, d_x, g.cin)?;
    // The general entry point binds (d_y, weight, d_x); the fast paths share forward's
    // layout, with the weight standing in for the unused bias / prologue bindings.
    let general = [
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(d_y),
        Arg::Read(weight),
        Arg::Write(d_x),
    ];
    let fast = [
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(d_y),
        Arg::Read(weight),
        Arg::Read(weight),
        Arg::Read(weight),
        Arg::Read(weight),
        Arg::Write(d_x),
    ];
    enc.launch(Launch {
        shader: &SHADER,
        entry,
        overrides: &overrides(false),
        args: if entry == "backward_data" {
            &general
        } else {
            &fast
        },
        workgroups,
    })
}

/// d_weight += sum_{n,oh,ow} d_y * x'  ;  d_bias += sum_{n,oh,ow} d_y   (if Some). x' recomputed from the prologue if given.
/// x and d_y may be channel-slice views. d_weight [Cout,Cin,KH,KW], d_bias [Cout] contiguous.
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
    let mut p = params(&g, x, d_y, spec);
    let vec4 = same_size_vec4(&g, spec, x, d_y);
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
    // The reduction axis: pixels, or groups of 4 pixels on the vec4 path.
    let npix = if vec4 {
        g.n * g.oh * g.ow / 4
    } else {
        g.n * g.oh * g.ow
    };
    let col_blocks = super::groups(ncol, WG * PX_TILE);
    let tiles = super::groups(g.cout, CH_TILE);
    if nw == 0 {
        return Ok(());
    }
    // Chunks: enough workgroups to fill the device, chunks not too short.
    let base = (col_blocks as usize * tiles as usize).max(1);
    let min_chunk = if vec4 { MIN_CHUNK / 4 } else { MIN_CHUNK };
    let max_chunks = npix.div_ceil(min_chunk).max(1);
    let want = (TARGET_WORKGROUPS as usize)
        .div_ceil(base)
        .clamp(1, max_chunks);
    let chunk_len = npix.div_ceil(want).max(1);
    let chunks = npix.div_ceil(chunk_len).max(1);
    let part_stride = nw + g.cout;
    p.chunk_len = to_u32(OP, "chunk length", chunk_len)?;
    p.chunks = to_u32(OP, "chunks", chunks)?;
    p.part_stride = to_u32(OP, "partial sums", part_stride)?;
    to_u32(OP, "partial sums", chunks * part_stride)?;
    if tiles > crate::gpu::MAX_WORKGROUPS_PER_DIM
        || col_blocks > crate::gpu::MAX_WORKGROUPS_PER_DIM
        || chunks > crate::gpu::MAX_WORKGROUPS_PER_DIM as usize
    {
        return Err(GpuError::Limit(format!(
            "{OP}: grid [{col_blocks}, {tiles}, {chunks}] exceeds 65,535 workgroups per dimension"
        )));
    }
    let gpu = enc.gpu();
    let part = gpu.zeros(&[chunks, part_stride], "conv2d d_weight partial sums")?;
    let (scale, shift) = match prologue {
        Some(pr) => (pr.scale, pr.shift),
        None => (x, x),
    };
    enc.launch(Launch {
        shader: &SHADER,
        entry: if vec4 {
            "backward_weight_partial_v4"
        } else {
            "backward_weight_partial"
        },
        overrides: &overrides(prologue.is_some()),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(d_y),
            Arg::Read(x),
            Arg::Read(scale),
            Arg::Read(shift),
            Arg::Write(&part),
        ],
        workgroups: [col_blocks, tiles, chunks as u32],
    })?;

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
        overrides: &overrides(false),
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(&part),
            Arg::Write(d_weight),
            Arg::Write(d_b),
        ],
        workgroups: Gpu::grid_1d(super::groups(total, WG)),
    })
}

/// f64 CPU reference (direct loops). Shapes: x `[n, cin, h, w]`, weight `[cout, cin, kh, kw]`.
pub mod reference {
    use super::{output_size, Conv2dSpec};

    /// (oh, ow) of the convolution; panics if the kernel does not fit (test helper).
    fn out_hw(xs: [usize; 4], ws: [usize; 4], spec: Conv2dSpec) -> (usize, usize) {
        assert_eq!(xs[1], ws[1], "conv2d reference: Cin mismatch");
        output_size(spec, xs[2], xs[3], ws[2], ws[3]).expect("conv2d reference: bad shapes")
    }

    /// Calls `f(y_index, x_index, w_index)` for every term of the convolution sum.
    fn for_each_term(
        xs: [usize; 4],
        ws: [usize; 4],
        spec: Conv2dSpec,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let [n, cin, h, w] = xs;
        let [cout, _, kh, kw] = ws;
        let (oh, ow) = out_hw(xs, ws, spec);
        let (s, pad) = (spec.stride as isize, spec.padding as isize);
        for b in 0..n {
            for co in 0..cout {
                for y in 0..oh {
                    for x in 0..ow {
                        let yi = ((b * cout + co) * oh + y) * ow + x;
                        for ci in 0..cin {
                            for i in 0..kh {
                                let ih = y as isize * s - pad + i as isize;
                                if ih < 0 || ih >= h as isize {
                                    continue;
                                }
                                for j in 0..kw {
                                    let iw = x as isize * s - pad + j as isize;
                                    if iw < 0 || iw >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * cin + ci) * h + ih as usize) * w + iw as usize;
                                    let wi = ((co * cin + ci) * kh + i) * kw + j;
                                    f(yi, xi, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `y = conv(x, w) + bias`, shape `[n, cout, oh, ow]`.
    pub fn forward(
        x: &[f64],
        x_shape: [usize; 4],
        w: &[f64],
        w_shape: [usize; 4],
        bias: Option<&[f64]>,
        spec: Conv2dSpec,
    ) -> Vec<f64> {
        let (oh, ow) = out_hw(x_shape, w_shape, spec);
        let (n, cout) = (x_shape[0], w_shape[0]);
        let mut y = vec![0.0; n * cout * oh * ow];
        if let Some(b) = bias {
            for (i, v) in y.iter_mut().enumerate() {
                *v = b[(i / (oh * ow)) % cout];
            }
        }
        for_each_term(x_shape, w_shape, spec, |yi, xi, wi| y[yi] += w[wi] * x[xi]);
        y
    }

    /// `d_x` (shape `x_shape`) for a zero accumulator.
    pub fn backward_data(
        d_y: &[f64],
        x_shape: [usize; 4],
        w: &[f64],
        w_shape: [usize; 4],
        spec: Conv2dSpec,
    ) -> Vec<f64> {
        let mut d_x = vec![0.0; x_shape.iter().product()];
        for_each_term(x_shape, w_shape, spec, |yi, xi, wi| {
            d_x[xi] += d_y[yi] * w[wi]
        });
        d_x
    }

    /// `(d_w, d_b)` for zero accumulators.
    pub fn backward_weight(
        d_y: &[f64],
        x: &[f64],
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        spec: Conv2dSpec,
    ) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow) = out_hw(x_shape, w_shape, spec);
        let cout = w_shape[0];
        let mut d_w = vec![0.0; w_shape.iter().product()];
        for_each_term(x_shape, w_shape, spec, |yi, xi, wi| {
            d_w[wi] += d_y[yi] * x[xi]
        });
        let mut d_b = vec![0.0; cout];
        for (i, g) in d_y.iter().enumerate() {
            d_b[(i / (oh * ow)) % cout] += g;
        }
        (d_w, d_b)
    }

    /// `x' = max(scale[c] * x + shift[c], 0)` for x of shape `[n, c, h, w]`.
    pub fn apply_prologue(x: &[f64], shape: [usize; 4], scale: &[f64], shift: &[f64]) -> Vec<f64> {
        let hw = shape[2] * shape[3];
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / hw) % shape[1];
                (scale[c] * v + shift[c]).max(0.0)
            })
            .collect()
    }
}
