//! Runs that are interrupted: SIGINT / SIGTERM stop after the current step with a
//! checkpoint and the command that resumes; SIGKILL at random moments (inside checkpoint
//! writes too) loses at most the steps since the last checkpoint, and resuming each time
//! ends with the files of an uninterrupted run, bit for bit.

use std::path::Path;
use std::process::Command;

use crate::process::{with_more_work, Background};
use crate::{text, train};
use densenet_wgpu::rng::Rng;

fn spawn(args: &[String]) -> Background {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.args(args);
    Background::start(c)
}

fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    [
        "--images",
        "480",
        "--epochs",
        "2",
        "--augment",
        "--checkpoint-steps",
        "1",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_string_lossy().to_string()])
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

/// The steps a run's checkpoint says are done in the current epoch (0 while absent).
fn batches_done(out: &Path) -> usize {
    densenet_wgpu::run::read_metadata(&out.join("checkpoint.safetensors"))
        .get("batches_done")
        .and_then(|b| b.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigint_and_sigterm_stop_with_a_checkpoint_and_the_resume_command() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-signal-{}", std::process::id()));
    for (name, code) in [("INT", 130), ("TERM", 143)] {
        let log = with_more_work(&format!("SIG{name}"), |scale| {
            let out = base.join(format!("{name}-{scale}"));
            // Enough images that the run is still going when the signal arrives.
            let images = (20_000 * scale).to_string();
            let mut a = args(&out, &[]);
            a[1] = images.clone();
            let mut run = spawn(&a);
            // Once a mid-epoch checkpoint is there, the run is inside training.
            run.wait_for("mid-epoch checkpoint", |_| {
                (batches_done(&out) > 0).then_some(())
            })
            .ok()?;
            let before = run.text();
            run.signal(name);
            let ended = run.finish(&format!("the run's end after SIG{name}"));
            // A run that had printed its last epoch already was over before the signal.
            if before.contains("epoch 2/2 ") || ended.status.success() {
                return None;
            }
            let log = ended.text;
            assert_eq!(ended.status.code(), Some(code), "{log}");
            assert!(log.contains("interrupted after step"), "{log}");
            let resume = log
                .lines()
                .find_map(|l| l.strip_prefix("resume with: "))
                .unwrap_or_else(|| panic!("no resume command:\n{log}"));
            assert!(
                resume.ends_with("--resume") && resume.contains(&format!("--images {images}")),
                "{resume}"
            );
            assert!(
                batches_done(&out) > 0,
                "no mid-epoch checkpoint after the signal"
            );
            Some(log)
        });
        assert!(log.contains("interrupted after step"));
    }
    std::fs::remove_dir_all(&base).ok();
}

/// Steps done according to the run's checkpoint (12 steps per epoch with [`args`]).
fn steps_done(out: &Path) -> usize {
    let meta = densenet_wgpu::run::read_metadata(&out.join("checkpoint.safetensors"));
    let get = |k: &str| {
        meta.get(k)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    get("epoch") * 12 + get("batches_done")
}

#[test]
fn killed_at_random_moments_and_resumed_ends_bit_identical() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-kill-{}", std::process::id()));
    let (reference, killed) = (base.join("reference"), base.join("killed"));
    let o = train(
        &args(&reference, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(steps_done(&reference), 24);

    // SIGKILL 20 times: every fifth kill 0-300 ms after the start (while the process sets
    // up), the others 0-80 ms after the checkpoint of a random step has appeared (inside
    // the next step or its checkpoint write: one is written after every step). Each
    // restart resumes from the checkpoint left behind, or starts afresh if none exists.
    // A run that ends before its kill (a fast machine) has resumed to the end: its files
    // must be the reference's, and the killing starts over in a fresh folder.
    let rows = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    let same_files = |dir: &Path| {
        for f in ["checkpoint.safetensors", "best.safetensors"] {
            let (a, b) = (reference.join(f), dir.join(f));
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{f} differs"
            );
        }
        assert_eq!(rows(&reference), rows(dir));
    };
    let mut rng = Rng::new(2024);
    let mut targets: Vec<usize> = (0..16)
        .map(|_| 1 + (rng.uniform() * 22.0) as usize)
        .collect();
    targets.sort();
    let (mut resumed, mut inside_training, mut finished) = (0, 0, 0);
    for kill in 0..20 {
        let extra: &[&str] = if killed.join("checkpoint.safetensors").exists() {
            &["--resume"]
        } else {
            &[]
        };
        resumed += extra.len();
        let mut child = spawn(&args(&killed, extra));
        let mut ended = None;
        if kill % 5 != 0 {
            let target = targets[inside_training].max(steps_done(&killed) + 1);
            inside_training += 1;
            let event = format!("checkpoint of step {target}");
            ended = child
                .wait_for(&event, |_| (steps_done(&killed) >= target).then_some(()))
                .err();
        }
        if ended.is_none() {
            let ms = if kill % 5 == 0 { 300.0 } else { 80.0 };
            std::thread::sleep(std::time::Duration::from_millis(
                (rng.uniform() * ms) as u64,
            ));
            if !child.has_ended() {
                child.signal("KILL");
            }
            let end = child.finish("the run's end after SIGKILL");
            if end.status.code().is_some() {
                ended = Some(end);
            }
        }
        if let Some(end) = ended {
            assert!(end.status.success(), "{}", end.text);
            same_files(&killed);
            std::fs::remove_dir_all(&killed).unwrap();
            finished += 1;
        }
    }
    let last: &[&str] = if killed.join("checkpoint.safetensors").exists() {
        &["--resume"]
    } else {
        &[]
    };
    let o = train(
        &args(&killed, last)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        resumed + finished >= 15,
        "only {resumed} of the restarts found a checkpoint"
    );
    same_files(&killed);
    std::fs::remove_dir_all(&base).ok();
}
