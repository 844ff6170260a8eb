use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Tensor};
use densenet_wgpu::ops::linear;
use densenet_wgpu::ops::linear::reference as lref;

/// Unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// f32 error bound for sums of k products (Higham's recursive-summation bound): each output
/// is within `k * u * sum_k |a_k b_k|` of the exact value. Returns that bound maximised over
/// the outputs, given `abs_products` = the reference applied to |inputs|.
fn gemm_atol(k: usize, abs_products: &[f64]) -> f64 {
    let worst = abs_products.iter().cloned().fold(0.0, f64::max);
    (k as f64 + 2.0) * U * worst + 1e-30
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Transposes a row-major (r, c) matrix.
fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    (0..c * r).map(|e| a[(e % r) * c + e / r]).collect()
}

#[test]
fn reference_backward_matches_finite_differences() {
    let (n, i, o) = (3, 5, 4);
    let x = rand(10, n * i, -1.0, 1.0);
    let w = rand(11, o * i, -1.0, 1.0);
    let b = rand(12, o, -1.0, 1.0);
    let up = rand(13, n * o, -1.0, 1.0);
    let (d_x, d_w, d_b) = lref::backward(&up, &x, &w, n, i, o);
    let h = 1e-6;
    let num_x = numeric_grad(&x, h, |x| {
        dot(&lref::forward(x, &w, Some(&b), n, i, o), &up)
    });
    let num_w = numeric_grad(&w, h, |w| {
        dot(&lref::forward(&x, w, Some(&b), n, i, o), &up)
    });
    let num_b = numeric_grad(&b, h, |b| {
        dot(&lref::forward(&x, &w, Some(b), n, i, o), &up)
    });
    // The forward is bilinear: central differences are exact up to f64 rounding (~1e-10 / h).
    assert_close("d_x", &d_x, &num_x, 1e-8, 1e-7);
    assert_close("d_w", &d_w, &num_w, 1e-8, 1e-7);
    assert_close("d_b", &d_b, &num_b, 1e-8, 1e-7);
    // matmul agrees with the linear forward on a transposed weight.
    let bt = transpose(&w, o, i); // (i, o)
    assert_close(
        "matmul",
        &lref::matmul(&x, &bt, n, i, o),
        &lref::forward(&x, &w, None, n, i, o),
        1e-14,
        0.0,
    );
}

/// Runs forward + backward (accumulating onto random priors) and checks everything, with
/// the subgroup kernel variants (where the adapter has them) and without.
fn check_linear(n: usize, i: usize, o: usize, with_bias: bool, seed: u64) {
    check_linear_with(n, i, o, with_bias, seed, true);
    if gpu().subgroups() {
        check_linear_with(n, i, o, with_bias, seed, false);
    }
}

fn check_linear_with(n: usize, i: usize, o: usize, with_bias: bool, seed: u64, sg: bool) {
    let xv = f64s(&f32s(&rand(seed, n * i, -1.0, 1.0)));
    let wv = f64s(&f32s(&rand(seed + 1, o * i, -1.0, 1.0)));
    let bv = f64s(&f32s(&rand(seed + 2, o, -1.0, 1.0)));
    let up = f64s(&f32s(&rand(seed + 3, n * o, -1.0, 1.0)));
    let prior_x = f64s(&f32s(&rand(seed + 4, n * i, -1.0, 1.0)));
    let prior_w = f64s(&f32s(&rand(seed + 5, o * i, -1.0, 1.0)));
    let prior_b = f64s(&f32s(&rand(seed + 6, o, -1.0, 1.0)));
    let x = upload(&xv, &[n, i], "x");
    let w = upload(&wv, &[o, i], "weight");
    let b = upload(&bv, &[o], "bias");
    let y = gpu().zeros(&[n, o], "y").unwrap();
    let d_y = upload(&up, &[n, o], "d_y");
    let d_x = upload(&prior_x, &[n, i], "d_x");
    let d_w = upload(&prior_w, &[o, i], "d_weight");
    let d_b = upload(&prior_b, &[o], "d_bias");
    run(|e| {
        if !sg {
            e.disable_subgroups();
        }
        linear::forward(e, &y, &x, &w, with_bias.then_some(&b)).unwrap();
        linear::backward(e, Some(&d_x), &d_w, with_bias.then_some(&d_b), &d_y, &x, &w).unwrap();
    });
    let bias = with_bias.then_some(&bv[..]);
    let want_y = lref::forward(&xv, &wv, bias, n, i, o);
    let abs_b = abs(&bv);
    let bound_y = lref::forward(&abs(&xv), &abs(&wv), bias.map(|_| &abs_b[..]), n, i, o);
    assert_close("y", &download(&y), &want_y, gemm_atol(i, &bound_y), 0.0);
    let (gx, gw, gb) = lref::backward(&up, &xv, &wv, n, i, o);
    let (ax, aw, ab) = lref::backward(&abs(&up), &abs(&xv), &abs(&wv), n, i, o);
    // Accumulation adds one more rounding of the result: rtol = u.
    assert_close(
        "d_x",
        &download(&d_x),
        &add(&gx, &prior_x),
        gemm_atol(o, &add(&ax, &prior_x)),
        U,
    );
    assert_close(
        "d_weight",
        &download(&d_w),
        &add(&gw, &prior_w),
        gemm_atol(n, &add(&aw, &prior_w)),
        U,
    );
    if with_bias {
        assert_close(
            "d_bias",
            &download(&d_b),
            &add(&gb, &prior_b),
            gemm_atol(n, &add(&ab, &prior_b)),
            U,
        );
    } else {
        assert_eq!(
            download(&d_b),
            prior_b,
            "d_bias must be untouched without a bias"
        );
    }
}

#[test]
fn gpu_matches_reference_odd_sizes() {
    // Nothing is a multiple of the 16 x 8 tile or of 4: scalar kernel, clamped edges.
    check_linear(5, 37, 11, true, 20);
}

#[test]
fn gpu_matches_reference_many_workgroups() {
    // y: 1 x 3 workgroups; d_weight (130 x 300): 3 x 5; d_x (64 x 300): 1 x 5.
    check_linear(64, 300, 130, true, 30);
}

#[test]
fn gpu_matches_reference_vec4_path_and_no_bias() {
    // O and I multiples of 4: d_weight runs on gemm_v4 (A = d_yᵀ k-major, B = x), with
    // edges inside the 16 x 8 tile (20 rows, 68 columns).
    check_linear(9, 68, 20, false, 40);
    check_linear(9, 68, 20, true, 41);
}

#[test]
fn gpu_matches_reference_dot_paths() {
    // gemm_dot for the forward (O >= 256, I a multiple of 4; 260 = 32 full lanes + 4
    // columns), then for d_w (N >= 64, a multiple of 4) and d_x (O >= 64, a multiple of 4),
    // both with I = 260 >= 256 columns.
    check_linear(10, 72, 260, true, 43);
    check_linear(68, 260, 64, false, 44);
}

#[test]
fn classifier_head_shape() {
    // DenseNet-BC small: (4, 132) -> 10 classes.
    check_linear(4, 132, 10, true, 50);
}

#[test]
fn backward_without_d_x() {
    let (n, i, o) = (3, 8, 4);
    let x = upload(&rand(60, n * i, -1.0, 1.0), &[n, i], "x");
    let w = upload(&rand(61, o * i, -1.0, 1.0), &[o, i], "w");
    let up = rand(62, n * o, -1.0, 1.0);
    let d_y = upload(&up, &[n, o], "d_y");
    let d_w = gpu().zeros(&[o, i], "d_w").unwrap();
    run(|e| linear::backward(e, None, &d_w, None, &d_y, &x, &w).unwrap());
    let (_, gw, _) = lref::backward(&f64s(&f32s(&up)), &download(&x), &download(&w), n, i, o);
    assert_close("d_weight", &download(&d_w), &gw, 1e-6, 0.0);
}

#[test]
fn backward_is_bit_reproducible() {
    let (n, i, o) = (33, 40, 12);
    let x = upload(&rand(70, n * i, -1.0, 1.0), &[n, i], "x");
    let w = upload(&rand(71, o * i, -1.0, 1.0), &[o, i], "w");
    let d_y = upload(&rand(72, n * o, -1.0, 1.0), &[n, o], "d_y");
    let grads = || {
        let d_x = gpu().zeros(&[n, i], "d_x").unwrap();
        let d_w = gpu().zeros(&[o, i], "d_w").unwrap();
        let d_b = gpu().zeros(&[o], "d_b").unwrap();
        run(|e| linear::backward(e, Some(&d_x), &d_w, Some(&d_b), &d_y, &x, &w).unwrap());
        [
            gpu().download(&d_x).unwrap(),
            gpu().download(&d_w).unwrap(),
            gpu().download(&d_b).unwrap(),
        ]
    };
    let first = grads();
    let second = grads();
    for (a, b) in first.iter().zip(&second) {
        assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

fn check_matmul(m: usize, k: usize, n: usize, seed: u64) {
    check_matmul_with(m, k, n, seed, true);
    if gpu().subgroups() {
        check_matmul_with(m, k, n, seed, false);
    }
}

fn check_matmul_with(m: usize, k: usize, n: usize, seed: u64, sg: bool) {
    let av = f64s(&f32s(&rand(seed, m * k, -1.0, 1.0)));
    let bv = f64s(&f32s(&rand(seed + 1, k * n, -1.0, 1.0)));
    let a = upload(&av, &[m, k], "a");
    let b = upload(&bv, &[k, n], "b");
    // c starts non-zero: matmul overwrites.
    let c = upload(&rand(seed + 2, m * n, -1.0, 1.0), &[m, n], "c");
    run(|e| {
        if !sg {
            e.disable_subgroups();
        }
        linear::matmul(e, &c, &a, &b).unwrap()
    });
    let bound = lref::matmul(&abs(&av), &abs(&bv), m, k, n);
    assert_close(
        "c",
        &download(&c),
        &lref::matmul(&av, &bv, m, k, n),
        gemm_atol(k, &bound),
        0.0,
    );
}

#[test]
fn matmul_odd_sizes() {
    check_matmul(67, 129, 33, 80);
}

#[test]
fn matmul_vec4_path_with_edges() {
    // M, N multiples of 4 but not of the tile: transpose + gemm_v4 with clamped edges; K = 7
    // (below one group of 8) and K = 29 (3 groups of 8 shared through subgroups + 5).
    check_matmul(20, 7, 36, 85);
    check_matmul(20, 29, 36, 86);
}

#[test]
fn matmul_dot_path_with_edges() {
    // K a multiple of 4 and N >= 256: b transposed + gemm_dot. M not a multiple of the 16-row
    // block, N not a multiple of a lane's 8 columns (nor of 4), N past one workgroup's 512
    // columns, K = 4 (a single step).
    check_matmul(37, 44, 261, 87);
    check_matmul(5, 4, 300, 88);
    check_matmul(18, 12, 530, 89);
}

#[test]
fn matmul_256() {
    check_matmul(256, 256, 256, 90);
}

#[test]
fn operands_at_offsets() {
    // Contiguous 2-D views that start inside their buffers (offset 3 * 2 = 6, not a
    // multiple of 4), from single-item channel slices.
    let (m, k, n) = (8, 6, 12);
    let av = rand(100, 5 * m * k, -1.0, 1.0);
    let big_a = upload(&av, &[1, 5 * m, k, 1], "a block");
    let a = big_a.channels(1, m).unwrap().reshape(&[m, k]).unwrap();
    let bv = rand(101, 3 * k * n, -1.0, 1.0);
    let big_b = upload(&bv, &[1, 3 * k, n, 1], "b block");
    let b = big_b.channels(k, k).unwrap().reshape(&[k, n]).unwrap();
    let big_c = gpu().zeros(&[1, 3, m * n, 1], "c block").unwrap();
    let c = big_c.channels(1, 1).unwrap().reshape(&[m, n]).unwrap();
    assert_eq!((a.offset, b.offset, c.offset), (6, 72, 96));
    run(|e| linear::matmul(e, &c, &a, &b).unwrap());
    let want = lref::matmul(&download(&a), &download(&b), m, k, n);
    assert_close("c", &download(&c), &want, 1e-5, 0.0);
    // The rest of c's buffer is untouched.
    let all = download(&big_c);
    assert!(all[..m * n]
        .iter()
        .chain(&all[2 * m * n..])
        .all(|&v| v == 0.0));
    // Linear forward with x and y at offsets (x (m, k), weight (n, k)).
    let w = upload(&rand(102, n * k, -1.0, 1.0), &[n, k], "w");
    run(|e| linear::forward(e, &c, &a, &w, None).unwrap());
    let want = lref::forward(&download(&a), &download(&w), None, m, k, n);
    assert_close("y", &download(&c), &want, 1e-5, 0.0);
}

fn expect_shape_error(r: densenet_wgpu::gpu::Result<()>, needle: &str) {
    match r {
        Err(GpuError::Shape(msg)) => {
            assert!(
                msg.to_string().contains(needle),
                "{msg:?} should mention {needle:?}"
            )
        }
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn shape_errors_are_typed() {
    let z = |s: &[usize], l: &str| -> Tensor { gpu().zeros(s, l).unwrap() };
    let (x, w, b, y) = (
        z(&[4, 6], "x"),
        z(&[3, 6], "w"),
        z(&[3], "b"),
        z(&[4, 3], "y"),
    );
    let mut enc = gpu().encoder("bad");
    let e = &mut enc;
    expect_shape_error(
        linear::forward(e, &y, &x, &z(&[3, 5], "w5"), Some(&b)),
        "in-features",
    );
    expect_shape_error(linear::forward(e, &y, &x, &w, Some(&z(&[4], "b4"))), "bias");
    expect_shape_error(linear::forward(e, &z(&[5, 3], "y5"), &x, &w, Some(&b)), "y");
    expect_shape_error(
        linear::forward(e, &y, &z(&[4, 6, 1], "x3"), &w, None),
        "2-D",
    );
    expect_shape_error(
        linear::forward(e, &x, &x, &z(&[6, 6], "w6"), None),
        "shares",
    );
    let (d_x, d_w, d_b, d_y) = (
        z(&[4, 6], "d_x"),
        z(&[3, 6], "d_w"),
        z(&[3], "d_b"),
        z(&[4, 3], "d_y"),
    );
    expect_shape_error(
        linear::backward(e, Some(&d_x), &d_w, Some(&d_b), &z(&[5, 3], "dy5"), &x, &w),
        "d_y",
    );
    expect_shape_error(
        linear::backward(e, Some(&z(&[4, 5], "dx5")), &d_w, None, &d_y, &x, &w),
        "d_x",
    );
    expect_shape_error(
        linear::backward(e, None, &z(&[6, 3], "dwT"), None, &d_y, &x, &w),
        "d_weight",
    );
    expect_shape_error(
        linear::backward(e, None, &d_w, Some(&z(&[4], "db4")), &d_y, &x, &w),
        "d_bias",
    );
    expect_shape_error(
        linear::backward(e, None, &d_w, None, &d_y, &x, &z(&[3, 7], "w7")),
        "in-features",
    );
    expect_shape_error(
        linear::matmul(e, &z(&[4, 3], "c"), &x, &z(&[5, 3], "b53")),
        "inner",
    );
    expect_shape_error(
        linear::matmul(e, &z(&[4, 4], "c44"), &x, &z(&[6, 3], "b63")),
        "c",
    );
    // A channel slice that is not contiguous cannot be a matrix.
    let block = z(&[2, 4, 3, 1], "block");
    let slice = block.channels(1, 2).unwrap();
    let r = linear::forward(e, &y, &slice, &w, None);
    assert!(matches!(r, Err(GpuError::Shape(_))), "{r:?}");
}
