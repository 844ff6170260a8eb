use crate::common::*;
use densenet_wgpu::gpu::GpuError;
use densenet_wgpu::ops::relu;

#[test]
fn reference_backward_matches_finite_differences() {
    // Keep inputs away from the kink at 0, where the derivative is undefined.
    let x: Vec<f64> = rand(1, 200, -1.0, 1.0)
        .into_iter()
        .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
        .collect();
    let up = rand(2, 200, -1.0, 1.0);
    let analytic = relu::reference::backward(&x, &up);
    let numeric = numeric_grad(&x, 1e-6, |x| dot(&relu::reference::forward(x), &up));
    assert_close("d_x", &analytic, &numeric, 1e-8, 1e-6);
}

#[test]
fn gpu_matches_reference_odd_shape_many_workgroups() {
    // 3*7*29*31 = 18879 elements: not a multiple of 256, 74 workgroups.
    let shape = [3, 7, 29, 31];
    let n: usize = shape.iter().product();
    let mut xv = rand(3, n, -1.0, 1.0);
    xv[5] = 0.0; // ReLU'(0) = 0
    let up = rand(4, n, -1.0, 1.0);
    let x = upload(&xv, &shape, "x");
    let y = gpu().zeros(&shape, "y").unwrap();
    let d_y = upload(&up, &shape, "d_y");
    let prior = rand(5, n, -1.0, 1.0);
    let d_x = upload(&prior, &shape, "d_x");
    run(|e| {
        relu::forward(e, &y, &x).unwrap();
        relu::backward(e, &d_x, &x, &d_y).unwrap();
    });
    let xr = f64s(&f32s(&xv));
    assert_close("y", &download(&y), &relu::reference::forward(&xr), 0.0, 0.0);
    // Backward accumulates onto what d_x held.
    let want: Vec<f64> = relu::reference::backward(&xr, &f64s(&f32s(&up)))
        .iter()
        .zip(&prior)
        .map(|(g, p)| g + (*p as f32) as f64)
        .collect();
    assert_close("d_x", &download(&d_x), &want, 1e-7, 1e-7);
}

#[test]
fn gpu_on_channel_slice_views() {
    // x is channels [2, 5) of a 7-channel buffer; y is channels [1, 4) of a 6-channel one.
    let (n, h, w) = (2, 5, 3);
    let big_x = rand(6, n * 7 * h * w, -1.0, 1.0);
    let xb = upload(&big_x, &[n, 7, h, w], "x block");
    let yb = gpu().zeros(&[n, 6, h, w], "y block").unwrap();
    let x = xb.channels(2, 3).unwrap();
    let y = yb.channels(1, 3).unwrap();
    run(|e| relu::forward(e, &y, &x).unwrap());
    let xs = download(&x);
    assert_close(
        "y slice",
        &download(&y),
        &relu::reference::forward(&xs),
        0.0,
        0.0,
    );
    // Channels outside the slice stay untouched.
    let all = download(&yb);
    for b in 0..n {
        for c in [0, 4, 5] {
            for i in 0..h * w {
                assert_eq!(all[(b * 6 + c) * h * w + i], 0.0);
            }
        }
    }
}

#[test]
fn shape_mismatch_is_typed_error() {
    let x = gpu().zeros(&[2, 3, 4, 5], "x").unwrap();
    let y = gpu().zeros(&[2, 3, 4, 4], "y").unwrap();
    let mut enc = gpu().encoder("bad");
    match relu::forward(&mut enc, &y, &x) {
        Err(GpuError::Shape(m)) => assert!(m.to_string().contains("y"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn gpu_vec4_path_matches_reference_with_views() {
    // H*W = 12: every view is 4-aligned, so the vec4 entry points run; channels [4, 9) of
    // a 10-channel buffer in, channels [0, 5) of a 6-channel buffer out.
    let (n, h, w) = (3, 3, 4);
    let xb = upload(
        &rand(11, n * 10 * h * w, -1.0, 1.0),
        &[n, 10, h, w],
        "x block",
    );
    let yb = gpu().zeros(&[n, 6, h, w], "y block").unwrap();
    let d_yb = upload(
        &rand(12, n * 6 * h * w, -1.0, 1.0),
        &[n, 6, h, w],
        "d_y block",
    );
    let prior = rand(13, n * 10 * h * w, -1.0, 1.0);
    let d_xb = upload(&prior, &[n, 10, h, w], "d_x block");
    let (x, y) = (xb.channels(4, 5).unwrap(), yb.channels(0, 5).unwrap());
    let (d_y, d_x) = (d_yb.channels(0, 5).unwrap(), d_xb.channels(4, 5).unwrap());
    let before = download(&d_x);
    run(|e| {
        relu::forward(e, &y, &x).unwrap();
        relu::backward(e, &d_x, &x, &d_y).unwrap();
    });
    let xs = download(&x);
    assert_close("y", &download(&y), &relu::reference::forward(&xs), 0.0, 0.0);
    let want: Vec<f64> = relu::reference::backward(&xs, &download(&d_y))
        .iter()
        .zip(&before)
        .map(|(g, p)| g + p)
        .collect();
    assert_close("d_x", &download(&d_x), &want, 1e-7, 1e-7);
    // Channel 5 of the output block is untouched.
    let all = download(&yb);
    assert!((0..n).all(|b| all[(b * 6 + 5) * h * w..(b * 6 + 6) * h * w]
        .iter()
        .all(|&v| v == 0.0)));
}
