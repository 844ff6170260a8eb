//! `train compare` end to end on a small generated image folder: costs, training runs and
//! the report with its three figures.

use std::process::Command;

use crate::image_folder;

#[test]
fn compare_writes_the_report_and_its_figures() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-compare-{}", std::process::id()));
    let data = base.join("data");
    image_folder(&data, 3, 8, 3);
    let doc = base.join("docs").join("study.md");
    let o = Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "compare",
            "--data",
            data.to_str().unwrap(),
            "--models",
            "densenet-tiny,resnet18",
            "--cost-only",
            "",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--cost-steps",
            "1",
            "--out",
            base.join("runs").to_str().unwrap(),
            "--doc",
            doc.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    let md = std::fs::read_to_string(&doc).unwrap();
    for want in [
        "Adapter: ",
        "Images resized to 32x32; 2 epochs; global batch 8",
        "| densenet-tiny | 22 | 0.07 M |",
        "| resnet18 | 18 | 11.18 M | 0.074 |",
        "![validation accuracy per epoch](img/compare_accuracy.png)",
        "### Why dense connectivity needs blocks and transitions",
    ] {
        assert!(md.contains(want), "{want:?} missing:\n{md}");
    }
    // Both models' accuracy rows have two epochs.
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| resnet18 | ") || l.starts_with("| densenet-tiny | "));
    assert_eq!(
        rows.filter(|l| l.matches('%').count() == 2).count(),
        2,
        "{md}"
    );
    for f in [
        "compare_accuracy.png",
        "compare_accuracy_vs_parameters.png",
        "compare_memory_vs_depth.png",
    ] {
        let p = doc.parent().unwrap().join("img").join(f);
        assert!(
            image::open(&p).is_ok(),
            "{} not a readable image",
            p.display()
        );
    }
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn depth_is_the_number_in_the_name() {
    use densenet_wgpu::models::preset;
    use densenet_wgpu::study::depth;
    for (name, d) in [
        ("densenet121", 121),
        ("densenet169", 169),
        ("densenet201", 201),
        ("resnet18", 18),
        ("resnet34", 34),
        ("resnet50", 50),
        ("resnet101", 101),
        ("resnet152", 152),
    ] {
        assert_eq!(depth(&preset(name, 10).unwrap()), d, "{name}");
    }
}
