//! Images on disk in the `root/<class>/<image>` layout.
//!
//! Classes are the sorted names of the sub-folders of `root`; the images of a class are all
//! files below its folder (searched recursively) with an image extension, sorted by path.
//! Every image is decoded with the `image` crate, converted to RGB8 whatever its mode
//! (grey, RGBA, 16-bit, palette), and the whole image is resized to `size x size` (no crop,
//! no padding: aspect ratio is not kept), as Keras' `image_dataset_from_directory` does by
//! default, then normalised. The resize uses the triangle (bilinear) filter; when shrinking,
//! `image` widens it to cover every source pixel (antialiasing, like PIL), where
//! TensorFlow's default bilinear resize samples only the four nearest pixels.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use image::imageops::{self, FilterType};
use image::RgbImage;

use super::{normalize_rgb8, DataError, Dataset, Normalization};
use crate::rng::Rng;

/// A path [`ImageFolder::open`] leaves out of the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderSkip {
    /// A folder whose name starts with a dot.
    HiddenFolder(PathBuf),
    /// A file directly in the dataset folder, where only class folders belong.
    OutsideClasses(PathBuf),
    /// A linked folder inside a class folder (not followed: a link cycle would never end).
    LinkedFolder(PathBuf),
    /// A file without one of the [`IMAGE_EXTENSIONS`].
    NotAnImage(PathBuf),
}

impl FolderSkip {
    /// The path left out.
    pub fn path(&self) -> &Path {
        match self {
            FolderSkip::HiddenFolder(p)
            | FolderSkip::OutsideClasses(p)
            | FolderSkip::LinkedFolder(p)
            | FolderSkip::NotAnImage(p) => p,
        }
    }
}

impl std::fmt::Display for FolderSkip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path().display();
        match self {
            FolderSkip::HiddenFolder(_) => write!(f, "skipped hidden folder {path}"),
            FolderSkip::OutsideClasses(_) => write!(
                f,
                "skipped {path}: files directly in the dataset folder belong to no class"
            ),
            FolderSkip::LinkedFolder(_) => write!(f, "skipped linked folder {path}"),
            FolderSkip::NotAnImage(_) => write!(
                f,
                "skipped {path}: not an image file (extensions: {})",
                IMAGE_EXTENSIONS.join(", ")
            ),
        }
    }
}

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// Random-resized-crop range of the crop's area as a fraction of the image area.
const CROP_SCALE: (f64, f64) = (0.6, 1.0);
/// Random-resized-crop range of the crop's aspect ratio (width / height).
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// Decoded images kept in memory across epochs, up to this many bytes in all.
pub const DECODE_CACHE_BYTES: usize = 2 << 30;

/// Training augmentation applied by `get(.., Some(rng))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Augmentation {
    /// Random-resized crop (area 60-100 %, aspect 3/4-4/3), then a random horizontal flip.
    #[default]
    CropFlip,
    /// A random horizontal flip of the whole resized image only.
    Flip,
}

/// A labelled image folder; see the module documentation for the layout.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    /// (path, label), grouped by class in class order, sorted by path within a class.
    items: Vec<(PathBuf, usize)>,
    image_size: usize,
    augmentation: Augmentation,
    normalization: Normalization,
    /// Decoded RGB images (decoding a JPEG costs more than the rest of the pipeline), kept
    /// while the total stays under [`DECODE_CACHE_BYTES`].
    cache: Vec<OnceLock<Arc<RgbImage>>>,
    cached_bytes: AtomicUsize,
}

impl ImageFolder {
    /// Scans `dir`. Returns the dataset and warnings about files that were skipped (each
    /// naming the file). Errors name the folder at fault: missing or unreadable `dir`, no
    /// class folders, or a class folder without images.
    pub fn open(
        dir: &Path,
        image_size: usize,
    ) -> Result<(ImageFolder, Vec<FolderSkip>), DataError> {
        if image_size == 0 {
            return Err(DataError::ZeroImageSize);
        }
        let meta = match fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::MissingDir(dir.to_path_buf()))
            }
            Err(e) => return Err(io_error(dir, &e)),
        };
        if !meta.is_dir() {
            return Err(DataError::NotADir(dir.to_path_buf()));
        }

        let mut warnings = Vec::new();
        let mut class_dirs = Vec::new();
        for path in sorted_entries(dir)? {
            let name = file_name(&path);
            if path.is_dir() {
                if name.starts_with('.') {
                    warnings.push(FolderSkip::HiddenFolder(path));
                } else {
                    class_dirs.push((name, path));
                }
            } else {
                warnings.push(FolderSkip::OutsideClasses(path));
            }
        }
        if class_dirs.is_empty() {
            return Err(DataError::NoClasses(dir.to_path_buf()));
        }
        class_dirs.sort();

        let mut items = Vec::new();
        let mut classes = Vec::with_capacity(class_dirs.len());
        for (label, (class, class_dir)) in class_dirs.into_iter().enumerate() {
            let mut files = Vec::new();
            collect_images(&class_dir, &mut files, &mut warnings)?;
            if files.is_empty() {
                return Err(DataError::EmptyClass {
                    class,
                    dir: class_dir,
                });
            }
            files.sort();
            items.extend(files.into_iter().map(|path| (path, label)));
            classes.push(class);
        }
        let folder = ImageFolder {
            root: dir.to_path_buf(),
            classes,
            cache: (0..items.len()).map(|_| OnceLock::new()).collect(),
            items,
            image_size,
            augmentation: Augmentation::default(),
            normalization: Normalization::IMAGENET,
            cached_bytes: AtomicUsize::new(0),
        };
        Ok((folder, warnings))
    }

    /// Chooses the training augmentation.
    pub fn with_augmentation(mut self, augmentation: Augmentation) -> ImageFolder {
        self.augmentation = augmentation;
        self
    }

    /// Chooses the normalisation of every image (ImageNet's unless set).
    pub fn with_normalization(mut self, normalization: Normalization) -> ImageFolder {
        self.normalization = normalization;
        self
    }

    /// Decodes item `index`, from the in-memory cache when it is there.
    fn decoded(&self, index: usize, path: &Path) -> Result<Arc<RgbImage>, DataError> {
        if let Some(img) = self.cache[index].get() {
            return Ok(img.clone());
        }
        let img = Arc::new(decode_rgb8(path)?);
        let bytes = img.as_raw().len();
        if self.cached_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes <= DECODE_CACHE_BYTES {
            let _ = self.cache[index].set(img.clone());
        } else {
            self.cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok(img)
    }

    /// The folder this dataset was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of item `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.items[index].0
    }

    /// Label of item `index`, without decoding it.
    pub fn label(&self, index: usize) -> usize {
        self.items[index].1
    }

    /// Number of images in each class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &(_, label) in &self.items {
            counts[label] += 1;
        }
        counts
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn label(&self, index: usize) -> Option<usize> {
        self.items.get(index).map(|(_, label)| *label)
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn get(&self, index: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, usize), DataError> {
        let (path, label) = self.items.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.items.len(),
        })?;
        let rgb = self.decoded(index, path)?;
        let rgb: &RgbImage = &rgb;
        let size = self.image_size as u32;
        let resized = match augment {
            None => imageops::resize(rgb, size, size, FilterType::Triangle),
            Some(rng) if self.augmentation == Augmentation::Flip => {
                let mut out = imageops::resize(rgb, size, size, FilterType::Triangle);
                if rng.uniform() < 0.5 {
                    imageops::flip_horizontal_in_place(&mut out);
                }
                out
            }
            Some(rng) => {
                let (x, y, w, h) = random_resized_crop(rgb.width(), rgb.height(), rng);
                let crop = imageops::crop_imm(rgb, x, y, w, h);
                let mut out = imageops::resize(&*crop, size, size, FilterType::Triangle);
                if rng.uniform() < 0.5 {
                    imageops::flip_horizontal_in_place(&mut out);
                }
                out
            }
        };
        Ok((normalize_rgb8(&resized, &self.normalization), *label))
    }

    fn normalization(&self) -> Normalization {
        self.normalization
    }

    fn describe(&self, index: usize) -> String {
        match self.items.get(index) {
            Some((path, _)) => path.display().to_string(),
            None => format!("item {index} (out of range)"),
        }
    }
}

/// Decodes one image file, resizes it to `image_size x image_size` and normalises it:
/// the same preprocessing `ImageFolder::get` applies without augmentation.
pub fn load_image(
    path: &Path,
    image_size: usize,
    normalization: &Normalization,
) -> Result<Vec<f32>, DataError> {
    if image_size == 0 {
        return Err(DataError::ZeroImageSize);
    }
    let rgb = decode_rgb8(path)?;
    let size = image_size as u32;
    let resized = imageops::resize(&rgb, size, size, FilterType::Triangle);
    Ok(normalize_rgb8(&resized, normalization))
}

/// Decodes a file of any supported format and mode into RGB8. The format is guessed from
/// the content first, so a PNG named `.jpg` still loads.
fn decode_rgb8(path: &Path) -> Result<RgbImage, DataError> {
    let reader = image::ImageReader::open(path).map_err(|e| io_error(path, &e))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| io_error(path, &e))?;
    let image = reader.decode().map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: "image has zero width or height".into(),
        });
    }
    Ok(image.to_rgb8())
}

/// Torchvision's RandomResizedCrop box `(x, y, width, height)` inside a `width x height`
/// image: up to ten tries at a random area and log-uniform aspect ratio, then a centre crop
/// at the nearest allowed ratio.
fn random_resized_crop(width: u32, height: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(CROP_SCALE.0, CROP_SCALE.1);
        let ratio = rng.range(log_lo, log_hi).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let x = rng.below((width - w + 1) as usize) as u32;
            let y = rng.below((height - h + 1) as usize) as u32;
            return (x, y, w, h);
        }
    }
    let ratio = wf / hf;
    let (w, h) = if ratio < CROP_RATIO.0 {
        (width, ((wf / CROP_RATIO.0).round() as u32).clamp(1, height))
    } else if ratio > CROP_RATIO.1 {
        (((hf * CROP_RATIO.1).round() as u32).clamp(1, width), height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

fn io_error(path: &Path, e: &std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Entries of `dir`, sorted by path.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, &e))? {
        paths.push(entry.map_err(|e| io_error(dir, &e))?.path());
    }
    paths.sort();
    Ok(paths)
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Appends every image file below `dir` to `out`; warns about every other file. Linked
/// folders inside a class folder are not followed (a link cycle would never end).
fn collect_images(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    warnings: &mut Vec<FolderSkip>,
) -> Result<(), DataError> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            if path.is_symlink() {
                warnings.push(FolderSkip::LinkedFolder(path));
            } else {
                collect_images(&path, out, warnings)?;
            }
        } else if is_image_file(&path) {
            out.push(path);
        } else {
            warnings.push(FolderSkip::NotAnImage(path));
        }
    }
    Ok(())
}
