//! Runs that are interrupted: SIGINT / SIGTERM stop after the current step with a
//! checkpoint and the command that resumes; SIGKILL at random moments (inside checkpoint
//! writes too) loses at most the steps since the last checkpoint, and resuming each time
//! ends with the files of an uninterrupted run, bit for bit.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{text, train};
use densenet_wgpu::rng::Rng;

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    [
        "--images",
        "960",
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

/// Waits until the run has written a mid-epoch checkpoint.
fn wait_for_training(child: &mut Child, out: &Path) {
    let ckpt = out.join("checkpoint.safetensors");
    let t0 = Instant::now();
    while densenet_wgpu::run::read_metadata(&ckpt)
        .get("batches_done")
        .is_none_or(|b| b == "0")
    {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no mid-epoch checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

#[test]
fn sigint_and_sigterm_stop_with_a_checkpoint_and_the_resume_command() {
    let base = std::env::temp_dir().join(format!("densenet-wgpu-signal-{}", std::process::id()));
    for (name, code) in [("INT", 130), ("TERM", 143)] {
        let out = base.join(name);
        // Enough images that the run is still going when the signal arrives.
        let mut a = args(&out, &[]);
        a[1] = "20000".into();
        let mut child = spawn(&a);
        wait_for_training(&mut child, &out);
        signal(&child, name);
        let o = child.wait_with_output().unwrap();
        let log = text(&o);
        assert_eq!(o.status.code(), Some(code), "{log}");
        assert!(log.contains("interrupted after step"), "{log}");
        let resume = log
            .lines()
            .find_map(|l| l.strip_prefix("resume with: "))
            .unwrap_or_else(|| panic!("no resume command:\n{log}"));
        assert!(
            resume.ends_with("--resume") && resume.contains("--images 20000"),
            "{resume}"
        );
        let meta = densenet_wgpu::run::read_metadata(&out.join("checkpoint.safetensors"));
        assert!(
            meta.get("batches_done").is_some_and(|b| b != "0"),
            "{meta:?}"
        );
    }
    std::fs::remove_dir_all(&base).ok();
}

/// Steps done according to the run's checkpoint (24 steps per epoch with [`args`]).
fn steps_done(out: &Path) -> usize {
    let meta = densenet_wgpu::run::read_metadata(&out.join("checkpoint.safetensors"));
    let get = |k: &str| {
        meta.get(k)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    get("epoch") * 24 + get("batches_done")
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
    assert_eq!(steps_done(&reference), 48);

    // SIGKILL 20 times: every fifth kill 0-300 ms after the start (while the process sets
    // up), the others 0-80 ms after the checkpoint of a random step has appeared (inside
    // the next step or its checkpoint write: one is written after every step). Each
    // restart resumes from the checkpoint left behind, or starts afresh if none exists.
    let mut rng = Rng::new(2024);
    let mut targets: Vec<usize> = (0..16)
        .map(|_| 1 + (rng.uniform() * 44.0) as usize)
        .collect();
    targets.sort();
    let (mut kills, mut resumed, mut inside_training) = (0, 0, 0);
    while kills < 20 {
        let extra: &[&str] = if killed.join("checkpoint.safetensors").exists() {
            &["--resume"]
        } else {
            &[]
        };
        resumed += extra.len();
        let mut child = spawn(&args(&killed, extra));
        if kills % 5 != 0 {
            let target = targets[inside_training].max(steps_done(&killed) + 1);
            let t0 = Instant::now();
            while steps_done(&killed) < target {
                assert!(t0.elapsed().as_secs() < 120, "no progress to step {target}");
                if child.try_wait().unwrap().is_some() {
                    let o = child.wait_with_output().unwrap();
                    panic!("the run ended before kill {kills}:\n{}", text(&o));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            inside_training += 1;
        }
        let ms = if kills % 5 == 0 { 300.0 } else { 80.0 };
        std::thread::sleep(Duration::from_millis((rng.uniform() * ms) as u64));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let o = train(
        &args(&killed, &["--resume"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        resumed >= 15,
        "only {resumed} of the restarts found a checkpoint"
    );
    for f in ["checkpoint.safetensors", "best.safetensors"] {
        let (a, b) = (reference.join(f), killed.join(f));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{f} differs"
        );
    }
    let rows = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(rows(&reference), rows(&killed));
    std::fs::remove_dir_all(&base).ok();
}
