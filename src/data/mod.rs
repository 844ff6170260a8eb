//! Training data: labelled image sources, the train/validation split, and a background
//! loader that decodes and batches images while the GPU works.
//!
//! - [`Dataset`]: one labelled image as CHW `f32`, normalised with the ImageNet statistics.
//! - [`ImageFolder`]: `root/<class>/<image>` on disk (the layout Keras'
//!   `image_dataset_from_directory` and torchvision's `ImageFolder` read).
//! - [`Synthetic`]: a procedural, seeded dataset for smoke tests and demos.
//! - [`Loader`]: shuffled, augmented batches prepared on worker threads.
//! - [`split`]: a deterministic train/validation split.

use std::fmt;
use std::path::PathBuf;

use crate::rng::Rng;

pub mod folder;
pub mod loader;
pub mod synthetic;

pub use folder::{load_image, FolderSkip, ImageFolder, IMAGE_EXTENSIONS};
pub use loader::{Batch, Loader, LoaderOptions, Shard, SkipReason, Skipped};
pub use synthetic::Synthetic;

/// Per-channel mean of ImageNet in RGB order, on pixel values scaled to [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of ImageNet in RGB order, on pixel values scaled to [0, 1].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a channel value `v` in [0, 1] becomes a network input: `(v - mean) / std`, per RGB
/// channel. A model family has its own (torchvision's DenseNet and ResNet ImageNet's,
/// timm's pre-activation ResNet 0.5 everywhere); weight files record the one they were
/// trained with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet's statistics ([`IMAGENET_MEAN`], [`IMAGENET_STD`]): torchvision's models.
    pub const IMAGENET: Normalization = Normalization {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    /// Mean and standard deviation 0.5 (timm's `IMAGENET_INCEPTION_MEAN/STD`): the
    /// configs of timm's `resnetv2_*`.
    pub const HALF: Normalization = Normalization {
        mean: [0.5; 3],
        std: [0.5; 3],
    };

    /// `(v - mean[c]) / std[c]`.
    pub fn apply(&self, channel: usize, v: f32) -> f32 {
        (v - self.mean[channel]) / self.std[channel]
    }

    /// The form weight files record: `mean=0.485,0.456,0.406 std=0.229,0.224,0.225`.
    pub fn to_metadata(&self) -> String {
        let list = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
        format!("mean={} std={}", list(&self.mean), list(&self.std))
    }

    /// Reads [`Normalization::to_metadata`]'s form; `None` for anything else.
    pub fn from_metadata(text: &str) -> Option<Normalization> {
        let triple = |part: &str, key: &str| -> Option<[f32; 3]> {
            let values: Vec<f32> = part
                .strip_prefix(key)?
                .split(',')
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            values.try_into().ok()
        };
        let (mean, std) = text.split_once(' ')?;
        let (mean, std) = (triple(mean, "mean=")?, triple(std, "std=")?);
        std.iter()
            .all(|&s| s > 0.0)
            .then_some(Normalization { mean, std })
    }
}

/// What can go wrong while finding, reading or splitting data. Every variant about a file or
/// folder names it.
#[derive(Debug, Clone, PartialEq)]
pub enum DataError {
    /// The dataset folder does not exist.
    MissingDir(PathBuf),
    /// The dataset path exists but is not a folder.
    NotADir(PathBuf),
    /// The dataset folder holds no class sub-folders.
    NoClasses(PathBuf),
    /// A class folder holds no image files.
    EmptyClass { class: String, dir: PathBuf },
    /// An image file could not be decoded (corrupt, truncated, or not an image).
    Decode { path: PathBuf, message: String },
    /// A file or folder could not be read.
    Io { path: PathBuf, message: String },
    /// Too few images for a split with `validation_fraction` held out: it would leave the
    /// training set empty.
    TooFewImages {
        found: usize,
        needed: usize,
        validation_fraction: f64,
    },
    /// An item index past the end of a dataset.
    IndexOutOfRange { index: usize, len: usize },
    /// An image size of 0.
    ZeroImageSize,
    /// A validation fraction outside [0, 1).
    ValidationFraction(f64),
    /// More images per class, or more classes, than a synthetic dataset holds.
    NotEnoughSynthetic {
        per_class: usize,
        classes: usize,
        images: usize,
        available_classes: usize,
    },
    /// A file or folder could not be written.
    Write { path: PathBuf, message: String },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::MissingDir(p) => write!(f, "dataset folder {} does not exist", p.display()),
            DataError::NotADir(p) => write!(f, "dataset path {} is not a folder", p.display()),
            DataError::NoClasses(p) => write!(
                f,
                "dataset folder {} has no class sub-folders (expected {}/<class>/<image>)",
                p.display(),
                p.display()
            ),
            DataError::EmptyClass { class, dir } => write!(
                f,
                "class folder {} (class \"{class}\") holds no images (extensions: {})",
                dir.display(),
                IMAGE_EXTENSIONS.join(", ")
            ),
            DataError::Decode { path, message } => {
                write!(f, "cannot decode image {}: {message}", path.display())
            }
            DataError::Io { path, message } => {
                write!(f, "cannot read {}: {message}", path.display())
            }
            DataError::TooFewImages {
                found,
                needed,
                validation_fraction,
            } => {
                write!(
                    f,
                    "too few images for a split with validation fraction {validation_fraction}: \
                     found {found}, need at least {needed}"
                )
            }
            DataError::IndexOutOfRange { index, len } => {
                write!(
                    f,
                    "item index {index} out of range for a dataset of {len} items"
                )
            }
            DataError::ZeroImageSize => {
                f.write_str("invalid argument: image size must be positive")
            }
            DataError::ValidationFraction(v) => {
                write!(
                    f,
                    "invalid argument: validation fraction {v} is not in [0, 1)"
                )
            }
            DataError::NotEnoughSynthetic {
                per_class,
                classes,
                images,
                available_classes,
            } => write!(
                f,
                "invalid argument: {per_class} images of {classes} classes from a synthetic \
                 dataset of {images} images of {available_classes} classes"
            ),
            DataError::Write { path, message } => {
                write!(f, "cannot write {}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for DataError {}

impl DataError {
    /// The cause without the file name, for messages that already name the file.
    pub fn detail(&self) -> String {
        match self {
            DataError::Decode { message, .. }
            | DataError::Io { message, .. }
            | DataError::Write { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A labelled image source. `get` returns one image as CHW `f32` (3 x size x size),
/// normalised with the dataset's [`Normalization`] (ImageNet's unless it was given
/// another), and its label.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;

    /// True when the dataset has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names; labels index into this list.
    fn classes(&self) -> &[String];

    /// Side of the square images `get` returns.
    fn image_size(&self) -> usize;

    /// Item `index` as (CHW pixels, label). `augment`: `Some(rng)` applies the training
    /// augmentation (random horizontal flip and random-resized-crop with scale in [0.6, 1]
    /// and aspect ratio in [3/4, 4/3], then resize; synthetic data uses its own), drawing
    /// every random number from `rng`.
    fn get(&self, index: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, usize), DataError>;

    /// Human name of item `index` (the file path for folders), for messages.
    fn describe(&self, index: usize) -> String;

    /// How `get` normalises the images.
    fn normalization(&self) -> Normalization {
        Normalization::IMAGENET
    }

    /// Label of item `index` without loading it (`None` past the end).
    fn label(&self, index: usize) -> Option<usize>;
}

/// Deterministic split of `0..n`: a permutation shuffled by `Rng::new(seed)`, whose last
/// `round(n * val_fraction)` entries form the validation set. Returns (train, val).
///
/// `val_fraction` must lie in [0, 1); the training set must not end up empty.
pub fn split(
    n: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::ValidationFraction(val_fraction));
    }
    let n_val = (n as f64 * val_fraction).round() as usize;
    if n_val >= n {
        return Err(DataError::TooFewImages {
            found: n,
            needed: n_val + 1,
            validation_fraction: val_fraction,
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed).shuffle(&mut order);
    let val = order.split_off(n - n_val);
    Ok((order, val))
}

/// A seed for stream `stream` of a run seeded with `seed`: distinct streams give unrelated
/// generators, and the result depends on nothing else (not on threads or timing).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut rng = Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next_u64()
}

/// Normalises an RGB8 image into CHW `f32`: `(pixel / 255 - mean) / std` per channel.
pub fn normalize_rgb8(image: &image::RgbImage, normalization: &Normalization) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = normalization.apply(c, pixel[c] as f32 / 255.0);
        }
    }
    out
}
