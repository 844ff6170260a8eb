//! ResNet (He et al. 2016) exactly as torchvision defines it (`torchvision.models.resnet`),
//! with torchvision's state_dict names, so PyTorch weights load directly.
//!
//! ```text
//! stem:       conv1 7x7/s2/p3 → bn1 → ReLU → maxpool 3x3/s2/p1
//! BasicBlock: conv1 3x3/s → bn1 → ReLU → conv2 3x3 → bn2 → (+ shortcut) → ReLU
//! Bottleneck: conv1 1x1 → bn1 → ReLU → conv2 3x3/s → bn2 → ReLU → conv3 1x1 (4x) → bn3
//!             → (+ shortcut) → ReLU          (the stride sits on the 3x3, as torchvision's v1.5)
//! shortcut:   identity, or downsample = conv 1x1/s → BN when the stride or width changes
//! stages:     layer1..layer4 with 64, 128, 256, 512 planes, strides 1, 2, 2, 2
//! head:       global average pool → fc (linear)
//! ```
//!
//! In [`BlockMode::MemoryEfficient`] (the default) DenseNet's memory idea is carried over:
//! every BN+ReLU whose output only feeds a convolution (bn1 of both block kinds, and bn2
//! of a Bottleneck) is applied inside that convolution's input read and recomputed in
//! backward, so it is never stored; the block's end (BN + add + ReLU) writes its output
//! once, with no intermediate. [`BlockMode::Plain`] materialises each BN, ReLU and sum as
//! torchvision's modules do.

use super::layers::{BatchNorm2d, Conv2d, FanMode, Init, Linear, ParamStore};
use super::{batch_size, BlockMode, Model, ModelConfig};
use crate::gpu::{Gpu, Result};
use crate::ops::avg_pool2d::Pool2dSpec;
use crate::ops::conv2d::Conv2dSpec;
use crate::tape::{Tape, Var};

/// The two residual blocks of torchvision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResNetBlock {
    /// Two 3x3 convolutions (ResNet-18/34); expansion 1.
    Basic,
    /// 1x1 → 3x3 → 1x1 (ResNet-50/101/152); expansion 4.
    Bottleneck,
}

impl ResNetBlock {
    pub fn expansion(self) -> usize {
        match self {
            ResNetBlock::Basic => 1,
            ResNetBlock::Bottleneck => 4,
        }
    }
}

/// Architecture hyper-parameters (torchvision's `ResNet(block, layers, num_classes)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: ResNetBlock,
    /// Blocks per stage (four stages in every torchvision preset).
    pub layers: Vec<usize>,
    /// Planes of the first stage and channels of the stem: 64 in torchvision; each later
    /// stage doubles it. Smaller widths make small models for tests.
    pub width: usize,
    pub num_classes: usize,
}

impl ResNetConfig {
    fn torchvision(block: ResNetBlock, layers: &[usize], num_classes: usize) -> Self {
        Self {
            block,
            layers: layers.to_vec(),
            width: 64,
            num_classes,
        }
    }
    pub fn resnet18(num_classes: usize) -> Self {
        Self::torchvision(ResNetBlock::Basic, &[2, 2, 2, 2], num_classes)
    }
    pub fn resnet34(num_classes: usize) -> Self {
        Self::torchvision(ResNetBlock::Basic, &[3, 4, 6, 3], num_classes)
    }
    pub fn resnet50(num_classes: usize) -> Self {
        Self::torchvision(ResNetBlock::Bottleneck, &[3, 4, 6, 3], num_classes)
    }
    pub fn resnet101(num_classes: usize) -> Self {
        Self::torchvision(ResNetBlock::Bottleneck, &[3, 4, 23, 3], num_classes)
    }
    pub fn resnet152(num_classes: usize) -> Self {
        Self::torchvision(ResNetBlock::Bottleneck, &[3, 8, 36, 3], num_classes)
    }

    /// Planes of each stage: width, 2·width, 4·width, ...
    pub fn stage_widths(&self) -> Vec<usize> {
        (0..self.layers.len()).map(|i| self.width << i).collect()
    }

    /// Channels of the final feature map (the classifier's input).
    pub fn features(&self) -> usize {
        self.stage_widths().last().copied().unwrap_or(self.width) * self.block.expansion()
    }
}

struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    /// Bottleneck only.
    conv3: Option<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

/// A ResNet's layers; its tensors live in one [`ParamStore`].
pub struct ResNet {
    pub config: ResNetConfig,
    pub store: ParamStore,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    fc: Linear,
    pub mode: BlockMode,
}

const fn spec(stride: usize, padding: usize) -> Conv2dSpec {
    Conv2dSpec { stride, padding }
}

impl ResNet {
    /// Builds a ResNet with torchvision's initialisation, seeded.
    pub fn new(gpu: &Gpu, config: ResNetConfig, seed: u64) -> Result<ResNet> {
        super::check_residual_config("resnet", &config.layers, config.width, config.num_classes)?;
        let mut b = Init::new(gpu, seed, FanMode::FanOut);
        let conv1 = b.conv2d("conv1", config.width, 3, 7, spec(2, 3))?;
        let bn1 = b.batch_norm("bn1", config.width)?;
        let expansion = config.block.expansion();
        let mut inplanes = config.width;
        let mut stages = Vec::new();
        for (si, (&blocks, planes)) in config.layers.iter().zip(config.stage_widths()).enumerate() {
            let mut stage = Vec::new();
            for bi in 0..blocks {
                let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{bi}", si + 1);
                let out = planes * expansion;
                let block = match config.block {
                    ResNetBlock::Basic => Block {
                        conv1: b.conv2d(
                            &format!("{p}.conv1"),
                            planes,
                            inplanes,
                            3,
                            spec(stride, 1),
                        )?,
                        bn1: b.batch_norm(&format!("{p}.bn1"), planes)?,
                        conv2: b.conv2d(&format!("{p}.conv2"), planes, planes, 3, spec(1, 1))?,
                        bn2: b.batch_norm(&format!("{p}.bn2"), planes)?,
                        conv3: None,
                        downsample: None,
                    },
                    ResNetBlock::Bottleneck => Block {
                        conv1: b.conv2d(&format!("{p}.conv1"), planes, inplanes, 1, spec(1, 0))?,
                        bn1: b.batch_norm(&format!("{p}.bn1"), planes)?,
                        conv2: b.conv2d(
                            &format!("{p}.conv2"),
                            planes,
                            planes,
                            3,
                            spec(stride, 1),
                        )?,
                        bn2: b.batch_norm(&format!("{p}.bn2"), planes)?,
                        conv3: Some((
                            b.conv2d(&format!("{p}.conv3"), out, planes, 1, spec(1, 0))?,
                            b.batch_norm(&format!("{p}.bn3"), out)?,
                        )),
                        downsample: None,
                    },
                };
                let downsample = if stride != 1 || inplanes != out {
                    Some((
                        b.conv2d(
                            &format!("{p}.downsample.0"),
                            out,
                            inplanes,
                            1,
                            spec(stride, 0),
                        )?,
                        b.batch_norm(&format!("{p}.downsample.1"), out)?,
                    ))
                } else {
                    None
                };
                stage.push(Block {
                    downsample,
                    ..block
                });
                inplanes = out;
            }
            stages.push(stage);
        }
        // torchvision leaves nn.Linear's default init on fc (weight and bias uniform).
        let fc = b.linear("fc", config.num_classes, inplanes, false)?;
        Ok(ResNet {
            config,
            store: b.store,
            conv1,
            bn1,
            stages,
            fc,
            mode: BlockMode::default(),
        })
    }

    fn block(&self, tape: &mut Tape, blk: &Block, x: Var, training: bool) -> Result<Var> {
        let s = &self.store;
        let fused = self.mode == BlockMode::MemoryEfficient;
        let identity = match &blk.downsample {
            Some((conv, bn)) => {
                let d = conv.forward(s, tape, x, None)?;
                bn.forward(s, tape, d, false, training)?
            }
            None => x,
        };
        let y = blk.conv1.forward(s, tape, x, None)?;
        let (last, bn_last) = match &blk.conv3 {
            None => (
                blk.bn1.relu_conv(s, tape, y, &blk.conv2, fused, training)?,
                &blk.bn2,
            ),
            Some((conv3, bn3)) => {
                let y = blk.bn1.relu_conv(s, tape, y, &blk.conv2, fused, training)?;
                (blk.bn2.relu_conv(s, tape, y, conv3, fused, training)?, bn3)
            }
        };
        if fused {
            bn_last.add_relu(s, tape, last, identity, training)
        } else {
            let bn = bn_last.forward(s, tape, last, false, training)?;
            tape.add(bn, identity, true, &format!("{}+add+relu", bn_last.name))
        }
    }
}

impl Model for ResNet {
    model_fields!(ResNet, "fc.");

    fn forward(&self, tape: &mut Tape, images: Var, training: bool) -> Result<Var> {
        batch_size("resnet", tape, images)?;
        let st = &self.store;
        let x = self.conv1.forward(st, tape, images, None)?;
        let x = self.bn1.forward(st, tape, x, true, training)?;
        let pool = Pool2dSpec {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let mut x = tape.max_pool2d(x, pool, None, "maxpool")?;
        for stage in &self.stages {
            for blk in stage {
                x = self.block(tape, blk, x, training)?;
            }
        }
        let pooled = tape.global_avg_pool(x, "avgpool")?;
        self.fc.forward(st, tape, pooled)
    }
}
