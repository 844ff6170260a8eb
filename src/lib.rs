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
//! writes its folder (metrics.csv, curves.png, checkpoint and best weights) and reports
//! what happens as events:
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
//! let history = fit(&spec, &mut |event: &RunEvent| {
//!     if let RunEvent::EpochDone(report) = event {
//!         println!("{}", report.metrics.summary_line());
//!     }
//! })?;
//! assert_eq!(history.len(), 2);
//! assert!(out.join("checkpoint.safetensors").exists());
//! # Ok(())
//! # }
//! ```
//!
//! [`run::Run`] drives the same run one step at a time.

pub mod budget;
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
pub mod verify;
pub mod weights;

pub use gpu::{DeviceOptions, Gpu, GpuError, Tensor};
