//! The tape entries of concat: the forward launches they record and their backward.

use super::{copy, forward};
use crate::gpu::{nchw, GpuError, Result, ShapeProblem, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Channel concatenation into a new buffer (the plain, copying DenseNet).
    pub fn concat(&mut self, inputs: &[Var], name: &str) -> Result<Var> {
        let Some(first) = inputs.first() else {
            let problem = ShapeProblem::Empty {
                tensor: "inputs".into(),
                shape: vec![0],
            };
            return Err(GpuError::shape(name, problem));
        };
        let mut shape = nchw(name, "inputs[0]", self.value(*first)?)?.to_vec();
        shape[1] = inputs
            .iter()
            .map(|v| self.shape(*v).get(1).copied().unwrap_or(0))
            .sum();
        let y = self.output(None, &shape, name)?;
        let yt = self.value(y)?.clone();
        let ts: Vec<Tensor> = inputs
            .iter()
            .map(|v| self.value(*v).cloned())
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        forward(self.enc(), &yt, &refs)?;
        let vars: Vec<Var> = std::iter::once(y).chain(inputs.iter().copied()).collect();
        let op = ConcatOp {
            inputs: inputs.to_vec(),
        };
        self.record("concat", &vars, &[], op)?;
        Ok(y)
    }
}

/// Backward is slicing: each input gets its channel range of d_y.
struct ConcatOp {
    inputs: Vec<Var>,
}

impl Backward for ConcatOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let mut start = 0;
        for v in self.inputs {
            let c = tape.shape(v)[1];
            if let Some(d_x) = tape.grad_if(v)? {
                copy(tape.enc(), &d_x, &d_y.channels(start, c)?, true)?;
            }
            start += c;
        }
        Ok(())
    }
}
