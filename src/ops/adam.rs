//! Adam / AdamW: one update of one parameter tensor with PyTorch's semantics and f32
//! operation order (`torch.optim.Adam`, `torch.optim.AdamW`).
//!
//! The step-dependent scalars (bias corrections, step size, AdamW's decay factor) are
//! computed on the host in f64, like PyTorch's Python floats, and travel in the uniform, so
//! `lr` may change every step without a new pipeline.

use crate::gpu::{
    check_distinct, expect_contiguous, to_u32, Bound, Encoder, GpuError, Kernel, Result, Shader,
    ShapeProblem, Tensor,
};

pub const SHADER: Shader = shader!("adam");
const WG: u32 = 256;

const FLAG_DECOUPLED: u32 = 1;
const FLAG_SMALL_WEIGHT: u32 = 2;
const FLAG_WEIGHT_DECAY: u32 = 4;

/// Hyper-parameters. `decoupled = false` is Adam with L2 weight decay added to the gradient;
/// `decoupled = true` is AdamW (`p *= 1 - lr * weight_decay` before the update).
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
}

impl Default for AdamConfig {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    numel: u32,
    flags: u32,
    param_off: u32,
    m_off: u32,
    v_off: u32,
    grad_off: u32,
    lerp_w: f32,
    lerp_one_minus_w: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

/// The f64 a Python user would have typed for this f32 (`0.9f32` -> `0.9`): the shortest
/// decimal that round-trips. PyTorch computes its scalars from such Python floats, so this
/// reproduces them exactly (e.g. `1 - 0.9**1` rather than `1 - 0.89999998`).
pub fn widen(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

/// The step's scalars, computed as PyTorch computes them (f64, then rounded to f32).
struct Scalars {
    lerp_w: f32,
    lerp_one_minus_w: f32,
    one_minus_beta2: f32,
    decay: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
}

fn scalars(cfg: &AdamConfig, step: u32) -> Scalars {
    let (lr, b1, b2, wd) = (
        widen(cfg.lr),
        widen(cfg.beta1),
        widen(cfg.beta2),
        widen(cfg.weight_decay),
    );
    let t = step as f64;
    let bias_correction1 = 1.0 - b1.powf(t);
    let bias_correction2 = 1.0 - b2.powf(t);
    let lerp_w = (1.0 - b1) as f32;
    Scalars {
        lerp_w,
        // lerp computes `1 - weight` in the tensor's type.
        lerp_one_minus_w: 1.0f32 - lerp_w,
        one_minus_beta2: (1.0 - b2) as f32,
        decay: (1.0 - lr * wd) as f32,
        neg_step_size: (-(lr / bias_correction1)) as f32,
        bc2_sqrt: bias_correction2.sqrt() as f32,
    }
}

/// One update of `param` with its moments `m`, `v` from `grad`. `step` is 1-based (the
/// number of updates including this one); all four tensors hold the same number of elements
/// (any shape, contiguous) in four different buffers.
pub fn step(
    enc: &mut Encoder,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    cfg: AdamConfig,
    step: u32,
) -> Result<()> {
    let op = "adam step";
    if step == 0 {
        let problem = ShapeProblem::Parameter {
            name: "step",
            value: 0,
            bound: Bound::AtLeast(1),
        };
        return Err(GpuError::shape(op, problem));
    }
    let numel = param.numel();
    let named = [(param, "param"), (m, "m"), (v, "v"), (grad, "grad")];
    for (t, name) in named {
        if t.numel() != numel {
            let problem = ShapeProblem::Mismatch {
                tensor: format!("{name} ({})", t.label()),
                shape: t.shape.clone(),
                dim: "element count",
                other: "param".into(),
                other_shape: param.shape.clone(),
            };
            return Err(GpuError::shape(op, problem));
        }
        expect_contiguous(op, &format!("{name} ({})", t.label()), t)?;
        to_u32(op, name, t.offset + numel)?;
    }
    check_distinct(
        op,
        &[("param", param), ("m", m), ("v", v)],
        &[("grad", grad)],
    )?;
    let s = scalars(&cfg, step);
    let mut flags = 0;
    if cfg.decoupled {
        flags |= FLAG_DECOUPLED;
    }
    if s.lerp_w.abs() < 0.5 {
        flags |= FLAG_SMALL_WEIGHT;
    }
    if cfg.weight_decay != 0.0 {
        flags |= FLAG_WEIGHT_DECAY;
    }
    let v4 = numel % 4 == 0 && named.iter().all(|(t, _)| t.offset % 4 == 0);
    let q = if v4 { 4 } else { 1 };
    let p = Params {
        numel: (numel / q) as u32,
        flags,
        param_off: (param.offset / q) as u32,
        m_off: (m.offset / q) as u32,
        v_off: (v.offset / q) as u32,
        grad_off: (grad.offset / q) as u32,
        lerp_w: s.lerp_w,
        lerp_one_minus_w: s.lerp_one_minus_w,
        beta2: cfg.beta2,
        one_minus_beta2: s.one_minus_beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        decay: s.decay,
        neg_step_size: s.neg_step_size,
        bc2_sqrt: s.bc2_sqrt,
        _pad: 0,
    };
    let kernel = Kernel::new(&SHADER, if v4 { "step_v4" } else { "step" }, WG);
    enc.launch_threads(kernel, &p, &[grad], &[param, m, v], numel / q)
}

/// f64 CPU reference: the textbook update in exact arithmetic (scalars widened with
/// [`widen`]). Updates `param`, `m`, `v` in place.
pub mod reference {
    use super::{widen, AdamConfig};

    pub fn step(
        param: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        grad: &[f64],
        cfg: &AdamConfig,
        step: u32,
    ) {
        let (lr, b1, b2) = (widen(cfg.lr), widen(cfg.beta1), widen(cfg.beta2));
        let (eps, wd) = (widen(cfg.eps), widen(cfg.weight_decay));
        let t = step as f64;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        for i in 0..param.len() {
            let mut g = grad[i];
            if cfg.decoupled {
                param[i] *= 1.0 - lr * wd;
            } else {
                g += wd * param[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            param[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
        }
    }
}
