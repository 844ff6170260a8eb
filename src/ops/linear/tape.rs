//! The tape entries of linear: the forward launches they record and their backward.

use super::{backward, forward};
use crate::gpu::{Result, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// `x · Wᵀ + b`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>, name: &str) -> Result<Var> {
        let n = self.shape(x).first().copied().unwrap_or(0);
        let [o, i] = [0, 1].map(|d| self.shape(w).get(d).copied().unwrap_or(0));
        let y = self.output(None, &[n, o], name)?;
        self.count_multiply_adds(n * o * i);
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let [yt, xt, wt] = self.values([y, x, w])?;
        forward(self.enc(), &yt, &xt, &wt, bt.as_ref())?;
        let vars: Vec<Var> = [y, x, w].into_iter().chain(b).collect();
        self.record("linear", &vars, &[x, w], LinearOp { x, w, b })?;
        Ok(y)
    }
}

struct LinearOp {
    x: Var,
    w: Var,
    b: Option<Var>,
}

impl Backward for LinearOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let [xt, wt] = tape.values([self.x, self.w])?;
        let d_x = tape.grad_if(self.x)?;
        let d_b = self.b.map(|b| tape.grad_if(b)).transpose()?.flatten();
        let d_w = match tape.grad_if(self.w)? {
            Some(d_w) => d_w,
            // A frozen weight: the kernel always writes d_weight, so give it scratch.
            None if d_x.is_some() || d_b.is_some() => {
                tape.gpu().zeros(&wt.shape, "unused d_weight")?
            }
            None => return Ok(()),
        };
        backward(tape.enc(), d_x.as_ref(), &d_w, d_b.as_ref(), &d_y, &xt, &wt)
    }
}
