//! Which kernel runs a convolution pass: one planner for the three passes, a typed
//! [`ConvKernel`] that owns its entry points (subgroup variants included), and forcing for
//! tests and benchmarks (an API guard, [`force`], or `DENSENET_WGPU_CONV=<kernel>[,...]`).
//!
//! The choice follows docs/kernels.md (conv2d, Dispatch); [`plan`] is a pure function of
//! the shapes, of whether the views allow vec4 loads and of the adapter class, and its unit
//! test holds that table.

use std::cell::{Cell, RefCell};
use std::fmt;

use super::shaders::{GEMM_SHADER, SHADER, SUBGROUP_SHADER, WINOGRAD_SHADER};
use super::Conv2dSpec;
use crate::gpu::{ForcedKernelError, GpuError, KernelNeeds, Result, Shader};

/// Environment variable read by [`kernels_from_env`]: kernels to force, comma-separated
/// (e.g. `DENSENET_WGPU_CONV=forward_tiled,backward_weight_partial`). The crate reads it
/// only when a program calls that function (the `train` binary and the benches do).
pub const FORCE_ENV: &str = "DENSENET_WGPU_CONV";

/// A convolution pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    Forward,
    BackwardData,
    BackwardWeight,
}

impl ConvPass {
    /// The pass as the error messages and docs name it.
    pub fn name(self) -> &'static str {
        match self {
            ConvPass::Forward => "forward",
            ConvPass::BackwardData => "backward-data",
            ConvPass::BackwardWeight => "backward-weight",
        }
    }
}

/// The kernels of the convolution passes (docs/kernels.md, conv2d).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    /// Forward and backward-data of 1x1 / stride 1 / padding 0 convolutions in the vec4
    /// layout (odd planes run on zero-padded copies).
    Conv1x1,
    /// Forward and backward-data of 3x3 / stride 1 / padding 1 convolutions in the vec4
    /// layout (odd planes, without a BN+ReLU prologue, run on zero-padded copies).
    Conv3x3,
    /// Any forward.
    ForwardTiled,
    /// Any backward-data (gather form).
    BackwardData,
    /// Weight gradient of 1x1 convolutions in the vec4 layout.
    WeightDot,
    /// Weight gradient of 3x3 convolutions in the vec4 layout.
    WeightRows,
    /// Weight gradient when d_y has the vec4 layout (the stem), on a pixel-major d_y.
    WeightStrided,
    /// Any weight gradient.
    WeightPartial,
    /// Any forward, as an implicit GEMM in workgroup memory (shaped for discrete GPUs).
    GemmForward,
    /// Any backward-data, as an implicit GEMM in workgroup memory.
    GemmBackwardData,
    /// Any weight gradient, as an implicit GEMM in workgroup memory, split along the
    /// pixels into chunks summed in a fixed order.
    GemmWeight,
    /// Forward and backward-data of 3x3 / stride 1 / padding 1 convolutions by Winograd
    /// F(2x2, 3x3), any views and plane sizes.
    Winograd,
}

impl ConvKernel {
    pub const ALL: [ConvKernel; 12] = [
        ConvKernel::Conv1x1,
        ConvKernel::Conv3x3,
        ConvKernel::ForwardTiled,
        ConvKernel::BackwardData,
        ConvKernel::WeightDot,
        ConvKernel::WeightRows,
        ConvKernel::WeightStrided,
        ConvKernel::WeightPartial,
        ConvKernel::GemmForward,
        ConvKernel::GemmBackwardData,
        ConvKernel::GemmWeight,
        ConvKernel::Winograd,
    ];

    /// The kernel's name (`DENSENET_WGPU_CONV` takes it): its entry point in
    /// `shaders/conv2d/`, or for `winograd` the prefix of its four launches.
    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Conv1x1 => "conv1x1",
            ConvKernel::Conv3x3 => "conv3x3",
            ConvKernel::ForwardTiled => "forward_tiled",
            ConvKernel::BackwardData => "backward_data",
            ConvKernel::WeightDot => "backward_weight_dot",
            ConvKernel::WeightRows => "backward_weight_rows",
            ConvKernel::WeightStrided => "backward_weight_strided",
            ConvKernel::WeightPartial => "backward_weight_partial",
            ConvKernel::GemmForward => "gemm_forward",
            ConvKernel::GemmBackwardData => "gemm_backward_data",
            ConvKernel::GemmWeight => "gemm_backward_weight",
            ConvKernel::Winograd => "winograd",
        }
    }

    pub fn from_name(name: &str) -> Option<ConvKernel> {
        ConvKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the kernel serves `pass`.
    pub fn serves(self, pass: ConvPass) -> bool {
        use ConvKernel::*;
        match pass {
            ConvPass::Forward => {
                matches!(
                    self,
                    Conv1x1 | Conv3x3 | ForwardTiled | GemmForward | Winograd
                )
            }
            ConvPass::BackwardData => {
                matches!(
                    self,
                    Conv1x1 | Conv3x3 | BackwardData | GemmBackwardData | Winograd
                )
            }
            ConvPass::BackwardWeight => {
                matches!(
                    self,
                    WeightDot | WeightRows | WeightStrided | WeightPartial | GemmWeight
                )
            }
        }
    }

    /// The shader and entry point that run it: the subgroup variant (`*_sg`) where the
    /// kernel has one and `subgroups` allows it (for `winograd`, its last launch).
    pub fn entry(self, subgroups: bool) -> (&'static Shader, &'static str) {
        use ConvKernel::*;
        match (subgroups, self) {
            (true, Conv1x1) => (&SUBGROUP_SHADER, "conv1x1_sg"),
            (true, Conv3x3) => (&SUBGROUP_SHADER, "conv3x3_sg"),
            (true, ForwardTiled) => (&SUBGROUP_SHADER, "forward_tiled_sg"),
            (true, WeightDot) => (&SUBGROUP_SHADER, "backward_weight_dot_sg"),
            (true, WeightRows) => (&SUBGROUP_SHADER, "backward_weight_rows_sg"),
            (true, WeightStrided) => (&SUBGROUP_SHADER, "backward_weight_strided_sg"),
            (_, GemmForward | GemmBackwardData | GemmWeight) => (&GEMM_SHADER, self.name()),
            (_, Winograd) => (&WINOGRAD_SHADER, "winograd_output"),
            _ => (&SHADER, self.name()),
        }
    }
}

impl fmt::Display for ConvKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of adapter a pass runs on. The kernels rank differently on each: a CPU adapter
/// (lavapipe) gains nothing from workgroup memory and moves ~6 GB/s against ~90 GFLOP/s of
/// FMAs; a GPU has fast workgroup memory and far more bandwidth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    Cpu,
    Gpu,
}

impl AdapterClass {
    pub fn of(info: &wgpu::AdapterInfo) -> AdapterClass {
        if info.device_type == wgpu::DeviceType::Cpu {
            AdapterClass::Cpu
        } else {
            AdapterClass::Gpu
        }
    }
}

/// What the planner sees of one convolution pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input (N, C, H, W) and weight (Cout, Cin, KH, KW).
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub spec: Conv2dSpec,
    /// The pass's two activation views (read and written; for the weight gradient x and
    /// d_y) have offsets and batch strides that are multiples of 4.
    pub views_aligned: bool,
    /// The output-side view (y, d_y) alone has them.
    pub out_aligned: bool,
    /// A BN+ReLU prologue is applied while reading x.
    pub prologue: bool,
    pub adapter: AdapterClass,
}

impl ConvShape {
    fn out_hw(&self) -> (usize, usize) {
        let (s, p) = (self.spec.stride, self.spec.padding);
        (
            (self.h + 2 * p - self.kh) / s + 1,
            (self.w + 2 * p - self.kw) / s + 1,
        )
    }

    /// Stride 1 with "same" padding for a square kernel of size `k`.
    fn same(&self, k: usize) -> bool {
        self.spec.stride == 1 && self.kh == k && self.kw == k && k == 2 * self.spec.padding + 1
    }

    /// 4 consecutive flat pixels of a channel are one aligned vec4 inside one image.
    fn vec4_layout(&self) -> bool {
        let hw = self.h * self.w;
        hw % 4 == 0 && (self.w >= 4 || self.kh == 1) && self.views_aligned
    }

    /// Same-size 1x1 / 3x3 convolutions whose planes break the vec4 layout run on
    /// zero-padded copies (`padded_plane`): then the fast kernels apply.
    pub fn padded(&self) -> bool {
        let hw = self.h * self.w;
        if !(self.same(1) || self.same(3)) || hw % 4 == 0 || self.n * hw * self.cin * self.cout == 0
        {
            return false;
        }
        self.kh == 1 || (!self.prologue && self.w >= 4)
    }
}

/// What `kernel` needs to run `pass` on `shape` that it lacks, or `None` when it can.
pub fn not_applicable(
    kernel: ConvKernel,
    pass: ConvPass,
    shape: &ConvShape,
) -> Option<KernelNeeds> {
    use ConvKernel::*;
    if !kernel.serves(pass) {
        return Some(KernelNeeds::Pass(pass.name()));
    }
    // Backward-data reads d_y: a prologue on x does not concern it.
    let shape = &ConvShape {
        prologue: shape.prologue && pass != ConvPass::BackwardData,
        ..*shape
    };
    let fast = |k: usize| shape.same(k) && (shape.padded() || shape.vec4_layout());
    match kernel {
        Conv1x1 | WeightDot if !fast(1) => Some(KernelNeeds::Pointwise),
        Conv3x3 | WeightRows if !fast(3) => Some(KernelNeeds::Same3x3Aligned),
        Winograd if !shape.same(3) => Some(KernelNeeds::Same3x3),
        WeightStrided => {
            let (oh, ow) = shape.out_hw();
            ((oh * ow) % 4 != 0 || !shape.out_aligned).then_some(KernelNeeds::OutputAligned)
        }
        _ => None,
    }
}

/// Whether Winograd beats the direct 3x3 kernels on a CPU adapter (docs/kernels.md,
/// Winograd): on planes of at most 64 pixels with at least 32 channels on both sides (7x7:
/// 1.2-1.8x faster; with 12 output channels, DenseNet-BC's, the step got slower), and on
/// planes of at most 256 pixels with at least 128 (14x14, 256 -> 256: 1.8x). On larger
/// planes its transformed input (4x the input) makes it memory-bound: 0.5-0.8x at 28x28
/// and 56x56 with 32 output channels.
fn winograd_pays(shape: &ConvShape) -> bool {
    let hw = shape.h * shape.w;
    let channels = shape.cin.min(shape.cout);
    shape.adapter == AdapterClass::Cpu
        && shape.same(3)
        && ((hw <= 64 && channels >= 32) || (hw <= 256 && channels >= 128))
}

/// The kernel that runs `pass` on `shape` unless one is forced (docs/kernels.md).
pub fn plan(pass: ConvPass, shape: &ConvShape) -> ConvKernel {
    use ConvKernel::*;
    let fast_pass = if pass == ConvPass::BackwardData {
        pass
    } else {
        ConvPass::Forward
    };
    let fast1 = not_applicable(Conv1x1, fast_pass, shape).is_none();
    let fast3 = not_applicable(Conv3x3, fast_pass, shape).is_none();
    let winograd = winograd_pays(shape);
    match pass {
        ConvPass::Forward if fast1 => Conv1x1,
        ConvPass::Forward if winograd => Winograd,
        ConvPass::Forward if fast3 => Conv3x3,
        ConvPass::Forward => ForwardTiled,
        ConvPass::BackwardData if fast1 => Conv1x1,
        ConvPass::BackwardData if winograd => Winograd,
        ConvPass::BackwardData if fast3 => Conv3x3,
        ConvPass::BackwardData => BackwardData,
        ConvPass::BackwardWeight if fast1 => WeightDot,
        ConvPass::BackwardWeight if fast3 => WeightRows,
        ConvPass::BackwardWeight if not_applicable(WeightStrided, pass, shape).is_none() => {
            WeightStrided
        }
        ConvPass::BackwardWeight => WeightPartial,
    }
}

thread_local! {
    /// Kernels forced on this thread ([`force`]).
    static FORCED: RefCell<Vec<ConvKernel>> = const { RefCell::new(Vec::new()) };
    /// The kernel of the last forward, backward-data and backward-weight pass on this thread.
    static LAST: Cell<[Option<ConvKernel>; 3]> = const { Cell::new([None; 3]) };
}

/// Forces `kernels` on this thread until the guard is dropped: each pass one of them
/// serves runs it (or fails with [`GpuError::KernelNotApplicable`]); the planner picks
/// the kernel of every other pass.
pub fn force(kernels: &[ConvKernel]) -> Forced {
    let previous = FORCED.with(|f| f.replace(kernels.to_vec()));
    Forced { previous }
}

/// Restores the forcing in place before [`force`] when dropped.
pub struct Forced {
    previous: Vec<ConvKernel>,
}

impl Drop for Forced {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        FORCED.with(|f| *f.borrow_mut() = previous);
    }
}

/// Parses a [`FORCE_ENV`] value.
pub fn parse_forced(value: &str) -> std::result::Result<Vec<ConvKernel>, UnknownKernel> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| ConvKernel::from_name(name).ok_or_else(|| UnknownKernel(name.into())))
        .collect()
}

/// A name in [`FORCE_ENV`] that is not a [`ConvKernel::name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKernel(pub String);

impl fmt::Display for UnknownKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&str> = ConvKernel::ALL.iter().map(|k| k.name()).collect();
        write!(
            f,
            "{FORCE_ENV}: unknown conv2d kernel {:?}; the kernels are {}",
            self.0,
            all.join(", ")
        )
    }
}

impl std::error::Error for UnknownKernel {}

/// The kernels [`FORCE_ENV`] names (none when it is unset), for a program that offers it:
/// hold `force(&kernels_from_env()?)` on the thread that launches the convolutions.
pub fn kernels_from_env() -> std::result::Result<Vec<ConvKernel>, UnknownKernel> {
    parse_forced(&std::env::var(FORCE_ENV).unwrap_or_default())
}

/// The kernel for `pass`: the forced one serving it (an error when it cannot run here),
/// else [`plan`]'s. Recorded for [`last_kernel`].
pub fn choose(op: &str, pass: ConvPass, shape: &ConvShape) -> Result<ConvKernel> {
    let forced = FORCED.with(|f| f.borrow().iter().copied().find(|k| k.serves(pass)));
    let kernel = match forced {
        Some(k) => {
            if let Some(needs) = not_applicable(k, pass, shape) {
                return Err(GpuError::KernelNotApplicable(Box::new(ForcedKernelError {
                    kernel: k.name(),
                    op: op.into(),
                    x: [shape.n, shape.cin, shape.h, shape.w],
                    needs,
                })));
            }
            k
        }
        None => plan(pass, shape),
    };
    LAST.with(|l| {
        let mut last = l.get();
        last[pass as usize] = Some(kernel);
        l.set(last);
    });
    Ok(kernel)
}

/// The kernel that ran the last `pass` launched on this thread.
pub fn last_kernel(pass: ConvPass) -> Option<ConvKernel> {
    LAST.with(Cell::get)[pass as usize]
}
