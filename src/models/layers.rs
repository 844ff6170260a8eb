//! The layers DenseNet and ResNet are built from, with torchvision's (and, for the
//! pre-activation ResNet, timm's) initialisation and state_dict names: [`Conv2d`] (no
//! bias), [`BatchNorm2d`], [`Linear`] and [`PointwiseHead`].
//!
//! A model's tensors live in one [`ParamStore`], in torchvision's `state_dict()` order
//! (parameters in registration order, then BN buffers); layers hold indices into it.
//! [`Init`] creates them: Kaiming-normal convolutions (fan_out, gain √2: torchvision's
//! `kaiming_normal_(mode="fan_out", nonlinearity="relu")` for ResNet, fan_in for DenseNet),
//! BN weight 1 and bias 0, and nn.Linear's default uniform init.

use std::cell::Cell;

use crate::gpu::{Gpu, Result, Tensor};
use crate::ops::batch_norm::tape::BnLayer;
use crate::ops::batch_norm::{BnConfig, RunningStats};
use crate::ops::conv2d::tape::BnRelu;
use crate::ops::conv2d::Conv2dSpec;
use crate::rng::Rng;
use crate::tape::{Param, Tape, Var};

/// torchvision's BatchNorm2d defaults.
pub const BN: BnConfig = BnConfig {
    eps: 1e-5,
    momentum: 0.1,
    relu: false,
};

/// Parameters, buffers and BN batch counters of one model.
#[derive(Default)]
pub struct ParamStore {
    /// Trainable tensors, in torchvision's `parameters()` order.
    pub params: Vec<Param>,
    /// Non-trainable state (BN running statistics), with state_dict names.
    pub buffers: Vec<(String, Tensor)>,
    /// `num_batches_tracked` per BN (host-side counters; PyTorch stores them as I64).
    pub batches_tracked: Vec<(String, Cell<i64>)>,
}

impl ParamStore {
    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    /// Names and shapes in state_dict order: parameters, buffers, then the BN counters
    /// (shape `[]`).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let params = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.shape.clone()));
        let buffers = self
            .buffers
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone()));
        let tracked = self
            .batches_tracked
            .iter()
            .map(|(n, _)| (n.clone(), vec![]));
        params.chain(buffers).chain(tracked).collect()
    }
}

/// How a convolution initialises its weights (torchvision differs per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// DenseNet: `kaiming_normal_` with the default fan_in.
    FanIn,
    /// ResNet: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
    FanOut,
}

/// Creates layers into a [`ParamStore`], drawing initial values from one seeded stream.
pub struct Init<'a> {
    gpu: &'a Gpu,
    rng: Rng,
    fan: FanMode,
    pub store: ParamStore,
}

impl<'a> Init<'a> {
    pub fn new(gpu: &'a Gpu, seed: u64, fan: FanMode) -> Init<'a> {
        Init {
            gpu,
            rng: Rng::new(seed),
            fan,
            store: ParamStore::default(),
        }
    }

    fn param(&mut self, name: &str, data: &[f32], shape: &[usize]) -> Result<usize> {
        self.store
            .params
            .push(Param::new(self.gpu, name, data, shape)?);
        Ok(self.store.params.len() - 1)
    }

    /// A bias-free `k x k` convolution, Kaiming-normal (gain √2).
    pub fn conv2d(
        &mut self,
        name: &str,
        cout: usize,
        cin: usize,
        k: usize,
        spec: Conv2dSpec,
    ) -> Result<Conv2d> {
        let fan = match self.fan {
            FanMode::FanIn => cin * k * k,
            FanMode::FanOut => cout * k * k,
        };
        let std = (2.0 / fan as f64).sqrt();
        let data: Vec<f32> = (0..cout * cin * k * k)
            .map(|_| (self.rng.normal() * std) as f32)
            .collect();
        let weight = self.param(&format!("{name}.weight"), &data, &[cout, cin, k, k])?;
        Ok(Conv2d {
            weight,
            spec,
            name: name.to_string(),
        })
    }

    /// A batch norm over `c` channels: weight 1, bias 0, running mean 0, running var 1.
    pub fn batch_norm(&mut self, name: &str, c: usize) -> Result<BatchNorm2d> {
        let weight = self.param(&format!("{name}.weight"), &vec![1.0; c], &[c])?;
        let bias = self.param(&format!("{name}.bias"), &vec![0.0; c], &[c])?;
        for (stat, v) in [("running_mean", 0.0), ("running_var", 1.0)] {
            let full = format!("{name}.{stat}");
            let t = self.gpu.upload(&vec![v; c], &[c], &full)?;
            self.store.buffers.push((full, t));
        }
        let tracked = format!("{name}.num_batches_tracked");
        self.store.batches_tracked.push((tracked, Cell::new(0)));
        let n = self.store.buffers.len();
        Ok(BatchNorm2d {
            weight,
            bias,
            running_mean: n - 2,
            running_var: n - 1,
            batches_tracked: self.store.batches_tracked.len() - 1,
            name: name.to_string(),
        })
    }

    /// nn.Linear's default init: weight kaiming-uniform with a=√5, i.e. U(±1/√fan_in), and
    /// bias U(±1/√fan_in), or 0 with `zero_bias` (torchvision's DenseNet sets it so).
    pub fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        zero_bias: bool,
    ) -> Result<Linear> {
        let bound = 1.0 / (inp as f64).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| self.rng.range(-bound, bound) as f32)
                .collect()
        };
        let data = uniform(out * inp);
        let bias_data = if zero_bias {
            vec![0.0; out]
        } else {
            uniform(out)
        };
        let weight = self.param(&format!("{name}.weight"), &data, &[out, inp])?;
        let bias = self.param(&format!("{name}.bias"), &bias_data, &[out])?;
        Ok(Linear {
            weight,
            bias,
            name: name.to_string(),
        })
    }
}

impl Init<'_> {
    /// timm's classifier on pooled features, a 1x1 convolution with bias (`head.fc` with
    /// `use_conv=True`): weight `[out, inp, 1, 1]` drawn from N(0, 0.01²), bias 0.
    pub fn head_conv(&mut self, name: &str, out: usize, inp: usize) -> Result<PointwiseHead> {
        let data: Vec<f32> = (0..out * inp)
            .map(|_| (self.rng.normal() * 0.01) as f32)
            .collect();
        let weight = self.param(&format!("{name}.weight"), &data, &[out, inp, 1, 1])?;
        let bias = self.param(&format!("{name}.bias"), &vec![0.0; out], &[out])?;
        Ok(PointwiseHead {
            weight,
            bias,
            name: name.to_string(),
        })
    }
}

/// A bias-free convolution (`<name>.weight`, OIHW).
pub struct Conv2d {
    weight: usize,
    pub spec: Conv2dSpec,
    pub name: String,
}

impl Conv2d {
    /// `conv(x)`, optionally into `out` (a channel slice of a larger buffer).
    pub fn forward(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        x: Var,
        out: Option<Var>,
    ) -> Result<Var> {
        let w = tape.param(&store.params[self.weight]);
        tape.conv2d(x, w, None, self.spec, out, &self.name)
    }

    /// `conv(ReLU(BN(x)))`, applying `bn_relu` ([`BatchNorm2d::relu_statistics`]) while
    /// reading its input.
    pub fn forward_bn_relu(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        bn_relu: &BnRelu,
    ) -> Result<Var> {
        let w = tape.param(&store.params[self.weight]);
        tape.conv_of_bn_relu(bn_relu, w, self.spec, None, &self.name)
    }
}

/// A BatchNorm2d (`<name>.{weight,bias,running_mean,running_var,num_batches_tracked}`).
///
/// A BN whose weight is frozen ([`Param::trainable`] false) normalises with its running
/// statistics even in training mode, and leaves them unchanged.
pub struct BatchNorm2d {
    weight: usize,
    bias: usize,
    running_mean: usize,
    running_var: usize,
    batches_tracked: usize,
    pub name: String,
}

impl BatchNorm2d {
    fn stats<'s>(&self, store: &'s ParamStore) -> RunningStats<'s> {
        RunningStats {
            mean: &store.buffers[self.running_mean].1,
            var: &store.buffers[self.running_var].1,
        }
    }

    /// Whether this call uses (and updates) batch statistics.
    fn batch_stats(&self, store: &ParamStore, training: bool) -> bool {
        let on = training && store.params[self.weight].trainable;
        if on {
            let c = &store.batches_tracked[self.batches_tracked].1;
            c.set(c.get() + 1);
        }
        on
    }

    /// The layer as a tape entry reads it, with `cfg`, and whether this call uses batch
    /// statistics ([`BatchNorm2d::batch_stats`], which counts the batch).
    fn layer<'s>(
        &self,
        store: &'s ParamStore,
        tape: &mut Tape,
        cfg: BnConfig,
        training: bool,
    ) -> (BnLayer<'s>, bool) {
        let batch = self.batch_stats(store, training);
        let layer = BnLayer {
            gamma: tape.param(&store.params[self.weight]),
            beta: tape.param(&store.params[self.bias]),
            running: self.stats(store),
            cfg,
        };
        (layer, batch)
    }

    /// `BN(x)`, then ReLU when `relu`.
    pub fn forward(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        x: Var,
        relu: bool,
        training: bool,
    ) -> Result<Var> {
        let (layer, batch) = self.layer(store, tape, BnConfig { relu, ..BN }, training);
        let name = format!("{}{}", self.name, if relu { "+relu" } else { "" });
        tape.batch_norm(x, layer, batch, &name)
    }

    /// `max(BN(x) + residual, 0)`, the end of a residual block.
    pub fn add_relu(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        x: Var,
        residual: Var,
        training: bool,
    ) -> Result<Var> {
        let (layer, batch) = self.layer(store, tape, BN, training);
        let name = format!("{}+add+relu", self.name);
        tape.batch_norm_add_relu(x, layer, batch, residual, &name)
    }

    /// The batch statistics of `ReLU(BN(x))` for convolutions that apply it while reading x
    /// ([`Conv2d::forward_bn_relu`]), or `None` where it must be materialised: in
    /// inference, or with frozen parameters (running statistics).
    pub fn relu_statistics(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        x: Var,
        training: bool,
    ) -> Result<Option<BnRelu>> {
        if !(training && store.params[self.weight].trainable) {
            return Ok(None);
        }
        let (layer, _) = self.layer(store, tape, BN, training);
        tape.bn_relu_statistics(x, layer, &self.name).map(Some)
    }

    /// `conv(ReLU(BN(x)))`. With `fused` (and batch statistics) the BN+ReLU output is never
    /// stored: the convolution applies it while reading x and backward recomputes it.
    pub fn relu_conv(
        &self,
        store: &ParamStore,
        tape: &mut Tape,
        x: Var,
        conv: &Conv2d,
        fused: bool,
        training: bool,
    ) -> Result<Var> {
        if fused && training && store.params[self.weight].trainable {
            let (layer, _) = self.layer(store, tape, BN, training);
            let w = tape.param(&store.params[conv.weight]);
            return tape.bn_relu_conv(x, layer, w, conv.spec, None, &conv.name);
        }
        let a = self.forward(store, tape, x, true, training)?;
        conv.forward(store, tape, a, None)
    }
}

/// A 1x1 convolution with bias on pooled features (N, C) (`<name>.weight` [out, in, 1, 1],
/// `<name>.bias`): on a 1x1 plane it is a fully connected layer, and runs as one.
pub struct PointwiseHead {
    weight: usize,
    bias: usize,
    pub name: String,
}

impl PointwiseHead {
    pub fn forward(&self, store: &ParamStore, tape: &mut Tape, x: Var) -> Result<Var> {
        let p = &store.params[self.weight];
        let [out, inp] = [p.value.shape[0], p.value.shape[1]];
        // The same storage, viewed as [out, in]: the gradient lands in the 4-D parameter.
        let matrix = Param {
            name: p.name.clone(),
            value: p.value.reshape(&[out, inp])?,
            grad: p.grad.reshape(&[out, inp])?,
            trainable: p.trainable,
        };
        let w = tape.param(&matrix);
        let b = tape.param(&store.params[self.bias]);
        tape.linear(x, w, Some(b), &self.name)
    }
}

/// A fully connected layer with bias (`<name>.weight` [out, in], `<name>.bias`).
pub struct Linear {
    weight: usize,
    bias: usize,
    pub name: String,
}

impl Linear {
    pub fn forward(&self, store: &ParamStore, tape: &mut Tape, x: Var) -> Result<Var> {
        let w = tape.param(&store.params[self.weight]);
        let b = tape.param(&store.params[self.bias]);
        tape.linear(x, w, Some(b), &self.name)
    }
}
