//! PIL's bilinear resize of 8-bit images, bit for bit: what torchvision's `Resize` does to the
//! PIL images of the original's classifier data (`Resize((512,512))` in training,
//! `Resize(512)`, the shorter side, in evaluation; spec §3.2, §4.7).
//!
//! Our own code because no Rust crate reproduces Pillow exactly: `image`'s Triangle filter
//! samples differently, and `fast_image_resize` (like Pillow-SIMD) uses 16-bit coefficients
//! with a per-filter precision, while Pillow's `ImagingResample` uses 32-bit fixed point with
//! `PRECISION_BITS = 22`. This follows Pillow 13's `src/libImaging/Resample.c`:
//! `precompute_coeffs` (the triangle filter widened by the scale when reducing, which is
//! PIL's antialiasing, weights normalised in f64), `normalize_coeffs_8bpc` (rounded to 22-bit
//! integers), then a horizontal pass and a vertical pass, each rounding and clipping to 8 bits,
//! per channel. `tests/fixtures/pil/` holds Pillow's own results for both directions.

/// Fixed-point fraction bits of PIL's 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input index and the fixed-point weights from there.
struct Coeffs {
    /// (first input index, number of weights) per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel.
    weights: Vec<i32>,
    ksize: usize,
}

/// PIL's triangle (bilinear) filter, support 1.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range (no box).
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // PIL passes the box edges as C floats; whole sizes are exact in f32
    let scale = (in_size as f32 as f64) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, widened when reducing
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(n) {
            *w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *w;
        }
        for (x, w) in k.iter().enumerate().take(n) {
            let w = if ww == 0.0 { *w } else { w / ww };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

/// PIL's `clip8`: the rounded fixed-point sum shifted down and clamped to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize a row-major `width x height` image of `channels` bytes per pixel to
/// `new_width x new_height` exactly as `PIL.Image.resize(size, Image.BILINEAR)` does.
pub fn pil_bilinear(
    pixels: &[u8],
    (width, height): (usize, usize),
    channels: usize,
    (new_width, new_height): (usize, usize),
) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height * channels, "pixel buffer size");
    assert!(new_width > 0 && new_height > 0, "empty resize target");
    let half = 1i64 << (PRECISION_BITS - 1);
    let vertical = coeffs(height, new_height);
    // as PIL: a pass runs only when that dimension changes, and the horizontal pass covers only
    // the rows the vertical pass reads
    let first_row = vertical.bounds.first().map_or(0, |b| b.0);
    let last_row = vertical.bounds.last().map_or(height, |b| b.0 + b.1);
    let (mut current, cur_width, row_offset) = if new_width != width {
        let h = coeffs(width, new_width);
        let rows = last_row - first_row;
        let mut out = vec![0u8; new_width * rows * channels];
        for y in 0..rows {
            let src = &pixels[(y + first_row) * width * channels..][..width * channels];
            let dst = &mut out[y * new_width * channels..][..new_width * channels];
            for (xx, &(xmin, n)) in h.bounds.iter().enumerate() {
                let k = &h.weights[xx * h.ksize..][..n];
                for c in 0..channels {
                    let sum = k.iter().enumerate().fold(half, |s, (x, &w)| {
                        s + i64::from(src[(xmin + x) * channels + c]) * i64::from(w)
                    });
                    dst[xx * channels + c] = clip8(sum);
                }
            }
        }
        (out, new_width, first_row)
    } else {
        (pixels.to_vec(), width, 0)
    };
    if new_height != height {
        let row = cur_width * channels;
        let mut out = vec![0u8; new_height * row];
        for (yy, &(ymin, n)) in vertical.bounds.iter().enumerate() {
            let k = &vertical.weights[yy * vertical.ksize..][..n];
            let dst = &mut out[yy * row..][..row];
            for (i, d) in dst.iter_mut().enumerate() {
                let sum = k.iter().enumerate().fold(half, |s, (y, &w)| {
                    s + i64::from(current[(ymin + y - row_offset) * row + i]) * i64::from(w)
                });
                *d = clip8(sum);
            }
        }
        current = out;
    }
    // with the height kept, the horizontal pass covered every row (PIL's bounds for scale 1)
    current
}

/// torchvision's `Resize(size)` on a PIL image: the shorter side becomes `size`, the longer
/// `int(size * long / short)`; an image whose shorter side is already `size` is kept.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = (width.min(height), width.max(height));
    if short == size {
        return (width, height);
    }
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_rule_is_torchvisions() {
        assert_eq!(shorter_side_size(512, 512, 512), (512, 512));
        assert_eq!(shorter_side_size(600, 500, 512), (614, 512));
        assert_eq!(shorter_side_size(500, 700, 512), (512, 716));
        assert_eq!(shorter_side_size(512, 900, 512), (512, 900));
        assert_eq!(shorter_side_size(100, 300, 512), (512, 1536));
    }

    #[test]
    fn identity_and_constant_images() {
        let px: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(pil_bilinear(&px, (5, 3), 3, (5, 3)), px);
        let flat = vec![77u8; 9 * 4];
        let out = pil_bilinear(&flat, (9, 4), 1, (4, 11));
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn halving_averages_pairs_like_pil() {
        // PIL: Image.frombytes('L', (4, 1), bytes([0, 100, 200, 255])).resize((2, 1), BILINEAR)
        // gives [71, 209]: at scale 2 the support is 2 and the edge-clipped weights of the
        // first output are 0.75, 0.75, 0.25 (normalised), of the second 0.25, 0.75, 0.75
        assert_eq!(pil_bilinear(&[0, 100, 200, 255], (4, 1), 1, (2, 1)), [71, 209]);
    }
}
