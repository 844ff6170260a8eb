//! Typed errors for everything a launch or an allocation can reject.

use std::fmt;

/// Errors from the device layer and the ops.
#[derive(Debug, Clone)]
pub enum GpuError {
    /// No adapter at all; the message says how to install lavapipe.
    NoAdapter(&'static str),
    /// [`super::DeviceOptions::adapter`] named an adapter that does not exist.
    AdapterNotFound {
        wanted: String,
        available: Vec<String>,
    },
    /// The adapter refused to open a device.
    RequestDevice(String),
    /// A tensor's shape does not fit the op.
    Shape(String),
    /// A buffer larger than the adapter can bind.
    BufferTooLarge {
        tensor: String,
        bytes: u64,
        limit: u64,
    },
    /// A device limit (workgroups per dimension, storage buffers per stage, u32 range).
    Limit(String),
    /// A kernel forced for a pass (`ops::conv2d::force`) cannot run it:
    /// the kernel, and what it needs.
    KernelNotApplicable { kernel: String, reason: String },
    /// A shader failed to compile or a pipeline failed validation.
    Pipeline { name: String, message: String },
    /// An error reported by the device while running work.
    Device(String),
    /// The device is gone (driver reset, GPU removed or hung): nothing on it can be read
    /// back, and every later call fails the same way.
    DeviceLost(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoAdapter(hint) => write!(f, "{hint}"),
            GpuError::AdapterNotFound { wanted, available } => write!(
                f,
                "no adapter name contains {wanted:?}; available: {}",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            GpuError::RequestDevice(m) => write!(f, "could not open the device: {m}"),
            GpuError::Shape(m) => write!(f, "shape error: {m}"),
            GpuError::BufferTooLarge {
                tensor,
                bytes,
                limit,
            } => write!(
                f,
                "tensor {tensor:?} needs {bytes} bytes ({:.1} MiB) but the adapter binds at most \
                 {limit} bytes ({:.1} MiB) per storage buffer; use a smaller batch or image size",
                *bytes as f64 / 1048576.0,
                *limit as f64 / 1048576.0
            ),
            GpuError::Limit(m) => write!(f, "device limit: {m}"),
            GpuError::KernelNotApplicable { kernel, reason } => {
                write!(f, "forced kernel {kernel} cannot run here: {reason}")
            }
            GpuError::Pipeline { name, message } => write!(f, "pipeline {name}: {message}"),
            GpuError::Device(m) => write!(f, "device error: {m}"),
            GpuError::DeviceLost(m) => write!(f, "the device was lost ({m})"),
        }
    }
}

impl std::error::Error for GpuError {}
