//! Whole-model tests: PyTorch golden step (both block modes), overfitting a tiny batch,
//! tape semantics and weight files.

use std::path::PathBuf;

use densenet_wgpu::data::synthetic::Synthetic;
use densenet_wgpu::data::Dataset;

mod cli;
mod compare;
mod data_guards;
mod device_limits;
#[path = "../support/device_pool.rs"]
mod device_pool;
mod distributed;
mod finetune;
mod golden;
mod interrupts;
mod overfit;
mod process;
mod tape;
mod weights;

pub use device_pool::gpu;

/// Runs the `train` binary.
pub fn train(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .unwrap()
}

/// A run's stdout and stderr together.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// An image folder of `per_class` 32x32 PNGs for each of the embedded dataset's first
/// `classes` classes.
pub fn image_folder(dir: &std::path::Path, classes: usize, per_class: usize, seed: u64) {
    let data = Synthetic::new(60 * per_class, 32, seed);
    let mut written = vec![0usize; classes];
    for i in 0..data.len() {
        let (pixels, label) = data.render(i);
        if label >= classes || written[label] == per_class {
            continue;
        }
        written[label] += 1;
        let class_dir = dir.join(&data.classes()[label]);
        std::fs::create_dir_all(&class_dir).unwrap();
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            let at = |c: usize| (pixels[(c * 32 + y as usize) * 32 + x as usize] * 255.0) as u8;
            image::Rgb([at(0), at(1), at(2)])
        });
        img.save(class_dir.join(format!("{i}.png"))).unwrap();
    }
    assert!(written.iter().all(|&w| w == per_class), "{written:?}");
}
