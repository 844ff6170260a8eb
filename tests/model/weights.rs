use crate::{data, gpu};
use densenet_wgpu::models::{DenseNet, DenseNetConfig, ModelConfig};
use densenet_wgpu::weights::{self, infer_config, TensorFile, TensorMismatch, WeightsError};

#[test]
fn save_load_round_trip_and_architecture_inference() {
    let g = gpu();
    let cfg = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 3],
        num_init_features: 8,
        bn_size: 2,
        num_classes: 3,
    };
    let model = DenseNet::new(g, cfg.clone(), 7).unwrap();
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    weights::write(
        &path,
        pollster::block_on(model.store.state_dict(g)).unwrap(),
        Default::default(),
    )
    .unwrap();
    let file = TensorFile::read(&path).unwrap();
    assert_eq!(
        infer_config(&file).unwrap(),
        ModelConfig::DenseNet(cfg.clone())
    );
    let mut other = DenseNet::new(g, cfg, 8).unwrap();
    other.store.load(g, &file, &[]).unwrap();
    for (a, b) in model.store.params.iter().zip(&other.store.params) {
        assert_eq!(
            g.download(&a.value).unwrap(),
            g.download(&b.value).unwrap(),
            "{}",
            a.name
        );
    }
    // torchvision names
    assert!(file
        .tensors
        .contains_key("features.denseblock2.denselayer3.norm1.running_mean"));
    assert!(file
        .tensors
        .contains_key("features.transition1.conv.weight"));
    assert!(file.tensors.contains_key("classifier.bias"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loading_another_architecture_lists_mismatches() {
    let g = gpu();
    let file = TensorFile::read(&data("densenet_bc_small_golden.safetensors")).unwrap();
    let cfg = DenseNetConfig {
        growth_rate: 12,
        block_config: vec![6, 6],
        num_init_features: 24,
        bn_size: 4,
        num_classes: 10,
    };
    let mut model = DenseNet::new(g, cfg, 0).unwrap();
    match model.store.load(
        g,
        &file,
        &[
            "input", "labels", "logits", "loss", "grad.", "after.", "adam1.",
        ],
    ) {
        Err(WeightsError::Mismatch {
            problems,
            total,
            path,
        }) => {
            assert!(path.ends_with("densenet_bc_small_golden.safetensors"));
            assert!(total > problems.len());
            assert!(
                problems.iter().any(|p| matches!(p,
                    TensorMismatch::Unexpected { name } if name.starts_with("features.denseblock3"))),
                "{problems:?}"
            );
            assert!(
                problems
                    .iter()
                    .any(|p| p.to_string().contains("features.norm5.weight")),
                "{problems:?}"
            );
        }
        Err(e) => panic!("expected a mismatch, got {e}"),
        Ok(()) => panic!("expected a mismatch"),
    }
}
