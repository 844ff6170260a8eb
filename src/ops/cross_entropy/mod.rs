//! Softmax cross-entropy with mean reduction over the batch (PyTorch `F.cross_entropy`).
//!
//! forward: `loss = mean_n(logsumexp(logits[n]) - logits[n, label_n])`, and the softmax
//! `probs` saved for backward; backward: `d_logits += d_loss * (probs - onehot(label)) / N`.
//! Labels live on the device as f32 class indices (as the golden files store them); the
//! caller guarantees their range ([`check_labels`] checks host labels), and the kernels turn
//! an invalid label into NaN for its row rather than reading out of bounds.

use crate::gpu::{
    check_distinct, expect_contiguous, expect_shape, to_u32, Encoder, GpuError, Kernel, Result,
    Shader, ShapeProblem, Tensor,
};

pub mod reference;
mod tape;

pub const SHADER: Shader = shader!("cross_entropy");
/// Invocations of the single forward workgroup; also the backward workgroup size.
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    k: u32,
    logits_off: u32,
    probs_off: u32,
    labels_off: u32,
    out_off: u32,
    scale: f32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Checks host-side labels before they are uploaded: each must be below `classes`.
pub fn check_labels(labels: &[usize], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| l >= classes) {
        Some(position) => Err(GpuError::shape(
            "cross_entropy",
            ShapeProblem::Label {
                label: labels[position],
                position,
                classes,
            },
        )),
        None => Ok(()),
    }
}

/// (N, K) of the logits, after checking that `probs` matches and `labels` is (N).
fn dims(op: &str, logits_or_probs: &Tensor, what: &str, labels: &Tensor) -> Result<[usize; 2]> {
    let shape = || logits_or_probs.shape.clone();
    let [n, k] = match logits_or_probs.shape[..] {
        [n, k] => [n, k],
        _ => {
            let (tensor, layout) = (what.to_string(), "an (N, K) matrix");
            let problem = ShapeProblem::Layout {
                tensor,
                shape: shape(),
                layout,
            };
            return Err(GpuError::shape(op, problem));
        }
    };
    expect_contiguous(op, what, logits_or_probs)?;
    if k == 0 {
        let problem = ShapeProblem::Empty {
            tensor: what.to_string(),
            shape: shape(),
        };
        return Err(GpuError::shape(op, problem));
    }
    expect_shape(op, "labels", &labels.shape, &[n])?;
    to_u32(op, "N * K", n * k)?;
    Ok([n, k])
}

/// Checks that `t` (named `what`) is a contiguous tensor of `like`'s shape.
fn expect_contiguous_like(op: &str, what: &str, t: &Tensor, like: &Tensor) -> Result<()> {
    expect_shape(op, what, &t.shape, &like.shape)?;
    expect_contiguous(op, what, t)
}

fn offset(op: &str, t: &Tensor) -> Result<u32> {
    to_u32(op, t.label(), t.offset + t.numel())?;
    Ok(t.offset as u32)
}

/// `loss [1] = mean_n(logsumexp(logits[n]) - logits[n, label_n])`; `probs [N, K] =
/// softmax(logits)` saved for backward. Row max subtracted (stable); the mean is summed in
/// a fixed order. Overwrites `loss` and `probs`.
pub fn forward(
    enc: &mut Encoder,
    loss: &Tensor,
    probs: &Tensor,
    logits: &Tensor,
    labels: &Tensor,
) -> Result<()> {
    let op = "cross_entropy forward";
    let [n, k] = dims(op, logits, "logits", labels)?;
    expect_contiguous_like(op, "probs", probs, logits)?;
    if loss.numel() != 1 {
        let problem = ShapeProblem::Expected {
            tensor: "loss".into(),
            shape: loss.shape.clone(),
            expected: vec![1],
        };
        return Err(GpuError::shape(op, problem));
    }
    if n == 0 {
        let problem = ShapeProblem::Empty {
            tensor: "logits".into(),
            shape: logits.shape.clone(),
        };
        return Err(GpuError::shape(op, problem));
    }
    check_distinct(
        op,
        &[("probs", probs), ("loss", loss)],
        &[("logits", logits), ("labels", labels)],
    )?;
    let p = Params {
        n: n as u32,
        k: k as u32,
        logits_off: offset(op, logits)?,
        probs_off: offset(op, probs)?,
        labels_off: offset(op, labels)?,
        out_off: offset(op, loss)?,
        scale: 0.0,
        _pad: 0,
    };
    // One workgroup (WG invocations) reduces the whole batch.
    let kernel = Kernel::new(&SHADER, "forward", WG);
    enc.launch_threads(kernel, &p, &[logits, labels], &[probs, loss], WG as usize)
}

/// `d_logits += d_loss * (probs - onehot(label)) / N`, with `d_loss` a host f32 (1.0 for a
/// plain loss).
pub fn backward(
    enc: &mut Encoder,
    d_logits: &Tensor,
    probs: &Tensor,
    labels: &Tensor,
    d_loss: f32,
) -> Result<()> {
    let op = "cross_entropy backward";
    let [n, k] = dims(op, probs, "probs", labels)?;
    expect_contiguous_like(op, "d_logits", d_logits, probs)?;
    check_distinct(
        op,
        &[("d_logits", d_logits)],
        &[("probs", probs), ("labels", labels)],
    )?;
    let p = Params {
        n: n as u32,
        k: k as u32,
        logits_off: 0,
        probs_off: offset(op, probs)?,
        labels_off: offset(op, labels)?,
        out_off: offset(op, d_logits)?,
        // PyTorch's mean reduction scales the upstream gradient by 1/N first.
        scale: d_loss / n.max(1) as f32,
        _pad: 0,
    };
    let kernel = Kernel::new(&SHADER, "backward", WG);
    enc.launch_threads(kernel, &p, &[probs, labels], &[d_logits], n * k)
}
