//! The tape entries of relu: the forward launches they record and their backward.

use super::{backward, forward};
use crate::gpu::{Result, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    pub fn relu(&mut self, x: Var, name: &str) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let y = self.output(None, &shape, name)?;
        let [yt, xt] = self.values([y, x])?;
        forward(self.enc(), &yt, &xt)?;
        #[cfg(not(target_arch = "wasm32"))]
        self.probe_relu(name, |g| {
            Ok(g.download(&xt)?.into_iter().map(f64::from).collect())
        })?;
        self.record("relu", &[y, x], &[x], ReluOp { x })?;
        Ok(y)
    }
}

struct ReluOp {
    x: Var,
}

impl Backward for ReluOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        if let Some(d_x) = tape.grad_if(self.x)? {
            let xt = tape.value(self.x)?.clone();
            backward(tape.enc(), &d_x, &xt, &d_y)?;
        }
        Ok(())
    }
}
