//! The convolution's shaders, one constant per family of kernels. [`super::plan`] maps each
//! kernel to its shader and entry point; the launchers bind them.

use crate::gpu::Shader;

/// The register-tiled kernels (`shaders/conv2d/`: common, one file per pass, layout) with
/// the plain forms of their workgroup-uniform loads.
pub const SHADER: Shader = shader!(
    "conv2d" = [
        "conv2d/common",
        "conv2d/forward",
        "conv2d/backward_data",
        "conv2d/backward_weight",
        "conv2d/layout",
        "conv2d/uniform_loads"
    ]
);
/// The same kernels plus the subgroup variants of the fast paths (adapters with subgroups of at
/// least 8 invocations, see [`Encoder::subgroups`](crate::gpu::Encoder::subgroups)).
pub const SUBGROUP_SHADER: Shader = shader!(
    "conv2d_subgroup" = [
        "conv2d/common",
        "conv2d/forward",
        "conv2d/backward_data",
        "conv2d/backward_weight",
        "conv2d/layout",
        "conv2d/subgroup"
    ]
);
/// The implicit-GEMM kernels, with workgroup-memory tiles (discrete GPUs).
pub const GEMM_SHADER: Shader = shader!("conv2d_gemm" = ["conv2d/gemm"]);
/// Winograd F(2x2, 3x3): input and weight transforms, the batched product, the output
/// transform.
pub const WINOGRAD_SHADER: Shader = shader!("conv2d_winograd" = ["conv2d/winograd"]);
