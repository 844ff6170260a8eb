//! # densenet-wgpu
//!
//! DenseNet training on any WebGPU adapter — a discrete GPU, or a plain CPU through
//! Mesa's lavapipe — with hand-written WGSL kernels and a small autograd tape.
//!
//! - [`gpu`]: adapter, tensors, pipeline cache, launches.
//! - [`ops`]: one module per kernel (forward, backward, f64 CPU reference).

pub mod gpu;
pub mod ops;
pub mod rng;

pub use gpu::{Gpu, GpuError, Tensor};
