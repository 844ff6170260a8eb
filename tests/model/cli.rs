//! The `train` binary end to end: the default run writes its files, and `eval` and
//! `predict` read the checkpoint back; bad input gives one clear error.

use std::path::Path;
use std::process::Command;

use densenet_wgpu::data::Normalization;

use crate::process::{with_more_work, Background};

use crate::{text, train};

#[test]
fn default_run_writes_files_that_eval_and_predict_read_back() {
    default_run_reads_back(&[], Normalization::IMAGENET);
}

#[test]
fn default_run_with_resnet18_reads_back() {
    default_run_reads_back(&["--model", "resnet18"], Normalization::IMAGENET);
}

/// timm's pre-activation ResNet trains on inputs normalised with mean = std = 0.5, records
/// it, and eval and predict read it back (eval's loss is the run's only if they do).
#[test]
fn default_run_with_resnetv2_18_reads_back() {
    default_run_reads_back(&["--model", "resnetv2_18"], Normalization::HALF);
}

/// A run of `model` on the embedded data: its files, the normalisation they record (the
/// model family's), and eval and predict on them.
fn default_run_reads_back(model: &[&str], normalization: Normalization) {
    let tag = model.last().unwrap_or(&"default");
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-cli-{tag}-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let mut args = vec!["--epochs", "1", "--images", "240", "--out", out];
    args.extend(model);
    let o = train(&args);
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
    for f in ["checkpoint.safetensors", "best.safetensors"] {
        let meta = densenet_wgpu::run::read_metadata(&dir.join(f));
        assert_eq!(
            meta.get("normalization"),
            Some(&normalization.to_metadata()),
            "{f}"
        );
    }

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
fn misspelled_options_are_usage_errors_with_a_suggestion() {
    for args in [
        &["fit", "--data", "x", "--epoch", "3", "--bacth-size", "4"][..],
        &["--epochz", "2"],
        &["--epochs", "0"],
        &["fit", "--data", "x", "--schedule", "cosin"],
    ] {
        let o = train(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}\n{}", text(&o));
    }
    let o = train(&["--epochz", "2"]);
    assert!(
        text(&o).contains("a similar argument exists: '--epochs'"),
        "{}",
        text(&o)
    );
    // Each subcommand has its own help.
    let o = train(&["fit", "--help"]);
    assert!(
        o.status.success() && text(&o).contains("--val-split"),
        "{}",
        text(&o)
    );
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

/// A metrics.csv the binary cannot replace ends the run with the file's error before any
/// step, and no checkpoint is written.
#[test]
fn a_metrics_file_that_cannot_be_written_stops_the_run() {
    let dir = std::env::temp_dir().join(format!("densenet-wgpu-cli-csv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A folder where the file goes: it can be neither removed as a file nor replaced.
    std::fs::create_dir_all(dir.join("metrics.csv/inside")).unwrap();
    let o = train(&[
        "--epochs",
        "1",
        "--images",
        "120",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let log = text(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains("error: ") && log.contains("metrics.csv"),
        "{log}"
    );
    assert!(!log.contains("epoch 1/1 "), "{log}");
    assert!(!dir.join("checkpoint.safetensors").exists(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads a safetensors file's string metadata value (None while absent or mid-rename).
fn metadata_value(path: &Path, key: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    meta.metadata().as_ref()?.get(key).cloned()
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_result() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-resume-{}", std::process::id()));
    with_more_work("kill mid-epoch", |scale| {
        let (full, cut) = (
            base.join(format!("full-{scale}")),
            base.join(format!("cut-{scale}")),
        );
        let args = |out: &Path| -> Vec<String> {
            [
                "--images",
                &(480 * scale).to_string(),
                "--epochs",
                "2",
                // 30 ms: mid-epoch checkpoints arrive well before an epoch ends, even on a GPU.
                "--checkpoint-minutes",
                "0.0005",
                "--out",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([out.to_string_lossy().to_string()])
            .collect()
        };
        let o = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(args(&full))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let last = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with("epoch 2/2"))
                .map(|l| l.split(" time=").next().unwrap().to_string())
                .next()
        };
        let want = last(&text(&o)).unwrap();

        // Kill a second run as soon as it has written a mid-epoch checkpoint.
        let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
        c.args(args(&cut));
        let mut run = Background::start(c);
        let ckpt = cut.join("checkpoint.safetensors");
        let mid_epoch = |_: &str| {
            metadata_value(&ckpt, "batches_done")
                .filter(|b| b != "0")
                .map(|_| ())
        };
        run.wait_for("mid-epoch checkpoint", mid_epoch).ok()?;
        run.signal("KILL");
        let killed = run.finish("the run's end after SIGKILL");
        if killed.status.success() {
            return None; // It had finished before the kill.
        }

        let mut resumed = args(&cut);
        resumed.push("--resume".into());
        let o = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(&resumed)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("resumed from"), "{}", text(&o));
        // Same batches, same weights and optimizer state: the same final epoch, to the digit.
        assert_eq!(last(&text(&o)).unwrap(), want, "{}", text(&o));
        Some(())
    });
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn the_same_seed_writes_the_same_files() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-repro-{}", std::process::id()));
    let run = |name: &str| {
        let out = base.join(name);
        let args = ["--epochs", "2", "--images", "240", "--augment", "--out"];
        let mut args: Vec<&str> = args.to_vec();
        let out_str = out.to_str().unwrap().to_string();
        args.push(&out_str);
        let o = train(&args);
        assert!(o.status.success(), "{}", text(&o));
        out
    };
    let (a, b) = (run("a"), run("b"));
    for f in ["checkpoint.safetensors", "best.safetensors"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two runs of the same seed");
    }
    // metrics.csv: the same apart from the seconds column.
    let csv = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(csv(&a), csv(&b));
    std::fs::remove_dir_all(&base).ok();
}
