//! The tape entries of conv2d: the forward launches they record and their backward.

use super::{backward_data, backward_weight, forward, output_size, BnReluPrologue, Conv2dSpec};
use crate::gpu::{nchw, Result, Tensor};
use crate::ops::batch_norm::tape::{BatchNormOp, BnLayer, BnStats};
use crate::ops::batch_norm::{self, Affine};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Convolution, optionally writing into `out` (a slice of a larger buffer).
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let y = self.conv_output(x, w, spec, out, name)?;
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let [yt, xt, wt] = self.values([y, x, w])?;
        forward(self.enc(), &yt, &xt, &wt, bt.as_ref(), None, spec)?;
        let vars: Vec<Var> = [y, x, w].into_iter().chain(b).collect();
        self.record("conv2d", &vars, &[x, w], Conv2dOp { x, w, b, spec })?;
        Ok(y)
    }

    /// Training-mode BN → ReLU → conv without storing the BN+ReLU output (memory-efficient
    /// layers). Statistics are computed once, here; backward recomputes the normalised
    /// input on the fly and never touches the running statistics.
    pub fn bn_relu_conv(
        &mut self,
        x: Var,
        layer: BnLayer,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let bn_relu = self.bn_relu_statistics(x, layer, name)?;
        self.conv_of_bn_relu(&bn_relu, w, spec, out, name)
    }

    /// The batch statistics of a training-mode BN+ReLU of `x`, and the per-channel scale
    /// and shift they fold into, for convolutions that apply it while reading `x`
    /// ([`Tape::conv_of_bn_relu`]): one BN+ReLU that feeds several convolutions (a
    /// pre-activation block's `norm1` feeds `conv1` and the shortcut's) is computed once
    /// and never stored. Updates the running statistics once.
    pub fn bn_relu_statistics(&mut self, x: Var, layer: BnLayer, name: &str) -> Result<BnRelu> {
        let layer = layer.with_relu(true);
        let c = self.shape(x)[1];
        let g = self.gpu();
        let scale = g.zeros(&[c], &format!("{name}.scale"))?;
        let shift = g.zeros(&[c], &format!("{name}.shift"))?;
        let [xt, gt, bt] = self.values([x, layer.gamma, layer.beta])?;
        let affine = Affine {
            gamma: &gt,
            beta: &bt,
        };
        let stats = self.bn_statistics(None, &xt, affine, layer.running, layer.cfg, name)?;
        batch_norm::fold_scale_shift(self.enc(), &scale, &shift, affine, stats.batch())?;
        #[cfg(not(target_arch = "wasm32"))]
        self.probe_bn_relu(name, [x, layer.gamma, layer.beta], &stats, None)?;
        Ok(BnRelu {
            x,
            gamma: layer.gamma,
            beta: layer.beta,
            cfg: layer.cfg,
            stats,
            scale,
            shift,
        })
    }

    /// `conv(ReLU(BN(x)))` with the BN+ReLU of `bn_relu` applied while reading its `x`.
    /// Backward recomputes it and adds this convolution's share of the gradient into x,
    /// gamma and beta (each convolution reading one BN+ReLU adds its own).
    pub fn conv_of_bn_relu(
        &mut self,
        bn_relu: &BnRelu,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let x = bn_relu.x;
        let y = self.conv_output(x, w, spec, out, name)?;
        let [yt, xt, wt] = self.values([y, x, w])?;
        let pro = BnReluPrologue {
            scale: &bn_relu.scale,
            shift: &bn_relu.shift,
        };
        forward(self.enc(), &yt, &xt, &wt, None, Some(pro), spec)?;
        let bn = BatchNormOp {
            y,
            x,
            gamma: bn_relu.gamma,
            beta: bn_relu.beta,
            cfg: bn_relu.cfg,
            stats: bn_relu.stats.clone(),
        };
        let op = BnReluConvOp {
            w,
            bn,
            scale: bn_relu.scale.clone(),
            shift: bn_relu.shift.clone(),
            spec,
        };
        let (gamma, beta) = (bn_relu.gamma, bn_relu.beta);
        let reads = [x, gamma, beta, w];
        self.record("bn_relu_conv", &[y, x, gamma, beta, w], &reads, op)?;
        Ok(y)
    }

    /// The output variable of a convolution of `x` by `w` (into `out` when given), its
    /// multiply-adds counted.
    fn conv_output(
        &mut self,
        x: Var,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, _, h, wd] = nchw(name, "x", self.value(x)?)?;
        let [co, ci, kh, kw] = nchw(name, "weight", self.value(w)?)?;
        let (oh, ow) = output_size(spec, h, wd, kh, kw)?;
        let y = self.output(out, &[n, co, oh, ow], name)?;
        self.count_multiply_adds(n * co * oh * ow * ci * kh * kw);
        Ok(y)
    }
}

/// A training-mode BN+ReLU that convolutions apply while reading its input
/// ([`Tape::bn_relu_statistics`]): its input, parameters, batch statistics and the scale
/// and shift they fold into.
pub struct BnRelu {
    x: Var,
    gamma: Var,
    beta: Var,
    cfg: crate::ops::batch_norm::BnConfig,
    stats: BnStats,
    scale: Tensor,
    shift: Tensor,
}

struct Conv2dOp {
    x: Var,
    w: Var,
    b: Option<Var>,
    spec: Conv2dSpec,
}

impl Backward for Conv2dOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let [xt, wt] = tape.values([self.x, self.w])?;
        let d_w = tape.grad_if(self.w)?;
        let d_b = self.b.map(|b| tape.grad_if(b)).transpose()?.flatten();
        let d_x = tape.grad_if(self.x)?;
        if let Some(d_w) = d_w {
            backward_weight(tape.enc(), &d_w, d_b.as_ref(), &d_y, &xt, None, self.spec)?;
        }
        if let Some(d_x) = d_x {
            backward_data(tape.enc(), &d_x, &d_y, &wt, self.spec)?;
        }
        Ok(())
    }
}

/// BN (batch statistics) → ReLU → conv, with the BN+ReLU output never stored: the conv
/// applies `max(scale*x + shift, 0)` while reading x, and backward recomputes it.
struct BnReluConvOp {
    w: Var,
    /// The BN (+ReLU) whose output the conv reads; `bn.y` is the conv's output.
    bn: BatchNormOp,
    scale: Tensor,
    shift: Tensor,
    spec: Conv2dSpec,
}

impl Backward for BnReluConvOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let [xt, wt] = tape.values([self.bn.x, self.w])?;
        let pro = BnReluPrologue {
            scale: &self.scale,
            shift: &self.shift,
        };
        if let Some(d_w) = tape.grad_if(self.w)? {
            backward_weight(tape.enc(), &d_w, None, &d_y, &xt, Some(pro), self.spec)?;
        }
        // Gradient w.r.t. the (never stored) BN+ReLU output: one transient buffer.
        let d_act = tape.gpu().zeros(&xt.shape, "d_bn_relu (transient)")?;
        backward_data(tape.enc(), &d_act, &d_y, &wt, self.spec)?;
        self.bn.push_grads(tape, &d_act)
    }
}
