//! Burn 0.22.1 (wgpu backend, default features: autotune and fusion) on the named kernel
//! shapes of benches/kernels.rs, on the adapter wgpu picks by default (lavapipe on a machine
//! without a GPU), so that "ours vs Burn" is a ratio of two measurements on one machine.
//!
//! - forward: the op on a plain device.
//! - forward_backward: the op on an autodiff device, every input the crate's backward
//!   produces a gradient for marked `require_grad`, then `(y * g).sum().backward()` with a
//!   fixed random g: Burn has no backward from a given output gradient.
//! - seed: `(y * g).sum()` alone on a plain device, the part of forward_backward that the
//!   crate's benches do not do; benches/compare.py subtracts it.
//!
//! Each pass: the first call (which includes autotuning: minutes for a new convolution
//! shape), then the median of SAMPLES (default 9) calls, each followed by a device sync.
//! Prints a line per pass and writes target/bench/burn_wgpu_kernels.jsonl.
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, batch_norm_train, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use std::fmt::Write as _;
use std::time::Instant;

fn rand<const D: usize>(shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Uniform(-1.0, 1.0), dev)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// First-call ms and median ms of `f` (each call followed by a sync).
/// The closure's result (the outputs) stays alive until after the sync, so no lazy backend
/// can skip the work.
fn time<R>(dev: &Device, samples: usize, mut f: impl FnMut() -> R) -> (f64, f64) {
    let t = Instant::now();
    let out = f();
    dev.sync().unwrap();
    drop(out);
    let first = t.elapsed().as_secs_f64() * 1e3;
    let mut v = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let out = f();
        dev.sync().unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    (first, median(v))
}

/// Prints one pass and adds its JSON line to `out`.
fn report(out: &mut String, name: &str, pass: &str, (first, ms): (f64, f64)) {
    println!("{name:<26} {pass:<17} {ms:>10.2} ms   first call {:>9.1} s", first / 1e3);
    let _ = writeln!(
        out,
        "{{\"name\":\"{name}\",\"pass\":\"{pass}\",\"ms\":{ms:.3},\"first_ms\":{first:.1},\"framework\":\"burn-wgpu 0.22.1\"}}"
    );
}

fn main() {
    let filter: Option<String> = std::env::args().nth(1);
    let samples: usize = std::env::var("SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(9);
    let dev = Device::wgpu(DeviceKind::DefaultDevice);
    let mut out = String::new();
    let want = |n: &str| filter.as_deref().is_none_or(|f| n.contains(f));

    // (name, x shape, k, kernel, stride, pad, data_grad)
    let convs = [
        ("conv3x3_n8_c128_k32_s28", [8, 128, 28, 28], 32, 3, 1, 1, true),
        ("conv1x1_n8_c256_k128_s56", [8, 256, 56, 56], 128, 1, 1, 0, true),
        ("conv7x7s2_n8_c3_k64_s224", [8, 3, 224, 224], 64, 7, 2, 3, false),
    ];
    for (name, xs, k, ks, st, pad, data_grad) in convs {
        if !want(name) {
            continue;
        }
        let opt = || ConvOptions::new([st, st], [pad, pad], [1, 1], 1);
        let x = rand(xs, &dev);
        let w = rand([k, xs[1], ks, ks], &dev);
        let y0 = conv2d(x.clone(), w.clone(), None, opt());
        let g = rand(y0.dims(), &dev);
        report(&mut out, name, "forward", time(&dev, samples, || {
            conv2d(x.clone(), w.clone(), None, opt())
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (y0.clone() * g.clone()).sum()
        }));
        let xa = x.clone().autodiff();
        let xa = if data_grad { xa.require_grad() } else { xa };
        let wa = w.clone().autodiff().require_grad();
        let ga = g.clone().autodiff();
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let y = conv2d(xa.clone(), wa.clone(), None, opt());
            let grads = (y * ga.clone()).sum().backward();
            (wa.grad(&grads), xa.grad(&grads))
        }));
    }

    let s56 = [8, 256, 56, 56];
    if want("bn_n8_c256_s56") {
        let name = "bn_n8_c256_s56";
        let x = rand(s56, &dev);
        let g = rand(s56, &dev);
        let gamma = Tensor::<1>::ones([256], &dev);
        let beta = Tensor::<1>::zeros([256], &dev);
        report(&mut out, name, "forward", time(&dev, samples, || {
            let o = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
            o.output
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (x.clone() * g.clone()).sum()
        }));
        let (xa, ga) = (x.clone().autodiff().require_grad(), g.clone().autodiff());
        let gma = gamma.clone().autodiff().require_grad();
        let bta = beta.clone().autodiff().require_grad();
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let o = batch_norm_train(xa.clone(), gma.clone(), bta.clone(), 1e-5);
            let grads = (o.output * ga.clone()).sum().backward();
            (xa.grad(&grads), gma.grad(&grads), bta.grad(&grads))
        }));
    }
    if want("relu_n8_c256_s56") {
        let name = "relu_n8_c256_s56";
        let x = rand(s56, &dev);
        let g = rand(s56, &dev);
        report(&mut out, name, "forward", time(&dev, samples, || {
            relu(x.clone())
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (x.clone() * g.clone()).sum()
        }));
        let (xa, ga) = (x.clone().autodiff().require_grad(), g.clone().autodiff());
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let grads = (relu(xa.clone()) * ga.clone()).sum().backward();
            xa.grad(&grads)
        }));
    }
    if want("avgpool2_n8_c256_s56") {
        let name = "avgpool2_n8_c256_s56";
        let x = rand(s56, &dev);
        let g = rand([8, 256, 28, 28], &dev);
        let y0 = avg_pool2d(x.clone(), AvgPoolOptions::new([2, 2]));
        report(&mut out, name, "forward", time(&dev, samples, || {
            avg_pool2d(x.clone(), AvgPoolOptions::new([2, 2]))
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (y0.clone() * g.clone()).sum()
        }));
        let (xa, ga) = (x.clone().autodiff().require_grad(), g.clone().autodiff());
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let y = avg_pool2d(xa.clone(), AvgPoolOptions::new([2, 2]));
            let grads = (y * ga.clone()).sum().backward();
            xa.grad(&grads)
        }));
    }
    if want("concat_n8_c256p32_s28") {
        let name = "concat_n8_c256p32_s28";
        let a = rand([8, 256, 28, 28], &dev);
        let b = rand([8, 32, 28, 28], &dev);
        let g = rand([8, 288, 28, 28], &dev);
        let y0 = Tensor::cat(vec![a.clone(), b.clone()], 1);
        report(&mut out, name, "forward", time(&dev, samples, || {
            Tensor::cat(vec![a.clone(), b.clone()], 1)
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (y0.clone() * g.clone()).sum()
        }));
        let (aa, ba) = (a.clone().autodiff().require_grad(), b.clone().autodiff().require_grad());
        let ga = g.clone().autodiff();
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let y = Tensor::cat(vec![aa.clone(), ba.clone()], 1);
            let grads = (y * ga.clone()).sum().backward();
            (aa.grad(&grads), ba.grad(&grads))
        }));
    }
    if want("maxpool3s2_n8_c64_s112") {
        let name = "maxpool3s2_n8_c64_s112";
        let opt = || MaxPoolOptions::new([3, 3]).with_stride([2, 2]).with_padding([1, 1]);
        let x = rand([8, 64, 112, 112], &dev);
        let g = rand([8, 64, 56, 56], &dev);
        let y0 = max_pool2d(x.clone(), opt());
        report(&mut out, name, "forward", time(&dev, samples, || {
            max_pool2d(x.clone(), opt())
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (y0.clone() * g.clone()).sum()
        }));
        let (xa, ga) = (x.clone().autodiff().require_grad(), g.clone().autodiff());
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let grads = (max_pool2d(xa.clone(), opt()) * ga.clone()).sum().backward();
            xa.grad(&grads)
        }));
    }
    if want("linear_n8_1024_4") {
        let name = "linear_n8_1024_4";
        let x = rand([8, 1024], &dev);
        let w = rand([1024, 4], &dev);
        let b = rand([1, 4], &dev);
        let g = rand([8, 4], &dev);
        report(&mut out, name, "forward", time(&dev, samples, || {
            x.clone().matmul(w.clone()) + b.clone()
        }));
        let (xa, wa, ba, ga) = (
            x.clone().autodiff().require_grad(),
            w.clone().autodiff().require_grad(),
            b.clone().autodiff().require_grad(),
            g.clone().autodiff(),
        );
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let y = xa.clone().matmul(wa.clone()) + ba.clone();
            let grads = (y * ga.clone()).sum().backward();
            (xa.grad(&grads), wa.grad(&grads), ba.grad(&grads))
        }));
    }
    if want("matmul_512") {
        let name = "matmul_512";
        let a = rand([512, 512], &dev);
        let b = rand([512, 512], &dev);
        let g = rand([512, 512], &dev);
        report(&mut out, name, "forward", time(&dev, samples, || {
            a.clone().matmul(b.clone())
        }));
        report(&mut out, name, "seed", time(&dev, samples, || {
            (a.clone() * g.clone()).sum()
        }));
        let (aa, ba, ga) = (
            a.clone().autodiff().require_grad(),
            b.clone().autodiff().require_grad(),
            g.clone().autodiff(),
        );
        report(&mut out, name, "forward_backward", time(&dev, samples, || {
            let grads = (aa.clone().matmul(ba.clone()) * ga.clone()).sum().backward();
            (aa.grad(&grads), ba.grad(&grads))
        }));
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench");
    let path = format!("{dir}/burn_wgpu_kernels.jsonl");
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, &out)) {
        eprintln!("cannot write {path}: {e}");
        std::process::exit(1);
    }
    println!("wrote {path}");
}
