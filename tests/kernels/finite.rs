use crate::common::*;
use densenet_wgpu::gpu::{GpuError, ShapeProblem};
use densenet_wgpu::ops::finite;

#[test]
fn counts_nan_and_infinities_per_slot() {
    // 1000 elements (4 lanes' strides past 256), non-finite values at the ends and middle.
    let mut v: Vec<f32> = f32s(&rand(1, 1000, -1e30, 1e30));
    for (i, x) in [
        (0, f32::NAN),
        (255, f32::INFINITY),
        (256, f32::NEG_INFINITY),
        (999, f32::NAN),
    ] {
        v[i] = x;
    }
    v[500] = f32::MAX; // finite
    let x = gpu().upload(&v, &[1000], "x").unwrap();
    let clean = gpu().upload(&v[1..255], &[254], "clean").unwrap();
    let flags = gpu().upload(&[7.0, 7.0, 7.0], &[3], "flags").unwrap();
    run(|e| {
        finite::count_nonfinite(e, &flags, 0, &x).unwrap();
        finite::count_nonfinite(e, &flags, 2, &clean).unwrap();
    });
    assert_eq!(finite::reference::count_nonfinite(&v), 4);
    // Slot 1 untouched.
    assert_eq!(download(&flags), vec![4.0, 7.0, 0.0]);
}

#[test]
fn slot_outside_the_flags_is_a_typed_error() {
    let x = gpu().zeros(&[10], "x").unwrap();
    let flags = gpu().zeros(&[2], "flags").unwrap();
    let mut enc = gpu().encoder("bad");
    match finite::count_nonfinite(&mut enc, &flags, 2, &x) {
        Err(GpuError::Shape(e)) => assert_eq!(
            e.problem,
            ShapeProblem::OutOfRange {
                tensor: "flags".into(),
                dim: "slot",
                start: 2,
                end: 3,
                size: 2
            }
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
}
