//! Whole-model tests: PyTorch golden step (both block modes), overfitting a tiny batch,
//! tape semantics and weight files.

use std::path::PathBuf;
use std::sync::OnceLock;

use densenet_wgpu::gpu::Gpu;

mod cli;
mod golden;
mod overfit;
mod tape;
mod weights;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().expect("open a WebGPU adapter"))
}

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}
