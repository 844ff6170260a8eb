//! Inference only: a weights file and images in, the most likely classes out.
//!
//! `cargo run --release --example predict -- WEIGHTS.safetensors IMAGE...`
//!
//! The weights may be a file a run wrote (`best.safetensors`) or torchvision's own; the
//! architecture comes from the tensor names and shapes, the class names and the image size
//! from the file's metadata when it has them.

use std::path::PathBuf;

use densenet_wgpu::data::folder::load_image;
use densenet_wgpu::{run::load_model, train::evaluate, Gpu};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some((weights, images)) = args.split_first().filter(|(_, images)| !images.is_empty())
    else {
        return Err("usage: predict WEIGHTS.safetensors IMAGE...".into());
    };
    let gpu = Gpu::new()?;
    let (model, info) = load_model(&gpu, weights)?;
    let size = info.image_size.unwrap_or(224);
    let classes = info.classes.unwrap_or_else(|| {
        (0..model.num_classes())
            .map(|i| format!("class {i}"))
            .collect()
    });
    for path in images {
        let image = load_image(path, size, &info.normalization)?;
        let result = pollster::block_on(evaluate(&gpu, model.as_ref(), &image, &[0], size))?;
        let mut ranked: Vec<(usize, f32)> =
            result.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = ranked
            .iter()
            .take(3)
            .map(|(i, p)| format!("{} {:.1} %", classes[*i], p * 100.0))
            .collect();
        println!("{}: {}", path.display(), top.join(", "));
    }
    Ok(())
}
