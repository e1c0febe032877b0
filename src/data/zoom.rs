//! Zoomed views of a phantom: what a scanner writes when it reconstructs a smaller field of view,
//! or what a crop of a slice looks like once the model has resized it back to 512 pixels.
//!
//! Real slices come with fields of view from about 80 mm (a targeted reconstruction, a crop of a
//! public test image) to 500 mm; the phantoms are drawn at 330-385 mm. A zoomed view crops a
//! square window of a phantom around a point in the lungs (a lesion for the lesion classes, most
//! of the time) and resamples it to the full size: HU bilinearly (PIL's and torchvision's
//! half-pixel centres, so blurred as an upsampled scan is), the mask by nearest neighbour. Our own
//! code: a crop and a resample of an `i16`/`u8` grid, with no library needed.

use super::phantom::{LesionClass, Phantom};
use super::rng::Rng;

/// Window sides as a fraction of the slice: 0.25 (a 4x zoom, about 90 mm) to 0.6.
pub const SCALE_RANGE: (f64, f64) = (0.25, 0.6);
/// Chance that a lesion slice's window is centred on a lesion pixel (else on any lung pixel).
const ON_LESION: f64 = 0.75;

/// A zoomed view of `ph`; the same phantom when it has no lung pixel to centre on.
pub fn zoomed(ph: &Phantom, class: LesionClass, rng: &mut Rng) -> Phantom {
    let n = ph.width as usize;
    debug_assert_eq!(ph.width, ph.height);
    let scale = rng.range(SCALE_RANGE.0, SCALE_RANGE.1);
    let side = ((n as f64 * scale).round() as usize).clamp(8, n);
    let lesion = class != LesionClass::Control && rng.chance(ON_LESION);
    let wanted = |m: u8| if lesion { m >= 2 } else { m >= 1 };
    let candidates = ph.mask.iter().filter(|&&m| wanted(m)).count();
    if candidates == 0 {
        return ph.clone();
    }
    let pick = rng.int(0, candidates as u32 - 1) as usize;
    let centre = ph
        .mask
        .iter()
        .enumerate()
        .filter(|&(_, &m)| wanted(m))
        .nth(pick)
        .map(|(i, _)| i)
        .unwrap_or(0);
    // the window holds the centre, shifted by up to a third of its side, inside the slice
    let jitter = side as f64 / 3.0;
    let mut place = |c: usize| {
        let start = c as f64 - side as f64 / 2.0 + rng.range(-jitter, jitter);
        (start.round().max(0.0) as usize).min(n - side)
    };
    let (x0, y0) = (place(centre % n), place(centre / n));
    crop_resize(ph, (x0, y0), side)
}

/// The `side` x `side` window at `(x0, y0)` resampled to the phantom's size.
pub fn crop_resize(ph: &Phantom, (x0, y0): (usize, usize), side: usize) -> Phantom {
    let n = ph.width as usize;
    let step = side as f64 / n as f64;
    // source coordinate of output pixel i (half-pixel centres), inside the window
    let src = |i: usize| -> f64 { ((i as f64 + 0.5) * step - 0.5).clamp(0.0, side as f64 - 1.0) };
    let taps: Vec<(usize, usize, f32)> = (0..n)
        .map(|i| {
            let s = src(i);
            let a = s.floor() as usize;
            let b = (a + 1).min(side - 1);
            (a, b, (s - a as f64) as f32)
        })
        .collect();
    let at = |x: usize, y: usize| f32::from(ph.hu[(y0 + y) * n + x0 + x]);
    let mut hu = Vec::with_capacity(n * n);
    let mut mask = Vec::with_capacity(n * n);
    for &(ya, yb, fy) in &taps {
        for &(xa, xb, fx) in &taps {
            let top = at(xa, ya) * (1.0 - fx) + at(xb, ya) * fx;
            let bottom = at(xa, yb) * (1.0 - fx) + at(xb, yb) * fx;
            hu.push((top * (1.0 - fy) + bottom * fy).round() as i16);
        }
    }
    for y in 0..n {
        let sy = (((y as f64 + 0.5) * step) as usize).min(side - 1);
        for x in 0..n {
            let sx = (((x as f64 + 0.5) * step) as usize).min(side - 1);
            mask.push(ph.mask[(y0 + sy) * n + x0 + sx]);
        }
    }
    Phantom {
        hu,
        mask,
        width: ph.width,
        height: ph.height,
        pixel_spacing_mm: ph.pixel_spacing_mm * step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom::{PhantomSpec, phantom_with};

    #[test]
    fn the_whole_window_is_the_phantom_itself() {
        let ph = phantom_with(&PhantomSpec::new(5, LesionClass::Covid, 64));
        assert_eq!(crop_resize(&ph, (0, 0), 64), ph);
    }

    #[test]
    fn a_2x_zoom_repeats_each_mask_pixel_and_interpolates_hu() {
        let ph = phantom_with(&PhantomSpec::new(6, LesionClass::Cp, 64));
        let z = crop_resize(&ph, (10, 20), 32);
        assert_eq!(z.pixel_spacing_mm, ph.pixel_spacing_mm / 2.0);
        for y in 0..64 {
            for x in 0..64 {
                assert_eq!(z.mask[y * 64 + x], ph.mask[(20 + y / 2) * 64 + 10 + x / 2]);
            }
        }
        // output pixel 1 sits at source 0.25 of the window: 3/4 of pixel 0 and 1/4 of pixel 1
        let (a, b) = (f32::from(ph.hu[20 * 64 + 10]), f32::from(ph.hu[20 * 64 + 11]));
        let (c, d) = (f32::from(ph.hu[21 * 64 + 10]), f32::from(ph.hu[21 * 64 + 11]));
        let top = a * 0.75 + b * 0.25;
        let bottom = c * 0.75 + d * 0.25;
        let want = (top * 0.75 + bottom * 0.25).round() as i16;
        assert_eq!(z.hu[64 + 1], want);
    }

    #[test]
    fn zoomed_views_are_deterministic_and_keep_lesions_in_view() {
        let ph = phantom_with(&PhantomSpec::new(7, LesionClass::Covid, 128));
        let a = zoomed(&ph, LesionClass::Covid, &mut Rng::stream(1, 4));
        let b = zoomed(&ph, LesionClass::Covid, &mut Rng::stream(1, 4));
        assert_eq!(a, b);
        assert!(a.pixel_spacing_mm < ph.pixel_spacing_mm * 0.61);
        // over a few draws most windows hold lesion pixels, and every label stays a label
        let with_lesion = (0..8)
            .filter(|&s| {
                let z = zoomed(&ph, LesionClass::Covid, &mut Rng::stream(s, 4));
                assert!(z.mask.iter().all(|&m| m <= 3));
                z.mask.iter().any(|&m| m >= 2)
            })
            .count();
        assert!(with_lesion >= 5, "{with_lesion} of 8 zoomed views show a lesion");
    }
}
