use crate::gpu;
use densenet_wgpu::gpu::{DeviceOptions, Gpu, GpuError, TapeError};
use densenet_wgpu::ops::conv2d::Conv2dSpec;
use densenet_wgpu::rng::Rng;
use densenet_wgpu::tape::{Param, Tape};

fn param(name: &str, shape: &[usize], seed: u64) -> Param {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = Rng::new(seed)
        .vec(n, -1.0, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Param::new(gpu(), name, &data, shape).unwrap()
}

/// Random images (2, 3, 5, 5) in [-1, 1].
fn images(seed: u64) -> densenet_wgpu::Tensor {
    let values: Vec<f32> = Rng::new(seed)
        .vec(2 * 3 * 5 * 5, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    gpu().upload(&values, &[2, 3, 5, 5], "x").unwrap()
}

/// loss = CE(linear(gap(concat(relu(conv(a)), relu(conv(b))))), labels); with `shared`,
/// a and b are the same parameter.
fn grads(shared: bool) -> (Vec<f32>, Vec<f32>) {
    let g = gpu();
    let x = images(9);
    let w1 = param("w1", &[4, 3, 3, 3], 1);
    let w2 = param("w2", &[4, 3, 3, 3], 1); // same values as w1
    let fc = param("fc", &[3, 8], 2);
    let labels = g.upload(&[0.0, 2.0], &[2], "labels").unwrap();
    let mut tape = Tape::new(g);
    let xv = tape.input(x, "x");
    let a = tape.param(&w1);
    let b = if shared { a } else { tape.param(&w2) };
    let spec = Conv2dSpec {
        stride: 1,
        padding: 1,
    };
    let ya = tape.conv2d(xv, a, None, spec, None, "conv a").unwrap();
    let yb = tape.conv2d(xv, b, None, spec, None, "conv b").unwrap();
    let ra = tape.relu(ya, "relu a").unwrap();
    let rb = tape.relu(yb, "relu b").unwrap();
    let cat = tape.concat(&[ra, rb], "cat").unwrap();
    let pooled = tape.global_avg_pool(cat, "gap").unwrap();
    let f = tape.param(&fc);
    let logits = tape.linear(pooled, f, None, "fc").unwrap();
    let (loss, _) = tape.cross_entropy(logits, &labels, "loss").unwrap();
    let listing = tape.to_string();
    assert!(
        listing.contains("conv2d") && listing.contains("cross_entropy"),
        "{listing}"
    );
    tape.backward(loss).unwrap();
    // Backward twice would double every parameter gradient: it is refused.
    match tape.backward(loss) {
        Err(GpuError::Tape(TapeError::BackwardTwice)) => {}
        other => panic!("second backward should fail, got {other:?}"),
    }
    tape.finish().unwrap();
    (g.download(&w1.grad).unwrap(), g.download(&w2.grad).unwrap())
}

#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() {
    let (separate_a, separate_b) = grads(false);
    let (shared, untouched) = grads(true);
    assert!(untouched.iter().all(|&v| v == 0.0));
    let mut nonzero = 0;
    for i in 0..shared.len() {
        let want = separate_a[i] + separate_b[i];
        assert!(
            (shared[i] - want).abs() <= 1e-6 + 1e-5 * want.abs(),
            "element {i}: {} vs {want}",
            shared[i]
        );
        nonzero += (want != 0.0) as usize;
    }
    assert!(nonzero > shared.len() / 2);
    // The two paths differ (different channels of the classifier), so a shared
    // gradient that only kept one path would fail above.
    assert!(separate_a
        .iter()
        .zip(&separate_b)
        .any(|(a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn inference_tape_refuses_backward() {
    let g = gpu();
    let x = g.upload(&[1.0, -1.0], &[1, 2], "x").unwrap();
    let mut tape = Tape::inference(g);
    let xv = tape.input(x, "x");
    let labels = g.upload(&[0.0], &[1], "labels").unwrap();
    let (loss, _) = tape.cross_entropy(xv, &labels, "loss").unwrap();
    assert!(tape.is_empty());
    assert!(tape.backward(loss).is_err());
}

/// The max pool keeps its argmax indices for backward, not its input: a pooled value that
/// no backward reads is released when backward starts, before the pool's backward allocates
/// the input's gradient. An inference tape saves no indices at all.
#[test]
fn max_pool_input_is_released_before_its_gradient_is_allocated() {
    // A device of its own, so that the allocation counters see this test only.
    let g = Gpu::open(&DeviceOptions::from_env()).unwrap();
    let shape = [1, 4, 64, 64];
    let n: usize = shape.iter().product();
    let data: Vec<f32> = Rng::new(3)
        .vec(n, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x = Param::new(&g, "x", &data, &shape).unwrap();
    let fc = Param::new(
        &g,
        "fc",
        &[0.5, -0.25, 1.0, 0.75, -1.0, 0.5, 0.25, -0.5],
        &[2, 4],
    )
    .unwrap();
    let labels = g.upload(&[1.0], &[1], "labels").unwrap();
    let pool = densenet_wgpu::ops::max_pool2d::Pool2dSpec {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let h_bytes = (n * 4) as u64;

    let mut tape = Tape::new(&g);
    let xv = tape.param(&x);
    let h = tape.relu(xv, "relu").unwrap();
    let y = tape.max_pool2d(h, pool, None, "pool").unwrap();
    let pooled = tape.global_avg_pool(y, "gap").unwrap();
    let f = tape.param(&fc);
    let logits = tape.linear(pooled, f, None, "fc").unwrap();
    let (loss, _) = tape.cross_entropy(logits, &labels, "loss").unwrap();
    tape.flush().unwrap();
    let before = g.memory().live_bytes();
    g.memory().reset_peak();
    tape.backward(loss).unwrap();
    tape.finish().unwrap();
    g.sync().unwrap();
    // Had the relu output h stayed alive, the pool's backward would have held it together
    // with d_h (as large) and d_y (a quarter of it). (The live handles: the device may hold
    // a dropped buffer a little longer, until the work submitted before the drop ends.)
    let growth = g.memory().peak_live_bytes() - before;
    assert!(
        growth < h_bytes,
        "peak grew by {growth} bytes during backward (h is {h_bytes})"
    );
    assert!(g.download(&x.grad).unwrap().iter().any(|&v| v != 0.0));

    let mut tape = Tape::inference(&g);
    let xv = tape.input(x.value.clone(), "x");
    let before = g.memory().live_bytes();
    tape.max_pool2d(xv, pool, None, "pool").unwrap();
    // y only: (1, 4, 32, 32).
    assert_eq!(g.memory().live_bytes() - before, 4 * 4 * 32 * 32);
    tape.finish().unwrap();
}

/// A dropped buffer stays allocated until the submitted work that may use it has ended, and
/// the accounting says so: it counts as held until a wait covers the submission after the
/// drop.
#[test]
fn dropped_buffers_are_held_until_their_work_ends() {
    let g = Gpu::open(&DeviceOptions::from_env()).unwrap();
    let bytes = 1u64 << 20;
    let t = g.zeros(&[(bytes / 4) as usize], "t").unwrap();
    let live = g.memory().live_bytes();
    let mut enc = g.encoder("uses t");
    enc.clear(&t);
    drop(t);
    assert_eq!(g.memory().live_bytes(), live - bytes);
    assert_eq!(
        g.memory().held_bytes(),
        live,
        "the open encoder still uses t"
    );
    let submitted = enc.submit_indexed().unwrap().expect("a submission");
    assert_eq!(g.memory().held_bytes(), live, "t's work is in flight");
    g.wait_for(submitted).unwrap();
    assert_eq!(g.memory().held_bytes(), live - bytes);
}

/// The tape submits every few MiB of new allocations and keeps at most two submissions in
/// flight, so the buffers it drops during a long backward pass are not all held at once.
#[test]
fn tape_bounds_the_memory_held_for_in_flight_work() {
    let g = Gpu::open(&DeviceOptions::from_env()).unwrap();
    let shape = [1, 16, 128, 128]; // 1 MiB per activation and per gradient
    let layers = 40;
    let new_param = |name: &str, shape: &[usize], seed: u64| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = Rng::new(seed)
            .vec(n, -0.5, 0.5)
            .iter()
            .map(|&v| v as f32)
            .collect();
        Param::new(&g, name, &data, shape).unwrap()
    };
    let x = new_param("x", &shape, 1);
    let ws: Vec<Param> = (0..layers)
        .map(|i| new_param(&format!("w{i}"), &[16, 16, 1, 1], 10 + i as u64))
        .collect();
    let fc = new_param("fc", &[2, 16], 99);
    let labels = g.upload(&[1.0], &[1], "labels").unwrap();
    let spec = Conv2dSpec {
        stride: 1,
        padding: 0,
    };

    let mut tape = Tape::new(&g);
    let mut h = tape.param(&x);
    for (i, w) in ws.iter().enumerate() {
        let wv = tape.param(w);
        h = tape
            .conv2d(h, wv, None, spec, None, &format!("conv{i}"))
            .unwrap();
    }
    let pooled = tape.global_avg_pool(h, "gap").unwrap();
    let f = tape.param(&fc);
    let logits = tape.linear(pooled, f, None, "fc").unwrap();
    let (loss, _) = tape.cross_entropy(logits, &labels, "loss").unwrap();
    tape.flush().unwrap();
    g.sync().unwrap();
    let before = g.memory().held_bytes();
    let allocated = g.memory().allocated_bytes();
    g.memory().reset_peak();
    tape.backward(loss).unwrap();
    tape.finish().unwrap();
    g.sync().unwrap();
    // Each layer's backward allocates its input's gradient (1 MiB) and then drops its
    // output's gradient and its input: about 40 MiB allocated and dropped over the pass
    // (held all at once without the bound).
    let churn = g.memory().allocated_bytes() - allocated;
    let growth = g.memory().peak_bytes() - before;
    assert!(churn > 32 << 20, "backward allocated only {churn} bytes");
    assert!(
        growth < 24 << 20,
        "held memory grew by {growth} bytes during backward ({churn} bytes allocated)"
    );
    assert!(g.download(&x.grad).unwrap().iter().any(|&v| v != 0.0));
}

/// `backward_with` reports each parameter once, when its gradient is final: what it holds
/// then (read back at once) is what it holds after backward. `w` is registered twice (two
/// slots, one gradient buffer), so its report must wait for both uses.
#[test]
fn backward_with_reports_each_parameter_once_when_its_gradient_is_final() {
    let g = gpu();
    let x = images(4);
    let w = param("w", &[4, 3, 3, 3], 1);
    let fc = param("fc", &[3, 8], 2);
    let labels = g.upload(&[1.0, 2.0], &[2], "labels").unwrap();
    let mut tape = Tape::new(g);
    let xv = tape.input(x, "x");
    let spec = Conv2dSpec {
        stride: 1,
        padding: 1,
    };
    let first = tape.param(&w);
    let ya = tape.conv2d(xv, first, None, spec, None, "conv a").unwrap();
    let second = tape.param(&w);
    let yb = tape.conv2d(xv, second, None, spec, None, "conv b").unwrap();
    let ra = tape.relu(ya, "relu a").unwrap();
    let rb = tape.relu(yb, "relu b").unwrap();
    let cat = tape.concat(&[ra, rb], "cat").unwrap();
    let pooled = tape.global_avg_pool(cat, "gap").unwrap();
    let f = tape.param(&fc);
    let logits = tape.linear(pooled, f, None, "fc").unwrap();
    let (loss, _) = tape.cross_entropy(logits, &labels, "loss").unwrap();
    let mut reported: Vec<(String, Vec<f32>)> = Vec::new();
    tape.backward_with(loss, &mut |tape, done| {
        tape.flush()?;
        for (name, grad) in done {
            reported.push((name.clone(), tape.gpu().download(grad)?));
        }
        Ok(())
    })
    .unwrap();
    tape.finish().unwrap();
    let names: Vec<&str> = reported.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["fc", "w"],
        "the classifier's gradient is final first"
    );
    for (name, at_report) in &reported {
        let p = if name == "w" { &w } else { &fc };
        assert_eq!(at_report, &g.download(&p.grad).unwrap(), "{name}");
    }
}

/// Backward starts from a loss: from another op's scalar output it fails, naming that op.
#[test]
fn backward_starts_from_a_loss() {
    let g = gpu();
    let w = param("w", &[1, 2], 5);
    let labels = g.upload(&[0.0], &[1], "labels").unwrap();

    let scalar = param("scalar", &[1], 6);
    let mut tape = Tape::new(g);
    let x = tape.param(&scalar);
    let y = tape.relu(x, "relu").unwrap();
    match tape.backward(y) {
        Err(GpuError::Tape(TapeError::NotALoss { op })) => assert_eq!(op, "relu"),
        other => panic!("expected an error naming relu, got {other:?}"),
    }

    let mut tape = Tape::new(g);
    let x = tape.param(&w);
    let (loss, _) = tape.cross_entropy(x, &labels, "loss").unwrap();
    tape.backward(loss).unwrap();
    assert!(g.download(&w.grad).unwrap().iter().any(|&v| v != 0.0));
}
