//! Adam over all parameters (one `adam` kernel launch per parameter tensor) and
//! learning-rate schedules.

use crate::gpu::{Encoder, Gpu, Result, Tensor};
use crate::ops::adam::{self, AdamConfig};
use crate::tape::Param;
use crate::weights::{Entry, TensorFile, TensorMismatch, WeightsError};

/// Learning rate as a function of the step (0-based step count before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `lr / (1 + decay * step)` — what Keras' `decay=` argument did.
    InverseTime {
        decay: f64,
    },
    /// Half-cosine from `lr` to `min_lr` over `total_steps`, after `warmup_steps` of
    /// linear warm-up.
    Cosine {
        total_steps: usize,
        warmup_steps: usize,
        min_lr: f64,
    },
}

impl Schedule {
    pub fn lr(&self, base: f64, step: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::InverseTime { decay } => base / (1.0 + decay * step as f64),
            Schedule::Cosine {
                total_steps,
                warmup_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1);
                let t = ((step - warmup_steps) as f64 / span as f64).min(1.0);
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Adam / AdamW state for a list of parameters.
pub struct Adam {
    pub config: AdamConfig,
    pub base_lr: f64,
    pub schedule: Schedule,
    /// Updates done so far.
    pub step: u32,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    pub fn new(
        gpu: &Gpu,
        params: &[Param],
        config: AdamConfig,
        schedule: Schedule,
    ) -> Result<Adam> {
        let mut m = Vec::new();
        let mut v = Vec::new();
        for p in params {
            m.push(gpu.zeros(&p.value.shape, &format!("optim.m.{}", p.name))?);
            v.push(gpu.zeros(&p.value.shape, &format!("optim.v.{}", p.name))?);
        }
        Ok(Adam {
            base_lr: config.lr as f64,
            config,
            schedule,
            step: 0,
            m,
            v,
        })
    }

    /// Adam's first and second moments of every parameter, in parameter order.
    pub fn moments(&self) -> impl Iterator<Item = &Tensor> {
        self.m.iter().chain(&self.v)
    }

    /// Learning rate the next update will use.
    pub fn current_lr(&self) -> f64 {
        self.schedule.lr(self.base_lr, self.step as usize)
    }

    /// Records one update of every trainable parameter from its accumulated gradient,
    /// then zeroes the gradients for the next step. Frozen parameters are left untouched
    /// (weight decay included).
    pub fn update(&mut self, enc: &mut Encoder, params: &[Param]) -> Result<()> {
        let cfg = AdamConfig {
            lr: self.current_lr() as f32,
            ..self.config
        };
        self.step += 1;
        let trainable = params.iter().zip(&self.m).zip(&self.v);
        for ((p, m), v) in trainable.filter(|((p, _), _)| p.trainable) {
            adam::step(enc, &p.value, m, v, &p.grad, cfg, self.step)?;
            enc.clear(&p.grad);
        }
        Ok(())
    }

    /// Optimizer state for a checkpoint (`optim.m.<name>`, `optim.v.<name>`, `optim.step`).
    pub async fn state_dict(&self, gpu: &Gpu, params: &[Param]) -> Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        for ((p, m), v) in params.iter().zip(&self.m).zip(&self.v) {
            out.push((
                format!("optim.m.{}", p.name),
                Entry::F32(m.shape.clone(), gpu.read(m).await?),
            ));
            out.push((
                format!("optim.v.{}", p.name),
                Entry::F32(v.shape.clone(), gpu.read(v).await?),
            ));
        }
        out.push((
            "optim.step".into(),
            Entry::I64(vec![], vec![self.step as i64]),
        ));
        Ok(out)
    }

    /// Restores the state written by [`Adam::state_dict`].
    pub fn load(
        &mut self,
        gpu: &Gpu,
        params: &[Param],
        file: &TensorFile,
    ) -> std::result::Result<(), WeightsError> {
        for ((p, m), v) in params.iter().zip(&self.m).zip(&self.v) {
            for (t, kind) in [(m, "m"), (v, "v")] {
                let name = format!("optim.{kind}.{}", p.name);
                let h = file.get(&name)?;
                if h.shape != t.shape {
                    return Err(WeightsError::Mismatch {
                        path: file.path.clone(),
                        problems: vec![TensorMismatch::Shape {
                            name,
                            file: h.shape.clone(),
                            model: t.shape.clone(),
                        }],
                        total: 1,
                    });
                }
                gpu.write(t, &h.to_f32())?;
            }
        }
        self.step = file.get("optim.step")?.data[0] as u32;
        Ok(())
    }
}
