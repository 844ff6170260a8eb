//! The tape entries of add: the forward launches they record and their backward.

use super::{backward, forward};
use crate::gpu::{Result, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// `a + b` (then ReLU when `relu`), a new variable.
    pub fn add(&mut self, a: Var, b: Var, relu: bool, name: &str) -> Result<Var> {
        let shape = self.shape(a).to_vec();
        let y = self.output(None, &shape, name)?;
        let [yt, at, bt] = self.values([y, a, b])?;
        forward(self.enc(), &yt, &at, &bt, relu)?;
        #[cfg(not(target_arch = "wasm32"))]
        if relu {
            self.probe_relu(name, |g| {
                let (a, b) = (g.download(&at)?, g.download(&bt)?);
                Ok(a.iter()
                    .zip(&b)
                    .map(|(a, b)| *a as f64 + *b as f64)
                    .collect())
            })?;
        }
        let (op, reads) = match relu {
            true => ("add_relu", &[y][..]),
            false => ("add", &[][..]),
        };
        self.record(op, &[y, a, b], reads, AddOp { y, a, b, relu })?;
        Ok(y)
    }
}

struct AddOp {
    y: Var,
    a: Var,
    b: Var,
    relu: bool,
}

impl Backward for AddOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        let (d_a, d_b) = (tape.grad_if(self.a)?, tape.grad_if(self.b)?);
        if d_a.is_none() && d_b.is_none() {
            return Ok(());
        }
        let scratch = |t: Option<Tensor>| match t {
            Some(t) => Ok(t),
            None => tape.gpu().zeros(&d_y.shape, "unused add gradient"),
        };
        let (d_a, d_b) = (scratch(d_a)?, scratch(d_b)?);
        // Without the ReLU the mask is never read: d_y stands in for y.
        let y = if self.relu {
            tape.value(self.y)?.clone()
        } else {
            d_y.clone()
        };
        backward(tape.enc(), &d_a, &d_b, &y, &d_y, self.relu)
    }
}
