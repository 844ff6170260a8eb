//! A procedural, seeded dataset: six kinds of pattern that a small CNN has to learn from
//! shape and orientation, because colour carries no information.
//!
//! Every image draws its foreground and background colours from the same distribution,
//! whatever its class, so the expected mean colour is equal for all classes and a classifier
//! on mean colour stays near chance. Each image also draws its own period, phase, angle,
//! position, size and thickness, and gets Gaussian pixel noise. Image `i` is a pure function
//! of `(seed, i)`, so nothing is stored; its class is `i % 6`, so classes are balanced.

use std::path::{Path, PathBuf};

use super::{derive_seed, DataError, Dataset, Normalization};
use crate::rng::Rng;

/// Class names, in label order.
pub const SYNTHETIC_CLASSES: [&str; 6] = [
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "disc",
    "ring",
];

/// Default side of the synthetic images.
pub const SYNTHETIC_IMAGE_SIZE: usize = 32;

/// Standard deviation of the per-pixel, per-channel Gaussian noise (pixel values in [0, 1]).
const NOISE_STD: f64 = 0.06;
/// Smallest Euclidean RGB distance between foreground and background colours.
const MIN_CONTRAST: f64 = 0.35;
/// Supersampling per axis when drawing (anti-aliased edges).
const SUPERSAMPLE: usize = 2;

/// The procedural dataset; see the module documentation.
#[derive(Debug, Clone)]
pub struct Synthetic {
    len: usize,
    image_size: usize,
    seed: u64,
    classes: Vec<String>,
    normalization: Normalization,
}

/// One drawn pattern, in pixel units of the image being drawn.
enum Pattern {
    /// Foreground where `frac((x cos a + y sin a + phase) / period) < duty`.
    Stripes {
        cos: f64,
        sin: f64,
        period: f64,
        duty: f64,
        phase: f64,
    },
    /// Squares of side `cell`, rotated by a small angle.
    Checker {
        cos: f64,
        sin: f64,
        cell: f64,
        phase_u: f64,
        phase_v: f64,
    },
    /// Foreground where `inner <= distance to (cx, cy) < outer` (`inner = 0`: a disc).
    Annulus {
        cx: f64,
        cy: f64,
        inner: f64,
        outer: f64,
    },
}

impl Pattern {
    fn draw(label: usize, size: f64, rng: &mut Rng) -> Pattern {
        let unit = size / 32.0;
        let deg = std::f64::consts::PI / 180.0;
        let stripes = |angle: f64, rng: &mut Rng| {
            let period = rng.range(5.0, 11.0) * unit;
            Pattern::Stripes {
                cos: angle.cos(),
                sin: angle.sin(),
                period,
                duty: rng.range(0.35, 0.65),
                phase: rng.range(0.0, period),
            }
        };
        match label {
            // The angle is the direction along which the colour alternates.
            0 => stripes((90.0 + rng.range(-10.0, 10.0)) * deg, rng),
            1 => stripes(rng.range(-10.0, 10.0) * deg, rng),
            2 => {
                let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                stripes(sign * (45.0 + rng.range(-10.0, 10.0)) * deg, rng)
            }
            3 => {
                let angle = rng.range(-10.0, 10.0) * deg;
                let cell = rng.range(4.0, 8.0) * unit;
                Pattern::Checker {
                    cos: angle.cos(),
                    sin: angle.sin(),
                    cell,
                    phase_u: rng.range(0.0, 2.0 * cell),
                    phase_v: rng.range(0.0, 2.0 * cell),
                }
            }
            4 => Pattern::Annulus {
                cx: rng.range(0.3, 0.7) * size,
                cy: rng.range(0.3, 0.7) * size,
                inner: 0.0,
                outer: rng.range(0.18, 0.32) * size,
            },
            _ => {
                let outer = rng.range(0.24, 0.4) * size;
                let thickness = rng.range(0.07, 0.14) * size;
                Pattern::Annulus {
                    cx: rng.range(0.3, 0.7) * size,
                    cy: rng.range(0.3, 0.7) * size,
                    inner: outer - thickness,
                    outer,
                }
            }
        }
    }

    /// Whether the point (x, y) is foreground.
    fn covers(&self, x: f64, y: f64) -> bool {
        match *self {
            Pattern::Stripes {
                cos,
                sin,
                period,
                duty,
                phase,
            } => ((x * cos + y * sin + phase) / period).rem_euclid(1.0) < duty,
            Pattern::Checker {
                cos,
                sin,
                cell,
                phase_u,
                phase_v,
            } => {
                let u = ((x * cos + y * sin + phase_u) / cell).floor() as i64;
                let v = ((-x * sin + y * cos + phase_v) / cell).floor() as i64;
                (u + v).rem_euclid(2) == 0
            }
            Pattern::Annulus {
                cx,
                cy,
                inner,
                outer,
            } => {
                let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                d >= inner && d < outer
            }
        }
    }
}

impl Synthetic {
    /// `len` images of `image_size x image_size` (32 is the intended size), seeded by `seed`.
    pub fn new(len: usize, image_size: usize, seed: u64) -> Synthetic {
        assert!(image_size > 0, "synthetic image size must be positive");
        let classes = SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect();
        Synthetic {
            len,
            image_size,
            seed,
            classes,
            normalization: Normalization::IMAGENET,
        }
    }

    /// Chooses the normalisation of every image (ImageNet's unless set).
    pub fn with_normalization(mut self, normalization: Normalization) -> Synthetic {
        self.normalization = normalization;
        self
    }

    /// Label of item `index`, without drawing it.
    pub fn label(&self, index: usize) -> usize {
        index % SYNTHETIC_CLASSES.len()
    }

    /// Item `index` as an 8-bit RGB image (the pixels [`Synthetic::render`] draws) and its
    /// label.
    pub fn image(&self, index: usize) -> (image::RgbImage, usize) {
        let (pixels, label) = self.render(index);
        let s = self.image_size;
        let image = image::RgbImage::from_fn(s as u32, s as u32, |x, y| {
            let at =
                |c: usize| (pixels[(c * s + y as usize) * s + x as usize] * 255.0).round() as u8;
            image::Rgb([at(0), at(1), at(2)])
        });
        (image, label)
    }

    /// Writes the first `per_class` images of each of the first `classes` classes as an
    /// image folder, `dir/<class>/<index>.png` (what [`super::folder::ImageFolder::open`]
    /// reads), and returns the files, class by class.
    pub fn write_folder(
        &self,
        dir: &Path,
        classes: usize,
        per_class: usize,
    ) -> Result<Vec<PathBuf>, DataError> {
        let all = SYNTHETIC_CLASSES.len();
        // The last image needed: the per_class-th of class classes - 1.
        let last = (classes.max(1) - 1) + all * (per_class.max(1) - 1);
        if classes > all || (classes > 0 && per_class > 0 && last >= self.len) {
            return Err(DataError::NotEnoughSynthetic {
                per_class,
                classes,
                images: self.len,
                available_classes: all,
            });
        }
        let mut written = Vec::with_capacity(classes * per_class);
        for (label, class) in self.classes.iter().enumerate().take(classes) {
            let class_dir = dir.join(class);
            std::fs::create_dir_all(&class_dir).map_err(|e| DataError::Write {
                path: class_dir.clone(),
                message: e.to_string(),
            })?;
            // Item i has label i mod the number of classes.
            for index in (label..self.len).step_by(all).take(per_class) {
                let path = class_dir.join(format!("{index}.png"));
                self.image(index)
                    .0
                    .save(&path)
                    .map_err(|e| DataError::Write {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                written.push(path);
            }
        }
        Ok(written)
    }

    /// Item `index` as CHW pixel values in [0, 1] (before normalisation) and its label.
    pub fn render(&self, index: usize) -> (Vec<f32>, usize) {
        let label = self.label(index);
        let s = self.image_size;
        let mut rng = Rng::new(derive_seed(self.seed, index as u64));
        let (fg, bg) = loop {
            let fg = [rng.uniform(), rng.uniform(), rng.uniform()];
            let bg = [rng.uniform(), rng.uniform(), rng.uniform()];
            let dist2: f64 = (0..3).map(|c| (fg[c] - bg[c]).powi(2)).sum();
            if dist2 >= MIN_CONTRAST * MIN_CONTRAST {
                break (fg, bg);
            }
        };
        let pattern = Pattern::draw(label, s as f64, &mut rng);
        let plane = s * s;
        let mut out = vec![0.0f32; 3 * plane];
        let samples = (SUPERSAMPLE * SUPERSAMPLE) as f64;
        for y in 0..s {
            for x in 0..s {
                let mut hits = 0usize;
                for sy in 0..SUPERSAMPLE {
                    for sx in 0..SUPERSAMPLE {
                        let px = x as f64 + (sx as f64 + 0.5) / SUPERSAMPLE as f64;
                        let py = y as f64 + (sy as f64 + 0.5) / SUPERSAMPLE as f64;
                        hits += pattern.covers(px, py) as usize;
                    }
                }
                let t = hits as f64 / samples;
                for c in 0..3 {
                    let v = bg[c] + (fg[c] - bg[c]) * t + NOISE_STD * rng.normal();
                    out[c * plane + y * s + x] = v.clamp(0.0, 1.0) as f32;
                }
            }
        }
        (out, label)
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }

    fn label(&self, index: usize) -> Option<usize> {
        (index < self.len).then(|| Synthetic::label(self, index))
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    /// Augmentation is a random horizontal flip only: every pattern already has a random
    /// position, scale and phase, and a flip keeps every class (diagonal stripes of either
    /// direction are one class).
    fn get(&self, index: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, usize), DataError> {
        if index >= self.len {
            return Err(DataError::IndexOutOfRange {
                index,
                len: self.len,
            });
        }
        let (mut pixels, label) = self.render(index);
        let s = self.image_size;
        if let Some(rng) = augment {
            if rng.uniform() < 0.5 {
                for row in pixels.chunks_mut(s) {
                    row.reverse();
                }
            }
        }
        let plane = s * s;
        for (c, channel) in pixels.chunks_mut(plane).enumerate() {
            for v in channel {
                *v = self.normalization.apply(c, *v);
            }
        }
        Ok((pixels, label))
    }

    fn normalization(&self) -> Normalization {
        self.normalization
    }

    fn describe(&self, index: usize) -> String {
        let class = SYNTHETIC_CLASSES[self.label(index)];
        format!("synthetic #{index} ({class}, seed {})", self.seed)
    }
}
