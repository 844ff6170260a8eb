use crate::avg_pool2d::assert_outside_untouched;
use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Limit, Tensor};
use densenet_wgpu::ops::max_pool2d::{
    self, alloc_indices, indices_shape, output_size, reference, unpack_indices, Pool2dSpec,
};
use densenet_wgpu::rng::Rng;

const fn spec(kernel: usize, stride: usize, padding: usize) -> Pool2dSpec {
    Pool2dSpec {
        kernel,
        stride,
        padding,
    }
}

fn numel(s: [usize; 4]) -> usize {
    s.iter().product()
}

fn out_shape(s: [usize; 4], sp: Pool2dSpec) -> [usize; 4] {
    let (oh, ow) = output_size(sp, s[2], s[3]).unwrap();
    [s[0], s[1], oh, ow]
}

/// `n` distinct values: a random permutation of `0..n` scaled into [-1, 1), so every window
/// has a unique maximum that a small perturbation cannot move.
fn distinct_values(seed: u64, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| 2.0 * i as f64 / n as f64 - 1.0).collect();
    Rng::new(seed).shuffle(&mut v);
    v
}

/// Values from {-1, 0, 1}: most windows hold several maxima.
fn tied_values(seed: u64, n: usize) -> Vec<f64> {
    rand(seed, n, -1.5, 1.5).iter().map(|v| v.round()).collect()
}

/// An index tensor filled with a non-zero pattern, so that a word the forward fails to
/// write (or a padding byte it fails to clear) shows.
fn dirty_indices(ys: [usize; 4], label: &str) -> Tensor {
    let n = numel(indices_shape(ys));
    let words = vec![f32::from_bits(0x5a5a_5a5a); n];
    gpu().upload(&words, &indices_shape(ys), label).unwrap()
}

/// Element-wise equality (infinities included), reporting the first difference.
#[track_caller]
fn assert_exact<T: PartialEq + std::fmt::Debug>(name: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{name}: element {i} got {:?} want {:?}", got[i], want[i]);
    }
}

/// Every index word: the reference argmax bytes of its four outputs, zero past the row end.
#[track_caller]
fn assert_indices(name: &str, idx: &Tensor, want: &[u8], ys: [usize; 4]) {
    let words = gpu().download(idx).unwrap();
    assert_exact(name, &unpack_indices(&words, ys), want);
    let row = ys[3].div_ceil(4);
    for (i, w) in words.iter().enumerate() {
        let valid = ys[3] - 4 * (i % row);
        if valid < 4 {
            assert_eq!(
                w.to_bits() >> (8 * valid),
                0,
                "{name}: padding bytes of word {i} not zero"
            );
        }
    }
}

#[test]
fn indices_layout() {
    // Rows padded to whole u32 words, one byte per output, little-endian.
    assert_eq!(indices_shape([8, 64, 56, 56]), [8, 64, 56, 14]);
    assert_eq!(indices_shape([2, 3, 9, 8]), [2, 3, 9, 2]);
    assert_eq!(indices_shape([2, 3, 9, 9]), [2, 3, 9, 3]);
    let words = [f32::from_bits(0x0403_0201), f32::from_bits(0x0000_0605)];
    assert_eq!(unpack_indices(&words, [1, 1, 1, 6]), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn reference_backward_matches_finite_differences() {
    let shape = [2, 3, 7, 6];
    for (i, sp) in [spec(2, 2, 0), spec(3, 2, 1), spec(3, 1, 1)]
        .into_iter()
        .enumerate()
    {
        // Gaps between values are 2 / 252 >> the step 1e-6: the argmax stays put.
        let x = distinct_values(10 + i as u64, numel(shape));
        let up = rand(20 + i as u64, numel(out_shape(shape, sp)), -1.0, 1.0);
        let analytic = reference::backward(&x, &up, shape, sp);
        let numeric = numeric_grad(&x, 1e-6, |x| dot(&reference::forward(x, shape, sp), &up));
        assert_close(&format!("d_x {sp:?}"), &analytic, &numeric, 1e-8, 1e-6);
        // Routing through the saved window positions is the same backward.
        let idx = reference::window_argmax(&x, shape, sp);
        let routed = reference::backward_from_indices(&idx, &up, shape, sp);
        assert_exact(&format!("d_x from indices {sp:?}"), &routed, &analytic);
    }
}

#[test]
fn reference_ties_go_to_the_first_element() {
    // One 2x2 window of equal values, and a 3x3/s1/p1 window over a constant image.
    let x = [5.0, 5.0, 5.0, 5.0];
    assert_eq!(
        reference::backward(&x, &[1.0], [1, 1, 2, 2], spec(2, 2, 0)),
        [1.0, 0.0, 0.0, 0.0]
    );
    let d = reference::backward(&[0.0; 9], &[1.0; 9], [1, 1, 3, 3], spec(3, 1, 1));
    // Window (r, o) starts at (r - 1, o - 1); its first in-image element is (max(r-1,0),
    // max(o-1,0)): (0,0) collects the 4 windows with r, o <= 1; (0,1) the windows (0|1, 2)...
    assert_eq!(d, [4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // As window positions ky*3 + kx: the top-left window's first in-image element is
    // (1, 1) = 4, the top row's (1, 0) = 3, the left column's (0, 1) = 1, the rest 0.
    let idx = reference::window_argmax(&[0.0; 9], [1, 1, 3, 3], spec(3, 1, 1));
    assert_eq!(idx, [4, 3, 3, 1, 0, 0, 1, 0, 0]);
}

/// Forward (with indices, and without: inference) and backward from the saved indices onto
/// a random prior, on contiguous tensors, against the f64 reference: y and the indices
/// exactly, d_x to rounding.
fn check_against_reference(shape: [usize; 4], sp: Pool2dSpec, xv: &[f64], seed: u64) {
    let ys = out_shape(shape, sp);
    let up = rand(seed + 1, numel(ys), -1.0, 1.0);
    let prior = rand(seed + 2, numel(shape), -1.0, 1.0);
    let x = upload(xv, &shape, "x");
    let y = gpu().zeros(&ys, "y").unwrap();
    let y_inference = gpu().zeros(&ys, "y (inference)").unwrap();
    let idx = dirty_indices(ys, "indices");
    let d_y = upload(&up, &ys, "d_y");
    let d_x = upload(&prior, &shape, "d_x");
    run(|e| {
        max_pool2d::forward(e, &y, Some(&idx), &x, sp).unwrap();
        max_pool2d::forward(e, &y_inference, None, &x, sp).unwrap();
        max_pool2d::backward(e, &d_x, &d_y, &idx, sp).unwrap();
    });
    let xr = f64s(&f32s(xv));
    let name = format!("{shape:?} {sp:?}");
    // The maximum is one of the inputs: exact.
    let want_y = reference::forward(&xr, shape, sp);
    assert_exact(&format!("y {name}"), &download(&y), &want_y);
    assert_exact(
        &format!("y inference {name}"),
        &download(&y_inference),
        &want_y,
    );
    let want_idx = reference::window_argmax(&xr, shape, sp);
    assert_indices(&format!("indices {name}"), &idx, &want_idx, ys);
    // d_x = prior + a sum of at most ceil(k/s)^2 d_y values in [-1, 1] (4 for 3x3/s2, 9 for
    // 3x3/s1, 25 for 5x5/s1): each f32 addition rounds by <= 2^-24 * |partial| <= 2^-24 * 26,
    // so atol 2e-6. A misrouted gradient would be off by a whole d_y value.
    let want: Vec<f64> = reference::backward(&xr, &f64s(&f32s(&up)), shape, sp)
        .iter()
        .zip(&f64s(&f32s(&prior)))
        .map(|(g, p)| g + p)
        .collect();
    assert_close(&format!("d_x {name}"), &download(&d_x), &want, 2e-6, 0.0);
}

#[test]
fn gpu_stem_3x3_stride_2_padding_1() {
    let shape = [2, 7, 17, 15];
    check_against_reference(shape, spec(3, 2, 1), &distinct_values(30, numel(shape)), 31);
}

#[test]
fn gpu_many_workgroups_and_other_specs() {
    // 3x3/s2/p1 on 67x61: 34 x 31 outputs, backward tiles of 2 x 8, several workgroups
    // (the last partial).
    let shape = [2, 3, 67, 61];
    check_against_reference(shape, spec(3, 2, 1), &distinct_values(40, numel(shape)), 41);
    // 2x2/s2 with odd sizes (floor drops the last row/column), 3x3/s1/p1 (9 windows per
    // element), 4/3/2 (stride not dividing the tile), windows as large as the image.
    // (Each pooling config compiles its own pipelines, so the tests reuse a few configs.)
    for (i, (shape, sp)) in [
        ([3, 5, 13, 11], spec(2, 2, 0)),
        ([2, 3, 19, 23], spec(3, 1, 1)),
        ([1, 3, 10, 9], spec(4, 3, 2)),
        ([3, 4, 2, 2], spec(2, 2, 0)),
        ([2, 3, 3, 3], spec(3, 2, 1)),
        ([2, 3, 1, 1], spec(3, 2, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 50 + 10 * i as u64;
        check_against_reference(shape, sp, &distinct_values(seed, numel(shape)), seed + 1);
    }
}

#[test]
fn gpu_vec4_paths() {
    // W and OW multiples of 4: forward4 (x loaded and y written as vec4s, walking down
    // strips of 8 outputs) and backward4 (d_y, indices and d_x as vec4s / words, walking
    // down strips of 16 or 12 d_x columns), with paddings giving every alignment shift,
    // strips past the row end, walks split in segments (more than 32 rows), odd H.
    for (i, (shape, sp)) in [
        ([2, 3, 16, 24], spec(3, 2, 1)), // the DenseNet stem; partial last strips
        ([2, 3, 68, 16], spec(3, 2, 1)), // 34 output rows: two segments
        ([1, 2, 33, 40], spec(3, 2, 1)), // odd H
        ([2, 3, 12, 16], spec(2, 2, 0)),
        ([2, 2, 8, 12], spec(3, 1, 1)),
        ([1, 2, 10, 8], spec(5, 2, 2)),
        ([1, 2, 16, 32], spec(4, 4, 0)),
        ([1, 2, 12, 24], spec(3, 3, 1)),
        ([1, 2, 8, 8], spec(1, 1, 0)),
        ([2, 3, 16, 20], spec(3, 2, 1)), // x aligned, y (OW = 10) not: scalar kernels
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 400 + 10 * i as u64;
        check_against_reference(shape, sp, &distinct_values(seed, numel(shape)), seed + 1);
        check_against_reference(shape, sp, &tied_values(seed + 2, numel(shape)), seed + 3);
    }
}

#[test]
fn gpu_ties_first_maximum_wins() {
    // Most windows hold several maxima; the gradient goes to the first in row-major window
    // order, exactly as in the reference. Scalar kernels (odd W) and vec4 kernels.
    for (i, (shape, sp)) in [
        ([2, 3, 17, 15], spec(3, 2, 1)),
        ([2, 3, 9, 11], spec(3, 1, 1)),
        ([2, 2, 8, 9], spec(2, 2, 0)),
        ([2, 3, 16, 24], spec(3, 2, 1)),
        ([2, 2, 8, 12], spec(3, 1, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 200 + 10 * i as u64;
        check_against_reference(shape, sp, &tied_values(seed, numel(shape)), seed);
        // A constant image: every window's maximum is its first in-image element.
        check_against_reference(shape, sp, &vec![0.25; numel(shape)], seed + 5);
    }
}

#[test]
fn gpu_padding_never_wins() {
    // All values negative (padding read as 0 would win every border window), and a
    // quarter of them -inf (padding read as -inf must not win a tie against them: the
    // argmax stays on the first in-image element). Scalar and vec4 kernels.
    for (i, (shape, sp)) in [
        ([2, 3, 9, 11], spec(3, 2, 1)),
        ([2, 3, 16, 24], spec(3, 2, 1)),
        ([1, 2, 10, 8], spec(5, 2, 2)),
        ([2, 2, 8, 12], spec(3, 1, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 600 + 10 * i as u64;
        let negative: Vec<f64> = rand(seed, numel(shape), -2.0, -1.0);
        check_against_reference(shape, sp, &negative, seed + 1);
        let with_inf: Vec<f64> = negative
            .iter()
            .enumerate()
            .map(|(j, &v)| if j % 4 == 1 { f64::NEG_INFINITY } else { v })
            .collect();
        check_against_reference(shape, sp, &with_inf, seed + 2);
        check_against_reference(shape, sp, &vec![f64::NEG_INFINITY; numel(shape)], seed + 3);
    }
}

/// Forward into and backward out of channel slices of larger buffers: x = channels [2, 9)
/// of 12, y = [3, 10) of 11, d_y = [0, 7) of 8, d_x = [5, 12) of 13; the indices are a
/// tensor of their own. Outside channels stay untouched bit for bit.
fn check_views(h: usize, w: usize, seed: u64) {
    let (n, c) = (2, 7);
    let sp = spec(3, 2, 1);
    let (oh, ow) = output_size(sp, h, w).unwrap();
    let xb = upload(
        &distinct_values(seed, n * 12 * h * w),
        &[n, 12, h, w],
        "x block",
    );
    let yb_v = rand(seed + 1, n * 11 * oh * ow, -1.0, 1.0);
    let dyb_v = rand(seed + 2, n * 8 * oh * ow, -1.0, 1.0);
    let dxb_v = rand(seed + 3, n * 13 * h * w, -1.0, 1.0);
    let yb = upload(&yb_v, &[n, 11, oh, ow], "y block");
    let dyb = upload(&dyb_v, &[n, 8, oh, ow], "d_y block");
    let dxb = upload(&dxb_v, &[n, 13, h, w], "d_x block");
    let (x, y) = (xb.channels(2, c).unwrap(), yb.channels(3, c).unwrap());
    let (d_y, d_x) = (dyb.channels(0, c).unwrap(), dxb.channels(5, c).unwrap());
    let idx = dirty_indices([n, c, oh, ow], "indices");
    let prior = download(&d_x);
    run(|e| {
        max_pool2d::forward(e, &y, Some(&idx), &x, sp).unwrap();
        max_pool2d::backward(e, &d_x, &d_y, &idx, sp).unwrap();
    });
    let shape = [n, c, h, w];
    let xs = download(&x);
    let name = format!("{h}x{w}");
    assert_exact(
        &format!("y slice {name}"),
        &download(&y),
        &reference::forward(&xs, shape, sp),
    );
    let want_idx = reference::window_argmax(&xs, shape, sp);
    assert_indices(&format!("indices {name}"), &idx, &want_idx, [n, c, oh, ow]);
    let want: Vec<f64> = reference::backward(&xs, &download(&d_y), shape, sp)
        .iter()
        .zip(&prior)
        .map(|(g, p)| g + p)
        .collect();
    assert_close(
        &format!("d_x slice {name}"),
        &download(&d_x),
        &want,
        1e-6,
        0.0,
    );
    let plane = oh * ow;
    assert_outside_untouched(
        "y block",
        &download(&yb),
        &f64s(&f32s(&yb_v)),
        11,
        3..10,
        plane,
    );
    assert_outside_untouched(
        "d_x block",
        &download(&dxb),
        &f64s(&f32s(&dxb_v)),
        13,
        5..12,
        h * w,
    );
    assert_exact("d_y block", &download(&dyb), &f64s(&f32s(&dyb_v)));
    assert_exact(
        "x block",
        &download(&xb),
        &f64s(&f32s(&distinct_values(seed, n * 12 * h * w))),
    );
}

#[test]
fn gpu_on_channel_slice_views() {
    // Scalar kernels (odd W), then the vec4 kernels (view offsets c0 * H * W multiples of 4).
    check_views(17, 15, 300);
    check_views(16, 24, 310);
}

#[test]
fn repeated_runs_are_bit_identical() {
    let shape = [2, 3, 16, 24];
    let sp = spec(3, 2, 1);
    let ys = out_shape(shape, sp);
    let x = upload(&tied_values(700, numel(shape)), &shape, "x");
    let d_y = upload(&rand(701, numel(ys), -1.0, 1.0), &ys, "d_y");
    let outs: Vec<Vec<f64>> = (0..2)
        .map(|_| {
            let y = gpu().zeros(&ys, "y").unwrap();
            let idx = alloc_indices(gpu(), ys, "indices").unwrap();
            let d_x = upload(&rand(702, numel(shape), -1.0, 1.0), &shape, "d_x");
            run(|e| {
                max_pool2d::forward(e, &y, Some(&idx), &x, sp).unwrap();
                max_pool2d::backward(e, &d_x, &d_y, &idx, sp).unwrap();
                max_pool2d::backward(e, &d_x, &d_y, &idx, sp).unwrap();
            });
            download(&d_x)
        })
        .collect();
    assert_exact("d_x", &outs[0], &outs[1]);
}

fn expect_error(r: Result<(), GpuError>, needle: &str) {
    match r {
        Err(e @ (GpuError::Shape(_) | GpuError::Limit(_))) => {
            let m = e.to_string();
            assert!(m.contains(needle), "{needle:?} not in {m:?}")
        }
        other => panic!("expected an error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_shapes_and_specs_are_typed_errors() {
    let sp = spec(3, 2, 1);
    let x = gpu().zeros(&[2, 3, 9, 9], "x").unwrap();
    let y = gpu().zeros(&[2, 3, 5, 5], "y").unwrap();
    let idx = alloc_indices(gpu(), [2, 3, 5, 5], "idx").unwrap();
    let mut enc = gpu().encoder("bad");
    let y4 = gpu().zeros(&[2, 3, 4, 5], "y4").unwrap();
    expect_error(max_pool2d::forward(&mut enc, &y4, Some(&idx), &x, sp), "y");
    expect_error(max_pool2d::backward(&mut enc, &x, &y4, &idx, sp), "d_y");
    let dx = gpu().zeros(&[2, 3, 9, 8], "dx").unwrap();
    expect_error(max_pool2d::backward(&mut enc, &dx, &y, &idx, sp), "d_y");
    let x3 = gpu().zeros(&[2, 3, 81], "x3").unwrap();
    expect_error(max_pool2d::forward(&mut enc, &y, None, &x3, sp), "4-D");
    expect_error(
        max_pool2d::forward(&mut enc, &y, None, &x, spec(3, 2, 2)),
        "padding",
    );
    // Kernels whose window positions do not fit a byte.
    let big = gpu().zeros(&[1, 1, 17, 17], "big").unwrap();
    let one = gpu().zeros(&[1, 1, 1, 1], "one").unwrap();
    match max_pool2d::forward(&mut enc, &one, None, &big, spec(17, 1, 0)) {
        Err(GpuError::Limit(e)) => assert_eq!(e.limit, Limit::KernelSize { size: 17, max: 16 }),
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Index tensors: wrong shape, a view, a buffer shared with an output or input.
    let idx_wide = gpu().zeros(&[2, 3, 5, 5], "idx wide").unwrap();
    expect_error(
        max_pool2d::forward(&mut enc, &y, Some(&idx_wide), &x, sp),
        "indices",
    );
    expect_error(
        max_pool2d::backward(&mut enc, &x, &y, &idx_wide, sp),
        "indices",
    );
    let idx_view = gpu()
        .zeros(&[2, 4, 5, 2], "idx block")
        .unwrap()
        .channels(1, 3)
        .unwrap();
    expect_error(
        max_pool2d::forward(&mut enc, &y, Some(&idx_view), &x, sp),
        "contiguous",
    );
    let x1 = gpu().zeros(&[2, 3, 1, 1], "x1").unwrap();
    let y1 = gpu().zeros(&[2, 3, 1, 1], "y1").unwrap(); // indices of a 1x1 output: same shape
    expect_error(
        max_pool2d::forward(&mut enc, &y1, Some(&y1), &x1, sp),
        "share",
    );
    let d_x1 = gpu().zeros(&[2, 3, 1, 1], "d_x1").unwrap();
    expect_error(max_pool2d::backward(&mut enc, &d_x1, &y1, &y1, sp), "share");
    expect_error(
        max_pool2d::backward(&mut enc, &d_x1, &y1, &d_x1, sp),
        "share",
    );
    // d_x aliasing d_y.
    expect_error(max_pool2d::backward(&mut enc, &y1, &y1, &idx, sp), "share");
    assert_eq!(enc.launches(), 0);
    let d_x = gpu().zeros(&[2, 3, 9, 9], "d_x").unwrap();
    max_pool2d::forward(&mut enc, &y, Some(&idx), &x, sp).unwrap();
    max_pool2d::backward(&mut enc, &d_x, &y, &idx, sp).unwrap();
    assert_eq!(enc.launches(), 2);
}
