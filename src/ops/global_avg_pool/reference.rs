//! f64 CPU reference on contiguous data.

/// `y` (N·C values) for `x` of shape `shape` = (N, C, H, W).
pub fn forward(x: &[f64], shape: [usize; 4]) -> Vec<f64> {
    let hw = shape[2] * shape[3];
    x.chunks(hw)
        .map(|plane| plane.iter().sum::<f64>() / hw as f64)
        .collect()
}

/// `d_x` (zero-initialised accumulator) of shape `shape` = (N, C, H, W).
pub fn backward(d_y: &[f64], shape: [usize; 4]) -> Vec<f64> {
    let hw = shape[2] * shape[3];
    d_y.iter()
        .flat_map(|&g| std::iter::repeat_n(g / hw as f64, hw))
        .collect()
}
