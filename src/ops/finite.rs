//! Non-finite check: how many elements of a tensor are NaN or ±infinity, written into one
//! slot of a flags tensor, so a training step can test all its gradients with one
//! read-back before the optimizer touches the weights.

use crate::gpu::{
    check_distinct, expect_contiguous, to_u32, Encoder, GpuError, Kernel, Result, Shader,
    ShapeProblem, Tensor,
};

pub const SHADER: Shader = shader!("finite");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x_off: u32,
    numel: u32,
    slot: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// `flags[slot] = count of non-finite elements of x` (x contiguous; overwrites the slot).
pub fn count_nonfinite(enc: &mut Encoder, flags: &Tensor, slot: usize, x: &Tensor) -> Result<()> {
    let op = "count_nonfinite";
    expect_contiguous(op, x.label(), x)?;
    expect_contiguous(op, "flags", flags)?;
    if slot >= flags.numel() {
        let problem = ShapeProblem::OutOfRange {
            tensor: "flags".into(),
            dim: "slot",
            start: slot,
            end: slot + 1,
            size: flags.numel(),
        };
        return Err(GpuError::shape(op, problem));
    }
    check_distinct(op, &[("flags", flags)], &[("x", x)])?;
    let p = Params {
        x_off: to_u32(op, "offset", x.offset)?,
        numel: to_u32(op, "numel", x.numel())?,
        slot: to_u32(op, "slot", flags.offset + slot)?,
        _pad: 0,
    };
    // One workgroup (WG invocations) walks the whole tensor.
    let kernel = Kernel::new(&SHADER, "count_nonfinite", WG);
    enc.launch_threads(kernel, &p, &[x], &[flags], WG as usize)
}

/// f64 CPU reference.
pub mod reference {
    pub fn count_nonfinite(x: &[f32]) -> usize {
        x.iter().filter(|v| !v.is_finite()).count()
    }
}
