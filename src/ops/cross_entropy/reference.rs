//! f64 CPU reference (row-major (N, K) logits, labels as class indices).

/// `(loss, probs)`.
pub fn forward(logits: &[f64], labels: &[usize], k: usize) -> (f64, Vec<f64>) {
    let n = labels.len();
    let mut probs = vec![0.0; n * k];
    let mut loss = 0.0;
    for (r, &t) in labels.iter().enumerate() {
        let row = &logits[r * k..(r + 1) * k];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for j in 0..k {
            probs[r * k + j] = (row[j] - mx).exp() / sum;
        }
        loss += mx + sum.ln() - row[t];
    }
    (loss / n as f64, probs)
}

/// `d_logits` for a zero-initialised accumulator.
pub fn backward(logits: &[f64], labels: &[usize], k: usize, d_loss: f64) -> Vec<f64> {
    let n = labels.len();
    let (_, mut g) = forward(logits, labels, k);
    for (r, &t) in labels.iter().enumerate() {
        g[r * k + t] -= 1.0;
    }
    g.iter_mut().for_each(|v| *v *= d_loss / n as f64);
    g
}
