//! The device each test runs on, shared by the kernel and model test binaries.
//!
//! lavapipe compiles a pipeline the first time it runs, on the queue thread of the device
//! that runs it. With one device for the whole binary, every test's pipelines were compiled
//! one after another on that one thread, whatever the test parallelism. So each running test
//! holds a device of its own, leased from a pool: tests side by side compile side by side,
//! and a device goes back to the pool when its test ends, its pipeline cache with it.

use std::sync::Mutex;

use densenet_wgpu::gpu::{DeviceOptions, Gpu};

static FREE: Mutex<Vec<&'static Gpu>> = Mutex::new(Vec::new());

/// A device held by one test thread, returned to the pool when the thread ends.
struct Lease(&'static Gpu);

impl Drop for Lease {
    fn drop(&mut self) {
        // A test that panicked may have left work or an error scope behind: its device
        // is not lent again.
        if !std::thread::panicking() {
            FREE.lock().unwrap().push(self.0);
        }
    }
}

thread_local! {
    static LEASE: Lease = Lease(lease());
}

fn lease() -> &'static Gpu {
    let free = FREE.lock().unwrap().pop();
    free.unwrap_or_else(|| {
        let g = Gpu::open(&DeviceOptions::from_env()).expect("open a WebGPU adapter");
        eprintln!("adapter: {}", g.describe());
        Box::leak(Box::new(g))
    })
}

/// This test's device: the same one for every call from the test's thread.
pub fn gpu() -> &'static Gpu {
    LEASE.with(|l| l.0)
}
