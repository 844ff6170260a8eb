use crate::common::*;
use densenet_wgpu::gpu::{Gpu, GpuError, MAX_WORKGROUPS_PER_DIM, NO_SUBGROUPS_ENV};

#[test]
fn adapter_is_described() {
    let d = gpu().describe();
    assert!(!d.is_empty());
}

#[test]
fn lavapipe_runs_the_subgroup_kernels() {
    // lavapipe offers subgroups of 8, so the conv tests there cover the subgroup variants
    // (and, with Encoder::disable_subgroups, the plain ones).
    if gpu().describe().contains("llvmpipe") && std::env::var_os(NO_SUBGROUPS_ENV).is_none() {
        assert!(gpu().subgroups(), "{}", gpu().describe());
    }
}

#[test]
fn upload_download_round_trip() {
    let v = rand(7, 1001, -3.0, 3.0);
    let t = upload(&v, &[7, 11, 13], "t");
    assert_eq!(download(&t), f64s(&f32s(&v)));
}

#[test]
fn grid_folds_past_65535_workgroups() {
    for total in [1u32, 65_535, 65_536, 1_000_000, 16_777_215] {
        let g = Gpu::grid_1d(total);
        assert!(g[0] <= MAX_WORKGROUPS_PER_DIM && g[1] <= MAX_WORKGROUPS_PER_DIM);
        assert!(
            g[0] as u64 * g[1] as u64 >= total as u64,
            "{total} -> {g:?}"
        );
        assert!(
            (g[0] as u64 * g[1] as u64) < total as u64 + g[1] as u64,
            "{total} -> {g:?}"
        );
    }
}

#[test]
fn buffer_over_binding_limit_is_typed_error() {
    let limit = gpu().max_binding_bytes();
    let too_many = (limit / 4 + 1) as usize;
    match gpu().zeros(&[too_many], "huge activation") {
        Err(GpuError::BufferTooLarge {
            tensor,
            bytes,
            limit: l,
        }) => {
            assert_eq!(tensor, "huge activation");
            assert!(bytes > l);
        }
        other => panic!("expected BufferTooLarge, got {other:?}"),
    }
}

#[test]
fn unknown_adapter_name_is_typed_error() {
    match Gpu::with_adapter(Some("no-such-adapter-xyz")) {
        Err(GpuError::AdapterNotFound { wanted, .. }) => assert_eq!(wanted, "no-such-adapter-xyz"),
        Err(e) => panic!("expected AdapterNotFound, got {e}"),
        Ok(_) => panic!("expected AdapterNotFound"),
    }
}

#[test]
fn channel_slice_out_of_range_is_typed_error() {
    let t = gpu().zeros(&[2, 4, 3, 3], "t").unwrap();
    assert!(matches!(t.channels(3, 2), Err(GpuError::Shape(_))));
}
