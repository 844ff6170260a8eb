//! f64 CPU reference (row-major slices).

/// `y[r, o] = sum_i x[r, i] w[o, i] + b[o]` for x (n, i), w (o, i).
pub fn forward(x: &[f64], w: &[f64], b: Option<&[f64]>, n: usize, i: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * o];
    for r in 0..n {
        for c in 0..o {
            let s: f64 = (0..i).map(|t| x[r * i + t] * w[c * i + t]).sum();
            y[r * o + c] = s + b.map_or(0.0, |b| b[c]);
        }
    }
    y
}

/// `(d_x, d_w, d_b)` for zero-initialised accumulators.
pub fn backward(
    d_y: &[f64],
    x: &[f64],
    w: &[f64],
    n: usize,
    i: usize,
    o: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut d_x = vec![0.0; n * i];
    let mut d_w = vec![0.0; o * i];
    let mut d_b = vec![0.0; o];
    for r in 0..n {
        for c in 0..o {
            let g = d_y[r * o + c];
            d_b[c] += g;
            for t in 0..i {
                d_x[r * i + t] += g * w[c * i + t];
                d_w[c * i + t] += g * x[r * i + t];
            }
        }
    }
    (d_x, d_w, d_b)
}

/// `c = a · b` for a (m, k), b (k, n).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for r in 0..m {
        for t in 0..k {
            let av = a[r * k + t];
            for col in 0..n {
                c[r * n + col] += av * b[t * n + col];
            }
        }
    }
    c
}
