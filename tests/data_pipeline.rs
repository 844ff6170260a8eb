//! The CPU side of training: image folders, the synthetic dataset, the split, the loader,
//! metrics, plots and the progress line.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use densenet_wgpu::data::{
    load_image, split, DataError, Dataset, FolderSkip, ImageFolder, Loader, LoaderOptions,
    Normalization, SkipReason, Synthetic, IMAGENET_MEAN, IMAGENET_STD,
};
use densenet_wgpu::metrics::{
    append_csv, confusion_matrix_table, read_csv, write_csv, EpochMetrics,
};
use densenet_wgpu::plot::write_curves;
use densenet_wgpu::progress::{format_duration, render, render_resumed};
use densenet_wgpu::rng::Rng;
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "densenet-data-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Creates (if needed) and returns the sub-folder `name`.
    fn sub(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_OUTPUT").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn pattern_rgb(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 17) as u8 ^ seed,
            (y * 29) as u8,
            ((x + y) * 7) as u8 ^ seed,
        ])
    })
}

fn write_png(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let path = dir.join(name);
    pattern_rgb(24, 18, seed).save(&path).unwrap();
    path
}

const S: usize = 16;

#[test]
fn image_folder_sorts_classes_with_spaces_and_files_by_name() {
    let tmp = TempDir::new("scan");
    for class in ["zebra", "golden retriever", "ant"] {
        let dir = tmp.sub(class);
        write_png(&dir, "b.png", 1);
        write_png(&dir, "a.png", 2);
    }
    write_png(&tmp.sub("ant"), "C.PNG", 3);
    let (folder, warnings) = ImageFolder::open(tmp.path(), S).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(folder.classes(), ["ant", "golden retriever", "zebra"]);
    assert_eq!(folder.len(), 7);
    assert_eq!(folder.class_counts(), vec![3, 2, 2]);
    let names: Vec<String> = (0..folder.len())
        .map(|i| {
            folder
                .path(i)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        ["C.PNG", "a.png", "b.png", "a.png", "b.png", "a.png", "b.png"]
    );
    let labels: Vec<usize> = (0..folder.len()).map(|i| folder.label(i)).collect();
    assert_eq!(labels, [0, 0, 0, 1, 1, 2, 2]);
    assert!(folder.describe(3).contains("golden retriever"));
    assert_eq!(folder.get(4, None).unwrap().1, 1);
}

#[test]
fn images_of_any_mode_and_size_load_as_3_by_s_by_s() {
    let tmp = TempDir::new("modes");
    let dir = tmp.sub("mixed");
    GrayImage::from_fn(20, 10, |x, _| Luma([(x * 12) as u8]))
        .save(dir.join("gray.png"))
        .unwrap();
    RgbaImage::from_fn(7, 13, |x, y| Rgba([x as u8 * 30, y as u8 * 19, 5, 128]))
        .save(dir.join("rgba.png"))
        .unwrap();
    ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(9, 9, |x, y| {
        Rgb([x as u16 * 7000, y as u16 * 5000, 1])
    })
    .save(dir.join("deep.png"))
    .unwrap();
    pattern_rgb(50, 40, 9).save(dir.join("photo.JPG")).unwrap();
    pattern_rgb(33, 31, 4).save(dir.join("bitmap.bmp")).unwrap();
    pattern_rgb(12, 20, 6).save(dir.join("web.webp")).unwrap();
    // A PNG with a .jpeg name: the format comes from the content.
    pattern_rgb(10, 10, 8)
        .save_with_format(dir.join("misnamed.jpeg"), image::ImageFormat::Png)
        .unwrap();

    let (folder, warnings) = ImageFolder::open(tmp.path(), S).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(folder.len(), 7);
    let mut rng = Rng::new(3);
    for i in 0..folder.len() {
        let (plain, label) = folder.get(i, None).unwrap();
        assert_eq!(label, 0);
        assert_eq!(plain.len(), 3 * S * S, "{}", folder.describe(i));
        assert!(plain.iter().all(|v| v.is_finite()));
        let (augmented, _) = folder.get(i, Some(&mut rng)).unwrap();
        assert_eq!(augmented.len(), 3 * S * S);
        assert_eq!(
            load_image(folder.path(i), S, &Normalization::IMAGENET).unwrap(),
            plain
        );
    }
}

#[test]
fn pixels_are_normalised_with_imagenet_statistics_in_chw_order() {
    let tmp = TempDir::new("norm");
    let dir = tmp.sub("red");
    RgbImage::from_pixel(5, 7, Rgb([255, 0, 51]))
        .save(dir.join("red.png"))
        .unwrap();
    let (folder, _) = ImageFolder::open(tmp.path(), 4).unwrap();
    let (pixels, _) = folder.get(0, None).unwrap();
    for (c, value) in [1.0f32, 0.0, 0.2].into_iter().enumerate() {
        let expected = (value - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        for v in &pixels[c * 16..(c + 1) * 16] {
            assert!(
                (v - expected).abs() < 1e-4,
                "channel {c}: {v} vs {expected}"
            );
        }
    }
}

#[test]
fn a_folder_normalises_with_the_normalisation_it_is_given() {
    let tmp = TempDir::new("norm-half");
    let dir = tmp.sub("red");
    RgbImage::from_pixel(5, 7, Rgb([255, 0, 51]))
        .save(dir.join("red.png"))
        .unwrap();
    let (folder, _) = ImageFolder::open(tmp.path(), 4).unwrap();
    let folder = folder.with_normalization(Normalization::HALF);
    assert_eq!(folder.normalization(), Normalization::HALF);
    let (pixels, _) = folder.get(0, None).unwrap();
    for (c, expected) in [1.0f32, -1.0, -0.6].into_iter().enumerate() {
        for v in &pixels[c * 16..(c + 1) * 16] {
            assert!(
                (v - expected).abs() < 1e-6,
                "channel {c}: {v} vs {expected}"
            );
        }
    }
    let path = dir.join("red.png");
    assert_eq!(load_image(&path, 4, &Normalization::HALF).unwrap(), pixels);
    let synthetic = Synthetic::new(4, 8, 1);
    let half = synthetic.clone().with_normalization(Normalization::HALF);
    let (a, b) = (
        synthetic.get(2, None).unwrap().0,
        half.get(2, None).unwrap().0,
    );
    for (c, (a, b)) in a.chunks(64).zip(b.chunks(64)).enumerate() {
        for (a, b) in a.iter().zip(b) {
            // The same pixel value v under both: (v - mean) / std.
            let v = a * IMAGENET_STD[c] + IMAGENET_MEAN[c];
            assert!((b - (v - 0.5) / 0.5).abs() < 1e-5, "{a} {b}");
        }
    }
}

#[test]
fn a_normalisation_is_recorded_as_text_and_read_back() {
    for n in [Normalization::IMAGENET, Normalization::HALF] {
        assert_eq!(Normalization::from_metadata(&n.to_metadata()), Some(n));
    }
    assert_eq!(
        Normalization::HALF.to_metadata(),
        "mean=0.5,0.5,0.5 std=0.5,0.5,0.5"
    );
    for bad in [
        "",
        "mean=0.5 std=0.5",
        "mean=0,0,0 std=1,0,1",
        "std=1,1,1 mean=0,0,0",
        "mean=a,0,0 std=1,1,1",
    ] {
        assert_eq!(Normalization::from_metadata(bad), None, "{bad:?}");
    }
}

#[test]
fn non_image_files_are_skipped_with_a_warning_naming_them() {
    let tmp = TempDir::new("txt");
    let dir = tmp.sub("cats");
    write_png(&dir, "cat.png", 1);
    fs::write(dir.join("notes.txt"), "not an image").unwrap();
    fs::write(tmp.path().join("README"), "stray").unwrap();
    let (folder, warnings) = ImageFolder::open(tmp.path(), S).unwrap();
    assert_eq!(folder.len(), 1);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.contains(&FolderSkip::NotAnImage(dir.join("notes.txt"))));
    assert!(warnings.contains(&FolderSkip::OutsideClasses(tmp.path().join("README"))));
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let tmp = TempDir::new("empty");
    write_png(&tmp.sub("full"), "x.png", 1);
    let empty = tmp.sub("empty one");
    fs::write(empty.join("notes.txt"), "no images here").unwrap();
    let err = ImageFolder::open(tmp.path(), S).unwrap_err();
    assert_eq!(
        err,
        DataError::EmptyClass {
            class: "empty one".into(),
            dir: empty.clone()
        }
    );
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_file_and_classless_paths_are_errors_naming_them() {
    let tmp = TempDir::new("missing");
    let missing = tmp.path().join("no such dir");
    let err = ImageFolder::open(&missing, S).unwrap_err();
    assert_eq!(err, DataError::MissingDir(missing.clone()));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let file = tmp.path().join("file.png");
    pattern_rgb(4, 4, 0).save(&file).unwrap();
    let err = ImageFolder::open(&file, S).unwrap_err();
    assert_eq!(err, DataError::NotADir(file.clone()));
    assert!(err.to_string().contains("file.png"));

    let bare = tmp.sub("bare");
    let err = ImageFolder::open(&bare, S).unwrap_err();
    assert_eq!(err, DataError::NoClasses(bare.clone()));
    assert!(err.to_string().contains(&bare.display().to_string()));

    let err = load_image(&tmp.path().join("gone.png"), S, &Normalization::IMAGENET).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("gone.png"),
        "{err}"
    );
}

#[test]
fn corrupt_image_is_skipped_by_the_loader_with_a_warning_naming_it() {
    let tmp = TempDir::new("corrupt");
    let dir = tmp.sub("things");
    for i in 0..3 {
        write_png(&dir, &format!("good{i}.png"), i);
    }
    let bad = dir.join("bad.jpg");
    fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let (folder, warnings) = ImageFolder::open(tmp.path(), S).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(folder.len(), 4);
    let bad_index = (0..4).find(|&i| folder.path(i) == bad).unwrap();
    let err = folder.get(bad_index, None).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("bad.jpg"));

    let folder: Arc<dyn Dataset> = Arc::new(folder);
    let loader = Loader::new(
        folder,
        (0..4).collect(),
        LoaderOptions::batches_of(2).shuffled(1).augmented(true),
    );
    assert_eq!(loader.num_batches(), 2);
    let mut seen = Vec::new();
    let mut loader = loader;
    for batch in &mut loader {
        assert_eq!(batch.images.len(), batch.labels.len() * 3 * S * S);
        seen.extend(batch.indices);
    }
    seen.sort();
    let expected: Vec<usize> = (0..4).filter(|&i| i != bad_index).collect();
    assert_eq!(seen, expected);
    let skipped = loader.take_skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].index, bad_index);
    assert!(
        matches!(skipped[0].reason, SkipReason::Unreadable(_)),
        "{skipped:?}"
    );
    let text = skipped[0].to_string();
    assert!(
        text.starts_with("skipped ") && text.contains("bad.jpg"),
        "{text}"
    );
    assert!(loader.take_skipped().is_empty());
}

#[test]
fn split_is_deterministic_disjoint_and_complete() {
    let (train, val) = split(100, 0.2, 42).unwrap();
    assert_eq!((train.len(), val.len()), (80, 20));
    assert_eq!(split(100, 0.2, 42).unwrap(), (train.clone(), val.clone()));
    assert_ne!(split(100, 0.2, 43).unwrap().1, val);
    let train_set: HashSet<usize> = train.iter().copied().collect();
    assert!(val.iter().all(|i| !train_set.contains(i)));
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort();
    assert_eq!(all, (0..100).collect::<Vec<_>>());

    // The validation set is the tail of Rng::new(seed).shuffle(0..n).
    let mut order: Vec<usize> = (0..10).collect();
    Rng::new(7).shuffle(&mut order);
    assert_eq!(
        split(10, 0.3, 7).unwrap(),
        (order[..7].to_vec(), order[7..].to_vec())
    );

    assert_eq!(split(5, 0.0, 1).unwrap().1, Vec::<usize>::new());
    for bad in [1.0, -0.1, f64::NAN] {
        assert!(matches!(
            split(10, bad, 1),
            Err(DataError::ValidationFraction(_))
        ));
    }
    assert!(matches!(
        split(1, 0.5, 1),
        Err(DataError::TooFewImages { .. })
    ));
    assert!(matches!(
        split(0, 0.0, 1),
        Err(DataError::TooFewImages { .. })
    ));
}

fn collect(loader: Loader) -> Vec<(Vec<usize>, Vec<f32>)> {
    loader.map(|b| (b.indices, b.images)).collect()
}

#[test]
fn loader_yields_every_item_once_per_epoch() {
    let data = Arc::new(Synthetic::new(103, 8, 5));
    let dataset: Arc<dyn Dataset> = data.clone();
    let indices: Vec<usize> = (0..103).collect();

    let loader = Loader::new(
        dataset.clone(),
        indices.clone(),
        LoaderOptions::batches_of(10).shuffled(1),
    );
    assert_eq!((loader.num_batches(), loader.num_items()), (11, 103));
    let batches: Vec<_> = loader.collect();
    assert_eq!(batches.len(), 11);
    assert!(batches[..10].iter().all(|b| b.len() == 10) && batches[10].len() == 3);
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    let order = seen.clone();
    seen.sort();
    assert_eq!(seen, indices);
    for batch in &batches {
        for (k, &i) in batch.indices.iter().enumerate() {
            let (pixels, label) = data.get(i, None).unwrap();
            assert_eq!(batch.labels[k], label);
            assert_eq!(&batch.images[k * 3 * 64..(k + 1) * 3 * 64], &pixels[..]);
        }
    }

    let unshuffled: Vec<usize> = Loader::new(
        dataset.clone(),
        indices.clone(),
        LoaderOptions::batches_of(10),
    )
    .flat_map(|b| b.indices)
    .collect();
    assert_eq!(unshuffled, indices);
    let other: Vec<usize> = Loader::new(
        dataset.clone(),
        indices.clone(),
        LoaderOptions::batches_of(10).shuffled(2),
    )
    .flat_map(|b| b.indices)
    .collect();
    assert_ne!(other, order);
    let again: Vec<usize> = Loader::new(
        dataset.clone(),
        indices.clone(),
        LoaderOptions::batches_of(10).shuffled(1),
    )
    .flat_map(|b| b.indices)
    .collect();
    assert_eq!(again, order);

    let dropped = Loader::new(
        dataset.clone(),
        indices,
        LoaderOptions::batches_of(10).shuffled(1).drop_last(),
    );
    assert_eq!(dropped.num_batches(), 10);
    let batches: Vec<_> = dropped.collect();
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.len() == 10));

    assert_eq!(
        Loader::new(
            dataset,
            Vec::new(),
            LoaderOptions::batches_of(4).shuffled(1).augmented(true),
        )
        .count(),
        0
    );
}

#[test]
fn augmentation_is_reproducible_whatever_the_worker_count() {
    let synthetic: Arc<dyn Dataset> = Arc::new(Synthetic::new(40, 8, 3));
    let run = |workers: usize, seed: u64, augment: bool| {
        collect(Loader::new(
            synthetic.clone(),
            (0..40).collect(),
            LoaderOptions::batches_of(6)
                .shuffled(seed)
                .augmented(augment)
                .workers(workers),
        ))
    };
    let one = run(1, 7, true);
    assert_eq!(one, run(3, 7, true));
    assert_eq!(one, run(7, 7, true));
    assert_ne!(one, run(1, 7, false), "augmentation changed nothing");
    assert_ne!(
        one.iter().map(|b| &b.0).collect::<Vec<_>>(),
        run(1, 8, true).iter().map(|b| &b.0).collect::<Vec<_>>()
    );

    let tmp = TempDir::new("augment");
    for class in ["a", "b"] {
        let dir = tmp.sub(class);
        for i in 0..4 {
            pattern_rgb(30 + i as u32 * 3, 22, i)
                .save(dir.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let (folder, _) = ImageFolder::open(tmp.path(), S).unwrap();
    let folder: Arc<dyn Dataset> = Arc::new(folder);
    let run = |workers: usize, augment: bool| {
        collect(Loader::new(
            folder.clone(),
            (0..8).collect(),
            LoaderOptions::batches_of(3)
                .shuffled(11)
                .augmented(augment)
                .workers(workers),
        ))
    };
    let one = run(1, true);
    assert_eq!(one, run(2, true));
    assert_ne!(one, run(1, false));
}

#[test]
fn a_resumed_epoch_continues_with_the_same_batches_and_augmentation() {
    let synthetic: Arc<dyn Dataset> = Arc::new(Synthetic::new(40, 8, 3));
    let options = LoaderOptions::batches_of(6).shuffled(9).augmented(true);
    let full = collect(Loader::new(synthetic.clone(), (0..40).collect(), options));
    assert_eq!(full.len(), 7);
    for first in [0, 1, 4, 6, 7] {
        let rest = collect(Loader::new(
            synthetic.clone(),
            (0..40).collect(),
            options.from_batch(first),
        ));
        assert_eq!(rest, full[first..], "resumed after {first} batches");
    }
}

/// A dataset that counts the items decoded through it.
struct Counted {
    inner: Synthetic,
    decoded: std::sync::atomic::AtomicUsize,
}

impl Dataset for Counted {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn image_size(&self) -> usize {
        self.inner.image_size()
    }
    fn get(&self, index: usize, augment: Option<&mut Rng>) -> Result<(Vec<f32>, usize), DataError> {
        self.decoded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(index, augment)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
    fn label(&self, index: usize) -> Option<usize> {
        Dataset::label(&self.inner, index)
    }
}

#[test]
fn dropping_the_loader_mid_epoch_stops_its_workers() {
    let (items, batch, workers) = (100_000, 16, 3);
    let dataset = Arc::new(Counted {
        inner: Synthetic::new(items, 32, 1),
        decoded: Default::default(),
    });
    let shared: Arc<dyn Dataset> = dataset.clone();
    let mut loader = Loader::new(
        shared,
        (0..items).collect(),
        LoaderOptions::batches_of(batch)
            .shuffled(1)
            .augmented(true)
            .workers(workers),
    );
    assert_eq!(loader.next().unwrap().len(), batch);
    // The drop runs on its own thread so that a drop that never returns fails here, after
    // a cap that only catches that hang (decoding every item takes minutes, not this long).
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(loader);
        done.send(()).unwrap();
    });
    assert!(
        dropped.recv_timeout(Duration::from_secs(600)).is_ok(),
        "dropping the loader did not return: its workers did not stop"
    );
    // Every worker has ended (each held the dataset through the loader's plan), after
    // decoding at most the batches the channels hold plus the one each worker was building.
    assert_eq!(
        Arc::strong_count(&dataset),
        1,
        "a worker still runs after the drop"
    );
    let decoded = dataset.decoded.load(std::sync::atomic::Ordering::SeqCst);
    let bound = batch * (1 + densenet_wgpu::data::loader::PREFETCH_BATCHES + 2 * workers);
    assert!(
        decoded <= bound,
        "{decoded} items decoded, more than the {bound} the prefetch allows"
    );
}

#[test]
fn synthetic_data_is_deterministic_and_balanced() {
    let a = Synthetic::new(600, 32, 9);
    let b = Synthetic::new(600, 32, 9);
    let c = Synthetic::new(600, 32, 10);
    assert_eq!(a.classes().len(), 6);
    assert_eq!(a.image_size(), 32);
    for i in [0, 1, 17, 599] {
        let (x, label) = a.get(i, None).unwrap();
        assert_eq!(x.len(), 3 * 32 * 32);
        assert_eq!((x.clone(), label), b.get(i, None).unwrap());
        assert_ne!(x, c.get(i, None).unwrap().0);
        assert_eq!(label, i % 6);
    }
    let mut counts = [0usize; 6];
    for i in 0..a.len() {
        counts[a.label(i)] += 1;
    }
    assert_eq!(counts, [100; 6]);
    assert_ne!(a.get(0, None).unwrap().0, a.get(6, None).unwrap().0);
    assert!(a.get(600, None).is_err());

    // A flip is the only augmentation: rows come out reversed or unchanged.
    let (plain, _) = a.get(2, None).unwrap();
    let mut flips = 0;
    let mut rng = Rng::new(1);
    for _ in 0..20 {
        let (aug, _) = a.get(2, Some(&mut rng)).unwrap();
        let reversed: Vec<f32> = plain
            .chunks(32)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        assert!(aug == plain || aug == reversed);
        flips += (aug == reversed) as usize;
    }
    assert!((3..=17).contains(&flips), "{flips} flips in 20");
}

#[test]
fn synthetic_classes_are_not_separable_by_mean_colour() {
    let data = Synthetic::new(1800, 32, 2024);
    let plane = 32 * 32;
    let mean_colour = |i: usize| -> [f64; 3] {
        let (x, _) = data.render(i);
        let mut m = [0.0; 3];
        for (c, v) in m.iter_mut().enumerate() {
            *v = x[c * plane..(c + 1) * plane]
                .iter()
                .map(|&p| p as f64)
                .sum::<f64>()
                / plane as f64;
        }
        m
    };
    // Nearest class centroid of the mean colour: fit on the first half, test on the second.
    let mut centroids = [[0.0f64; 3]; 6];
    let mut counts = [0usize; 6];
    for i in 0..900 {
        let (m, label) = (mean_colour(i), data.label(i));
        for c in 0..3 {
            centroids[label][c] += m[c];
        }
        counts[label] += 1;
    }
    for (centroid, &n) in centroids.iter_mut().zip(&counts) {
        centroid.iter_mut().for_each(|v| *v /= n as f64);
    }
    let mut correct = 0;
    for i in 900..1800 {
        let m = mean_colour(i);
        let dist = |k: usize| {
            (0..3)
                .map(|c| (m[c] - centroids[k][c]).powi(2))
                .sum::<f64>()
        };
        let predicted = (0..6).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap();
        correct += (predicted == data.label(i)) as usize;
    }
    let accuracy = correct as f64 / 900.0;
    assert!(accuracy < 0.4, "mean-colour accuracy {accuracy}");
}

fn metrics(epoch: usize, val: bool) -> EpochMetrics {
    EpochMetrics {
        epoch,
        epochs: 3,
        train_loss: 1.9 / epoch as f64,
        train_acc: 0.3 + 0.17 * epoch as f64,
        val_loss: val.then_some(2.1 / epoch as f64 + 0.0123456789),
        val_acc: val.then_some(0.25 + 0.15 * epoch as f64),
        lr: 0.1 * 0.5f64.powi(epoch as i32),
        seconds: 41.23 + epoch as f64,
    }
}

#[test]
fn summary_line_format_is_exact() {
    let m = EpochMetrics {
        epoch: 3,
        epochs: 10,
        train_loss: 0.81234,
        train_acc: 0.70118,
        val_loss: Some(0.90009),
        val_acc: Some(0.66371),
        lr: 0.01,
        seconds: 41.234,
    };
    assert_eq!(
        m.summary_line(),
        "epoch 3/10 train_loss=0.8123 train_acc=0.7012 val_loss=0.9001 val_acc=0.6637 time=41.2s"
    );
    let m = EpochMetrics {
        val_loss: None,
        val_acc: None,
        ..m
    };
    assert_eq!(
        m.summary_line(),
        "epoch 3/10 train_loss=0.8123 train_acc=0.7012 time=41.2s"
    );
}

#[test]
fn csv_round_trips() {
    let tmp = TempDir::new("csv");
    let path = tmp.path().join("metrics.csv");
    let history = vec![metrics(1, true), metrics(2, false), metrics(3, true)];
    for m in &history {
        append_csv(&path, m).unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"));
    assert_eq!(text.matches("epoch,").count(), 1);
    assert_eq!(text.lines().count(), 4);
    assert_eq!(read_csv(&path).unwrap(), history);

    write_csv(&path, &history[..2]).unwrap();
    let mut expected = history[..2].to_vec();
    expected.iter_mut().for_each(|m| m.epochs = 2);
    assert_eq!(read_csv(&path).unwrap(), expected);

    fs::write(&path, "epoch,loss\n1,2\n").unwrap();
    let err = read_csv(&path).unwrap_err();
    assert!(err.to_string().contains("metrics.csv line 1"), "{err}");
}

#[test]
fn confusion_matrix_table_shows_recall_and_accuracy() {
    let classes = vec!["cat".to_string(), "golden retriever".to_string()];
    let table = confusion_matrix_table(&classes, &[vec![45, 5], vec![3, 47]]);
    assert!(table.contains("0 cat"), "{table}");
    assert!(table.contains("1 golden retriever"), "{table}");
    assert!(
        table.contains("90.0%") && table.contains("94.0%"),
        "{table}"
    );
    assert!(
        table.contains("overall accuracy: 92.0% (92/100)"),
        "{table}"
    );
}

#[test]
fn plot_writes_a_png_of_the_expected_size() {
    let tmp = TempDir::new("plot");
    let many: Vec<EpochMetrics> = (1..=12)
        .map(|e| EpochMetrics {
            epochs: 12,
            ..metrics(e, e != 5)
        })
        .collect();
    for (name, history) in [
        ("one.png", &many[..1]),
        ("many.png", &many[..]),
        ("train.png", &[metrics(1, false), metrics(2, false)][..]),
    ] {
        let path = tmp.path().join(name);
        write_curves(&path, history).unwrap();
        let image = image::open(&path).unwrap();
        assert_eq!((image.width(), image.height()), (900, 400), "{name}");
    }
    let leftovers = fs::read_dir(tmp.path()).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")
    });
    assert_eq!(leftovers.count(), 0);
    assert!(write_curves(&tmp.path().join("none.png"), &[]).is_err());
}

#[test]
fn progress_line_format() {
    let line = render("epoch 2/10", 412, 3192, 412.0 / 36.2, "loss 0.532", false);
    assert_eq!(
        line,
        "[epoch 2/10] ███░░░░░░░░░░░░░░░░░ 412/3192 img  36.2 img/s  ETA 1m17s  loss 0.532"
    );
    let done = render("val", 10, 10, 3.0, "", true);
    assert_eq!(
        done,
        "[val] ████████████████████ 10/10 img  3.3 img/s  took 3s"
    );
    assert_eq!(format_duration(3725.0), "1h02m");
    // A resumed epoch: 400 images were done before; 12 in 0.5 s now.
    let resumed = render_resumed("epoch 2/10", 412, 400, 3192, 0.5, "", false);
    assert_eq!(
        resumed,
        "[epoch 2/10] ███░░░░░░░░░░░░░░░░░ 412/3192 img  24.0 img/s  ETA 1m56s"
    );
}

/// The embedded images as an image folder: each class folder holds the requested images
/// of its class, ImageFolder reads them back, and a request the dataset cannot fill is
/// refused.
#[test]
fn synthetic_images_write_an_image_folder() {
    let dir = std::env::temp_dir().join(format!("dnw-write-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = Synthetic::new(20, 8, 3);
    // Class 2's third image is item 2 + 2 * 6 = 14 < 20; a fourth would be 20.
    let files = data.write_folder(&dir, 3, 3).unwrap();
    assert_eq!(files.len(), 9);
    let (folder, skipped) = ImageFolder::open(&dir, 8).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(folder.len(), 9);
    assert_eq!(folder.class_counts(), vec![3, 3, 3]);
    assert!(matches!(
        data.write_folder(&dir, 3, 4),
        Err(DataError::NotEnoughSynthetic {
            per_class: 4,
            classes: 3,
            ..
        })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
