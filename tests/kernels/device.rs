use crate::common::*;
use densenet_wgpu::gpu::{
    DeviceOptions, Gpu, GpuError, ShapeProblem, MAX_WORKGROUPS_PER_DIM, NO_SUBGROUPS_ENV,
};
use densenet_wgpu::ops::relu;

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
    match Gpu::open(&DeviceOptions::default().adapter("no-such-adapter-xyz")) {
        Err(GpuError::AdapterNotFound { wanted, .. }) => assert_eq!(wanted, "no-such-adapter-xyz"),
        Err(e) => panic!("expected AdapterNotFound, got {e}"),
        Ok(_) => panic!("expected AdapterNotFound"),
    }
}

#[test]
fn channel_slice_out_of_range_is_typed_error() {
    let t = gpu().zeros(&[2, 4, 3, 3], "t").unwrap();
    match t.channels(3, 2) {
        Err(GpuError::Shape(e)) => assert_eq!(
            e.problem,
            ShapeProblem::OutOfRange {
                tensor: "t".into(),
                dim: "channels",
                start: 3,
                end: 5,
                size: 4
            }
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn subgroups_can_be_turned_off() {
    let plain = Gpu::open(&DeviceOptions::from_env().without_subgroups()).unwrap();
    assert!(!plain.subgroups(), "{}", plain.describe());
}

/// An application that opened its own device hands it to the crate, which runs its kernels
/// on it under the device's own limits and features.
#[test]
fn a_device_the_caller_opened_runs_the_kernels() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .find(|a| a.get_info().name == gpu().info.name)
        .expect("the test adapter");
    // The WebGPU default limits and no optional feature: what a web page gets by default.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let own = Gpu::from_device(&adapter, device, queue, &DeviceOptions::default());
    assert!(!own.subgroups(), "no SUBGROUP feature was asked for");
    // Launches are checked against the limits the device was opened with, not the
    // adapter's (lavapipe's are far larger than the defaults).
    assert_eq!(own.limits, wgpu::Limits::default());
    assert_eq!(own.limits, own.device.limits());
    let x_values = rand(3, 3 * 700, -2.0, 2.0);
    let x = own.upload(&f32s(&x_values), &[3, 700], "x").unwrap();
    let y = own.zeros(&[3, 700], "y").unwrap();
    let mut enc = own.encoder("relu on the caller's device");
    relu::forward(&mut enc, &y, &x).unwrap();
    enc.submit().unwrap();
    let want: Vec<f64> = x_values
        .iter()
        .map(|v| (*v as f32).max(0.0) as f64)
        .collect();
    assert_eq!(f64s(&own.download(&y).unwrap()), want);
}
