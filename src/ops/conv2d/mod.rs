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
pub mod shaders;
pub mod tape;

pub use launch::GemmTile;
pub use plan::{
    force, kernels_from_env, last_kernel, not_applicable, parse_forced, plan, AdapterClass,
    ConvKernel, ConvPass, ConvShape, Forced, UnknownKernel, FORCE_ENV,
};

use launch::{ConvHead, DataParams, DataPass, Packing, WeightParams, WeightPass};

use crate::gpu::Tensor;
use crate::gpu::{
    check_distinct, expect_contiguous, expect_shape, nchw, to_u32, Bound, Encoder, GpuError,
    Result, ShapeProblem,
};

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

/// Output height and width of a convolution; a typed error if the kernel does not fit
/// the padded input or the stride is 0.
pub fn output_size(
    spec: Conv2dSpec,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
) -> Result<(usize, usize)> {
    output_size_of("conv2d", "input", spec, [h, w], [kh, kw])
}

/// [`output_size`], with the op and the input tensor's name for the error.
fn output_size_of(
    op: &str,
    tensor: &str,
    spec: Conv2dSpec,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
) -> Result<(usize, usize)> {
    let (ph, pw) = (h + 2 * spec.padding, w + 2 * spec.padding);
    let problem = if spec.stride == 0 {
        let (name, value, bound) = ("stride", 0, Bound::AtLeast(1));
        ShapeProblem::Parameter { name, value, bound }
    } else if kh == 0 || kw == 0 {
        let (name, value, bound) = ("kernel size", kh.min(kw), Bound::AtLeast(1));
        ShapeProblem::Parameter { name, value, bound }
    } else if kh > ph || kw > pw {
        ShapeProblem::WindowTooLarge {
            tensor: tensor.into(),
            input: [h, w],
            kernel: [kh, kw],
            padding: spec.padding,
        }
    } else {
        return Ok(((ph - kh) / spec.stride + 1, (pw - kw) / spec.stride + 1));
    };
    Err(GpuError::shape(op, problem))
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
fn contiguous_offset(op: &str, what: &str, t: &Tensor, want: &[usize]) -> Result<u32> {
    expect_shape(op, what, &t.shape, want)?;
    expect_contiguous(op, &format!("{what} ({})", t.label()), t)?;
    to_u32(op, what, t.offset + t.numel())?;
    Ok(t.offset as u32)
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
        let problem = ShapeProblem::Mismatch {
            tensor: weight.0.into(),
            shape: weight.1.shape.clone(),
            dim: "input channels",
            other: x_name.into(),
            other_shape: x.shape.clone(),
        };
        return Err(GpuError::shape(op, problem));
    }
    let (oh, ow) = output_size_of(op, x_name, spec, [h, w], [kh, kw])?;
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

fn data_params(g: &Geom, spec: Conv2dSpec, inp: &Tensor, out: &Tensor) -> DataParams {
    DataParams {
        head: ConvHead::of(g, spec, inp, out),
        ..bytemuck::Zeroable::zeroed()
    }
}

fn weight_params(g: &Geom, spec: Conv2dSpec, x: &Tensor, d_y: &Tensor) -> WeightParams {
    WeightParams {
        head: ConvHead::of(g, spec, x, d_y),
        ..bytemuck::Zeroable::zeroed()
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

/// The planner's view of a pass over `a` (read) and `b` (written; for the weight gradient
/// x and d_y), `out` being the output-side activation (y or d_y), on `enc`'s adapter.
fn conv_shape(
    enc: &Encoder,
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
        adapter: AdapterClass::of(&enc.gpu().info),
    }
}

/// The kernel that runs `pass` on `shape`, and the padded plane ([`padded_plane`]) its
/// tensors are first copied to when that kernel is one of the fast ones (`conv1x1`,
/// `conv3x3`, `backward_weight_dot`, `backward_weight_rows`) and the planes break their
/// vec4 layout.
fn plan_pass(
    op: &str,
    pass: ConvPass,
    shape: &ConvShape,
    g: &Geom,
) -> Result<(ConvKernel, Option<(usize, usize)>)> {
    let kernel = plan::choose(op, pass, shape)?;
    let fast = matches!(
        kernel,
        ConvKernel::Conv1x1 | ConvKernel::Conv3x3 | ConvKernel::WeightDot | ConvKernel::WeightRows
    );
    let padded = padded_plane(g, shape.spec, shape.prologue).filter(|_| fast);
    Ok((kernel, padded))
}

/// Validates the optional prologue and returns (scale offset, shift offset).
fn prologue_offsets(op: &str, pro: Option<BnReluPrologue>, cin: usize) -> Result<(u32, u32)> {
    match pro {
        None => Ok((0, 0)),
        Some(pr) => Ok((
            contiguous_offset(op, "prologue scale", pr.scale, &[cin])?,
            contiguous_offset(op, "prologue shift", pr.shift, &[cin])?,
        )),
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
    let shape = conv_shape(enc, &g, spec, (x, y), y, prologue.is_some());
    let (kernel, padded) = plan_pass(OP, ConvPass::Forward, &shape, &g)?;
    if let Some(hw) = padded {
        check_distinct(OP, &[("y", y)], &[("x", x), ("weight", weight)])?;
        let xp = launch::pad_planes(enc, OP, x, hw)?;
        let yp = enc
            .gpu()
            .zeros(&[g.n, g.cout, hw.0, hw.1], "conv2d padded output")?;
        forward(enc, &yp, &xp, weight, bias, prologue, spec)?;
        return launch::repad(enc, OP, y, &yp, hw.0 * hw.1, false);
    }
    let w_off = contiguous_offset(OP, "weight", weight, &[g.cout, g.cin, g.kh, g.kw])?;
    let mut p = data_params(&g, spec, x, y);
    if let Some(b) = bias {
        p.b_off = contiguous_offset(OP, "bias", b, &[g.cout])?;
        p.has_bias = 1;
    }
    (p.sc_off, p.sh_off) = prologue_offsets(OP, prologue, g.cin)?;
    let mut ins = vec![("x", x), ("weight", weight)];
    ins.extend(bias.map(|b| ("bias", b)));
    if let Some(pr) = prologue {
        ins.extend([("prologue scale", pr.scale), ("prologue shift", pr.shift)]);
    }
    check_distinct(OP, &[("y", y)], &ins)?;
    p.out_c = g.cout as u32;
    p.red_c = g.cin as u32;
    let pass = DataPass {
        op: OP,
        g: &g,
        spec,
        p,
        packing: Packing::forward(&g, w_off),
        weight,
        read: x,
        written: y,
        bias,
        prologue,
    };
    launch::data_pass(enc, kernel, &pass)
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
    let shape = conv_shape(enc, &g, spec, (d_y, d_x), d_y, false);
    let (kernel, padded) = plan_pass(OP, ConvPass::BackwardData, &shape, &g)?;
    if let Some(hw) = padded {
        check_distinct(OP, &[("d_x", d_x)], &[("d_y", d_y), ("weight", weight)])?;
        let dyp = launch::pad_planes(enc, OP, d_y, hw)?;
        let dxp = enc
            .gpu()
            .zeros(&[g.n, g.cin, hw.0, hw.1], "conv2d padded d_x")?;
        backward_data(enc, &dxp, &dyp, weight, spec)?;
        return launch::repad(enc, OP, d_x, &dxp, hw.0 * hw.1, true);
    }
    let w_off = contiguous_offset(OP, "weight", weight, &[g.cout, g.cin, g.kh, g.kw])?;
    check_distinct(OP, &[("d_x", d_x)], &[("d_y", d_y), ("weight", weight)])?;
    let mut p = data_params(&g, spec, d_y, d_x);
    p.w_off = w_off;
    p.out_c = g.cin as u32;
    p.red_c = g.cout as u32;
    p.accumulate = 1;
    let pass = DataPass {
        op: OP,
        g: &g,
        spec,
        p,
        packing: Packing::backward_data(&g, w_off),
        weight,
        read: d_y,
        written: d_x,
        bias: None,
        prologue: None,
    };
    launch::data_pass(enc, kernel, &pass)
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
    let shape = conv_shape(enc, &g, spec, (x, d_y), d_y, prologue.is_some());
    let (kernel, padded) = plan_pass(OP, ConvPass::BackwardWeight, &shape, &g)?;
    if let Some(hw) = padded {
        check_distinct(OP, &[("d_weight", d_weight)], &[("x", x), ("d_y", d_y)])?;
        let xp = launch::pad_planes(enc, OP, x, hw)?;
        let dyp = launch::pad_planes(enc, OP, d_y, hw)?;
        return backward_weight(enc, d_weight, d_bias, &dyp, &xp, prologue, spec);
    }
    let w_off = contiguous_offset(OP, "d_weight", d_weight, &[g.cout, g.cin, g.kh, g.kw])?;
    let d_bias = match d_bias {
        Some(b) => Some((b, contiguous_offset(OP, "d_bias", b, &[g.cout])?)),
        None => None,
    };
    let mut ins = vec![("x", x), ("d_y", d_y)];
    if let Some(pr) = prologue {
        ins.extend([("prologue scale", pr.scale), ("prologue shift", pr.shift)]);
    }
    let mut written = vec![("d_weight", d_weight)];
    written.extend(d_bias.map(|(b, _)| ("d_bias", b)));
    check_distinct(OP, &written, &ins)?;
    let ncol = g.cin * g.kh * g.kw;
    let nw = g.cout * ncol;
    if nw == 0 {
        return Ok(());
    }
    let mut p = weight_params(&g, spec, x, d_y);
    (p.sc_off, p.sh_off) = prologue_offsets(OP, prologue, g.cin)?;
    let pass = WeightPass {
        op: OP,
        g: &g,
        spec,
        d_y,
        x,
        prologue,
    };
    let part = if kernel == ConvKernel::GemmWeight {
        let blocks = launch::gemm_blocks(g.cout, ncol);
        let (chunk_len, chunks) = launch::gemm_weight_chunks(g.n * g.oh * g.ow, blocks);
        let part = launch::partial_sums_scratch(enc, OP, &mut p, chunk_len, chunks, nw + g.cout)?;
        launch::gemm_backward_weight(enc, &pass, &p, &part)?;
        part
    } else {
        launch::weight_partial_sums(enc, kernel, &pass, &mut p)?
    };
    launch::reduce_chunks(enc, OP, &p, &part, (d_weight, w_off), d_bias)
}
