use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Tensor};
use densenet_wgpu::ops::batch_norm::{self as bn, reference, BnConfig};

fn affine<'a>(gamma: &'a Tensor, beta: &'a Tensor) -> bn::Affine<'a> {
    bn::Affine { gamma, beta }
}
fn stats<'a>(mean: &'a Tensor, inv_std: &'a Tensor) -> bn::BatchStats<'a> {
    bn::BatchStats { mean, inv_std }
}
fn running<'a>(mean: &'a Tensor, var: &'a Tensor) -> bn::RunningStats<'a> {
    bn::RunningStats { mean, var }
}
fn saved<'a>(
    x: &'a Tensor,
    gamma: &'a Tensor,
    beta: &'a Tensor,
    mean: &'a Tensor,
    inv_std: &'a Tensor,
) -> bn::Saved<'a> {
    bn::Saved {
        x,
        affine: affine(gamma, beta),
        stats: stats(mean, inv_std),
    }
}
fn grads<'a>(d_gamma: &'a Tensor, d_beta: &'a Tensor) -> bn::AffineGrads<'a> {
    bn::AffineGrads { d_gamma, d_beta }
}
fn global_sums(sums: &Tensor, count: f32) -> bn::GlobalSums<'_> {
    bn::GlobalSums { sums, count }
}

const PLAIN: BnConfig = BnConfig {
    eps: 1e-5,
    momentum: 0.1,
    relu: false,
};
const RELU: BnConfig = BnConfig {
    eps: 1e-5,
    momentum: 0.1,
    relu: true,
};

// Tolerances, GPU (f32) vs f64 reference, inputs |x| <= 5, |gamma| <= 1.5, |d_y| <= 1.
// Each statistic is an f32 sum over n values whose longest addition chain is
// n / (256 lanes) per lane (<= 25 here) + 8 tree levels + 2 for vec4 lanes, so its rounding
// error is at most ~40 eps32 (5e-6) relative to the sum of |terms| and in practice ~sqrt of
// that; variance is a second pass of squared deviations, so no cancellation.
/// Mean: absolute error is relative to mean(|x|) <= 5, not to the (possibly small) mean.
const MEAN_ATOL: f64 = 5e-6;
/// inv_std and the running variance: relative to a sum of positive terms (the ~40 eps32
/// bound). Tighter than PyTorch-golden's 1e-5: using the biased variance for running_var at
/// n = 6272 is a 1.6e-5 error and must fail here.
const STAT_RTOL: f64 = 5e-6;
/// y = (x - mean) * gamma * inv_std + beta: errors of mean/inv_std times |xhat| <= ~4.
const Y_TOL: f64 = 2e-5;
/// d_x = gamma * inv_std * (g - mean(g) - xhat * mean(g*xhat)): the two sums carry ~1e-6
/// relative error scaled by |xhat|, then one multiply.
const DX_ATOL: f64 = 2e-5;
const DX_RTOL: f64 = 1e-4;
/// d_gamma, d_beta: sums of n terms of size <= ~4, error relative to the sum of |terms|.
fn param_grad_atol(n: usize) -> f64 {
    2e-6 * n as f64
}

struct Data {
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    d_y: Vec<f64>,
}

/// Random inputs, already rounded to f32. Channels get different means so that the mean
/// is not ~0; gamma keeps away from 0 and takes both signs.
fn data(seed: u64, shape: [usize; 4]) -> Data {
    let [n, c, h, w] = shape;
    let len = n * c * h * w;
    let shifts = rand(seed + 1, c, -1.0, 3.0);
    let mut x = rand(seed, len, -2.0, 2.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v += shifts[(i / (h * w)) % c];
    }
    let gamma = rand(seed + 2, c, 0.3, 1.5)
        .iter()
        .enumerate()
        .map(|(i, g)| if i % 3 == 1 { -g } else { *g })
        .collect::<Vec<_>>();
    let r = |v: Vec<f64>| f64s(&f32s(&v));
    Data {
        x: r(x),
        gamma: r(gamma),
        beta: r(rand(seed + 3, c, -0.5, 0.5)),
        running_mean: r(rand(seed + 4, c, -0.2, 0.2)),
        running_var: r(rand(seed + 5, c, 0.5, 1.5)),
        d_y: r(rand(seed + 6, len, -1.0, 1.0)),
    }
}

/// The values of a (N, C, H, W) tensor `v` placed as channels `[c0, c0 + C)` of a buffer
/// with `total` channels (others filled with `fill`), or as a whole tensor when `slot` is None.
fn place(
    v: &[f64],
    shape: [usize; 4],
    slot: Option<(usize, usize)>,
    fill: f64,
    label: &str,
) -> Tensor {
    let [n, c, h, w] = shape;
    match slot {
        None => upload(v, &shape, label),
        Some((c0, total)) => {
            let hw = h * w;
            let mut all = vec![fill; n * total * hw];
            for b in 0..n {
                let dst = (b * total + c0) * hw;
                all[dst..dst + c * hw].copy_from_slice(&v[b * c * hw..(b + 1) * c * hw]);
            }
            upload(&all, &[n, total, h, w], label)
                .channels(c0, c)
                .unwrap()
        }
    }
}

/// Checks that the channels outside a slot still hold `fill`.
fn assert_outside(t: &Tensor, slot: Option<(usize, usize)>, fill: f64) {
    let Some((c0, total)) = slot else { return };
    let [n, c, h, w] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
    let parent = Tensor::contiguous(t.storage.clone(), &[n, total, h, w]);
    let all = download(&parent);
    for b in 0..n {
        for ch in (0..total).filter(|ch| !(c0..c0 + c).contains(ch)) {
            let s = (b * total + ch) * h * w;
            assert!(
                all[s..s + h * w].iter().all(|&v| v == fill),
                "{} channel {ch} changed",
                t.label()
            );
        }
    }
}

/// `d.d_y`, with ReLU zeroed where BN(x) is within rounding of 0: those values could take
/// either side of the mask, so the comparison must not depend on them.
fn d_y_off_the_kink(d: &Data, shape: [usize; 4], cfg: BnConfig) -> Vec<f64> {
    let mut d_y = d.d_y.clone();
    if cfg.relu {
        let pre = reference::forward_train(
            &d.x,
            shape,
            &d.gamma,
            &d.beta,
            &d.running_mean,
            &d.running_var,
            PLAIN,
        )
        .0;
        for (g, p) in d_y.iter_mut().zip(&pre) {
            if p.abs() < 1e-4 {
                *g = 0.0;
            }
        }
    }
    d_y
}

fn zeros(shape: &[usize], label: &str) -> Tensor {
    gpu().zeros(shape, label).unwrap()
}

/// Slots (channel offset, channel count of the parent) for x, y, d_y, d_x.
type Slots = [Option<(usize, usize)>; 4];

/// GPU training forward + backward (accumulating onto random priors) vs the f64 reference.
fn check_train(seed: u64, shape: [usize; 4], cfg: BnConfig, slots: Slots) {
    let d = data(seed, shape);
    let [n, c, h, w] = shape;
    let count = n * h * w;
    let (y_ref, mean_ref, inv_std_ref, rm_ref, rv_ref) = reference::forward_train(
        &d.x,
        shape,
        &d.gamma,
        &d.beta,
        &d.running_mean,
        &d.running_var,
        cfg,
    );
    let d_y = d_y_off_the_kink(&d, shape, cfg);
    let prior_dx = f64s(&f32s(&rand(seed + 10, n * c * h * w, -1.0, 1.0)));
    let prior_dg = f64s(&f32s(&rand(seed + 11, c, -1.0, 1.0)));
    let prior_db = f64s(&f32s(&rand(seed + 12, c, -1.0, 1.0)));

    let x = place(&d.x, shape, slots[0], 7.0, "x block");
    let y = place(&vec![9.0; d.x.len()], shape, slots[1], 8.0, "y block");
    let dyt = place(&d_y, shape, slots[2], 6.0, "d_y block");
    let d_x = place(&prior_dx, shape, slots[3], 5.0, "d_x block");
    let gamma = upload(&d.gamma, &[c], "gamma");
    let beta = upload(&d.beta, &[c], "beta");
    let rm = upload(&d.running_mean, &[c], "running_mean");
    let rv = upload(&d.running_var, &[c], "running_var");
    let mean = zeros(&[c], "mean");
    let inv_std = zeros(&[c], "inv_std");
    let d_gamma = upload(&prior_dg, &[c], "d_gamma");
    let d_beta = upload(&prior_db, &[c], "d_beta");
    run(|e| {
        bn::forward_train(
            e,
            Some(&y),
            stats(&mean, &inv_std),
            running(&rm, &rv),
            &x,
            affine(&gamma, &beta),
            cfg,
        )
        .unwrap();
        bn::backward(
            e,
            &d_x,
            grads(&d_gamma, &d_beta),
            &dyt,
            saved(&x, &gamma, &beta, &mean, &inv_std),
            cfg,
        )
        .unwrap();
    });
    let what = format!("{shape:?} relu={}", cfg.relu);
    let mean_got = download(&mean);
    let inv_std_got = download(&inv_std);
    assert_close(
        &format!("mean {what}"),
        &mean_got,
        &mean_ref,
        MEAN_ATOL,
        0.0,
    );
    assert_close(
        &format!("inv_std {what}"),
        &inv_std_got,
        &inv_std_ref,
        0.0,
        STAT_RTOL,
    );
    assert_close(
        &format!("running_mean {what}"),
        &download(&rm),
        &rm_ref,
        MEAN_ATOL,
        0.0,
    );
    assert_close(
        &format!("running_var {what}"),
        &download(&rv),
        &rv_ref,
        0.0,
        STAT_RTOL,
    );
    assert_close(&format!("y {what}"), &download(&y), &y_ref, Y_TOL, Y_TOL);

    // Backward from the statistics the GPU saved, so this checks the backward kernel alone.
    let (dx_ref, dg_ref, db_ref) = reference::backward(
        &d_y,
        &d.x,
        shape,
        (&d.gamma[..], &d.beta[..]),
        (&mean_got[..], &inv_std_got[..]),
        cfg,
    );
    let plus = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a + b).collect::<Vec<_>>();
    let atol = param_grad_atol(count);
    assert_close(
        &format!("d_x {what}"),
        &download(&d_x),
        &plus(&prior_dx, &dx_ref),
        DX_ATOL,
        DX_RTOL,
    );
    assert_close(
        &format!("d_gamma {what}"),
        &download(&d_gamma),
        &plus(&prior_dg, &dg_ref),
        atol,
        1e-5,
    );
    assert_close(
        &format!("d_beta {what}"),
        &download(&d_beta),
        &plus(&prior_db, &db_ref),
        atol,
        1e-5,
    );

    assert_outside(&x, slots[0], 7.0);
    assert_outside(&y, slots[1], 8.0);
    assert_outside(&d_x, slots[3], 5.0);
}

#[test]
fn reference_backward_matches_finite_differences() {
    let shape = [2, 3, 4, 5];
    for cfg in [PLAIN, RELU] {
        let d = data(21, shape);
        let (pre, ..) = reference::forward_train(
            &d.x,
            shape,
            &d.gamma,
            &d.beta,
            &d.running_mean,
            &d.running_var,
            PLAIN,
        );
        // The ReLU kink must be far from every value relative to the step h = 1e-6.
        let closest = pre.iter().fold(f64::MAX, |m, v| m.min(v.abs()));
        assert!(closest > 1e-3, "BN(x) too close to 0: {closest}");
        let (_, mean, inv_std, ..) = reference::forward_train(
            &d.x,
            shape,
            &d.gamma,
            &d.beta,
            &d.running_mean,
            &d.running_var,
            cfg,
        );
        let (dx, dg, db) = reference::backward(
            &d.d_y,
            &d.x,
            shape,
            (&d.gamma[..], &d.beta[..]),
            (&mean[..], &inv_std[..]),
            cfg,
        );
        let loss = |x: &[f64], g: &[f64], b: &[f64]| {
            let y =
                reference::forward_train(x, shape, g, b, &d.running_mean, &d.running_var, cfg).0;
            dot(&y, &d.d_y)
        };
        // Central differences in f64 with h = 1e-6: truncation ~h^2, rounding ~1e-16/h.
        let nx = numeric_grad(&d.x, 1e-6, |x| loss(x, &d.gamma, &d.beta));
        let ng = numeric_grad(&d.gamma, 1e-6, |g| loss(&d.x, g, &d.beta));
        let nb = numeric_grad(&d.beta, 1e-6, |b| loss(&d.x, &d.gamma, b));
        assert_close("d_x", &dx, &nx, 1e-7, 1e-6);
        assert_close("d_gamma", &dg, &ng, 1e-7, 1e-6);
        assert_close("d_beta", &db, &nb, 1e-7, 1e-6);
    }
}

#[test]
fn gpu_train_odd_shapes_scalar_path() {
    // H*W odd: scalar entry points. 63 and 323 values per plane, 189 and 646 per channel:
    // neither a multiple of the 256 lanes.
    check_train(31, [3, 5, 7, 9], PLAIN, [None; 4]);
    check_train(32, [2, 13, 17, 19], RELU, [None; 4]);
}

#[test]
fn gpu_train_vec4_path_and_single_channel() {
    // H*W % 4 == 0: vec4 entry points. C = 1; 2*4*4 = 32 values (fewer than the lanes).
    check_train(41, [4, 1, 10, 10], RELU, [None; 4]);
    check_train(42, [2, 3, 4, 4], PLAIN, [None; 4]);
    // N*H*W = 1: biased variance 0, running_var uses it (no division by zero).
    check_train(43, [1, 3, 1, 1], PLAIN, [None; 4]);
}

#[test]
fn gpu_train_big() {
    // 6272 values per channel (24.5 vec4 units per lane), 33 workgroups.
    check_train(51, [8, 33, 28, 28], RELU, [None; 4]);
}

#[test]
fn gpu_train_on_channel_slice_views() {
    // x is the prefix of a dense-block buffer, y / d_y / d_x are slices in the middle of
    // others; both vec4 (H*W = 12) and scalar (H*W = 15) paths.
    for (seed, shape) in [(61, [3, 6, 3, 4]), (62, [3, 6, 3, 5])] {
        for cfg in [PLAIN, RELU] {
            check_train(
                seed,
                shape,
                cfg,
                [Some((0, 10)), Some((2, 9)), Some((3, 11)), Some((1, 7))],
            );
        }
    }
}

#[test]
fn gpu_stats_only_matches_full_forward() {
    let shape = [2, 7, 6, 5];
    let d = data(71, shape);
    let c = shape[1];
    let x = upload(&d.x, &shape, "x");
    let gamma = upload(&d.gamma, &[c], "gamma");
    let beta = upload(&d.beta, &[c], "beta");
    let y = zeros(&shape, "y");
    let run_once = |y: Option<&Tensor>| {
        let rm = upload(&d.running_mean, &[c], "running_mean");
        let rv = upload(&d.running_var, &[c], "running_var");
        let mean = zeros(&[c], "mean");
        let inv_std = zeros(&[c], "inv_std");
        run(|e| {
            bn::forward_train(
                e,
                y,
                stats(&mean, &inv_std),
                running(&rm, &rv),
                &x,
                affine(&gamma, &beta),
                RELU,
            )
            .unwrap()
        });
        [mean, inv_std, rm, rv].map(|t| gpu().download(&t).unwrap())
    };
    let with_y = run_once(Some(&y));
    let without = run_once(None);
    for (name, (a, b)) in ["mean", "inv_std", "running_mean", "running_var"]
        .iter()
        .zip(with_y.iter().zip(&without))
    {
        assert_eq!(a, b, "{name} differs between y Some and None");
    }
}

/// The synchronised entry points on a batch cut in two "ranks" (two tensors of N/2 items),
/// merged on the host as `Tape::bn_statistics` and `BatchNormOp` merge them, vs the f64
/// reference on the whole batch: statistics, y, d_x, d_gamma and d_beta.
fn check_synchronised(seed: u64, shape: [usize; 4], cfg: BnConfig) {
    let d = data(seed, shape);
    let [n, c, h, w] = shape;
    let half = [n / 2, c, h, w];
    let len = half.iter().product::<usize>();
    let (y_ref, mean_ref, inv_std_ref, ..) = reference::forward_train(
        &d.x,
        shape,
        &d.gamma,
        &d.beta,
        &d.running_mean,
        &d.running_var,
        cfg,
    );
    let d_y = d_y_off_the_kink(&d, shape, cfg);
    let gamma = upload(&d.gamma, &[c], "gamma");
    let beta = upload(&d.beta, &[c], "beta");
    let rm = upload(&d.running_mean, &[c], "running_mean");
    let rv = upload(&d.running_var, &[c], "running_var");
    let xs = [0, 1].map(|r| upload(&d.x[r * len..(r + 1) * len], &half, "x half"));
    let dys = [0, 1].map(|r| upload(&d_y[r * len..(r + 1) * len], &half, "d_y half"));

    // Forward: each half's (mean, M2), merged with Chan's formula.
    let (mut count, mut mean, mut m2) = (vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]);
    for x in &xs {
        let (hm, hq) = (zeros(&[c], "mean"), zeros(&[c], "m2"));
        run(|e| bn::moments(e, &hm, &hq, x, affine(&gamma, &beta), cfg).unwrap());
        let nb = (n / 2 * h * w) as f64;
        for (ch, (mb, qb)) in download(&hm).into_iter().zip(download(&hq)).enumerate() {
            let total = count[ch] + nb;
            let delta = mb - mean[ch];
            mean[ch] += delta * nb / total;
            m2[ch] += qb + delta * delta * count[ch] * nb / total;
            count[ch] = total;
        }
    }
    let inv_std: Vec<f64> = (0..c)
        .map(|ch| 1.0 / (m2[ch] / count[ch] + cfg.eps as f64).sqrt())
        .collect();
    let what = format!("{shape:?} relu={}", cfg.relu);
    assert_close(
        &format!("merged mean {what}"),
        &mean,
        &mean_ref,
        MEAN_ATOL,
        0.0,
    );
    assert_close(
        &format!("merged inv_std {what}"),
        &inv_std,
        &inv_std_ref,
        0.0,
        STAT_RTOL,
    );
    let mean_t = upload(&mean, &[c], "global mean");
    let inv_std_t = upload(&inv_std, &[c], "global inv_std");
    let mut y = Vec::new();
    for x in &xs {
        let yt = zeros(&half, "y half");
        run(|e| {
            bn::apply(
                e,
                &yt,
                stats(&mean_t, &inv_std_t),
                running(&rm, &rv),
                x,
                affine(&gamma, &beta),
                cfg,
            )
            .unwrap()
        });
        y.extend(download(&yt));
    }
    assert_close(&format!("y {what}"), &y, &y_ref, Y_TOL, Y_TOL);

    // Backward: each half's sums, added up, then each half's d_x from the totals.
    let (d_gamma, d_beta) = (zeros(&[c], "d_gamma"), zeros(&[c], "d_beta"));
    let mut totals = vec![0.0f64; 2 * c];
    let d_xs = [0, 1].map(|_| zeros(&half, "d_x half"));
    for ((x, dy), dx) in xs.iter().zip(&dys).zip(&d_xs) {
        let sums = zeros(&[2 * c], "sums");
        run(|e| {
            bn::backward_sums(
                e,
                &sums,
                dx,
                grads(&d_gamma, &d_beta),
                dy,
                saved(x, &gamma, &beta, &mean_t, &inv_std_t),
                cfg,
            )
            .unwrap()
        });
        for (t, v) in totals.iter_mut().zip(download(&sums)) {
            *t += v;
        }
    }
    let totals_t = upload(&totals, &[2 * c], "sums over the halves");
    let global = (n * h * w) as f32;
    let mut d_x = Vec::new();
    for ((x, dy), dx) in xs.iter().zip(&dys).zip(&d_xs) {
        run(|e| {
            bn::backward_apply(
                e,
                dx,
                global_sums(&totals_t, global),
                grads(&d_gamma, &d_beta),
                dy,
                saved(x, &gamma, &beta, &mean_t, &inv_std_t),
                cfg,
            )
            .unwrap()
        });
        d_x.extend(download(dx));
    }
    let (dx_ref, dg_ref, db_ref) = reference::backward(
        &d_y,
        &d.x,
        shape,
        (&d.gamma[..], &d.beta[..]),
        (&mean[..], &inv_std[..]),
        cfg,
    );
    let atol = param_grad_atol(n * h * w);
    assert_close(&format!("d_x {what}"), &d_x, &dx_ref, DX_ATOL, DX_RTOL);
    assert_close(
        &format!("d_gamma {what}"),
        &download(&d_gamma),
        &dg_ref,
        atol,
        1e-5,
    );
    assert_close(
        &format!("d_beta {what}"),
        &download(&d_beta),
        &db_ref,
        atol,
        1e-5,
    );
}

#[test]
fn gpu_synchronised_entry_points_over_two_halves_match_the_reference() {
    check_synchronised(81, [4, 5, 3, 7], PLAIN); // H*W = 21: scalar path
    check_synchronised(82, [6, 3, 4, 4], RELU); // vec4 path
    check_synchronised(83, [2, 9, 11, 9], RELU); // one image per half
}

#[test]
fn gpu_eval_matches_reference() {
    for (seed, shape, slots) in [
        (81, [2, 6, 5, 7], None),
        (82, [2, 6, 4, 4], None),
        (83, [3, 4, 3, 5], Some((1, 8))),
    ] {
        for cfg in [PLAIN, RELU] {
            let d = data(seed, shape);
            let c = shape[1];
            let x = place(&d.x, shape, slots, 7.0, "x block");
            let y = place(&vec![9.0; d.x.len()], shape, slots, 8.0, "y block");
            let gamma = upload(&d.gamma, &[c], "gamma");
            let beta = upload(&d.beta, &[c], "beta");
            let rm = upload(&d.running_mean, &[c], "running_mean");
            let rv = upload(&d.running_var, &[c], "running_var");
            run(|e| {
                bn::forward_eval(e, &y, &x, affine(&gamma, &beta), running(&rm, &rv), cfg).unwrap()
            });
            let want = reference::forward_eval(
                &d.x,
                shape,
                &d.gamma,
                &d.beta,
                &d.running_mean,
                &d.running_var,
                cfg,
            );
            // A handful of f32 operations per value on |x - mean| <= 5: a few eps32 of 5.
            assert_close(
                &format!("eval y {shape:?}"),
                &download(&y),
                &want,
                2e-6,
                2e-6,
            );
            assert_outside(&y, slots, 8.0);
        }
    }
}

#[test]
fn gpu_fold_scale_shift_matches_reference() {
    // 100 channels: two workgroups of 64.
    let c = 100;
    let gamma = f64s(&f32s(&rand(91, c, -1.5, 1.5)));
    let beta = f64s(&f32s(&rand(92, c, -0.5, 0.5)));
    let mean = f64s(&f32s(&rand(93, c, -1.0, 3.0)));
    let inv_std = f64s(&f32s(&rand(94, c, 0.2, 3.0)));
    let t = |v: &[f64], l: &str| upload(v, &[c], l);
    let (scale, shift) = (zeros(&[c], "scale"), zeros(&[c], "shift"));
    let (g, b, m, s) = (
        t(&gamma, "gamma"),
        t(&beta, "beta"),
        t(&mean, "mean"),
        t(&inv_std, "inv_std"),
    );
    run(|e| bn::fold_scale_shift(e, &scale, &shift, affine(&g, &b), stats(&m, &s)).unwrap());
    let (want_scale, want_shift) = reference::fold_scale_shift(&gamma, &beta, &mean, &inv_std);
    // One or two f32 roundings of values <= ~15.
    assert_close("scale", &download(&scale), &want_scale, 0.0, 1e-7);
    assert_close("shift", &download(&shift), &want_shift, 4e-6, 1e-7);
}

#[test]
fn gpu_is_bit_deterministic() {
    let shape = [8, 33, 28, 28];
    let d = data(101, shape);
    let c = shape[1];
    let x = upload(&d.x, &shape, "x");
    let dyt = upload(&d.d_y, &shape, "d_y");
    let gamma = upload(&d.gamma, &[c], "gamma");
    let beta = upload(&d.beta, &[c], "beta");
    let once = || {
        let y = zeros(&shape, "y");
        let d_x = zeros(&shape, "d_x");
        let rm = upload(&d.running_mean, &[c], "running_mean");
        let rv = upload(&d.running_var, &[c], "running_var");
        let [mean, inv_std, d_gamma, d_beta] =
            ["mean", "inv_std", "d_gamma", "d_beta"].map(|l| zeros(&[c], l));
        run(|e| {
            bn::forward_train(
                e,
                Some(&y),
                stats(&mean, &inv_std),
                running(&rm, &rv),
                &x,
                affine(&gamma, &beta),
                RELU,
            )
            .unwrap();
            bn::backward(
                e,
                &d_x,
                grads(&d_gamma, &d_beta),
                &dyt,
                saved(&x, &gamma, &beta, &mean, &inv_std),
                RELU,
            )
            .unwrap();
        });
        [y, d_x, rm, rv, mean, inv_std, d_gamma, d_beta].map(|t| {
            gpu()
                .download(&t)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<u32>>()
        })
    };
    let (a, b) = (once(), once());
    let names = [
        "y",
        "d_x",
        "running_mean",
        "running_var",
        "mean",
        "inv_std",
        "d_gamma",
        "d_beta",
    ];
    for (i, name) in names.iter().enumerate() {
        assert!(a[i] == b[i], "{name} differs between two identical runs");
    }
}

#[test]
fn shape_errors_are_typed() {
    let shape = [2, 4, 3, 3];
    let x = zeros(&shape, "x");
    let y = zeros(&shape, "y");
    let c4 = || zeros(&[4], "per-channel");
    let c5 = zeros(&[5], "wrong C");
    let (g, b, m, s, rm, rv) = (c4(), c4(), c4(), c4(), c4(), c4());
    let expect = |r: Result<(), GpuError>, needle: &str| match r {
        Err(GpuError::Shape(msg)) => assert!(
            msg.to_string().contains(needle),
            "{msg} does not name {needle}"
        ),
        other => panic!("expected a shape error naming {needle}, got {other:?}"),
    };
    let mut e = gpu().encoder("bad");
    let e = &mut e;
    expect(
        bn::forward_train(
            e,
            Some(&y),
            stats(&m, &s),
            running(&rm, &rv),
            &x,
            affine(&c5, &b),
            PLAIN,
        ),
        "gamma",
    );
    expect(
        bn::forward_train(
            e,
            Some(&y),
            stats(&m, &s),
            running(&c5, &rv),
            &x,
            affine(&g, &b),
            PLAIN,
        ),
        "running_mean",
    );
    expect(
        bn::forward_train(
            e,
            None,
            stats(&m, &s),
            running(&rm, &c5),
            &x,
            affine(&g, &b),
            PLAIN,
        ),
        "running_var",
    );
    let y_bad = zeros(&[2, 4, 3, 4], "y");
    expect(
        bn::forward_train(
            e,
            Some(&y_bad),
            stats(&m, &s),
            running(&rm, &rv),
            &x,
            affine(&g, &b),
            PLAIN,
        ),
        "y",
    );
    expect(
        bn::forward_train(
            e,
            Some(&x),
            stats(&m, &s),
            running(&rm, &rv),
            &x,
            affine(&g, &b),
            PLAIN,
        ),
        "shares",
    );
    let empty = zeros(&[0, 4, 3, 3], "empty");
    expect(
        bn::forward_train(
            e,
            None,
            stats(&m, &s),
            running(&rm, &rv),
            &empty,
            affine(&g, &b),
            PLAIN,
        ),
        "at least one",
    );
    let flat = zeros(&[2, 36], "flat");
    expect(
        bn::forward_train(
            e,
            None,
            stats(&m, &s),
            running(&rm, &rv),
            &flat,
            affine(&g, &b),
            PLAIN,
        ),
        "4-D",
    );
    expect(
        bn::forward_eval(e, &y_bad, &x, affine(&g, &b), running(&rm, &rv), PLAIN),
        "y",
    );
    expect(
        bn::forward_eval(e, &y, &x, affine(&g, &b), running(&rm, &c5), PLAIN),
        "running_var",
    );
    expect(
        bn::fold_scale_shift(e, &c5, &s, affine(&g, &b), stats(&m, &s)),
        "scale",
    );
    let d_x = zeros(&shape, "d_x");
    expect(
        bn::backward(
            e,
            &d_x,
            grads(&c4(), &c4()),
            &y_bad,
            saved(&x, &g, &b, &m, &s),
            PLAIN,
        ),
        "d_y",
    );
    expect(
        bn::backward(
            e,
            &y_bad,
            grads(&c4(), &c4()),
            &y,
            saved(&x, &g, &b, &m, &s),
            PLAIN,
        ),
        "d_x",
    );
    expect(
        bn::backward(
            e,
            &d_x,
            grads(&c5, &c4()),
            &y,
            saved(&x, &g, &b, &m, &s),
            PLAIN,
        ),
        "d_gamma",
    );
    expect(
        bn::backward(
            e,
            &d_x,
            grads(&c4(), &c4()),
            &y,
            saved(&x, &g, &b, &m, &c5),
            PLAIN,
        ),
        "inv_std",
    );
}
