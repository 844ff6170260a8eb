//! The autograd tape.
//!
//! Every op called on a [`Tape`] launches its forward kernel(s) immediately (recorded into
//! the tape's command encoder) and, when the tape is recording, appends a [`Backward`]
//! record holding the ids of its inputs/outputs and whatever its backward needs (BN's
//! `mean`/`inv_std`, softmax probabilities, max pooling's argmax indices).
//!
//! The tape itself names no op: each op's entry (`Tape::conv2d`, `Tape::relu`, ...) and
//! its [`Backward`] record live in the op's module under `ops/`, next to its launchers,
//! so adding an op touches one WGSL file and one module. [`Tape::backward`] walks the ops
//! in reverse, launching backward kernels that **accumulate** into one gradient buffer per
//! variable; it frees each variable's gradient as soon as no earlier op needs it, and its
//! value as soon as no earlier op's backward reads it (at once for values no backward
//! reads, such as a max pool's input).
//!
//! Variables may be channel slices of a larger variable ([`Tape::slice`]): a dense block
//! is one buffer whose slices are the block input and each layer's new features; the
//! gradient of a slice is the same slice of the block's gradient buffer, so concatenation
//! costs nothing in either direction.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::gpu::{Encoder, Gpu, GpuError, Result, Storage, Submitted, TapeError, Tensor};

/// The tape submits its encoder once it holds this many launches, or once this many bytes
/// were allocated since the last submission (see [`Tape::flush`]).
const FLUSH_LAUNCHES: usize = 256;
const FLUSH_BYTES: u64 = 8 << 20;

/// A handle to a tensor recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// A trainable tensor that lives across steps: its value, its gradient (accumulated by
/// every backward until zeroed) and a name (torchvision's state_dict name).
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    /// False for a frozen parameter: the tape treats it as a constant (no gradient flows
    /// into it) and the optimizer leaves it untouched.
    pub trainable: bool,
}

impl Param {
    pub fn new(gpu: &Gpu, name: &str, data: &[f32], shape: &[usize]) -> Result<Param> {
        Ok(Param {
            name: name.to_string(),
            value: gpu.upload(data, shape, name)?,
            grad: gpu.zeros(shape, &format!("grad.{name}"))?,
            trainable: true,
        })
    }
}

struct Slot {
    name: String,
    shape: Vec<usize>,
    value: Option<Tensor>,
    grad: Option<Tensor>,
    /// `(parent, first channel)` for channel slices.
    parent: Option<(Var, usize)>,
    /// Gradient is wanted (false for inputs and anything computed only from them).
    requires_grad: bool,
    /// Parameters keep their gradient buffer after backward.
    persistent_grad: bool,
}

/// What one recorded op keeps for its backward pass. The tape knows which variables it
/// touches from `Tape::record`: it releases a variable's value after the last (in
/// backward order) op that reads it, and its gradient after the last op that touches it.
pub trait Backward {
    /// Accumulates the gradients of the op's inputs from `d_y`, the gradient of its output.
    fn backward(self: Box<Self>, tape: &mut Tape, d_y: Tensor) -> Result<()>;
    /// [`Backward::backward`] when the op's output is the loss itself (its gradient is 1).
    /// Only a loss op can end the graph: the others return `None`.
    fn backward_from_loss(self: Box<Self>, _tape: &mut Tape) -> Option<Result<()>> {
        None
    }
}

/// A recorded op: its backward, and what the tape needs to know of it to schedule that
/// backward and release memory.
struct Recorded {
    /// The op's name in listings and profiles (`conv2d`, `batch_norm`, ...).
    name: &'static str,
    /// Variables the op's backward touches (values or gradients), output first.
    vars: Vec<Var>,
    /// Variables whose *values* the backward reads (the rest of `vars` only take part
    /// through their gradients).
    value_reads: Vec<Var>,
    backward: Box<dyn Backward>,
}

/// Called by [`Tape::backward_with`] with the parameters (name, gradient) whose gradients
/// have just become final.
pub type GradReady<'a> = dyn for<'t> FnMut(&mut Tape<'t>, &[(String, Tensor)]) -> Result<()> + 'a;

/// Records ops and replays them backwards. See the module docs.
pub struct Tape<'g> {
    gpu: &'g Gpu,
    enc: Option<Encoder<'g>>,
    /// The last submission: the next flush waits for it (see [`Tape::flush`]).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    in_flight: Option<Submitted>,
    /// `MemoryStats::allocated_bytes` at the last flush.
    flushed_at: u64,
    slots: Vec<Slot>,
    ops: Vec<Recorded>,
    recording: bool,
    backward_done: bool,
    /// Per-op device time when profiling (each op is followed by a device sync).
    profile: Option<Profile>,
    /// ReLU inputs near zero, when probing (see [`Tape::probe_relu_inputs`]).
    relu_probe: Option<ReluProbe>,
    /// Floating-point operations of the forward convolutions and linear layers so far.
    flops: u64,
    /// Training-mode batch norms compute their statistics over every rank of this group
    /// (synchronised BN; see [`Tape::sync_batch_norm`]).
    sync: Option<&'g dyn crate::collective::Collective>,
}

/// What [`Tape::probe_relu_inputs`] counted: ReLU inputs so close to zero that float32
/// rounding in any correct program may put them on either side of it (which changes the
/// gradient upstream of them, not the forward values).
#[derive(Clone, Debug, Default)]
pub struct ReluProbe {
    /// An input `v` counts when `|v| <= rel * max|v|` over its tensor.
    pub rel: f64,
    pub near_zero: usize,
    pub total: usize,
    /// (op, count) for every tensor with any.
    pub tensors: Vec<(String, usize)>,
}

/// Device time per (pass, op, output shape), for finding the slow kernels (native only).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
struct Profile {
    mark: std::time::Instant,
    totals: std::collections::BTreeMap<String, (f64, usize)>,
}

/// The device time of one (pass, op, output shape) over a profiled step.
#[derive(Debug, Clone)]
pub struct OpTime {
    /// `forward conv2d [8, 32, 16, 16]`, ...
    pub op: String,
    pub seconds: f64,
    pub calls: usize,
}

/// A profile as a table: milliseconds, share of the total and calls per op, slowest
/// first, then the total.
pub fn profile_table(ops: &[OpTime]) -> String {
    let total: f64 = ops.iter().map(|o| o.seconds).sum();
    let mut s = format!("{:>10} {:>6} {:>5}  op\n", "ms", "%", "calls");
    for o in ops {
        s += &format!(
            "{:>10.2} {:>5.1}% {:>5}  {}\n",
            o.seconds * 1e3,
            100.0 * o.seconds / total,
            o.calls,
            o.op
        );
    }
    s += &format!("{:>10.2} total\n", total * 1e3);
    s
}

impl<'g> Tape<'g> {
    /// A tape that records ops for a backward pass (training).
    pub fn new(gpu: &'g Gpu) -> Tape<'g> {
        Tape {
            gpu,
            enc: Some(gpu.encoder("tape")),
            in_flight: None,
            flushed_at: gpu.active_memory().allocated_bytes(),
            slots: Vec::new(),
            ops: Vec::new(),
            recording: true,
            backward_done: false,
            profile: None,
            relu_probe: None,
            flops: 0,
            sync: None,
        }
    }

    /// Makes training-mode batch norms on this tape synchronised over `group`: batch
    /// statistics over the global batch in forward, and the matching sums in backward
    /// (PyTorch's SyncBatchNorm). Every rank must record the same ops.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sync_batch_norm(&mut self, group: &'g dyn crate::collective::Collective) {
        self.sync = (group.size() > 1).then_some(group);
    }

    /// The group batch norms synchronise over, if any (data-parallel runs: native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn sync_group(&self) -> Option<&'g dyn crate::collective::Collective> {
        self.sync
    }

    /// A tape that only runs forward kernels (inference): nothing is kept for backward.
    pub fn inference(gpu: &'g Gpu) -> Tape<'g> {
        Tape {
            recording: false,
            ..Tape::new(gpu)
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The encoder the op launchers record into.
    pub(crate) fn enc(&mut self) -> &mut Encoder<'g> {
        self.enc.as_mut().expect("tape encoder")
    }

    /// Submits the work recorded so far (values become readable after a sync), then waits
    /// for the previous submission: at most two are in flight. A buffer the tape drops is
    /// freed only once the submitted work that uses it has finished; without the wait the
    /// host, which records far faster than a CPU adapter computes, would hold the dropped
    /// buffers of a whole pass at once (DenseNet-121 at 224x224 batch 8, memory-efficient,
    /// on lavapipe: 1224 MiB held at the peak with submissions of 256 launches and no wait,
    /// 511 MiB with this bound and an 8 MiB budget).
    ///
    /// In a browser, where nothing may wait, it only submits: the browser frees a dropped
    /// buffer itself once the work that uses it is done, and a step's read-back of its loss
    /// bounds what one step holds.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(enc) = self.enc.take() {
            let submitted = enc.submit_indexed()?;
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(previous) = std::mem::replace(&mut self.in_flight, submitted) {
                self.gpu.wait_for(previous)?;
            }
            #[cfg(target_arch = "wasm32")]
            let _ = submitted;
        }
        self.flushed_at = self.gpu.active_memory().allocated_bytes();
        self.enc = Some(self.gpu.encoder("tape"));
        Ok(())
    }

    /// Flushes once the encoder holds [`FLUSH_LAUNCHES`] launches or [`FLUSH_BYTES`] were
    /// allocated since the last flush (forward and backward call this after each op).
    fn flush_if_long(&mut self) -> Result<()> {
        let launches = self.enc.as_ref().map_or(0, |e| e.launches());
        let allocated = self.gpu.active_memory().allocated_bytes() - self.flushed_at;
        if launches >= FLUSH_LAUNCHES || allocated >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn push(&mut self, name: &str, value: Tensor, requires_grad: bool) -> Var {
        self.slots.push(Slot {
            name: name.to_string(),
            shape: value.shape.clone(),
            value: Some(value),
            grad: None,
            parent: None,
            requires_grad,
            persistent_grad: false,
        });
        Var(self.slots.len() - 1)
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, value: Tensor, name: &str) -> Var {
        self.push(name, value, false)
    }

    /// A parameter: its gradient accumulates into `param.grad` (a frozen one is a
    /// constant).
    pub fn param(&mut self, param: &Param) -> Var {
        let trainable = self.recording && param.trainable;
        let v = self.push(&param.name, param.value.clone(), trainable);
        if trainable {
            let slot = &mut self.slots[v.0];
            slot.grad = Some(param.grad.clone());
            slot.persistent_grad = true;
        }
        v
    }

    /// A fresh zeroed buffer, e.g. a dense block filled slice by slice.
    pub fn alloc(&mut self, shape: &[usize], name: &str) -> Result<Var> {
        let t = self.gpu.zeros(shape, name)?;
        Ok(self.push(name, t, false))
    }

    /// Channels `[start, start + len)` of a 4-D variable, sharing its storage and gradient.
    pub fn slice(&mut self, v: Var, start: usize, len: usize) -> Result<Var> {
        let t = self.value(v)?.channels(start, len)?;
        let name = format!("{}[{start}..{}]", self.slots[v.0].name, start + len);
        let requires_grad = self.slots[v.0].requires_grad;
        let s = self.push(&name, t, requires_grad);
        self.slots[s.0].parent = Some((v, start));
        Ok(s)
    }

    /// The current value of a variable.
    pub fn value(&self, v: Var) -> Result<&Tensor> {
        self.slots[v.0].value.as_ref().ok_or_else(|| {
            GpuError::Tape(TapeError::Released {
                value: self.slots[v.0].name.clone(),
            })
        })
    }

    /// The current values of several variables (tensor handles, not copies).
    pub fn values<const N: usize>(&self, vars: [Var; N]) -> Result<[Tensor; N]> {
        let mut out = Vec::with_capacity(N);
        for v in vars {
            out.push(self.value(v)?.clone());
        }
        Ok(out.try_into().expect("one value per variable"))
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        &self.slots[v.0].shape
    }

    pub fn name(&self, v: Var) -> &str {
        &self.slots[v.0].name
    }

    /// Whether backward will compute a gradient for `v`.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.slots[v.0].requires_grad
    }

    /// Marks `out` (and every ancestor slice) as needing a gradient when `inputs` do.
    fn mark(&mut self, out: Var, inputs: &[Var]) {
        if self.recording && inputs.iter().any(|v| self.slots[v.0].requires_grad) {
            let mut cur = Some(out);
            while let Some(v) = cur {
                self.slots[v.0].requires_grad = true;
                cur = self.slots[v.0].parent.map(|(p, _)| p);
            }
        }
    }

    /// Output variable: the given destination (e.g. a block slice) or a new buffer.
    pub(crate) fn output(&mut self, out: Option<Var>, shape: &[usize], name: &str) -> Result<Var> {
        match out {
            Some(v) => {
                crate::gpu::expect_shape(name, "destination", self.shape(v), shape)?;
                Ok(v)
            }
            None => {
                let t = self.gpu.zeros(shape, name)?;
                Ok(self.push(name, t, false))
            }
        }
    }

    /// Appends an op's backward record (dropped on inference tapes), after its forward
    /// launches were recorded: its `name`, the variables its backward touches (`vars`,
    /// output first) and those whose values it reads (`value_reads`). The output needs a
    /// gradient when an input does.
    pub(crate) fn record(
        &mut self,
        name: &'static str,
        vars: &[Var],
        value_reads: &[Var],
        op: impl Backward + 'static,
    ) -> Result<()> {
        self.mark(vars[0], &vars[1..]);
        let key = format!("forward  {name:<15} {:?}", self.slots[vars[0].0].shape);
        self.profile_mark(key);
        if self.recording {
            self.ops.push(Recorded {
                name,
                vars: vars.to_vec(),
                value_reads: value_reads.to_vec(),
                backward: Box::new(op),
            });
        }
        self.flush_if_long()
    }

    /// Times every op from now on: each op's kernels are submitted and waited for, and
    /// the time is added to its (pass, op, shape) entry of [`Tape::profile`].
    /// Slows the step down; for finding slow kernels only. Native only: it waits for the
    /// device after every op.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn enable_profiling(&mut self) -> Result<()> {
        self.flush()?;
        self.gpu.sync()?;
        self.profile = Some(Profile {
            mark: std::time::Instant::now(),
            totals: Default::default(),
        });
        Ok(())
    }

    fn profile_mark(&mut self, key: String) {
        #[cfg(target_arch = "wasm32")]
        let _ = key;
        #[cfg(not(target_arch = "wasm32"))]
        self.time_since_mark(key);
    }

    /// Adds the device time since the last mark to `key`'s entry, when profiling.
    #[cfg(not(target_arch = "wasm32"))]
    fn time_since_mark(&mut self, key: String) {
        if self.profile.is_none() {
            return;
        }
        // Errors surface at the next regular submission.
        let _ = self.flush();
        let _ = self.gpu.sync();
        let p = self.profile.as_mut().expect("profile");
        let t = p.mark.elapsed().as_secs_f64();
        let e = p.totals.entry(key).or_insert((0.0, 0));
        e.0 += t;
        e.1 += 1;
        p.mark = std::time::Instant::now();
    }

    /// From now on, every op that applies a ReLU in training mode also reads its input
    /// back (a device sync per op) and counts the values within `rel` of zero relative to
    /// the largest magnitude in that tensor. For checks against reference outputs only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn probe_relu_inputs(&mut self, rel: f64) {
        self.relu_probe = Some(ReluProbe {
            rel,
            ..Default::default()
        });
    }

    /// Floating-point operations (2 per multiply-add) of the convolutions and linear
    /// layers recorded so far: a model's forward cost. Element-wise ops are not counted.
    pub fn flops(&self) -> u64 {
        self.flops
    }

    pub(crate) fn count_multiply_adds(&mut self, n: usize) {
        self.flops += 2 * n as u64;
    }

    /// The counts so far, if probing.
    pub fn relu_probe(&self) -> Option<&ReluProbe> {
        self.relu_probe.as_ref()
    }

    /// Counts one ReLU input tensor when probing; `pre` computes its values on the host
    /// after the tape's work so far has been submitted.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn probe_relu(
        &mut self,
        name: &str,
        pre: impl FnOnce(&Gpu) -> Result<Vec<f64>>,
    ) -> Result<()> {
        if self.relu_probe.is_none() {
            return Ok(());
        }
        self.flush()?;
        let values = pre(self.gpu)?;
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let probe = self.relu_probe.as_mut().expect("probe");
        let near = values.iter().filter(|v| v.abs() <= probe.rel * max).count();
        probe.total += values.len();
        probe.near_zero += near;
        if near > 0 {
            probe.tensors.push((name.to_string(), near));
        }
        Ok(())
    }

    /// Profiled device time per (pass, op, output shape), slowest first (`None` when
    /// profiling is off; see [`Tape::enable_profiling`]).
    pub fn profile(&self) -> Option<Vec<OpTime>> {
        let p = self.profile.as_ref()?;
        let mut ops: Vec<OpTime> = p
            .totals
            .iter()
            .map(|(op, &(seconds, calls))| OpTime {
                op: op.clone(),
                seconds,
                calls,
            })
            .collect();
        ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Some(ops)
    }

    /// Gradient buffer of `v`, created zeroed on first use (a slice's gradient is the
    /// same slice of its parent's gradient).
    pub(crate) fn grad(&mut self, v: Var) -> Result<Tensor> {
        if let Some(g) = &self.slots[v.0].grad {
            return Ok(g.clone());
        }
        let g = match self.slots[v.0].parent {
            Some((p, start)) => {
                let len = self.slots[v.0].shape[1];
                self.grad(p)?.channels(start, len)?
            }
            None => {
                let shape = self.slots[v.0].shape.clone();
                let name = format!("grad.{}", self.slots[v.0].name);
                self.gpu.zeros(&shape, &name)?
            }
        };
        self.slots[v.0].grad = Some(g.clone());
        Ok(g)
    }

    /// Gradient to push into `v`, or `None` if nothing upstream of it wants one.
    pub(crate) fn grad_if(&mut self, v: Var) -> Result<Option<Tensor>> {
        if self.slots[v.0].requires_grad {
            self.grad(v).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Back-propagates from a scalar `loss` (d loss = 1), accumulating into every
    /// parameter's `grad`. A tape can be backwarded once: a second call is an error
    /// (parameter gradients would silently double).
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        self.backward_with(loss, &mut |_, _| Ok(()))
    }

    /// [`Tape::backward`], calling `ready` with each parameter's name and gradient as soon
    /// as no op left to replay contributes to it (data-parallel training starts summing a
    /// bucket of gradients over the ranks there). `ready` may flush the tape.
    pub fn backward_with(&mut self, loss: Var, ready: &mut GradReady<'_>) -> Result<()> {
        if !self.recording {
            return Err(GpuError::Tape(TapeError::NotRecording));
        }
        if self.backward_done {
            return Err(GpuError::Tape(TapeError::BackwardTwice));
        }
        if self.shape(loss).iter().product::<usize>() != 1 {
            return Err(GpuError::Tape(TapeError::LossNotScalar {
                value: self.name(loss).to_string(),
                shape: self.shape(loss).to_vec(),
            }));
        }
        self.backward_done = true;
        // For each variable (and, through slices, its parents): the earliest op whose
        // backward touches it, after which its gradient is no longer needed, and the
        // earliest op whose backward reads its value. A value no backward reads (a max
        // pool's input, a ReLU's output, ...) is released before the first backward op.
        let earliest = |uses: &dyn Fn(&Recorded) -> &[Var]| {
            let mut first = vec![usize::MAX; self.slots.len()];
            for (i, op) in self.ops.iter().enumerate() {
                for &v in uses(op) {
                    let mut cur = Some(v);
                    while let Some(c) = cur {
                        first[c.0] = first[c.0].min(i);
                        cur = self.slots[c.0].parent.map(|(p, _)| p);
                    }
                }
            }
            first
        };
        let first_use = earliest(&|op| &op.vars);
        let first_read = earliest(&|op| &op.value_reads);
        let mut release_grad: Vec<Vec<usize>> = vec![Vec::new(); self.ops.len()];
        let mut release_value: Vec<Vec<usize>> = vec![Vec::new(); self.ops.len()];
        for (v, (&used, &read)) in first_use.iter().zip(&first_read).enumerate() {
            if used == usize::MAX {
                continue;
            }
            release_grad[used].push(v);
            if read == usize::MAX {
                self.slots[v].value = None;
            } else {
                release_value[read].push(v);
            }
        }
        // A parameter's gradient is final after the earliest op touching any of its slots
        // (a parameter used twice has two slots sharing one gradient buffer).
        let mut final_at: Vec<Vec<usize>> = vec![Vec::new(); self.ops.len()];
        let mut by_buffer: HashMap<*const Storage, usize> = HashMap::new();
        for (v, &used) in first_use.iter().enumerate() {
            let slot = &self.slots[v];
            if let (true, Some(g), true) = (slot.persistent_grad, &slot.grad, used != usize::MAX) {
                let first = by_buffer.entry(Arc::as_ptr(&g.storage)).or_insert(v);
                if first_use[*first] > used {
                    *first = v;
                }
            }
        }
        let mut params: Vec<usize> = by_buffer.into_values().collect();
        params.sort_unstable();
        for v in params {
            final_at[first_use[v]].push(v);
        }
        let ops = std::mem::take(&mut self.ops);
        for (i, op) in ops.into_iter().enumerate().rev() {
            // Only ops whose output needs a gradient do anything.
            let key = format!(
                "backward {:<15} {:?}",
                op.name, self.slots[op.vars[0].0].shape
            );
            self.backward_op(op, loss)?;
            self.profile_mark(key);
            for &v in &release_value[i] {
                self.slots[v].value = None;
            }
            for &v in &release_grad[i] {
                let slot = &mut self.slots[v];
                if !slot.persistent_grad {
                    slot.grad = None;
                }
            }
            if !final_at[i].is_empty() {
                let done: Vec<(String, Tensor)> = final_at[i]
                    .iter()
                    .filter_map(|&v| {
                        let slot = &self.slots[v];
                        slot.grad.clone().map(|g| (slot.name.clone(), g))
                    })
                    .collect();
                ready(self, &done)?;
            }
            // Submit now and then so released buffers can really be reused.
            self.flush_if_long()?;
        }
        self.flush()
    }

    fn backward_op(&mut self, op: Recorded, loss: Var) -> Result<()> {
        let out = op.vars[0];
        if !self.slots[out.0].requires_grad {
            return Ok(());
        }
        if out == loss {
            return op.backward.backward_from_loss(self).unwrap_or_else(|| {
                Err(GpuError::Tape(TapeError::NotALoss {
                    op: op.name.to_string(),
                }))
            });
        }
        let d_y = self.grad(out)?;
        op.backward.backward(self, d_y)
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Finishes: submits whatever is still recorded.
    pub fn finish(mut self) -> Result<()> {
        if let Some(enc) = self.enc.take() {
            enc.submit()?;
        }
        Ok(())
    }
}

impl fmt::Display for Tape<'_> {
    /// One line per recorded op: `#12 conv2d  features.denseblock1.denselayer1.conv2 (8, 12, 8, 8) <- x, weight`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            let vars = &op.vars;
            let out = &self.slots[vars[0].0];
            let ins: Vec<&str> = vars[1..]
                .iter()
                .map(|v| self.slots[v.0].name.as_str())
                .collect();
            writeln!(
                f,
                "#{i:<4} {:<15} {} {:?} <- {}",
                op.name,
                out.name,
                out.shape,
                ins.join(", ")
            )?;
        }
        Ok(())
    }
}
