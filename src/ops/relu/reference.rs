//! f64 CPU reference.

pub fn forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v.max(0.0)).collect()
}
/// Returns `d_x` for a zero-initialised accumulator.
pub fn backward(x: &[f64], d_y: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(d_y)
        .map(|(&v, &g)| if v > 0.0 { g } else { 0.0 })
        .collect()
}
