//! Shared helpers for the kernel tests: one device, random data, tolerances,
//! finite differences.

use densenet_wgpu::gpu::{Encoder, Tensor};
use densenet_wgpu::rng::Rng;

pub use crate::device_pool::gpu;

pub fn rand(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    Rng::new(seed).vec(n, lo, hi)
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The f32 values widened back, so the reference sees exactly what the GPU saw.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Uploads f64 values (rounded to f32) as a tensor.
pub fn upload(v: &[f64], shape: &[usize], label: &str) -> Tensor {
    gpu().upload(&f32s(v), shape, label).unwrap()
}

pub fn download(t: &Tensor) -> Vec<f64> {
    f64s(&gpu().download(t).unwrap())
}

/// Runs `f` in one encoder and submits it.
pub fn run(f: impl FnOnce(&mut Encoder)) {
    let mut enc = gpu().encoder("test");
    f(&mut enc);
    enc.submit().unwrap();
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise; reports the worst element.
#[track_caller]
pub fn assert_close(name: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        assert!(g.is_finite(), "{name}[{i}] = {g} is not finite (ref {w})");
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{name}: element {i} got {} want {} (|diff| {:.3e} > atol {atol:.1e} + rtol {rtol:.1e} * |ref|)",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

/// Central finite differences of a scalar function, with step `h`.
pub fn numeric_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `sum(a * b)`: turns an output into a scalar loss with upstream gradient `b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
