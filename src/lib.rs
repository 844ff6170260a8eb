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

pub use gpu::{Gpu, GpuError, Tensor};
