//! ReLU: `y = max(x, 0)`; backward `d_x += d_y * [x > 0]`.

use super::{groups, ViewParams};
use crate::gpu::{Arg, Encoder, Gpu, GpuError, Launch, Result, Shader, Tensor};
use crate::tape::{output_grad, Backward, Tape, Var};

pub const SHADER: Shader = shader!("relu");
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    x: ViewParams,
    y: ViewParams,
    d_x: ViewParams,
    numel: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

fn params(op: &str, x: &Tensor, y: &Tensor, d_x: &Tensor) -> Result<Params> {
    crate::gpu::expect_shape(op, "d_x", &d_x.shape, &x.shape)?;
    if x.shape != y.shape {
        return Err(GpuError::Shape(format!(
            "{op}: {} has shape {:?} but {} has {:?}",
            x.label(),
            x.shape,
            y.label(),
            y.shape
        )));
    }
    Ok(Params {
        x: ViewParams::of(x),
        y: ViewParams::of(y),
        d_x: ViewParams::of(d_x),
        numel: crate::gpu::to_u32(op, "numel", x.numel())?,
        _pad: [0; 3],
    })
}

/// [`super::vectorise`] on this op's uniform.
fn vectorise(p: &mut Params, tensors: &[&Tensor]) -> &'static str {
    super::vectorise(&mut [&mut p.x, &mut p.y, &mut p.d_x], &mut p.numel, tensors)
}

/// `y = max(x, 0)` (overwrites `y`; `x` and `y` may be views of one shape).
pub fn forward(enc: &mut Encoder, y: &Tensor, x: &Tensor) -> Result<()> {
    let mut p = params("relu forward", x, y, x)?;
    let entry = format!("forward{}", vectorise(&mut p, &[x, y]));
    enc.launch(Launch {
        shader: &SHADER,
        entry: &entry,
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Write(y),
        ],
        workgroups: Gpu::grid_1d(groups(p.numel as usize, WG)),
    })
}

/// `d_x += d_y * [x > 0]`.
pub fn backward(enc: &mut Encoder, d_x: &Tensor, x: &Tensor, d_y: &Tensor) -> Result<()> {
    let mut p = params("relu backward", x, d_y, d_x)?;
    let entry = format!("backward{}", vectorise(&mut p, &[x, d_y, d_x]));
    enc.launch(Launch {
        shader: &SHADER,
        entry: &entry,
        overrides: &[("WG", WG as f64)],
        args: &[
            Arg::Uniform(bytemuck::bytes_of(&p)),
            Arg::Read(x),
            Arg::Read(d_y),
            Arg::Write(d_x),
        ],
        workgroups: Gpu::grid_1d(groups(p.numel as usize, WG)),
    })
}

/// f64 CPU reference.
pub mod reference {
    pub fn forward(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| v.max(0.0)).collect()
    }
    /// Returns `d_x` for a zero-initialised accumulator.
    pub fn backward(x: &[f64], d_y: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(d_y)
            .map(|(&v, &g)| if v > 0.0 { g } else { 0.0 })
            .collect()
    }
}

// Tape entry.

impl Tape<'_> {
    pub fn relu(&mut self, x: Var, name: &str) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let y = self.output(None, &shape, name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        forward(self.enc(), &yt, &xt)?;
        self.probe_relu(name, |g| {
            Ok(g.download(&xt)?.into_iter().map(f64::from).collect())
        })?;
        self.mark(y, &[x]);
        self.record(ReluOp { y, x })?;
        Ok(y)
    }
}

struct ReluOp {
    y: Var,
    x: Var,
}

impl Backward for ReluOp {
    fn name(&self) -> &'static str {
        "relu"
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.y, self.x]
    }
    fn value_reads(&self) -> Vec<Var> {
        vec![self.x]
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Option<Tensor>) -> Result<()> {
        let d_y = output_grad(d_y, "relu")?;
        if let Some(d_x) = tape.grad_if(self.x)? {
            let xt = tape.value(self.x)?.clone();
            backward(tape.enc(), &d_x, &xt, &d_y)?;
        }
        Ok(())
    }
}
