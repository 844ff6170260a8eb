//! The kernels. One op = one `shaders/<op>.wgsl` (forward and backward entry points side
//! by side) + one module here that owns its uniform, its launchers and its f64 CPU
//! reference. Tests live in `tests/kernels/`.
//!
//! Conventions shared by every op:
//! - launchers take an [`Encoder`](crate::gpu::Encoder) and only *record* work;
//! - outputs are listed first, then inputs, then hyper-parameters;
//! - forward entry points overwrite their outputs; backward entry points **accumulate**
//!   (`d_input += …`), because a DenseNet feature map feeds many later layers;
//! - shapes are checked here and rejected with [`GpuError::Shape`](crate::gpu::GpuError).

pub use crate::gpu::groups;
use crate::gpu::{to_u32, Result, Tensor};

/// Builds a [`Shader`](crate::gpu::Shader) from `shaders/<name>.wgsl` with the common
/// helpers (`shaders/common.wgsl`) prepended. `shader!("name" = ["a", "b"])` names a
/// module made of `shaders/a.wgsl` followed by `shaders/b.wgsl` (an op whose helpers come
/// in variants, e.g. with and without subgroup operations).
macro_rules! shader {
    ($name:literal) => {
        shader!($name = [$name])
    };
    ($name:literal = [$($file:literal),+]) => {
        $crate::gpu::Shader {
            name: $name,
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                $(
                    "\n",
                    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $file, ".wgsl")),
                )+
            ),
        }
    };
}

pub mod adam;
pub mod add;
pub mod avg_pool2d;
pub mod batch_norm;
pub mod concat;
pub mod conv2d;
pub mod cross_entropy;
pub mod finite;
pub mod global_avg_pool;
pub mod linear;
pub mod max_pool2d;
pub mod relu;

/// The WGSL `View` struct: where a (possibly strided) tensor's elements live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ViewParams {
    pub offset: u32,
    pub batch_stride: u32,
    pub item: u32,
    pub _pad: u32,
}

impl ViewParams {
    pub fn of(t: &Tensor) -> ViewParams {
        ViewParams {
            offset: t.offset as u32,
            batch_stride: t.batch_stride as u32,
            item: t.item_numel().max(1) as u32,
            _pad: 0,
        }
    }
}

/// [`Gpu::grid_1d`](crate::gpu::Gpu::grid_1d) for `total` workgroups, except that zero
/// stays zero: the launch then records nothing.
pub fn grid_1d_or_none(total: u32) -> [u32; 3] {
    if total == 0 {
        [0; 3]
    } else {
        crate::gpu::Gpu::grid_1d(total)
    }
}

/// Workgroups for `per_plane` invocations in each of `planes` planes, folded by
/// [`grid_1d_or_none`]; returns `(workgroups per plane, grid)`.
pub(crate) fn plane_grid(
    op: &str,
    per_plane: usize,
    planes: usize,
    wg: u32,
) -> Result<(u32, [u32; 3])> {
    let gx = groups(per_plane, wg);
    let total = to_u32(op, "workgroups", gx as usize * planes)?;
    Ok((gx, grid_1d_or_none(total)))
}

/// For element-wise ops: when every tensor's offset, batch stride and item size are
/// multiples of 4, rewrites `views` and `numel` in vec4 units and returns the entry-point
/// suffix of the vec4 variants (`"_v4"`); else leaves them and returns `""`.
pub fn vectorise(
    views: &mut [&mut ViewParams],
    numel: &mut u32,
    tensors: &[&Tensor],
) -> &'static str {
    let aligned = tensors
        .iter()
        .all(|t| t.offset % 4 == 0 && t.batch_stride % 4 == 0 && t.item_numel() % 4 == 0);
    if !aligned {
        return "";
    }
    for v in views {
        v.offset /= 4;
        v.batch_stride /= 4;
        v.item = (v.item / 4).max(1);
    }
    *numel /= 4;
    "_v4"
}
