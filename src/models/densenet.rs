//! DenseNet (Huang et al. 2017) exactly as torchvision defines it, with torchvision's
//! state_dict names, so PyTorch weights load directly.
//!
//! ```text
//! stem:        conv0 7x7/s2/p3 → norm0 → ReLU → pool0 max 3x3/s2/p1
//! dense layer: norm1 → ReLU → conv1 1x1 (bn_size·k) → norm2 → ReLU → conv2 3x3/p1 (k)
//!              input = concat(block input, outputs of all earlier layers of the block)
//! transition:  norm → ReLU → conv 1x1 (C → C/2) → avg pool 2x2/s2
//! head:        norm5 → ReLU → global average pool → classifier (linear)
//! ```
//!
//! Two ways to run a dense block ([`BlockMode`]):
//! - `MemoryEfficient` (default): one buffer per block holds the block input and every
//!   layer's k new channels; each layer writes straight into its slice, and BN1+ReLU is
//!   applied inside conv1's input read (never stored, recomputed in backward).
//! - `Plain`: each layer materialises the concatenation and the BN1+ReLU output, like
//!   torchvision's default `memory_efficient=False`.

use std::cell::Cell;
use std::collections::HashMap;

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::avg_pool2d::Pool2dSpec;
use crate::ops::batch_norm::BnConfig;
use crate::ops::conv2d::Conv2dSpec;
use crate::rng::Rng;
use crate::tape::{Param, RunningStats, Tape, Var};

/// Architecture hyper-parameters (torchvision's `DenseNet(...)` arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    pub bn_size: usize,
    pub num_classes: usize,
}

impl DenseNetConfig {
    pub fn densenet121(num_classes: usize) -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 24, 16],
            num_init_features: 64,
            bn_size: 4,
            num_classes,
        }
    }
    pub fn densenet169(num_classes: usize) -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 32, 32],
            num_init_features: 64,
            bn_size: 4,
            num_classes,
        }
    }
    pub fn densenet201(num_classes: usize) -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 48, 32],
            num_init_features: 64,
            bn_size: 4,
            num_classes,
        }
    }
    /// DenseNet-BC for small images: k=12, blocks 6-6-6, 24 initial features.
    pub fn densenet_bc(num_classes: usize) -> Self {
        Self {
            growth_rate: 12,
            block_config: vec![6, 6, 6],
            num_init_features: 24,
            bn_size: 4,
            num_classes,
        }
    }
    /// A very small DenseNet-BC (k=12, blocks 3-3-3) for the embedded default dataset.
    pub fn densenet_tiny(num_classes: usize) -> Self {
        Self {
            growth_rate: 12,
            block_config: vec![3, 3, 3],
            num_init_features: 24,
            bn_size: 4,
            num_classes,
        }
    }

    /// A preset by name: densenet121, densenet169, densenet201, densenet-bc, densenet-tiny.
    pub fn preset(name: &str, num_classes: usize) -> Option<Self> {
        Some(match name {
            "densenet121" => Self::densenet121(num_classes),
            "densenet169" => Self::densenet169(num_classes),
            "densenet201" => Self::densenet201(num_classes),
            "densenet-bc" => Self::densenet_bc(num_classes),
            "densenet-tiny" => Self::densenet_tiny(num_classes),
            _ => return None,
        })
    }

    pub const PRESETS: &'static [&'static str] = &[
        "densenet121",
        "densenet169",
        "densenet201",
        "densenet-bc",
        "densenet-tiny",
    ];

    /// Channels entering each dense block, and the final feature count.
    pub fn block_channels(&self) -> (Vec<usize>, usize) {
        let mut c = self.num_init_features;
        let mut ins = Vec::new();
        for (i, &layers) in self.block_config.iter().enumerate() {
            ins.push(c);
            c += layers * self.growth_rate;
            if i + 1 != self.block_config.len() {
                c /= 2;
            }
        }
        (ins, c)
    }
}

/// How dense blocks are computed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockMode {
    #[default]
    MemoryEfficient,
    Plain,
}

/// A batch-norm layer's tensors (indices into `params` / `buffers` / `batches_tracked`).
#[derive(Clone, Copy)]
struct Norm {
    weight: usize,
    bias: usize,
    running_mean: usize,
    running_var: usize,
    batches_tracked: usize,
}

struct DenseLayer {
    norm1: Norm,
    conv1: usize,
    norm2: Norm,
    conv2: usize,
    prefix: String,
}

struct Transition {
    norm: Norm,
    conv: usize,
    prefix: String,
}

/// A DenseNet's parameters and buffers on the device.
pub struct DenseNet {
    pub config: DenseNetConfig,
    /// Trainable tensors, in torchvision's `parameters()` order.
    pub params: Vec<Param>,
    /// Non-trainable state (BN running statistics), with state_dict names.
    pub buffers: Vec<(String, Tensor)>,
    /// `num_batches_tracked` per BN (host-side counters; PyTorch stores them as I64).
    pub batches_tracked: Vec<(String, Cell<i64>)>,
    conv0: usize,
    norm0: Norm,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: Norm,
    classifier_w: usize,
    classifier_b: usize,
    pub mode: BlockMode,
    pub bn: BnConfig,
}

struct Builder<'a> {
    gpu: &'a Gpu,
    rng: Rng,
    params: Vec<Param>,
    buffers: Vec<(String, Tensor)>,
    tracked: Vec<(String, Cell<i64>)>,
}

impl Builder<'_> {
    fn param(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<usize> {
        self.params.push(Param::new(self.gpu, name, &data, shape)?);
        Ok(self.params.len() - 1)
    }
    /// Kaiming-normal (fan_in, gain √2), torchvision's conv init.
    fn conv(&mut self, name: &str, cout: usize, cin: usize, k: usize) -> Result<usize> {
        let fan_in = (cin * k * k) as f64;
        let std = (2.0 / fan_in).sqrt();
        let data = (0..cout * cin * k * k)
            .map(|_| (self.rng.normal() * std) as f32)
            .collect();
        self.param(&format!("{name}.weight"), data, &[cout, cin, k, k])
    }
    fn norm(&mut self, name: &str, c: usize) -> Result<Norm> {
        let weight = self.param(&format!("{name}.weight"), vec![1.0; c], &[c])?;
        let bias = self.param(&format!("{name}.bias"), vec![0.0; c], &[c])?;
        self.buffers.push((
            format!("{name}.running_mean"),
            self.gpu.upload(&vec![0.0; c], &[c], name)?,
        ));
        self.buffers.push((
            format!("{name}.running_var"),
            self.gpu.upload(&vec![1.0; c], &[c], name)?,
        ));
        self.tracked
            .push((format!("{name}.num_batches_tracked"), Cell::new(0)));
        let n = self.buffers.len();
        Ok(Norm {
            weight,
            bias,
            running_mean: n - 2,
            running_var: n - 1,
            batches_tracked: self.tracked.len() - 1,
        })
    }
}

impl DenseNet {
    /// Builds a DenseNet with torchvision's initialisation, seeded.
    pub fn new(gpu: &Gpu, config: DenseNetConfig, seed: u64) -> Result<DenseNet> {
        if config.block_config.is_empty() || config.growth_rate == 0 || config.num_classes == 0 {
            return Err(GpuError::Shape(format!(
                "densenet: invalid configuration {config:?}"
            )));
        }
        let mut b = Builder {
            gpu,
            rng: Rng::new(seed),
            params: vec![],
            buffers: vec![],
            tracked: vec![],
        };
        let k = config.growth_rate;
        let inner = config.bn_size * k;
        let conv0 = b.conv("features.conv0", config.num_init_features, 3, 7)?;
        let norm0 = b.norm("features.norm0", config.num_init_features)?;
        let mut c = config.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (bi, &layers) in config.block_config.iter().enumerate() {
            let mut block = Vec::new();
            for li in 0..layers {
                let prefix = format!("features.denseblock{}.denselayer{}", bi + 1, li + 1);
                let norm1 = b.norm(&format!("{prefix}.norm1"), c + li * k)?;
                let conv1 = b.conv(&format!("{prefix}.conv1"), inner, c + li * k, 1)?;
                let norm2 = b.norm(&format!("{prefix}.norm2"), inner)?;
                let conv2 = b.conv(&format!("{prefix}.conv2"), k, inner, 3)?;
                block.push(DenseLayer {
                    norm1,
                    conv1,
                    norm2,
                    conv2,
                    prefix,
                });
            }
            blocks.push(block);
            c += layers * k;
            if bi + 1 != config.block_config.len() {
                let prefix = format!("features.transition{}", bi + 1);
                let norm = b.norm(&format!("{prefix}.norm"), c)?;
                let conv = b.conv(&format!("{prefix}.conv"), c / 2, c, 1)?;
                transitions.push(Transition { norm, conv, prefix });
                c /= 2;
            }
        }
        let norm5 = b.norm("features.norm5", c)?;
        // nn.Linear's default weight init (kaiming-uniform, a=√5 → U(±1/√fan_in)); bias 0.
        let bound = 1.0 / (c as f64).sqrt();
        let wdata = (0..config.num_classes * c)
            .map(|_| b.rng.range(-bound, bound) as f32)
            .collect();
        let classifier_w = b.param("classifier.weight", wdata, &[config.num_classes, c])?;
        let classifier_b = b.param(
            "classifier.bias",
            vec![0.0; config.num_classes],
            &[config.num_classes],
        )?;
        Ok(DenseNet {
            config,
            params: b.params,
            buffers: b.buffers,
            batches_tracked: b.tracked,
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
            classifier_w,
            classifier_b,
            mode: BlockMode::default(),
            bn: BnConfig {
                eps: 1e-5,
                momentum: 0.1,
                relu: false,
            },
        })
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    /// Parameter index by state_dict name.
    pub fn param_index(&self) -> HashMap<String, usize> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect()
    }

    fn stats(&self, n: Norm) -> RunningStats<'_> {
        RunningStats {
            mean: &self.buffers[n.running_mean].1,
            var: &self.buffers[n.running_var].1,
        }
    }

    /// BN (+ReLU) as its own op (materialised output).
    fn norm_relu(
        &self,
        tape: &mut Tape,
        x: Var,
        n: Norm,
        name: &str,
        training: bool,
    ) -> Result<Var> {
        let g = tape.param(&self.params[n.weight]);
        let b = tape.param(&self.params[n.bias]);
        let cfg = BnConfig {
            relu: true,
            ..self.bn
        };
        if training {
            self.track(n);
        }
        tape.batch_norm(x, g, b, self.stats(n), cfg, training, name)
    }

    fn track(&self, n: Norm) {
        let c = &self.batches_tracked[n.batches_tracked].1;
        c.set(c.get() + 1);
    }

    /// Runs the network on `images` (N, 3, H, W) and returns the logits (N, classes).
    /// `training`: batch statistics (and running-stat updates) vs running statistics.
    pub fn forward(&self, tape: &mut Tape, images: Var, training: bool) -> Result<Var> {
        let s = tape.shape(images).to_vec();
        if s.len() != 4 || s[1] != 3 {
            return Err(GpuError::Shape(format!(
                "densenet: input must be (N, 3, H, W), got {s:?}"
            )));
        }
        let n = s[0];
        // One buffer per block (no concatenation copies) in memory-efficient mode; the
        // fused BN+ReLU-in-conv read needs batch statistics, so inference normalises
        // with the running statistics as a separate op.
        let efficient = self.mode == BlockMode::MemoryEfficient;
        let fused = efficient && training;
        let (block_in, _) = self.config.block_channels();
        let k = self.config.growth_rate;

        let w0 = tape.param(&self.params[self.conv0]);
        let x = tape.conv2d(
            images,
            w0,
            None,
            Conv2dSpec {
                stride: 2,
                padding: 3,
            },
            None,
            "features.conv0",
        )?;
        let x = self.norm_relu(tape, x, self.norm0, "features.norm0+relu0", training)?;
        let pool0 = Pool2dSpec {
            kernel: 3,
            stride: 2,
            padding: 1,
        };

        let mut prev = x;
        let mut first_pool: Option<(Pool2dSpec, bool)> = Some((pool0, true));
        for (bi, block) in self.blocks.iter().enumerate() {
            let c0 = block_in[bi];
            let c_end = c0 + block.len() * k;
            // Where the block input comes from: pool0 (max) or the previous transition (avg).
            let (pool, is_max) = first_pool.take().unwrap_or((
                Pool2dSpec {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                },
                false,
            ));
            let [_, _, h, w] = crate::gpu::nchw("densenet", "block input", tape.value(prev)?)?;
            let (oh, ow) = crate::ops::avg_pool2d::output_size(pool, h, w)?;
            let block_name = format!("features.denseblock{}", bi + 1);
            let features = if efficient {
                // One buffer for the whole block; the pool writes the first c0 channels.
                let buf = tape.alloc(&[n, c_end, oh, ow], &block_name)?;
                let head = tape.slice(buf, 0, c0)?;
                if is_max {
                    tape.max_pool2d(prev, pool, Some(head), "features.pool0")?;
                } else {
                    tape.avg_pool2d(
                        prev,
                        pool,
                        Some(head),
                        &format!("features.transition{bi}.pool"),
                    )?;
                }
                for (li, layer) in block.iter().enumerate() {
                    let c = c0 + li * k;
                    let input = tape.slice(buf, 0, c)?;
                    let out = tape.slice(buf, c, k)?;
                    self.dense_layer(tape, layer, input, Some(out), fused, training)?;
                }
                buf
            } else {
                let pooled = if is_max {
                    tape.max_pool2d(prev, pool, None, "features.pool0")?
                } else {
                    tape.avg_pool2d(prev, pool, None, &format!("features.transition{bi}.pool"))?
                };
                let mut feats = vec![pooled];
                for layer in block {
                    let input = if feats.len() == 1 {
                        feats[0]
                    } else {
                        tape.concat(&feats, &format!("{}.cat", layer.prefix))?
                    };
                    let out = self.dense_layer(tape, layer, input, None, false, training)?;
                    feats.push(out);
                }
                tape.concat(&feats, &format!("{block_name}.out"))?
            };
            prev = match self.transitions.get(bi) {
                Some(t) => {
                    let wt = tape.param(&self.params[t.conv]);
                    let name = format!("{}.conv", t.prefix);
                    if fused {
                        self.fused_norm_conv(
                            tape,
                            t.norm,
                            features,
                            wt,
                            Conv2dSpec {
                                stride: 1,
                                padding: 0,
                            },
                            None,
                            &name,
                        )?
                    } else {
                        let a = self.norm_relu(
                            tape,
                            features,
                            t.norm,
                            &format!("{}.norm+relu", t.prefix),
                            training,
                        )?;
                        tape.conv2d(
                            a,
                            wt,
                            None,
                            Conv2dSpec {
                                stride: 1,
                                padding: 0,
                            },
                            None,
                            &name,
                        )?
                    }
                }
                None => features,
            };
        }
        let a = self.norm_relu(tape, prev, self.norm5, "features.norm5+relu", training)?;
        let pooled = tape.global_avg_pool(a, "global_avg_pool")?;
        let w = tape.param(&self.params[self.classifier_w]);
        let b = tape.param(&self.params[self.classifier_b]);
        tape.linear(pooled, w, Some(b), "classifier")
    }

    /// BN → ReLU → conv with the normalised activations never stored (training only).
    #[allow(clippy::too_many_arguments)]
    fn fused_norm_conv(
        &self,
        tape: &mut Tape,
        norm: Norm,
        x: Var,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let g = tape.param(&self.params[norm.weight]);
        let b = tape.param(&self.params[norm.bias]);
        self.track(norm);
        tape.bn_relu_conv(x, g, b, self.stats(norm), self.bn, w, spec, out, name)
    }

    #[allow(clippy::too_many_arguments)]
    fn dense_layer(
        &self,
        tape: &mut Tape,
        l: &DenseLayer,
        input: Var,
        out: Option<Var>,
        efficient: bool,
        training: bool,
    ) -> Result<Var> {
        let w1 = tape.param(&self.params[l.conv1]);
        let one = Conv2dSpec {
            stride: 1,
            padding: 0,
        };
        let bottleneck = if efficient {
            self.fused_norm_conv(
                tape,
                l.norm1,
                input,
                w1,
                one,
                None,
                &format!("{}.conv1", l.prefix),
            )?
        } else {
            let a = self.norm_relu(
                tape,
                input,
                l.norm1,
                &format!("{}.norm1+relu1", l.prefix),
                training,
            )?;
            tape.conv2d(a, w1, None, one, None, &format!("{}.conv1", l.prefix))?
        };
        let a2 = self.norm_relu(
            tape,
            bottleneck,
            l.norm2,
            &format!("{}.norm2+relu2", l.prefix),
            training,
        )?;
        let w2 = tape.param(&self.params[l.conv2]);
        tape.conv2d(
            a2,
            w2,
            None,
            Conv2dSpec {
                stride: 1,
                padding: 1,
            },
            out,
            &format!("{}.conv2", l.prefix),
        )
    }
}
