//! Typed errors for everything a launch or an allocation can reject. Variants hold values
//! (the op, the tensor, its shape, the limit) and [`fmt::Display`] words them; the only
//! text a variant carries is what the driver or the shader compiler said.

use std::fmt;

/// Errors from the device layer and the ops.
#[derive(Debug, Clone)]
pub enum GpuError {
    /// No adapter at all (the message says how to install lavapipe).
    NoAdapter,
    /// [`super::DeviceOptions::adapter`] named an adapter that does not exist.
    AdapterNotFound {
        wanted: String,
        available: Vec<String>,
    },
    /// The adapter refused to open a device: its name and the driver's message.
    RequestDevice { adapter: String, message: String },
    /// A tensor, a shape or a parameter does not fit the op (boxed: it is the largest
    /// variant, and every `Result` of the crate carries its size).
    Shape(Box<ShapeError>),
    /// A buffer larger than the adapter can bind.
    BufferTooLarge {
        tensor: String,
        bytes: u64,
        limit: u64,
    },
    /// A launch needs more than the device allows.
    Limit(LimitError),
    /// A kernel forced for a pass (`ops::conv2d::force`) cannot run it.
    KernelNotApplicable(Box<ForcedKernelError>),
    /// A shader failed to compile or a pipeline failed validation: the compiler's message.
    Pipeline { name: String, message: String },
    /// The tape was used out of order.
    Tape(TapeError),
    /// A feature this build cannot run: it needs a native (not a wasm32) build.
    NeedsNative(NativeFeature),
    /// A dry run (memory planning) reached a wait on the device, which it never submits to.
    DryRunWaited,
    /// An error reported by the device: what the crate was doing and the device's message.
    Device { during: DeviceWork, message: String },
    /// A read-back's staging buffer was not mapped although its copy had finished.
    ReadBackNotMapped,
    /// The device is gone (driver reset, GPU removed or hung): nothing on it can be read
    /// back, and every later call fails the same way. The driver's reason.
    DeviceLost(String),
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// What the crate was doing when the device reported an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceWork {
    /// Running submitted work (a validation error or running out of memory, reported
    /// through the device's error callback).
    Running,
    /// Waiting for submitted work to finish.
    Waiting,
    /// Mapping a read-back's staging buffer.
    Mapping,
    /// Reading a mapped staging buffer.
    Reading,
}

/// A tensor, shape or parameter that an op rejects, and the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    /// The op or call that rejected it ("conv2d_forward", "channel slice", a layer's name).
    pub op: String,
    pub problem: ShapeProblem,
}

/// What is wrong. `tensor` is the argument as the op names it ("x", "weight", "d_y").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeProblem {
    /// The op needs exactly the shape `expected`.
    Expected {
        tensor: String,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
    /// The op needs the layout `layout`, such as "(N, C, H, W)".
    Layout {
        tensor: String,
        shape: Vec<usize>,
        layout: &'static str,
    },
    /// The op needs a contiguous view: row-major, no gaps (a channel slice is not).
    NotContiguous { tensor: String, shape: Vec<usize> },
    /// The op needs a whole buffer: a contiguous view at offset 0.
    NotWhole { tensor: String, shape: Vec<usize> },
    /// Holds no value where the op needs at least one (a row, a class, a value per channel).
    Empty { tensor: String, shape: Vec<usize> },
    /// `tensor` and `other` disagree in `dim`.
    Mismatch {
        tensor: String,
        shape: Vec<usize>,
        dim: &'static str,
        other: String,
        other_shape: Vec<usize>,
    },
    /// The channels of `parts` add up to `total`, but `tensor` has `channels`.
    ChannelSum {
        parts: String,
        total: usize,
        tensor: String,
        channels: usize,
    },
    /// `values` values were given for a tensor of shape `shape`.
    ValueCount {
        tensor: String,
        values: usize,
        shape: Vec<usize>,
    },
    /// A label at `position` in the batch that is not below `classes`.
    Label {
        label: usize,
        position: usize,
        classes: usize,
    },
    /// The range `[start, end)` of `tensor`'s `dim` (of size `size`) runs past its end.
    OutOfRange {
        tensor: String,
        dim: &'static str,
        start: usize,
        end: usize,
        size: usize,
    },
    /// `tensor` shares its buffer (`buffer`) with `other`, which the same dispatch binds.
    Aliased {
        tensor: String,
        other: String,
        buffer: String,
    },
    /// A `kernel` window does not fit `tensor`'s `input` plane padded by `padding`.
    WindowTooLarge {
        tensor: String,
        input: [usize; 2],
        kernel: [usize; 2],
        padding: usize,
    },
    /// A parameter outside its range (a stride of 0, padding over half the kernel).
    Parameter {
        name: &'static str,
        value: usize,
        bound: Bound,
    },
}

/// The range a parameter must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    AtLeast(usize),
    AtMost(usize),
}

/// A launch that needs more than the device allows, and the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    pub op: String,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// A grid with more than [`super::MAX_WORKGROUPS_PER_DIM`] workgroups in one dimension.
    Workgroups { grid: [usize; 3] },
    /// `count` workgroups of one kind (`what`: "row blocks", "channel tiles") in one
    /// dimension, over [`super::MAX_WORKGROUPS_PER_DIM`].
    GridDimension { what: &'static str, count: usize },
    /// More storage buffers than the adapter binds per shader stage.
    StorageBuffers { count: usize, max: usize },
    /// A size that a uniform holds as a `u32`: `quantity`'s `value`.
    U32 { quantity: String, value: usize },
    /// A window larger than the kernel handles (max pool stores its argmax in a byte).
    KernelSize { size: usize, max: usize },
    /// A stride larger than the kernel handles.
    Stride { size: usize, max: usize },
}

/// A forced convolution kernel, the pass it cannot run and what it would need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedKernelError {
    pub kernel: &'static str,
    /// The pass ("conv2d_forward", …) and its input's shape (N, C, H, W).
    pub op: String,
    pub x: [usize; 4],
    pub needs: KernelNeeds,
}

/// What a forced convolution kernel needs that the pass does not offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelNeeds {
    /// It does not compute this pass at all (the pass, as `ConvPass` names it).
    Pass(&'static str),
    /// A 1x1 kernel, stride 1, padding 0, and views whose offsets and batch strides are
    /// multiples of 4.
    Pointwise,
    /// A 3x3 kernel, stride 1, padding 1, W >= 4, and either H*W % 4 == 0 with views
    /// aligned to 4 or no BN+ReLU prologue.
    Same3x3Aligned,
    /// A 3x3 kernel, stride 1 and padding 1.
    Same3x3,
    /// OH*OW % 4 == 0 and d_y aligned to 4.
    OutputAligned,
}

/// A misuse of the autograd tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeError {
    /// A value read after backward released it.
    Released { value: String },
    /// backward on a tape that records nothing (inference).
    NotRecording,
    /// backward a second time: the first released the values.
    BackwardTwice,
    /// backward needs a loss of one element.
    LossNotScalar { value: String, shape: Vec<usize> },
    /// backward started from the output of `op`, which is not a loss.
    NotALoss { op: String },
    /// The output of `op` is a loss, and backward must start from it.
    LossInsideGraph { op: String },
    /// `op` was recorded without the values its backward needs (max pool's argmax).
    NotSaved { op: String, value: &'static str },
    /// Batch norm `layer` runs in inference mode, which has no backward, but a gradient
    /// must flow through it (to its `input`, or to a residual added into its output).
    InferenceBatchNorm { layer: String, to: GradientTo },
}

/// Where a gradient must flow through an inference-mode batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientTo {
    InputOrParameters,
    Residual,
}

/// Features a wasm32 build does not offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeFeature {
    /// Per-op device times (timestamp read-backs inside the step).
    Profiling,
    /// Synchronised batch norm (statistics read back in the middle of the forward pass).
    SyncBatchNorm,
}

impl GpuError {
    /// A [`GpuError::Shape`] of `op`.
    pub fn shape(op: &str, problem: ShapeProblem) -> GpuError {
        GpuError::Shape(Box::new(ShapeError {
            op: op.to_string(),
            problem,
        }))
    }

    /// A [`GpuError::Limit`] of `op`.
    pub fn limit(op: &str, limit: Limit) -> GpuError {
        GpuError::Limit(LimitError {
            op: op.to_string(),
            limit,
        })
    }
}

const NO_ADAPTER: &str = "no WebGPU adapter found. On a machine without a GPU install Mesa's \
software Vulkan driver (lavapipe): on Debian 12, run `sudo scripts/setup-lavapipe.sh` from \
the repository (Mesa 25 from bookworm-backports; `vulkaninfo --summary` then lists \
`llvmpipe`).";

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoAdapter => f.write_str(NO_ADAPTER),
            GpuError::AdapterNotFound { wanted, available } => write!(
                f,
                "no adapter name contains {wanted:?}; available: {}",
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            GpuError::RequestDevice { adapter, message } => {
                write!(f, "could not open a device on {adapter}: {message}")
            }
            GpuError::Shape(e) => write!(f, "shape error: {e}"),
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
            GpuError::Limit(e) => write!(f, "device limit: {e}"),
            GpuError::KernelNotApplicable(e) => write!(
                f,
                "forced kernel {} cannot run here: {} of x {:?}: {}",
                e.kernel, e.op, e.x, e.needs
            ),
            GpuError::Pipeline { name, message } => write!(f, "pipeline {name}: {message}"),
            GpuError::Tape(e) => write!(f, "tape: {e}"),
            GpuError::NeedsNative(feature) => write!(f, "{feature} needs a native build"),
            GpuError::DryRunWaited => f.write_str("a dry run waited for the device"),
            GpuError::Device { during, message } => {
                let during = match during {
                    DeviceWork::Running => "",
                    DeviceWork::Waiting => " while waiting for submitted work",
                    DeviceWork::Mapping => " while mapping a read-back",
                    DeviceWork::Reading => " while reading a read-back",
                };
                write!(f, "device error{during}: {message}")
            }
            GpuError::ReadBackNotMapped => f.write_str(
                "device error: a read-back's staging buffer was not mapped after its copy finished",
            ),
            GpuError::DeviceLost(m) => write!(f, "the device was lost ({m})"),
        }
    }
}

impl std::error::Error for GpuError {}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ShapeProblem::*;
        let op = &self.op;
        match &self.problem {
            Expected {
                tensor,
                shape,
                expected,
            } => write!(
                f,
                "{op}: {tensor} has shape {shape:?}, expected {expected:?}"
            ),
            Layout {
                tensor,
                shape,
                layout,
            } => write!(f, "{op}: {tensor} must be {layout}, got shape {shape:?}"),
            NotContiguous { tensor, shape } => {
                write!(
                    f,
                    "{op}: {tensor} {shape:?} must be contiguous (a whole view, not a slice)"
                )
            }
            NotWhole { tensor, shape } => {
                write!(
                    f,
                    "{op}: {tensor} {shape:?} must be a whole contiguous tensor"
                )
            }
            Empty { tensor, shape } => write!(
                f,
                "{op}: {tensor} is empty (shape {shape:?}); the op needs at least one value in \
                 each row, class or channel"
            ),
            Mismatch {
                tensor,
                shape,
                dim,
                other,
                other_shape,
            } => write!(
                f,
                "{op}: {tensor} {shape:?} and {other} {other_shape:?} differ in {dim}"
            ),
            ChannelSum {
                parts,
                total,
                tensor,
                channels,
            } => write!(
                f,
                "{op}: {parts} channels sum to {total} but {tensor} has {channels} channels"
            ),
            ValueCount {
                tensor,
                values,
                shape,
            } => write!(
                f,
                "{op}: {values} values for {tensor} of shape {shape:?} ({} elements)",
                shape.iter().product::<usize>()
            ),
            Label {
                label,
                position,
                classes,
            } => write!(
                f,
                "{op}: label {label} at position {position} is out of range for {classes} classes"
            ),
            OutOfRange {
                tensor,
                dim,
                start,
                end,
                size,
            } => write!(
                f,
                "{op}: {dim} [{start}, {end}) of {tensor}, which has {size}"
            ),
            Aliased {
                tensor,
                other,
                buffer,
            } => write!(
                f,
                "{op}: {tensor} shares its buffer {buffer:?} with {other}"
            ),
            WindowTooLarge {
                tensor,
                input: [h, w],
                kernel: [kh, kw],
                padding,
            } => write!(
                f,
                "{op}: the {kh}x{kw} window is larger than {tensor}'s {h}x{w} plane with \
                 padding {padding} (the output would be empty)"
            ),
            Parameter { name, value, bound } => {
                write!(f, "{op}: {name} is {value}, ")?;
                match bound {
                    Bound::AtLeast(b) => write!(f, "must be at least {b}"),
                    Bound::AtMost(b) => write!(f, "must be at most {b}"),
                }
            }
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = &self.op;
        match &self.limit {
            Limit::Workgroups { grid } => write!(
                f,
                "{op}: grid {grid:?} exceeds {} workgroups per dimension",
                super::MAX_WORKGROUPS_PER_DIM
            ),
            Limit::GridDimension { what, count } => write!(
                f,
                "{op}: {count} {what} in one grid dimension, over {} workgroups",
                super::MAX_WORKGROUPS_PER_DIM
            ),
            Limit::StorageBuffers { count, max } => {
                write!(f, "{op}: {count} storage buffers, the adapter allows {max}")
            }
            Limit::U32 { quantity, value } => write!(f, "{op}: {quantity} = {value} exceeds u32"),
            Limit::KernelSize { size, max } => write!(f, "{op}: kernel {size} exceeds {max}"),
            Limit::Stride { size, max } => write!(f, "{op}: stride {size} exceeds {max}"),
        }
    }
}

impl fmt::Display for KernelNeeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelNeeds::Pass(pass) => write!(f, "it does not serve the {pass} pass"),
            KernelNeeds::Pointwise => f.write_str(
                "it needs a 1x1 kernel, stride 1, padding 0 and views with offsets and batch \
                 strides that are multiples of 4",
            ),
            KernelNeeds::Same3x3Aligned => f.write_str(
                "it needs a 3x3 kernel, stride 1, padding 1, W >= 4, and either H*W % 4 == 0 \
                 with views aligned to 4, or no BN+ReLU prologue",
            ),
            KernelNeeds::Same3x3 => f.write_str("it needs a 3x3 kernel, stride 1 and padding 1"),
            KernelNeeds::OutputAligned => {
                f.write_str("it needs OH*OW % 4 == 0 and d_y aligned to 4")
            }
        }
    }
}

impl fmt::Display for TapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapeError::Released { value } => {
                write!(f, "the value of {value} was released by backward")
            }
            TapeError::NotRecording => f.write_str("backward on an inference tape"),
            TapeError::BackwardTwice => f.write_str(
                "backward called twice; values were released after the first call — record a \
                 new tape",
            ),
            TapeError::LossNotScalar { value, shape } => {
                write!(
                    f,
                    "backward needs a scalar loss, {value} has shape {shape:?}"
                )
            }
            TapeError::NotALoss { op } => write!(f, "the output of {op} cannot be the loss"),
            TapeError::LossInsideGraph { op } => {
                write!(f, "{op}'s output is a loss; backward must start from it")
            }
            TapeError::NotSaved { op, value } => write!(f, "{op}: its {value} were not saved"),
            TapeError::InferenceBatchNorm { layer, to } => write!(
                f,
                "{layer}: inference-mode batch norm has no backward, but {}",
                match to {
                    GradientTo::Residual => "the shortcut needs a gradient",
                    GradientTo::InputOrParameters =>
                        "its input or parameters need a gradient (freeze everything before \
                         it, or train it)",
                }
            ),
        }
    }
}

impl fmt::Display for NativeFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NativeFeature::Profiling => "per-op profiling",
            NativeFeature::SyncBatchNorm => "synchronised batch norm",
        })
    }
}
