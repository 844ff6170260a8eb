//! f64 CPU reference (direct loops). Shapes: x `[n, cin, h, w]`, weight `[cout, cin, kh, kw]`.

use super::{output_size, Conv2dSpec};

/// (oh, ow) of the convolution; panics if the kernel does not fit (test helper).
fn out_hw(xs: [usize; 4], ws: [usize; 4], spec: Conv2dSpec) -> (usize, usize) {
    assert_eq!(xs[1], ws[1], "conv2d reference: Cin mismatch");
    output_size(spec, xs[2], xs[3], ws[2], ws[3]).expect("conv2d reference: bad shapes")
}

/// Calls `f(y_index, x_index, w_index)` for every term of the convolution sum.
fn for_each_term(
    xs: [usize; 4],
    ws: [usize; 4],
    spec: Conv2dSpec,
    mut f: impl FnMut(usize, usize, usize),
) {
    let [n, cin, h, w] = xs;
    let [cout, _, kh, kw] = ws;
    let (oh, ow) = out_hw(xs, ws, spec);
    let (s, pad) = (spec.stride as isize, spec.padding as isize);
    for b in 0..n {
        for co in 0..cout {
            for y in 0..oh {
                for x in 0..ow {
                    let yi = ((b * cout + co) * oh + y) * ow + x;
                    for ci in 0..cin {
                        for i in 0..kh {
                            let ih = y as isize * s - pad + i as isize;
                            if ih < 0 || ih >= h as isize {
                                continue;
                            }
                            for j in 0..kw {
                                let iw = x as isize * s - pad + j as isize;
                                if iw < 0 || iw >= w as isize {
                                    continue;
                                }
                                let xi = ((b * cin + ci) * h + ih as usize) * w + iw as usize;
                                let wi = ((co * cin + ci) * kh + i) * kw + j;
                                f(yi, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias`, shape `[n, cout, oh, ow]`.
pub fn forward(
    x: &[f64],
    x_shape: [usize; 4],
    w: &[f64],
    w_shape: [usize; 4],
    bias: Option<&[f64]>,
    spec: Conv2dSpec,
) -> Vec<f64> {
    let (oh, ow) = out_hw(x_shape, w_shape, spec);
    let (n, cout) = (x_shape[0], w_shape[0]);
    let mut y = vec![0.0; n * cout * oh * ow];
    if let Some(b) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v = b[(i / (oh * ow)) % cout];
        }
    }
    for_each_term(x_shape, w_shape, spec, |yi, xi, wi| y[yi] += w[wi] * x[xi]);
    y
}

/// `d_x` (shape `x_shape`) for a zero accumulator.
pub fn backward_data(
    d_y: &[f64],
    x_shape: [usize; 4],
    w: &[f64],
    w_shape: [usize; 4],
    spec: Conv2dSpec,
) -> Vec<f64> {
    let mut d_x = vec![0.0; x_shape.iter().product()];
    for_each_term(x_shape, w_shape, spec, |yi, xi, wi| {
        d_x[xi] += d_y[yi] * w[wi]
    });
    d_x
}

/// `(d_w, d_b)` for zero accumulators.
pub fn backward_weight(
    d_y: &[f64],
    x: &[f64],
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    spec: Conv2dSpec,
) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = out_hw(x_shape, w_shape, spec);
    let cout = w_shape[0];
    let mut d_w = vec![0.0; w_shape.iter().product()];
    for_each_term(x_shape, w_shape, spec, |yi, xi, wi| {
        d_w[wi] += d_y[yi] * x[xi]
    });
    let mut d_b = vec![0.0; cout];
    for (i, g) in d_y.iter().enumerate() {
        d_b[(i / (oh * ow)) % cout] += g;
    }
    (d_w, d_b)
}

/// `x' = max(scale[c] * x + shift[c], 0)` for x of shape `[n, c, h, w]`.
pub fn apply_prologue(x: &[f64], shape: [usize; 4], scale: &[f64], shift: &[f64]) -> Vec<f64> {
    let hw = shape[2] * shape[3];
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / hw) % shape[1];
            (scale[c] * v + shift[c]).max(0.0)
        })
        .collect()
}
