//! Lesions for the synthetic phantoms, drawn only inside the lung mask.
//!
//! Shapes are thresholded sums of Gaussian blobs placed preferably near the pleura and at the
//! back. GGO (mask 2) raises HU towards about -560 additively, so vessels stay visible;
//! consolidation (mask 3) replaces HU by about +10 +- 25 and hides vessels. COVID: 3-8
//! bilateral peripheral posterior GGO patches with 0-3 consolidation cores (sometimes crazy
//! paving); CP: one large unilateral consolidation with a GGO halo several pixels wide
//! (sometimes air bronchograms); Control: none.

use super::canvas::{add_blob, smooth_field, smoothstep, soft_stroke};
use super::phantom::LesionClass;
use super::rng::Rng;

/// CP halo: where the consolidation field is above 1 / (2 HALO) but below 1/2 the lung is GGO, a
/// rim several pixels wide (the halo sign), wide enough to be an image feature and not only the
/// blurred edge of the consolidation.
const HALO: f32 = 3.0;

/// Lesion variants the tests need beside the typical picture of each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LesionVariant {
    #[default]
    Typical,
    /// GGO without consolidation.
    GgoOnly,
    /// Consolidation without GGO.
    ConsolidationOnly,
    /// One GGO lesion under 100 px (dropped from training targets).
    Tiny,
    /// Lesions centred on the pleura.
    Pleural,
}

/// A lung pixel picked with a preference for the periphery and the back.
fn site(rng: &mut Rng, mask: &[u8], n: usize, side: Option<usize>, pleural: bool) -> Option<(f64, f64)> {
    let cx = n as f64 / 2.0;
    for _ in 0..4000 {
        let (x, y) = (rng.range(0.0, n as f64), rng.range(0.0, n as f64));
        let i = y as usize * n + x as usize;
        if mask[i] == 0 || side.is_some_and(|s| (s == 0) != (x < cx)) {
            continue;
        }
        let edge = distance_to_edge(mask, n, x as usize, y as usize, 40);
        let peripheral = 1.0 - (edge as f64 / 40.0);
        let posterior = y / n as f64;
        let weight = if pleural {
            f64::from(edge <= 2)
        } else {
            peripheral * peripheral * (0.35 + posterior)
        };
        if rng.chance(weight) {
            return Some((x, y));
        }
    }
    None
}

/// Steps (up to `limit`) along the 4 axes to the nearest non-lung pixel.
fn distance_to_edge(mask: &[u8], n: usize, x: usize, y: usize, limit: usize) -> usize {
    (1..limit)
        .find(|&d| {
            let out = |xx: isize, yy: isize| {
                xx < 0
                    || yy < 0
                    || xx >= n as isize
                    || yy >= n as isize
                    || mask[yy as usize * n + xx as usize] == 0
            };
            let (xi, yi, di) = (x as isize, y as isize, d as isize);
            out(xi - di, yi) || out(xi + di, yi) || out(xi, yi - di) || out(xi, yi + di)
        })
        .unwrap_or(limit)
}

/// A patch of `blobs` Gaussian blobs of sd in `sigma` around `at`.
fn patch(rng: &mut Rng, field: &mut [f32], n: usize, at: (f64, f64), blobs: u32, sigma: (f64, f64)) {
    for _ in 0..blobs {
        let sd = rng.range(sigma.0, sigma.1);
        let (dx, dy) = (rng.range(-1.0, 1.0) * sd, rng.range(-1.0, 1.0) * sd);
        add_blob(field, n, at.0 + dx, at.1 + dy, sd, rng.range(0.8, 1.2) as f32);
    }
}

/// Draw the lesions of `class` into `hu` and `mask` (lung pixels only).
pub fn add_lesions(
    rng: &mut Rng,
    hu: &mut [f32],
    mask: &mut [u8],
    n: usize,
    class: LesionClass,
    variant: LesionVariant,
) {
    if class == LesionClass::Control {
        return;
    }
    let s = n as f64 / 512.0;
    let mut ggo = vec![0.0f32; n * n];
    let mut cons = vec![0.0f32; n * n];
    let pleural = variant == LesionVariant::Pleural;
    let mut bronchi = Vec::new();
    match (class, variant) {
        (_, LesionVariant::Tiny) => {
            if let Some(at) = site(rng, mask, n, None, false) {
                add_blob(&mut ggo, n, at.0, at.1, 3.4, 1.0);
            }
        }
        (LesionClass::Covid, _) => {
            for p in 0..rng.int(3, 8) {
                let Some(at) = site(rng, mask, n, Some(p as usize % 2), pleural) else {
                    continue;
                };
                let blobs = rng.int(2, 5);
                patch(rng, &mut ggo, n, at, blobs, (7.0 * s, 16.0 * s));
                if p < rng.int(0, 3) {
                    let blobs = rng.int(1, 2);
                    patch(rng, &mut cons, n, at, blobs, (4.0 * s, 8.0 * s));
                }
            }
        }
        (_, _) => {
            let side = rng.int(0, 1) as usize;
            if let Some(at) = site(rng, mask, n, Some(side), pleural) {
                let blobs = rng.int(3, 6);
                patch(rng, &mut cons, n, at, blobs, (16.0 * s, 30.0 * s));
                if rng.chance(0.5) {
                    bronchi.push(at);
                }
            }
        }
    }
    // CP halo: the rim of the consolidation field becomes GGO
    let halo = class == LesionClass::Cp && variant == LesionVariant::Typical;
    match variant {
        LesionVariant::GgoOnly => ggo
            .iter_mut()
            .zip(&mut cons)
            .for_each(|(g, c)| *g = g.max(std::mem::take(c))),
        LesionVariant::ConsolidationOnly => cons
            .iter_mut()
            .zip(&mut ggo)
            .for_each(|(c, g)| *c = c.max(std::mem::take(g))),
        _ => {}
    }
    let tex = smooth_field(rng, n, 48);
    let paving = class == LesionClass::Covid && rng.chance(0.3);
    for i in 0..n * n {
        if mask[i] == 0 {
            continue;
        }
        let (g, c) = (ggo[i] + if halo { HALO * cons[i] } else { 0.0 }, cons[i]);
        if g > 0.02 {
            let alpha = smoothstep(0.3, 0.7, g);
            hu[i] += alpha * (280.0 + 30.0 * tex[i]);
            if g >= 0.5 {
                mask[i] = 2;
                if paving && reticular(i % n, i / n, tex[i]) {
                    hu[i] += 100.0;
                }
            }
        }
        if c > 0.02 {
            let beta = smoothstep(0.35, 0.6, c);
            hu[i] += (10.0 + 25.0 * tex[i] - hu[i]) * beta;
            if c >= 0.5 {
                mask[i] = 3;
            }
        }
    }
    if !bronchi.is_empty() {
        air_bronchograms(rng, hu, mask, n, &bronchi);
    }
}

/// Crazy paving: a distorted grid of thin lines about 9 px apart.
fn reticular(x: usize, y: usize, tex: f32) -> bool {
    let warp = (tex * 4.0) as f64;
    (x as f64 + warp).rem_euclid(9.0) < 1.2 || (y as f64 - warp).rem_euclid(9.0) < 1.2
}

/// Air-filled bronchi (-950 HU) running through consolidation.
fn air_bronchograms(rng: &mut Rng, hu: &mut [f32], mask: &[u8], n: usize, sites: &[(f64, f64)]) {
    let mut w = vec![0.0f32; n * n];
    for &(x, y) in sites {
        for _ in 0..rng.int(2, 3) {
            let angle = rng.range(0.0, std::f64::consts::TAU);
            let len = rng.range(20.0, 40.0) * n as f64 / 512.0;
            soft_stroke(
                &mut w,
                n,
                (x, y),
                (x + len * angle.cos(), y + len * angle.sin()),
                1.4,
                0.8,
            );
        }
    }
    for i in 0..n * n {
        if mask[i] == 3 && w[i] > 0.0 {
            hu[i] += (-950.0 - hu[i]) * w[i];
        }
    }
}
