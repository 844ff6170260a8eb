use crate::avg_pool2d::{assert_outside_untouched, time_ms};
use crate::common::*;
use densenet_wgpu::gpu::GpuError;
use densenet_wgpu::ops::max_pool2d::{self, output_size, reference, Pool2dSpec};
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
}

/// Forward + backward onto a random prior on contiguous tensors vs the f64 reference.
fn check_against_reference(shape: [usize; 4], sp: Pool2dSpec, xv: &[f64], seed: u64) {
    let ys = out_shape(shape, sp);
    let up = rand(seed + 1, numel(ys), -1.0, 1.0);
    let prior = rand(seed + 2, numel(shape), -1.0, 1.0);
    let x = upload(xv, &shape, "x");
    let y = gpu().zeros(&ys, "y").unwrap();
    let d_y = upload(&up, &ys, "d_y");
    let d_x = upload(&prior, &shape, "d_x");
    run(|e| {
        max_pool2d::forward(e, &y, &x, sp).unwrap();
        max_pool2d::backward(e, &d_x, &d_y, &x, sp).unwrap();
    });
    let xr = f64s(&f32s(xv));
    // The maximum is one of the inputs: exact.
    let name = format!("{shape:?} {sp:?}");
    assert_close(
        &format!("y {name}"),
        &download(&y),
        &reference::forward(&xr, shape, sp),
        0.0,
        0.0,
    );
    // d_x = prior + a sum of at most ceil(k/s)^2 = 4 (3x3/s2) or 9 (3x3/s1) d_y values in
    // [-1, 1]: each f32 addition rounds by <= 2^-24 * |partial| <= 2^-24 * 10, so atol 1e-6.
    // A misrouted gradient would be off by a whole d_y value.
    let want: Vec<f64> = reference::backward(&xr, &f64s(&f32s(&up)), shape, sp)
        .iter()
        .zip(&f64s(&f32s(&prior)))
        .map(|(g, p)| g + p)
        .collect();
    assert_close(&format!("d_x {name}"), &download(&d_x), &want, 1e-6, 0.0);
}

#[test]
fn gpu_stem_3x3_stride_2_padding_1() {
    let shape = [2, 7, 17, 15];
    check_against_reference(shape, spec(3, 2, 1), &distinct_values(30, numel(shape)), 31);
}

#[test]
fn gpu_many_workgroups_and_other_specs() {
    // 3x3/s2/p1 on 67x61: backward tiles of 2 x 8, 34 x 8 = 272 invocations per plane
    // (5 workgroups of 64, the last partial).
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
    // W a multiple of 4: forward4 (x as vec4s) and backward4 (tiles aligned to the windows,
    // x and d_x as vec4s), with paddings giving every alignment shift.
    for (i, (shape, sp)) in [
        ([2, 3, 16, 20], spec(3, 2, 1)), // the DenseNet stem
        ([2, 3, 33, 36], spec(3, 2, 1)), // odd H, many workgroups
        ([2, 3, 12, 16], spec(2, 2, 0)),
        ([2, 2, 8, 12], spec(3, 1, 1)),
        ([1, 2, 10, 8], spec(5, 2, 2)),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 400 + 10 * i as u64;
        check_against_reference(shape, sp, &distinct_values(seed, numel(shape)), seed + 1);
        let ties: Vec<f64> = rand(seed + 2, numel(shape), -1.5, 1.5)
            .iter()
            .map(|v| v.round())
            .collect();
        check_against_reference(shape, sp, &ties, seed + 3);
    }
}

#[test]
fn gpu_ties_first_maximum_wins() {
    // Values from {-1, 0, 1}: most windows hold several maxima; gradient goes to the first
    // in row-major window order, exactly as in the reference.
    for (i, (shape, sp)) in [
        ([2, 3, 17, 15], spec(3, 2, 1)),
        ([2, 3, 9, 11], spec(3, 1, 1)),
        ([2, 2, 8, 9], spec(2, 2, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 200 + 10 * i as u64;
        let xv: Vec<f64> = rand(seed, numel(shape), -1.5, 1.5)
            .iter()
            .map(|v| v.round())
            .collect();
        check_against_reference(shape, sp, &xv, seed);
        // A constant image: every window's maximum is its first in-image element.
        check_against_reference(shape, sp, &vec![0.25; numel(shape)], seed + 5);
    }
}

#[test]
fn gpu_on_channel_slice_views() {
    // x = channels [2, 9) of a 12-channel block; y = channels [3, 10) of an 11-channel one;
    // backward: d_y = channels [0, 7) of 8, d_x = channels [5, 12) of 13.
    let (n, c, h, w) = (2, 7, 17, 15);
    let sp = spec(3, 2, 1);
    let (oh, ow) = output_size(sp, h, w).unwrap();
    let xb = upload(
        &distinct_values(300, n * 12 * h * w),
        &[n, 12, h, w],
        "x block",
    );
    let yb_v = rand(301, n * 11 * oh * ow, -1.0, 1.0);
    let dxb_v = rand(302, n * 13 * h * w, -1.0, 1.0);
    let yb = upload(&yb_v, &[n, 11, oh, ow], "y block");
    let dyb = upload(
        &rand(303, n * 8 * oh * ow, -1.0, 1.0),
        &[n, 8, oh, ow],
        "d_y block",
    );
    let dxb = upload(&dxb_v, &[n, 13, h, w], "d_x block");
    let (x, y) = (xb.channels(2, c).unwrap(), yb.channels(3, c).unwrap());
    let (d_y, d_x) = (dyb.channels(0, c).unwrap(), dxb.channels(5, c).unwrap());
    let prior = download(&d_x);
    run(|e| {
        max_pool2d::forward(e, &y, &x, sp).unwrap();
        max_pool2d::backward(e, &d_x, &d_y, &x, sp).unwrap();
    });
    let shape = [n, c, h, w];
    let xs = download(&x);
    assert_close(
        "y slice",
        &download(&y),
        &reference::forward(&xs, shape, sp),
        0.0,
        0.0,
    );
    let want: Vec<f64> = reference::backward(&xs, &download(&d_y), shape, sp)
        .iter()
        .zip(&prior)
        .map(|(g, p)| g + p)
        .collect();
    assert_close("d_x slice", &download(&d_x), &want, 1e-6, 0.0);
    assert_outside_untouched(
        "y block",
        &download(&yb),
        &f64s(&f32s(&yb_v)),
        11,
        3..10,
        oh * ow,
    );
    assert_outside_untouched(
        "d_x block",
        &download(&dxb),
        &f64s(&f32s(&dxb_v)),
        13,
        5..12,
        h * w,
    );
}

fn expect_shape_error(r: Result<(), GpuError>, needle: &str) {
    match r {
        Err(GpuError::Shape(m)) => assert!(m.contains(needle), "{needle:?} not in {m:?}"),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_shapes_and_specs_are_typed_errors() {
    let sp = spec(3, 2, 1);
    let x = gpu().zeros(&[2, 3, 9, 9], "x").unwrap();
    let y = gpu().zeros(&[2, 3, 5, 5], "y").unwrap();
    let mut enc = gpu().encoder("bad");
    let y4 = gpu().zeros(&[2, 3, 4, 5], "y4").unwrap();
    expect_shape_error(max_pool2d::forward(&mut enc, &y4, &x, sp), "y");
    expect_shape_error(max_pool2d::backward(&mut enc, &x, &y4, &x, sp), "d_y");
    let dx = gpu().zeros(&[2, 3, 9, 8], "dx").unwrap();
    expect_shape_error(max_pool2d::backward(&mut enc, &dx, &y, &x, sp), "d_x");
    let x3 = gpu().zeros(&[2, 3, 81], "x3").unwrap();
    expect_shape_error(max_pool2d::forward(&mut enc, &y, &x3, sp), "4-D");
    expect_shape_error(
        max_pool2d::forward(&mut enc, &y, &x, spec(3, 2, 2)),
        "padding",
    );
    // d_x aliasing x.
    let dx2 = gpu().zeros(&[2, 3, 9, 9], "dx2").unwrap();
    expect_shape_error(max_pool2d::backward(&mut enc, &x, &y, &x, sp), "share");
    max_pool2d::backward(&mut enc, &dx2, &y, &x, sp).unwrap();
    assert_eq!(enc.launches(), 1);
}

/// Ad-hoc timing (see avg_pool2d's timing test for how to run it).
#[test]
#[ignore]
fn timing_max_pool_3x3_s2_p1() {
    let shape = [8, 64, 112, 112];
    let sp = spec(3, 2, 1);
    let ys = out_shape(shape, sp);
    let x = upload(&rand(1, numel(shape), -1.0, 1.0), &shape, "x");
    let y = gpu().zeros(&ys, "y").unwrap();
    let d_y = upload(&rand(2, numel(ys), -1.0, 1.0), &ys, "d_y");
    let d_x = gpu().zeros(&shape, "d_x").unwrap();
    let bytes_f = (4 * (numel(shape) + numel(ys))) as f64;
    // Backward must read x and d_y and write d_x.
    let bytes_b = (4 * (2 * numel(shape) + numel(ys))) as f64;
    let fwd = time_ms(|e| max_pool2d::forward(e, &y, &x, sp).unwrap());
    let bwd = time_ms(|e| max_pool2d::backward(e, &d_x, &d_y, &x, sp).unwrap());
    eprintln!(
        "max_pool2d 3x3/s2/p1 x{shape:?} [{}]: fwd {fwd:.2} ms ({:.2} GB/s), bwd {bwd:.2} ms \
         ({:.2} GB/s), f+b {:.2} ms",
        gpu().describe(),
        bytes_f / fwd / 1e6,
        bytes_b / bwd / 1e6,
        fwd + bwd
    );
}
