use crate::common::*;
use densenet_wgpu::gpu::{GpuError, Tensor};
use densenet_wgpu::ops::adam::{self, AdamConfig};

/// PyTorch's single-tensor Adam in f32, operation by operation (the order the kernel
/// follows), for a bit-level comparison.
fn torch_f32(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], cfg: &AdamConfig, t: u32) {
    let w = adam::widen;
    let (lr, b1, b2, wd) = (w(cfg.lr), w(cfg.beta1), w(cfg.beta2), w(cfg.weight_decay));
    let bc1 = 1.0 - b1.powf(t as f64);
    let bc2 = 1.0 - b2.powf(t as f64);
    let lerp_w = (1.0 - b1) as f32;
    let neg_step = (-(lr / bc1)) as f32;
    let bc2s = bc2.sqrt() as f32;
    for i in 0..p.len() {
        let mut gi = g[i];
        if cfg.weight_decay != 0.0 {
            if cfg.decoupled {
                p[i] *= (1.0 - lr * wd) as f32;
            } else {
                gi += cfg.weight_decay * p[i];
            }
        }
        m[i] = if lerp_w.abs() < 0.5 {
            m[i] + lerp_w * (gi - m[i])
        } else {
            gi - (gi - m[i]) * (1.0 - lerp_w)
        };
        v[i] = v[i] * cfg.beta2 + ((1.0 - b2) as f32 * gi) * gi;
        let denom = v[i].sqrt() / bc2s + cfg.eps;
        p[i] += (neg_step * m[i]) / denom;
    }
}

/// Five steps with a changing lr, against the f64 reference and the f32 emulation.
///
/// Tolerances (u = 2^-24). param: every step rounds p twice (decay, add) and the update
/// carries the roundings of m, v, sqrt, two divisions and products, under 16 u relative;
/// so |Δp| <= sum over steps of 2 u |p_t| + 16 u |update_t|, checked per element (about
/// 1e-7 relative for |p| ~ 1). m and v carry a few roundings of values of size |g| <= 1
/// and g^2 <= 1 per step: atol 1e-7, rtol 1e-6. Against the f32 emulation of PyTorch's
/// order the results must agree to 1 ulp (the slack covers a contracted FMA).
fn check(numel: usize, weight_decay: f32, decoupled: bool, seed: u64) {
    let p0 = f32s(&rand(seed, numel, -1.0, 1.0));
    let param = gpu().upload(&p0, &[numel], "param").unwrap();
    let m = gpu().zeros(&[numel], "m").unwrap();
    let v = gpu().zeros(&[numel], "v").unwrap();
    let grad = gpu().zeros(&[numel], "grad").unwrap();
    let (mut rp, mut rm, mut rv) = (f64s(&p0), vec![0.0; numel], vec![0.0; numel]);
    let (mut fp, mut fm, mut fv) = (p0.clone(), vec![0.0f32; numel], vec![0.0f32; numel]);
    let mut bound = vec![0.0f64; numel];
    for t in 1..=5u32 {
        let cfg = AdamConfig {
            lr: 1e-3 * (1.0 + 0.5 * t as f32), // a schedule: lr changes every step
            weight_decay,
            decoupled,
            ..AdamConfig::default()
        };
        let g = f32s(&rand(seed * 10 + t as u64, numel, -1.0, 1.0));
        gpu().write(&grad, &g).unwrap();
        run(|e| adam::step(e, &param, &m, &v, &grad, cfg, t).unwrap());
        let before = rp.clone();
        adam::reference::step(&mut rp, &mut rm, &mut rv, &f64s(&g), &cfg, t);
        for i in 0..numel {
            let u = 1.0 / (1u64 << 24) as f64;
            bound[i] +=
                2.0 * u * before[i].abs().max(rp[i].abs()) + 16.0 * u * (rp[i] - before[i]).abs();
        }
        torch_f32(&mut fp, &mut fm, &mut fv, &g, &cfg, t);
        let tag = format!("wd {weight_decay} decoupled {decoupled} step {t}");
        let got = download(&param);
        for i in 0..numel {
            let d = (got[i] - rp[i]).abs();
            assert!(
                d <= bound[i],
                "param[{i}] ({tag}): got {} want {} (|diff| {d:.3e} > bound {:.3e})",
                got[i],
                rp[i],
                bound[i]
            );
        }
        assert_close(&format!("m ({tag})"), &download(&m), &rm, 1e-7, 1e-6);
        assert_close(&format!("v ({tag})"), &download(&v), &rv, 1e-7, 1e-6);
        let ulp = |x: f32| (f32::from_bits(x.abs().to_bits() + 1) - x.abs()) as f64;
        for (name, got, want) in [("param", &param, &fp), ("m", &m, &fm), ("v", &v, &fv)] {
            let got = gpu().download(got).unwrap();
            for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                // m and v use only multiplies and adds: within 1 ulp of PyTorch's f32 order.
                // The parameter update divides by sqrt(v)+eps; WGSL allows 2.5 ulp for
                // division and sqrt (NVIDIA's Vulkan driver uses that freedom, lavapipe does
                // not), so allow 3 ulp of the update's size on top.
                let slack = if name == "param" {
                    3.0 * ulp((rp[i] - before[i]).abs() as f32)
                } else {
                    0.0
                };
                assert!(
                    ((a - b).abs() as f64) <= ulp(*b) + slack,
                    "{name}[{i}] ({tag}): {a} vs f32 emulation {b}"
                );
            }
        }
    }
}

#[test]
fn gpu_matches_reference_over_five_steps() {
    // 1003: scalar kernel, 4 workgroups of 256; 2052 = 4 * 513: vec4 kernel, 3 workgroups.
    for (i, &(wd, dec)) in [(0.0, false), (0.01, false), (0.0, true), (0.05, true)]
        .iter()
        .enumerate()
    {
        check(1003, wd, dec, 100 + i as u64);
        check(2052, wd, dec, 200 + i as u64);
    }
}

#[test]
fn parameters_at_offsets() {
    // Four parameters packed in one buffer each for param, m, v, grad (views at offsets
    // 0, 5, 9, 12: scalar kernel), stepped one by one.
    let sizes = [5usize, 4, 3, 8];
    let total: usize = sizes.iter().sum();
    let p0 = f32s(&rand(300, total, -1.0, 1.0));
    let g0 = f32s(&rand(301, total, -1.0, 1.0));
    let pb = gpu().upload(&p0, &[total], "params").unwrap();
    let mb = gpu().zeros(&[total], "ms").unwrap();
    let vb = gpu().zeros(&[total], "vs").unwrap();
    let gb = gpu().upload(&g0, &[total], "grads").unwrap();
    let view = |t: &Tensor, off: usize, len: usize| {
        let mut v = t.reshape(&[len]).unwrap_or_else(|_| t.clone());
        v.shape = vec![len];
        v.offset = off;
        v
    };
    let cfg = AdamConfig::default();
    run(|e| {
        let mut off = 0;
        for &s in &sizes {
            adam::step(
                e,
                &view(&pb, off, s),
                &view(&mb, off, s),
                &view(&vb, off, s),
                &view(&gb, off, s),
                cfg,
                1,
            )
            .unwrap();
            off += s;
        }
    });
    let (mut rp, mut rm, mut rv) = (f64s(&p0), vec![0.0; total], vec![0.0; total]);
    adam::reference::step(&mut rp, &mut rm, &mut rv, &f64s(&g0), &cfg, 1);
    assert_close("params", &download(&pb), &rp, 1e-9, 2e-7);
}

#[test]
fn errors_are_typed() {
    let z = |s: &[usize], l: &str| -> Tensor { gpu().zeros(s, l).unwrap() };
    let (p, m, v, g) = (z(&[3, 4], "p"), z(&[12], "m"), z(&[12], "v"), z(&[12], "g"));
    let mut enc = gpu().encoder("bad");
    let cfg = AdamConfig::default();
    // Same numel in other shapes is fine.
    adam::step(&mut enc, &p, &m, &v, &g, cfg, 1).unwrap();
    let is_shape = |r: densenet_wgpu::gpu::Result<()>, needle: &str| match r {
        Err(GpuError::Shape(msg)) => {
            assert!(
                msg.to_string().contains(needle),
                "{msg:?} should mention {needle:?}"
            )
        }
        other => panic!("expected a shape error mentioning {needle:?}, got {other:?}"),
    };
    is_shape(adam::step(&mut enc, &p, &m, &v, &g, cfg, 0), "step");
    is_shape(
        adam::step(&mut enc, &p, &z(&[11], "m11"), &v, &g, cfg, 1),
        "m",
    );
    is_shape(
        adam::step(&mut enc, &p, &m, &z(&[13], "v13"), &g, cfg, 1),
        "v",
    );
    is_shape(
        adam::step(&mut enc, &p, &m, &v, &z(&[2, 5], "g10"), cfg, 1),
        "grad",
    );
    is_shape(adam::step(&mut enc, &p, &m, &m, &g, cfg, 1), "share");
}

/// The kernel alone on the golden parameters and gradients (one PyTorch Adam step,
/// lr 1e-3): max |Δ| <= 2e-7 per tensor. Runs when the golden file is found
/// (`DENSENET_GOLDEN_DIR`, or a `shared/golden` folder beside or above the crate).
#[test]
fn golden_adam_step() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = std::env::var("DENSENET_GOLDEN_DIR")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(["shared/golden", "../shared/golden", "../../shared/golden"].map(|d| root.join(d)));
    let Some(file) = dirs
        .map(|d| d.join("densenet_bc_small_golden.safetensors"))
        .find(|f| f.exists())
    else {
        eprintln!("golden_adam_step: golden file not found, skipped");
        return;
    };
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32_of = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut checked = 0;
    let mut worst = 0.0f32;
    for name in st.names() {
        let Some(param) = name.strip_prefix("adam1.") else {
            continue;
        };
        let (p0, g, want) = (
            f32_of(param),
            f32_of(&format!("grad.{param}")),
            f32_of(name),
        );
        let n = p0.len();
        let p = gpu().upload(&p0, &[n], param).unwrap();
        let m = gpu().zeros(&[n], "m").unwrap();
        let v = gpu().zeros(&[n], "v").unwrap();
        let gt = gpu().upload(&g, &[n], "grad").unwrap();
        run(|e| adam::step(e, &p, &m, &v, &gt, AdamConfig::default(), 1).unwrap());
        let got = gpu().download(&p).unwrap();
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d <= 2e-7, "{param}: max |Δ| = {d:e}");
        worst = worst.max(d);
        checked += 1;
    }
    assert!(checked > 10, "only {checked} parameters in the golden file");
    eprintln!("golden_adam_step: {checked} tensors, worst max |Δ| = {worst:e}");
}
