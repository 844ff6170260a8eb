//! The tape entries of global_avg_pool: the forward launches they record and their backward.

use super::{backward, forward};
use crate::gpu::{nchw, Result, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Mean over H×W: (N, C, H, W) → (N, C).
    pub fn global_avg_pool(&mut self, x: Var, name: &str) -> Result<Var> {
        let [n, c, _, _] = nchw(name, "x", self.value(x)?)?;
        let y = self.output(None, &[n, c], name)?;
        let [yt, xt] = self.values([y, x])?;
        forward(self.enc(), &yt, &xt)?;
        self.record("global_avg_pool", &[y, x], &[], GlobalAvgPoolOp { x })?;
        Ok(y)
    }
}

struct GlobalAvgPoolOp {
    x: Var,
}

impl Backward for GlobalAvgPoolOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        if let Some(d_x) = tape.grad_if(self.x)? {
            backward(tape.enc(), &d_x, &d_y)?;
        }
        Ok(())
    }
}
