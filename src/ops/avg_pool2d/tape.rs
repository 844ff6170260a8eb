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
        let (y, _) = self.pool_output(x, spec, out, name)?;
        let [yt, xt] = self.values([y, x])?;
        forward(self.enc(), &yt, &xt, spec)?;
        self.record("avg_pool2d", &[y, x], &[], AvgPoolOp { x, spec })?;
        Ok(y)
    }

    /// The output variable of a pool of `x` by `spec` (`out` when given) and its shape
    /// (N, C, OH, OW).
    pub(crate) fn pool_output(
        &mut self,
        x: Var,
        spec: Pool2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<(Var, [usize; 4])> {
        let [n, c, h, w] = nchw(name, "x", self.value(x)?)?;
        let (oh, ow) = output_size(spec, h, w)?;
        let shape = [n, c, oh, ow];
        Ok((self.output(out, &shape, name)?, shape))
    }
}

struct AvgPoolOp {
    x: Var,
    spec: Pool2dSpec,
}

impl Backward for AvgPoolOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        if let Some(d_x) = tape.grad_if(self.x)? {
            backward(tape.enc(), &d_x, &d_y, self.spec)?;
        }
        Ok(())
    }
}
