use crate::gpu;
use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::Dataset;
use densenet_wgpu::models::{DenseNet, DenseNetConfig, Model};
use densenet_wgpu::ops::adam::AdamConfig;
use densenet_wgpu::optim::{Adam, Schedule};
use densenet_wgpu::train::{StepError, Trainer};
use pollster::block_on;

/// Every image of `data` as one batch: NCHW pixels and labels.
fn batch(data: &Synthetic) -> (Vec<f32>, Vec<usize>) {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..data.len() {
        let (img, l) = data.get(i, None).unwrap();
        images.extend(img);
        labels.push(l);
    }
    (images, labels)
}

#[test]
fn overfits_a_tiny_batch() {
    let g = gpu();
    let data = Synthetic::new(8, 32, 5);
    let (images, labels) = batch(&data);
    let model = DenseNet::new(g, DenseNetConfig::densenet_tiny(data.classes().len()), 1).unwrap();
    let cfg = AdamConfig {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
    };
    let opt = Adam::new(g, model.params(), cfg, Schedule::Constant).unwrap();
    let mut t = Trainer::new(g, Box::new(model), opt);
    let first = block_on(t.train_step(&images, &labels, 32)).unwrap().loss;
    let mut last = first;
    for _ in 0..40 {
        last = block_on(t.train_step(&images, &labels, 32)).unwrap().loss;
    }
    println!("loss {first:.4} -> {last:.4}");
    assert!(last < first / 10.0, "loss only fell from {first} to {last}");
}

/// A gradient that is not finite while the loss is: the step applies nothing (the weights
/// stay as they were), clears the gradients and names the parameter; the next step trains.
#[test]
fn a_non_finite_gradient_with_a_finite_loss_applies_nothing() {
    let g = gpu();
    let data = Synthetic::new(4, 16, 7);
    let (images, labels) = batch(&data);
    let model = DenseNet::new(g, DenseNetConfig::densenet_tiny(data.classes().len()), 1).unwrap();
    let opt = Adam::new(g, model.params(), AdamConfig::default(), Schedule::Constant).unwrap();
    let mut t = Trainer::new(g, Box::new(model), opt);
    // Gradients accumulate: a NaN already in one gradient survives the backward pass,
    // which leaves the loss finite.
    let p = &t.model.params()[3];
    let (name, value, grad) = (p.name.clone(), p.value.clone(), p.grad.clone());
    let before = g.download(&value).unwrap();
    let mut nan = vec![0.0f32; grad.numel()];
    nan[0] = f32::NAN;
    g.write(&grad, &nan).unwrap();
    match block_on(t.train_step(&images, &labels, 16)) {
        Err(StepError::NonFinite { step, loss, param }) => {
            assert_eq!(step, 1);
            assert!(loss.is_finite(), "loss {loss}");
            assert_eq!(param.as_deref(), Some(name.as_str()));
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert_eq!(g.download(&value).unwrap(), before, "a weight changed");
    assert!(g.download(&grad).unwrap().iter().all(|&v| v == 0.0));
    assert_eq!(t.opt.step, 0);
    block_on(t.train_step(&images, &labels, 16)).unwrap();
    assert_eq!(t.opt.step, 1);
}
