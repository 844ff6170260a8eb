//! f64 CPU reference on contiguous NCHW data.

use super::super::avg_pool2d::reference::{for_each_window, out_hw};
use super::Pool2dSpec;

/// For every output, the flat input index of its window's first maximum.
pub fn argmax(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<usize> {
    let [n, c, h, w] = shape;
    let (oh, ow) = out_hw(spec, h, w);
    let mut best: Vec<Option<usize>> = vec![None; n * c * oh * ow];
    for_each_window(shape, spec, |o, i| match best[o] {
        Some(b) if x[i] <= x[b] => {}
        _ => best[o] = Some(i),
    });
    best.into_iter()
        .map(|b| b.expect("every window holds an element"))
        .collect()
}

/// For every output, its window's first maximum as the window position `ky·k + kx`
/// (what [`super::forward`] saves).
pub fn window_argmax(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<u8> {
    let [_, _, h, w] = shape;
    let (oh, ow) = out_hw(spec, h, w);
    let (k, s, p) = (spec.kernel, spec.stride, spec.padding);
    argmax(x, shape, spec)
        .into_iter()
        .enumerate()
        .map(|(o, i)| {
            let (r, col) = ((o / ow) % oh, o % ow);
            let (ih, iw) = ((i / w) % h, i % w);
            let ky = ih + p - r * s;
            let kx = iw + p - col * s;
            (ky * k + kx) as u8
        })
        .collect()
}

/// `y` of shape (N, C, OH, OW) for `x` of shape `shape` = (N, C, H, W).
pub fn forward(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
    argmax(x, shape, spec).into_iter().map(|i| x[i]).collect()
}

/// `d_x` (zero-initialised accumulator) of shape `shape` = (N, C, H, W).
pub fn backward(x: &[f64], d_y: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
    let mut d_x = vec![0.0; x.len()];
    for (o, i) in argmax(x, shape, spec).into_iter().enumerate() {
        d_x[i] += d_y[o];
    }
    d_x
}

/// `d_x` (zero-initialised accumulator) from saved window positions (as
/// [`window_argmax`] returns them), without x: what the GPU backward computes.
pub fn backward_from_indices(
    idx: &[u8],
    d_y: &[f64],
    shape: [usize; 4],
    spec: Pool2dSpec,
) -> Vec<f64> {
    let [n, c, h, w] = shape;
    let (oh, ow) = out_hw(spec, h, w);
    let (k, s, p) = (spec.kernel, spec.stride, spec.padding);
    let mut d_x = vec![0.0; n * c * h * w];
    for (o, &a) in idx.iter().enumerate() {
        let plane = o / (oh * ow);
        let (r, col) = ((o / ow) % oh, o % ow);
        let ih = r * s + a as usize / k - p;
        let iw = col * s + a as usize % k - p;
        d_x[(plane * h + ih) * w + iw] += d_y[o];
    }
    d_x
}
