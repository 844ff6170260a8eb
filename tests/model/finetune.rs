//! Fine-tuning: `--init` from a run on one image folder, on another folder with a
//! different class count, with `--freeze-features`.

use std::path::Path;

use crate::{image_folder, text, train};
use densenet_wgpu::weights::TensorFile;

#[test]
fn fine_tuning_with_frozen_features_replaces_the_classifier_and_keeps_the_rest() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-finetune-{}", std::process::id()));
    let (a, b) = (base.join("four"), base.join("two"));
    image_folder(&a, 4, 12, 1);
    image_folder(&b, 2, 12, 2);
    let (run_a, run_b) = (base.join("run-a"), base.join("run-b"));
    let common = ["--image-size", "32", "--epochs", "1"];
    let fit = |data: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec!["fit", "--data", data.to_str().unwrap()];
        args.extend(common);
        if !extra.contains(&"--model") {
            args.extend(["--model", "resnet18"]);
        }
        args.extend(["--batch-size", "8", "--out", out.to_str().unwrap()]);
        args.extend(extra);
        train(&args)
    };
    let o = fit(&a, &run_a, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let init = run_a.join("checkpoint.safetensors");

    // Another class count: the classifier is replaced, and the output says so.
    let o = fit(
        &b,
        &run_b,
        &["--init", init.to_str().unwrap(), "--freeze-features"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    assert!(
        log.contains("fc.* replaced by a freshly initialised one (4 → 2 classes)"),
        "{log}"
    );
    assert!(log.contains("training only fc.*"), "{log}");

    // Every tensor outside the classifier, BN running statistics and counters included,
    // is bit-identical to the initial weights; the classifier has 2 rows and was trained.
    let before = TensorFile::read(&init).unwrap();
    let after = TensorFile::read(&run_b.join("checkpoint.safetensors")).unwrap();
    let mut compared = 0;
    for (name, t) in &after.tensors {
        if name.starts_with("optim.") || name.starts_with("fc.") {
            continue;
        }
        let want = &before.tensors[name];
        let same = t
            .data
            .iter()
            .zip(&want.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same && t.shape == want.shape, "{name} changed");
        compared += 1;
    }
    // resnet18 outside fc: 60 parameters, and 20 BNs with two statistics and a counter each.
    assert_eq!(compared, 120);
    assert_eq!(after.tensors["fc.weight"].shape, vec![2, 512]);
    assert_eq!(after.tensors["fc.bias"].shape, vec![2]);
    assert_ne!(
        after.tensors["optim.m.fc.weight"]
            .data
            .iter()
            .map(|v| v.abs())
            .sum::<f64>(),
        0.0,
        "the classifier was not trained"
    );

    // Weights of another architecture are refused, naming both.
    let o = fit(
        &b,
        &base.join("run-c"),
        &["--init", init.to_str().unwrap(), "--model", "resnet34"],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("BasicBlock, [2, 2, 2, 2]"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(&base).ok();
}

/// Weights trained on inputs normalised one way do not start a run whose data is normalised
/// another way: the run stops before training, naming the file and both normalisations.
/// With the recorded normalisation (`run::weights_normalization`) it starts.
#[test]
fn init_weights_must_share_the_datas_normalisation() {
    use std::sync::Arc;

    use densenet_wgpu::data::synthetic::Synthetic;
    use densenet_wgpu::data::{split, Normalization};
    use densenet_wgpu::run::{self, events::Silent, fit, RunError, RunSpec};

    let base = std::env::temp_dir().join(format!("densenet-wgpu-init-norm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let data = Synthetic::new(48, 16, 4);
    let half = Arc::new(data.clone().with_normalization(Normalization::HALF));
    let mut spec = RunSpec::new(
        half,
        split(48, 0.25, 4).unwrap(),
        "densenet-tiny",
        base.join("a"),
    )
    .unwrap();
    spec.epochs = 1;
    pollster::block_on(fit(&spec, &mut Silent)).unwrap();
    let weights = base.join("a/best.safetensors");
    assert_eq!(
        run::weights_normalization(&weights).unwrap(),
        Normalization::HALF
    );

    let mut tuned = RunSpec::new(
        Arc::new(data.clone()),
        split(48, 0.25, 4).unwrap(),
        "densenet-tiny",
        base.join("b"),
    )
    .unwrap();
    tuned.init = Some(weights.clone());
    tuned.epochs = 1;
    match pollster::block_on(fit(&tuned, &mut Silent)) {
        Err(RunError::NormalizationMismatch {
            path,
            weights: w,
            data: d,
        }) => {
            assert_eq!(
                (path, w, d),
                (
                    weights.clone(),
                    Normalization::HALF,
                    Normalization::IMAGENET
                )
            );
        }
        other => panic!("expected a normalisation mismatch, got {other:?}"),
    }
    assert!(!base.join("b/checkpoint.safetensors").exists());
    tuned.dataset =
        Arc::new(data.with_normalization(run::weights_normalization(&weights).unwrap()));
    pollster::block_on(fit(&tuned, &mut Silent)).unwrap();
    let _ = std::fs::remove_dir_all(&base);
}
