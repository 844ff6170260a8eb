//! The tape entries of max_pool2d: the forward launches they record and their backward.

use super::{alloc_indices, backward, forward, Pool2dSpec};
use crate::gpu::{GpuError, Result, TapeError, Tensor};
use crate::tape::{Backward, Tape, Var};

impl Tape<'_> {
    /// Max pooling (padding acts as -inf), optionally writing into `out`. A recording tape
    /// saves each window's argmax for backward (x itself is not kept for the pool).
    pub fn max_pool2d(
        &mut self,
        x: Var,
        spec: Pool2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let (y, y_shape) = self.pool_output(x, spec, out, name)?;
        let [yt, xt] = self.values([y, x])?;
        // An inference tape never runs backward: no indices.
        let indices = if self.is_recording() {
            let label = format!("{name}.indices");
            Some(alloc_indices(self.gpu(), y_shape, &label)?)
        } else {
            None
        };
        forward(self.enc(), &yt, indices.as_ref(), &xt, spec)?;
        self.record("max_pool2d", &[y, x], &[], MaxPoolOp { x, indices, spec })?;
        Ok(y)
    }
}

/// Backward reads the saved argmax of every window ([`indices_shape`]), not x; `None`
/// only on inference tapes, which record nothing.
struct MaxPoolOp {
    x: Var,
    indices: Option<Tensor>,
    spec: Pool2dSpec,
}

impl Backward for MaxPoolOp {
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()> {
        if let Some(d_x) = tape.grad_if(self.x)? {
            let indices = self.indices.ok_or_else(|| {
                GpuError::Tape(TapeError::NotSaved {
                    op: "max_pool2d".into(),
                    value: "argmax indices",
                })
            })?;
            backward(tape.enc(), &d_x, &d_y, &indices, self.spec)?;
        }
        Ok(())
    }
}
