//! 2-D batch normalisation per channel over (N, H, W), PyTorch semantics, with an optional
//! fused ReLU: training forward (batch statistics, running-statistics update), inference
//! forward, folding into a per-channel affine map, and backward from the saved statistics.
//!
//! Every entry point (except `fold`) runs one workgroup per channel that walks the
//! channel's values, so the statistics and the gradient sums are exact fixed-order
//! reductions and each op is a single dispatch (see `shaders/batch_norm.wgsl`).
//!
//! The launchers take their per-channel tensors in bundles ([`Affine`], [`BatchStats`],
//! [`RunningStats`], [`Saved`], [`AffineGrads`]). [`mod@reference`] holds the f64 CPU
//! reference and `tape` the autograd entries.

pub mod reference;
pub mod tape;

use super::ViewParams;
use crate::gpu::{
    check_distinct, expect_contiguous, expect_shape, nchw, to_u32, Arg, Encoder, Gpu, GpuError,
    Kernel, Limit, Result, Shader, ShapeProblem, Tensor,
};

pub const SHADER: Shader = shader!("batch_norm");
/// Lanes per workgroup of the per-channel entry points (a power of two).
const WG: u32 = 256;

/// Lanes per channel workgroup: 256 for large channels, fewer when a channel has few
/// values (late DenseNet layers have N*H*W of 8..200), so small launches don't pay for idle
/// lanes and reduction levels. One pipeline per distinct size (at most four).
fn lanes(p: &Params) -> u32 {
    let units = (p.units as u64).max(1);
    units.div_ceil(4).next_power_of_two().clamp(32, WG as u64) as u32
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
        let grid = [g[0] as usize, g[1] as usize, g[2] as usize];
        return Err(GpuError::limit(op, Limit::Workgroups { grid }));
    }
    Ok(g)
}

/// A BN layer's learnt per-channel scale `gamma` and shift `beta`, `[C]` each.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// Per-channel batch statistics, `[C]` each: the mean and `inv_std = 1/sqrt(var_biased +
/// eps)`. The training forward writes them; backward reads them.
#[derive(Clone, Copy)]
pub struct BatchStats<'a> {
    pub mean: &'a Tensor,
    pub inv_std: &'a Tensor,
}

/// Running statistics, `[C]` each, updated in place by the training forward
/// (`r = (1 - momentum) r + momentum s`, with the unbiased variance for `var`).
#[derive(Clone, Copy)]
pub struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
}

/// What backward reads of its forward: the input `x` (N, C, H, W), the affine map and the
/// batch statistics.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub x: &'a Tensor,
    pub affine: Affine<'a>,
    pub stats: BatchStats<'a>,
}

/// The gradients of the affine map, `[C]` each; backward adds to them.
#[derive(Clone, Copy)]
pub struct AffineGrads<'a> {
    pub d_gamma: &'a Tensor,
    pub d_beta: &'a Tensor,
}

/// Synchronised BN's backward sums over every rank: `sums` is `[2C]` (the sums of g, then
/// of g·xhat), `count` the number of values per channel in the global batch.
#[derive(Clone, Copy)]
pub struct GlobalSums<'a> {
    pub sums: &'a Tensor,
    pub count: f32,
}

/// Training forward. Computes the per-channel batch statistics into `stats` (saved for
/// backward), updates `running` in place, and if `y` is Some writes `y = gamma * (x - mean)
/// * inv_std + beta` (then `max(., 0)` if `cfg.relu`). `y` None = statistics only. `x` and
/// `y` may be channel-slice views of one shape (N, C, H, W); they may not share a buffer.
pub fn forward_train(
    enc: &mut Encoder,
    y: Option<&Tensor>,
    stats: BatchStats,
    running: RunningStats,
    x: &Tensor,
    affine: Affine,
    cfg: BnConfig,
) -> Result<()> {
    let kind = if y.is_some() {
        TrainLayout::Train
    } else {
        TrainLayout::Stats
    };
    let stats = (stats.mean, stats.inv_std);
    let bindings = TrainBindings {
        y,
        stats,
        running: Some(running),
        x,
        affine,
    };
    launch_train_layout(enc, kind, bindings, cfg)
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

/// The tensors of a `train_*` launch. `stats` is (mean, inv_std), or (mean, M2) for
/// [`TrainLayout::Moments`].
struct TrainBindings<'a> {
    y: Option<&'a Tensor>,
    stats: (&'a Tensor, &'a Tensor),
    running: Option<RunningStats<'a>>,
    x: &'a Tensor,
    affine: Affine<'a>,
}

fn launch_train_layout(
    enc: &mut Encoder,
    kind: TrainLayout,
    bindings: TrainBindings,
    cfg: BnConfig,
) -> Result<()> {
    let TrainBindings {
        y,
        stats: (mean, inv_std),
        running,
        x,
        affine: Affine { gamma, beta },
    } = bindings;
    let op = &format!(
        "batch_norm {}",
        match kind {
            TrainLayout::Train | TrainLayout::Stats => "forward_train",
            other => other.name(),
        }
    );
    let (mut p, vec) = geometry(op, x, y.map(|t| ("y", t)), None, cfg)?;
    if p.units == 0 {
        // Training needs at least one value per channel.
        let problem = ShapeProblem::Empty {
            tensor: "x".into(),
            shape: x.shape.clone(),
        };
        return Err(GpuError::shape(op, problem));
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
    if let Some(r) = running {
        p.running_mean_off = per_channel(op, "running_mean", r.mean, c)?;
        p.running_var_off = per_channel(op, "running_var", r.var, c)?;
        if kind != TrainLayout::Apply {
            writes.extend([("running_mean", r.mean), ("running_var", r.var)]);
        }
    }
    writes.extend(y.map(|y| ("y", y)));
    check_distinct(op, &writes, &reads)?;
    let mut written = vec![mean, inv_std];
    if let Some(r) = running {
        written.extend([r.mean, r.var]);
    }
    written.extend(y);
    let entry = format!("{}_v{vec}", kind.name());
    let kernel = Kernel::new(&SHADER, &entry, lanes(&p));
    let args = Arg::bindings(&p, &[x, gamma, beta], &written);
    enc.launch_grid(kernel, &args, channel_grid(op, p.channels)?)
}

/// Inference forward with running statistics:
/// `y = (x - running.mean) * gamma / sqrt(running.var + eps) + beta` (then `max(., 0)` if
/// `cfg.relu`). Overwrites `y`; `x` and `y` may be views, not sharing a buffer.
pub fn forward_eval(
    enc: &mut Encoder,
    y: &Tensor,
    x: &Tensor,
    affine: Affine,
    running: RunningStats,
    cfg: BnConfig,
) -> Result<()> {
    let op = "batch_norm forward_eval";
    let (mut p, vec) = geometry(op, x, Some(("y", y)), None, cfg)?;
    let c = x.shape[1];
    let Affine { gamma, beta } = affine;
    p.gamma_off = per_channel(op, "gamma", gamma, c)?;
    p.beta_off = per_channel(op, "beta", beta, c)?;
    p.running_mean_off = per_channel(op, "running_mean", running.mean, c)?;
    p.running_var_off = per_channel(op, "running_var", running.var, c)?;
    check_distinct(
        op,
        &[("y", y)],
        &[
            ("x", x),
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", running.mean),
            ("running_var", running.var),
        ],
    )?;
    let entry = format!("eval_v{vec}");
    let kernel = Kernel::new(&SHADER, &entry, lanes(&p));
    let reads = [x, gamma, beta, running.mean, running.var];
    let args = Arg::bindings(&p, &reads, &[y]);
    enc.launch_grid(kernel, &args, channel_grid(op, p.channels)?)
}

/// Per-channel `scale = gamma * inv_std`, `shift = beta - mean * scale` (so
/// `BN(x) = scale * x + shift`); used to apply BN(+ReLU) on the fly inside a following conv.
/// All tensors are `[C]`.
pub fn fold_scale_shift(
    enc: &mut Encoder,
    scale: &Tensor,
    shift: &Tensor,
    affine: Affine,
    stats: BatchStats,
) -> Result<()> {
    let op = "batch_norm fold_scale_shift";
    let (Affine { gamma, beta }, BatchStats { mean, inv_std }) = (affine, stats);
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
    let kernel = Kernel::new(&SHADER, "fold", FOLD_WG);
    let reads = [gamma, beta, mean, inv_std];
    enc.launch_threads(kernel, &p, &reads, &[scale, shift], c)
}

/// Backward from the saved statistics. `d_y` is the gradient w.r.t. the op's output
/// (after the ReLU if `cfg.relu`; the ReLU mask is recomputed from `saved`:
/// `mask = [BN(x) > 0]`). Accumulates, with `g = d_y * mask`,
/// `xhat = (x - mean) * inv_std` and n = N*H*W:
/// `d_x += gamma*inv_std/n * (n*g - sum(g) - xhat*sum(g*xhat))`,
/// `d_gamma += sum(g * xhat)`, `d_beta += sum(g)`.
/// `x`, `d_y` and `d_x` may be channel-slice views of one shape; `d_x` may not share a
/// buffer with an input.
pub fn backward(
    enc: &mut Encoder,
    d_x: &Tensor,
    d_affine: AffineGrads,
    d_y: &Tensor,
    saved: Saved,
    cfg: BnConfig,
) -> Result<()> {
    let extra = BackwardEntry {
        name: "backward",
        sums: None,
        count: None,
    };
    launch_backward(enc, extra, d_x, d_affine, d_y, saved, cfg)
}

/// Synchronised BN, forward part 1: this rank's per-channel mean of `x` into `mean` and
/// `M2 = sum((x - mean)^2)` into `m2` (both `[C]`). The running statistics are not touched.
pub fn moments(
    enc: &mut Encoder,
    mean: &Tensor,
    m2: &Tensor,
    x: &Tensor,
    affine: Affine,
    cfg: BnConfig,
) -> Result<()> {
    let bindings = TrainBindings {
        y: None,
        stats: (mean, m2),
        running: None,
        x,
        affine,
    };
    launch_train_layout(enc, TrainLayout::Moments, bindings, cfg)
}

/// Synchronised BN, forward part 2: `y = gamma * (x - mean) * inv_std + beta` (then
/// `max(., 0)` if `cfg.relu`) from statistics merged over the ranks; the same expression as
/// the training forward. `running` is bound but not used.
pub fn apply(
    enc: &mut Encoder,
    y: &Tensor,
    stats: BatchStats,
    running: RunningStats,
    x: &Tensor,
    affine: Affine,
    cfg: BnConfig,
) -> Result<()> {
    let bindings = TrainBindings {
        y: Some(y),
        stats: (stats.mean, stats.inv_std),
        running: Some(running),
        x,
        affine,
    };
    launch_train_layout(enc, TrainLayout::Apply, bindings, cfg)
}

/// Synchronised BN, backward part 1: accumulates this rank's `d_gamma += sum(g * xhat)` and
/// `d_beta += sum(g)` (as [`backward`]) and writes those sums to `sums` (`[2C]`: the sums
/// of g, then of g * xhat) for adding up over the ranks. `d_x` is bound but not written.
pub fn backward_sums(
    enc: &mut Encoder,
    sums: &Tensor,
    d_x: &Tensor,
    d_affine: AffineGrads,
    d_y: &Tensor,
    saved: Saved,
    cfg: BnConfig,
) -> Result<()> {
    let extra = BackwardEntry {
        name: "backward_sums",
        sums: Some(Arg::Write(sums)),
        count: None,
    };
    launch_backward(enc, extra, d_x, d_affine, d_y, saved, cfg)
}

/// Synchronised BN, backward part 2: `d_x += gamma*inv_std * (g - S_g/n - xhat*S_gx/n)`
/// with `global.sums = [S_g; S_gx]` (`[2C]`) and `n = global.count`, both over every rank.
pub fn backward_apply(
    enc: &mut Encoder,
    d_x: &Tensor,
    global: GlobalSums,
    d_affine: AffineGrads,
    d_y: &Tensor,
    saved: Saved,
    cfg: BnConfig,
) -> Result<()> {
    let extra = BackwardEntry {
        name: "backward_apply",
        sums: Some(Arg::Read(global.sums)),
        count: Some(global.count),
    };
    launch_backward(enc, extra, d_x, d_affine, d_y, saved, cfg)
}

/// A backward entry point, with the synchronised ones' `sums` binding and global count.
struct BackwardEntry<'a> {
    name: &'static str,
    sums: Option<Arg<'a>>,
    count: Option<f32>,
}

fn launch_backward(
    enc: &mut Encoder,
    entry: BackwardEntry,
    d_x: &Tensor,
    d_affine: AffineGrads,
    d_y: &Tensor,
    saved: Saved,
    cfg: BnConfig,
) -> Result<()> {
    let BackwardEntry { name, sums, count } = entry;
    let AffineGrads { d_gamma, d_beta } = d_affine;
    let Saved {
        x,
        affine: Affine { gamma, beta },
        stats: BatchStats { mean, inv_std },
    } = saved;
    let op = &format!("batch_norm {name}");
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
        expect_shape(op, "sums", &s.shape, &[2 * c])?;
        expect_contiguous(op, "sums", s)?;
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
    let reads = [x, d_y, gamma, beta, mean, inv_std];
    let mut args = Arg::bindings(&p, &reads, &[d_x, d_gamma, d_beta]);
    // backward_apply reads `sums`, bound after the gradients it writes.
    args.extend(sums);
    let entry = format!("{name}_v{vec}");
    let kernel = Kernel::new(&SHADER, &entry, lanes(&p));
    enc.launch_grid(kernel, &args, channel_grid(op, p.channels)?)
}
