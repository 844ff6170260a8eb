//! Linear layer `y = x · Wᵀ + b` and plain matrix products.
//!
//! Every product here runs on one register-tiled GEMM kernel family (`shaders/linear.wgsl`):
//! `C (+)= A · B (+ bias)` with A and B given by offsets and strides, so transposed operands
//! cost nothing extra. When A and B are both stored k-contiguous (row-major A, transposed B)
//! with K, strides and offsets multiples of 4, `gemm_dot` reads both as `vec4` along k and
//! sums 4-term dot products; when A is stored k-major and B n-major with all sizes and
//! offsets multiples of 4, `gemm_v4` reads both as `vec4` along m and n; otherwise `gemm`
//! reads scalars with arbitrary strides. Sums over k run in order, so results are
//! bit-reproducible.

use super::groups;
use crate::gpu::{
    check_distinct, expect_contiguous, expect_shape, to_u32, Arg, Encoder, GpuError, Kernel,
    Launch, Result, Shader, ShapeProblem, Tensor,
};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("linear" = ["linear", "linear_uniform_loads"]);
/// linear.wgsl with the subgroup variant of gemm_v4 (adapters with subgroups of at least 8
/// invocations, see [`Encoder::subgroups`](crate::gpu::Encoder::subgroups)).
pub const SUBGROUP_SHADER: Shader = shader!("linear_subgroup" = ["linear", "linear_subgroup"]);

/// Invocations per workgroup along m and n (the grid is 2-D: x along n, y along m).
const WG_M: u32 = 4;
const WG_N: u32 = 8;
/// Rows (4, 8, 12, 16) and columns (4, 8) of C per invocation.
const TM: u32 = 16;
const TN: u32 = 8;
/// Workgroup size of the element-wise helpers (`transpose*`, `bias_backward`).
const WG: u32 = 256;
/// Invocations per workgroup of `gemm_dot`; each owns 8 columns x the workgroup's 16 rows.
const WG_DOT: u32 = 64;
/// `gemm_dot` needs at least this many columns: a workgroup owns 8 * WG_DOT of them, and
/// with fewer than half (the classifier's 4 outputs) its idle lanes would repeat the loads
/// of the last column.
const DOT_MIN_N: usize = 4 * WG_DOT as usize;
/// The backward transposes operands for `gemm_dot` only when the sum has at least this many
/// terms: below it (the classifier's batch of 8, its 4 outputs) the extra launches cost more
/// than the product.
const DOT_MIN_K: usize = 64;

const FLAG_ACCUMULATE: u32 = 1;
const FLAG_BIAS: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_sm: u32,
    a_sk: u32,
    b_off: u32,
    b_sk: u32,
    b_sn: u32,
    c_off: u32,
    c_sm: u32,
    bias_off: u32,
    flags: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

/// One GEMM operand: element (r, s) of the logical matrix lives at `off + r * s0 + s * s1`.
struct Operand<'a> {
    t: &'a Tensor,
    s0: usize,
    s1: usize,
}

/// Operand `t` with strides `s0` (rows) and `s1` (columns).
fn operand(t: &Tensor, s0: usize, s1: usize) -> Operand<'_> {
    Operand { t, s0, s1 }
}

/// The product's destination: C (m, n), row-major with `row_stride`, plus `bias` (n) when
/// given; added to C when `accumulate`, else written over it.
struct Product<'a> {
    c: &'a Tensor,
    row_stride: usize,
    bias: Option<&'a Tensor>,
    accumulate: bool,
}

impl<'a> Product<'a> {
    /// `C += A · B` into `c`, rows `row_stride` apart.
    fn added_to(c: &'a Tensor, row_stride: usize) -> Product<'a> {
        Product {
            c,
            row_stride,
            bias: None,
            accumulate: true,
        }
    }
}

/// `C (+)= A · B (+ bias)`, with A (m, k), B (k, n) and C (m, n) as `out` says.
fn gemm(
    enc: &mut Encoder,
    op: &str,
    out: Product,
    a: Operand,
    b: Operand,
    [m, n, k]: [usize; 3],
) -> Result<()> {
    let Product {
        c,
        row_stride: c_sm,
        bias,
        accumulate,
    } = out;
    if m == 0 || n == 0 {
        return Ok(());
    }
    for t in [a.t, b.t, c].into_iter().chain(bias) {
        // Every index the kernel forms stays below its buffer's length.
        to_u32(op, t.label(), t.storage.numel)?;
    }
    let flags =
        if accumulate { FLAG_ACCUMULATE } else { 0 } | if bias.is_some() { FLAG_BIAS } else { 0 };
    let p = Params {
        m: to_u32(op, "rows", m)?,
        n: to_u32(op, "columns", n)?,
        k: to_u32(op, "inner size", k)?,
        a_off: a.t.offset as u32,
        a_sm: a.s0 as u32,
        a_sk: a.s1 as u32,
        b_off: b.t.offset as u32,
        b_sk: b.s0 as u32,
        b_sn: b.s1 as u32,
        c_off: c.offset as u32,
        c_sm: c_sm as u32,
        bias_off: bias.map_or(0, |t| t.offset as u32),
        flags,
        _pad: [0; 3],
    };
    let quad = |v: usize| v % 4 == 0;
    let v4 = a.s0 == 1
        && quad(a.s1)
        && quad(a.t.offset)
        && quad(m)
        && b.s1 == 1
        && quad(b.s0)
        && quad(b.t.offset)
        && quad(n);
    let dot = a.s1 == 1
        && b.s0 == 1
        && quad(a.s0)
        && quad(b.s1)
        && quad(a.t.offset)
        && quad(b.t.offset)
        && quad(k)
        && n >= DOT_MIN_N;
    // The subgroup variants run one 16-row (TM-row) block per workgroup (see
    // linear_subgroup.wgsl).
    let (shader, entry, workgroups) = if dot {
        let grid = [groups(n, 8 * WG_DOT), groups(m, 16), 1];
        if enc.subgroups() {
            (&SUBGROUP_SHADER, "gemm_dot_sg", grid)
        } else {
            (&SHADER, "gemm_dot", grid)
        }
    } else if v4 && enc.subgroups() {
        let tiles_n = groups(n, TN) as usize;
        let grid = [groups(tiles_n, WG_N * WG_M), groups(m, TM), 1];
        (&SUBGROUP_SHADER, "gemm_v4_sg", grid)
    } else {
        let grid = [groups(n, TN * WG_N), groups(m, TM * WG_M), 1];
        (&SHADER, if v4 { "gemm_v4" } else { "gemm" }, grid)
    };
    enc.launch(Launch {
        shader,
        entry,
        overrides: &[
            ("WG_M", WG_M as f64),
            ("WG_N", WG_N as f64),
            ("TM", TM as f64),
            ("TN", TN as f64),
            ("WG_DOT", WG_DOT as f64),
        ],
        // Without a bias the kernel never reads binding 3; bind A there.
        args: &Arg::bindings(&p, &[a.t, b.t, bias.unwrap_or(a.t)], &[c]),
        workgroups,
    })
}

/// `aᵀ` (K, M) of the contiguous (M, K) `a` (M a multiple of 4), in a scratch tensor that
/// stays alive until the recorded work has run: it puts a product's left operand k-major
/// so that the product can run on `gemm_v4`, or its right operand k-contiguous for
/// `gemm_dot`.
fn transposed(enc: &mut Encoder, op: &str, a: &Tensor, m: usize, k: usize) -> Result<Tensor> {
    let a_t = enc.gpu().zeros(&[k, m], "aᵀ scratch")?;
    let p = Params {
        m: to_u32(op, "M", m)?,
        n: to_u32(op, "K", k)?,
        a_off: to_u32(op, "a offset", a.offset)?,
        ..Params::default()
    };
    to_u32(op, "a numel", m * k)?;
    // 4 x 4 blocks as vec4 when a's rows allow it (m is already a multiple of 4).
    let blocks = k % 4 == 0 && a.offset % 4 == 0;
    let entry = if blocks { "transpose_v4" } else { "transpose" };
    let threads = if blocks { m * k / 16 } else { m * k };
    let kernel = Kernel::new(&SHADER, entry, WG);
    enc.launch_threads(kernel, &p, &[a], &[&a_t], threads)?;
    Ok(a_t)
}

/// The dimensions of a contiguous 2-D tensor.
fn matrix(op: &str, what: &str, t: &Tensor) -> Result<[usize; 2]> {
    let [r, c] = t.shape[..] else {
        let problem = ShapeProblem::Layout {
            tensor: what.into(),
            shape: t.shape.clone(),
            layout: "2-D",
        };
        return Err(GpuError::shape(op, problem));
    };
    expect_contiguous(op, what, t)?;
    Ok([r, c])
}

/// Two matrices that disagree in `dim`.
fn mismatch(op: &str, t: (&str, &Tensor), dim: &'static str, other: (&str, &Tensor)) -> GpuError {
    let problem = ShapeProblem::Mismatch {
        tensor: t.0.into(),
        shape: t.1.shape.clone(),
        dim,
        other: other.0.into(),
        other_shape: other.1.shape.clone(),
    };
    GpuError::shape(op, problem)
}

/// Checks that `t` is a contiguous matrix of shape `shape`.
fn expect_matrix(op: &str, what: &str, t: &Tensor, shape: [usize; 2]) -> Result<()> {
    expect_shape(op, what, &t.shape, &shape)?;
    matrix(op, what, t)?;
    Ok(())
}

/// `[N, I, O]` of a layer's input x (N, I) and weight (O, I).
fn layer_dims(op: &str, x: &Tensor, weight: &Tensor) -> Result<[usize; 3]> {
    let [n, i] = matrix(op, "x", x)?;
    let [o, wi] = matrix(op, "weight", weight)?;
    if wi != i {
        return Err(mismatch(op, ("weight", weight), "in-features", ("x", x)));
    }
    Ok([n, i, o])
}

/// `y = x · Wᵀ + b` with x (N, I), weight (O, I), bias (O), y (N, O). Overwrites `y`.
pub fn forward(
    enc: &mut Encoder,
    y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    let op = "linear forward";
    let [n, i, o] = layer_dims(op, x, weight)?;
    if let Some(b) = bias {
        expect_shape(op, "bias", &b.shape, &[o])?;
    }
    expect_matrix(op, "y", y, [n, o])?;
    check_distinct(op, &[("y", y)], &[("x", x), ("weight", weight)])?;
    if let Some(b) = bias {
        check_distinct(op, &[("y", y)], &[("bias", b)])?;
    }
    let out = Product {
        c: y,
        row_stride: o,
        bias,
        accumulate: false,
    };
    gemm(
        enc,
        op,
        out,
        operand(x, i, 1),
        operand(weight, 1, i),
        [n, o, i],
    )
}

/// Accumulates: d_x += d_y · W (if Some), d_weight += d_yᵀ · x, d_bias += sum_n d_y (if Some).
pub fn backward(
    enc: &mut Encoder,
    d_x: Option<&Tensor>,
    d_weight: &Tensor,
    d_bias: Option<&Tensor>,
    d_y: &Tensor,
    x: &Tensor,
    weight: &Tensor,
) -> Result<()> {
    let op = "linear backward";
    let [n, i, o] = layer_dims(op, x, weight)?;
    expect_matrix(op, "d_y", d_y, [n, o])?;
    expect_matrix(op, "d_weight", d_weight, [o, i])?;
    let read = [("d_y", d_y), ("x", x), ("weight", weight)];
    check_distinct(op, &[("d_weight", d_weight)], &read)?;
    if let Some(d_x) = d_x {
        expect_matrix(op, "d_x", d_x, [n, i])?;
        check_distinct(op, &[("d_x", d_x)], &read)?;
    }
    if let Some(d_b) = d_bias {
        expect_shape(op, "d_bias", &d_b.shape, &[o])?;
        check_distinct(op, &[("d_bias", d_b)], &[("d_y", d_y)])?;
    }
    // d_weight (O, I) += d_yᵀ (O, N) · x (N, I). With N a multiple of 4 and at least
    // DOT_MIN_K, d_y and x are transposed first so that both operands are k-contiguous
    // (gemm_dot); otherwise d_y is read k-major in place: A(o, r) = d_y[r * O + o].
    let (d_y_t, x_t);
    let (a, b) = if n % 4 == 0 && n >= DOT_MIN_K && i >= DOT_MIN_N && o > 0 {
        d_y_t = transposed(enc, op, d_y, n, o)?;
        x_t = transposed(enc, op, x, n, i)?;
        (operand(&d_y_t, n, 1), operand(&x_t, 1, n))
    } else {
        (operand(d_y, 1, o), operand(x, i, 1))
    };
    gemm(enc, op, Product::added_to(d_weight, i), a, b, [o, i, n])?;
    if let Some(d_x) = d_x {
        // d_x (N, I) += d_y (N, O) · W (O, I). With O a multiple of 4 and at least
        // DOT_MIN_K, W is transposed first so that both operands are k-contiguous
        // (gemm_dot); otherwise, when the sizes allow the vec4 kernel, d_y is transposed
        // (k-major) for gemm_v4; else both are read in place.
        let (w_t, d_y_t);
        let (a, b) = if o % 4 == 0 && o >= DOT_MIN_K && i >= DOT_MIN_N && d_y.offset % 4 == 0 {
            w_t = transposed(enc, op, weight, o, i)?;
            (operand(d_y, o, 1), operand(&w_t, 1, o))
        } else if n % 4 == 0 && i % 4 == 0 && weight.offset % 4 == 0 && d_x.offset % 4 == 0 && o > 0
        {
            d_y_t = transposed(enc, op, d_y, n, o)?;
            (operand(&d_y_t, 1, n), operand(weight, i, 1))
        } else {
            (operand(d_y, o, 1), operand(weight, i, 1))
        };
        gemm(enc, op, Product::added_to(d_x, i), a, b, [n, i, o])?;
    }
    if let Some(d_b) = d_bias {
        let p = Params {
            m: to_u32(op, "N", n)?,
            n: to_u32(op, "O", o)?,
            a_off: to_u32(op, "d_y offset", d_y.offset)?,
            c_off: to_u32(op, "d_bias offset", d_b.offset)?,
            ..Params::default()
        };
        let kernel = Kernel::new(&SHADER, "bias_backward", WG);
        enc.launch_threads(kernel, &p, &[d_y], &[d_b], o)?;
    }
    Ok(())
}

/// Plain matrix product `c = a · b` (a (M, K), b (K, N), c (M, N)); overwrites `c`.
///
/// When K is a multiple of 4 and N at least `DOT_MIN_N`, `b` is first transposed into a
/// scratch buffer so that both operands are k-contiguous and the product runs on
/// `gemm_dot`; otherwise, when M and N are multiples of 4, `a` is transposed so the product
/// runs on `gemm_v4` (both about twice as fast as the scalar kernel on lavapipe).
pub fn matmul(enc: &mut Encoder, c: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    let op = "matmul";
    let [m, k] = matrix(op, "a", a)?;
    let [kb, n] = matrix(op, "b", b)?;
    if kb != k {
        return Err(mismatch(op, ("b", b), "inner size", ("a", a)));
    }
    expect_matrix(op, "c", c, [m, n])?;
    check_distinct(op, &[("c", c)], &[("a", a), ("b", b)])?;
    let (a_t, b_t);
    let (lhs, rhs) = if k % 4 == 0 && a.offset % 4 == 0 && n >= DOT_MIN_N && k > 0 {
        b_t = transposed(enc, op, b, k, n)?;
        (operand(a, k, 1), operand(&b_t, 1, k))
    } else if m % 4 == 0 && n % 4 == 0 && b.offset % 4 == 0 && m * k > 0 {
        a_t = transposed(enc, op, a, m, k)?;
        (operand(&a_t, 1, m), operand(b, n, 1))
    } else {
        (operand(a, k, 1), operand(b, n, 1))
    };
    let out = Product {
        c,
        row_stride: n,
        bias: None,
        accumulate: false,
    };
    gemm(enc, op, out, lhs, rhs, [m, n, k])
}
