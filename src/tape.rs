//! The autograd tape.
//!
//! Every op called on a [`Tape`] launches its forward kernel(s) immediately (recorded into
//! the tape's command encoder) and, when the tape is recording, appends an [`Op`] holding
//! the ids of its inputs/outputs and whatever its backward needs (BN's `mean`/`inv_std`,
//! softmax probabilities, max pooling's argmax indices). [`Tape::backward`] walks the ops
//! in reverse, launching backward kernels that **accumulate** into one gradient buffer per
//! variable; it frees each variable's gradient as soon as no earlier op needs it, and its
//! value as soon as no earlier op's backward reads it (at once for values no backward
//! reads, such as a max pool's input).
//!
//! Variables may be channel slices of a larger variable ([`Tape::slice`]): a dense block
//! is one buffer whose slices are the block input and each layer's new features; the
//! gradient of a slice is the same slice of the block's gradient buffer, so concatenation
//! costs nothing in either direction.

use std::fmt;

use crate::gpu::{Encoder, Gpu, GpuError, Result, Submitted, Tensor};
use crate::ops::avg_pool2d::Pool2dSpec;
use crate::ops::batch_norm::BnConfig;
use crate::ops::conv2d::{BnReluPrologue, Conv2dSpec};
use crate::ops::{
    avg_pool2d, batch_norm, concat, conv2d, cross_entropy, global_avg_pool, linear, max_pool2d,
    relu,
};

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
}

impl Param {
    pub fn new(gpu: &Gpu, name: &str, data: &[f32], shape: &[usize]) -> Result<Param> {
        Ok(Param {
            name: name.to_string(),
            value: gpu.upload(data, shape, name)?,
            grad: gpu.zeros(shape, &format!("grad.{name}"))?,
        })
    }
}

/// Batch-norm running statistics, updated in place by training forwards.
pub struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
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

/// One recorded op: what its backward needs.
enum Op {
    Conv2d {
        y: Var,
        x: Var,
        w: Var,
        b: Option<Var>,
        spec: Conv2dSpec,
    },
    BatchNorm {
        y: Var,
        x: Var,
        gamma: Var,
        beta: Var,
        mean: Tensor,
        inv_std: Tensor,
        cfg: BnConfig,
    },
    /// BN (batch statistics) → ReLU → conv, with the BN+ReLU output never stored: the conv
    /// applies `max(scale*x + shift, 0)` while reading x, and backward recomputes it.
    BnReluConv {
        y: Var,
        x: Var,
        gamma: Var,
        beta: Var,
        w: Var,
        mean: Tensor,
        inv_std: Tensor,
        scale: Tensor,
        shift: Tensor,
        cfg: BnConfig,
        spec: Conv2dSpec,
    },
    Relu {
        y: Var,
        x: Var,
    },
    /// Backward reads the saved argmax of every window (`max_pool2d::indices_shape`), not
    /// x; `None` only on inference tapes, which record nothing.
    MaxPool {
        y: Var,
        x: Var,
        indices: Option<Tensor>,
        spec: Pool2dSpec,
    },
    AvgPool {
        y: Var,
        x: Var,
        spec: Pool2dSpec,
    },
    GlobalAvgPool {
        y: Var,
        x: Var,
    },
    Linear {
        y: Var,
        x: Var,
        w: Var,
        b: Option<Var>,
    },
    Concat {
        y: Var,
        inputs: Vec<Var>,
    },
    CrossEntropy {
        loss: Var,
        logits: Var,
        probs: Tensor,
        labels: Tensor,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::BnReluConv { .. } => "bn_relu_conv",
            Op::Relu { .. } => "relu",
            Op::MaxPool { .. } => "max_pool2d",
            Op::AvgPool { .. } => "avg_pool2d",
            Op::GlobalAvgPool { .. } => "global_avg_pool",
            Op::Linear { .. } => "linear",
            Op::Concat { .. } => "concat",
            Op::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// Variables whose *values* this op's backward reads (the rest of [`Op::vars`] only
    /// take part through their gradients).
    fn value_reads(&self) -> Vec<Var> {
        match self {
            Op::Conv2d { x, w, .. } | Op::Linear { x, w, .. } => vec![*x, *w],
            Op::BatchNorm { x, gamma, beta, .. } => vec![*x, *gamma, *beta],
            Op::BnReluConv {
                x, gamma, beta, w, ..
            } => vec![*x, *gamma, *beta, *w],
            Op::Relu { x, .. } => vec![*x],
            Op::MaxPool { .. }
            | Op::AvgPool { .. }
            | Op::GlobalAvgPool { .. }
            | Op::Concat { .. }
            | Op::CrossEntropy { .. } => Vec::new(),
        }
    }

    /// Variables this op's backward touches (values or gradients), outputs first.
    fn vars(&self) -> Vec<Var> {
        match self {
            Op::Conv2d { y, x, w, b, .. } => [Some(*y), Some(*x), Some(*w), *b]
                .into_iter()
                .flatten()
                .collect(),
            Op::BatchNorm {
                y, x, gamma, beta, ..
            } => vec![*y, *x, *gamma, *beta],
            Op::BnReluConv {
                y,
                x,
                gamma,
                beta,
                w,
                ..
            } => vec![*y, *x, *gamma, *beta, *w],
            Op::Relu { y, x }
            | Op::MaxPool { y, x, .. }
            | Op::AvgPool { y, x, .. }
            | Op::GlobalAvgPool { y, x } => vec![*y, *x],
            Op::Linear { y, x, w, b } => [Some(*y), Some(*x), Some(*w), *b]
                .into_iter()
                .flatten()
                .collect(),
            Op::Concat { y, inputs } => std::iter::once(*y).chain(inputs.iter().copied()).collect(),
            Op::CrossEntropy { loss, logits, .. } => vec![*loss, *logits],
        }
    }
}

/// Records ops and replays them backwards. See the module docs.
pub struct Tape<'g> {
    gpu: &'g Gpu,
    enc: Option<Encoder<'g>>,
    /// The last submission: the next flush waits for it (see [`Tape::flush`]).
    in_flight: Option<Submitted>,
    /// `MemoryStats::allocated_bytes` at the last flush.
    flushed_at: u64,
    slots: Vec<Slot>,
    ops: Vec<Op>,
    recording: bool,
    backward_done: bool,
    /// Per-op device time when profiling (each op is followed by a device sync).
    profile: Option<Profile>,
}

/// Device time per (pass, op, output shape), for finding the slow kernels.
struct Profile {
    mark: std::time::Instant,
    totals: std::collections::BTreeMap<String, (f64, usize)>,
}

impl<'g> Tape<'g> {
    /// A tape that records ops for a backward pass (training).
    pub fn new(gpu: &'g Gpu) -> Tape<'g> {
        Tape {
            gpu,
            enc: Some(gpu.encoder("tape")),
            in_flight: None,
            flushed_at: gpu.memory().allocated_bytes(),
            slots: Vec::new(),
            ops: Vec::new(),
            recording: true,
            backward_done: false,
            profile: None,
        }
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

    fn enc(&mut self) -> &mut Encoder<'g> {
        self.enc.as_mut().expect("tape encoder")
    }

    /// Submits the work recorded so far (values become readable after a sync), then waits
    /// for the previous submission: at most two are in flight. A buffer the tape drops is
    /// freed only once the submitted work that uses it has finished; without the wait the
    /// host, which records far faster than a CPU adapter computes, would hold the dropped
    /// buffers of a whole pass at once (DenseNet-121 at 224x224 batch 8, memory-efficient,
    /// on lavapipe: 1224 MiB held at the peak with submissions of 256 launches and no wait,
    /// 511 MiB with this bound and an 8 MiB budget).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(enc) = self.enc.take() {
            let submitted = enc.submit_indexed()?;
            if let Some(previous) = std::mem::replace(&mut self.in_flight, submitted) {
                self.gpu.wait_for(previous)?;
            }
        }
        self.flushed_at = self.gpu.memory().allocated_bytes();
        self.enc = Some(self.gpu.encoder("tape"));
        Ok(())
    }

    /// Flushes once the encoder holds [`FLUSH_LAUNCHES`] launches or [`FLUSH_BYTES`] were
    /// allocated since the last flush (forward and backward call this after each op).
    fn flush_if_long(&mut self) -> Result<()> {
        let launches = self.enc.as_ref().map_or(0, |e| e.launches());
        let allocated = self.gpu.memory().allocated_bytes() - self.flushed_at;
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

    /// A parameter: its gradient accumulates into `param.grad`.
    pub fn param(&mut self, param: &Param) -> Var {
        let v = self.push(&param.name, param.value.clone(), self.recording);
        let slot = &mut self.slots[v.0];
        slot.grad = Some(param.grad.clone());
        slot.persistent_grad = true;
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
            GpuError::Shape(format!(
                "tape: value of {} was released by backward",
                self.slots[v.0].name
            ))
        })
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        &self.slots[v.0].shape
    }

    pub fn name(&self, v: Var) -> &str {
        &self.slots[v.0].name
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
    fn output(&mut self, out: Option<Var>, shape: &[usize], name: &str) -> Result<Var> {
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

    fn record(&mut self, op: Op) -> Result<()> {
        let key = format!(
            "forward  {:<15} {:?}",
            op.name(),
            self.slots[op.vars()[0].0].shape
        );
        self.profile_mark(key);
        if self.recording {
            self.ops.push(op);
        }
        self.flush_if_long()
    }

    /// Times every op from now on: each op's kernels are submitted and waited for, and
    /// the time is added to its (pass, op, shape) line of [`Tape::profile_report`].
    /// Slows the step down; for finding slow kernels only.
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

    /// Profiled time per (pass, op, output shape), slowest first, with a total line.
    pub fn profile_report(&self) -> String {
        let Some(p) = &self.profile else {
            return "profiling was not enabled on this tape\n".into();
        };
        let mut rows: Vec<(&String, &(f64, usize))> = p.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let total: f64 = rows.iter().map(|r| r.1 .0).sum();
        let mut s = format!("{:>10} {:>6} {:>5}  op\n", "ms", "%", "calls");
        for (k, (t, n)) in rows {
            s += &format!(
                "{:>10.2} {:>5.1}% {:>5}  {k}\n",
                t * 1e3,
                100.0 * t / total,
                n
            );
        }
        s += &format!("{:>10.2} total\n", total * 1e3);
        s
    }

    /// Convolution, optionally writing into `out` (a slice of a larger buffer).
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        let [n, _, h, wd] = crate::gpu::nchw(name, "x", self.value(x)?)?;
        let [co, _, kh, kw] = crate::gpu::nchw(name, "weight", self.value(w)?)?;
        let (oh, ow) = conv2d::output_size(spec, h, wd, kh, kw)?;
        let _ = (xs, ws);
        let y = self.output(out, &[n, co, oh, ow], name)?;
        let bt = match b {
            Some(b) => Some(self.value(b)?.clone()),
            None => None,
        };
        let (yt, xt, wt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(w)?.clone(),
        );
        conv2d::forward(self.enc(), &yt, &xt, &wt, bt.as_ref(), None, spec)?;
        let mut ins = vec![x, w];
        ins.extend(b);
        self.mark(y, &ins);
        self.record(Op::Conv2d { y, x, w, b, spec })?;
        Ok(y)
    }

    /// Batch norm (+ReLU when `cfg.relu`). Training mode uses batch statistics and updates
    /// the running ones; inference mode uses the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        training: bool,
        name: &str,
    ) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let c = shape.get(1).copied().unwrap_or(0);
        let y = self.output(None, &shape, name)?;
        let (yt, xt, gt, bt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(gamma)?.clone(),
            self.value(beta)?.clone(),
        );
        if training {
            let mean = self.gpu.zeros(&[c], &format!("{name}.mean"))?;
            let inv_std = self.gpu.zeros(&[c], &format!("{name}.inv_std"))?;
            batch_norm::forward_train(
                self.enc(),
                Some(&yt),
                &mean,
                &inv_std,
                running.mean,
                running.var,
                &xt,
                &gt,
                &bt,
                cfg,
            )?;
            self.mark(y, &[x, gamma, beta]);
            self.record(Op::BatchNorm {
                y,
                x,
                gamma,
                beta,
                mean,
                inv_std,
                cfg,
            })?;
        } else {
            batch_norm::forward_eval(
                self.enc(),
                &yt,
                &xt,
                &gt,
                &bt,
                running.mean,
                running.var,
                cfg,
            )?;
        }
        Ok(y)
    }

    /// Training-mode BN → ReLU → conv without storing the BN+ReLU output (memory-efficient
    /// dense layers). Statistics are computed once, here; backward recomputes the
    /// normalised input on the fly and never touches the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_relu_conv(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        running: RunningStats,
        cfg: BnConfig,
        w: Var,
        spec: Conv2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, c, h, wd] = crate::gpu::nchw(name, "x", self.value(x)?)?;
        let [co, _, kh, kw] = crate::gpu::nchw(name, "weight", self.value(w)?)?;
        let (oh, ow) = conv2d::output_size(spec, h, wd, kh, kw)?;
        let y = self.output(out, &[n, co, oh, ow], name)?;
        let g = self.gpu;
        let mean = g.zeros(&[c], &format!("{name}.mean"))?;
        let inv_std = g.zeros(&[c], &format!("{name}.inv_std"))?;
        let scale = g.zeros(&[c], &format!("{name}.scale"))?;
        let shift = g.zeros(&[c], &format!("{name}.shift"))?;
        let (yt, xt, gt, bt, wt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(gamma)?.clone(),
            self.value(beta)?.clone(),
            self.value(w)?.clone(),
        );
        let cfg = BnConfig { relu: true, ..cfg };
        let enc = self.enc();
        batch_norm::forward_train(
            enc,
            None,
            &mean,
            &inv_std,
            running.mean,
            running.var,
            &xt,
            &gt,
            &bt,
            cfg,
        )?;
        batch_norm::fold_scale_shift(enc, &scale, &shift, &gt, &bt, &mean, &inv_std)?;
        let pro = BnReluPrologue {
            scale: &scale,
            shift: &shift,
        };
        conv2d::forward(enc, &yt, &xt, &wt, None, Some(pro), spec)?;
        self.mark(y, &[x, gamma, beta, w]);
        self.record(Op::BnReluConv {
            y,
            x,
            gamma,
            beta,
            w,
            mean,
            inv_std,
            scale,
            shift,
            cfg,
            spec,
        })?;
        Ok(y)
    }

    pub fn relu(&mut self, x: Var, name: &str) -> Result<Var> {
        let shape = self.shape(x).to_vec();
        let y = self.output(None, &shape, name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        relu::forward(self.enc(), &yt, &xt)?;
        self.mark(y, &[x]);
        self.record(Op::Relu { y, x })?;
        Ok(y)
    }

    /// Max pooling (padding acts as -inf), optionally writing into `out`. A recording tape
    /// saves each window's argmax for backward (x itself is not kept for the pool).
    pub fn max_pool2d(
        &mut self,
        x: Var,
        spec: Pool2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, c, h, w] = crate::gpu::nchw(name, "x", self.value(x)?)?;
        let (oh, ow) = max_pool2d::output_size(spec, h, w)?;
        let y = self.output(out, &[n, c, oh, ow], name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        // An inference tape never runs backward: no indices.
        let indices = if self.recording {
            let label = format!("{name}.indices");
            Some(max_pool2d::alloc_indices(self.gpu, [n, c, oh, ow], &label)?)
        } else {
            None
        };
        max_pool2d::forward(self.enc(), &yt, indices.as_ref(), &xt, spec)?;
        self.mark(y, &[x]);
        self.record(Op::MaxPool {
            y,
            x,
            indices,
            spec,
        })?;
        Ok(y)
    }

    /// Average pooling (padding counted in the divisor), optionally writing into `out`.
    pub fn avg_pool2d(
        &mut self,
        x: Var,
        spec: Pool2dSpec,
        out: Option<Var>,
        name: &str,
    ) -> Result<Var> {
        let [n, c, h, w] = crate::gpu::nchw(name, "x", self.value(x)?)?;
        let (oh, ow) = avg_pool2d::output_size(spec, h, w)?;
        let y = self.output(out, &[n, c, oh, ow], name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        avg_pool2d::forward(self.enc(), &yt, &xt, spec)?;
        self.mark(y, &[x]);
        self.record(Op::AvgPool { y, x, spec })?;
        Ok(y)
    }

    /// Mean over H×W: (N, C, H, W) → (N, C).
    pub fn global_avg_pool(&mut self, x: Var, name: &str) -> Result<Var> {
        let [n, c, _, _] = crate::gpu::nchw(name, "x", self.value(x)?)?;
        let y = self.output(None, &[n, c], name)?;
        let (yt, xt) = (self.value(y)?.clone(), self.value(x)?.clone());
        global_avg_pool::forward(self.enc(), &yt, &xt)?;
        self.mark(y, &[x]);
        self.record(Op::GlobalAvgPool { y, x })?;
        Ok(y)
    }

    /// `x · Wᵀ + b`.
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>, name: &str) -> Result<Var> {
        let n = self.shape(x).first().copied().unwrap_or(0);
        let o = self.shape(w).first().copied().unwrap_or(0);
        let y = self.output(None, &[n, o], name)?;
        let bt = match b {
            Some(b) => Some(self.value(b)?.clone()),
            None => None,
        };
        let (yt, xt, wt) = (
            self.value(y)?.clone(),
            self.value(x)?.clone(),
            self.value(w)?.clone(),
        );
        linear::forward(self.enc(), &yt, &xt, &wt, bt.as_ref())?;
        let mut ins = vec![x, w];
        ins.extend(b);
        self.mark(y, &ins);
        self.record(Op::Linear { y, x, w, b })?;
        Ok(y)
    }

    /// Channel concatenation into a new buffer (the plain, copying DenseNet).
    pub fn concat(&mut self, inputs: &[Var], name: &str) -> Result<Var> {
        let first = self
            .shape(
                *inputs
                    .first()
                    .ok_or_else(|| GpuError::Shape(format!("{name}: no inputs")))?,
            )
            .to_vec();
        let c: usize = inputs
            .iter()
            .map(|v| self.shape(*v).get(1).copied().unwrap_or(0))
            .sum();
        let mut shape = first.clone();
        if shape.len() != 4 {
            return Err(GpuError::Shape(format!(
                "{name}: inputs must be 4-D, got {first:?}"
            )));
        }
        shape[1] = c;
        let y = self.output(None, &shape, name)?;
        let yt = self.value(y)?.clone();
        let ts: Vec<Tensor> = inputs
            .iter()
            .map(|v| self.value(*v).cloned())
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        concat::forward(self.enc(), &yt, &refs)?;
        self.mark(y, inputs);
        self.record(Op::Concat {
            y,
            inputs: inputs.to_vec(),
        })?;
        Ok(y)
    }

    /// Mean softmax cross-entropy. Returns `(loss [1], probabilities [N, K])`.
    pub fn cross_entropy(
        &mut self,
        logits: Var,
        labels: &Tensor,
        name: &str,
    ) -> Result<(Var, Tensor)> {
        let shape = self.shape(logits).to_vec();
        let loss = self.output(None, &[1], name)?;
        let probs = self.gpu.zeros(&shape, &format!("{name}.probs"))?;
        let (lt, xt) = (self.value(loss)?.clone(), self.value(logits)?.clone());
        cross_entropy::forward(self.enc(), &lt, &probs, &xt, labels)?;
        self.mark(loss, &[logits]);
        self.record(Op::CrossEntropy {
            loss,
            logits,
            probs: probs.clone(),
            labels: labels.clone(),
        })?;
        Ok((loss, probs))
    }

    /// Gradient buffer of `v`, created zeroed on first use (a slice's gradient is the
    /// same slice of its parent's gradient).
    fn grad(&mut self, v: Var) -> Result<Tensor> {
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
    fn grad_if(&mut self, v: Var) -> Result<Option<Tensor>> {
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
        if !self.recording {
            return Err(GpuError::Shape(
                "tape: backward on an inference tape".into(),
            ));
        }
        if self.backward_done {
            return Err(GpuError::Shape(
                "tape: backward called twice; values were released after the first call — record a new tape".into(),
            ));
        }
        if self.shape(loss).iter().product::<usize>() != 1 {
            return Err(GpuError::Shape(format!(
                "tape: backward needs a scalar loss, {} has shape {:?}",
                self.name(loss),
                self.shape(loss)
            )));
        }
        self.backward_done = true;
        // For each variable (and, through slices, its parents): the earliest op whose
        // backward touches it, after which its gradient is no longer needed, and the
        // earliest op whose backward reads its value. A value no backward reads (a max
        // pool's input, a ReLU's output, ...) is released before the first backward op.
        let earliest = |uses: &dyn Fn(&Op) -> Vec<Var>| {
            let mut first = vec![usize::MAX; self.slots.len()];
            for (i, op) in self.ops.iter().enumerate() {
                for v in uses(op) {
                    let mut cur = Some(v);
                    while let Some(c) = cur {
                        first[c.0] = first[c.0].min(i);
                        cur = self.slots[c.0].parent.map(|(p, _)| p);
                    }
                }
            }
            first
        };
        let first_use = earliest(&Op::vars);
        let first_read = earliest(&Op::value_reads);
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
        let ops = std::mem::take(&mut self.ops);
        for (i, op) in ops.into_iter().enumerate().rev() {
            // Only ops whose output needs a gradient do anything.
            let key = format!(
                "backward {:<15} {:?}",
                op.name(),
                self.slots[op.vars()[0].0].shape
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
            // Submit now and then so released buffers can really be reused.
            self.flush_if_long()?;
        }
        self.flush()
    }

    fn backward_op(&mut self, op: Op, loss: Var) -> Result<()> {
        let out = op.vars()[0];
        if !self.slots[out.0].requires_grad {
            return Ok(());
        }
        let d_out = if out == loss {
            None
        } else {
            Some(self.grad(out)?)
        };
        match op {
            Op::CrossEntropy {
                logits,
                probs,
                labels,
                ..
            } => {
                if let Some(d) = self.grad_if(logits)? {
                    cross_entropy::backward(self.enc(), &d, &probs, &labels, 1.0)?;
                }
            }
            Op::Conv2d { x, w, b, spec, .. } => {
                let d_y = d_out.expect("conv output grad");
                let xt = self.value(x)?.clone();
                let wt = self.value(w)?.clone();
                let d_w = self.grad_if(w)?;
                let d_b = match b {
                    Some(b) => self.grad_if(b)?,
                    None => None,
                };
                let d_x = self.grad_if(x)?;
                if let Some(d_w) = d_w {
                    conv2d::backward_weight(self.enc(), &d_w, d_b.as_ref(), &d_y, &xt, None, spec)?;
                }
                if let Some(d_x) = d_x {
                    conv2d::backward_data(self.enc(), &d_x, &d_y, &wt, spec)?;
                }
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                mean,
                inv_std,
                cfg,
                ..
            } => {
                let d_y = d_out.expect("bn output grad");
                self.bn_backward(x, gamma, beta, &d_y, &mean, &inv_std, cfg)?;
            }
            Op::BnReluConv {
                x,
                gamma,
                beta,
                w,
                mean,
                inv_std,
                scale,
                shift,
                cfg,
                spec,
                ..
            } => {
                let d_y = d_out.expect("conv output grad");
                let (xt, wt) = (self.value(x)?.clone(), self.value(w)?.clone());
                let pro = BnReluPrologue {
                    scale: &scale,
                    shift: &shift,
                };
                let d_w = self.grad(w)?;
                conv2d::backward_weight(self.enc(), &d_w, None, &d_y, &xt, Some(pro), spec)?;
                // Gradient w.r.t. the (never stored) BN+ReLU output: one transient buffer.
                let d_act = self.gpu.zeros(&xt.shape, "d_bn_relu (transient)")?;
                conv2d::backward_data(self.enc(), &d_act, &d_y, &wt, spec)?;
                self.bn_backward(x, gamma, beta, &d_act, &mean, &inv_std, cfg)?;
            }
            Op::Relu { x, .. } => {
                let d_y = d_out.expect("relu output grad");
                if let Some(d_x) = self.grad_if(x)? {
                    let xt = self.value(x)?.clone();
                    relu::backward(self.enc(), &d_x, &xt, &d_y)?;
                }
            }
            Op::MaxPool {
                x, indices, spec, ..
            } => {
                let d_y = d_out.expect("pool output grad");
                if let Some(d_x) = self.grad_if(x)? {
                    let indices = indices.ok_or_else(|| {
                        GpuError::Shape("tape: max_pool2d indices were not saved".into())
                    })?;
                    max_pool2d::backward(self.enc(), &d_x, &d_y, &indices, spec)?;
                }
            }
            Op::AvgPool { x, spec, .. } => {
                let d_y = d_out.expect("pool output grad");
                if let Some(d_x) = self.grad_if(x)? {
                    avg_pool2d::backward(self.enc(), &d_x, &d_y, spec)?;
                }
            }
            Op::GlobalAvgPool { x, .. } => {
                let d_y = d_out.expect("pool output grad");
                if let Some(d_x) = self.grad_if(x)? {
                    global_avg_pool::backward(self.enc(), &d_x, &d_y)?;
                }
            }
            Op::Linear { x, w, b, .. } => {
                let d_y = d_out.expect("linear output grad");
                let (xt, wt) = (self.value(x)?.clone(), self.value(w)?.clone());
                let d_x = self.grad_if(x)?;
                let d_w = self.grad(w)?;
                let d_b = match b {
                    Some(b) => self.grad_if(b)?,
                    None => None,
                };
                linear::backward(self.enc(), d_x.as_ref(), &d_w, d_b.as_ref(), &d_y, &xt, &wt)?;
            }
            Op::Concat { inputs, .. } => {
                let d_y = d_out.expect("concat output grad");
                let mut start = 0;
                for v in inputs {
                    let c = self.shape(v)[1];
                    if let Some(d_x) = self.grad_if(v)? {
                        let part = d_y.channels(start, c)?;
                        concat::copy(self.enc(), &d_x, &part, true)?;
                    }
                    start += c;
                }
            }
        }
        Ok(())
    }

    /// Batch-norm backward from the op's output gradient `d_y`, accumulating into the
    /// gradients of x, gamma and beta.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &mut self,
        x: Var,
        gamma: Var,
        beta: Var,
        d_y: &Tensor,
        mean: &Tensor,
        inv_std: &Tensor,
        cfg: BnConfig,
    ) -> Result<()> {
        let (xt, gt, bt) = (
            self.value(x)?.clone(),
            self.value(gamma)?.clone(),
            self.value(beta)?.clone(),
        );
        let d_g = self.grad(gamma)?;
        let d_b = self.grad(beta)?;
        let d_x = match self.grad_if(x)? {
            Some(d) => d,
            // BN's backward kernel always writes d_x; give it a scratch buffer.
            None => self.gpu.zeros(&xt.shape, "unused d_x")?,
        };
        batch_norm::backward(
            self.enc(),
            &d_x,
            &d_g,
            &d_b,
            d_y,
            &xt,
            &gt,
            &bt,
            mean,
            inv_std,
            cfg,
        )
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
            let vars = op.vars();
            let out = &self.slots[vars[0].0];
            let ins: Vec<&str> = vars[1..]
                .iter()
                .map(|v| self.slots[v.0].name.as_str())
                .collect();
            writeln!(
                f,
                "#{i:<4} {:<15} {} {:?} <- {}",
                op.name(),
                out.name,
                out.shape,
                ins.join(", ")
            )?;
        }
        Ok(())
    }
}
