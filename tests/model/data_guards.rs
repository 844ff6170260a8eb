//! Data a classifier cannot be trained on is refused with a message naming the class and
//! the folder; skipped files are counted in the epoch summary.

use std::path::Path;

use crate::{text, train};
use densenet_wgpu::data::split;

/// `good` readable PNGs and `bad` corrupt ones in `dir/class`.
fn class(dir: &Path, class: &str, good: usize, bad: usize) {
    let d = dir.join(class);
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..good {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, (i * 40) as u8])
        });
        img.save(d.join(format!("{i}.png"))).unwrap();
    }
    for i in 0..bad {
        std::fs::write(d.join(format!("corrupt{i}.png")), b"not a png at all").unwrap();
    }
}

fn fit(data: &Path, extra: &[&str]) -> (bool, String) {
    let out = data.with_extension("run");
    let mut args = vec![
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--model",
        "densenet-tiny",
    ];
    args.extend(["--image-size", "16", "--epochs", "1", "--batch-size", "4"]);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    let o = train(&args);
    (o.status.success(), text(&o))
}

#[test]
fn unusable_data_is_refused_naming_the_class() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-guards-{}", std::process::id()));

    let one = base.join("one");
    class(&one, "only", 6, 0);
    let (ok, log) = fit(&one, &[]);
    assert!(
        !ok && log.contains("1 class (only); a classifier needs at least two"),
        "{log}"
    );

    // 8 images of `a`, 1 of `b` (index 8): pick seeds whose split puts it in each half.
    let few = base.join("few");
    class(&few, "a", 8, 0);
    class(&few, "b", 1, 0);
    let b_in_val = |seed: u64| split(9, 0.2, seed).unwrap().1.contains(&8);
    let val_seed = (0..100).find(|&s| b_in_val(s)).unwrap().to_string();
    let train_seed = (0..100).find(|&s| !b_in_val(s)).unwrap().to_string();
    let (ok, log) = fit(&few, &["--seed", &val_seed]);
    assert!(
        !ok && log.contains("no training image for class(es) b"),
        "{log}"
    );
    let (ok, log) = fit(&few, &["--seed", &train_seed]);
    assert!(
        ok && log.contains("validation split holds no image of class(es) b"),
        "{log}"
    );
    let (ok, log) = fit(&few, &["--val-split", "0"]);
    assert!(
        ok && log.contains("validation: none (--val-split 0)"),
        "{log}"
    );

    // Every image of class `b` is corrupt: skipped with a warning each, then refused.
    let corrupt = base.join("corrupt");
    class(&corrupt, "a", 6, 1);
    class(&corrupt, "b", 0, 3);
    let (ok, log) = fit(&corrupt, &["--val-split", "0"]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("class \"b\"") && log.contains("no readable training image"),
        "{log}"
    );
    assert_eq!(log.matches("warning: skipped").count(), 4, "{log}");

    // One corrupt file among readable ones: skipped and counted in the epoch summary.
    let some = base.join("some");
    class(&some, "a", 6, 1);
    class(&some, "b", 6, 0);
    let (ok, log) = fit(&some, &["--val-split", "0"]);
    assert!(ok, "{log}");
    let summary = log
        .lines()
        .find(|l| l.starts_with("epoch 1/1 "))
        .unwrap_or("");
    assert!(summary.ends_with("skipped=1"), "{log}");
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn a_non_finite_step_stops_naming_it_or_is_skipped() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-nonfinite-{}", std::process::id()));
    let out = base.join("stop");
    // A learning rate of 1e30 turns the weights huge after step 1, and step 2 into NaN.
    let args = [
        "--images",
        "240",
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--checkpoint-steps",
        "1",
    ];
    let mut a: Vec<&str> = args.to_vec();
    let out_s = out.to_str().unwrap().to_string();
    a.extend(["--out", &out_s]);
    let o = train(&a);
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    for want in [
        "non-finite values at step 2: loss NaN",
        "first parameter with a non-finite gradient: features.conv0.weight",
        "batch: synthetic #",
        "holds the last good checkpoint",
    ] {
        assert!(log.contains(want), "{want:?} missing:\n{log}");
    }
    // The checkpoint is the one after step 1.
    let meta = densenet_wgpu::run::read_metadata(&out.join("checkpoint.safetensors"));
    assert_eq!(
        meta.get("batches_done").map(String::as_str),
        Some("1"),
        "{meta:?}"
    );

    let skip = base.join("skip");
    let skip_s = skip.to_str().unwrap().to_string();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--out", &skip_s, "--skip-nonfinite"]);
    let o = train(&a);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("warning: skipped non-finite values at step 2"),
        "{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.starts_with("epoch 1/1 "))
        .unwrap_or("");
    assert!(summary.contains("nonfinite_skipped=5"), "{log}");
    std::fs::remove_dir_all(&base).ok();
}
