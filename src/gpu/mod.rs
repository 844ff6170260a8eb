//! Device layer: adapter selection, tensors, a pipeline cache and kernel launches.
//!
//! Everything that talks to `wgpu` directly lives here; the ops in `crate::ops`
//! only describe *what* to launch (shader, entry point, bindings, grid).

mod completion;
mod error;
#[cfg(not(target_arch = "wasm32"))]
mod native;
mod tensor;

pub use error::{
    Bound, DeviceWork, ForcedKernelError, GpuError, GradientTo, KernelNeeds, Limit, LimitError,
    NativeFeature, Result, ShapeError, ShapeProblem, TapeError,
};
pub use tensor::{Storage, Tensor};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest number of workgroups a dispatch may have in one dimension (WebGPU limit).
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65_535;

/// A WGSL source file with a stable name (used as the pipeline-cache key and in labels).
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// How a binding is declared in WGSL. Binding `i` of a launch is `@binding(i)` of group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    Uniform,
    Read,
    ReadWrite,
}

/// One buffer bound to a launch, in `@binding` order.
pub enum Arg<'a> {
    /// The op's `#[repr(C)]` parameter block, uploaded as a small uniform buffer.
    Uniform(&'a [u8]),
    /// `var<storage, read>`.
    Read(&'a Tensor),
    /// `var<storage, read_write>`.
    Write(&'a Tensor),
}

impl<'a> Arg<'a> {
    /// The bindings of most kernels, in order: the `#[repr(C)]` uniform `params`, then the
    /// tensors in `reads`, then those in `writes`.
    pub fn bindings<P: bytemuck::Pod>(
        params: &'a P,
        reads: &[&'a Tensor],
        writes: &[&'a Tensor],
    ) -> Vec<Arg<'a>> {
        let mut args = Vec::with_capacity(1 + reads.len() + writes.len());
        args.push(Arg::Uniform(bytemuck::bytes_of(params)));
        args.extend(reads.iter().map(|t| Arg::Read(t)));
        args.extend(writes.iter().map(|t| Arg::Write(t)));
        args
    }

    fn kind(&self) -> BindingKind {
        match self {
            Arg::Uniform(_) => BindingKind::Uniform,
            Arg::Read(_) => BindingKind::Read,
            Arg::Write(_) => BindingKind::ReadWrite,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: String,
    overrides: Vec<(String, u64)>,
    bindings: Vec<BindingKind>,
}

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Byte counters for the crate's own device allocations.
///
/// A buffer dropped on the host stays allocated until the submitted work that uses it has
/// finished, so dropped bytes count as *held* until a wait covers the submission that
/// followed the drop ([`Gpu::wait_for`], [`Gpu::sync`]).
#[derive(Default)]
pub struct MemoryStats {
    /// Bytes of buffers the crate still has handles to.
    live: AtomicU64,
    /// Bytes dropped since the last submission.
    dropped: AtomicU64,
    /// Bytes ever allocated.
    allocated: AtomicU64,
    /// Per submission (sequence number): the bytes dropped before it, freed once it ends.
    in_flight: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// Highest `held_bytes` seen.
    peak: AtomicU64,
    /// Highest `live_bytes` seen.
    peak_live: AtomicU64,
    /// The largest single allocation since creation or the last `reset_peak`: bytes, label.
    largest: Mutex<Option<(u64, String)>>,
}

impl MemoryStats {
    fn alloc(&self, bytes: u64, label: &str) {
        {
            let mut largest = self.largest.lock().unwrap();
            if largest.as_ref().is_none_or(|(b, _)| bytes > *b) {
                *largest = Some((bytes, label.to_string()));
            }
        }
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_live.fetch_max(live, Ordering::Relaxed);
        self.peak.fetch_max(self.held_bytes(), Ordering::Relaxed);
    }
    fn free(&self, bytes: u64) {
        self.dropped.fetch_add(bytes, Ordering::Relaxed);
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
    /// Submission `seq` takes the bytes dropped since the previous one.
    fn submitted(&self, seq: u64) {
        let bytes = self.dropped.swap(0, Ordering::Relaxed);
        self.in_flight.lock().unwrap().push_back((seq, bytes));
    }
    /// Every submission up to `seq` (all of them for `None`) has finished. Bytes dropped
    /// since the last submission stay held: an encoder not yet submitted may use them.
    fn finished(&self, seq: Option<u64>) {
        let mut q = self.in_flight.lock().unwrap();
        while q
            .front()
            .is_some_and(|&(s, _)| seq.is_none_or(|done| s <= done))
        {
            q.pop_front();
        }
    }
    /// Bytes allocated since the device was opened (freed or not).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }
    /// Bytes of device buffers currently alive.
    pub fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
    /// Bytes the device may still hold: live buffers plus dropped ones that submitted work
    /// may still use.
    pub fn held_bytes(&self) -> u64 {
        let queued: u64 = self.in_flight.lock().unwrap().iter().map(|&(_, b)| b).sum();
        self.live_bytes() + self.dropped.load(Ordering::Relaxed) + queued
    }
    /// Highest `held_bytes` seen since creation or the last `reset_peak`.
    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    /// Highest `live_bytes` seen since creation or the last `reset_peak`: what the crate's
    /// own handles needed at most, whatever the device still held for in-flight work.
    pub fn peak_live_bytes(&self) -> u64 {
        self.peak_live.load(Ordering::Relaxed)
    }
    /// The largest single buffer allocated since creation or the last `reset_peak`: its
    /// size in bytes and its label.
    pub fn largest_buffer(&self) -> Option<(u64, String)> {
        self.largest.lock().unwrap().clone()
    }
    pub fn reset_peak(&self) {
        self.peak.store(self.held_bytes(), Ordering::Relaxed);
        self.peak_live.store(self.live_bytes(), Ordering::Relaxed);
        *self.largest.lock().unwrap() = None;
    }
}

/// Tensors being read back ([`Gpu::stage_read`]).
pub struct Staged {
    staging: wgpu::Buffer,
    index: wgpu::SubmissionIndex,
    mapped: completion::Completion<std::result::Result<(), wgpu::BufferAsyncError>>,
    /// What was copied, in order (for the view of each).
    views: Vec<Tensor>,
}

impl Staged {
    /// Each tensor's values, once the copy has run and the staging buffer is mapped.
    /// Natively this polls the device until the copy has finished ([`Staged::wait`] blocks
    /// on it); in a browser it yields to the event loop, which maps the buffer.
    pub async fn read(self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let Staged {
            staging,
            index,
            mapped,
            views,
        } = self;
        #[cfg(not(target_arch = "wasm32"))]
        let mapped = {
            gpu.wait_for_index(index)?;
            mapped.try_take().ok_or_else(|| native::not_mapped(gpu))?
        };
        #[cfg(target_arch = "wasm32")]
        let mapped = {
            let _ = index;
            mapped.await
        };
        mapped.map_err(|e| gpu.device_failure(DeviceWork::Mapping, e))?;
        gpu.check_lost()?;
        let mut out = Vec::with_capacity(views.len());
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| gpu.device_failure(DeviceWork::Reading, e))?;
            let all: &[f32] = bytemuck::cast_slice(&view);
            let mut at = 0usize;
            for t in &views {
                let n = t.storage.numel;
                out.push(t.gather(&all[at..at + n]));
                at += n;
            }
        }
        staging.unmap();
        Ok(out)
    }
}

static NEXT_GPU_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The device this thread is dry-running ([`Gpu::dry_run`]) and its accounting.
    static DRY_RUN: std::cell::RefCell<Option<(u64, Arc<MemoryStats>)>> =
        const { std::cell::RefCell::new(None) };
}

/// An adapter in one line: `name [type, backend] driver driver_info`.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} [{:?}, {:?}] {} {}",
        info.name, info.device_type, info.backend, info.driver, info.driver_info
    )
    .trim_end()
    .to_string()
}

/// A submission to wait for with `Gpu::wait_for` (native only).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub struct Submitted {
    index: wgpu::SubmissionIndex,
    seq: u64,
}

/// An open device plus everything built once for it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The device memory a run may use, where the adapter tells: its largest device-local
    /// heap, and for a CPU adapter at most the host memory available when it was opened.
    pub memory_bytes: Option<u64>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    shader_modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pub(crate) memory: Arc<MemoryStats>,
    /// Tells this device apart in [`DRY_RUN`].
    id: u64,
    device_error: Arc<Mutex<Option<String>>>,
    /// Why the device was lost, once it has been.
    lost: Arc<Mutex<Option<String>>>,
    subgroups: bool,
    /// Submissions made through [`Encoder::submit`] so far (their sequence numbers).
    submissions: AtomicU64,
}

/// How to open a device: which adapter, and whether kernels may use subgroup operations.
///
/// The crate reads no environment variable on its own; a program that offers the
/// `DENSENET_WGPU_ADAPTER` and `DENSENET_WGPU_NO_SUBGROUPS` variables (the `train` binary,
/// the benches and the tests do) builds its options with [`DeviceOptions::from_env`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Open the first adapter whose name contains this text (case-insensitive), e.g.
    /// `"llvmpipe"` or `"nvidia"`. `None` prefers a discrete GPU, then an integrated one,
    /// then any other (lavapipe is a CPU adapter).
    pub adapter: Option<String>,
    /// Let kernels use their subgroup variants where the device offers subgroups of at
    /// least 8 invocations. Off, every kernel takes its plain variant (for comparisons; the
    /// results agree within rounding).
    pub subgroups: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            adapter: None,
            subgroups: true,
        }
    }
}

/// Environment variable read by [`DeviceOptions::from_env`]: [`DeviceOptions::adapter`].
pub const ADAPTER_ENV: &str = "DENSENET_WGPU_ADAPTER";

/// Environment variable read by [`DeviceOptions::from_env`]: set, it turns
/// [`DeviceOptions::subgroups`] off.
pub const NO_SUBGROUPS_ENV: &str = "DENSENET_WGPU_NO_SUBGROUPS";

impl DeviceOptions {
    /// The first adapter whose name contains `name` (case-insensitive).
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        self.adapter = Some(name.into());
        self
    }

    /// Every kernel on its plain variant, even where the device offers subgroups.
    pub fn without_subgroups(mut self) -> Self {
        self.subgroups = false;
        self
    }

    /// The options [`ADAPTER_ENV`] and [`NO_SUBGROUPS_ENV`] ask for; the defaults where
    /// they are unset (an empty adapter name counts as unset).
    pub fn from_env() -> Self {
        DeviceOptions {
            adapter: std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty()),
            subgroups: std::env::var_os(NO_SUBGROUPS_ENV).is_none(),
        }
    }
}

fn new_instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

impl Gpu {
    /// Opens the adapter `options` name, else the preferred one: a discrete GPU, then an
    /// integrated one, then any other. Asks for every limit and the subgroup feature the
    /// adapter offers.
    pub async fn request(options: &DeviceOptions) -> Result<Gpu> {
        let adapters = new_instance()
            .enumerate_adapters(wgpu::Backends::all())
            .await;
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend)
            })
            .collect();
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let adapter = match &options.adapter {
            Some(wanted) => {
                let w = wanted.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| GpuError::AdapterNotFound {
                        wanted: wanted.clone(),
                        available: names.clone(),
                    })?
            }
            None => adapters
                .into_iter()
                // GL adapters lack compute features we rely on; prefer Vulkan/Metal/DX12.
                .filter(|a| a.get_info().backend != wgpu::Backend::Gl)
                .min_by_key(|a| rank(a.get_info().device_type))
                .ok_or(GpuError::NoAdapter)?,
        };
        Self::request_on(adapter, options).await
    }

    /// The adapter for the process of local rank `local_rank` on its host in a
    /// data-parallel run: the one `options` name if they name one, else the
    /// (`local_rank` mod count)-th discrete GPU, else the preferred adapter.
    pub async fn request_for_local_rank(local_rank: usize, options: &DeviceOptions) -> Result<Gpu> {
        if options.adapter.is_some() {
            return Self::request(options).await;
        }
        let mut discrete: Vec<wgpu::Adapter> = new_instance()
            .enumerate_adapters(wgpu::Backends::all())
            .await
            .into_iter()
            .filter(|a| {
                let i = a.get_info();
                i.device_type == wgpu::DeviceType::DiscreteGpu && i.backend != wgpu::Backend::Gl
            })
            .collect();
        if discrete.is_empty() {
            return Self::request(options).await;
        }
        let pick = local_rank % discrete.len();
        Self::request_on(discrete.swap_remove(pick), options).await
    }

    /// Opens a device on `adapter` with everything it offers.
    async fn request_on(adapter: wgpu::Adapter, options: &DeviceOptions) -> Result<Gpu> {
        // Ask for everything the adapter offers: lavapipe and real GPUs allow far larger
        // buffers and more storage bindings than the WebGPU defaults. Subgroup operations,
        // when offered: some kernels have variants that share one load among 8 lanes with
        // subgroupBroadcast (see Gpu::subgroups).
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("densenet-wgpu device"),
                required_features: adapter.features() & wgpu::Features::SUBGROUP,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice {
                adapter: adapter.get_info().name,
                message: e.to_string(),
            })?;
        Ok(Self::from_device(&adapter, device, queue, options))
    }

    /// Wraps a device the caller opened on `adapter`, so an application or a web page can
    /// share its device with the crate. Kernels use the subgroup variants only if the device
    /// was opened with [`wgpu::Features::SUBGROUP`] (and `options` allow them); every launch
    /// is checked against the device's own limits.
    pub fn from_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &DeviceOptions,
    ) -> Gpu {
        let info = adapter.get_info();
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP)
            && info.subgroup_min_size >= 8
            && options.subgroups;
        let device_error = Arc::new(Mutex::new(None::<String>));
        let sink = device_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None::<String>));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *sink.lock().unwrap() = Some(format!("{reason:?}: {message}"));
        });
        let memory_bytes = device_memory_bytes(adapter, &info);
        Gpu {
            limits: device.limits(),
            device,
            queue,
            info,
            memory_bytes,
            pipelines: Mutex::new(HashMap::new()),
            shader_modules: Mutex::new(HashMap::new()),
            memory: Arc::new(MemoryStats::default()),
            id: NEXT_GPU_ID.fetch_add(1, Ordering::Relaxed),
            device_error,
            lost,
            subgroups,
            submissions: AtomicU64::new(0),
        }
    }

    /// One line naming the adapter and its driver, e.g.
    /// `llvmpipe (LLVM 15.0.6, 256 bits) [Cpu, Vulkan] Mesa 25.0.7`.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// The crate's own accounting of device memory.
    pub fn memory(&self) -> &MemoryStats {
        &self.memory
    }

    /// Largest storage buffer a kernel may bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Fails with [`GpuError::DeviceLost`] once the device is lost, else with the first
    /// device error seen since the last check (validation, OOM).
    pub fn check_device_error(&self) -> Result<()> {
        self.check_lost()?;
        let error = self.device_error.lock().unwrap().take();
        match error {
            Some(e) => {
                // A device that is being lost reports its loss only from a poll; its
                // failed calls may come first. Ask, so that the loss is what is reported.
                let _ = self.device.poll(wgpu::PollType::Poll);
                self.check_lost()?;
                Err(GpuError::Device {
                    during: DeviceWork::Running,
                    message: e,
                })
            }
            None => Ok(()),
        }
    }

    /// The device's error `message` during `during`, or [`GpuError::DeviceLost`] when the
    /// device is lost.
    fn device_failure(&self, during: DeviceWork, message: impl fmt::Display) -> GpuError {
        let message = message.to_string();
        self.unless_lost(GpuError::Device { during, message })
    }

    /// `error`, or [`GpuError::DeviceLost`] when the device is lost (a lost device makes
    /// every later wait and mapping fail; the loss is the error worth reporting).
    fn unless_lost(&self, error: GpuError) -> GpuError {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => GpuError::DeviceLost(reason),
            None => error,
        }
    }

    /// Fails with [`GpuError::DeviceLost`] once the device is lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => Err(GpuError::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// Whether the device has been lost (driver reset, GPU removed, [`wgpu::Device::destroy`]).
    pub fn is_lost(&self) -> bool {
        self.lost.lock().unwrap().is_some()
    }

    /// The accounting that allocations go to now: the dry one inside [`Gpu::dry_run`] on
    /// this thread.
    pub fn active_memory(&self) -> Arc<MemoryStats> {
        DRY_RUN
            .with(|d| {
                d.borrow()
                    .as_ref()
                    .filter(|(id, _)| *id == self.id)
                    .map(|(_, stats)| stats.clone())
            })
            .unwrap_or_else(|| self.memory.clone())
    }

    /// Whether this thread is inside [`Gpu::dry_run`] on this device.
    pub fn is_dry(&self) -> bool {
        DRY_RUN.with(|d| d.borrow().as_ref().is_some_and(|(id, _)| *id == self.id))
    }

    /// Runs `work` without running anything on the device, and returns what it would have
    /// allocated. Only this thread's calls are dry: other threads using the device at the
    /// same time are unaffected. Inside, every tensor is a placeholder: allocations are counted at their
    /// full size (and still checked against the binding limit) but take 4 bytes, launches
    /// are checked and their pipelines built but not recorded, copies, clears and writes are
    /// skipped, and read-backs return zeros. The counts follow the same rules as
    /// [`Gpu::memory`], so a training step run dry reports the peak the real step reaches.
    /// Tensors made inside must not outlive it.
    pub fn dry_run<T, E>(
        &self,
        work: impl FnOnce() -> std::result::Result<T, E>,
    ) -> (std::result::Result<T, E>, Arc<MemoryStats>) {
        let stats = Arc::new(MemoryStats::default());
        let previous = DRY_RUN.with(|d| d.borrow_mut().replace((self.id, stats.clone())));
        let out = work();
        DRY_RUN.with(|d| *d.borrow_mut() = previous);
        (out, stats)
    }

    /// Creates a zero-filled f32 tensor (wgpu zero-initialises new buffers).
    pub fn zeros(&self, shape: &[usize], label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let storage = Storage::new(self, numel, label)?;
        Ok(Tensor::contiguous(Arc::new(storage), shape))
    }

    /// Uploads `data` as a tensor of `shape`.
    pub fn upload(&self, data: &[f32], shape: &[usize], label: &str) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(GpuError::shape(
                "upload",
                ShapeProblem::ValueCount {
                    tensor: label.to_string(),
                    values: data.len(),
                    shape: shape.to_vec(),
                },
            ));
        }
        let t = self.zeros(shape, label)?;
        if !data.is_empty() && !self.is_dry() {
            self.queue
                .write_buffer(&t.storage.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// Overwrites a whole contiguous tensor with `data`.
    pub fn write(&self, tensor: &Tensor, data: &[f32]) -> Result<()> {
        if !tensor.is_contiguous() || tensor.numel() != data.len() {
            return Err(GpuError::shape(
                "write",
                if tensor.is_contiguous() {
                    ShapeProblem::ValueCount {
                        tensor: tensor.label().to_string(),
                        values: data.len(),
                        shape: tensor.shape.clone(),
                    }
                } else {
                    ShapeProblem::NotContiguous {
                        tensor: tensor.label().to_string(),
                        shape: tensor.shape.clone(),
                    }
                },
            ));
        }
        if self.is_dry() {
            return Ok(());
        }
        let offset = (tensor.offset * 4) as u64;
        self.queue
            .write_buffer(&tensor.storage.buffer, offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// A tensor's values, once all work submitted before the call has finished (natively
    /// [`Gpu::download`] blocks on it).
    pub async fn read(&self, tensor: &Tensor) -> Result<Vec<f32>> {
        let mut values = self.read_many(&[tensor]).await?;
        Ok(values.pop().unwrap_or_default())
    }

    /// Once the work submitted so far has finished; reports device errors, and the loss of
    /// a device that was lost with work in flight. Natively this is [`Gpu::sync`] (a device
    /// poll until idle, which also delivers the loss); in a browser, a read-back of nothing
    /// after that work.
    pub async fn finished(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        return self.sync();
        #[cfg(target_arch = "wasm32")]
        self.read_many(&[]).await.map(|_| ())
    }

    /// Several tensors' values with one copy pass into one staging buffer and one wait
    /// (what a bucket of gradients needs), in order.
    pub async fn read_many(&self, tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        if self.is_dry() {
            self.active_memory().finished(None);
            return Ok(tensors.iter().map(|t| vec![0.0; t.numel()]).collect());
        }
        let staged = self.stage_read(tensors)?;
        let out = staged.read(self).await?;
        self.memory.finished(None);
        self.check_device_error()?;
        Ok(out)
    }

    /// Starts reading tensors back: submits their copy into one staging buffer and asks to
    /// map it, without waiting. [`Staged::read`] (or, natively, [`Staged::wait`] on any
    /// thread) returns the values. Work submitted before this call is finished before the
    /// copy runs.
    pub fn stage_read(&self, tensors: &[&Tensor]) -> Result<Staged> {
        self.check_lost()?;
        let total: u64 = tensors.iter().map(|t| t.storage.numel as u64 * 4).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back staging"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read-back"),
            });
        let mut at = 0u64;
        let mut views = Vec::with_capacity(tensors.len());
        for t in tensors {
            let bytes = t.storage.numel as u64 * 4;
            if bytes > 0 {
                enc.copy_buffer_to_buffer(&t.storage.buffer, 0, &staging, at, bytes);
            }
            at += bytes;
            views.push((*t).clone());
        }
        let index = self.queue.submit([enc.finish()]);
        let (deliver, mapped) = completion::completion();
        staging.map_async(wgpu::MapMode::Read, .., move |r| deliver.send(r));
        Ok(Staged {
            staging,
            index,
            mapped,
            views,
        })
    }

    /// Starts recording GPU work; nothing runs until [`Encoder::submit`].
    pub fn encoder(&self, label: &str) -> Encoder<'_> {
        Encoder {
            gpu: self,
            inner: Some(
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) }),
            ),
            launches: 0,
            subgroups: self.subgroups,
        }
    }

    /// Whether kernels may use their subgroup variants here: the device offers subgroup
    /// operations with subgroups of at least 8 invocations, and [`DeviceOptions::subgroups`]
    /// allowed them.
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// Workgroup grid for `total` workgroups, folded into y when x would exceed 65,535.
    /// Kernels rebuild the linear index as `wg.x + wg.y * num_workgroups.x`.
    pub fn grid_1d(total_workgroups: u32) -> [u32; 3] {
        if total_workgroups <= MAX_WORKGROUPS_PER_DIM {
            [total_workgroups.max(1), 1, 1]
        } else {
            let y = total_workgroups.div_ceil(MAX_WORKGROUPS_PER_DIM);
            [total_workgroups.div_ceil(y), y, 1]
        }
    }

    fn shader_module(&self, shader: &Shader) -> Arc<wgpu::ShaderModule> {
        let mut modules = self.shader_modules.lock().unwrap();
        modules
            .entry(shader.name)
            .or_insert_with(|| {
                Arc::new(
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name),
                            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                        }),
                )
            })
            .clone()
    }

    fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        overrides: &[(&str, f64)],
        bindings: &[BindingKind],
    ) -> Result<Arc<Pipeline>> {
        let key = PipelineKey {
            shader: shader.name,
            entry: entry.to_string(),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
            bindings: bindings.to_vec(),
        };
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.shader_module(shader);
        let label = format!("{}::{}", shader.name, entry);
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match kind {
                    BindingKind::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    BindingKind::Read | BindingKind::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *kind == BindingKind::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        // Natively a shader or validation error comes back here, typed. In a browser nothing
        // may wait for it: it reaches the uncaptured-error handler, and the next
        // check_device_error reports it.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: overrides,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = native::pipeline_error(scope) {
            return Err(GpuError::Pipeline {
                name: label,
                message: e.to_string(),
            });
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        self.pipelines.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }

    /// Number of distinct pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }
}

/// A command encoder: ops record launches into it; `submit` hands them to the queue.
pub struct Encoder<'g> {
    gpu: &'g Gpu,
    inner: Option<wgpu::CommandEncoder>,
    launches: usize,
    subgroups: bool,
}

/// What to launch: a shader entry point, its override constants, its bindings and grid.
pub struct Launch<'a> {
    pub shader: &'a Shader,
    pub entry: &'a str,
    pub overrides: &'a [(&'a str, f64)],
    pub args: &'a [Arg<'a>],
    pub workgroups: [u32; 3],
}

/// The common kind of kernel: an entry point whose only override constant is its workgroup
/// size `WG`, launched by [`Encoder::launch_threads`] or [`Encoder::launch_grid`].
#[derive(Clone, Copy)]
pub struct Kernel<'a> {
    pub shader: &'a Shader,
    pub entry: &'a str,
    /// Invocations per workgroup: the value of the `WG` override.
    pub wg: u32,
}

impl<'a> Kernel<'a> {
    pub fn new(shader: &'a Shader, entry: &'a str, wg: u32) -> Self {
        Kernel { shader, entry, wg }
    }
}

/// Workgroups needed for `n` invocations of `wg` each.
pub fn groups(n: usize, wg: u32) -> u32 {
    (n as u64).div_ceil(wg as u64) as u32
}

impl Encoder<'_> {
    pub fn gpu(&self) -> &Gpu {
        self.gpu
    }

    /// Whether launches recorded here may use subgroup kernel variants
    /// ([`Gpu::subgroups`], unless turned off for this encoder).
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// Turns the subgroup kernel variants off for the launches recorded from now on (tests
    /// use it to check both variants on one device).
    pub fn disable_subgroups(&mut self) {
        self.subgroups = false;
    }

    /// Records one compute dispatch.
    pub fn launch(&mut self, l: Launch<'_>) -> Result<()> {
        let gpu = self.gpu;
        // A lost device makes wgpu's buffer helpers panic: stop at the first launch.
        gpu.check_lost()?;
        if l.workgroups.iter().any(|&w| w > MAX_WORKGROUPS_PER_DIM) {
            return Err(GpuError::limit(
                &format!("{}::{}", l.shader.name, l.entry),
                Limit::Workgroups {
                    grid: l.workgroups.map(|w| w as usize),
                },
            ));
        }
        if l.workgroups.contains(&0) {
            return Ok(());
        }
        let kinds: Vec<BindingKind> = l.args.iter().map(Arg::kind).collect();
        let max_storage = gpu.limits.max_storage_buffers_per_shader_stage as usize;
        let n_storage = kinds.iter().filter(|k| **k != BindingKind::Uniform).count();
        if n_storage > max_storage {
            return Err(GpuError::limit(
                &format!("{}::{}", l.shader.name, l.entry),
                Limit::StorageBuffers {
                    count: n_storage,
                    max: max_storage,
                },
            ));
        }
        let pipeline = gpu.pipeline(l.shader, l.entry, l.overrides, &kinds)?;
        if gpu.is_dry() {
            self.launches += 1;
            return Ok(());
        }
        let uniforms: Vec<Option<wgpu::Buffer>> = l
            .args
            .iter()
            .map(|a| match a {
                // Not `create_buffer_init`: it panics on a lost device, where this reports.
                Arg::Uniform(bytes) => {
                    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(l.entry),
                        size: (bytes.len() as u64).next_multiple_of(16).max(16),
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    gpu.queue.write_buffer(&buffer, 0, bytes);
                    Some(buffer)
                }
                _ => None,
            })
            .collect();
        let entries: Vec<wgpu::BindGroupEntry> = l
            .args
            .iter()
            .zip(&uniforms)
            .enumerate()
            .map(|(i, (a, u))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match a {
                    Arg::Uniform(_) => u.as_ref().unwrap().as_entire_binding(),
                    Arg::Read(t) | Arg::Write(t) => t.storage.buffer.as_entire_binding(),
                },
            })
            .collect();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(l.entry),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let enc = self.inner.as_mut().expect("encoder used after submit");
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(l.entry),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(l.workgroups[0], l.workgroups[1], l.workgroups[2]);
        drop(pass);
        self.launches += 1;
        Ok(())
    }

    /// Records `kernel` over a 1-D grid of `threads` invocations (at least one workgroup,
    /// folded by [`Gpu::grid_1d`]). Bindings: the `#[repr(C)]` uniform `params`, then
    /// `reads` (`var<storage, read>`), then `writes` (`var<storage, read_write>`), in
    /// `@binding` order.
    pub fn launch_threads<P: bytemuck::Pod>(
        &mut self,
        kernel: Kernel<'_>,
        params: &P,
        reads: &[&Tensor],
        writes: &[&Tensor],
        threads: usize,
    ) -> Result<()> {
        let args = Arg::bindings(params, reads, writes);
        self.launch_grid(kernel, &args, Gpu::grid_1d(groups(threads, kernel.wg)))
    }

    /// Records `kernel` on the grid `workgroups` with the bindings `args` (most often
    /// [`Arg::bindings`]).
    pub fn launch_grid(
        &mut self,
        kernel: Kernel<'_>,
        args: &[Arg<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        self.launch(Launch {
            shader: kernel.shader,
            entry: kernel.entry,
            overrides: &[("WG", kernel.wg as f64)],
            args,
            workgroups,
        })
    }

    /// Records a copy of `len` f32 values between two buffers.
    pub fn copy(&mut self, src: &Tensor, src_off: usize, dst: &Tensor, dst_off: usize, len: usize) {
        if self.gpu.is_dry() {
            return;
        }
        let enc = self.inner.as_mut().expect("encoder used after submit");
        enc.copy_buffer_to_buffer(
            &src.storage.buffer,
            (src_off * 4) as u64,
            &dst.storage.buffer,
            (dst_off * 4) as u64,
            (len * 4) as u64,
        );
    }

    /// Records zero-filling of a tensor's whole storage.
    pub fn clear(&mut self, t: &Tensor) {
        if self.gpu.is_dry() {
            return;
        }
        let enc = self.inner.as_mut().expect("encoder used after submit");
        enc.clear_buffer(&t.storage.buffer, 0, None);
    }

    /// Number of dispatches recorded.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Sends the recorded work to the device (does not wait for it).
    pub fn submit(self) -> Result<()> {
        self.submit_indexed().map(|_| ())
    }

    /// [`Encoder::submit`], returning the submission for [`Gpu::wait_for`].
    pub fn submit_indexed(mut self) -> Result<Option<Submitted>> {
        let submitted = self.inner.take().map(|enc| {
            let index = self.gpu.queue.submit([enc.finish()]);
            let seq = self.gpu.submissions.fetch_add(1, Ordering::Relaxed) + 1;
            self.gpu.active_memory().submitted(seq);
            Submitted { index, seq }
        });
        self.gpu.check_device_error()?;
        Ok(submitted)
    }
}

/// Checks that every tensor in `written` has a buffer of its own: one dispatch may not bind
/// a buffer both read-only and read-write (the device rejects it), and two writes to one
/// buffer would race. The error names the op, both tensors and the buffer.
pub fn check_distinct(
    op: &str,
    written: &[(&str, &Tensor)],
    read: &[(&str, &Tensor)],
) -> Result<()> {
    for (i, (name, w)) in written.iter().enumerate() {
        let mut others = written[i + 1..].iter().chain(read);
        if let Some((other, _)) = others.find(|(_, t)| w.same_storage(t)) {
            return Err(GpuError::shape(
                op,
                ShapeProblem::Aliased {
                    tensor: name.to_string(),
                    other: other.to_string(),
                    buffer: w.label().to_string(),
                },
            ));
        }
    }
    Ok(())
}

/// Checks that `t` (named `what`) is a contiguous view.
pub fn expect_contiguous(op: &str, what: &str, t: &Tensor) -> Result<()> {
    if !t.is_contiguous() {
        return Err(GpuError::shape(
            op,
            ShapeProblem::NotContiguous {
                tensor: what.to_string(),
                shape: t.shape.clone(),
            },
        ));
    }
    Ok(())
}

/// Checks a shape against an expectation; the error names the op and the tensor.
pub fn expect_shape(op: &str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(GpuError::shape(
            op,
            ShapeProblem::Expected {
                tensor: what.to_string(),
                shape: got.to_vec(),
                expected: want.to_vec(),
            },
        ));
    }
    Ok(())
}

/// Checks that a tensor is 4-D NCHW and returns its dimensions.
pub fn nchw(op: &str, what: &str, t: &Tensor) -> Result<[usize; 4]> {
    match t.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(GpuError::shape(
            op,
            ShapeProblem::Layout {
                tensor: what.to_string(),
                shape: t.shape.clone(),
                layout: "4-D (N, C, H, W)",
            },
        )),
    }
}

/// Converts a size to the u32 a uniform holds, with a typed error on overflow.
pub fn to_u32(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        GpuError::limit(
            op,
            Limit::U32 {
                quantity: what.to_string(),
                value: v,
            },
        )
    })
}

/// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`: a heap a GPU reads at full speed.
#[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
const VK_MEMORY_HEAP_DEVICE_LOCAL: u32 = 0x1;

/// The memory a run may use on this adapter, where it can be known: for a Vulkan adapter
/// its largest device-local heap, and for a CPU adapter (lavapipe, whose heap is host
/// memory) no more than the host memory available now. `None` elsewhere.
fn device_memory_bytes(adapter: &wgpu::Adapter, info: &wgpu::AdapterInfo) -> Option<u64> {
    let mut heap: Option<u64> = None;
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
    if info.backend == wgpu::Backend::Vulkan {
        // SAFETY: only reads the physical device's memory properties; the handles stay
        // owned by wgpu and are not kept.
        if let Some(hal) = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() } {
            let props = unsafe {
                hal.shared_instance()
                    .raw_instance()
                    .get_physical_device_memory_properties(hal.raw_physical_device())
            };
            heap = props
                .memory_heaps_as_slice()
                .iter()
                .filter(|h| h.flags.as_raw() & VK_MEMORY_HEAP_DEVICE_LOCAL != 0)
                .map(|h| h.size)
                .max();
        }
    }
    let _ = adapter;
    if info.device_type == wgpu::DeviceType::Cpu {
        if let Some(available) = host_available_bytes() {
            heap = Some(heap.map_or(available, |h| h.min(available)));
        }
    }
    heap
}

/// `MemAvailable` from /proc/meminfo (Linux), in bytes.
fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
