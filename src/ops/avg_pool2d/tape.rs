//! The tape entries of avg_pool2d: the forward launches they record and their backward.

use super::{backward, forward, output_size, Pool2dSpec};
use crate::gpu::{nchw, Result, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Average pooling (padding counted in the divisor), optionally writing into `out`.
    pub fn avg_pool2d(
        &mut self,
        x: Var,
        spec: Pool2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, c, h, w] = nchw(name, "x", self.value(x)?)?;
        let (oh, ow) = output_size(spec, h, w)?;
        let y = self.output(out, &[n, c, oh, ow], name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        forward(self.enc(), &yt, &xt, spec)?;
        self.mark(y, &[x]);
        self.record(AvgPoolOp { y, x, spec })?;
        Ok(y)
    }
}

struct AvgPoolOp {
    y: Var,
    x: Var,
    spec: Pool2dSpec,
}

impl Backward for AvgPoolOp {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.y, self.x]
    }
    fn value_reads(&self) -> Vec<Var> {
        Vec::new()
    }
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        if let Some(d_x) = tape.grad_if(self.x)? {
            backward(tape.enc(), &d_x, &d_y, self.spec)?;
        }
        Ok(())
    }
}
