use crate::{data, gpu};
use densenet_wgpu::models::BlockMode;
use densenet_wgpu::verify::{verify_golden, verify_golden_with, GRAD_REL_LOOSE, GRAD_REL_TIGHT};

/// `relu_inputs`: how many ReLU inputs the model's forward pass has.
fn check(golden: &str, mode: BlockMode, relu_inputs: usize) {
    let report = verify_golden(gpu(), &data(golden), mode).unwrap();
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    // No ReLU input of these models is within rounding of zero, so every group of the
    // reference README is compared at its tight tolerance.
    assert_eq!(report.relu.near_zero, 0, "{}", report.table());
    assert_eq!(report.relu.total, relu_inputs, "{}", report.table());
    assert!(report.checks.len() >= 8, "{}", report.table());
    let grad = report.checks.iter().find(|c| c.group.starts_with("grad.*"));
    assert_eq!(grad.map(|c| c.tolerance), Some(GRAD_REL_TIGHT));
}

#[test]
fn plain_blocks_match_pytorch() {
    check(
        "densenet_bc_small_golden.safetensors",
        BlockMode::Plain,
        277_248,
    );
}

#[test]
fn memory_efficient_blocks_match_pytorch() {
    check(
        "densenet_bc_small_golden.safetensors",
        BlockMode::MemoryEfficient,
        277_248,
    );
}

// torchvision's ResNet blocks at stage widths 8..64 on non-square 96x120 / 96x128 inputs
// (last stage 3x4), batch 3: identity and downsample shortcuts, strided 3x3 and 1x1.

#[test]
fn resnet_basic_blocks_match_pytorch_in_both_modes() {
    for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
        check("resnet_basic_small_golden.safetensors", mode, 173_952);
    }
}

#[test]
fn resnet_bottleneck_blocks_match_pytorch_in_both_modes() {
    for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
        check("resnet_bottleneck_small_golden.safetensors", mode, 384_768);
    }
}

// timm's pre-activation ResNet (resnetv2_18 / resnetv2_50 blocks) at stem width 8 on
// non-square 96x120 / 80x128 inputs, batch 3: stage 0's basic block keeps the raw shortcut,
// the others start with a 1x1 shortcut convolution of the pre-activated input (strided from
// stage 1 on), which in the memory-efficient mode shares norm1 with conv1.

#[test]
fn resnet_v2_basic_blocks_match_timm_in_both_modes() {
    for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
        check("resnetv2_basic_small_golden.safetensors", mode, 122_112);
    }
}

#[test]
fn resnet_v2_bottleneck_blocks_match_timm_in_both_modes() {
    for mode in [BlockMode::MemoryEfficient, BlockMode::Plain] {
        check(
            "resnetv2_bottleneck_small_golden.safetensors",
            mode,
            276_480,
        );
    }
}

/// The memory-efficient mode stores no BN+ReLU output that feeds only convolutions: a
/// training step's peak above the parameter state drops by at least the plain mode's
/// pre-activations of the first stage (norm1, norm2 and norm3 of its one block, batch 8 at
/// 64x64: 16x16 planes of 8, 8 and 8 channels).
#[test]
fn resnet_v2_memory_efficient_mode_stores_no_pre_activation() {
    use densenet_wgpu::budget::{plan_training, RunShape};
    use densenet_wgpu::models::{ModelConfig, ResNetBlock, ResNetV2Config};
    let config = ModelConfig::ResNetV2(ResNetV2Config {
        block: ResNetBlock::Bottleneck,
        layers: vec![1, 1, 1, 1],
        width: 8,
        num_classes: 5,
    });
    let step_bytes = |mode| {
        let shape = RunShape {
            config: config.clone(),
            mode,
            freeze_features: false,
            image_size: 64,
        };
        let plan = plan_training(gpu(), &shape, 8, None).unwrap().unwrap();
        plan.peak_bytes - plan.state_bytes
    };
    let (efficient, plain) = (
        step_bytes(BlockMode::MemoryEfficient),
        step_bytes(BlockMode::Plain),
    );
    let first_stage = 3 * 8 * 8 * 16 * 16 * 4;
    assert!(
        efficient + first_stage <= plain,
        "memory-efficient {efficient} B, plain {plain} B"
    );
}

#[test]
fn gradient_tolerance_loosens_only_with_relu_inputs_near_zero() {
    // At 1e-5 of each tensor's maximum, DenseNet-BC has six ReLU inputs "near zero":
    // the report says so and the gradients are held to the loose tolerance.
    let path = data("densenet_bc_small_golden.safetensors");
    let report = verify_golden_with(gpu(), &path, BlockMode::MemoryEfficient, 1e-5).unwrap();
    assert_eq!(report.relu.near_zero, 6, "{}", report.table());
    assert!(report.table().contains("loosened"), "{}", report.table());
    let grad = report.checks.iter().find(|c| c.group.starts_with("grad.*"));
    assert_eq!(grad.map(|c| c.tolerance), Some(GRAD_REL_LOOSE));
}

#[test]
fn verify_torch_command_passes_and_fails_correctly() {
    let exe = env!("CARGO_BIN_EXE_train");
    // The architecture comes from the file's names and shapes.
    for (golden, arch) in [
        (
            "densenet_bc_small_golden.safetensors",
            "DenseNet(growth_rate=12",
        ),
        (
            "resnet_basic_small_golden.safetensors",
            "resnet.BasicBlock, [2, 1, 1, 2]",
        ),
        (
            "resnetv2_bottleneck_small_golden.safetensors",
            "ResNetV2([1, 2, 1, 1], channels=[32, 64, 128, 256], stem_chs=8, basic=False",
        ),
    ] {
        let out = std::process::Command::new(exe)
            .args(["verify-torch", data(golden).to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(arch)
                && stdout.contains("logits")
                && stdout.contains("ReLU inputs within 1e-6 x max|v| of zero: 0 of")
                && stdout.contains("all groups within tolerance"),
            "{stdout}"
        );
    }

    // A file that is not a golden reference: a clear error and a non-zero exit.
    let out = std::process::Command::new(exe)
        .args([
            "verify-torch",
            data("architecture_densenet_bc_small.txt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("architecture_densenet_bc_small.txt"),
        "{stderr}"
    );
}

#[test]
fn perturbed_reference_is_reported() {
    use densenet_wgpu::weights::{self, Entry, TensorFile};
    let file = TensorFile::read(&data("densenet_bc_small_golden.safetensors")).unwrap();
    let target = "grad.features.denseblock2.denselayer3.conv1.weight";
    let entries: Vec<(String, Entry)> = file
        .tensors
        .iter()
        .map(|(name, t)| {
            let e = if t.dtype == safetensors::Dtype::I64 {
                Entry::I64(t.shape.clone(), t.data.iter().map(|&v| v as i64).collect())
            } else if name == target {
                // A 2% error in one gradient tensor: far above the 1e-4 rel-L2 bound.
                Entry::F32(
                    t.shape.clone(),
                    t.data.iter().map(|&v| (v * 1.02) as f32).collect(),
                )
            } else {
                Entry::F32(t.shape.clone(), t.to_f32())
            };
            (name.clone(), e)
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("perturbed.safetensors");
    weights::write(&path, entries, Default::default()).unwrap();
    let report = verify_golden(gpu(), &path, BlockMode::MemoryEfficient).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed()).collect();
    assert!(!failed.is_empty(), "{}", report.table());
    assert!(
        failed
            .iter()
            .any(|c| c.worst == target.trim_start_matches("grad.")),
        "{}",
        report.table()
    );
    // Against the float32 PyTorch outputs themselves everything else still passes (the
    // Adam-kernel check steps from the perturbed gradients, so it must fail too).
    assert!(
        failed
            .iter()
            .all(|c| c.group.starts_with("grad") || c.group.starts_with("Adam kernel")),
        "{}",
        report.table()
    );
    assert!(report
        .checks
        .iter()
        .filter(|c| c.group == "logits" || c.group == "loss")
        .all(|c| c.passed()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn running_stat_tolerance_follows_pytorchs_own_float32_deviation() {
    use densenet_wgpu::weights::{self, Entry, TensorFile};
    // A float64 twin whose running statistics sit 3e-5 (relative) away from the float32
    // outputs, as on deep networks with small last feature maps: PyTorch's own float32 run
    // then misses the fixed 1e-5 bound, and ours is held to twice its deviation instead.
    let file = TensorFile::read(&data("densenet_bc_small_golden.safetensors")).unwrap();
    let twin = |shift: f64| -> Vec<(String, Entry)> {
        file.tensors
            .iter()
            .map(|(name, t)| {
                let e = if t.dtype == safetensors::Dtype::I64 {
                    Entry::I64(t.shape.clone(), t.data.iter().map(|&v| v as i64).collect())
                } else if name.starts_with("after.") {
                    let m = t.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    Entry::F32(
                        t.shape.clone(),
                        t.data.iter().map(|v| (v + shift * m) as f32).collect(),
                    )
                } else {
                    Entry::F32(t.shape.clone(), t.to_f32())
                };
                (name.clone(), e)
            })
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-calibrated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shifted_golden.safetensors");
    weights::write(&path, twin(0.0), Default::default()).unwrap();
    weights::write(
        &dir.join("shifted_golden_f64.safetensors"),
        twin(3e-5),
        Default::default(),
    )
    .unwrap();
    let report = verify_golden(gpu(), &path, BlockMode::MemoryEfficient).unwrap();
    let stats = report
        .checks
        .iter()
        .find(|c| c.group.starts_with("after."))
        .unwrap();
    assert!(
        stats.metric.contains("2x PyTorch f32"),
        "{}",
        report.table()
    );
    assert!(
        stats.tolerance > 5.5e-5 && stats.tolerance < 6.5e-5,
        "{}",
        report.table()
    );
    assert!(stats.value > 2e-5 && stats.passed(), "{}", report.table());
    std::fs::remove_dir_all(&dir).ok();
}
