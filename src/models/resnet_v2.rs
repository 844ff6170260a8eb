//! Pre-activation ResNet (He et al. 2016, *Identity Mappings in Deep Residual Networks*)
//! exactly as timm 1.0.31 defines `resnetv2_18/34/50/101` (BatchNorm, plain convolutions),
//! with timm's state_dict names, so timm's weights load directly.
//!
//! ```text
//! stem:             stem.conv 7x7/s2/p3 → stem.pool max 3x3/s2/p1     (no norm: every block
//!                                                                    normalises its input)
//! PreActBasic:      a = ReLU(norm1(x)); conv1 3x3/s (a) → ReLU(norm2) → conv2 3x3
//!                   → + shortcut
//! PreActBottleneck: a = ReLU(norm1(x)); conv1 1x1 (a) → ReLU(norm2) → conv2 3x3/s
//!                   → ReLU(norm3) → conv3 1x1 (4x) → + shortcut
//! shortcut:         downsample.conv 1x1/s (a) on a stage's first block (a basic block's
//!                   only when the stride or width changes), else x itself
//! stages:           stages.{i}.blocks.{j}; out channels 64-128-256-512 (basic) or
//!                   256-512-1024-2048 (bottleneck), strides 1, 2, 2, 2
//! head:             norm (BN + ReLU) → global average pool → head.fc (1x1 conv with bias)
//! ```
//!
//! Each layer is BN → ReLU → conv: DenseNet's composite function. The two families differ
//! in the sum against the concatenation.
//!
//! In [`BlockMode::MemoryEfficient`] no BN+ReLU output that feeds only convolutions is
//! stored: each convolution applies its input's BN+ReLU while reading and backward
//! recomputes it. `norm1` feeds both `conv1` and the shortcut's convolution: its
//! statistics are computed once, both convolutions apply it, and each adds its share of
//! the gradient into the block input, `norm1.weight` and `norm1.bias`. What stays stored is
//! the residual stream (each block's input and output) and the convolutions' outputs; the
//! final `norm` is stored too, as it feeds the pool, not a convolution.
//! [`BlockMode::Plain`] materialises every BN+ReLU as timm's modules do.

use super::layers::{BatchNorm2d, Conv2d, FanMode, Init, ParamStore, PointwiseHead};
use super::{batch_size, BlockMode, Model, ModelConfig, ResNetBlock, ResNetConfig};
use crate::gpu::{Gpu, Result};
use crate::ops::avg_pool2d::Pool2dSpec;
use crate::ops::conv2d::Conv2dSpec;
use crate::tape::{Tape, Var};

/// Architecture hyper-parameters (timm's `ResNetV2(layers, channels, stem_chs, basic, ...)`
/// with `BatchNormAct2d` and `create_conv2d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetV2Config {
    pub block: ResNetBlock,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Channels of the stem and of the first stage's inner layers: 64 in timm; each later
    /// stage doubles them. Smaller widths (multiples of 8, as timm rounds channels) make
    /// small models for tests.
    pub width: usize,
    pub num_classes: usize,
}

/// The pre-activation twin of a torchvision ResNet: timm's `resnetv2_18/34/50/101` have
/// the blocks, stages and widths of `resnet18/34/50/101`.
impl From<ResNetConfig> for ResNetV2Config {
    fn from(c: ResNetConfig) -> Self {
        ResNetV2Config {
            block: c.block,
            layers: c.layers,
            width: c.width,
            num_classes: c.num_classes,
        }
    }
}

impl ResNetV2Config {
    /// Output channels of each stage (timm's `channels`): width·2^i, times 4 for
    /// bottleneck blocks.
    pub fn stage_channels(&self) -> Vec<usize> {
        let expansion = self.block.expansion();
        (0..self.layers.len())
            .map(|i| (self.width << i) * expansion)
            .collect()
    }

    /// Channels of the final feature map (the classifier's input).
    pub fn features(&self) -> usize {
        self.stage_channels().last().copied().unwrap_or(self.width)
    }

    /// The timm call that builds the same architecture.
    pub fn timm_constructor(&self) -> String {
        let preset = [
            (ResNetBlock::Basic, &[2, 2, 2, 2][..], "resnetv2_18"),
            (ResNetBlock::Basic, &[3, 4, 6, 3], "resnetv2_34"),
            (ResNetBlock::Bottleneck, &[3, 4, 6, 3], "resnetv2_50"),
            (ResNetBlock::Bottleneck, &[3, 4, 23, 3], "resnetv2_101"),
        ]
        .into_iter()
        .find(|(b, l, _)| *b == self.block && *l == self.layers.as_slice());
        match preset {
            Some((_, _, name)) if self.width == 64 => format!(
                "timm.create_model(\"{name}\", num_classes={})",
                self.num_classes
            ),
            _ => {
                let (basic, ratio) = match self.block {
                    ResNetBlock::Basic => ("True", "1.0"),
                    ResNetBlock::Bottleneck => ("False", "0.25"),
                };
                format!(
                    "timm.models.resnetv2.ResNetV2({:?}, channels={:?}, stem_chs={}, \
                     basic={basic}, bottle_ratio={ratio}, conv_layer=create_conv2d, \
                     norm_layer=BatchNormAct2d, num_classes={})",
                    self.layers,
                    self.stage_channels(),
                    self.width,
                    self.num_classes
                )
            }
        }
    }
}

/// A pre-activation block: norm1 and the shortcut's convolution, then two (basic) or three
/// (bottleneck) BN+ReLU → conv layers.
struct Block {
    downsample: Option<Conv2d>,
    norm1: BatchNorm2d,
    conv1: Conv2d,
    /// Each later layer: the BN+ReLU that its convolution reads.
    layers: Vec<(BatchNorm2d, Conv2d)>,
    name: String,
}

/// A pre-activation ResNet's layers; its tensors live in one [`ParamStore`].
pub struct ResNetV2 {
    pub config: ResNetV2Config,
    pub store: ParamStore,
    stem: Conv2d,
    stages: Vec<Vec<Block>>,
    norm: BatchNorm2d,
    head: PointwiseHead,
    pub mode: BlockMode,
}

const fn spec(stride: usize, padding: usize) -> Conv2dSpec {
    Conv2dSpec { stride, padding }
}

impl ResNetV2 {
    /// Builds a pre-activation ResNet with timm's initialisation, seeded: Kaiming-normal
    /// (fan_out) convolutions, BN weight 1 and bias 0, `head.fc` from N(0, 0.01²) with a
    /// zero bias. Tensors are created in timm's registration order.
    pub fn new(gpu: &Gpu, config: ResNetV2Config, seed: u64) -> Result<ResNetV2> {
        super::check_residual_config("resnetv2", &config.layers, config.width, config.num_classes)?;
        let mut b = Init::new(gpu, seed, FanMode::FanOut);
        let stem = b.conv2d("stem.conv", config.width, 3, 7, spec(2, 3))?;
        let mut in_chs = config.width;
        let mut stages = Vec::new();
        for (si, (&blocks, out_chs)) in config
            .layers
            .iter()
            .zip(config.stage_channels())
            .enumerate()
        {
            let mid = out_chs / config.block.expansion();
            let mut stage = Vec::new();
            for bi in 0..blocks {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                let name = format!("stages.{si}.blocks.{bi}");
                let projects = bi == 0
                    && (config.block == ResNetBlock::Bottleneck
                        || stride != 1
                        || in_chs != out_chs);
                let downsample = projects
                    .then(|| {
                        b.conv2d(
                            &format!("{name}.downsample.conv"),
                            out_chs,
                            in_chs,
                            1,
                            spec(stride, 0),
                        )
                    })
                    .transpose()?;
                let norm1 = b.batch_norm(&format!("{name}.norm1"), in_chs)?;
                let (conv1, layers) = match config.block {
                    ResNetBlock::Basic => (
                        b.conv2d(&format!("{name}.conv1"), mid, in_chs, 3, spec(stride, 1))?,
                        vec![(
                            b.batch_norm(&format!("{name}.norm2"), mid)?,
                            b.conv2d(&format!("{name}.conv2"), out_chs, mid, 3, spec(1, 1))?,
                        )],
                    ),
                    ResNetBlock::Bottleneck => (
                        b.conv2d(&format!("{name}.conv1"), mid, in_chs, 1, spec(1, 0))?,
                        vec![
                            (
                                b.batch_norm(&format!("{name}.norm2"), mid)?,
                                b.conv2d(&format!("{name}.conv2"), mid, mid, 3, spec(stride, 1))?,
                            ),
                            (
                                b.batch_norm(&format!("{name}.norm3"), mid)?,
                                b.conv2d(&format!("{name}.conv3"), out_chs, mid, 1, spec(1, 0))?,
                            ),
                        ],
                    ),
                };
                stage.push(Block {
                    downsample,
                    norm1,
                    conv1,
                    layers,
                    name,
                });
                in_chs = out_chs;
            }
            stages.push(stage);
        }
        let norm = b.batch_norm("norm", in_chs)?;
        let head = b.head_conv("head.fc", config.num_classes, in_chs)?;
        Ok(ResNetV2 {
            config,
            store: b.store,
            stem,
            stages,
            norm,
            head,
            mode: BlockMode::default(),
        })
    }

    fn block(&self, tape: &mut Tape, blk: &Block, x: Var, training: bool) -> Result<Var> {
        let s = &self.store;
        let fused = self.mode == BlockMode::MemoryEfficient;
        let norm1 = match fused {
            true => blk.norm1.relu_statistics(s, tape, x, training)?,
            false => None,
        };
        // The shortcut first, as timm computes it.
        let (shortcut, mut y) = match norm1 {
            Some(bn_relu) => {
                let shortcut = match &blk.downsample {
                    Some(conv) => conv.forward_bn_relu(s, tape, &bn_relu)?,
                    None => x,
                };
                (shortcut, blk.conv1.forward_bn_relu(s, tape, &bn_relu)?)
            }
            None => {
                let a = blk.norm1.forward(s, tape, x, true, training)?;
                let shortcut = match &blk.downsample {
                    Some(conv) => conv.forward(s, tape, a, None)?,
                    None => x,
                };
                (shortcut, blk.conv1.forward(s, tape, a, None)?)
            }
        };
        for (norm, conv) in &blk.layers {
            y = norm.relu_conv(s, tape, y, conv, fused, training)?;
        }
        tape.add(y, shortcut, false, &format!("{}+shortcut", blk.name))
    }
}

impl Model for ResNetV2 {
    model_fields!(ResNetV2, "head.fc.");

    fn forward(&self, tape: &mut Tape, images: Var, training: bool) -> Result<Var> {
        batch_size("resnetv2", tape, images)?;
        let st = &self.store;
        let x = self.stem.forward(st, tape, images, None)?;
        let pool = Pool2dSpec {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let mut x = tape.max_pool2d(x, pool, None, "stem.pool")?;
        for stage in &self.stages {
            for blk in stage {
                x = self.block(tape, blk, x, training)?;
            }
        }
        let x = self.norm.forward(st, tape, x, true, training)?;
        let pooled = tape.global_avg_pool(x, "head.global_pool")?;
        self.head.forward(st, tape, pooled)
    }
}
