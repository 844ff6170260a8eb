//! 2-D batch normalisation per channel over (N, H, W), PyTorch semantics, with an optional
//! fused ReLU: training forward (batch statistics, running-statistics update), inference
//! forward, folding into a per-channel affine map, and backward from the saved statistics.
//!
//! Every entry point (except `fold`) runs one workgroup per channel that walks the
//! channel's values, so the statistics and the gradient sums are exact fixed-order
//! reductions and each op is a single dispatch (see `shaders/batch_norm.wgsl`).

use super::{groups, ViewParams};
use crate::gpu::{
    check_distinct, expect_shape, nchw, to_u32, Arg, Encoder, Gpu, GpuError, Launch, Result,
    Shader, Tensor,
};
use crate::tape::{output_grad, Backward, RunningStats, Tape, Var};

pub const SHADER: Shader = shader!("batch_norm");
/// Lanes per workgroup of the per-channel entry points (a power of two).
const WG: u32 = 256;

/// Lanes per channel workgroup: 256 for large channels, fewer when a channel has few
/// values (late DenseNet layers have N*H*W of 8..200), so small launches don't pay for idle
/// lanes and reduction levels. One pipeline per distinct size (at most four).
fn lanes(p: &Params) -> f64 {
    let units = (p.units as u64).max(1);
    units.div_ceil(4).next_power_of_two().clamp(32, WG as u64) as f64
}
/// Lanes per workgroup of `fold` (one invocation per channel).
const FOLD_WG: u32 = 64;

/// Hyper-parameters of a batch-norm layer.
#[derive(Clone, Copy, Debug)]
pub struct BnConfig {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the new batch statistic in the running statistics.
    pub momentum: f32,
    /// Apply `max(., 0)` after the normalisation (and mask the gradient accordingly).
    pub relu: bool,
}

impl Default for BnConfig {
    fn default() -> Self {
        BnConfig {
            eps: 1e-5,
            momentum: 0.1,
            relu: false,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams,
    y: ViewParams,
    d_x: ViewParams,
    batch: u32,
    channels: u32,
    hw: u32,
    units: u32,
    count: f32,
    count_unbiased: f32,
    eps: f32,
    momentum: f32,
    relu: u32,
    _pad: [u32; 3],
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    inv_std_off: u32,
    running_mean_off: u32,
    running_var_off: u32,
    d_gamma_off: u32,
    d_beta_off: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 128);

/// Checks `x` and the other 4-D views against it and fills the geometry of a launch.
/// Picks vec4 units when H*W and every view's offset and batch stride allow it.
/// `y` and `d_x` are the tensors bound through `p.y` and `p.d_x` (either may be absent).
fn geometry(
    op: &str,
    x: &Tensor,
    y: Option<(&str, &Tensor)>,
    d_x: Option<(&str, &Tensor)>,
    cfg: BnConfig,
) -> Result<(Params, u32)> {
    let [n, c, h, w] = nchw(op, "x", x)?;
    let all: Vec<(&str, &Tensor)> = [Some(("x", x)), y, d_x].into_iter().flatten().collect();
    for (name, t) in &all {
        expect_shape(op, name, &t.shape, &x.shape)?;
        to_u32(op, &format!("{name} buffer length"), t.storage.numel)?;
    }
    let hw = h * w;
    let vec = if hw % 4 == 0
        && all
            .iter()
            .all(|(_, t)| t.offset % 4 == 0 && t.batch_stride % 4 == 0)
    {
        4
    } else {
        1
    };
    let unit_view = |t: &Tensor| ViewParams {
        offset: (t.offset / vec) as u32,
        batch_stride: (t.batch_stride / vec) as u32,
        item: (t.item_numel().max(1) / vec) as u32,
        _pad: 0,
    };
    let count = n * hw;
    let p = Params {
        x: unit_view(x),
        y: y.map(|(_, t)| unit_view(t)).unwrap_or_default(),
        d_x: d_x.map(|(_, t)| unit_view(t)).unwrap_or_default(),
        batch: to_u32(op, "N", n)?,
        channels: to_u32(op, "C", c)?,
        hw: to_u32(op, "H*W", hw / vec)?.max(1),
        units: to_u32(op, "N*H*W", count / vec)?,
        count: count as f32,
        count_unbiased: count.saturating_sub(1).max(1) as f32,
        eps: cfg.eps,
        momentum: cfg.momentum,
        relu: cfg.relu as u32,
        _pad: [0; 3],
        gamma_off: 0,
        beta_off: 0,
        mean_off: 0,
        inv_std_off: 0,
        running_mean_off: 0,
        running_var_off: 0,
        d_gamma_off: 0,
        d_beta_off: 0,
    };
    Ok((p, vec as u32))
}

/// Checks a per-channel tensor (shape `[C]`) and returns its offset in its buffer.
fn per_channel(op: &str, what: &str, t: &Tensor, c: usize) -> Result<u32> {
    expect_shape(op, what, &t.shape, &[c])?;
    to_u32(op, &format!("{what} buffer length"), t.storage.numel)?;
    Ok(t.offset as u32)
}

fn channel_grid(op: &str, c: u32) -> Result<[u32; 3]> {
    let g = Gpu::grid_1d(c);
    if g[1] > crate::gpu::MAX_WORKGROUPS_PER_DIM {
        return Err(GpuError::Limit(format!("{op}: {c} channels")));
    }
    Ok(g)
}

/// Training forward. Computes per-channel batch `mean` `[C]` and `inv_std` `[C]` =
/// 1/sqrt(var_biased + eps) (saved for backward), updates `running_mean`/`running_var` `[C]` in
/// place (`r = (1 - momentum) r + momentum s`, with the unbiased variance for
/// `running_var`), and if `y` is Some writes `y = gamma * (x - mean) * inv_std + beta` (then
/// `max(., 0)` if `cfg.relu`). `y` None = statistics only. `x` and `y` may be channel-slice
/// views of one shape (N, C, H, W); they may not share a buffer.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    enc: &mut Encoder,
    y: Option<&Tensor>,
    mean: &Tensor,
    inv_std: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    let kind = if y.is_some() {
        TrainLayout::Train
    } else {
        TrainLayout::Stats
    };
    let running = Some((running_mean, running_var));
    launch_train_layout(enc, kind, y, (mean, inv_std), running, x, gamma, beta, cfg)
}

/// The entry points on `train_*`'s bindings (x, gamma, beta, mean, inv_std, running mean
/// and variance, y) and what each reads and writes of them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrainLayout {
    /// Statistics, running statistics and y.
    Train,
    /// Statistics and running statistics.
    Stats,
    /// This rank's (mean, M2) into (mean, inv_std)'s bindings.
    Moments,
    /// y from given (mean, inv_std); the running statistics are bound, not used.
    Apply,
}

impl TrainLayout {
    fn name(self) -> &'static str {
        match self {
            TrainLayout::Train => "train",
            TrainLayout::Stats => "stats",
            TrainLayout::Moments => "moments",
            TrainLayout::Apply => "apply",
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_train_layout(
    enc: &mut Encoder,
    kind: TrainLayout,
    y: Option<&Tensor>,
    (mean, inv_std): (&Tensor, &Tensor),
    running: Option<(&Tensor, &Tensor)>,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    let op = &format!(
        "batch_norm {}",
        match kind {
            TrainLayout::Train | TrainLayout::Stats => "forward_train",
            other => other.name(),
        }
    );
    let (mut p, vec) = geometry(op, x, y.map(|t| ("y", t)), None, cfg)?;
    if p.units == 0 {
        return Err(GpuError::Shape(format!(
            "{op}: x has shape {:?}; training needs at least one value per channel",
            x.shape
        )));
    }
    let c = x.shape[1];
    let stat_names = if kind == TrainLayout::Moments {
        ("mean", "m2")
    } else {
        ("mean", "inv_std")
    };
    p.gamma_off = per_channel(op, "gamma", gamma, c)?;
    p.beta_off = per_channel(op, "beta", beta, c)?;
    p.mean_off = per_channel(op, stat_names.0, mean, c)?;
    p.inv_std_off = per_channel(op, stat_names.1, inv_std, c)?;
    let mut reads = vec![("x", x), ("gamma", gamma), ("beta", beta)];
    let mut writes = vec![];
    match kind {
        TrainLayout::Apply => reads.extend([("mean", mean), ("inv_std", inv_std)]),
        _ => writes.extend([(stat_names.0, mean), (stat_names.1, inv_std)]),
    }
    if let Some((rm, rv)) = running {
        p.running_mean_off = per_channel(op, "running_mean", rm, c)?;
        p.running_var_off = per_channel(op, "running_var", rv, c)?;
        if kind != TrainLayout::Apply {
            writes.extend([("running_mean", rm), ("running_var", rv)]);
        }
    }
    writes.extend(y.map(|y| ("y", y)));
    check_distinct(op, &writes, &reads)?;
    let mut args = vec![
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(x),
        Arg::Read(gamma),
        Arg::Read(beta),
        Arg::Write(mean),
        Arg::Write(inv_std),
    ];
    if let Some((rm, rv)) = running {
        args.extend([Arg::Write(rm), Arg::Write(rv)]);
    }
    args.extend(y.map(Arg::Write));
    enc.launch(Launch {
        shader: &SHADER,
        entry: &format!("{}_v{vec}", kind.name()),
        overrides: &[("WG", lanes(&p))],
        args: &args,
        workgroups: channel_grid(op, p.channels)?,
    })
}

/// Inference forward with running statistics:
/// `y = (x - running_mean) * gamma / sqrt(running_var + eps) + beta` (then `max(., 0)` if
/// `cfg.relu`). Overwrites `y`; `x` and `y` may be views, not sharing a buffer.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    enc: &mut Encoder,
    y: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    let op = "batch_norm forward_eval";
    let (mut p, vec) = geometry(op, x, Some(("y", y)), None, cfg)?;
    let c = x.shape[1];
    p.gamma_off = per_channel(op, "gamma", gamma, c)?;
    p.beta_off = per_channel(op, "beta", beta, c)?;
    p.running_mean_off = per_channel(op, "running_mean", running_mean, c)?;
    p.running_var_off = per_channel(op, "running_var", running_var, c)?;
    check_distinct(
        op,
        &[("y", y)],
        &[
            ("x", x),
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ],
    )?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: &format!("eval_v{vec}"),
        overrides: &[("WG", lanes(&p))],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Read(gamma),
            Arg::Read(beta),
            Arg::Read(running_mean),
            Arg::Read(running_var),
            Arg::Write(y),
        ],
        workgroups: channel_grid(op, p.channels)?,
    })
}

/// Per-channel `scale = gamma * inv_std`, `shift = beta - mean * scale` (so
/// `BN(x) = scale * x + shift`); used to apply BN(+ReLU) on the fly inside a following conv.
/// All tensors are `[C]`.
pub fn fold_scale_shift(
    enc: &mut Encoder,
    scale: &Tensor,
    shift: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
) -> Result<()> {
    let op = "batch_norm fold_scale_shift";
    let c = gamma.shape.first().copied().unwrap_or(0);
    let mut p: Params = bytemuck::Zeroable::zeroed();
    p.channels = to_u32(op, "C", c)?;
    p.gamma_off = per_channel(op, "gamma", gamma, c)?;
    p.beta_off = per_channel(op, "beta", beta, c)?;
    p.mean_off = per_channel(op, "mean", mean, c)?;
    p.inv_std_off = per_channel(op, "inv_std", inv_std, c)?;
    p.d_gamma_off = per_channel(op, "scale", scale, c)?;
    p.d_beta_off = per_channel(op, "shift", shift, c)?;
    check_distinct(
        op,
        &[("scale", scale), ("shift", shift)],
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("mean", mean),
            ("inv_std", inv_std),
        ],
    )?;
    enc.launch(Launch {
        shader: &SHADER,
        entry: "fold",
        overrides: &[("WG", FOLD_WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(gamma),
            Arg::Read(beta),
            Arg::Read(mean),
            Arg::Read(inv_std),
            Arg::Write(scale),
            Arg::Write(shift),
        ],
        workgroups: Gpu::grid_1d(groups(c, FOLD_WG)),
    })
}

/// Backward from the saved `mean`/`inv_std`. `d_y` is the gradient w.r.t. the op's output
/// (after the ReLU if `cfg.relu`; the ReLU mask is recomputed from x, gamma, beta, mean,
/// inv_std: `mask = [BN(x) > 0]`). Accumulates, with `g = d_y * mask`,
/// `xhat = (x - mean) * inv_std` and n = N*H*W:
/// `d_x += gamma*inv_std/n * (n*g - sum(g) - xhat*sum(g*xhat))`,
/// `d_gamma += sum(g * xhat)`, `d_beta += sum(g)`.
/// `x`, `d_y` and `d_x` may be channel-slice views of one shape; `d_x` may not share a
/// buffer with an input.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    enc: &mut Encoder,
    d_x: &Tensor,
    d_gamma: &Tensor,
    d_beta: &Tensor,
    d_y: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    launch_backward(
        enc,
        ("backward", None, None),
        [d_x, d_gamma, d_beta, d_y, x, gamma, beta, mean, inv_std],
        cfg,
    )
}

/// Synchronised BN, forward part 1: this rank's per-channel mean of `x` into `mean` and
/// `M2 = sum((x - mean)^2)` into `m2` (both `[C]`). The running statistics are not touched.
#[allow(clippy::too_many_arguments)]
pub fn moments(
    enc: &mut Encoder,
    mean: &Tensor,
    m2: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    let stats = (mean, m2);
    launch_train_layout(
        enc,
        TrainLayout::Moments,
        None,
        stats,
        None,
        x,
        gamma,
        beta,
        cfg,
    )
}

/// Synchronised BN, forward part 2: `y = gamma * (x - mean) * inv_std + beta` (then
/// `max(., 0)` if `cfg.relu`) from statistics merged over the ranks; the same expression as
/// the training forward. `running_*` are bound but not used.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    enc: &mut Encoder,
    y: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    let running = Some((running_mean, running_var));
    let stats = (mean, inv_std);
    launch_train_layout(
        enc,
        TrainLayout::Apply,
        Some(y),
        stats,
        running,
        x,
        gamma,
        beta,
        cfg,
    )
}

/// Synchronised BN, backward part 1: accumulates this rank's `d_gamma += sum(g * xhat)` and
/// `d_beta += sum(g)` (as [`backward`]) and writes those sums to `sums` (`[2C]`: the sums
/// of g, then of g * xhat) for adding up over the ranks. `d_x` is bound but not written.
#[allow(clippy::too_many_arguments)]
pub fn backward_sums(
    enc: &mut Encoder,
    sums: &Tensor,
    d_x: &Tensor,
    d_gamma: &Tensor,
    d_beta: &Tensor,
    d_y: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    launch_backward(
        enc,
        ("backward_sums", Some(Arg::Write(sums)), None),
        [d_x, d_gamma, d_beta, d_y, x, gamma, beta, mean, inv_std],
        cfg,
    )
}

/// Synchronised BN, backward part 2: `d_x += gamma*inv_std * (g - S_g/n - xhat*S_gx/n)`
/// with `sums = [S_g; S_gx]` (`[2C]`) and `n = count`, both over every rank.
#[allow(clippy::too_many_arguments)]
pub fn backward_apply(
    enc: &mut Encoder,
    d_x: &Tensor,
    sums: &Tensor,
    count: f32,
    d_gamma: &Tensor,
    d_beta: &Tensor,
    d_y: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    cfg: BnConfig,
) -> Result<()> {
    launch_backward(
        enc,
        ("backward_apply", Some(Arg::Read(sums)), Some(count)),
        [d_x, d_gamma, d_beta, d_y, x, gamma, beta, mean, inv_std],
        cfg,
    )
}

/// The backward entry points: `entry` with the (N, C, H, W) and per-channel tensors, plus
/// the synchronised ones' `sums` binding and global count.
fn launch_backward(
    enc: &mut Encoder,
    (entry, sums, count): (&str, Option<Arg>, Option<f32>),
    [d_x, d_gamma, d_beta, d_y, x, gamma, beta, mean, inv_std]: [&Tensor; 9],
    cfg: BnConfig,
) -> Result<()> {
    let op = &format!("batch_norm {entry}");
    let (mut p, vec) = geometry(op, x, Some(("d_y", d_y)), Some(("d_x", d_x)), cfg)?;
    let c = x.shape[1];
    p.gamma_off = per_channel(op, "gamma", gamma, c)?;
    p.beta_off = per_channel(op, "beta", beta, c)?;
    p.mean_off = per_channel(op, "mean", mean, c)?;
    p.inv_std_off = per_channel(op, "inv_std", inv_std, c)?;
    p.d_gamma_off = per_channel(op, "d_gamma", d_gamma, c)?;
    p.d_beta_off = per_channel(op, "d_beta", d_beta, c)?;
    let mut writes = vec![("d_x", d_x), ("d_gamma", d_gamma), ("d_beta", d_beta)];
    if let Some(Arg::Read(s) | Arg::Write(s)) = &sums {
        if s.shape != [2 * c] || !s.is_contiguous() {
            return Err(GpuError::Shape(format!(
                "{op}: sums has shape {:?}, expected [{}]",
                s.shape,
                2 * c
            )));
        }
        writes.push(("sums", s));
    }
    if let Some(n) = count {
        p.count = n;
    }
    check_distinct(
        op,
        &writes,
        &[
            ("x", x),
            ("d_y", d_y),
            ("gamma", gamma),
            ("beta", beta),
            ("mean", mean),
            ("inv_std", inv_std),
        ],
    )?;
    let mut args = vec![
        Arg::Uniform(bytemuck::bytes_of(&p)),
        Arg::Read(x),
        Arg::Read(d_y),
        Arg::Read(gamma),
        Arg::Read(beta),
        Arg::Read(mean),
        Arg::Read(inv_std),
        Arg::Write(d_x),
        Arg::Write(d_gamma),
        Arg::Write(d_beta),
    ];
    args.extend(sums);
    enc.launch(Launch {
        shader: &SHADER,
        entry: &format!("{entry}_v{vec}"),
        overrides: &[("WG", lanes(&p))],
        args: &args,
        workgroups: channel_grid(op, p.channels)?,
    })
}

/// f64 CPU reference. `x` is NCHW with `shape = [N, C, H, W]`; per-channel slices are `[C]`.
pub mod reference {
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

    /// Gradients for zero-initialised accumulators: `(d_x, d_gamma, d_beta)`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        d_y: &[f64],
        x: &[f64],
        shape: [usize; 4],
        gamma: &[f64],
        beta: &[f64],
        mean: &[f64],
        inv_std: &[f64],
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
}

// Tape entries.

impl Tape<'_> {
    /// Batch norm (+ReLU when `cfg.relu`). Training mode uses batch statistics and updates
    /// the running ones; inference mode uses the running statistics and has no backward
    /// (an error if its input or parameters need a gradient on a recording tape).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        training: bool,
        name: &str,
    ) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let y = self.output(None, &shape, name)?;
        let saved = self.batch_norm_into(y, x, gamma, beta, running, cfg, training, name)?;
        if let Some(BnStats {
            mean,
            inv_std,
            counts,
        }) = saved
        {
            if cfg.relu {
                let [xt, gt, bt] = self.values([x, gamma, beta])?;
                self.probe_relu(name, |g| {
                    pre_activation(g, &xt, [&gt, &bt, &mean, &inv_std], None)
                })?;
            }
            self.mark(y, &[x, gamma, beta]);
            self.record(BatchNormOp {
                y,
                x,
                gamma,
                beta,
                mean,
                inv_std,
                cfg,
                counts,
            })?;
        }
        Ok(y)
    }

    /// `max(BN(x) + residual, 0)`: the end of a residual block. BN writes the output and
    /// the shortcut is added in place ([`add::accumulate_forward`](super::add)); backward
    /// masks d_y once, routes it to the shortcut, and runs BN's backward on it.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_add_relu(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        training: bool,
        residual: Var,
        name: &str,
    ) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        crate::gpu::expect_shape(name, "residual", self.shape(residual), &shape)?;
        let y = self.output(None, &shape, name)?;
        let cfg = BnConfig { relu: false, ..cfg };
        let saved = self.batch_norm_into(y, x, gamma, beta, running, cfg, training, name)?;
        let (yt, rt) = (self.value(y)?.clone(), self.value(residual)?.clone());
        super::add::accumulate_forward(self.enc(), &yt, &rt, true)?;
        match saved {
            Some(BnStats {
                mean,
                inv_std,
                counts,
            }) => {
                let [xt, gt, bt] = self.values([x, gamma, beta])?;
                self.probe_relu(name, |g| {
                    pre_activation(g, &xt, [&gt, &bt, &mean, &inv_std], Some(&rt))
                })?;
                self.mark(y, &[x, gamma, beta, residual]);
                self.record(BatchNormAddReluOp {
                    bn: BatchNormOp {
                        y,
                        x,
                        gamma,
                        beta,
                        mean,
                        inv_std,
                        cfg,
                        counts,
                    },
                    residual,
                })?;
            }
            None if self.is_recording() && self.requires_grad(residual) => {
                return Err(GpuError::Shape(format!(
                    "{name}: inference-mode batch norm has no backward, but the shortcut \
                     needs a gradient"
                )));
            }
            None => {}
        }
        Ok(y)
    }

    /// Launches BN's forward into `y`; returns the saved batch statistics in training mode.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_into(
        &mut self,
        y: Var,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        training: bool,
        name: &str,
    ) -> Result<Option<BnStats>> {
        let (yt, xt, gt, bt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(gamma)?.clone(),
            self.value(beta)?.clone(),
        );
        if !training {
            if self.is_recording() && [x, gamma, beta].iter().any(|&v| self.requires_grad(v)) {
                return Err(GpuError::Shape(format!(
                    "{name}: inference-mode batch norm has no backward, but its input or \
                     parameters need a gradient (freeze everything before it, or train it)"
                )));
            }
            forward_eval(
                self.enc(),
                &yt,
                &xt,
                &gt,
                &bt,
                running.mean,
                running.var,
                cfg,
            )?;
            return Ok(None);
        }
        let stats = self.bn_statistics(Some(&yt), &xt, &gt, &bt, running, cfg, name)?;
        Ok(Some(stats))
    }

    /// Training-mode batch statistics of `x` (saved mean and inv_std), updating the running
    /// ones, and `y` when given. On a tape synchronised over a group
    /// ([`Tape::sync_batch_norm`]) the statistics are those of the global batch: each rank's
    /// per-channel (count, mean, M2) are gathered and merged in rank order (Chan et al.,
    /// in f64), so every rank gets the same values.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bn_statistics(
        &mut self,
        y: Option<&Tensor>,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running: RunningStats,
        cfg: BnConfig,
        name: &str,
    ) -> Result<BnStats> {
        let [n, c, h, w] = nchw(name, "x", x)?;
        let gpu = self.gpu();
        let mean = gpu.zeros(&[c], &format!("{name}.mean"))?;
        let inv_std = gpu.zeros(&[c], &format!("{name}.inv_std"))?;
        let Some(group) = self.sync_group() else {
            let (r_mean, r_var) = (running.mean, running.var);
            forward_train(
                self.enc(),
                y,
                &mean,
                &inv_std,
                r_mean,
                r_var,
                x,
                gamma,
                beta,
                cfg,
            )?;
            return Ok(BnStats {
                mean,
                inv_std,
                counts: None,
            });
        };
        let m2 = gpu.zeros(&[c], &format!("{name}.m2"))?;
        moments(self.enc(), &mean, &m2, x, gamma, beta, cfg)?;
        self.flush()?;
        let local_count = (n * h * w) as f32;
        let mut mine = vec![local_count];
        mine.extend(gpu.download(&mean)?);
        mine.extend(gpu.download(&m2)?);
        let all = group.all_gather_f32(&mine);
        // Merge (count, mean, M2) per channel in rank order.
        let mut merged = vec![(0.0f64, 0.0f64, 0.0f64); c];
        for part in all.chunks(1 + 2 * c) {
            let nb = part[0] as f64;
            if nb == 0.0 {
                continue;
            }
            for (ch, (na, ma, qa)) in merged.iter_mut().enumerate() {
                let (mb, qb) = (part[1 + ch] as f64, part[1 + c + ch] as f64);
                let total = *na + nb;
                let d = mb - *ma;
                *ma += d * nb / total;
                *qa += qb + d * d * *na * nb / total;
                *na = total;
            }
        }
        let count = merged.first().map_or(0.0, |m| m.0);
        let batch_mean: Vec<f32> = merged.iter().map(|m| m.1 as f32).collect();
        let batch_inv_std: Vec<f32> = merged
            .iter()
            .map(|m| (1.0 / (m.2 / count + cfg.eps as f64).sqrt()) as f32)
            .collect();
        // The running statistics, updated as the kernel does, in f32.
        let mo = cfg.momentum;
        let unbiased = (count - 1.0).max(1.0);
        let mut r_mean = gpu.download(running.mean)?;
        let mut r_var = gpu.download(running.var)?;
        for (ch, m) in merged.iter().enumerate() {
            r_mean[ch] = (1.0 - mo) * r_mean[ch] + mo * batch_mean[ch];
            r_var[ch] = (1.0 - mo) * r_var[ch] + mo * ((m.2 / unbiased) as f32);
        }
        gpu.write(running.mean, &r_mean)?;
        gpu.write(running.var, &r_var)?;
        gpu.write(&mean, &batch_mean)?;
        gpu.write(&inv_std, &batch_inv_std)?;
        if let Some(y) = y {
            let (r_mean, r_var) = (running.mean, running.var);
            apply(
                self.enc(),
                y,
                &mean,
                &inv_std,
                r_mean,
                r_var,
                x,
                gamma,
                beta,
                cfg,
            )?;
        }
        Ok(BnStats {
            mean,
            inv_std,
            counts: Some((local_count, count as f32)),
        })
    }
}

/// Batch statistics saved for backward.
pub(crate) struct BnStats {
    pub mean: Tensor,
    pub inv_std: Tensor,
    /// Synchronised BN: this rank's and the global count of values per channel.
    pub counts: Option<(f32, f32)>,
}

/// A training-mode BN's output before its ReLU, on the host for [`Tape::probe_relu`]:
/// `gamma * (x - mean) * inv_std + beta (+ residual)`.
pub(crate) fn pre_activation(
    gpu: &Gpu,
    x: &Tensor,
    [gamma, beta, mean, inv_std]: [&Tensor; 4],
    residual: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let [_, c, h, w] = nchw("batch_norm probe", "x", x)?;
    let [g, b, m, s] = [gamma, beta, mean, inv_std].map(|t| gpu.download(t));
    let (g, b, m, s) = (g?, b?, m?, s?);
    let mut v: Vec<f64> = gpu
        .download(x)?
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let ch = (i / (h * w)) % c;
            ((x - m[ch]) * s[ch] * g[ch] + b[ch]) as f64
        })
        .collect();
    if let Some(r) = residual {
        for (v, r) in v.iter_mut().zip(gpu.download(r)?) {
            *v += r as f64;
        }
    }
    Ok(v)
}

/// A training-mode batch norm: backward recomputes x̂ from the saved statistics.
pub(crate) struct BatchNormOp {
    pub y: Var,
    pub x: Var,
    pub gamma: Var,
    pub beta: Var,
    pub mean: Tensor,
    pub inv_std: Tensor,
    pub cfg: BnConfig,
    /// Synchronised BN: this rank's and the global count of values per channel.
    pub counts: Option<(f32, f32)>,
}

impl BatchNormOp {
    /// Accumulates the gradients of x, gamma and beta from the output gradient `d_y`.
    pub(crate) fn push_grads(&self, tape: &mut Tape, d_y: &Tensor) -> Result<()> {
        let (xt, gt, bt) = (
            tape.value(self.x)?.clone(),
            tape.value(self.gamma)?.clone(),
            tape.value(self.beta)?.clone(),
        );
        let d_g = tape.grad(self.gamma)?;
        let d_b = tape.grad(self.beta)?;
        let d_x = match tape.grad_if(self.x)? {
            Some(d) => d,
            // BN's backward kernel always writes d_x; give it a scratch buffer.
            None => tape.gpu().zeros(&xt.shape, "unused d_x")?,
        };
        let (mean, inv_std, cfg) = (&self.mean, &self.inv_std, self.cfg);
        let (Some(group), Some((local, global))) = (tape.sync_group(), self.counts) else {
            return backward(
                tape.enc(),
                &d_x,
                &d_g,
                &d_b,
                d_y,
                &xt,
                &gt,
                &bt,
                mean,
                inv_std,
                cfg,
            );
        };
        // Synchronised: the sums over every rank of the global loss's gradient. This rank's
        // gradients are later weighted by its share w = local/global of the batch, so each
        // rank contributes w·sums and uses (1/w)·total.
        let c = xt.shape[1];
        let sums = tape.gpu().zeros(&[2 * c], "batch_norm sums")?;
        let enc = tape.enc();
        backward_sums(
            enc, &sums, &d_x, &d_g, &d_b, d_y, &xt, &gt, &bt, mean, inv_std, cfg,
        )?;
        tape.flush()?;
        let gpu = tape.gpu();
        let share = local / global;
        let mut totals: Vec<f32> = gpu.download(&sums)?.iter().map(|v| v * share).collect();
        group.all_reduce_sum(&mut totals);
        for v in &mut totals {
            *v /= share;
        }
        let totals = gpu.upload(&totals, &[2 * c], "batch_norm sums over the ranks")?;
        let enc = tape.enc();
        backward_apply(
            enc, &d_x, &totals, global, &d_g, &d_b, d_y, &xt, &gt, &bt, mean, inv_std, cfg,
        )
    }
}

impl Backward for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.y, self.x, self.gamma, self.beta]
    }
    fn value_reads(&self) -> Vec<Var> {
        vec![self.x, self.gamma, self.beta]
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Option<Tensor>) -> Result<()> {
        let d_y = output_grad(d_y, "batch_norm")?;
        self.push_grads(tape, &d_y)
    }
}

struct BatchNormAddReluOp {
    /// BN without ReLU; its output is also the op's output `y`.
    bn: BatchNormOp,
    residual: Var,
}

impl Backward for BatchNormAddReluOp {
    fn name(&self) -> &'static str {
        "batch_norm_add_relu"
    }
    fn vars(&self) -> Vec<Var> {
        let mut v = self.bn.vars();
        v.push(self.residual);
        v
    }
    fn value_reads(&self) -> Vec<Var> {
        let mut v = self.bn.value_reads();
        v.push(self.bn.y);
        v
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Option<Tensor>) -> Result<()> {
        let d_y = output_grad(d_y, "batch_norm_add_relu")?;
        let yt = tape.value(self.bn.y)?.clone();
        // g = d_y * [y > 0], once: into a transient buffer for BN, and onto the shortcut.
        let g = tape.gpu().zeros(&d_y.shape, "d_bn (transient)")?;
        let d_r = match tape.grad_if(self.residual)? {
            Some(d) => d,
            None => tape.gpu().zeros(&d_y.shape, "unused d_residual")?,
        };
        super::add::backward(tape.enc(), &g, &d_r, &yt, &d_y, true)?;
        self.bn.push_grads(tape, &g)
    }
}
