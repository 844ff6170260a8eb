//! # densenet-wgpu
//!
//! DenseNet training on any WebGPU adapter — a discrete GPU, or a plain CPU through
//! Mesa's lavapipe — with hand-written WGSL kernels and a small autograd tape.
//!
//! - [`gpu`]: adapter, tensors, pipeline cache, launches.
//! - [`ops`]: one module per kernel (forward, backward, f64 CPU reference).

pub mod data;
pub mod gpu;
pub mod metrics;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod rng;

pub use gpu::{Gpu, GpuError, Tensor};
