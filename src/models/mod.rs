//! Models built from the ops on a [`Tape`]: DenseNet and ResNet as torchvision defines
//! them, behind one [`Model`] trait, made from shared [`layers`] and named in one preset
//! registry ([`PRESETS`]).

/// The [`Model`] methods that every model implements the same way, from its `config`,
/// `store` and `mode` fields: the [`ModelConfig`] variant that wraps its config, and the
/// state_dict prefix of its classifier.
macro_rules! model_fields {
    ($variant:ident, $classifier:literal) => {
        fn config(&self) -> ModelConfig {
            ModelConfig::$variant(self.config.clone())
        }
        fn store(&self) -> &ParamStore {
            &self.store
        }
        fn store_mut(&mut self) -> &mut ParamStore {
            &mut self.store
        }
        fn mode(&self) -> BlockMode {
            self.mode
        }
        fn set_mode(&mut self, mode: BlockMode) {
            self.mode = mode;
        }
        fn classifier_prefix(&self) -> &'static str {
            $classifier
        }
    };
}

pub mod densenet;
pub mod layers;
pub mod resnet;
pub mod resnet_v2;

use std::fmt;

pub use densenet::{DenseNet, DenseNetConfig};
pub use layers::ParamStore;
pub use resnet::{ResNet, ResNetBlock, ResNetConfig};
pub use resnet_v2::{ResNetV2, ResNetV2Config};

use crate::data::Normalization;
use crate::gpu::{Bound, Gpu, GpuError, Result, ShapeProblem};
use crate::tape::{Param, Tape, Var};

/// How activations that only feed a convolution are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BlockMode {
    /// A BN (+ReLU) output that only feeds a convolution is never stored: the convolution
    /// applies it while reading its input and backward recomputes it. DenseNet also keeps
    /// each dense block in one buffer that every layer writes its new channels into.
    #[default]
    MemoryEfficient,
    /// Every intermediate is materialised, like torchvision's default modules.
    Plain,
}

/// A classification network on a tape.
pub trait Model {
    /// The architecture (also what weight files record and what is inferred from them).
    fn config(&self) -> ModelConfig;
    fn store(&self) -> &ParamStore;
    fn store_mut(&mut self) -> &mut ParamStore;
    /// Logits (N, classes) for images (N, 3, H, W). `training`: batch statistics (and
    /// running-statistic updates) rather than running statistics.
    fn forward(&self, tape: &mut Tape, images: Var, training: bool) -> Result<Var>;
    fn mode(&self) -> BlockMode;
    fn set_mode(&mut self, mode: BlockMode);
    /// The state_dict prefix of the classifier (`classifier.` or `fc.`), the part replaced
    /// when fine-tuning on another class count and kept trainable by
    /// [`Model::freeze_features`].
    fn classifier_prefix(&self) -> &'static str;

    fn num_classes(&self) -> usize {
        self.config().num_classes()
    }
    fn params(&self) -> &[Param] {
        &self.store().params
    }
    fn num_parameters(&self) -> usize {
        self.store().num_parameters()
    }
    /// Freezes every parameter outside the classifier: no gradient flows into them, the
    /// optimizer leaves them alone, and their BNs normalise with running statistics.
    fn freeze_features(&mut self) {
        let head = self.classifier_prefix();
        for p in &mut self.store_mut().params {
            p.trainable = p.name.starts_with(head);
        }
    }
}

/// The N of a batch of images, after checking that it is (N, 3, H, W); `net` names the model
/// in the error.
fn batch_size(net: &str, tape: &Tape, images: Var) -> Result<usize> {
    let s = tape.shape(images);
    if s.len() != 4 || s[1] != 3 {
        let problem = ShapeProblem::Layout {
            tensor: "images".into(),
            shape: s.to_vec(),
            layout: "(N, 3, H, W)",
        };
        return Err(GpuError::shape(net, problem));
    }
    Ok(s[0])
}

/// Checks a residual network's configuration: stages of at least one block, a width and a
/// class count of at least 1.
fn check_residual_config(net: &str, layers: &[usize], width: usize, classes: usize) -> Result<()> {
    let shortest = layers.iter().copied().min().unwrap_or(0);
    check_config(
        net,
        &[
            ("stages", layers.len()),
            ("blocks in a stage", shortest),
            ("width", width),
            ("num_classes", classes),
        ],
    )
}

/// Checks that each of a configuration's `sizes` (name, value) is at least 1.
fn check_config(net: &str, sizes: &[(&'static str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, value)| *value == 0) {
        Some(&(name, value)) => {
            let bound = Bound::AtLeast(1);
            Err(GpuError::shape(
                net,
                ShapeProblem::Parameter { name, value, bound },
            ))
        }
        None => Ok(()),
    }
}

/// The architecture of a model: one variant per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelConfig {
    DenseNet(DenseNetConfig),
    ResNet(ResNetConfig),
    /// The pre-activation ResNet of timm.
    ResNetV2(ResNetV2Config),
}

impl ModelConfig {
    /// A model with this architecture, initialised as torchvision does, seeded.
    pub fn build(&self, gpu: &Gpu, seed: u64) -> Result<Box<dyn Model>> {
        Ok(match self {
            ModelConfig::DenseNet(c) => Box::new(DenseNet::new(gpu, c.clone(), seed)?),
            ModelConfig::ResNet(c) => Box::new(ResNet::new(gpu, c.clone(), seed)?),
            ModelConfig::ResNetV2(c) => Box::new(ResNetV2::new(gpu, c.clone(), seed)?),
        })
    }

    pub fn num_classes(&self) -> usize {
        match self {
            ModelConfig::DenseNet(c) => c.num_classes,
            ModelConfig::ResNet(c) => c.num_classes,
            ModelConfig::ResNetV2(c) => c.num_classes,
        }
    }

    /// The input normalisation of the family: ImageNet's for torchvision's DenseNet and
    /// ResNet, mean = std = 0.5 for timm's pre-activation ResNet (its configs').
    pub fn normalization(&self) -> Normalization {
        match self {
            ModelConfig::DenseNet(_) | ModelConfig::ResNet(_) => Normalization::IMAGENET,
            ModelConfig::ResNetV2(_) => Normalization::HALF,
        }
    }

    /// The same architecture with another class count.
    pub fn with_num_classes(&self, num_classes: usize) -> ModelConfig {
        let mut c = self.clone();
        match &mut c {
            ModelConfig::DenseNet(d) => d.num_classes = num_classes,
            ModelConfig::ResNet(r) => r.num_classes = num_classes,
            ModelConfig::ResNetV2(r) => r.num_classes = num_classes,
        }
        c
    }
}

impl fmt::Display for ModelConfig {
    /// The torchvision (or timm) call that builds the same architecture.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelConfig::DenseNet(c) => write!(
                f,
                "torchvision.models.DenseNet(growth_rate={}, block_config={:?}, num_init_features={}, bn_size={}, num_classes={})",
                c.growth_rate, c.block_config, c.num_init_features, c.bn_size, c.num_classes
            ),
            ModelConfig::ResNet(c) => {
                let block = match c.block {
                    ResNetBlock::Basic => "BasicBlock",
                    ResNetBlock::Bottleneck => "Bottleneck",
                };
                write!(
                    f,
                    "torchvision.models.ResNet(torchvision.models.resnet.{block}, {:?}, num_classes={})",
                    c.layers, c.num_classes
                )?;
                if c.width != 64 {
                    write!(f, " with stage widths {:?}", c.stage_widths())?;
                }
                Ok(())
            }
            ModelConfig::ResNetV2(c) => f.write_str(&c.timm_constructor()),
        }
    }
}

/// A named architecture: what `--model NAME` builds.
pub struct Preset {
    pub name: &'static str,
    pub config: fn(usize) -> ModelConfig,
    /// One line for `--help` and errors.
    pub about: &'static str,
}

/// Every preset: DenseNets, ResNets, then pre-activation ResNets.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "densenet121",
        config: |k| ModelConfig::DenseNet(DenseNetConfig::densenet121(k)),
        about: "torchvision densenet121 (k=32, blocks 6-12-24-16)",
    },
    Preset {
        name: "densenet169",
        config: |k| ModelConfig::DenseNet(DenseNetConfig::densenet169(k)),
        about: "torchvision densenet169 (k=32, blocks 6-12-32-32)",
    },
    Preset {
        name: "densenet201",
        config: |k| ModelConfig::DenseNet(DenseNetConfig::densenet201(k)),
        about: "torchvision densenet201 (k=32, blocks 6-12-48-32)",
    },
    Preset {
        name: "densenet-bc",
        config: |k| ModelConfig::DenseNet(DenseNetConfig::densenet_bc(k)),
        about: "DenseNet-BC for small images (k=12, blocks 6-6-6)",
    },
    Preset {
        name: "densenet-tiny",
        config: |k| ModelConfig::DenseNet(DenseNetConfig::densenet_tiny(k)),
        about: "a very small DenseNet-BC (k=12, blocks 3-3-3)",
    },
    Preset {
        name: "resnet18",
        config: |k| ModelConfig::ResNet(ResNetConfig::resnet18(k)),
        about: "torchvision resnet18 (BasicBlock, 2-2-2-2)",
    },
    Preset {
        name: "resnet34",
        config: |k| ModelConfig::ResNet(ResNetConfig::resnet34(k)),
        about: "torchvision resnet34 (BasicBlock, 3-4-6-3)",
    },
    Preset {
        name: "resnet50",
        config: |k| ModelConfig::ResNet(ResNetConfig::resnet50(k)),
        about: "torchvision resnet50 (Bottleneck, 3-4-6-3)",
    },
    Preset {
        name: "resnet101",
        config: |k| ModelConfig::ResNet(ResNetConfig::resnet101(k)),
        about: "torchvision resnet101 (Bottleneck, 3-4-23-3)",
    },
    Preset {
        name: "resnet152",
        config: |k| ModelConfig::ResNet(ResNetConfig::resnet152(k)),
        about: "torchvision resnet152 (Bottleneck, 3-8-36-3)",
    },
    Preset {
        name: "resnetv2_18",
        config: |k| ModelConfig::ResNetV2(ResNetConfig::resnet18(k).into()),
        about: "timm resnetv2_18 (pre-activation basic blocks, 2-2-2-2)",
    },
    Preset {
        name: "resnetv2_34",
        config: |k| ModelConfig::ResNetV2(ResNetConfig::resnet34(k).into()),
        about: "timm resnetv2_34 (pre-activation basic blocks, 3-4-6-3)",
    },
    Preset {
        name: "resnetv2_50",
        config: |k| ModelConfig::ResNetV2(ResNetConfig::resnet50(k).into()),
        about: "timm resnetv2_50 (pre-activation bottlenecks, 3-4-6-3)",
    },
    Preset {
        name: "resnetv2_101",
        config: |k| ModelConfig::ResNetV2(ResNetConfig::resnet101(k).into()),
        about: "timm resnetv2_101 (pre-activation bottlenecks, 3-4-23-3)",
    },
];

/// The preset called `name`, for `num_classes` classes.
pub fn preset(name: &str, num_classes: usize) -> Option<ModelConfig> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.config)(num_classes))
}

/// The preset names, comma-separated (for messages).
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}
