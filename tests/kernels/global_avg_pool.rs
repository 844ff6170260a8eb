use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Tensor};
use densenet_wgpu::ops::global_avg_pool::{self, reference};

/// Tolerance of y: a sequential f32 sum of `hw` values in [-1, 1] errs by at most
/// `hw * 2^-24 * sum|x|` (the classic bound), i.e. `hw * 2^-24 * max|x|` after the division
/// by `hw`; plus one rounding of the scaling.
fn y_atol(hw: usize) -> f64 {
    (hw as f64 + 1.0) * 2f64.powi(-24)
}

#[test]
fn reference_backward_matches_finite_differences() {
    let shape = [2, 3, 5, 4];
    let x = rand(1, 120, -1.0, 1.0);
    let up = rand(2, 6, -1.0, 1.0);
    let analytic = reference::backward(&up, shape);
    let numeric = numeric_grad(&x, 1e-6, |x| dot(&reference::forward(x, shape), &up));
    assert_close("d_x", &analytic, &numeric, 1e-8, 1e-6);
}

fn check_against_reference(shape: [usize; 4], seed: u64) {
    let [n, c, h, w] = shape;
    let xv = rand(seed, n * c * h * w, -1.0, 1.0);
    let up = rand(seed + 1, n * c, -1.0, 1.0);
    let prior = rand(seed + 2, n * c * h * w, -1.0, 1.0);
    let x = upload(&xv, &shape, "x");
    let y = gpu().zeros(&[n, c], "y").unwrap();
    let d_y = upload(&up, &[n, c], "d_y");
    let d_x = upload(&prior, &shape, "d_x");
    run(|e| {
        global_avg_pool::forward(e, &y, &x).unwrap();
        global_avg_pool::backward(e, &d_x, &d_y).unwrap();
    });
    let want = reference::forward(&f64s(&f32s(&xv)), shape);
    assert_close(
        &format!("y {shape:?}"),
        &download(&y),
        &want,
        y_atol(h * w),
        0.0,
    );
    // d_x = prior + d_y * (1/HW): two roundings of values below 2 in magnitude.
    let want: Vec<f64> = reference::backward(&f64s(&f32s(&up)), shape)
        .iter()
        .zip(&f64s(&f32s(&prior)))
        .map(|(g, p)| g + p)
        .collect();
    assert_close(
        &format!("d_x {shape:?}"),
        &download(&d_x),
        &want,
        4.0 * 2f64.powi(-24),
        0.0,
    );
}

#[test]
fn gpu_densenet_head_shape() {
    // DenseNet-121's head: 1024 channels of 7x7; 3 * 1024 planes = 48 workgroups forward.
    check_against_reference([3, 1024, 7, 7], 10);
}

#[test]
fn gpu_odd_shapes() {
    check_against_reference([2, 5, 29, 31], 20);
    check_against_reference([5, 37, 3, 1], 30);
    check_against_reference([1, 1, 1, 1], 40);
}

#[test]
fn gpu_on_channel_slice_views_and_offset_output() {
    // x = channels [3, 10) of a 12-channel block, d_x = channels [1, 8) of a 9-channel
    // buffer; y and d_y are contiguous (N, C) views at an offset inside a larger buffer.
    let (n, c, h, w) = (3, 7, 6, 5);
    let xb = upload(
        &rand(50, n * 12 * h * w, -1.0, 1.0),
        &[n, 12, h, w],
        "x block",
    );
    let dxb_v = rand(51, n * 9 * h * w, -1.0, 1.0);
    let dxb = upload(&dxb_v, &[n, 9, h, w], "d_x block");
    let at_offset = |t: &Tensor| Tensor {
        storage: t.storage.clone(),
        shape: vec![n, c],
        offset: n * c,
        batch_stride: c,
    };
    let ybig = gpu().zeros(&[2 * n * c], "y big").unwrap();
    let y = at_offset(&ybig);
    let d_y = at_offset(&upload(
        &rand(52, 2 * n * c, -1.0, 1.0),
        &[2 * n * c],
        "d_y big",
    ));
    let x = xb.channels(3, c).unwrap();
    let d_x = dxb.channels(1, c).unwrap();
    let prior = download(&d_x);
    run(|e| {
        global_avg_pool::forward(e, &y, &x).unwrap();
        global_avg_pool::backward(e, &d_x, &d_y).unwrap();
    });
    let shape = [n, c, h, w];
    let want = reference::forward(&download(&x), shape);
    assert_close("y", &download(&y), &want, y_atol(h * w), 0.0);
    assert!(
        download(&ybig)[..n * c].iter().all(|&v| v == 0.0),
        "y written before its offset"
    );
    let want: Vec<f64> = reference::backward(&download(&d_y), shape)
        .iter()
        .zip(&prior)
        .map(|(g, p)| g + p)
        .collect();
    assert_close("d_x", &download(&d_x), &want, 4.0 * 2f64.powi(-24), 0.0);
    let all = download(&dxb);
    let before = f64s(&f32s(&dxb_v));
    for (i, (g, b)) in all.iter().zip(&before).enumerate() {
        if !(1..8).contains(&((i / (h * w)) % 9)) {
            assert_eq!(g, b, "d_x block element {i} outside the slice changed");
        }
    }
}

#[test]
fn repeated_runs_are_bit_identical() {
    let shape = [2, 64, 29, 31];
    let x = upload(&rand(60, 2 * 64 * 29 * 31, -1.0, 1.0), &shape, "x");
    let runs: Vec<Vec<f64>> = (0..3)
        .map(|_| {
            let y = gpu().zeros(&[2, 64], "y").unwrap();
            run(|e| global_avg_pool::forward(e, &y, &x).unwrap());
            download(&y)
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0], runs[2]);
}

#[test]
fn bad_shapes_are_typed_errors() {
    let x = gpu().zeros(&[2, 3, 4, 4], "x").unwrap();
    let mut enc = gpu().encoder("bad");
    for (bad, needle) in [
        (vec![2, 4], "y"),
        (vec![2, 3, 1, 1], "y"),
        (vec![3, 3], "y"),
    ] {
        let y = gpu().zeros(&bad, "y").unwrap();
        match global_avg_pool::forward(&mut enc, &y, &x) {
            Err(GpuError::Shape(m)) => assert!(m.to_string().contains(needle), "{m}"),
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
    let d_y = gpu().zeros(&[2, 3], "d_y").unwrap();
    let x3 = gpu().zeros(&[2, 3, 16], "x3").unwrap();
    match global_avg_pool::backward(&mut enc, &x3, &d_y) {
        Err(GpuError::Shape(m)) => {
            let m = m.to_string();
            assert!(m.contains("d_x") && m.contains("4-D"), "{m}")
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    let d_y5 = gpu().zeros(&[2, 5], "d_y5").unwrap();
    match global_avg_pool::backward(&mut enc, &x, &d_y5) {
        Err(GpuError::Shape(m)) => assert!(m.to_string().contains("d_y"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert_eq!(enc.launches(), 0);
}
