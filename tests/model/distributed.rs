//! Data-parallel training over MPI: 2 ranks through `mpirun` on the `mpi`-featured binary,
//! over Open MPI's TCP transport on loopback (the multi-host code path).
//!
//! The binary is the one `DENSENET_WGPU_MPI_TRAIN` names (`.ci/run` builds it before the
//! tests), or else built once per test run into `target/mpi` (`cargo build --release
//! --features mpi`). Without `mpirun` these tests say so and pass, unless
//! `DENSENET_WGPU_REQUIRE_MPI` is set (CI sets it), where they fail. One 2-rank run goes at
//! a time: each keeps two processes busy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use densenet_wgpu::dist::Transport;
use densenet_wgpu::verify::{ADAM_MAX_DIFF_TOL, ADAM_SHARE_TOL, STATS_TOL};
use densenet_wgpu::weights::TensorFile;

use crate::process::{try_send, with_more_work, Background};
use crate::{text, train};

/// The `mpi`-featured `train` and a guard that keeps other 2-rank runs waiting, or `None`
/// (with a notice) where MPI is not installed.
fn mpi_train() -> Option<(PathBuf, MutexGuard<'static, ()>)> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let bin = BIN
        .get_or_init(|| {
            let found = Command::new("mpirun")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                assert!(
                    std::env::var_os("DENSENET_WGPU_REQUIRE_MPI").is_none(),
                    "mpirun not found, and DENSENET_WGPU_REQUIRE_MPI is set: install Open MPI \
                     (openmpi-bin, libopenmpi-dev, libclang-dev; scripts/setup-mpi.sh does)"
                );
                eprintln!("SKIPPED: mpirun not found; the data-parallel tests need Open MPI");
                return None;
            }
            if let Some(bin) = std::env::var_os("DENSENET_WGPU_MPI_TRAIN") {
                let bin = PathBuf::from(bin);
                assert!(
                    bin.is_file(),
                    "DENSENET_WGPU_MPI_TRAIN names {}, which does not exist: build it with \
                     `cargo build --release --features mpi --bin train` (.ci/run does)",
                    bin.display()
                );
                return Some(bin);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = root.join("target/mpi");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(root)
                .args(["build", "--release", "--features", "mpi", "--bin", "train"])
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("run cargo");
            assert!(status.success(), "cargo build --features mpi failed");
            Some(target.join("release/train"))
        })
        .clone()?;
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Some((bin, guard))
}

/// `mpirun -n <ranks>` over TCP on loopback, one lavapipe thread per rank.
fn mpirun(bin: &Path, ranks: usize, args: &[&str]) -> Command {
    mpirun_env(bin, ranks, &[], args)
}

/// [`mpirun`] with environment variables for every rank (`-x`, as on several hosts).
fn mpirun_env(bin: &Path, ranks: usize, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n"])
        .arg(ranks.to_string())
        .args(["--mca", "btl", "tcp,self"])
        .args(["--mca", "btl_tcp_if_include", "lo"])
        .args(["-x", "LP_NUM_THREADS=1"]);
    for (k, v) in env {
        c.args(["-x", &format!("{k}={v}")]);
    }
    c.arg(bin).args(args);
    c
}

fn run_output(mut c: Command) -> Output {
    c.output().expect("start mpirun")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dnw-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Max |a - b| / max |b| over the running statistics; share of parameters off by more than
/// 1e-6 and the largest difference, between two checkpoints.
fn compare(a: &Path, b: &Path) -> (f64, f64, f64) {
    let (a, b) = (TensorFile::read(a).unwrap(), TensorFile::read(b).unwrap());
    let (mut stats, mut far, mut total, mut worst) = (0.0f64, 0usize, 0usize, 0.0f64);
    for (name, t) in &a.tensors {
        if name.starts_with("optim.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let want = &b.get(name).unwrap().data;
        let diffs = t.data.iter().zip(want).map(|(x, y)| (x - y).abs());
        if name.contains("running_") {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            stats = stats.max(diffs.fold(0.0, f64::max) / scale);
        } else {
            for d in diffs {
                far += (d > 1e-6) as usize;
                total += 1;
                worst = worst.max(d);
            }
        }
    }
    (stats, far as f64 / total as f64, worst)
}

#[test]
fn sync_bn_step_on_two_ranks_matches_one_process() {
    let Some((bin, _one_at_a_time)) = mpi_train() else {
        return;
    };
    let dir = temp("syncbn");
    // 10 embedded images: 8 train (one global batch of 8, 4 per rank), 2 validation.
    let common = [
        "--images",
        "10",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--model",
        "densenet-bc",
        "--lr",
        "1e-3",
    ];
    let out = |name: &str| dir.join(name);
    let one = train(&[&common[..], &["--out", out("one").to_str().unwrap()]].concat());
    assert!(one.status.success(), "{}", text(&one));
    // Gradients summed during backward, with sync-BN's own collectives on the main thread.
    let mut c = mpirun_env(&bin, 2, &[("DENSENET_WGPU_OVERLAP", "1")], &common);
    c.args(["--sync-bn", "--out", out("two").to_str().unwrap()]);
    let two = run_output(c);
    let t = text(&two);
    assert!(two.status.success(), "{t}");
    assert!(t.contains("replicas: 2 ranks, parameters identical"), "{t}");
    assert!(
        t.contains("synchronised BN, gradients summed during backward"),
        "{t}"
    );

    let ckpt = "checkpoint.safetensors";
    let (stats, share, worst) = compare(&out("two").join(ckpt), &out("one").join(ckpt));
    eprintln!("sync-bn vs one process: running stats {stats:.2e}, Adam share {share:.2e}, max|d| {worst:.2e}");
    assert!(
        stats <= STATS_TOL,
        "running statistics {stats:.2e} > {STATS_TOL}"
    );
    assert!(
        share <= ADAM_SHARE_TOL,
        "share {share:.2e} > {ADAM_SHARE_TOL}"
    );
    assert!(worst <= ADAM_MAX_DIFF_TOL, "max|d| {worst:.2e}");

    // Per-rank statistics (the default) are another computation: the same check fails.
    let mut c = mpirun(&bin, 2, &common);
    c.args(["--out", out("local").to_str().unwrap()]);
    assert!(run_output(c).status.success());
    let (stats, share, _) = compare(&out("local").join(ckpt), &out("one").join(ckpt));
    assert!(
        stats > STATS_TOL && share > ADAM_SHARE_TOL,
        "{stats} {share}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Epoch summary lines and the replica lines of a run's output.
fn lines_with<'a>(t: &'a str, prefix: &str) -> Vec<&'a str> {
    t.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn final_val_acc(t: &str) -> f64 {
    let last = *lines_with(t, "epoch ").last().expect("an epoch line");
    last.split("val_acc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no val_acc in {last:?}"))
}

#[test]
fn two_ranks_train_the_default_run_with_identical_replicas() {
    let Some((bin, _one_at_a_time)) = mpi_train() else {
        return;
    };
    let dir = temp("default");
    let args = ["--images", "1500", "--epochs", "4"];
    let o = run_output({
        let mut c = mpirun(&bin, 2, &args);
        c.args(["--out", dir.join("two").to_str().unwrap()]);
        c
    });
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let epochs = lines_with(&t, "epoch ");
    let replicas = lines_with(&t, "replicas: 2 ranks, parameters identical (hash ");
    assert_eq!((epochs.len(), replicas.len()), (4, 4), "{t}");
    assert!(epochs.iter().all(|l| l.contains("allreduce=")), "{t}");
    // Only rank 0 writes: one progress header, one metrics file.
    assert_eq!(t.matches("run folder:").count(), 1, "{t}");
    let csv = std::fs::read_to_string(dir.join("two/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");

    let one = train(&[&args[..], &["--out", dir.join("one").to_str().unwrap()]].concat());
    assert!(one.status.success(), "{}", text(&one));
    let (acc1, acc2) = (final_val_acc(&text(&one)), final_val_acc(&t));
    eprintln!("validation accuracy: 1 process {acc1:.4}, 2 ranks {acc2:.4}");
    assert!(acc2 >= acc1 - 0.05, "2 ranks {acc2} vs 1 process {acc1}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `replicas:` hashes of a run, one per epoch.
fn replica_hashes(t: &str) -> Vec<String> {
    lines_with(t, "replicas: ")
        .iter()
        .filter_map(|l| l.split("(hash ").nth(1))
        .map(|h| h.trim_end_matches(')').to_string())
        .collect()
}

#[test]
fn summing_during_backward_in_small_buckets_gives_the_same_run() {
    let Some((bin, _one_at_a_time)) = mpi_train() else {
        return;
    };
    let dir = temp("overlap");
    let args = ["--images", "200", "--epochs", "2"];
    let go = |name: &str, env: &[(&str, &str)]| {
        let mut c = mpirun_env(&bin, 2, env, &args);
        c.args(["--out", dir.join(name).to_str().unwrap()]);
        let o = run_output(c);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        t
    };
    // 25 MiB buckets (densenet-tiny's gradients fit in one), summed after backward.
    let after = go("after", &[("DENSENET_WGPU_OVERLAP", "0")]);
    assert!(after.contains("gradients summed after backward"), "{after}");
    // 16 KiB buckets: many, each summed on the second thread as soon as backward has
    // produced it.
    let during = go(
        "during",
        &[
            ("DENSENET_WGPU_OVERLAP", "1"),
            ("DENSENET_WGPU_BUCKET_BYTES", "16384"),
        ],
    );
    assert!(
        during.contains("gradients summed during backward"),
        "{during}"
    );
    let (a, b) = (replica_hashes(&after), replica_hashes(&during));
    assert_eq!(a.len(), 2, "{after}");
    assert_eq!(a, b, "the same parameters after every epoch");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rank 1's pid, read from the output so far. mpirun forwards both ranks' output through
/// one pipe, where their lines can interleave mid-line: the pid is found by the text that
/// follows "1/2 (local rank 1, pid ", wherever it starts.
fn rank1_pid(text: &str) -> Option<String> {
    text.split("1/2 (local rank 1, pid ")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|pid| !pid.is_empty())
}

/// The epoch and step a checkpoint was written at (`None` while there is none).
fn checkpoint_step(path: &Path) -> Option<String> {
    let meta = densenet_wgpu::run::read_metadata(path);
    let step = meta.get("batches_done").map_or("0", String::as_str);
    Some(format!("{}:{step}", meta.get("epoch")?))
}

/// Starts a 2-rank run of `args` writing to `out`, and waits until rank 1 has printed its
/// pid and a first checkpoint is there: the run, rank 1's pid and the checkpoint's step.
/// `None` when the run ended before that.
fn start_until_checkpoint(
    bin: &Path,
    args: &[&str],
    out: &Path,
) -> Option<(Background, String, String)> {
    let mut c = mpirun(bin, 2, args);
    c.args(["--out", out.to_str().unwrap()]);
    let mut run = Background::start(c);
    let checkpoint = out.join("checkpoint.safetensors");
    let (pid, step) = run
        .wait_for("rank 1's pid and a checkpoint", |t| {
            Some((rank1_pid(t)?, checkpoint_step(&checkpoint)?))
        })
        .ok()?;
    Some((run, pid, step))
}

#[test]
fn a_killed_rank_ends_the_run_and_the_checkpoint_resumes_on_one_process() {
    let Some((bin, _one_at_a_time)) = mpi_train() else {
        return;
    };
    let dir = temp("kill");
    with_more_work("kill rank 1", |scale| {
        let out = dir.join(format!("run-{scale}"));
        let images = (600 * scale).to_string();
        let args = [
            "--images",
            &images,
            "--epochs",
            "2",
            "--checkpoint-steps",
            "4",
        ];
        let checkpoint = out.join("checkpoint.safetensors");
        let (mut run, pid, first) = start_until_checkpoint(&bin, &args, &out)?;
        // Two checkpoints in (both ranks are training), kill rank 1.
        run.wait_for("a second checkpoint", |_| {
            checkpoint_step(&checkpoint).filter(|s| *s != first)
        })
        .ok()?;
        if !try_send("KILL", &pid) {
            return None; // Rank 1 had ended: the run was over.
        }
        let ended = run.finish("the run's end after rank 1 was killed");
        let t = ended.text;
        if ended.status.success() {
            return None; // Rank 1 had finished its last step before the kill.
        }
        assert!(t.contains("rank 1") && t.contains("signal 9"), "{t}");

        // The checkpoint is whole, and continues on one process (any rank count resumes).
        TensorFile::read(&checkpoint).expect("the checkpoint loads");
        let o = train(&[&args[..], &["--out", out.to_str().unwrap(), "--resume"]].concat());
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("resumed from"), "{t}");
        Some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_to_one_rank_stops_every_rank_at_the_same_step_and_two_ranks_resume() {
    let Some((bin, _one_at_a_time)) = mpi_train() else {
        return;
    };
    let dir = temp("sigint");
    with_more_work("SIGINT to rank 1", |scale| {
        let out = dir.join(format!("run-{scale}"));
        let images = (600 * scale).to_string();
        let args = [
            "--images",
            &images,
            "--epochs",
            "3",
            "--checkpoint-steps",
            "5",
        ];
        let (run, pid, _) = start_until_checkpoint(&bin, &args, &out)?;
        if !try_send("INT", &pid) {
            return None; // Rank 1 had ended: the run was over.
        }
        let ended = run.finish("the run's end after SIGINT to rank 1");
        let t = ended.text;
        if ended.status.success() {
            return None; // The last step was done before the signal came.
        }
        // Rank 0 saw no signal: it stopped because rank 1 asked, after the same step.
        assert_eq!(ended.status.code(), Some(130), "{t}");
        assert_eq!(t.matches("interrupted after step").count(), 1, "{t}");
        assert!(t.contains("resume with: mpirun -n 2 "), "{t}");
        assert!(!t.contains("epoch 3/3 train_loss"), "{t}");

        let mut c = mpirun(&bin, 2, &args);
        c.args(["--out", out.to_str().unwrap(), "--resume"]);
        let o = run_output(c);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("resumed from"), "{t}");
        assert_eq!(
            lines_with(&t, "replicas: 2 ranks, parameters identical").len(),
            lines_with(&t, "epoch ").len(),
            "{t}"
        );
        Some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two ranks that agree on everything but tensor `differs`.
struct Diverged {
    differs: usize,
    calls: std::cell::Cell<usize>,
}

impl densenet_wgpu::dist::Collective for Diverged {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [f32]) {}
    fn broadcast_u64(&self, _: &mut [u64]) {}
    /// Call 0 gathers the combined hash, call 1 + i tensor i's.
    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let other = if call == 0 || call == 1 + self.differs {
            value ^ 1
        } else {
            value
        };
        vec![value, other]
    }
    fn all_gather_f32(&self, data: &[f32]) -> Vec<f32> {
        [data, data].concat()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn transport(&self) -> Transport {
        Transport::Other {
            name: "two diverged replicas".into(),
        }
    }
}

#[test]
fn the_replica_check_names_the_first_tensor_that_differs() {
    use densenet_wgpu::dist::{check_replicas, SingleProcess};
    let gpu = crate::gpu();
    let tensors: Vec<(String, densenet_wgpu::Tensor)> = (0..4)
        .map(|i| {
            let name = format!("layer{i}.weight");
            (
                name.clone(),
                gpu.upload(&[i as f32; 5], &[5], &name).unwrap(),
            )
        })
        .collect();
    let same = pollster::block_on(check_replicas(gpu, &SingleProcess, &tensors)).unwrap();
    assert!(same.is_ok());
    let group = Diverged {
        differs: 2,
        calls: Default::default(),
    };
    let mismatch = pollster::block_on(check_replicas(gpu, &group, &tensors))
        .unwrap()
        .unwrap_err();
    assert_eq!(mismatch.tensor, "layer2.weight");
    let message = mismatch.to_string();
    assert!(
        message.contains("replicas differ: tensor \"layer2.weight\""),
        "{message}"
    );
}
