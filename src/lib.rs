//! # densenet-wgpu
//!
//! DenseNet and ResNet training on any WebGPU adapter — a discrete GPU, or a plain CPU through
//! Mesa's lavapipe — with hand-written WGSL kernels and a small autograd tape.
//!
//! - [`gpu`]: adapter, tensors (with channel-slice views), pipeline cache, launches.
//! - [`ops`]: one module per kernel (forward, backward, f64 CPU reference).
//! - [`tape`]: records ops, replays them backwards, accumulates gradients.
//! - [`models`]: DenseNet and ResNet as torchvision defines them, behind one `Model` trait.
//! - [`optim`]: Adam/AdamW and learning-rate schedules.
//! - [`train`]: one training step, top to bottom; [`run`]: a whole training run (epochs,
//!   checkpoints, resume, evaluation) that a program drives step by step ([`run::Run`]),
//!   reporting typed [`run::events`]; [`budget`]: the device memory a run needs, known
//!   before its first step.
//! - [`weights`]: safetensors with torchvision's names; [`verify`]: PyTorch golden checks.
//! - [`study`]: the DenseNet-vs-ResNet comparison (`train compare`).
//! - [`data`]: image folders, the embedded synthetic dataset, background loading;
//!   [`metrics`], [`plot`], [`progress`]: what a training run reports, as numbers, figures
//!   and the text of progress lines.

//!
//! ## Training from Rust
//!
//! A small DenseNet on the embedded dataset of procedural images, for two epochs; the run
//! writes its folder (checkpoint and best weights) and reports what happens, each epoch's
//! metrics included, as events (the `train` binary draws metrics.csv and curves.png from
//! them). [`run::fit`] and the other calls that wait for the device are async: in a
//! browser nothing blocks, and a web page awaits them; a native program blocks on them at
//! its edge, here with `pollster` (natively they poll the device until it is done):
//!
//! ```
//! use std::sync::Arc;
//! use densenet_wgpu::data::{split, synthetic::Synthetic, Dataset};
//! use densenet_wgpu::run::{events::RunEvent, fit, RunSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = Arc::new(Synthetic::new(96, 16, 123)); // 96 images of 16x16, 6 classes
//! let (train, val) = split(data.len(), 0.2, 123)?;
//! let out = std::env::temp_dir().join("densenet-wgpu-doc-run");
//! let mut spec = RunSpec::new(data, (train, val), "densenet-tiny", &out)?;
//! spec.epochs = 2;
//! let mut report = |event: &RunEvent| {
//!     if let RunEvent::EpochDone(report) = event {
//!         println!("{}", report.metrics.summary_line());
//!     }
//! };
//! let history = pollster::block_on(fit(&spec, &mut report))?;
//! assert_eq!(history.len(), 2);
//! assert!(out.join("checkpoint.safetensors").exists());
//! # Ok(())
//! # }
//! ```
//!
//! [`run::Run`] drives the same run one step at a time.
//!
//! ## Fine-tuning on an image folder, then predicting
//!
//! Weights in torchvision's format (a file a run wrote, or one exported from torchvision;
//! see [`weights`]) start a run on your own image folder, one sub-folder per class. A
//! different number of classes gets a new classifier; `freeze_features` trains only that:
//!
//! ```
//! use std::sync::Arc;
//! use densenet_wgpu::data::folder::{load_image, ImageFolder};
//! use densenet_wgpu::data::{split, Dataset};
//! use densenet_wgpu::run::{self, events::Silent, fit, RunSpec};
//! use densenet_wgpu::{train::evaluate, Gpu};
//! # use densenet_wgpu::data::synthetic::Synthetic;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = std::env::temp_dir().join("densenet-wgpu-doc-finetune");
//! # let _ = std::fs::remove_dir_all(&tmp);
//! # // The weights to start from: one epoch on 96 embedded images of 6 classes.
//! # let mut base = RunSpec::new(Arc::new(Synthetic::new(96, 16, 1)), split(96, 0.2, 1)?,
//! #     "densenet-tiny", tmp.join("base"))?;
//! # base.epochs = 1;
//! # pollster::block_on(fit(&base, &mut Silent))?;
//! # // A folder of 3 classes, photos/<class>/<image>.png.
//! # let photos = tmp.join("photos");
//! # Synthetic::new(60, 16, 2).write_folder(&photos, 3, 10)?;
//! # let (weights, out) = (tmp.join("base/best.safetensors"), tmp.join("tuned"));
//! let (folder, skipped) = ImageFolder::open(&photos, 16)?; // 16x16 images
//! assert!(skipped.is_empty(), "files that are not images: {skipped:?}");
//! // Inputs normalised as the weights were trained on them.
//! let folder = folder.with_normalization(run::weights_normalization(&weights)?);
//! let (train, val) = split(folder.len(), 0.2, 123)?;
//! let mut spec = RunSpec::new(Arc::new(folder), (train, val), "densenet-tiny", &out)?;
//! spec.init = Some(weights);
//! spec.freeze_features = true;
//! spec.epochs = 2;
//! pollster::block_on(fit(&spec, &mut Silent))?;
//!
//! // One photo, classified with the run's best weights.
//! let gpu = Gpu::new()?;
//! let (model, info) = run::load_model(&gpu, &out.join("best.safetensors"))?;
//! let image = load_image(&photos.join("vertical_stripes/1.png"), 16, &info.normalization)?;
//! let result = pollster::block_on(evaluate(&gpu, model.as_ref(), &image, &[0], 16))?;
//! let probabilities = result.probabilities;
//! let classes = info.classes.unwrap_or_default();
//! assert_eq!((classes.len(), probabilities.len()), (3, 3));
//! let (best, p) = probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
//! println!("{}: {:.0} %", classes[best], p * 100.0);
//! # Ok(())
//! # }
//! ```
//!
//! ## Inference only
//!
//! A weights file and an image: the architecture comes from the file's tensor names and
//! shapes, the class names and image size from its metadata when it has them.
//!
//! ```
//! use densenet_wgpu::data::folder::load_image;
//! use densenet_wgpu::{run::load_model, train::evaluate, Gpu};
//! # use std::sync::Arc;
//! # use densenet_wgpu::data::{split, synthetic::Synthetic};
//! # use densenet_wgpu::run::{events::Silent, fit, RunSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = std::env::temp_dir().join("densenet-wgpu-doc-inference");
//! # let _ = std::fs::remove_dir_all(&tmp);
//! # let data = Synthetic::new(96, 16, 3);
//! # let mut spec = RunSpec::new(Arc::new(data.clone()), split(96, 0.2, 3)?, "densenet-tiny", &tmp)?;
//! # spec.epochs = 1;
//! # pollster::block_on(fit(&spec, &mut Silent))?;
//! # let (weights, photo) = (tmp.join("best.safetensors"), tmp.join("photo.png"));
//! # data.image(4).0.save(&photo)?;
//! let gpu = Gpu::new()?;
//! let (model, info) = load_model(&gpu, &weights)?;
//! let size = info.image_size.unwrap_or(224);
//! let image = load_image(&photo, size, &info.normalization)?;
//! let result = pollster::block_on(evaluate(&gpu, model.as_ref(), &image, &[0], size))?;
//! let classes = info.classes.unwrap_or_default();
//! println!("{}", classes[result.predictions[0]]);
//! assert_eq!(result.probabilities.len(), model.num_classes());
//! # Ok(())
//! # }
//! ```

pub mod budget;
pub mod collective;
pub mod data;
pub mod dist;
pub mod gpu;
pub mod measure;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod run;
pub mod study;
pub mod tape;
pub mod train;
#[cfg(not(target_arch = "wasm32"))]
pub mod verify;
pub mod weights;

pub use gpu::{DeviceOptions, Gpu, GpuError, Tensor};
