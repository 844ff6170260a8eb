//! `Tensor`: an f32 device buffer plus an NCHW shape, possibly a channel slice of a
//! larger buffer (how dense blocks concatenate without copying).

use std::sync::Arc;

use super::{Gpu, GpuError, MemoryStats, Result, ShapeProblem};

/// One device allocation. Dropping the last handle frees it (and its accounting).
pub struct Storage {
    pub buffer: wgpu::Buffer,
    /// Number of f32 elements.
    pub numel: usize,
    pub label: String,
    memory: Arc<MemoryStats>,
}

impl Storage {
    /// Allocates `numel` zeroed f32 values, checking the adapter's binding limit.
    pub fn new(gpu: &Gpu, numel: usize, label: &str) -> Result<Storage> {
        gpu.check_lost()?;
        let bytes = (numel.max(1) * 4) as u64;
        let limit = gpu.max_binding_bytes();
        if bytes > limit {
            return Err(GpuError::BufferTooLarge {
                tensor: label.to_string(),
                bytes,
                limit,
            });
        }
        // Inside a dry run the buffer is a placeholder; the accounting gets the full size.
        let memory = gpu.active_memory();
        let size = if gpu.is_dry() { 4 } else { bytes };
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        memory.alloc(bytes, label);
        Ok(Storage {
            buffer,
            numel,
            label: label.to_string(),
            memory,
        })
    }

    pub fn bytes(&self) -> u64 {
        (self.numel.max(1) * 4) as u64
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.memory.free(self.bytes());
    }
}

/// A view of f32 values in a `Storage`.
///
/// Element `(n, i)` — `i` the flat index within one batch item — lives at
/// `offset + n * batch_stride + i`. A whole buffer has `offset = 0` and
/// `batch_stride = numel / N`; a channel slice `[c0, c0 + len)` of an NCHW buffer keeps
/// the parent's `batch_stride` and has `offset = c0 * H * W`.
#[derive(Clone)]
pub struct Tensor {
    pub storage: Arc<Storage>,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub batch_stride: usize,
}

impl Tensor {
    /// A view covering a whole storage with the given shape.
    pub fn contiguous(storage: Arc<Storage>, shape: &[usize]) -> Tensor {
        let inner = shape.iter().skip(1).product();
        Tensor {
            storage,
            shape: shape.to_vec(),
            offset: 0,
            batch_stride: inner,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements of one batch item (`C*H*W` for NCHW).
    pub fn item_numel(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    pub fn label(&self) -> &str {
        &self.storage.label
    }

    /// True if the view's elements are one dense run.
    pub fn is_contiguous(&self) -> bool {
        self.shape.first().copied().unwrap_or(1) <= 1 || self.batch_stride == self.item_numel()
    }

    /// True if both views share one allocation.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Channels `[start, start + len)` of an NCHW tensor, sharing its storage.
    pub fn channels(&self, start: usize, len: usize) -> Result<Tensor> {
        let [n, c, h, w] = super::nchw("channel slice", self.label(), self)?;
        if start + len > c {
            return Err(GpuError::shape(
                "channel slice",
                ShapeProblem::OutOfRange {
                    tensor: self.label().to_string(),
                    dim: "channels",
                    start,
                    end: start + len,
                    size: c,
                },
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: vec![n, len, h, w],
            offset: self.offset + start * h * w,
            batch_stride: self.batch_stride,
        })
    }

    /// The same elements under another shape (contiguous views only).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let tensor = || self.label().to_string();
        if !self.is_contiguous() {
            let shape = self.shape.clone();
            let problem = ShapeProblem::NotContiguous {
                tensor: tensor(),
                shape,
            };
            return Err(GpuError::shape("reshape", problem));
        }
        if shape.iter().product::<usize>() != self.numel() {
            let problem = ShapeProblem::Mismatch {
                tensor: tensor(),
                shape: self.shape.clone(),
                dim: "element count",
                other: "the new shape".into(),
                other_shape: shape.to_vec(),
            };
            return Err(GpuError::shape("reshape", problem));
        }
        let mut t = Tensor::contiguous(self.storage.clone(), shape);
        t.offset = self.offset;
        Ok(t)
    }

    /// Picks this view's elements out of a copy of its whole storage.
    pub(crate) fn gather(&self, all: &[f32]) -> Vec<f32> {
        let n = self.shape.first().copied().unwrap_or(1);
        let item = self.item_numel();
        if self.shape.is_empty() {
            return all[self.offset..self.offset + 1].to_vec();
        }
        let mut out = Vec::with_capacity(self.numel());
        for b in 0..n {
            let s = self.offset + b * self.batch_stride;
            out.extend_from_slice(&all[s..s + item]);
        }
        out
    }

    /// Downloads the view's values (convenience for `gpu.download`, native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.download(self)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?} {:?}", self.label(), self.shape)?;
        if !self.is_contiguous() || self.offset != 0 {
            write!(
                f,
                " offset={} batch_stride={}",
                self.offset, self.batch_stride
            )?;
        }
        write!(f, ")")
    }
}
