//! Weights in safetensors with torchvision's state_dict names: PyTorch weights load
//! directly, and ours load in PyTorch (`model.load_state_dict(safetensors.torch.load_file(p))`).
//!
//! A checkpoint is the same file plus the optimizer state under `optim.` names
//! (`optim.m.<param>`, `optim.v.<param>`, `optim.step`), which PyTorch loaders can filter.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::gpu::{Gpu, GpuError};
use crate::models::{
    DenseNetConfig, ModelConfig, ParamStore, ResNetBlock, ResNetConfig, ResNetV2Config,
};

/// Errors reading, writing or applying a weight file. Messages name the file.
#[derive(Debug)]
pub enum WeightsError {
    Io {
        path: PathBuf,
        message: String,
    },
    /// The file is not valid safetensors: the parser's message.
    Format {
        path: PathBuf,
        message: String,
    },
    /// A tensor of a type other than F32, F64 and I64.
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: Dtype,
    },
    /// A tensor given twice to [`write()`].
    DuplicateTensor {
        path: PathBuf,
        tensor: String,
    },
    /// A tensor the file must hold to describe a model.
    MissingTensor {
        path: PathBuf,
        tensor: String,
    },
    /// A tensor of another rank than the model's (a classifier's weight that is not 2-D):
    /// `expected` names the layout.
    TensorShape {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        expected: &'static str,
    },
    /// Neither a DenseNet, a ResNet nor a pre-activation ResNet state_dict.
    UnknownArchitecture {
        path: PathBuf,
    },
    /// A DenseNet or ResNet state_dict whose first block is missing (`family` names it).
    NoBlocks {
        path: PathBuf,
        family: &'static str,
    },
    /// A DenseNet whose bottleneck width is not a multiple of its growth rate.
    GrowthRate {
        path: PathBuf,
        bottleneck: usize,
        growth_rate: usize,
    },
    /// Names or shapes that do not fit the model: the first few mismatches.
    Mismatch {
        path: PathBuf,
        problems: Vec<TensorMismatch>,
        total: usize,
    },
    Gpu(GpuError),
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Io { path, message } => write!(f, "{}: {message}", path.display()),
            WeightsError::Format { path, message } => {
                write!(
                    f,
                    "{}: not a usable safetensors file: {message}",
                    path.display()
                )
            }
            WeightsError::UnsupportedDtype {
                path,
                tensor,
                dtype,
            } => write!(
                f,
                "{}: not a usable safetensors file: tensor {tensor} has dtype {dtype:?}; \
                 expected F32, F64 or I64",
                path.display()
            ),
            WeightsError::DuplicateTensor { path, tensor } => {
                write!(f, "{}: tensor {tensor} given twice", path.display())
            }
            WeightsError::MissingTensor { path, tensor } => write!(
                f,
                "{}: not a usable safetensors file: missing tensor {tensor:?}",
                path.display()
            ),
            WeightsError::TensorShape {
                path,
                tensor,
                shape,
                expected,
            } => write!(
                f,
                "{}: not a usable safetensors file: {tensor} has shape {shape:?}, expected \
                 {expected}",
                path.display()
            ),
            WeightsError::UnknownArchitecture { path } => write!(
                f,
                "{}: neither features.conv0.weight (DenseNet), conv1.weight (ResNet) nor \
                 stem.conv.weight (pre-activation ResNet): not a torchvision or timm state_dict",
                path.display()
            ),
            WeightsError::NoBlocks { path, family } => write!(
                f,
                "{}: no first block: not a {family} state_dict",
                path.display()
            ),
            WeightsError::GrowthRate {
                path,
                bottleneck,
                growth_rate,
            } => write!(
                f,
                "{}: conv1 out {bottleneck} is not a multiple of growth rate {growth_rate}",
                path.display()
            ),
            WeightsError::Mismatch {
                path,
                problems,
                total,
            } => {
                write!(
                    f,
                    "{} does not fit this model ({total} mismatches",
                    path.display()
                )?;
                if *total > problems.len() {
                    write!(f, ", first {}", problems.len())?;
                }
                write!(f, "):")?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            WeightsError::Gpu(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WeightsError {}

/// One way a file's tensors do not fit a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorMismatch {
    /// The model has `name` (of `shape`); the file does not.
    Missing { name: String, shape: Vec<usize> },
    /// Both have `name`, in other shapes.
    Shape {
        name: String,
        file: Vec<usize>,
        model: Vec<usize>,
    },
    /// The file has `name`; the model does not.
    Unexpected { name: String },
}

impl fmt::Display for TensorMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorMismatch::Missing { name, shape } => write!(f, "missing {name} {shape:?}"),
            TensorMismatch::Shape { name, file, model } => {
                write!(f, "{name}: file has shape {file:?}, model needs {model:?}")
            }
            TensorMismatch::Unexpected { name } => write!(f, "unexpected {name}"),
        }
    }
}

impl From<GpuError> for WeightsError {
    fn from(e: GpuError) -> Self {
        WeightsError::Gpu(e)
    }
}

/// One tensor read from a file, widened to f64 (F32, F64 and I64 are accepted).
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    pub dtype: Dtype,
}

impl HostTensor {
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

/// All tensors of a safetensors file.
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
    /// The header's `__metadata__` (empty when it has none).
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile, WeightsError> {
        let bytes = std::fs::read(path).map_err(|e| WeightsError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                dtype => {
                    return Err(WeightsError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        tensor: name,
                        dtype,
                    })
                }
            };
            tensors.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                    dtype: view.dtype(),
                },
            );
        }
        let metadata = SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default();
        Ok(TensorFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor, WeightsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// The 2-D tensor `name` (a classifier's weight).
    fn matrix(&self, name: &str) -> Result<&HostTensor, WeightsError> {
        let t = self.get(name)?;
        if t.shape.len() != 2 {
            return Err(WeightsError::TensorShape {
                path: self.path.clone(),
                tensor: name.to_string(),
                shape: t.shape.clone(),
                expected: "2-D",
            });
        }
        Ok(t)
    }
}

/// A tensor to write.
pub enum Entry {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

/// Writes tensors to `path` in the safetensors format, crash-safely: a temporary file in
/// the same folder is written and flushed to disk, renamed over `path`, and the folder is
/// flushed too, so a crash at any moment leaves either the old file or the new one.
///
/// The bytes depend only on the tensors and the metadata: tensors are laid out by name,
/// and the header's keys are sorted (the `safetensors` crate writes the metadata map in
/// hash order, so two saves of the same run differed).
pub fn write(
    path: &Path,
    entries: Vec<(String, Entry)>,
    metadata: BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    let io = |e: std::io::Error| WeightsError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut entries: Vec<(String, &'static str, Vec<usize>, Vec<u8>)> = entries
        .into_iter()
        .map(|(name, e)| match e {
            Entry::F32(shape, d) => (name, "F32", shape, bytemuck::cast_slice(&d).to_vec()),
            Entry::I64(shape, d) => {
                let bytes = d.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, "I64", shape, bytes)
            }
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0;
    for (name, dtype, shape, bytes) in &entries {
        let end = offset + bytes.len();
        let info =
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]});
        if header.insert(name.clone(), info).is_some() {
            return Err(WeightsError::DuplicateTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
            });
        }
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // The data starts 8-byte aligned: the header is padded with spaces.
    head.resize(head.len().next_multiple_of(8), b' ');
    let tmp = path.with_extension("safetensors.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        f.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io)?;
        f.write_all(&head).map_err(io)?;
        for (_, _, _, bytes) in &entries {
            f.write_all(bytes).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

impl ParamStore {
    /// The model's state_dict: parameters, running statistics and `num_batches_tracked`.
    pub async fn state_dict(&self, gpu: &Gpu) -> Result<Vec<(String, Entry)>, WeightsError> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((
                p.name.clone(),
                Entry::F32(p.value.shape.clone(), gpu.read(&p.value).await?),
            ));
        }
        for (name, t) in &self.buffers {
            out.push((
                name.clone(),
                Entry::F32(t.shape.clone(), gpu.read(t).await?),
            ));
        }
        for (name, n) in &self.batches_tracked {
            out.push((name.clone(), Entry::I64(vec![], vec![n.get()])));
        }
        Ok(out)
    }

    /// Loads parameters and buffers by state_dict name. File names under
    /// `ignore_prefixes` (e.g. `optim.`, `grad.`) are ignored; anything else that is
    /// missing, unexpected or of the wrong shape is reported (the first 10 problems).
    pub fn load(
        &mut self,
        gpu: &Gpu,
        file: &TensorFile,
        ignore_prefixes: &[&str],
    ) -> Result<(), WeightsError> {
        self.load_except(gpu, file, ignore_prefixes, None)
    }

    /// [`ParamStore::load`], leaving the model's tensors under `keep` (a state_dict
    /// prefix such as `fc.`) as they are and ignoring the file's tensors there: how a
    /// classifier for another class count is kept freshly initialised when fine-tuning.
    pub fn load_except(
        &mut self,
        gpu: &Gpu,
        file: &TensorFile,
        ignore_prefixes: &[&str],
        keep: Option<&str>,
    ) -> Result<(), WeightsError> {
        let kept = |name: &str| keep.is_some_and(|k| name.starts_with(k));
        let mut problems = Vec::new();
        let mut expected = self.expected_tensors();
        expected.retain(|(n, _)| !kept(n));
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        for (name, shape) in &expected {
            match file.tensors.get(name) {
                None => problems.push(TensorMismatch::Missing {
                    name: name.clone(),
                    shape: shape.clone(),
                }),
                Some(t) if t.shape != *shape && !(shape.is_empty() && t.data.len() == 1) => {
                    problems.push(TensorMismatch::Shape {
                        name: name.clone(),
                        file: t.shape.clone(),
                        model: shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for name in file.tensors.keys() {
            if !known.contains(name.as_str())
                && !kept(name)
                && !ignore_prefixes.iter().any(|p| name.starts_with(p))
            {
                problems.push(TensorMismatch::Unexpected { name: name.clone() });
            }
        }
        if !problems.is_empty() {
            let total = problems.len();
            problems.truncate(10);
            return Err(WeightsError::Mismatch {
                path: file.path.clone(),
                problems,
                total,
            });
        }
        for p in self.params.iter().filter(|p| !kept(&p.name)) {
            gpu.write(&p.value, &file.tensors[&p.name].to_f32())?;
        }
        for (name, t) in self.buffers.iter().filter(|(n, _)| !kept(n)) {
            gpu.write(t, &file.tensors[name].to_f32())?;
        }
        for (name, n) in self.batches_tracked.iter().filter(|(n, _)| !kept(n)) {
            n.set(file.tensors[name].data[0] as i64);
        }
        Ok(())
    }
}

/// Infers the architecture from torchvision or timm state_dict names and shapes: a DenseNet
/// (`features.conv0.weight`, `features.denseblock*`), a ResNet (`conv1.weight`,
/// `layer*.*`) or a pre-activation ResNet (`stem.conv.weight`, `stages.*`).
pub fn infer_config(file: &TensorFile) -> Result<ModelConfig, WeightsError> {
    if file.tensors.contains_key("features.conv0.weight") {
        infer_densenet(file).map(ModelConfig::DenseNet)
    } else if file.tensors.contains_key("conv1.weight") {
        infer_resnet(file).map(ModelConfig::ResNet)
    } else if file.tensors.contains_key("stem.conv.weight") {
        infer_resnet_v2(file).map(ModelConfig::ResNetV2)
    } else {
        Err(WeightsError::UnknownArchitecture {
            path: file.path.clone(),
        })
    }
}

fn infer_resnet(file: &TensorFile) -> Result<ResNetConfig, WeightsError> {
    let width = file.get("conv1.weight")?.shape[0];
    let fc = file.matrix("fc.weight")?;
    let family = "torchvision ResNet (layer1.0.conv1.weight)";
    let (block, layers) = residual_stages(file, |s, b| format!("layer{}.{b}", s + 1), family)?;
    Ok(ResNetConfig {
        block,
        layers,
        width,
        num_classes: fc.shape[0],
    })
}

fn infer_resnet_v2(file: &TensorFile) -> Result<ResNetV2Config, WeightsError> {
    let width = file.get("stem.conv.weight")?.shape[0];
    let head = file.get("head.fc.weight")?;
    if head.shape.len() != 4 {
        return Err(WeightsError::TensorShape {
            path: file.path.clone(),
            tensor: "head.fc.weight".into(),
            shape: head.shape.clone(),
            expected: "4-D [classes, C, 1, 1]",
        });
    }
    let family = "timm ResNetV2 (stages.0.blocks.0.conv1.weight)";
    let (block, layers) = residual_stages(file, |s, b| format!("stages.{s}.blocks.{b}"), family)?;
    Ok(ResNetV2Config {
        block,
        layers,
        width,
        num_classes: head.shape[0],
    })
}

/// A residual network's block kind (a `conv3` in the first block: bottlenecks) and blocks
/// per stage, counted from the `conv1` of each block `block_name(stage, block)` names (both
/// from 0); [`WeightsError::NoBlocks`] naming `family` when there is none.
fn residual_stages(
    file: &TensorFile,
    block_name: impl Fn(usize, usize) -> String,
    family: &'static str,
) -> Result<(ResNetBlock, Vec<usize>), WeightsError> {
    let has = |stage, block, tensor| {
        let name = format!("{}.{tensor}.weight", block_name(stage, block));
        file.tensors.contains_key(&name)
    };
    let layers: Vec<usize> = (0..)
        .map(|stage| (0..).take_while(|&b| has(stage, b, "conv1")).count())
        .take_while(|&blocks| blocks > 0)
        .collect();
    if layers.is_empty() {
        return Err(WeightsError::NoBlocks {
            path: file.path.clone(),
            family,
        });
    }
    let block = match has(0, 0, "conv3") {
        true => ResNetBlock::Bottleneck,
        false => ResNetBlock::Basic,
    };
    Ok((block, layers))
}

fn infer_densenet(file: &TensorFile) -> Result<DenseNetConfig, WeightsError> {
    let conv0 = file.get("features.conv0.weight")?;
    let num_init_features = conv0.shape[0];
    let num_classes = file.matrix("classifier.weight")?.shape[0];
    let mut block_config = Vec::new();
    for b in 1.. {
        let mut layers = 0;
        while file.tensors.contains_key(&format!(
            "features.denseblock{b}.denselayer{}.conv1.weight",
            layers + 1
        )) {
            layers += 1;
        }
        if layers == 0 {
            break;
        }
        block_config.push(layers);
    }
    if block_config.is_empty() {
        return Err(WeightsError::NoBlocks {
            path: file.path.clone(),
            family: "DenseNet (features.denseblock1.denselayer1.*)",
        });
    }
    let conv1 = file.get("features.denseblock1.denselayer1.conv1.weight")?;
    let conv2 = file.get("features.denseblock1.denselayer1.conv2.weight")?;
    let growth_rate = conv2.shape[0];
    let inner = conv1.shape[0];
    if growth_rate == 0 || inner % growth_rate != 0 {
        return Err(WeightsError::GrowthRate {
            path: file.path.clone(),
            bottleneck: inner,
            growth_rate,
        });
    }
    Ok(DenseNetConfig {
        growth_rate,
        block_config,
        num_init_features,
        bn_size: inner / growth_rate,
        num_classes,
    })
}
