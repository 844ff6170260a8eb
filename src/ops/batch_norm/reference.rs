//! f64 CPU reference. `x` is NCHW with `shape = [N, C, H, W]`; per-channel slices are `[C]`.

use super::BnConfig;

fn planes(shape: [usize; 4]) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let [n, c, h, w] = shape;
    let hw = h * w;
    (0..n * c).map(move |nc| (nc % c, nc * hw..(nc + 1) * hw))
}

/// `(y, mean, inv_std)` for the given per-channel statistics (pre-ReLU clamp applied).
fn normalise(
    x: &[f64],
    shape: [usize; 4],
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    inv_std: &[f64],
    relu: bool,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (c, r) in planes(shape) {
        for i in r {
            let v = gamma[c] * (x[i] - mean[c]) * inv_std[c] + beta[c];
            y[i] = if relu { v.max(0.0) } else { v };
        }
    }
    y
}

/// `(y, mean, inv_std, new_running_mean, new_running_var)`.
pub type TrainOut = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Batch statistics and the normalised output.
pub fn forward_train(
    x: &[f64],
    shape: [usize; 4],
    gamma: &[f64],
    beta: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    cfg: BnConfig,
) -> TrainOut {
    let c = shape[1];
    let n = (shape[0] * shape[2] * shape[3]) as f64;
    let mut mean = vec![0.0; c];
    for (ch, r) in planes(shape) {
        mean[ch] += x[r].iter().sum::<f64>();
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut sq = vec![0.0; c];
    for (ch, r) in planes(shape) {
        sq[ch] += x[r].iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>();
    }
    let eps = cfg.eps as f64;
    let m = cfg.momentum as f64;
    let inv_std: Vec<f64> = sq.iter().map(|s| 1.0 / (s / n + eps).sqrt()).collect();
    let rm = (0..c)
        .map(|i| (1.0 - m) * running_mean[i] + m * mean[i])
        .collect();
    let unbiased = (n - 1.0).max(1.0);
    let rv = (0..c)
        .map(|i| (1.0 - m) * running_var[i] + m * sq[i] / unbiased)
        .collect();
    let y = normalise(x, shape, gamma, beta, &mean, &inv_std, cfg.relu);
    (y, mean, inv_std, rm, rv)
}

/// Inference forward with running statistics.
pub fn forward_eval(
    x: &[f64],
    shape: [usize; 4],
    gamma: &[f64],
    beta: &[f64],
    running_mean: &[f64],
    running_var: &[f64],
    cfg: BnConfig,
) -> Vec<f64> {
    let inv_std: Vec<f64> = running_var
        .iter()
        .map(|v| 1.0 / (v + cfg.eps as f64).sqrt())
        .collect();
    normalise(x, shape, gamma, beta, running_mean, &inv_std, cfg.relu)
}

/// `(scale, shift)` with `scale = gamma * inv_std`, `shift = beta - mean * scale`.
pub fn fold_scale_shift(
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    inv_std: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let scale: Vec<f64> = gamma.iter().zip(inv_std).map(|(g, s)| g * s).collect();
    let shift = (0..gamma.len())
        .map(|i| beta[i] - mean[i] * scale[i])
        .collect();
    (scale, shift)
}

/// Gradients for zero-initialised accumulators: `(d_x, d_gamma, d_beta)`, from the affine
/// map `(gamma, beta)` and the batch statistics `(mean, inv_std)`.
pub fn backward(
    d_y: &[f64],
    x: &[f64],
    shape: [usize; 4],
    (gamma, beta): (&[f64], &[f64]),
    (mean, inv_std): (&[f64], &[f64]),
    cfg: BnConfig,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = shape[1];
    let n = (shape[0] * shape[2] * shape[3]) as f64;
    let xhat = |ch: usize, i: usize| (x[i] - mean[ch]) * inv_std[ch];
    let g = |ch: usize, i: usize| {
        let keep = !cfg.relu || gamma[ch] * xhat(ch, i) + beta[ch] > 0.0;
        if keep {
            d_y[i]
        } else {
            0.0
        }
    };
    let mut d_gamma = vec![0.0; c];
    let mut d_beta = vec![0.0; c];
    for (ch, r) in planes(shape) {
        for i in r {
            d_beta[ch] += g(ch, i);
            d_gamma[ch] += g(ch, i) * xhat(ch, i);
        }
    }
    let mut d_x = vec![0.0; x.len()];
    for (ch, r) in planes(shape) {
        for i in r {
            d_x[i] = gamma[ch] * inv_std[ch] / n
                * (n * g(ch, i) - d_beta[ch] - xhat(ch, i) * d_gamma[ch]);
        }
    }
    (d_x, d_gamma, d_beta)
}
