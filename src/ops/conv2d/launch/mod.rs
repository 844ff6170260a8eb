//! The launchers of the convolution kernels, one file per kernel family as in
//! `shaders/conv2d/`, each with its own uniform:
//! - `tiled`: the register-tiled forward and backward-data kernels
//!   (`{common,forward,backward_data}.wgsl`, [`DataParams`]), shaped for lavapipe: no
//!   workgroup memory, FMAs per load instruction maximised;
//! - `weight`: their weight-gradient kernels and the chunk reduction
//!   (`backward_weight.wgsl`, [`WeightParams`]);
//! - `layout`: their data movement (`layout.wgsl`): weight packing, plane padding, the
//!   pixel-major copy of d_y;
//! - `gemm`: the implicit-GEMM kernels (`gemm.wgsl`), shaped for discrete GPUs:
//!   workgroup-memory tiles;
//! - `winograd`: Winograd F(2x2, 3x3) (`winograd.wgsl`).
//!
//! This file holds what a pass hands to any family ([`DataPass`], [`WeightPass`], the
//! geometry and the weight's packing) and picks the family of a data pass. Shapes, views and
//! aliasing are checked by the pass functions in `conv2d/mod.rs` before these run.

mod gemm;
mod layout;
mod tiled;
mod weight;
mod winograd;

pub use gemm::GemmTile;
pub(super) use gemm::{gemm_backward_weight, gemm_blocks, gemm_weight_chunks};
pub(super) use layout::{pad_planes, repad};
pub(super) use tiled::DataParams;
pub(super) use weight::{partial_sums_scratch, reduce_chunks, weight_partial_sums, WeightParams};

use super::{BnReluPrologue, Conv2dSpec, ConvKernel, Geom};
use crate::gpu::{Encoder, Result, Tensor};
use crate::ops::ViewParams;

/// The geometry of a convolution as the register-tiled kernels' uniforms carry it, after
/// their two views (the shaders' fields n .. pad).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct ConvDims {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
}

impl ConvDims {
    pub fn of(g: &Geom, spec: Conv2dSpec) -> ConvDims {
        ConvDims {
            n: g.n as u32,
            cin: g.cin as u32,
            h: g.h as u32,
            w: g.w as u32,
            cout: g.cout as u32,
            oh: g.oh as u32,
            ow: g.ow as u32,
            kh: g.kh as u32,
            kw: g.kw as u32,
            stride: spec.stride as u32,
            pad: spec.padding as u32,
        }
    }
}

/// What the uniforms of the register-tiled and GEMM kernels start with: the view a pass
/// reads, the view it writes and the geometry (the shaders' fields inp .. pad).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct ConvHead {
    pub inp: ViewParams,
    pub out: ViewParams,
    pub dims: ConvDims,
}

impl ConvHead {
    pub fn of(g: &Geom, spec: Conv2dSpec, inp: &Tensor, out: &Tensor) -> ConvHead {
        ConvHead {
            inp: ViewParams::of(inp),
            out: ViewParams::of(out),
            dims: ConvDims::of(g, spec),
        }
    }
}

/// Where a pass finds the weights of its output and summed channels inside the OIHW
/// weight, and whether it rotates the taps (backward_data's conv_transpose).
#[derive(Clone, Copy, Debug)]
pub(super) struct Packing {
    pub out_c: usize,
    pub red_c: usize,
    pub w_off: u32,
    pub out_stride: usize,
    pub red_stride: usize,
    pub flip: bool,
}

impl Packing {
    pub fn forward(g: &Geom, w_off: u32) -> Packing {
        let kk = g.kh * g.kw;
        Packing {
            out_c: g.cout,
            red_c: g.cin,
            w_off,
            out_stride: g.cin * kk,
            red_stride: kk,
            flip: false,
        }
    }
    pub fn backward_data(g: &Geom, w_off: u32) -> Packing {
        let kk = g.kh * g.kw;
        Packing {
            out_c: g.cin,
            red_c: g.cout,
            w_off,
            out_stride: kk,
            red_stride: g.cin * kk,
            flip: true,
        }
    }
}

/// One forward or backward-data pass, checked by the pass functions in mod.rs: `p.accumulate
/// == 0` overwrites `written` (y), else adds into it (d_x); `read` is x or d_y.
#[derive(Clone, Copy)]
pub(super) struct DataPass<'a> {
    pub op: &'a str,
    pub g: &'a Geom,
    pub spec: Conv2dSpec,
    pub p: DataParams,
    pub packing: Packing,
    pub weight: &'a Tensor,
    pub read: &'a Tensor,
    pub written: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub prologue: Option<BnReluPrologue<'a>>,
}

/// One weight-gradient pass, checked by `backward_weight` in mod.rs: the sums over pixels
/// of `d_y` against `x` (read through `prologue` when given).
#[derive(Clone, Copy)]
pub(super) struct WeightPass<'a> {
    pub op: &'a str,
    pub g: &'a Geom,
    pub spec: Conv2dSpec,
    pub d_y: &'a Tensor,
    pub x: &'a Tensor,
    pub prologue: Option<BnReluPrologue<'a>>,
}

/// The prologue's scale and shift, as a kernel binds them; without a prologue `unused`
/// stands in for both (the kernel does not read them then).
fn prologue_bindings<'a>(
    prologue: Option<BnReluPrologue<'a>>,
    unused: &'a Tensor,
) -> (&'a Tensor, &'a Tensor) {
    prologue.map_or((unused, unused), |pr| (pr.scale, pr.shift))
}

/// What the kernels on a packed weight (the blocked and GEMM data kernels) read, in
/// binding order: `read`, the packed weight, the bias and the prologue's scale and shift.
/// The packed weight stands in for a bias or prologue the pass does not have.
fn packed_weight_reads<'a>(
    read: &'a Tensor,
    packed: &'a Tensor,
    bias: Option<&'a Tensor>,
    prologue: Option<BnReluPrologue<'a>>,
) -> [&'a Tensor; 5] {
    let (scale, shift) = prologue_bindings(prologue, packed);
    [read, packed, bias.unwrap_or(packed), scale, shift]
}

/// Runs `pass` on `kernel`.
pub(super) fn data_pass(enc: &mut Encoder, kernel: ConvKernel, pass: &DataPass) -> Result<()> {
    match kernel {
        ConvKernel::GemmForward | ConvKernel::GemmBackwardData => gemm::data_pass(enc, pass),
        ConvKernel::Winograd => winograd::data_pass(enc, pass),
        _ => tiled::data_pass(enc, kernel, pass),
    }
}
