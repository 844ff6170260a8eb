//! Kernel tests, three tiers per op:
//! 1. the f64 CPU reference backward agrees with central finite differences;
//! 2. GPU forward/backward agree with the f64 reference (`atol + rtol * |ref|`) on odd
//!    shapes, sizes that are not multiples of the workgroup, and many workgroups;
//! 3. wrong shapes and limits return a typed error.

mod common;
#[path = "../support/device_pool.rs"]
mod device_pool;

mod adam;
mod add;
mod avg_pool2d;
mod batch_norm;
mod concat;
mod conv2d;
mod cross_entropy;
mod device;
mod finite;
mod global_avg_pool;
mod linear;
mod max_pool2d;
mod relu;
