use crate::common::*;
use densenet_wgpu::gpu::GpuError;
use densenet_wgpu::ops::add;

#[test]
fn reference_backward_matches_finite_differences() {
    // a + b kept away from the ReLU's kink at 0.
    let a = rand(1, 150, -1.0, 1.0);
    let b: Vec<f64> = rand(2, 150, -1.0, 1.0)
        .iter()
        .zip(&a)
        .map(|(b, a)| if (a + b).abs() < 0.05 { b + 0.1 } else { *b })
        .collect();
    let up = rand(3, 150, -1.0, 1.0);
    for relu in [false, true] {
        let y = add::reference::forward(&a, &b, relu);
        let analytic = add::reference::backward(&y, &up, relu);
        let d_a = numeric_grad(&a, 1e-6, |a| {
            dot(&add::reference::forward(a, &b, relu), &up)
        });
        let d_b = numeric_grad(&b, 1e-6, |b| {
            dot(&add::reference::forward(&a, b, relu), &up)
        });
        assert_close("d_a", &analytic, &d_a, 1e-8, 1e-6);
        assert_close("d_b", &analytic, &d_b, 1e-8, 1e-6);
    }
}

/// Forward, then backward accumulating onto random prior gradients, against the reference.
fn check(
    a: &densenet_wgpu::Tensor,
    b: &densenet_wgpu::Tensor,
    y: &densenet_wgpu::Tensor,
    relu: bool,
    seed: u64,
) {
    let shape = a.shape.clone();
    let n: usize = shape.iter().product();
    let d_y = upload(&rand(seed, n, -1.0, 1.0), &shape, "d_y");
    let d_a = upload(&rand(seed + 1, n, -1.0, 1.0), &shape, "d_a");
    let d_b = upload(&rand(seed + 2, n, -1.0, 1.0), &shape, "d_b");
    let (prior_a, prior_b) = (download(&d_a), download(&d_b));
    run(|e| add::forward(e, y, a, b, relu).unwrap());
    run(|e| add::backward(e, &d_a, &d_b, y, &d_y, relu).unwrap());
    let (av, bv) = (download(a), download(b));
    // The sum of two f32 values rounds once on the GPU.
    let want: Vec<f64> = add::reference::forward(&av, &bv, relu)
        .iter()
        .map(|v| *v as f32 as f64)
        .collect();
    let got_y = download(y);
    assert_close("y", &got_y, &want, 0.0, 0.0);
    let g = add::reference::backward(&got_y, &download(&d_y), relu);
    let plus = |p: &[f64]| -> Vec<f64> { g.iter().zip(p).map(|(g, p)| g + p).collect() };
    assert_close("d_a", &download(&d_a), &plus(&prior_a), 1e-7, 1e-7);
    assert_close("d_b", &download(&d_b), &plus(&prior_b), 1e-7, 1e-7);
}

#[test]
fn gpu_matches_reference_odd_shape_many_workgroups() {
    // 3*7*29*31 = 18879 elements: not a multiple of 256 or 4, 74 workgroups.
    let shape = [3, 7, 29, 31];
    let n: usize = shape.iter().product();
    for relu in [false, true] {
        let a = upload(&rand(4, n, -1.0, 1.0), &shape, "a");
        let mut bv = rand(5, n, -1.0, 1.0);
        bv[7] = -(download(&a)[7]); // a + b == 0 exactly: ReLU'(0) = 0
        let b = upload(&bv, &shape, "b");
        let y = gpu().zeros(&shape, "y").unwrap();
        check(&a, &b, &y, relu, 6);
    }
}

#[test]
fn gpu_vec4_and_scalar_paths_on_channel_slice_views() {
    // H*W = 12 (vec4 path) and H*W = 15 (scalar path); a and y are channel slices.
    for (h, w) in [(3, 4), (3, 5)] {
        let n = 2;
        let ab = upload(&rand(7, n * 9 * h * w, -1.0, 1.0), &[n, 9, h, w], "a block");
        let b = upload(&rand(8, n * 4 * h * w, -1.0, 1.0), &[n, 4, h, w], "b");
        let yb = gpu().zeros(&[n, 6, h, w], "y block").unwrap();
        let (a, y) = (ab.channels(4, 4).unwrap(), yb.channels(2, 4).unwrap());
        check(&a, &b, &y, true, 9);
        // Channels outside the slice stay untouched.
        let all = download(&yb);
        for bi in 0..n {
            for c in [0, 1] {
                let plane = &all[(bi * 6 + c) * h * w..(bi * 6 + c + 1) * h * w];
                assert!(plane.iter().all(|&v| v == 0.0));
            }
        }
    }
}

#[test]
fn accumulate_forward_adds_in_place() {
    let shape = [2, 3, 5, 7];
    let n: usize = shape.iter().product();
    let (yv, bv) = (rand(10, n, -1.0, 1.0), rand(11, n, -1.0, 1.0));
    for relu in [false, true] {
        let y = upload(&yv, &shape, "y");
        let b = upload(&bv, &shape, "b");
        run(|e| add::accumulate_forward(e, &y, &b, relu).unwrap());
        let want: Vec<f64> = add::reference::forward(&f64s(&f32s(&yv)), &f64s(&f32s(&bv)), relu)
            .iter()
            .map(|v| *v as f32 as f64)
            .collect();
        assert_close("y", &download(&y), &want, 0.0, 0.0);
    }
}

#[test]
fn shape_mismatch_and_aliasing_are_typed_errors() {
    let a = gpu().zeros(&[2, 3, 4, 5], "a").unwrap();
    let b = gpu().zeros(&[2, 3, 4, 4], "b").unwrap();
    let mut enc = gpu().encoder("bad");
    match add::forward(&mut enc, &a.clone(), &a, &b, false) {
        Err(GpuError::Shape(m)) => assert!(m.to_string().contains("b"), "{m}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    let y = gpu().zeros(&[2, 3, 4, 5], "y").unwrap();
    match add::forward(&mut enc, &y, &a, &y, false) {
        Err(GpuError::Shape(m)) => assert!(m.to_string().contains("shares its buffer"), "{m}"),
        other => panic!("expected an aliasing error, got {other:?}"),
    }
}
