//! The `train` binary end to end: the default run writes its files, and `eval` and
//! `predict` read the checkpoint back; bad input gives one clear error.

use std::path::Path;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn default_run_writes_files_that_eval_and_predict_read_back() {
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-cli-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let o = train(&["--epochs", "1", "--images", "240", "--out", out]);
    assert!(o.status.success(), "{}", text(&o));
    let log = text(&o);
    let line = log
        .lines()
        .find(|l| l.starts_with("epoch 1/1 "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("train_loss=") && line.contains("val_acc=") && line.contains("time="),
        "{line}"
    );
    for f in [
        "metrics.csv",
        "curves.png",
        "checkpoint.safetensors",
        "best.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing\n{log}");
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");

    // eval without --data uses the embedded validation split the run used, and gets the
    // same validation loss the run printed.
    let o = train(&[
        "eval",
        "--weights",
        dir.join("checkpoint.safetensors").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let eval = text(&o);
    let val_loss = line
        .split("val_loss=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        eval.contains(&format!("48 images, loss={val_loss}")),
        "{eval}\n{line}"
    );
    assert!(eval.contains("overall accuracy"), "{eval}");

    let samples: Vec<String> = std::fs::read_dir(dir.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().to_string())
        .collect();
    assert!(samples.len() >= 6, "{samples:?}");
    let mut args = vec!["predict", "--weights", dir.to_str().unwrap()];
    let weights = dir.join("best.safetensors");
    args[2] = weights.to_str().unwrap();
    args.extend(samples.iter().map(String::as_str));
    let o = train(&args);
    assert!(o.status.success(), "{}", text(&o));
    let pred = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(pred.lines().count(), samples.len(), "{pred}");
    assert!(pred.lines().all(|l| l.contains('%')), "{pred}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_one_clear_error() {
    let o = train(&["fit", "--data", "/no/such/folder"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/no/such/folder"), "{}", text(&o));
    let o = train(&["--epochs", "many"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--epochs"), "{}", text(&o));
    let o = train(&["predict", "--weights", "missing.safetensors", "x.png"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.safetensors"), "{}", text(&o));
    assert!(!Path::new("missing.safetensors").exists());
}
