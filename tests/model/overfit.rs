use crate::gpu;
use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::Dataset;
use densenet_wgpu::models::{DenseNet, DenseNetConfig, Model};
use densenet_wgpu::ops::adam::AdamConfig;
use densenet_wgpu::optim::{Adam, Schedule};
use densenet_wgpu::train::Trainer;

#[test]
fn overfits_a_tiny_batch() {
    let g = gpu();
    let data = Synthetic::new(8, 32, 5);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..8 {
        let (img, l) = data.get(i, None).unwrap();
        images.extend(img);
        labels.push(l);
    }
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
    let first = t.train_step(&images, &labels, 32).unwrap().loss;
    let mut last = first;
    for _ in 0..40 {
        last = t.train_step(&images, &labels, 32).unwrap().loss;
    }
    println!("loss {first:.4} -> {last:.4}");
    assert!(last < first / 10.0, "loss only fell from {first} to {last}");
}
