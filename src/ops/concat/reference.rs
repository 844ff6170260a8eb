//! f64 CPU reference on contiguous NCHW data; `hw = H·W`.

/// `y` = concatenation of `inputs` (each (N, C_i, H, W), `channels[i] = C_i`).
pub fn forward(inputs: &[&[f64]], channels: &[usize], n: usize, hw: usize) -> Vec<f64> {
    let mut y = Vec::new();
    for b in 0..n {
        for (x, &c) in inputs.iter().zip(channels) {
            y.extend_from_slice(&x[b * c * hw..(b + 1) * c * hw]);
        }
    }
    y
}

/// The gradient of each input (zero-initialised accumulators).
pub fn backward(d_y: &[f64], channels: &[usize], n: usize, hw: usize) -> Vec<Vec<f64>> {
    let total: usize = channels.iter().sum();
    let mut c0 = 0;
    channels
        .iter()
        .map(|&c| {
            let mut d = Vec::with_capacity(n * c * hw);
            for b in 0..n {
                let s = (b * total + c0) * hw;
                d.extend_from_slice(&d_y[s..s + c * hw]);
            }
            c0 += c;
            d
        })
        .collect()
}
