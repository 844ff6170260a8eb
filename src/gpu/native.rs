//! Waits that block the calling thread, for native programs. A browser, where nothing may
//! block, awaits [`Gpu::request`], [`Gpu::read`] and [`Staged::read`] instead. `.ci/run`
//! keeps `pollster` and `PollType::Wait` in this file and in `src/bin/`.

use super::{DeviceOptions, DeviceWork, Gpu, GpuError, Result, Staged, Submitted, Tensor};

impl Gpu {
    /// Opens the preferred adapter with the default options (see [`Gpu::open`]).
    pub fn new() -> Result<Gpu> {
        Self::open(&DeviceOptions::default())
    }

    /// [`Gpu::request`], waited for on this thread.
    pub fn open(options: &DeviceOptions) -> Result<Gpu> {
        pollster::block_on(Self::request(options))
    }

    /// [`Gpu::request_for_local_rank`], waited for on this thread.
    pub fn open_for_local_rank(local_rank: usize, options: &DeviceOptions) -> Result<Gpu> {
        pollster::block_on(Self::request_for_local_rank(local_rank, options))
    }

    /// [`Gpu::read`], waited for on this thread: a tensor's values once all work submitted
    /// before the call has finished.
    pub fn download(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read(tensor))
    }

    /// [`Gpu::read_many`], waited for on this thread.
    pub fn download_many(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read_many(tensors))
    }

    /// Blocks until all submitted work has finished; reports device errors.
    pub fn sync(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.device_failure(DeviceWork::Waiting, e))?;
        self.active_memory().finished(None);
        self.check_device_error()
    }

    /// Blocks until the given submission (and every earlier one) has finished, which frees
    /// the buffers dropped before it; reports device errors.
    pub fn wait_for(&self, submitted: Submitted) -> Result<()> {
        self.wait_for_index(submitted.index)?;
        self.active_memory().finished(Some(submitted.seq));
        self.check_device_error()
    }

    /// Polls the device until submission `index` has finished, which also runs the
    /// callbacks of the mappings it completes.
    pub(super) fn wait_for_index(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| self.device_failure(DeviceWork::Waiting, e))
    }
}

impl Staged {
    /// [`Staged::read`], waited for on this thread (any thread: the bucket thread of a
    /// data-parallel run reads its sums here).
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(gpu))
    }
}

/// The validation error a pipeline's creation raised, if any.
pub(super) fn pipeline_error(scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
    pollster::block_on(scope.pop())
}

/// A read-back whose mapping did not complete although its copy has finished.
pub(super) fn not_mapped(gpu: &Gpu) -> GpuError {
    gpu.unless_lost(GpuError::ReadBackNotMapped)
}
