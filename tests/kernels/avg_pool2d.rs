use crate::common::*;
use densenet_wgpu::gpu::GpuError;
use densenet_wgpu::ops::avg_pool2d::{self, output_size, reference, Pool2dSpec};

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

#[test]
fn output_size_follows_pytorch_floor_mode() {
    assert_eq!(output_size(spec(2, 2, 0), 56, 56).unwrap(), (28, 28));
    assert_eq!(output_size(spec(2, 2, 0), 13, 11).unwrap(), (6, 5));
    assert_eq!(output_size(spec(3, 2, 1), 112, 112).unwrap(), (56, 56));
    assert_eq!(output_size(spec(3, 2, 1), 17, 15).unwrap(), (9, 8));
    assert_eq!(output_size(spec(3, 1, 1), 9, 10).unwrap(), (9, 10));
    assert_eq!(output_size(spec(7, 1, 0), 7, 7).unwrap(), (1, 1));
    assert_eq!(output_size(spec(3, 2, 1), 1, 1).unwrap(), (1, 1));
}

#[test]
fn reference_backward_matches_finite_differences() {
    let shape = [2, 3, 7, 6];
    for (i, sp) in [spec(2, 2, 0), spec(3, 1, 1), spec(3, 2, 1)]
        .into_iter()
        .enumerate()
    {
        let x = rand(10 + i as u64, numel(shape), -1.0, 1.0);
        let up = rand(20 + i as u64, numel(out_shape(shape, sp)), -1.0, 1.0);
        let analytic = reference::backward(&up, shape, sp);
        let numeric = numeric_grad(&x, 1e-6, |x| dot(&reference::forward(x, shape, sp), &up));
        // Linear in x: central differences are exact up to f64 rounding of the loss.
        assert_close(&format!("d_x {sp:?}"), &analytic, &numeric, 1e-8, 1e-6);
    }
}

/// Runs forward and backward (onto a random prior d_x) on contiguous tensors and checks
/// both against the f64 reference.
fn check_against_reference(shape: [usize; 4], sp: Pool2dSpec, seed: u64) {
    let ys = out_shape(shape, sp);
    let xv = rand(seed, numel(shape), -1.0, 1.0);
    let up = rand(seed + 1, numel(ys), -1.0, 1.0);
    let prior = rand(seed + 2, numel(shape), -1.0, 1.0);
    let x = upload(&xv, &shape, "x");
    let y = gpu().zeros(&ys, "y").unwrap();
    let d_y = upload(&up, &ys, "d_y");
    let d_x = upload(&prior, &shape, "d_x");
    run(|e| {
        avg_pool2d::forward(e, &y, &x, sp).unwrap();
        avg_pool2d::backward(e, &d_x, &d_y, sp).unwrap();
    });
    // y: a sum of at most k^2 = 9 f32 values in [-1, 1] times 1/k^2: the f32 rounding error
    // is below 9 * 2^-24 * 9 / 9 ~ 5e-7, so atol 1e-6.
    let want = reference::forward(&f64s(&f32s(&xv)), shape, sp);
    assert_close(
        &format!("y {shape:?} {sp:?}"),
        &download(&y),
        &want,
        1e-6,
        0.0,
    );
    // d_x = prior + sum of at most ceil(k/s)^2 = 9 terms of |d_y| / k^2 <= 1/9: each f32
    // addition rounds by 2^-24 * |partial| <= 2^-24 * 2, so atol 1e-6.
    let want: Vec<f64> = reference::backward(&f64s(&f32s(&up)), shape, sp)
        .iter()
        .zip(&f64s(&f32s(&prior)))
        .map(|(g, p)| g + p)
        .collect();
    assert_close(
        &format!("d_x {shape:?} {sp:?}"),
        &download(&d_x),
        &want,
        1e-6,
        0.0,
    );
}

#[test]
fn gpu_2x2_stride_2_odd_sizes_floor_drops_last_row_and_column() {
    // 13 x 11: floor mode drops the last row and column; backward must leave their prior.
    check_against_reference([3, 5, 13, 11], spec(2, 2, 0), 30);
}

#[test]
fn gpu_3x3_stride_1_padding_1_many_workgroups() {
    // 67 x 61 planes: 67 rows x 8 segments of 8 = 536 invocations per plane (9 workgroups
    // of 64, the last partial), times 6 planes.
    check_against_reference([2, 3, 67, 61], spec(3, 1, 1), 40);
}

#[test]
fn gpu_3x3_stride_2_padding_1_and_other_specs() {
    // (Each pooling config compiles its own pipelines, so the tests reuse a few configs.)
    check_against_reference([2, 7, 17, 15], spec(3, 2, 1), 50);
    check_against_reference([1, 3, 10, 9], spec(4, 3, 2), 60);
    // Windows as large as the image: one window per plane (clipped by padding for 3x3).
    check_against_reference([3, 4, 2, 2], spec(2, 2, 0), 70);
    check_against_reference([2, 3, 3, 3], spec(3, 2, 1), 80);
    check_against_reference([2, 3, 1, 1], spec(3, 2, 1), 90);
}

#[test]
fn gpu_vec4_paths() {
    // W a multiple of 4: forward4 (x loaded as vec4s, with the shifts of paddings 0, 1, 2)
    // and backward4 (d_x as vec4s), with the non-overlapping fast path (K == S, no padding;
    // segments of 8 and 12) and the general one.
    check_against_reference([2, 3, 12, 16], spec(2, 2, 0), 300);
    check_against_reference([2, 3, 9, 16], spec(3, 2, 1), 320);
    check_against_reference([1, 2, 9, 12], spec(3, 3, 0), 330);
    check_against_reference([1, 2, 10, 12], spec(4, 3, 2), 350);
}

#[test]
fn gpu_on_channel_slice_views() {
    check_views(13, 11, spec(2, 2, 0)); // scalar kernels
    check_views(12, 16, spec(2, 2, 0)); // vec4 kernels (views of rows of 16)
    check_views(12, 16, spec(3, 2, 1));
}

/// x = channels [3, 8) of a 10-channel block; y = channels [2, 7) of a 9-channel block;
/// backward: d_x = channels [1, 6) of an 8-channel buffer, d_y = channels [4, 9) of 9.
fn check_views(h: usize, w: usize, sp: Pool2dSpec) {
    let (n, c) = (3, 5);
    let (oh, ow) = output_size(sp, h, w).unwrap();
    let xb_v = rand(100, n * 10 * h * w, -1.0, 1.0);
    let yb_v = rand(101, n * 9 * oh * ow, -1.0, 1.0);
    let dyb_v = rand(102, n * 9 * oh * ow, -1.0, 1.0);
    let dxb_v = rand(103, n * 8 * h * w, -1.0, 1.0);
    let xb = upload(&xb_v, &[n, 10, h, w], "x block");
    let yb = upload(&yb_v, &[n, 9, oh, ow], "y block");
    let dyb = upload(&dyb_v, &[n, 9, oh, ow], "d_y block");
    let dxb = upload(&dxb_v, &[n, 8, h, w], "d_x block");
    let x = xb.channels(3, c).unwrap();
    let y = yb.channels(2, c).unwrap();
    let d_y = dyb.channels(4, c).unwrap();
    let d_x = dxb.channels(1, c).unwrap();
    let prior = download(&d_x);
    run(|e| {
        avg_pool2d::forward(e, &y, &x, sp).unwrap();
        avg_pool2d::backward(e, &d_x, &d_y, sp).unwrap();
    });
    let shape = [n, c, h, w];
    let want_y = reference::forward(&download(&x), shape, sp);
    assert_close("y slice", &download(&y), &want_y, 1e-6, 0.0);
    let want_dx: Vec<f64> = reference::backward(&download(&d_y), shape, sp)
        .iter()
        .zip(&prior)
        .map(|(g, p)| g + p)
        .collect();
    assert_close("d_x slice", &download(&d_x), &want_dx, 1e-6, 0.0);
    // Channels outside the written slices keep their values bit for bit.
    assert_outside_untouched(
        "y block",
        &download(&yb),
        &f64s(&f32s(&yb_v)),
        9,
        2..7,
        oh * ow,
    );
    assert_outside_untouched(
        "d_x block",
        &download(&dxb),
        &f64s(&f32s(&dxb_v)),
        8,
        1..6,
        h * w,
    );
}

/// Checks that every channel outside `inside` of an (N, C, plane) buffer equals `before`.
pub fn assert_outside_untouched(
    name: &str,
    got: &[f64],
    before: &[f64],
    channels: usize,
    inside: std::ops::Range<usize>,
    plane: usize,
) {
    for (i, (g, b)) in got.iter().zip(before).enumerate() {
        let ch = (i / plane) % channels;
        if !inside.contains(&ch) {
            assert_eq!(
                g, b,
                "{name}: element {i} (channel {ch}) outside the slice changed"
            );
        }
    }
}

#[test]
fn repeated_runs_are_bit_identical() {
    let shape = [2, 3, 19, 23];
    let sp = spec(3, 1, 1);
    let x = upload(&rand(110, numel(shape), -1.0, 1.0), &shape, "x");
    let d_y = upload(&rand(111, numel(shape), -1.0, 1.0), &shape, "d_y");
    let outs: Vec<(Vec<f64>, Vec<f64>)> = (0..2)
        .map(|_| {
            let y = gpu().zeros(&shape, "y").unwrap();
            let d_x = gpu().zeros(&shape, "d_x").unwrap();
            run(|e| {
                avg_pool2d::forward(e, &y, &x, sp).unwrap();
                avg_pool2d::backward(e, &d_x, &d_y, sp).unwrap();
            });
            (download(&y), download(&d_x))
        })
        .collect();
    assert_eq!(outs[0], outs[1]);
}

fn expect_shape_error(r: Result<(), GpuError>, needle: &str) {
    match r {
        Err(GpuError::Shape(m)) => {
            assert!(m.to_string().contains(needle), "{needle:?} not in {m:?}")
        }
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_shapes_and_specs_are_typed_errors() {
    let x = gpu().zeros(&[2, 3, 8, 8], "x").unwrap();
    let y = gpu().zeros(&[2, 3, 4, 4], "y").unwrap();
    let mut enc = gpu().encoder("bad");
    let ok = spec(2, 2, 0);
    // Wrong output size, channels, batch.
    let y5 = gpu().zeros(&[2, 3, 5, 4], "y5").unwrap();
    expect_shape_error(avg_pool2d::forward(&mut enc, &y5, &x, ok), "y");
    let yc = gpu().zeros(&[2, 4, 4, 4], "yc").unwrap();
    expect_shape_error(avg_pool2d::forward(&mut enc, &yc, &x, ok), "y");
    let yn = gpu().zeros(&[1, 3, 4, 4], "yn").unwrap();
    expect_shape_error(avg_pool2d::backward(&mut enc, &x, &yn, ok), "d_y");
    // Not 4-D.
    let x3 = gpu().zeros(&[3, 8, 8], "x3").unwrap();
    expect_shape_error(avg_pool2d::forward(&mut enc, &y, &x3, ok), "4-D");
    expect_shape_error(avg_pool2d::backward(&mut enc, &x3, &y, ok), "4-D");
    // Padding above kernel / 2, zero stride, empty output.
    expect_shape_error(
        avg_pool2d::forward(&mut enc, &y, &x, spec(2, 2, 2)),
        "padding",
    );
    expect_shape_error(
        avg_pool2d::forward(&mut enc, &y, &x, spec(2, 0, 0)),
        "stride",
    );
    let tiny = gpu().zeros(&[2, 3, 2, 2], "tiny").unwrap();
    expect_shape_error(
        avg_pool2d::forward(&mut enc, &y, &tiny, spec(3, 1, 0)),
        "empty",
    );
    assert!(matches!(
        output_size(spec(3, 2, 2), 8, 8),
        Err(GpuError::Shape(_))
    ));
    assert!(matches!(
        output_size(spec(0, 1, 0), 8, 8),
        Err(GpuError::Shape(_))
    ));
    // Input and output in one allocation.
    let both = gpu().zeros(&[2, 6, 8, 8], "both").unwrap();
    let (a, b) = (both.channels(0, 3).unwrap(), both.channels(3, 3).unwrap());
    expect_shape_error(
        avg_pool2d::forward(&mut enc, &b, &a, spec(3, 1, 1)),
        "share",
    );
    // Kernels wider than the register span: a typed limit error.
    let wide = gpu().zeros(&[1, 1, 65, 65], "wide").unwrap();
    let one = gpu().zeros(&[1, 1, 1, 1], "one").unwrap();
    assert!(matches!(
        avg_pool2d::forward(&mut enc, &one, &wide, spec(65, 1, 0)),
        Err(GpuError::Limit(_))
    ));
    assert_eq!(enc.launches(), 0);
}
