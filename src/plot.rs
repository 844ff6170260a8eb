//! Training curves as a PNG: loss on the left, accuracy on the right, train and validation
//! lines in each, with axes, tick labels, a legend and titles; and [`write_chart`], one
//! panel of named series (the model comparison's figures). Text uses a small built-in
//! 5x7 bitmap font, so plotting needs nothing but the `image` crate.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};

use crate::metrics::{temp_path, EpochMetrics};

/// Size of the whole figure in pixels.
pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 400;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([30, 30, 30]);
const AXIS: Rgb<u8> = Rgb([110, 110, 110]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VAL: Rgb<u8> = Rgb([230, 110, 10]);

/// Pixel scale of the font (each font pixel becomes `FONT_SCALE x FONT_SCALE`).
const FONT_SCALE: i64 = 2;
/// Plot area inside each panel: margins left, right, top, bottom.
const MARGIN: (i64, i64, i64, i64) = (70, 20, 44, 62);
/// Above this many points, lines are drawn without point markers.
const MAX_MARKERS: usize = 40;

/// Why a figure was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlotError {
    /// The figure has no point to draw.
    #[error("{figure}: no points to plot")]
    Empty { figure: String },
    /// The PNG encoder failed.
    #[error("cannot encode the PNG: {0}")]
    Encode(String),
    /// The file could not be written (or moved into place).
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// Writes the loss and accuracy curves of `history` as a `WIDTH x HEIGHT` PNG at `path`,
/// atomically (a temporary file next to it, then a rename). One epoch is drawn as points.
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), PlotError> {
    write_png(path, &render_curves(history)?)
}

/// Writes `image` as a PNG at `path`, atomically.
fn write_png(path: &Path, image: &RgbImage) -> Result<(), PlotError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| PlotError::Encode(e.to_string()))?;
    let tmp = temp_path(path);
    fs::write(&tmp, &bytes).map_err(|e| PlotError::Write {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PlotError::Write {
            path: path.to_path_buf(),
            message: format!("renaming {} into place: {e}", tmp.display()),
        }
    })
}

/// One named line of a [`write_chart`] figure.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw only the points, not the line between them.
    pub scatter: bool,
}

/// Series colours, in order (matplotlib's first six).
const PALETTE: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([230, 110, 10]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
];

/// One panel of `series` (x and y from 0 up to their largest values), with a title, an
/// x-axis label and a legend, as a `WIDTH x HEIGHT` PNG at `path`.
pub fn write_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    if all().next().is_none() {
        return Err(PlotError::Empty {
            figure: title.to_string(),
        });
    }
    let x_max = all().map(|p| p.0).fold(0.0f64, f64::max);
    let y_max = all().map(|p| p.1).fold(0.0f64, f64::max);
    let mut canvas = Canvas {
        image: RgbImage::from_pixel(WIDTH, HEIGHT, WHITE),
    };
    let x_hi = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    let mut panel = Panel::new(0, WIDTH as i64, &[0.0, x_hi], (0.0, y_max.max(1e-9) * 1.1));
    panel.x_label = x_label.to_string();
    panel.draw_axes(&mut canvas, title);
    let mut legend = Vec::new();
    for (s, color) in series.iter().zip(PALETTE.iter().cycle()) {
        let (xs, ys): (Vec<f64>, Vec<f64>) = s.points.iter().copied().unzip();
        if s.scatter {
            for (x, y) in s.points.iter().copied() {
                canvas.disc(panel.px(x), panel.py(y), 5.0, *color);
            }
        } else {
            panel.draw_series(&mut canvas, &xs, &ys, *color);
        }
        legend.push((s.label.as_str(), *color));
    }
    panel.draw_legend(&mut canvas, &legend, Corner::BottomRight);
    write_png(path, &canvas.image)
}

/// Draws the figure `write_curves` saves.
pub fn render_curves(history: &[EpochMetrics]) -> Result<RgbImage, PlotError> {
    if history.is_empty() {
        return Err(PlotError::Empty {
            figure: "training curves".into(),
        });
    }
    let epochs: Vec<f64> = history.iter().map(|m| m.epoch as f64).collect();
    let train_loss: Vec<f64> = history.iter().map(|m| m.train_loss).collect();
    let val_loss: Vec<f64> = history
        .iter()
        .map(|m| m.val_loss.unwrap_or(f64::NAN))
        .collect();
    let train_acc: Vec<f64> = history.iter().map(|m| m.train_acc).collect();
    let val_acc: Vec<f64> = history
        .iter()
        .map(|m| m.val_acc.unwrap_or(f64::NAN))
        .collect();
    let has_val = history
        .iter()
        .any(|m| m.val_loss.is_some() || m.val_acc.is_some());

    let mut canvas = Canvas {
        image: RgbImage::from_pixel(WIDTH, HEIGHT, WHITE),
    };
    let loss_max = train_loss
        .iter()
        .chain(&val_loss)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let loss_top = if loss_max > 0.0 { loss_max * 1.05 } else { 1.0 };
    let half = WIDTH as i64 / 2;
    let panels = [
        (
            0,
            "loss",
            (0.0, loss_top),
            [&train_loss, &val_loss],
            Corner::TopRight,
        ),
        (
            half,
            "accuracy",
            (0.0, 1.0),
            [&train_acc, &val_acc],
            Corner::BottomRight,
        ),
    ];
    for (left, title, y_range, [train, val], corner) in panels {
        let panel = Panel::new(left, half, &epochs, y_range);
        panel.draw_axes(&mut canvas, title);
        let mut legend = vec![("train", TRAIN)];
        if has_val {
            panel.draw_series(&mut canvas, &epochs, val, VAL);
            legend.push(("val", VAL));
        }
        panel.draw_series(&mut canvas, &epochs, train, TRAIN);
        panel.draw_legend(&mut canvas, &legend, corner);
    }
    Ok(canvas.image)
}

#[derive(Clone, Copy)]
enum Corner {
    TopRight,
    BottomRight,
}

/// One panel: where its plot area lies and which data range it shows.
struct Panel {
    /// Plot area in pixels: left, top, right, bottom.
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    x_range: (f64, f64),
    x_step: f64,
    y_range: (f64, f64),
    y_step: f64,
    x_label: String,
}

impl Panel {
    fn new(left: i64, width: i64, epochs: &[f64], y_range: (f64, f64)) -> Panel {
        let first = epochs.iter().copied().fold(f64::INFINITY, f64::min);
        let last = epochs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut x_lo, mut x_hi) = (first, last);
        if x_hi - x_lo < 1.0 {
            x_lo = (first - 1.0).max(0.0);
            x_hi = x_lo + 2.0;
        }
        let x_step = nice_step(x_hi - x_lo).max(1.0);
        let y_step = nice_step(y_range.1 - y_range.0);
        let y_hi = (y_range.1 / y_step - 1e-9).ceil() * y_step;
        Panel {
            x0: left + MARGIN.0,
            y0: MARGIN.2,
            x1: left + width - MARGIN.1,
            y1: HEIGHT as i64 - MARGIN.3,
            x_range: (x_lo, x_hi),
            x_step,
            y_range: (y_range.0, y_hi),
            y_step,
            x_label: "epoch".into(),
        }
    }

    fn px(&self, x: f64) -> f64 {
        let (lo, hi) = self.x_range;
        self.x0 as f64 + (x - lo) / (hi - lo) * (self.x1 - self.x0) as f64
    }

    fn py(&self, y: f64) -> f64 {
        let (lo, hi) = self.y_range;
        let y = y.clamp(lo, hi);
        self.y1 as f64 - (y - lo) / (hi - lo) * (self.y1 - self.y0) as f64
    }

    fn draw_axes(&self, canvas: &mut Canvas, title: &str) {
        let ch = 7 * FONT_SCALE;
        for (value, label) in ticks(self.y_range, self.y_step) {
            let y = self.py(value).round() as i64;
            canvas.fill(self.x0, y, self.x1 - self.x0, 1, GRID);
            canvas.fill(self.x0 - 5, y, 5, 1, AXIS);
            let w = text_width(&label);
            canvas.text(self.x0 - 9 - w, y - ch / 2, &label, BLACK);
        }
        for (value, label) in ticks(self.x_range, self.x_step) {
            let x = self.px(value).round() as i64;
            canvas.fill(x, self.y0, 1, self.y1 - self.y0, GRID);
            canvas.fill(x, self.y1, 1, 5, AXIS);
            canvas.text(x - text_width(&label) / 2, self.y1 + 10, &label, BLACK);
        }
        canvas.fill(self.x0, self.y0, 1, self.y1 - self.y0 + 1, AXIS);
        canvas.fill(self.x0, self.y1, self.x1 - self.x0 + 1, 1, AXIS);
        canvas.fill(self.x1, self.y0, 1, self.y1 - self.y0 + 1, AXIS);
        canvas.fill(self.x0, self.y0, self.x1 - self.x0 + 1, 1, AXIS);

        let mid = (self.x0 + self.x1) / 2;
        canvas.text(
            mid - text_width(title) / 2,
            (self.y0 - ch) / 2,
            title,
            BLACK,
        );
        canvas.text(
            mid - text_width(&self.x_label) / 2,
            self.y1 + 10 + ch + 10,
            &self.x_label,
            BLACK,
        );
    }

    fn draw_series(&self, canvas: &mut Canvas, xs: &[f64], ys: &[f64], color: Rgb<u8>) {
        let points: Vec<Option<(f64, f64)>> = xs
            .iter()
            .zip(ys)
            .map(|(&x, &y)| y.is_finite().then(|| (self.px(x), self.py(y))))
            .collect();
        for pair in points.windows(2) {
            if let [Some(a), Some(b)] = pair {
                canvas.line(*a, *b, 2.5, color);
            }
        }
        for (i, p) in points.iter().enumerate() {
            let Some((x, y)) = *p else { continue };
            let isolated = points.get(i.wrapping_sub(1)).is_none_or(|q| q.is_none())
                && points.get(i + 1).is_none_or(|q| q.is_none());
            if isolated {
                canvas.disc(x, y, 5.0, color);
            } else if points.len() <= MAX_MARKERS {
                canvas.disc(x, y, 3.5, color);
            }
        }
    }

    fn draw_legend(&self, canvas: &mut Canvas, entries: &[(&str, Rgb<u8>)], corner: Corner) {
        let ch = 7 * FONT_SCALE;
        let row = ch + 8;
        let text_w = entries
            .iter()
            .map(|(s, _)| text_width(s))
            .max()
            .unwrap_or(0);
        let w = 10 + 26 + 8 + text_w + 10;
        let h = 8 + row * entries.len() as i64;
        let x = self.x1 - 10 - w;
        let y = match corner {
            Corner::TopRight => self.y0 + 10,
            Corner::BottomRight => self.y1 - 10 - h,
        };
        canvas.fill(x, y, w, h, WHITE);
        canvas.outline(x, y, w, h, AXIS);
        for (i, (label, color)) in entries.iter().enumerate() {
            let ty = y + 8 + row * i as i64;
            let ly = (ty + ch / 2) as f64;
            canvas.line((x as f64 + 10.0, ly), (x as f64 + 36.0, ly), 2.5, *color);
            canvas.disc(x as f64 + 23.0, ly, 3.5, *color);
            canvas.text(x + 44, ty, label, BLACK);
        }
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about five intervals over `range`.
fn nice_step(range: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Tick values in `range` at multiples of `step`, with labels showing as many decimals as
/// the step needs.
fn ticks(range: (f64, f64), step: f64) -> Vec<(f64, String)> {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let first = (range.0 / step - 1e-9).ceil() as i64;
    let last = (range.1 / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            (v, format!("{v:.decimals$}"))
        })
        .collect()
}

fn text_width(s: &str) -> i64 {
    let n = s.chars().count() as i64;
    (n * 6 - 1).max(0) * FONT_SCALE
}

struct Canvas {
    image: RgbImage,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        if x >= 0 && y >= 0 && x < self.image.width() as i64 && y < self.image.height() as i64 {
            self.image.put_pixel(x as u32, y as u32, color);
        }
    }

    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    fn outline(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
        self.fill(x, y, w, 1, color);
        self.fill(x, y + h - 1, w, 1, color);
        self.fill(x, y, 1, h, color);
        self.fill(x + w - 1, y, 1, h, color);
    }

    /// A filled disc of radius `r` centred on (cx, cy).
    fn disc(&mut self, cx: f64, cy: f64, r: f64, color: Rgb<u8>) {
        let (lo_x, hi_x) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
        let (lo_y, hi_y) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
        for y in lo_y..=hi_y {
            for x in lo_x..=hi_x {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= r * r {
                    self.set(x, y, color);
                }
            }
        }
    }

    /// A line of the given width: discs stamped every half pixel along it.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), width: f64, color: Rgb<u8>) {
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let steps = (len * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.disc(
                a.0 + (b.0 - a.0) * t,
                a.1 + (b.1 - a.1) * t,
                width / 2.0,
                color,
            );
        }
    }

    /// `s` with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, color: Rgb<u8>) {
        for (i, c) in s.chars().enumerate() {
            let gx = x + i as i64 * 6 * FONT_SCALE;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        let px = gx + col as i64 * FONT_SCALE;
                        let py = y + row as i64 * FONT_SCALE;
                        self.fill(px, py, FONT_SCALE, FONT_SCALE, color);
                    }
                }
            }
        }
    }
}

/// The 5x7 bitmap of `c`: seven rows, the five low bits of each, leftmost column in bit 4.
/// Characters outside the font draw as '?'.
fn glyph(c: char) -> [u8; 7] {
    match c {
        ' ' => [0, 0, 0, 0, 0, 0, 0],
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
        'A' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001,
        ],
        'B' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
        ],
        'C' => [
            0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
        'D' => [
            0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100,
        ],
        'E' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
        ],
        'F' => [
            0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'G' => [
            0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111,
        ],
        'H' => [
            0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
        ],
        'I' => [
            0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'J' => [
            0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'K' => [
            0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001,
        ],
        'L' => [
            0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
        ],
        'M' => [
            0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
        ],
        'N' => [
            0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001,
        ],
        'O' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'P' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
        ],
        'Q' => [
            0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101,
        ],
        'R' => [
            0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001,
        ],
        'S' => [
            0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
        ],
        'T' => [
            0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
        ],
        'U' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'V' => [
            0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
        'W' => [
            0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010,
        ],
        'X' => [
            0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001,
        ],
        'Y' => [
            0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100,
        ],
        'Z' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111,
        ],
        'a' => [
            0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111,
        ],
        'b' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110,
        ],
        'c' => [
            0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110,
        ],
        'd' => [
            0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111,
        ],
        'e' => [
            0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110,
        ],
        'f' => [
            0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000,
        ],
        'g' => [
            0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
        ],
        'h' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
        ],
        'i' => [
            0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'j' => [
            0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'k' => [
            0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010,
        ],
        'l' => [
            0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'm' => [
            0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001,
        ],
        'n' => [
            0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
        ],
        'o' => [
            0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110,
        ],
        'p' => [
            0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000,
        ],
        'q' => [
            0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001,
        ],
        'r' => [
            0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000,
        ],
        's' => [
            0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110,
        ],
        't' => [
            0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110,
        ],
        'u' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101,
        ],
        'v' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100,
        ],
        'w' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010,
        ],
        'x' => [
            0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001,
        ],
        'y' => [
            0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110,
        ],
        'z' => [
            0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '.' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100,
        ],
        ',' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000,
        ],
        ':' => [
            0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000,
        ],
        '_' => [
            0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111,
        ],
        '/' => [
            0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000,
        ],
        '-' => [
            0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000,
        ],
        '+' => [
            0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000,
        ],
        '=' => [
            0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000,
        ],
        '%' => [
            0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011,
        ],
        '(' => [
            0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010,
        ],
        ')' => [
            0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000,
        ],
        _ => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100,
        ],
    }
}
