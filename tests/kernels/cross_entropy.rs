use crate::common::*;
use densenet_wgpu::gpu::{GpuError, ShapeProblem, Tensor};
use densenet_wgpu::ops::cross_entropy as ce;
use densenet_wgpu::rng::Rng;

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

fn labels(seed: u64, n: usize, k: usize) -> Vec<usize> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(k)).collect()
}

fn label_tensor(l: &[usize]) -> Tensor {
    let v: Vec<f64> = l.iter().map(|&x| x as f64).collect();
    upload(&v, &[l.len()], "labels")
}

#[test]
fn reference_backward_matches_finite_differences() {
    let (n, k) = (4, 6);
    let x = rand(1, n * k, -3.0, 3.0);
    let l = labels(2, n, k);
    let d_loss = 1.7;
    let analytic = ce::reference::backward(&x, &l, k, d_loss);
    let numeric = numeric_grad(&x, 1e-5, |x| d_loss * ce::reference::forward(x, &l, k).0);
    assert_close("d_logits", &analytic, &numeric, 1e-9, 1e-6);
}

/// Forward and backward (onto a random prior) against the f64 reference.
///
/// Tolerances (u = 2^-24): each row sums K exponentials in f32 (relative error <= K u);
/// x - max is rounded once, an absolute error of |x - max| u <= 2 max|x| u in the exponent,
/// i.e. that much relative error in exp; lavapipe's exp and log add a few ulp (8 u of slack).
/// So probs are within rel = (K + 8 + 2 max|x|) u relative and the loss within rel plus
/// 2 max|x| u absolute; d_logits within |scale| rel of the prob plus one rounding of the sum.
fn check(n: usize, k: usize, lo: f64, hi: f64, d_loss: f32, seed: u64) {
    let xv = f64s(&f32s(&rand(seed, n * k, lo, hi)));
    let l = labels(seed + 1, n, k);
    let prior = f64s(&f32s(&rand(seed + 2, n * k, -1.0, 1.0)));
    let logits = upload(&xv, &[n, k], "logits");
    let lt = label_tensor(&l);
    let loss = gpu().zeros(&[1], "loss").unwrap();
    let probs = gpu().zeros(&[n, k], "probs").unwrap();
    let d_logits = upload(&prior, &[n, k], "d_logits");
    run(|e| {
        ce::forward(e, &loss, &probs, &logits, &lt).unwrap();
        ce::backward(e, &d_logits, &probs, &lt, d_loss).unwrap();
    });
    let (want_loss, want_probs) = ce::reference::forward(&xv, &l, k);
    let big = xv.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let rel = (k as f64 + 8.0 + 2.0 * big) * U;
    assert_close(
        "loss",
        &download(&loss),
        &[want_loss],
        rel + big * U * 2.0,
        rel,
    );
    assert_close("probs", &download(&probs), &want_probs, 1e-30, rel);
    let g = ce::reference::backward(&xv, &l, k, d_loss as f64);
    let want: Vec<f64> = g.iter().zip(&prior).map(|(a, b)| a + b).collect();
    let scale = d_loss.abs() as f64 / n as f64;
    assert_close(
        "d_logits",
        &download(&d_logits),
        &want,
        scale * rel + 2.0 * U,
        U,
    );
}

#[test]
fn gpu_matches_reference_small() {
    check(7, 10, -3.0, 3.0, 1.0, 10);
    check(7, 10, -3.0, 3.0, -0.37, 11);
}

#[test]
fn gpu_is_stable_for_large_logits() {
    // exp(160) overflows f32 and exp(-160) underflows: only max subtraction keeps it finite.
    check(7, 10, -80.0, 80.0, 1.0, 20);
}

#[test]
fn gpu_matches_reference_many_classes() {
    check(3, 1000, -5.0, 5.0, 1.0, 30);
}

#[test]
fn gpu_matches_reference_more_rows_than_invocations() {
    // 150 rows over 64 invocations: 2-3 rows each; backward uses several workgroups.
    check(150, 4, -2.0, 2.0, 1.0, 40);
    check(1, 3, -2.0, 2.0, 1.0, 41);
}

#[test]
fn forward_is_bit_reproducible() {
    let (n, k) = (100, 10);
    let logits = upload(&rand(50, n * k, -4.0, 4.0), &[n, k], "logits");
    let lt = label_tensor(&labels(51, n, k));
    let once = || {
        let loss = gpu().zeros(&[1], "loss").unwrap();
        let probs = gpu().zeros(&[n, k], "probs").unwrap();
        run(|e| ce::forward(e, &loss, &probs, &logits, &lt).unwrap());
        gpu().download(&loss).unwrap()[0].to_bits()
    };
    assert_eq!(once(), once());
}

#[test]
fn invalid_labels() {
    assert!(ce::check_labels(&[0, 3, 9], 10).is_ok());
    match ce::check_labels(&[0, 10, 2], 10) {
        Err(GpuError::Shape(e)) => assert_eq!(
            e.problem,
            ShapeProblem::Label {
                label: 10,
                position: 1,
                classes: 10
            }
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
    // On the device an out-of-range label poisons its row with NaN instead of reading
    // out of bounds.
    let (n, k) = (2, 3);
    let logits = upload(&rand(60, n * k, -1.0, 1.0), &[n, k], "logits");
    let lt = upload(&[1.0, 3.0], &[n], "labels");
    let loss = gpu().zeros(&[1], "loss").unwrap();
    let probs = gpu().zeros(&[n, k], "probs").unwrap();
    let d = gpu().zeros(&[n, k], "d_logits").unwrap();
    run(|e| {
        ce::forward(e, &loss, &probs, &logits, &lt).unwrap();
        ce::backward(e, &d, &probs, &lt, 1.0).unwrap();
    });
    assert!(download(&loss)[0].is_nan());
    let dv = download(&d);
    assert!(
        dv[..k].iter().all(|v| v.is_finite()) && dv[k..].iter().all(|v| v.is_nan()),
        "{dv:?}"
    );
}

#[test]
fn shape_errors_are_typed() {
    let z = |s: &[usize], l: &str| -> Tensor { gpu().zeros(s, l).unwrap() };
    let (loss, probs, logits, labels) = (
        z(&[1], "loss"),
        z(&[4, 5], "probs"),
        z(&[4, 5], "logits"),
        z(&[4], "labels"),
    );
    let mut enc = gpu().encoder("bad");
    let e = &mut enc;
    let is_shape = |r: densenet_wgpu::gpu::Result<()>, needle: &str| match r {
        Err(GpuError::Shape(m)) => assert!(
            m.to_string().contains(needle),
            "{m:?} should mention {needle:?}"
        ),
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    };
    is_shape(
        ce::forward(e, &loss, &z(&[4, 6], "p6"), &logits, &labels),
        "probs",
    );
    is_shape(
        ce::forward(e, &loss, &probs, &logits, &z(&[5], "l5")),
        "labels",
    );
    is_shape(
        ce::forward(e, &z(&[2], "loss2"), &probs, &logits, &labels),
        "loss",
    );
    is_shape(
        ce::forward(e, &loss, &probs, &z(&[4, 5, 1], "l3d"), &labels),
        "logits",
    );
    is_shape(
        ce::forward(
            e,
            &loss,
            &z(&[0, 5], "p0"),
            &z(&[0, 5], "empty"),
            &z(&[0], "l0"),
        ),
        "empty",
    );
    is_shape(
        ce::backward(e, &z(&[4, 4], "d44"), &probs, &labels, 1.0),
        "d_logits",
    );
    is_shape(ce::backward(e, &probs, &probs, &labels, 1.0), "shares");
    is_shape(
        ce::backward(e, &z(&[4, 5], "d"), &probs, &z(&[3], "l3"), 1.0),
        "labels",
    );
}
