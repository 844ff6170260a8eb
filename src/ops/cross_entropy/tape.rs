//! The tape entries of cross_entropy: the forward launches they record and their backward.

use super::{backward, forward};
use crate::gpu::{GpuError, Result, TapeError, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Mean softmax cross-entropy. Returns `(loss [1], probabilities [N, K])`.
    pub fn cross_entropy(
        &mut self,
        logits: Var,
        labels: &Tensor,
        name: &str,
    ) -> Result<(Var, Tensor)> {
        let shape = self.shape(logits).to_vec();
        let loss = self.output(None, &[1], name)?;
        let probs = self.gpu().zeros(&shape, &format!("{name}.probs"))?;
        let [lt, xt] = self.values([loss, logits])?;
        forward(self.enc(), &lt, &probs, &xt, labels)?;
        let op = CrossEntropyOp {
            logits,
            probs: probs.clone(),
            labels: labels.clone(),
        };
        self.record("cross_entropy", &[loss, logits], &[], op)?;
        Ok((loss, probs))
    }
}

struct CrossEntropyOp {
    logits: Var,
    probs: Tensor,
    labels: Tensor,
}

impl Backward for CrossEntropyOp {
    /// The loss ends the graph: nothing may be computed from it.
    fn backward(self: Box<Self>, _tape: &mut Tape, _d_y: Tensor) -> Result<()> {
        Err(GpuError::Tape(TapeError::LossInsideGraph {
            op: "cross_entropy".into(),
        }))
    }
    fn backward_from_loss(self: Box<Self>, tape: &mut Tape) -> Option<Result<()>> {
        Some((|| {
            if let Some(d) = tape.grad_if(self.logits)? {
                backward(tape.enc(), &d, &self.probs, &self.labels, 1.0)?;
            }
            Ok(())
        })())
    }
}
