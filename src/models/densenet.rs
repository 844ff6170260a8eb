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

use super::layers::{BatchNorm2d, Conv2d, FanMode, Init, Linear, ParamStore};
use super::{batch_size, BlockMode, Model, ModelConfig};
use crate::gpu::{Gpu, Result};
use crate::ops::avg_pool2d::Pool2dSpec;
use crate::ops::conv2d::Conv2dSpec;
use crate::tape::{Tape, Var};

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

struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
}

struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
}

/// A DenseNet's layers; its tensors live in one [`ParamStore`].
pub struct DenseNet {
    pub config: DenseNetConfig,
    pub store: ParamStore,
    conv0: Conv2d,
    norm0: BatchNorm2d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: BatchNorm2d,
    classifier: Linear,
    pub mode: BlockMode,
}

const ONE: Conv2dSpec = Conv2dSpec {
    stride: 1,
    padding: 0,
};

impl DenseNet {
    /// Builds a DenseNet with torchvision's initialisation, seeded.
    pub fn new(gpu: &Gpu, config: DenseNetConfig, seed: u64) -> Result<DenseNet> {
        super::check_config(
            "densenet",
            &[
                ("dense blocks", config.block_config.len()),
                ("growth_rate", config.growth_rate),
                ("num_classes", config.num_classes),
            ],
        )?;
        let mut b = Init::new(gpu, seed, FanMode::FanIn);
        let k = config.growth_rate;
        let inner = config.bn_size * k;
        let stem = Conv2dSpec {
            stride: 2,
            padding: 3,
        };
        let conv0 = b.conv2d("features.conv0", config.num_init_features, 3, 7, stem)?;
        let norm0 = b.batch_norm("features.norm0", config.num_init_features)?;
        let mut c = config.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (bi, &layers) in config.block_config.iter().enumerate() {
            let mut block = Vec::new();
            for li in 0..layers {
                let prefix = format!("features.denseblock{}.denselayer{}", bi + 1, li + 1);
                let cin = c + li * k;
                let three = Conv2dSpec {
                    stride: 1,
                    padding: 1,
                };
                block.push(DenseLayer {
                    norm1: b.batch_norm(&format!("{prefix}.norm1"), cin)?,
                    conv1: b.conv2d(&format!("{prefix}.conv1"), inner, cin, 1, ONE)?,
                    norm2: b.batch_norm(&format!("{prefix}.norm2"), inner)?,
                    conv2: b.conv2d(&format!("{prefix}.conv2"), k, inner, 3, three)?,
                });
            }
            blocks.push(block);
            c += layers * k;
            if bi + 1 != config.block_config.len() {
                let prefix = format!("features.transition{}", bi + 1);
                let norm = b.batch_norm(&format!("{prefix}.norm"), c)?;
                let conv = b.conv2d(&format!("{prefix}.conv"), c / 2, c, 1, ONE)?;
                transitions.push(Transition { norm, conv });
                c /= 2;
            }
        }
        let norm5 = b.batch_norm("features.norm5", c)?;
        let classifier = b.linear("classifier", config.num_classes, c, true)?;
        Ok(DenseNet {
            config,
            store: b.store,
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
            classifier,
            mode: BlockMode::default(),
        })
    }

    /// norm1 → ReLU → conv1 → norm2 → ReLU → conv2, the k new channels written into `out`
    /// when given. `fused`: BN1+ReLU is applied inside conv1's input read.
    fn dense_layer(
        &self,
        tape: &mut Tape,
        l: &DenseLayer,
        input: Var,
        out: Option<Var>,
        fused: bool,
        training: bool,
    ) -> Result<Var> {
        let s = &self.store;
        let bottleneck = l
            .norm1
            .relu_conv(s, tape, input, &l.conv1, fused, training)?;
        let a2 = l.norm2.forward(s, tape, bottleneck, true, training)?;
        l.conv2.forward(s, tape, a2, out)
    }
}

impl Model for DenseNet {
    model_fields!(DenseNet, "classifier.");

    fn forward(&self, tape: &mut Tape, images: Var, training: bool) -> Result<Var> {
        let n = batch_size("densenet", tape, images)?;
        let st = &self.store;
        // One buffer per block (no concatenation copies) in memory-efficient mode; the
        // fused BN+ReLU-in-conv read needs batch statistics, so inference normalises
        // with the running statistics as a separate op.
        let efficient = self.mode == BlockMode::MemoryEfficient;
        let fused = efficient && training;
        let (block_in, _) = self.config.block_channels();
        let k = self.config.growth_rate;

        let x = self.conv0.forward(st, tape, images, None)?;
        let x = self.norm0.forward(st, tape, x, true, training)?;
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
            let pool_name = if is_max {
                "features.pool0".to_string()
            } else {
                format!("features.transition{bi}.pool")
            };
            let [_, _, h, w] = crate::gpu::nchw("densenet", "block input", tape.value(prev)?)?;
            let (oh, ow) = crate::ops::avg_pool2d::output_size(pool, h, w)?;
            let block_name = format!("features.denseblock{}", bi + 1);
            let features = if efficient {
                // One buffer for the whole block; the pool writes the first c0 channels.
                let buf = tape.alloc(&[n, c_end, oh, ow], &block_name)?;
                let head = tape.slice(buf, 0, c0)?;
                if is_max {
                    tape.max_pool2d(prev, pool, Some(head), &pool_name)?;
                } else {
                    tape.avg_pool2d(prev, pool, Some(head), &pool_name)?;
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
                    tape.max_pool2d(prev, pool, None, &pool_name)?
                } else {
                    tape.avg_pool2d(prev, pool, None, &pool_name)?
                };
                let mut feats = vec![pooled];
                for (li, layer) in block.iter().enumerate() {
                    let input = if feats.len() == 1 {
                        feats[0]
                    } else {
                        let name = format!("{block_name}.denselayer{}.cat", li + 1);
                        tape.concat(&feats, &name)?
                    };
                    let out = self.dense_layer(tape, layer, input, None, false, training)?;
                    feats.push(out);
                }
                tape.concat(&feats, &format!("{block_name}.out"))?
            };
            prev = match self.transitions.get(bi) {
                Some(t) => t
                    .norm
                    .relu_conv(st, tape, features, &t.conv, fused, training)?,
                None => features,
            };
        }
        let a = self.norm5.forward(st, tape, prev, true, training)?;
        let pooled = tape.global_avg_pool(a, "global_avg_pool")?;
        self.classifier.forward(st, tape, pooled)
    }
}
