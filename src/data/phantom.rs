//! Synthetic axial chest CT slices (HU int16 + CNCB mask) as described in
//! `spec/synthetic-ct.md`: the chest's anatomy (see [`super::anatomy`]), pulmonary vessel trees
//! thinning towards the periphery, fissures, dependent density in some patients, lesions (see
//! [`super::lesions`]), then PSF blur, correlated noise, table and outside-FOV value.
//!
//! Anatomy, lesions and noise draw from separate PRNG streams of the seed, so the same seed
//! gives the same body and lungs for every class (a Control slice is the lesion-free twin of
//! the COVID slice with the same seed). Mask values: 0 background, 1 lung, 2 GGO,
//! 3 consolidation.

use super::anatomy::Anatomy;
#[cfg(test)]
pub(crate) use super::anatomy::Tissue;
use super::canvas::{blur121, soft_disc, soft_stroke};
use super::lesions::{LesionVariant, add_lesions};
use super::rng::Rng;

/// Slice label, as COVIDx numbers it (0 Control, 1 CP, 2 COVID-19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LesionClass {
    Control,
    Cp,
    Covid,
}

impl LesionClass {
    pub const ALL: [LesionClass; 3] = [Self::Control, Self::Cp, Self::Covid];

    pub fn index(self) -> u8 {
        self as u8
    }
}

/// Everything that defines one synthetic slice.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomSpec {
    /// Lesions and noise.
    pub seed: u64,
    /// Body and lung geometry (shared by the slices of one synthetic patient).
    pub anatomy_seed: u64,
    pub class: LesionClass,
    pub size: u32,
    /// Position along the chest: 0.1 apex .. 0.5 mid .. 0.9 base; outside: neck / abdomen.
    pub z: f64,
    pub variant: LesionVariant,
    /// Value written outside the reconstruction circle; `None` draws one of the usual ones.
    pub fov_value: Option<i16>,
}

impl PhantomSpec {
    pub fn new(seed: u64, class: LesionClass, size: u32) -> Self {
        Self {
            seed,
            anatomy_seed: seed,
            class,
            size,
            z: 0.5,
            variant: LesionVariant::Typical,
            fov_value: None,
        }
    }
}

/// One synthetic slice: row-major HU and mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Phantom {
    pub hu: Vec<i16>,
    pub mask: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub pixel_spacing_mm: f64,
}

/// A mid-thoracic slice of `class` for `seed`.
pub fn phantom(seed: u64, class: LesionClass, size: u32) -> Phantom {
    phantom_with(&PhantomSpec::new(seed, class, size))
}

const STREAM_ANATOMY: u64 = 1;
const STREAM_LESIONS: u64 = 2;
const STREAM_NOISE: u64 = 3;
const FOV_VALUES: [i16; 4] = [-3024, -2048, -2000, -1024];

/// Build the slice described by `spec`.
pub fn phantom_with(spec: &PhantomSpec) -> Phantom {
    phantom_and_tissues(spec).0
}

/// The slice and its tissue map ([`Tissue`] per pixel, before acquisition), for statistics.
pub fn phantom_and_tissues(spec: &PhantomSpec) -> (Phantom, Vec<u8>) {
    let n = spec.size.max(16) as usize;
    let mut arng = Rng::stream(spec.anatomy_seed, STREAM_ANATOMY);
    let anatomy = Anatomy::draw(&mut arng, n, spec.z);
    let canvas = anatomy.paint(&mut arng, n);
    let mut mask: Vec<u8> = canvas.lung.iter().map(|&w| u8::from(w >= 0.5)).collect();
    let (mut hu, tissue) = (canvas.hu, canvas.tissue);
    if mask.contains(&1) {
        add_vessels(&mut arng, &anatomy, &mut hu, &mask, n);
        add_fissures(&mut arng, &anatomy, &mut hu, &mask, n);
        if let Some((extra, reach)) = anatomy.dependent {
            add_dependent_density(&mut hu, &mask, n, extra, reach);
        }
        let mut lrng = Rng::stream(spec.seed, STREAM_LESIONS);
        add_lesions(&mut lrng, &mut hu, &mut mask, n, spec.class, spec.variant);
    }
    let mut nrng = Rng::stream(spec.seed, STREAM_NOISE);
    let fov_value = spec.fov_value.unwrap_or(FOV_VALUES[nrng.int(0, 3) as usize]);
    let hu = acquire(&mut nrng, hu, &anatomy, n, fov_value);
    let phantom = Phantom {
        hu,
        mask,
        width: n as u32,
        height: n as u32,
        pixel_spacing_mm: anatomy.fov_mm / n as f64,
    };
    (phantom, tissue)
}

/// Branching vessel trees from each hilum, thinning towards the periphery; large lower-lobe
/// cross-sections in the posterior lung; and the vessels the slice cuts everywhere else in the
/// lung: short segments (some forking) running away from the hilum and dot cross-sections,
/// about one per 1200 lung pixels and fainter than the trees, that shrink with the distance
/// from the hilum but still reach the pleura (a real slice shows them out to the chest wall; a
/// lung left empty there taught the detector that any bright spot near the edge of a zoomed
/// view is a lesion). Partial-volume blurred and pulled to about +40 HU (blood).
fn add_vessels(rng: &mut Rng, anatomy: &Anatomy, hu: &mut [f32], mask: &[u8], n: usize) {
    let s = anatomy.s;
    let (mut weight, mut fine) = (vec![0.0f32; n * n], vec![0.0f32; n * n]);
    for (side, &hilum) in anatomy.hila.iter().enumerate() {
        let out = if side == 0 { std::f64::consts::PI } else { 0.0 };
        let sign = if side == 0 { -1.0 } else { 1.0 };
        // this lung's half of the slice (the left half holds hilum 0)
        let on_side = |x: usize| (x < n / 2) == (side == 0);
        for t in 0..3 {
            // short trunks fanning out from the hilum
            let angle = out + sign * (t as f64 - 1.0) * 0.8 + rng.range(-0.25, 0.25);
            branch(rng, &mut weight, n, mask, hilum, angle, 1.8 * s, 18.0 * s, 1);
        }
        // the lower-lobe arteries and veins run down behind the hilum: the slice cuts them as
        // large round or oval cross-sections (2-4 mm) in the posterior lung, beside the spine
        let below: Vec<usize> = (0..n * n)
            .filter(|&i| mask[i] == 1 && on_side(i % n) && (i / n) as f64 > hilum.1)
            .collect();
        if !below.is_empty() {
            for _ in 0..rng.int(1, 3) {
                let i = below[rng.int(0, below.len() as u32 - 1) as usize];
                let (x, y) = ((i % n) as f64, (i / n) as f64);
                let r = rng.range(1.4, 2.6) * s;
                let tilt = rng.range(0.0, std::f64::consts::PI);
                let len = rng.range(0.0, 2.5) * r;
                let d = (len * tilt.cos(), len * tilt.sin());
                soft_stroke(&mut weight, n, (x - d.0, y - d.1), (x + d.0, y + d.1), r, r * 0.9);
            }
        }
        let reach = 170.0 * s;
        let lung_px = mask
            .iter()
            .enumerate()
            .filter(|&(i, &m)| m == 1 && on_side(i % n))
            .count();
        let per = (s * s).max(1e-3);
        let (segments, dots) = (lung_px as f64 / (3000.0 * per), lung_px as f64 / (2000.0 * per));
        // points drawn over the whole slice until enough have landed in this lung
        let (wanted, mut k) = ((segments + dots) as usize, 0usize);
        for _ in 0..wanted * 60 {
            if k >= wanted {
                break;
            }
            let (x, y) = (rng.range(0.0, n as f64), rng.range(0.0, n as f64));
            if mask[y as usize * n + x as usize] != 1 || !on_side(x as usize) {
                continue;
            }
            k += 1;
            let d = ((x - hilum.0).powi(2) + (y - hilum.1).powi(2)).sqrt();
            let near = (1.0 - d / reach).max(0.0);
            let r = (1.3 * near + rng.range(0.25, 0.6)) * s;
            if (k as f64) < segments {
                // a vessel running away from the hilum, cut obliquely by the slice
                let dir = (y - hilum.1).atan2(x - hilum.0) + rng.range(-0.4, 0.4);
                let len = rng.range(6.0, 22.0) * s * (0.5 + 0.5 * near);
                let to = (x + len * dir.cos(), y + len * dir.sin());
                soft_stroke(&mut fine, n, (x, y), to, r, r * 0.75);
                if rng.chance(0.4) {
                    // a twig forking off half-way
                    let mid = ((x + to.0) / 2.0, (y + to.1) / 2.0);
                    let turn = dir + if rng.chance(0.5) { 0.6 } else { -0.6 };
                    let tip = (mid.0 + 0.5 * len * turn.cos(), mid.1 + 0.5 * len * turn.sin());
                    soft_stroke(&mut fine, n, mid, tip, r * 0.75, r * 0.5);
                }
            } else {
                soft_disc(&mut fine, n, x, y, r);
            }
        }
    }
    for i in 0..n * n {
        // the small vessels are partial-volumed more (thinner than the slice is thick)
        let w = weight[i].max(0.5 * fine[i]);
        if mask[i] == 1 && w > 0.0 {
            hu[i] += (40.0 - hu[i]) * w * 0.9;
        }
    }
}

/// Oblique fissures (and the right horizontal one at mid levels): thin lines, denser than lung.
fn add_fissures(rng: &mut Rng, anatomy: &Anatomy, hu: &mut [f32], mask: &[u8], n: usize) {
    let s = anatomy.s;
    let (vx, vy) = anatomy.spine;
    let f = ((anatomy.z - 0.25) / 0.6).clamp(0.0, 1.0);
    let mut w = vec![0.0f32; n * n];
    for sign in [-1.0, 1.0] {
        // from beside the spine (high) towards the front and side (low)
        let p0 = (vx + sign * 40.0 * s, vy - 20.0 * s);
        let p2 = (
            vx + sign * (130.0 - 40.0 * f) * s,
            anatomy.cav_top + (140.0 - 110.0 * f) * s,
        );
        let bend = rng.range(10.0, 30.0) * s;
        let p1 = ((p0.0 + p2.0) / 2.0 + sign * bend, (p0.1 + p2.1) / 2.0 + bend);
        let mut prev = p0;
        for k in 1..=16 {
            let t = k as f64 / 16.0;
            let q = |a: f64, b: f64, c: f64| (1.0 - t).powi(2) * a + 2.0 * t * (1.0 - t) * b + t * t * c;
            let p = (q(p0.0, p1.0, p2.0), q(p0.1, p1.1, p2.1));
            soft_stroke(&mut w, n, prev, p, 0.45, 0.45);
            prev = p;
        }
    }
    if (0.4..0.55).contains(&anatomy.z) {
        let y = anatomy.hila[0].1 - 10.0 * s;
        soft_stroke(
            &mut w,
            n,
            (vx - 60.0 * s, y),
            (vx - 150.0 * s, y - 25.0 * s),
            0.45,
            0.45,
        );
    }
    for i in 0..n * n {
        if mask[i] == 1 && w[i] > 0.0 {
            hu[i] += 170.0 * w[i];
        }
    }
}

/// Denser dependent (posterior) lung: extra HU decaying with the distance above the lowest
/// lung pixel of each column.
fn add_dependent_density(hu: &mut [f32], mask: &[u8], n: usize, extra: f32, reach: f64) {
    for x in 0..n {
        let Some(bottom) = (0..n).rev().find(|&y| mask[y * n + x] == 1) else {
            continue;
        };
        for y in 0..=bottom {
            let i = y * n + x;
            if mask[i] == 1 {
                hu[i] += extra * (-((bottom - y) as f64) / reach).exp() as f32;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn branch(
    rng: &mut Rng,
    w: &mut [f32],
    n: usize,
    mask: &[u8],
    from: (f64, f64),
    angle: f64,
    r: f64,
    len: f64,
    depth: u32,
) {
    let to = (from.0 + len * angle.cos(), from.1 + len * angle.sin());
    let r_end = r * rng.range(0.7, 0.85);
    soft_stroke(w, n, from, to, r, r_end);
    let inside = |p: (f64, f64)| {
        p.0 >= 0.0
            && p.1 >= 0.0
            && (p.0 as usize) < n
            && (p.1 as usize) < n
            && mask[p.1 as usize * n + p.0 as usize] == 1
    };
    if depth >= 3 || r_end < 0.6 || (depth > 0 && !inside(to)) {
        return;
    }
    for sign in [-1.0, 1.0] {
        let turn = sign * rng.range(0.25, 0.6);
        let (r_next, len_next) = (r_end * rng.range(0.75, 0.9), len * rng.range(0.7, 0.9));
        branch(rng, w, n, mask, to, angle + turn, r_next, len_next, depth + 1);
    }
}

/// PSF blur, correlated noise (about 23 HU local sd), table, outside-FOV value, int16.
fn acquire(rng: &mut Rng, mut hu: Vec<f32>, anatomy: &Anatomy, n: usize, fov_value: i16) -> Vec<i16> {
    let s = anatomy.s;
    for y in 0..n {
        let fy = y as f64;
        let in_table = fy >= anatomy.table_y && fy < anatomy.table_y + 7.0 * s;
        let in_rail = fy >= anatomy.table_y + 16.0 * s && fy < anatomy.table_y + 19.0 * s;
        if in_table || in_rail {
            for x in 0..n {
                if (x as f64 - anatomy.cx).abs() < 185.0 * s {
                    hu[y * n + x] = if in_table { 300.0 } else { 220.0 };
                }
            }
        }
    }
    blur121(&mut hu, n);
    let mut noise: Vec<f32> = (0..n * n).map(|_| rng.normal() * 61.0).collect();
    blur121(&mut noise, n);
    hu.iter()
        .zip(&noise)
        .enumerate()
        .map(|(i, (&h, &e))| {
            let (x, y) = ((i % n) as f64, (i / n) as f64);
            if anatomy.fov.r2(x, y) > 1.0 {
                fov_value
            } else {
                (h + e).round().clamp(-3024.0, 3071.0) as i16
            }
        })
        .collect()
}
