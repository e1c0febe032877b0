//! A small line-plot writer for training curves (PNG), so the loss curves sit next to the
//! checkpoints without a plotting dependency: axes, one coloured polyline per series, a legend
//! of colour swatches in the order given (the series names are listed in the CSV log beside it).

use std::path::Path;

use image::{Rgb, RgbImage};

const COLOURS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// Draw `series` (name, y values per epoch) into a `w` x `h` PNG at `path`.
pub fn line_plot(path: &Path, series: &[(String, Vec<f64>)], w: u32, h: u32) -> crate::Result<()> {
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let (l, r, t, b) = (40i64, w as i64 - 10, 10i64, h as i64 - 30);
    let finite = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, c), v| {
        (a.min(v), c.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo.min(0.0), hi)
    } else {
        (0.0, 1.0)
    };
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let px = |i: usize, v: f64| {
        let x = l + ((r - l) as f64 * i as f64 / (n - 1) as f64) as i64;
        let y = b - ((b - t) as f64 * (v - lo) / (hi - lo)) as i64;
        (x, y)
    };
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    };
    for x in l..=r {
        put(x, b, [0, 0, 0]);
    }
    for y in t..=b {
        put(l, y, [0, 0, 0]);
    }
    for (si, (_, ys)) in series.iter().enumerate() {
        let c = COLOURS[si % COLOURS.len()];
        for i in 1..ys.len() {
            if !(ys[i - 1].is_finite() && ys[i].is_finite()) {
                continue;
            }
            let (x0, y0) = px(i - 1, ys[i - 1]);
            let (x1, y1) = px(i, ys[i]);
            let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
            for s in 0..=steps {
                let x = x0 + (x1 - x0) * s / steps;
                let y = y0 + (y1 - y0) * s / steps;
                put(x, y, c);
                put(x, y + 1, c);
            }
        }
        // legend swatch
        for dx in 0..12 {
            for dy in 0..6 {
                put(l + 8 + si as i64 * 18 + dx, h as i64 - 16 + dy, c);
            }
        }
    }
    img.save(path)
        .map_err(|e| crate::Error::Other(format!("{}: {e}", path.display())))
}
