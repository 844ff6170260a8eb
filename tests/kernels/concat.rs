use crate::avg_pool2d::assert_outside_untouched;
use crate::common::*;
use densenet_wgpu::gpu::GpuError;
use densenet_wgpu::ops::concat::{self, reference};

// Tolerances: forward and plain copies move f32 values unchanged (exact, tolerance 0).
// Accumulation is one f32 addition per element: |fl(a + b) - (a + b)| <= 2^-24 |a + b|,
// so rtol 2^-24 against the f64 sum and atol 0.
const ACC_RTOL: f64 = 5.97e-8;

#[test]
fn reference_backward_matches_finite_differences() {
    let (n, hw, ch) = (2, 6, [2usize, 1, 3]);
    let xs: Vec<Vec<f64>> = ch
        .iter()
        .enumerate()
        .map(|(i, &c)| rand(i as u64, n * c * hw, -1.0, 1.0))
        .collect();
    let up = rand(9, n * 6 * hw, -1.0, 1.0);
    let grads = reference::backward(&up, &ch, n, hw);
    for i in 0..3 {
        let numeric = numeric_grad(&xs[i], 1e-6, |xi| {
            let mut all: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
            all[i] = xi;
            dot(&reference::forward(&all, &ch, n, hw), &up)
        });
        assert_close(&format!("d_input[{i}]"), &grads[i], &numeric, 1e-8, 1e-6);
    }
}

#[test]
fn gpu_three_inputs_forward_and_accumulating_backward() {
    // Channel counts 5, 2, 9 of 13x11 planes: items of 715, 286, 1287 elements (not
    // multiples of the 256 elements one workgroup copies), 3 items each.
    let (n, h, w) = (3, 13, 11);
    let ch = [5usize, 2, 9];
    let hw = h * w;
    let xs: Vec<Vec<f64>> = ch
        .iter()
        .enumerate()
        .map(|(i, &c)| rand(10 + i as u64, n * c * hw, -1.0, 1.0))
        .collect();
    let ts: Vec<_> = xs
        .iter()
        .zip(&ch)
        .map(|(v, &c)| upload(v, &[n, c, h, w], "x"))
        .collect();
    let y = gpu().zeros(&[n, 16, h, w], "y").unwrap();
    let up = rand(20, n * 16 * hw, -1.0, 1.0);
    let d_y = upload(&up, &[n, 16, h, w], "d_y");
    let priors: Vec<Vec<f64>> = ch
        .iter()
        .enumerate()
        .map(|(i, &c)| rand(30 + i as u64, n * c * hw, -1.0, 1.0))
        .collect();
    let d_xs: Vec<_> = priors
        .iter()
        .zip(&ch)
        .map(|(v, &c)| upload(v, &[n, c, h, w], "d_x"))
        .collect();
    let mut launches = 0;
    run(|e| {
        concat::forward(e, &y, &ts.iter().collect::<Vec<_>>()).unwrap();
        concat::backward(e, &d_xs.iter().collect::<Vec<_>>(), &d_y).unwrap();
        launches = e.launches();
    });
    // Forward: buffer transfers; backward: one launch (two bindings) per input.
    assert_eq!(launches, 3, "one launch per input");
    let r32: Vec<Vec<f64>> = xs.iter().map(|v| f64s(&f32s(v))).collect();
    let want = reference::forward(
        &r32.iter().map(|v| v.as_slice()).collect::<Vec<_>>(),
        &ch,
        n,
        hw,
    );
    assert_close("y", &download(&y), &want, 0.0, 0.0);
    let grads = reference::backward(&f64s(&f32s(&up)), &ch, n, hw);
    for i in 0..3 {
        let want: Vec<f64> = grads[i]
            .iter()
            .zip(&f64s(&f32s(&priors[i])))
            .map(|(g, p)| g + p)
            .collect();
        assert_close(
            &format!("d_input[{i}]"),
            &download(&d_xs[i]),
            &want,
            0.0,
            ACC_RTOL,
        );
    }
}

#[test]
fn gpu_into_channel_slice_of_a_bigger_buffer() {
    // y = channels [4, 4 + 11) of a 20-channel block buffer; the inputs are themselves
    // slices; d_y likewise a slice, d_inputs slices of one gradient buffer.
    let (n, h, w) = (2, 7, 9);
    let hw = h * w;
    let block_v = rand(40, n * 20 * hw, -1.0, 1.0);
    let block = upload(&block_v, &[n, 20, h, w], "block");
    let src_v = rand(41, n * 15 * hw, -1.0, 1.0);
    let src = upload(&src_v, &[n, 15, h, w], "sources");
    let (a, b) = (src.channels(0, 8).unwrap(), src.channels(12, 3).unwrap());
    let y = block.channels(4, 11).unwrap();
    run(|e| concat::forward(e, &y, &[&a, &b]).unwrap());
    let (av, bv) = (download(&a), download(&b));
    let want = reference::forward(&[&av, &bv], &[8, 3], n, hw);
    assert_close("y slice", &download(&y), &want, 0.0, 0.0);
    assert_outside_untouched(
        "block",
        &download(&block),
        &f64s(&f32s(&block_v)),
        20,
        4..15,
        hw,
    );

    let gbuf_v = rand(42, n * 14 * hw, -1.0, 1.0);
    let gbuf = upload(&gbuf_v, &[n, 14, h, w], "d_inputs");
    let (da, db) = (gbuf.channels(1, 8).unwrap(), gbuf.channels(10, 3).unwrap());
    let (pa, pb) = (download(&da), download(&db));
    run(|e| concat::backward(e, &[&da, &db], &y).unwrap());
    let grads = reference::backward(&download(&y), &[8, 3], n, hw);
    for (got, (g, p)) in [(&da, (&grads[0], &pa)), (&db, (&grads[1], &pb))] {
        let want: Vec<f64> = g.iter().zip(p).map(|(g, p)| g + p).collect();
        assert_close("d_input slice", &download(got), &want, 0.0, ACC_RTOL);
    }
    let all = download(&gbuf);
    let before = f64s(&f32s(&gbuf_v));
    for (i, (g, b)) in all.iter().zip(&before).enumerate() {
        let c = (i / hw) % 14;
        if !(1..9).contains(&c) && !(10..13).contains(&c) {
            assert_eq!(g, b, "gradient buffer element {i} (channel {c}) changed");
        }
    }
}

/// Copies src = channels [2, 2 + c) of a (n, c + 3, h, w) buffer into dst = channels
/// [5, 5 + c) of a (n, c + 6, h, w) buffer, accumulating then overwriting, and checks
/// both results and that the rest of dst's buffer is untouched.
fn check_strided_copy(n: usize, c: usize, h: usize, w: usize, seed: u64) {
    let hw = h * w;
    let src_b = upload(
        &rand(seed, n * (c + 3) * hw, -1.0, 1.0),
        &[n, c + 3, h, w],
        "src block",
    );
    let dst_v = rand(seed + 1, n * (c + 6) * hw, -1.0, 1.0);
    let dst_b = upload(&dst_v, &[n, c + 6, h, w], "dst block");
    let (src, dst) = (src_b.channels(2, c).unwrap(), dst_b.channels(5, c).unwrap());
    let before = download(&dst);
    run(|e| concat::copy(e, &dst, &src, true).unwrap());
    let s = download(&src);
    let want: Vec<f64> = s.iter().zip(&before).map(|(a, b)| a + b).collect();
    let name = format!("({n}, {c}, {h}, {w})");
    assert_close(
        &format!("dst += src {name}"),
        &download(&dst),
        &want,
        0.0,
        ACC_RTOL,
    );
    run(|e| concat::copy(e, &dst, &src, false).unwrap());
    assert_close(&format!("dst = src {name}"), &download(&dst), &s, 0.0, 0.0);
    let all = download(&dst_b);
    assert_outside_untouched("dst block", &all, &f64s(&f32s(&dst_v)), c + 6, 5..5 + c, hw);
}

#[test]
fn copy_overwrite_and_accumulate() {
    // Few large items: transfers for the plain copy, the vec4 kernel for accumulation
    // (37 * 28 is a multiple of 4), 4 * 7 * 1036 elements, 4 workgroups per item.
    check_strided_copy(4, 7, 37, 28, 50);
    // Unaligned (13 * 7 = 91): the scalar kernel for accumulation.
    check_strided_copy(3, 5, 13, 7, 60);
    // Many small items: the kernel for plain copies too, scalar and vec4.
    check_strided_copy(300, 3, 5, 7, 70);
    check_strided_copy(300, 2, 4, 6, 80);

    // Contiguous tensors of other ranks are copied as one run.
    let v = rand(52, 100_003, -1.0, 1.0);
    let a = upload(&v, &[100_003], "a");
    let b = gpu().zeros(&[100_003], "b").unwrap();
    run(|e| concat::copy(e, &b, &a, false).unwrap());
    assert_close("1-D copy", &download(&b), &f64s(&f32s(&v)), 0.0, 0.0);
    run(|e| concat::copy(e, &b, &a, true).unwrap());
    let twice: Vec<f64> = v.iter().map(|&x| 2.0 * (x as f32 as f64)).collect();
    assert_close("1-D accumulate", &download(&b), &twice, 0.0, 0.0);
    let m = upload(&v[..6 * 7], &[6, 7], "m");
    let m2 = upload(&v[7..7 + 6 * 7], &[6, 7], "m2");
    run(|e| concat::copy(e, &m2, &m, true).unwrap());
    let want: Vec<f64> = (0..42)
        .map(|i| (v[i] as f32 as f64) + (v[7 + i] as f32 as f64))
        .collect();
    assert_close("2-D accumulate", &download(&m2), &want, 0.0, ACC_RTOL);
}

fn expect_shape_error(r: Result<(), GpuError>, needle: &str) {
    match r {
        Err(GpuError::Shape(m)) => {
            assert!(m.to_string().contains(needle), "{needle:?} not in {m:?}")
        }
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let z = |s: &[usize]| gpu().zeros(s, "t").unwrap();
    let y = z(&[2, 7, 4, 5]);
    let (a, b) = (z(&[2, 3, 4, 5]), z(&[2, 4, 4, 5]));
    let mut enc = gpu().encoder("bad");
    // Channel sum, N, H, W, rank, empty list.
    expect_shape_error(
        concat::forward(&mut enc, &y, &[&a, &a]),
        "channels sum to 6",
    );
    expect_shape_error(
        concat::forward(&mut enc, &y, &[&a, &z(&[1, 4, 4, 5])]),
        "inputs[1]",
    );
    expect_shape_error(
        concat::forward(&mut enc, &y, &[&a, &z(&[2, 4, 5, 5])]),
        "inputs[1]",
    );
    expect_shape_error(concat::forward(&mut enc, &y, &[&z(&[2, 3, 20]), &b]), "4-D");
    expect_shape_error(concat::forward(&mut enc, &y, &[]), "inputs is empty");
    expect_shape_error(
        concat::backward(&mut enc, &[&a], &y),
        "d_inputs channels sum to 3",
    );
    expect_shape_error(
        concat::backward(&mut enc, &[&a, &b, &a], &y),
        "channels sum to 10",
    );
    expect_shape_error(
        concat::backward(&mut enc, &[&a, &b], &z(&[2, 7, 20])),
        "d_y",
    );
    // Copy: shape mismatch, aliasing.
    expect_shape_error(concat::copy(&mut enc, &a, &b, false), "dst");
    let both = z(&[2, 8, 4, 5]);
    let (lo, hi) = (both.channels(0, 4).unwrap(), both.channels(4, 4).unwrap());
    expect_shape_error(concat::copy(&mut enc, &hi, &lo, true), "share");
    assert_eq!(enc.launches(), 0);
    concat::backward(&mut enc, &[&a, &b], &y).unwrap();
    assert_eq!(enc.launches(), 2);
}
