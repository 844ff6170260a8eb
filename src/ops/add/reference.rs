//! f64 CPU reference.

pub fn forward(a: &[f64], b: &[f64], relu: bool) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if relu { (x + y).max(0.0) } else { x + y })
        .collect()
}
/// The gradient each input receives (d_a = d_b), for a zero-initialised accumulator.
pub fn backward(y: &[f64], d_y: &[f64], relu: bool) -> Vec<f64> {
    y.iter()
        .zip(d_y)
        .map(|(&v, &g)| if relu && v <= 0.0 { 0.0 } else { g })
        .collect()
}
