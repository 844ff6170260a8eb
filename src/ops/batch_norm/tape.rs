//! Batch norm's tape entries: the forward launches and the backward ops they record.

#[cfg(not(target_arch = "wasm32"))]
use super::{apply, backward_apply, backward_sums, moments, GlobalSums};
use super::{
    backward, forward_eval, forward_train, Affine, AffineGrads, BatchStats, BnConfig, RunningStats,
    Saved,
};
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::Gpu;
use crate::gpu::{nchw, GpuError, GradientTo, Result, TapeError, Tensor};
use crate::tape::{Backward, Tape, Var};

/// A batch-norm layer as a tape entry reads it: its parameters, its running statistics and
/// its configuration.
#[derive(Clone, Copy)]
pub struct BnLayer<'a> {
    pub gamma: Var,
    pub beta: Var,
    pub running: RunningStats<'a>,
    pub cfg: BnConfig,
}

impl BnLayer<'_> {
    /// The layer with its ReLU on or off.
    pub(crate) fn with_relu(self, relu: bool) -> Self {
        let cfg = BnConfig { relu, ..self.cfg };
        BnLayer { cfg, ..self }
    }
}

impl Tape<'_> {
    /// Batch norm (+ReLU when `cfg.relu`). Training mode uses batch statistics and updates
    /// the running ones; inference mode uses the running statistics and has no backward
    /// (an error if its input or parameters need a gradient on a recording tape).
    pub fn batch_norm(
        &mut self,
        x: Var,
        layer: BnLayer,
        training: bool,
        name: &str,
    ) -> Result<Var> {
        let (gamma, beta) = (layer.gamma, layer.beta);
        let shape = self.shape(x).to_vec();
        let y = self.output(None, &shape, name)?;
        let saved = self.batch_norm_into(y, x, layer, training, name)?;
        if let Some(stats) = saved {
            let op = BatchNormOp::new(y, x, layer, stats);
            #[cfg(not(target_arch = "wasm32"))]
            if layer.cfg.relu {
                self.probe_bn_relu(name, [x, gamma, beta], &op.stats, None)?;
            }
            self.record("batch_norm", &[y, x, gamma, beta], &[x, gamma, beta], op)?;
        }
        Ok(y)
    }

    /// `max(BN(x) + residual, 0)`: the end of a residual block. BN writes the output and
    /// the shortcut is added in place ([`add::accumulate_forward`](crate::ops::add::accumulate_forward)); backward
    /// masks d_y once, routes it to the shortcut, and runs BN's backward on it.
    pub fn batch_norm_add_relu(
        &mut self,
        x: Var,
        layer: BnLayer,
        training: bool,
        residual: Var,
        name: &str,
    ) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        crate::gpu::expect_shape(name, "residual", self.shape(residual), &shape)?;
        let y = self.output(None, &shape, name)?;
        let layer = layer.with_relu(false);
        let (gamma, beta) = (layer.gamma, layer.beta);
        let saved = self.batch_norm_into(y, x, layer, training, name)?;
        let [yt, rt] = self.values([y, residual])?;
        crate::ops::add::accumulate_forward(self.enc(), &yt, &rt, true)?;
        match saved {
            Some(stats) => {
                let bn = BatchNormOp::new(y, x, layer, stats);
                #[cfg(not(target_arch = "wasm32"))]
                self.probe_bn_relu(name, [x, bn.gamma, bn.beta], &bn.stats, Some(&rt))?;
                let op = BatchNormAddReluOp { bn, residual };
                let vars = [y, x, gamma, beta, residual];
                self.record("batch_norm_add_relu", &vars, &[x, gamma, beta, y], op)?;
            }
            None if self.is_recording() && self.requires_grad(residual) => {
                return Err(GpuError::Tape(TapeError::InferenceBatchNorm {
                    layer: name.into(),
                    to: GradientTo::Residual,
                }));
            }
            None => {}
        }
        Ok(y)
    }

    /// Launches BN's forward into `y`; returns the saved batch statistics in training mode.
    fn batch_norm_into(
        &mut self,
        y: Var,
        x: Var,
        layer: BnLayer,
        training: bool,
        name: &str,
    ) -> Result<Option<BnStats>> {
        let BnLayer {
            gamma,
            beta,
            running,
            cfg,
        } = layer;
        let [yt, xt, gt, bt] = self.values([y, x, gamma, beta])?;
        if !training {
            if self.is_recording() && [x, gamma, beta].iter().any(|&v| self.requires_grad(v)) {
                return Err(GpuError::Tape(TapeError::InferenceBatchNorm {
                    layer: name.into(),
                    to: GradientTo::InputOrParameters,
                }));
            }
            let affine = Affine {
                gamma: &gt,
                beta: &bt,
            };
            forward_eval(self.enc(), &yt, &xt, affine, running, cfg)?;
            return Ok(None);
        }
        let affine = Affine {
            gamma: &gt,
            beta: &bt,
        };
        let stats = self.bn_statistics(Some(&yt), &xt, affine, running, cfg, name)?;
        Ok(Some(stats))
    }

    /// Training-mode batch statistics of `x` (saved mean and inv_std), updating the running
    /// ones, and `y` when given. On a tape synchronised over a group
    /// ([`Tape::sync_batch_norm`]) the statistics are those of the global batch: each rank's
    /// per-channel (count, mean, M2) are gathered and merged in rank order (Chan et al.,
    /// in f64), so every rank gets the same values.
    pub(crate) fn bn_statistics(
        &mut self,
        y: Option<&Tensor>,
        x: &Tensor,
        affine: Affine,
        running: RunningStats,
        cfg: BnConfig,
        name: &str,
    ) -> Result<BnStats> {
        let [_, c, _, _] = nchw(name, "x", x)?;
        let gpu = self.gpu();
        let saved = BnStats {
            mean: gpu.zeros(&[c], &format!("{name}.mean"))?,
            inv_std: gpu.zeros(&[c], &format!("{name}.inv_std"))?,
            counts: None,
        };
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(group) = self.sync_group() {
            let input = (x, affine, running);
            return self.synchronised_statistics(group, saved, y, input, cfg, name);
        }
        forward_train(self.enc(), y, saved.batch(), running, x, affine, cfg)?;
        Ok(saved)
    }

    /// [`Tape::bn_statistics`] over the ranks of `group`: each rank's per-channel (count,
    /// mean, M2) are gathered and merged in rank order (Chan et al., in f64) into `saved`.
    /// It reads the moments back in the middle of the forward pass, which only a native
    /// process may wait for: data-parallel training is native only.
    #[cfg(not(target_arch = "wasm32"))]
    fn synchronised_statistics(
        &mut self,
        group: &dyn crate::collective::Collective,
        mut saved: BnStats,
        y: Option<&Tensor>,
        (x, affine, running): (&Tensor, Affine, RunningStats),
        cfg: BnConfig,
        name: &str,
    ) -> Result<BnStats> {
        let [n, c, h, w] = nchw(name, "x", x)?;
        let gpu = self.gpu();
        let m2 = gpu.zeros(&[c], &format!("{name}.m2"))?;
        moments(self.enc(), &saved.mean, &m2, x, affine, cfg)?;
        self.flush()?;
        let local_count = (n * h * w) as f32;
        let mut mine = vec![local_count];
        mine.extend(gpu.download(&saved.mean)?);
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
        gpu.write(&saved.mean, &batch_mean)?;
        gpu.write(&saved.inv_std, &batch_inv_std)?;
        if let Some(y) = y {
            apply(self.enc(), y, saved.batch(), running, x, affine, cfg)?;
        }
        saved.counts = Some((local_count, count as f32));
        Ok(saved)
    }
}

/// Batch statistics saved for backward.
#[derive(Clone)]
pub(crate) struct BnStats {
    pub mean: Tensor,
    pub inv_std: Tensor,
    /// Synchronised BN: this rank's and the global count of values per channel.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub counts: Option<(f32, f32)>,
}

impl BnStats {
    /// The mean and inv_std as the launchers take them.
    pub(crate) fn batch(&self) -> BatchStats<'_> {
        BatchStats {
            mean: &self.mean,
            inv_std: &self.inv_std,
        }
    }
}

impl Tape<'_> {
    /// [`Tape::probe_relu`] on the input of the ReLU after the training-mode BN of `x` with
    /// `gamma`, `beta` and batch statistics `stats` (plus `residual` when given).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn probe_bn_relu(
        &mut self,
        name: &str,
        [x, gamma, beta]: [Var; 3],
        stats: &BnStats,
        residual: Option<&Tensor>,
    ) -> Result<()> {
        let [xt, gt, bt] = self.values([x, gamma, beta])?;
        let stats = [&gt, &bt, &stats.mean, &stats.inv_std];
        self.probe_relu(name, |g| pre_activation(g, &xt, stats, residual))
    }
}

/// A training-mode BN's output before its ReLU, on the host for [`Tape::probe_relu`]:
/// `gamma * (x - mean) * inv_std + beta (+ residual)`.
#[cfg(not(target_arch = "wasm32"))]
fn pre_activation(
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
    pub cfg: BnConfig,
    pub stats: BnStats,
}

impl BatchNormOp {
    /// The BN `layer` from `x` to `y`, with the batch statistics its forward saved.
    pub(crate) fn new(y: Var, x: Var, layer: BnLayer, stats: BnStats) -> BatchNormOp {
        BatchNormOp {
            y,
            x,
            gamma: layer.gamma,
            beta: layer.beta,
            cfg: layer.cfg,
            stats,
        }
    }

    /// Accumulates the gradients of x, gamma and beta from the output gradient `d_y`.
    pub(crate) fn push_grads(&self, tape: &mut Tape, d_y: &Tensor) -> Result<()> {
        let [xt, gt, bt] = tape.values([self.x, self.gamma, self.beta])?;
        let d_g = tape.grad(self.gamma)?;
        let d_b = tape.grad(self.beta)?;
        let d_x = match tape.grad_if(self.x)? {
            Some(d) => d,
            // BN's backward kernel always writes d_x; give it a scratch buffer.
            None => tape.gpu().zeros(&xt.shape, "unused d_x")?,
        };
        let cfg = self.cfg;
        let saved = Saved {
            x: &xt,
            affine: Affine {
                gamma: &gt,
                beta: &bt,
            },
            stats: self.stats.batch(),
        };
        let d_affine = AffineGrads {
            d_gamma: &d_g,
            d_beta: &d_b,
        };
        #[cfg(not(target_arch = "wasm32"))]
        if let (Some(group), Some(counts)) = (tape.sync_group(), self.stats.counts) {
            let grads = (&d_x, d_affine);
            return synchronised_backward(tape, group, counts, grads, d_y, saved, cfg);
        }
        backward(tape.enc(), &d_x, d_affine, d_y, saved, cfg)
    }
}

/// [`BatchNormOp::push_grads`] over the ranks of `group` (native only, like
/// [`Tape::bn_statistics`]'s synchronised half).
#[cfg(not(target_arch = "wasm32"))]
fn synchronised_backward(
    tape: &mut Tape,
    group: &dyn crate::collective::Collective,
    (local, global): (f32, f32),
    (d_x, d_affine): (&Tensor, AffineGrads),
    d_y: &Tensor,
    saved: Saved,
    cfg: BnConfig,
) -> Result<()> {
    // Synchronised: the sums over every rank of the global loss's gradient. This rank's
    // gradients are later weighted by its share w = local/global of the batch, so each
    // rank contributes w·sums and uses (1/w)·total.
    let c = saved.x.shape[1];
    let sums = tape.gpu().zeros(&[2 * c], "batch_norm sums")?;
    let enc = tape.enc();
    backward_sums(enc, &sums, d_x, d_affine, d_y, saved, cfg)?;
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
    let global = GlobalSums {
        sums: &totals,
        count: global,
    };
    backward_apply(enc, d_x, global, d_affine, d_y, saved, cfg)
}

impl Backward for BatchNormOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        self.push_grads(tape, &d_y)
    }
}

struct BatchNormAddReluOp {
    /// BN without ReLU; its output is also the op's output `y`.
    bn: BatchNormOp,
    residual: Var,
}

impl Backward for BatchNormAddReluOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let yt = tape.value(self.bn.y)?.clone();
        // g = d_y * [y > 0], once: into a transient buffer for BN, and onto the shortcut.
        let g = tape.gpu().zeros(&d_y.shape, "d_bn (transient)")?;
        let d_r = match tape.grad_if(self.residual)? {
            Some(d) => d,
            None => tape.gpu().zeros(&d_y.shape, "unused d_residual")?,
        };
        crate::ops::add::backward(tape.enc(), &g, &d_r, &yt, &d_y, true)?;
        self.bn.push_grads(tape, &g)
    }
}
