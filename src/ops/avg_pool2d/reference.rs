//! f64 CPU reference on contiguous NCHW data.

use super::Pool2dSpec;

/// Output height and width (floor mode); the spec must be valid.
pub fn out_hw(spec: Pool2dSpec, h: usize, w: usize) -> (usize, usize) {
    let Pool2dSpec {
        kernel: k,
        stride: s,
        padding: p,
    } = spec;
    ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)
}

/// Calls `f(out_index, in_index)` for every (output, in-image window element) pair, in
/// output order and row-major window order.
pub fn for_each_window(shape: [usize; 4], spec: Pool2dSpec, mut f: impl FnMut(usize, usize)) {
    let [n, c, h, w] = shape;
    let (oh, ow) = out_hw(spec, h, w);
    let (k, s, p) = (
        spec.kernel as isize,
        spec.stride as isize,
        spec.padding as isize,
    );
    for plane in 0..n * c {
        for r in 0..oh {
            for o in 0..ow {
                let out = (plane * oh + r) * ow + o;
                for ky in 0..k {
                    for kx in 0..k {
                        let ih = r as isize * s - p + ky;
                        let iw = o as isize * s - p + kx;
                        if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                            f(out, (plane * h + ih as usize) * w + iw as usize);
                        }
                    }
                }
            }
        }
    }
}

/// `y` of shape (N, C, OH, OW) for `x` of shape `shape` = (N, C, H, W).
pub fn forward(x: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
    let [n, c, h, w] = shape;
    let (oh, ow) = out_hw(spec, h, w);
    let area = (spec.kernel * spec.kernel) as f64;
    let mut y = vec![0.0; n * c * oh * ow];
    for_each_window(shape, spec, |o, i| y[o] += x[i]);
    y.iter_mut().for_each(|v| *v /= area);
    y
}

/// `d_x` (zero-initialised accumulator) of shape `shape` = (N, C, H, W).
pub fn backward(d_y: &[f64], shape: [usize; 4], spec: Pool2dSpec) -> Vec<f64> {
    let area = (spec.kernel * spec.kernel) as f64;
    let mut d_x = vec![0.0; shape.iter().product()];
    for_each_window(shape, spec, |o, i| d_x[i] += d_y[o] / area);
    d_x
}
