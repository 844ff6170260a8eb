//! Kernel tests, three tiers per op:
//! 1. the f64 CPU reference backward agrees with central finite differences;
//! 2. GPU forward/backward agree with the f64 reference (`atol + rtol * |ref|`) on odd
//!    shapes, sizes that are not multiples of the workgroup, and many workgroups;
//! 3. wrong shapes and limits return a typed error.

mod common;

mod device;
mod relu;
