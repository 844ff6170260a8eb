use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Tensor};
use densenet_wgpu::ops::conv2d::{
    self, reference, AdapterClass, BnReluPrologue, Conv2dSpec, ConvKernel, ConvPass, ConvShape,
};

fn spec(stride: usize, padding: usize) -> Conv2dSpec {
    Conv2dSpec { stride, padding }
}

// ---------------------------------------------------------------------------------------
// Tier 1: the f64 reference backward against central finite differences.

fn check_reference(xs: [usize; 4], ws: [usize; 4], sp: Conv2dSpec, bias: bool, prologue: bool) {
    let nx: usize = xs.iter().product();
    let nw: usize = ws.iter().product();
    let x = rand(11, nx, -1.0, 1.0);
    let w = rand(12, nw, -1.0, 1.0);
    let b = rand(13, ws[0], -1.0, 1.0);
    let scale = rand(14, xs[1], 0.5, 1.5);
    let shift = rand(15, xs[1], -0.5, 0.5);
    // x' as the conv sees it (the prologue's kink is irrelevant: gradients below are
    // w.r.t. x' and w, never through the prologue).
    let xp = if prologue {
        reference::apply_prologue(&x, xs, &scale, &shift)
    } else {
        x.clone()
    };
    let bias_opt = |b: &[f64]| if bias { Some(b.to_vec()) } else { None };
    let (oh, ow) = conv2d::output_size(sp, xs[2], xs[3], ws[2], ws[3]).unwrap();
    let up = rand(16, xs[0] * ws[0] * oh * ow, -1.0, 1.0);
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        reference::forward(x, xs, w, ws, bias_opt(b).as_deref(), sp)
    };

    let d_x = reference::backward_data(&up, xs, &w, ws, sp);
    let (d_w, d_b) = reference::backward_weight(&up, &xp, xs, ws, sp);
    let num_x = numeric_grad(&xp, 1e-6, |v| dot(&fwd(v, &w, &b), &up));
    let num_w = numeric_grad(&w, 1e-6, |v| dot(&fwd(&xp, v, &b), &up));
    // The convolution is linear in each argument: central differences are exact up to
    // rounding of the f64 sums (~1e-16 * terms / 1e-6).
    assert_close("d_x'", &d_x, &num_x, 1e-7, 1e-6);
    assert_close("d_w", &d_w, &num_w, 1e-7, 1e-6);
    if bias {
        let num_b = numeric_grad(&b, 1e-6, |v| dot(&fwd(&xp, &w, v), &up));
        assert_close("d_b", &d_b, &num_b, 1e-7, 1e-6);
    }
}

#[test]
fn reference_backward_matches_finite_differences() {
    check_reference([2, 3, 5, 6], [4, 3, 3, 3], spec(1, 1), true, false);
    check_reference([1, 2, 7, 6], [3, 2, 3, 2], spec(2, 1), false, false);
    check_reference([2, 3, 4, 5], [2, 3, 1, 1], spec(1, 0), true, true);
    check_reference([1, 2, 9, 8], [2, 2, 5, 3], spec(2, 2), true, false);
}

// ---------------------------------------------------------------------------------------
// Tier 2: GPU against the f64 reference.

struct Case {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    prologue: bool,
    /// x is a channel prefix of a larger block; y, d_y, d_x are slices in the middle of
    /// larger buffers whose other channels must stay untouched.
    views: bool,
    seed: u64,
}

/// Values of a full buffer outside channels [c0, c0 + len) of an (n, c, h*w) layout.
fn outside(all: &[f64], n: usize, c: usize, hw: usize, c0: usize, len: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for b in 0..n {
        for ch in (0..c).filter(|ch| *ch < c0 || *ch >= c0 + len) {
            let s = (b * c + ch) * hw;
            out.extend_from_slice(&all[s..s + hw]);
        }
    }
    out
}

/// A view of `len` channels at `c0` of a [n, len + extra, h, w] buffer filled with `fill`,
/// or a plain tensor; returns (view, whole buffer, c0, channels of the whole buffer).
fn make_view(
    shape: [usize; 4],
    views: bool,
    c0: usize,
    extra: usize,
    fill: &[f64],
    label: &str,
) -> (Tensor, Tensor, usize, usize) {
    let [n, c, h, w] = shape;
    if !views {
        let t = upload(fill, &shape, label);
        return (t.clone(), t, 0, c);
    }
    let total = c + extra;
    let mut all = rand(99, n * total * h * w, -3.0, 3.0);
    // Put `fill` inside the slice.
    for b in 0..n {
        for ch in 0..c {
            let d = ((b * total + c0 + ch) * h * w)..((b * total + c0 + ch + 1) * h * w);
            let s = ((b * c + ch) * h * w)..((b * c + ch + 1) * h * w);
            all[d].copy_from_slice(&fill[s]);
        }
    }
    let whole = upload(&all, &[n, total, h, w], label);
    (whole.channels(c0, c).unwrap(), whole, c0, total)
}

/// Runs `c` with the subgroup kernel variants (where the adapter has them) and without.
fn run_case(c: &Case) {
    run_case_with(c, true);
    if gpu().subgroups() {
        run_case_with(c, false);
    }
}

fn run_case_with(c: &Case, subgroups: bool) {
    try_case(c, subgroups).unwrap();
}

/// [`run_case_with`], returning the first error of a launch instead of panicking (a forced
/// kernel that cannot run the case); the comparisons still panic.
fn try_case(c: &Case, subgroups: bool) -> densenet_wgpu::gpu::Result<()> {
    let sp = spec(c.stride, c.pad);
    let (oh, ow) = conv2d::output_size(sp, c.h, c.w, c.kh, c.kw).unwrap();
    let xs = [c.n, c.cin, c.h, c.w];
    let ws = [c.cout, c.cin, c.kh, c.kw];
    let ys = [c.n, c.cout, oh, ow];
    let (nx, nw, ny) = (
        xs.iter().product(),
        ws.iter().product(),
        ys.iter().product(),
    );
    let s = c.seed;
    let xv = rand(s, nx, -1.0, 1.0);
    let wv = rand(s + 1, nw, -1.0, 1.0);
    let bv = rand(s + 2, c.cout, -1.0, 1.0);
    let upv = rand(s + 3, ny, -1.0, 1.0);
    let scv = rand(s + 4, c.cin, 0.5, 1.5);
    let shv = rand(s + 5, c.cin, -0.5, 0.5);
    let prior_dx = rand(s + 6, nx, -1.0, 1.0);
    let prior_dw = rand(s + 7, nw, -1.0, 1.0);
    let prior_db = rand(s + 8, c.cout, -1.0, 1.0);

    let (x, _, _, _) = make_view(xs, c.views, 0, 3, &xv, "x block");
    let (y, y_all, y0, yc) = make_view(ys, c.views, 2, 5, &vec![0.0; ny], "y block");
    let (d_y, _, _, _) = make_view(ys, c.views, 1, 2, &upv, "d_y block");
    let (d_x, dx_all, dx0, dxc) = make_view(xs, c.views, 3, 4, &prior_dx, "d_x block");
    let y_before = download(&y_all);
    let dx_before = download(&dx_all);
    let w = upload(&wv, &ws, "w");
    let b = upload(&bv, &[c.cout], "b");
    let scale = upload(&scv, &[c.cin], "scale");
    let shift = upload(&shv, &[c.cin], "shift");
    let d_w = upload(&prior_dw, &ws, "d_w");
    let d_b = upload(&prior_db, &[c.cout], "d_b");
    let pro = BnReluPrologue {
        scale: &scale,
        shift: &shift,
    };
    let pro = c.prologue.then_some(pro);
    let bias = c.bias.then_some(&b);
    let d_bias = c.bias.then_some(&d_b);

    let mut launched = Ok(());
    run(|e| {
        if !subgroups {
            e.disable_subgroups();
        }
        launched = conv2d::forward(e, &y, &x, &w, bias, pro, sp)
            .and_then(|_| conv2d::backward_data(e, &d_x, &d_y, &w, sp))
            .and_then(|_| conv2d::backward_weight(e, &d_w, d_bias, &d_y, &x, pro, sp));
    });
    launched?;

    // The reference sees exactly the f32 values the GPU saw.
    let r = |v: &[f64]| f64s(&f32s(v));
    let (xr, wr, br, upr) = (r(&xv), r(&wv), r(&bv), r(&upv));
    let xp = if c.prologue {
        reference::apply_prologue(&xr, xs, &r(&scv), &r(&shv))
    } else {
        xr
    };
    let want_y = reference::forward(&xp, xs, &wr, ws, c.bias.then_some(&br[..]), sp);
    let want_dx: Vec<f64> = reference::backward_data(&upr, xs, &wr, ws, sp)
        .iter()
        .zip(r(&prior_dx))
        .map(|(g, p)| g + p)
        .collect();
    let (gw, gb) = reference::backward_weight(&upr, &xp, xs, ws, sp);
    let want_dw: Vec<f64> = gw.iter().zip(r(&prior_dw)).map(|(g, p)| g + p).collect();
    let want_db: Vec<f64> = gb.iter().zip(r(&prior_db)).map(|(g, p)| g + p).collect();

    // Tolerances: each output is an f32 sum of K products of values in [-1.5, 1.5]
    // (K = Cin*KH*KW for y, ~Cout*KH*KW/stride^2 for d_x, N*OH*OW for d_w, d_b). Rounding
    // errors of a K-term f32 sum grow like sqrt(K) * eps * |partial sums| (~sqrt(K)), so
    // atol = 1e-5 * sqrt(K) leaves > 10x headroom (eps = 6e-8) while a dropped term
    // (~0.1..1) is far outside it; rtol 1e-4 covers the f32 rounding of the prologue.
    let tol = |k: usize| 1e-5 * (k.max(1) as f64).sqrt();
    assert_close("y", &download(&y), &want_y, tol(c.cin * c.kh * c.kw), 1e-4);
    assert_close(
        "d_x",
        &download(&d_x),
        &want_dx,
        tol(c.cout * c.kh * c.kw),
        1e-4,
    );
    assert_close("d_w", &download(&d_w), &want_dw, tol(c.n * oh * ow), 1e-4);
    if c.bias {
        assert_close("d_b", &download(&d_b), &want_db, tol(c.n * oh * ow), 1e-4);
    } else {
        assert_close("d_b untouched", &download(&d_b), &r(&prior_db), 0.0, 0.0);
    }
    if c.views {
        let hw_y = oh * ow;
        let got = outside(&download(&y_all), c.n, yc, hw_y, y0, c.cout);
        let want = outside(&y_before, c.n, yc, hw_y, y0, c.cout);
        assert_close("y block outside the slice", &got, &want, 0.0, 0.0);
        let got = outside(&download(&dx_all), c.n, dxc, c.h * c.w, dx0, c.cin);
        let want = outside(&dx_before, c.n, dxc, c.h * c.w, dx0, c.cin);
        assert_close("d_x block outside the slice", &got, &want, 0.0, 0.0);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn case(
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> Case {
    Case {
        n,
        cin,
        h,
        w,
        cout,
        kh: k.0,
        kw: k.1,
        stride,
        pad,
        bias: false,
        prologue: false,
        views: false,
        seed: 100,
    }
}

#[test]
fn gpu_stem_7x7_stride2_pad3() {
    run_case(&Case {
        bias: true,
        ..case(2, 3, 19, 23, 5, (7, 7), 2, 3)
    });
}

#[test]
fn gpu_3x3_odd_channels_on_views() {
    run_case(&Case {
        views: true,
        seed: 200,
        ..case(2, 13, 11, 9, 7, (3, 3), 1, 1)
    });
}

#[test]
fn gpu_1x1_with_bias_and_prologue() {
    run_case(&Case {
        bias: true,
        prologue: true,
        seed: 300,
        ..case(2, 37, 9, 13, 19, (1, 1), 1, 0)
    });
}

#[test]
fn gpu_3x3_stride2_pad1() {
    run_case(&Case {
        seed: 400,
        ..case(2, 6, 12, 13, 10, (3, 3), 2, 1)
    });
}

#[test]
fn gpu_non_square_5x3_kernel() {
    run_case(&Case {
        bias: true,
        seed: 500,
        ..case(2, 5, 10, 8, 9, (5, 3), 1, 2)
    });
}

#[test]
fn gpu_2x2_stride2_pad0_views() {
    run_case(&Case {
        views: true,
        seed: 600,
        ..case(3, 8, 10, 11, 12, (2, 2), 2, 0)
    });
}

#[test]
fn gpu_many_workgroups_with_remainders() {
    // 3*23*21 = 1449 pixels: 12 blocks of 128 (last partial); 35 channels: 5 tiles of 8
    // (last partial); d_w columns 40*9 = 360: 3 blocks of 128 (last partial).
    run_case(&Case {
        bias: true,
        prologue: true,
        views: true,
        seed: 700,
        ..case(3, 40, 23, 21, 35, (3, 3), 1, 1)
    });
}

// The vec4 fast paths (H*W % 4 == 0, W >= 4, 16-byte aligned views): conv1x1, conv3x3
// and backward_weight_partial_v4.

#[test]
fn gpu_fast_1x1_views_bias_prologue() {
    run_case(&Case {
        bias: true,
        prologue: true,
        views: true,
        seed: 900,
        ..case(2, 37, 8, 10, 19, (1, 1), 1, 0)
    });
}

#[test]
fn gpu_fast_3x3_views_bias_prologue() {
    // W = 9: groups of 4 flat pixels straddle rows.
    run_case(&Case {
        bias: true,
        prologue: true,
        views: true,
        seed: 1000,
        ..case(3, 13, 12, 9, 7, (3, 3), 1, 1)
    });
}

#[test]
fn gpu_fast_3x3_many_workgroups() {
    // 2*20*14/4 = 140 pixel groups: 3 workgroups of 64 (last partial) x 5 channel tiles.
    run_case(&Case {
        views: true,
        seed: 1100,
        ..case(2, 21, 20, 14, 35, (3, 3), 1, 1)
    });
    // 12 and 10 output channels: the channel tile narrows to 12 (forward, weight gradient).
    run_case(&Case {
        bias: true,
        seed: 1110,
        ..case(2, 21, 20, 14, 12, (3, 3), 1, 1)
    });
    run_case(&Case {
        prologue: true,
        seed: 1120,
        ..case(3, 18, 6, 8, 10, (1, 1), 1, 0)
    });
}

#[test]
fn gpu_same_size_5x5_and_narrow_fallback() {
    // 5x5 / pad 2: general forward, vec4 backward_weight with 5 taps per row.
    run_case(&Case {
        bias: true,
        seed: 1200,
        ..case(2, 5, 8, 12, 6, (5, 5), 1, 2)
    });
    // W = 2 < 4: the 1x1 still takes the vec4 paths (it only sees H*W = 16).
    run_case(&Case {
        views: true,
        seed: 1300,
        ..case(2, 4, 8, 2, 3, (1, 1), 1, 0)
    });
}

#[test]
fn gpu_chunked_weight_reduction() {
    // 2*40*37 = 2960 pixels with a single workgroup of weight columns: split into chunks.
    run_case(&Case {
        bias: true,
        seed: 800,
        ..case(2, 5, 40, 37, 3, (1, 1), 1, 0)
    });
    run_case(&Case {
        seed: 810,
        ..case(2, 3, 60, 50, 4, (7, 7), 2, 3)
    });
    // The vec4 path: 2*40*36/4 = 720 pixel groups in 3 chunks.
    run_case(&Case {
        bias: true,
        seed: 820,
        ..case(2, 3, 40, 36, 4, (3, 3), 1, 1)
    });
}

#[test]
fn gpu_strided_weight_gradient_prologue_views() {
    // 3x3 / stride 2: OH*OW = 8*9 = 72 is a multiple of 4, so backward_weight takes
    // backward_weight_strided (pixel-major d_y); 21 output channels (tiles of 16 + 5),
    // 8*9 = 72 weight columns = 18 blocks of 4 (workgroups of 16 lanes, the second
    // partial). The forward takes forward_tiled.
    run_case(&Case {
        bias: true,
        prologue: true,
        views: true,
        seed: 1400,
        ..case(2, 8, 16, 18, 21, (3, 3), 2, 1)
    });
    // 5x5 same-size: also backward_weight_strided; 2*40*36 = 2880 pixels in 3 chunks.
    run_case(&Case {
        bias: true,
        prologue: true,
        seed: 1410,
        ..case(2, 3, 40, 36, 6, (5, 5), 1, 2)
    });
    // Pixel counts not a multiple of 8: 6*6 = 36 in one chunk, 38*54 = 2052 in 3 chunks of
    // 684. The pixels past a chunk's last multiple of 8 load d_y directly; the rest share it
    // through subgroup shuffles where the adapter has them.
    run_case(&Case {
        seed: 1420,
        ..case(1, 3, 11, 11, 7, (3, 3), 2, 1)
    });
    run_case(&Case {
        seed: 1430,
        ..case(1, 2, 75, 107, 5, (3, 3), 2, 1)
    });
}

#[test]
fn backward_weight_is_deterministic() {
    // (H, W, K, stride, pad, forced kernel): 37x31 3x3 takes backward_weight_partial,
    // 36x32 3x3 backward_weight_rows, 36x32 1x1 backward_weight_dot, 72x64 3x3/s2
    // backward_weight_strided, and 37x31 3x3 once more on the implicit GEMM (9 chunks);
    // all reduce in chunks.
    for (h, w, k, s, pad, forced) in [
        (37, 31, 3, 1, 1, None),
        (36, 32, 3, 1, 1, None),
        (36, 32, 1, 1, 0, None),
        (72, 64, 3, 2, 1, None),
        (37, 31, 3, 1, 1, Some(ConvKernel::GemmWeight)),
    ] {
        let _forced = forced.map(|k| conv2d::force(&[k]));
        let sp = spec(s, pad);
        let (xs, ws) = ([2, 6, h, w], [5, 6, k, k]);
        let (oh, ow) = conv2d::output_size(sp, h, w, k, k).unwrap();
        let x = upload(&rand(1, xs.iter().product(), -1.0, 1.0), &xs, "x");
        let d_y = upload(&rand(2, 2 * 5 * oh * ow, -1.0, 1.0), &[2, 5, oh, ow], "d_y");
        let mut results = Vec::new();
        for _ in 0..2 {
            let d_w = gpu().zeros(&ws, "d_w").unwrap();
            let d_b = gpu().zeros(&[5], "d_b").unwrap();
            run(|e| conv2d::backward_weight(e, &d_w, Some(&d_b), &d_y, &x, None, sp).unwrap());
            let mut v = gpu().download(&d_w).unwrap();
            v.extend(gpu().download(&d_b).unwrap());
            results.push(v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>());
        }
        assert_eq!(results[0], results[1], "{h}x{w}");
        if let Some(k) = forced {
            assert_eq!(conv2d::last_kernel(ConvPass::BackwardWeight), Some(k));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tier 3: typed errors.

#[track_caller]
fn expect_shape_err(r: densenet_wgpu::gpu::Result<()>, needle: &str) {
    match r {
        Err(GpuError::Shape(m)) => assert!(m.to_string().contains(needle), "{m}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn wrong_shapes_are_typed_errors() {
    let g = gpu();
    let sp = spec(1, 1);
    let x = g.zeros(&[2, 4, 5, 5], "x").unwrap();
    let w = g.zeros(&[3, 4, 3, 3], "w").unwrap();
    let y = g.zeros(&[2, 3, 5, 5], "y").unwrap();
    let mut enc = g.encoder("bad");
    let e = &mut enc;

    let w_bad = g.zeros(&[3, 5, 3, 3], "w_bad").unwrap();
    expect_shape_err(
        conv2d::forward(e, &y, &x, &w_bad, None, None, sp),
        "input channels",
    );
    expect_shape_err(
        conv2d::backward_data(e, &x, &y, &w_bad, sp),
        "input channels",
    );
    let d_w_bad = g.zeros(&[3, 5, 3, 3], "d_w_bad").unwrap();
    expect_shape_err(
        conv2d::backward_weight(e, &d_w_bad, None, &y, &x, None, sp),
        "input channels",
    );

    let y_bad = g.zeros(&[2, 3, 4, 5], "y_bad").unwrap();
    expect_shape_err(conv2d::forward(e, &y_bad, &x, &w, None, None, sp), "y");
    expect_shape_err(conv2d::backward_data(e, &x, &y_bad, &w, sp), "d_y");

    let b_bad = g.zeros(&[4], "b_bad").unwrap();
    expect_shape_err(
        conv2d::forward(e, &y, &x, &w, Some(&b_bad), None, sp),
        "bias",
    );
    expect_shape_err(
        conv2d::backward_weight(e, &w, Some(&b_bad), &y, &x, None, sp),
        "d_bias",
    );

    let sc_bad = g.zeros(&[3], "scale_bad").unwrap();
    let pro = Some(BnReluPrologue {
        scale: &sc_bad,
        shift: &sc_bad,
    });
    expect_shape_err(conv2d::forward(e, &y, &x, &w, None, pro, sp), "prologue");

    let x3 = g.zeros(&[4, 5, 5], "x3").unwrap();
    expect_shape_err(conv2d::forward(e, &y, &x3, &w, None, None, sp), "4-D");

    // An 8x8 kernel does not fit a 5x5 input padded by 1.
    let w8 = g.zeros(&[3, 4, 8, 8], "w8").unwrap();
    expect_shape_err(
        conv2d::forward(e, &y, &x, &w8, None, None, sp),
        "larger than",
    );
    assert!(matches!(
        conv2d::output_size(sp, 5, 5, 8, 8),
        Err(GpuError::Shape(_))
    ));
    assert_eq!(
        conv2d::output_size(spec(2, 3), 224, 224, 7, 7).unwrap(),
        (112, 112)
    );

    // Writing into the buffer being read is rejected (it would be a wgpu usage conflict).
    let block = g.zeros(&[2, 7, 5, 5], "block").unwrap();
    let (xb, yb) = (block.channels(0, 4).unwrap(), block.channels(4, 3).unwrap());
    expect_shape_err(conv2d::forward(e, &yb, &xb, &w, None, None, sp), "share");
}

// ---------------------------------------------------------------------------------------
// The planner and forced kernels.

/// docs/kernels.md's dispatch table: shape and adapter class (subgroups or not) -> kernel
/// and entry point, for every pass.
#[test]
fn planner_follows_the_docs_table() {
    use ConvKernel::*;
    let shape = |hw: (usize, usize), k: usize, stride: usize, pad: usize| ConvShape {
        n: 2,
        cin: 8,
        h: hw.0,
        w: hw.1,
        cout: 12,
        kh: k,
        kw: k,
        spec: spec(stride, pad),
        views_aligned: true,
        out_aligned: true,
        prologue: false,
        adapter: AdapterClass::Gpu,
    };
    let misaligned = ConvShape {
        views_aligned: false,
        out_aligned: false,
        ..shape((8, 8), 1, 1, 0)
    };
    let prologue_odd = ConvShape {
        prologue: true,
        ..shape((5, 5), 3, 1, 1)
    };
    let cpu = |s: ConvShape| ConvShape {
        adapter: AdapterClass::Cpu,
        ..s
    };
    let channels = |s: ConvShape, cin: usize, cout: usize| ConvShape { cin, cout, ..s };
    // (shape, forward, backward-data, backward-weight); GPU adapters first.
    let table = [
        (shape((8, 8), 1, 1, 0), Conv1x1, Conv1x1, WeightDot),
        (shape((3, 5), 1, 1, 0), Conv1x1, Conv1x1, WeightDot), // odd plane: zero-padded copy
        (shape((4, 8), 3, 1, 1), Conv3x3, Conv3x3, WeightRows),
        (shape((5, 5), 3, 1, 1), Conv3x3, Conv3x3, WeightRows), // zero rows added
        (prologue_odd, ForwardTiled, Conv3x3, WeightPartial),
        (
            shape((8, 8), 5, 1, 2),
            ForwardTiled,
            BackwardData,
            WeightStrided,
        ),
        (
            shape((8, 8), 3, 2, 1),
            ForwardTiled,
            BackwardData,
            WeightStrided,
        ),
        (
            shape((224, 224), 7, 2, 3),
            ForwardTiled,
            BackwardData,
            WeightStrided,
        ), // the stem
        (
            shape((7, 7), 3, 2, 1),
            ForwardTiled,
            BackwardData,
            WeightStrided,
        ), // 4x4 output
        (
            shape((9, 9), 3, 2, 1),
            ForwardTiled,
            BackwardData,
            WeightPartial,
        ), // 5x5 output
        (misaligned, ForwardTiled, BackwardData, WeightPartial),
        (
            channels(shape((16, 16), 3, 1, 1), 128, 128),
            Conv3x3,
            Conv3x3,
            WeightRows,
        ),
        // CPU adapters: Winograd for 3x3 / stride 1 on planes of at most 64 pixels with 32
        // channels or more on both sides, and of at most 256 with 128 or more.
        (cpu(shape((8, 8), 1, 1, 0)), Conv1x1, Conv1x1, WeightDot),
        (cpu(shape((8, 8), 3, 1, 1)), Conv3x3, Conv3x3, WeightRows),
        (
            cpu(channels(shape((8, 8), 3, 1, 1), 32, 32)),
            Winograd,
            Winograd,
            WeightRows,
        ),
        (
            cpu(channels(shape((8, 8), 3, 1, 1), 48, 12)),
            Conv3x3,
            Conv3x3,
            WeightRows,
        ),
        (
            cpu(channels(shape((5, 5), 3, 1, 1), 128, 32)),
            Winograd,
            Winograd,
            WeightRows,
        ),
        (
            cpu(channels(prologue_odd, 32, 40)),
            Winograd,
            Winograd,
            WeightPartial,
        ),
        (
            cpu(channels(shape((12, 8), 3, 1, 1), 32, 32)),
            Conv3x3,
            Conv3x3,
            WeightRows,
        ),
        (
            cpu(channels(shape((16, 16), 3, 1, 1), 128, 128)),
            Winograd,
            Winograd,
            WeightRows,
        ),
        (
            cpu(channels(shape((16, 16), 3, 1, 1), 128, 32)),
            Conv3x3,
            Conv3x3,
            WeightRows,
        ),
        (
            cpu(channels(shape((16, 20), 3, 1, 1), 128, 128)),
            Conv3x3,
            Conv3x3,
            WeightRows,
        ),
        (
            cpu(shape((8, 8), 3, 2, 1)),
            ForwardTiled,
            BackwardData,
            WeightStrided,
        ),
    ];
    for (s, fwd, bwd_data, bwd_weight) in table {
        assert_eq!(conv2d::plan(ConvPass::Forward, &s), fwd, "forward {s:?}");
        assert_eq!(
            conv2d::plan(ConvPass::BackwardData, &s),
            bwd_data,
            "backward_data {s:?}"
        );
        assert_eq!(
            conv2d::plan(ConvPass::BackwardWeight, &s),
            bwd_weight,
            "weight {s:?}"
        );
    }
    // Entry points: with subgroups (lavapipe, current GPUs) and without.
    let entries = [
        (Conv1x1, "conv1x1_sg", "conv1x1"),
        (Conv3x3, "conv3x3_sg", "conv3x3"),
        (ForwardTiled, "forward_tiled_sg", "forward_tiled"),
        (BackwardData, "backward_data", "backward_data"),
        (WeightDot, "backward_weight_dot_sg", "backward_weight_dot"),
        (
            WeightRows,
            "backward_weight_rows_sg",
            "backward_weight_rows",
        ),
        (
            WeightStrided,
            "backward_weight_strided_sg",
            "backward_weight_strided",
        ),
        (
            WeightPartial,
            "backward_weight_partial",
            "backward_weight_partial",
        ),
    ];
    for (k, with, without) in entries {
        assert_eq!((k.entry(true).1, k.entry(false).1), (with, without), "{k}");
        assert_eq!(ConvKernel::from_name(k.name()), Some(k));
    }
    assert_eq!(
        conv2d::parse_forced("forward_tiled, backward_weight_partial"),
        Ok(vec![ForwardTiled, WeightPartial])
    );
    assert_eq!(
        conv2d::parse_forced("forward_tiled,conv5x5"),
        Err(conv2d::UnknownKernel("conv5x5".into()))
    );
}

/// Winograd in several blocks of output channels and chunks of images (its scratch is
/// bounded to 2M floats per tensor): 1100 output channels over 130 (forward: 2 blocks of
/// at most 1008 channels; backward_data, 130 over 1100: 2 blocks of at most 116), and a
/// 20x20 plane whose transformed input takes more than half the bound per image (2 chunks).
#[test]
fn winograd_in_blocks_and_chunks_matches_the_reference() {
    let _forced = conv2d::force(&[ConvKernel::Winograd]);
    let c = Case {
        bias: true,
        ..case(2, 130, 20, 20, 1100, (3, 3), 1, 1)
    };
    try_case(&c, true).unwrap();
    for pass in [ConvPass::Forward, ConvPass::BackwardData] {
        assert_eq!(conv2d::last_kernel(pass), Some(ConvKernel::Winograd));
    }
}

/// Every kernel, forced, on odd shapes, several workgroups and channel-slice views, against
/// the f64 reference (with and without subgroups); a kernel that cannot run a case is a
/// typed error, and each kernel runs at least one case.
#[test]
fn every_kernel_forced_matches_the_reference() {
    let cases = [
        // 1x1 in the vec4 layout, on views, with bias and a prologue.
        Case {
            bias: true,
            prologue: true,
            views: true,
            ..case(2, 5, 4, 4, 6, (1, 1), 1, 0)
        },
        // 1x1 on an odd 3x5 plane (zero-padded for the fast kernels).
        case(3, 5, 3, 5, 7, (1, 1), 1, 0),
        // 3x3 same-size, several workgroups, views.
        Case {
            views: true,
            ..case(2, 9, 8, 12, 20, (3, 3), 1, 1)
        },
        // 3x3 on an odd 5x5 plane, and with a prologue (no padded copy then).
        case(2, 3, 5, 5, 5, (3, 3), 1, 1),
        Case {
            prologue: true,
            ..case(2, 3, 5, 5, 5, (3, 3), 1, 1)
        },
        // The stem's shape class: 7x7 / stride 2 / padding 3, OH*OW % 4 == 0.
        Case {
            bias: true,
            ..case(2, 3, 19, 23, 5, (7, 7), 2, 3)
        },
        // Stride 2 with an odd output.
        case(1, 4, 9, 9, 6, (3, 3), 2, 1),
        // Several row and column blocks and reduction chunks of the GEMM kernels, several
        // channel tiles of Winograd's on an odd plane; views, bias and a prologue.
        Case {
            bias: true,
            prologue: true,
            views: true,
            ..case(2, 6, 17, 13, 70, (3, 3), 1, 1)
        },
    ];
    let mut ran = std::collections::HashMap::new();
    for kernel in ConvKernel::ALL {
        let pass = [
            ConvPass::Forward,
            ConvPass::BackwardData,
            ConvPass::BackwardWeight,
        ]
        .into_iter()
        .find(|&p| kernel.serves(p))
        .unwrap();
        for (i, c) in cases.iter().enumerate() {
            for subgroups in [true, false] {
                let _forced = conv2d::force(&[kernel]);
                match try_case(c, subgroups) {
                    Ok(()) => {
                        assert_eq!(conv2d::last_kernel(pass), Some(kernel), "case {i}");
                        *ran.entry(kernel).or_insert(0) += 1;
                    }
                    Err(GpuError::KernelNotApplicable(e)) => {
                        assert_eq!(e.kernel, kernel.name());
                    }
                    Err(e) => panic!("{kernel} on case {i}: {e}"),
                }
            }
        }
    }
    for kernel in ConvKernel::ALL {
        assert!(
            ran.get(&kernel).is_some_and(|&n| n > 0),
            "{kernel} never ran"
        );
    }
    // Cases a fast kernel cannot run.
    let _forced = conv2d::force(&[ConvKernel::Conv3x3]);
    assert!(matches!(
        try_case(&cases[1], true),
        Err(GpuError::KernelNotApplicable(_))
    ));
    let _forced = conv2d::force(&[ConvKernel::Conv3x3]);
    assert!(matches!(
        try_case(&cases[4], true),
        Err(GpuError::KernelNotApplicable(_))
    ));
    let _forced = conv2d::force(&[ConvKernel::WeightStrided]);
    assert!(matches!(
        try_case(&cases[1], true),
        Err(GpuError::KernelNotApplicable(_))
    ));
}
