//! Synthetic axial chest CT slices (HU int16 + CNCB mask) as described in
//! `spec/synthetic-ct.md`: body, mediastinum, spine, ribs, lungs with vessel trees, lesions
//! (see [`super::lesions`]), then PSF blur, correlated noise, table and outside-FOV value.
//!
//! Anatomy, lesions and noise draw from separate PRNG streams of the seed, so the same seed
//! gives the same body and lungs for every class (a Control slice is the lesion-free twin of
//! the COVID slice with the same seed). Mask values: 0 background, 1 lung, 2 GGO,
//! 3 consolidation.

use super::canvas::{Ellipse, blur121, smooth_field, soft_disc, soft_stroke};
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
    let n = spec.size.max(16) as usize;
    let mut arng = Rng::stream(spec.anatomy_seed, STREAM_ANATOMY);
    let anatomy = Anatomy::draw(&mut arng, n, spec.z);
    let (mut hu, mut mask) = anatomy.paint(&mut arng, n);
    if anatomy.lungs.is_some() {
        add_vessels(&mut arng, &anatomy, &mut hu, &mask, n);
        let mut lrng = Rng::stream(spec.seed, STREAM_LESIONS);
        add_lesions(&mut lrng, &mut hu, &mut mask, n, spec.class, spec.variant);
    }
    let mut nrng = Rng::stream(spec.seed, STREAM_NOISE);
    let fov_value = spec.fov_value.unwrap_or(FOV_VALUES[nrng.int(0, 3) as usize]);
    let hu = acquire(&mut nrng, hu, &anatomy, n, fov_value);
    Phantom {
        hu,
        mask,
        width: n as u32,
        height: n as u32,
        pixel_spacing_mm: anatomy.fov_mm / n as f64,
    }
}

/// Geometry of one slice.
struct Anatomy {
    s: f64,
    fov: Ellipse,
    fov_mm: f64,
    body: Ellipse,
    muscle: Ellipse,
    lungs: Option<[Ellipse; 2]>,
    heart: Option<Ellipse>,
    vessels: Vec<(Ellipse, f32)>,
    trachea: Option<Ellipse>,
    vertebra: Ellipse,
    ribs: Vec<Ellipse>,
    liver: Option<Ellipse>,
    table_y: f64,
}

impl Anatomy {
    fn draw(rng: &mut Rng, n: usize, z: f64) -> Self {
        let s = n as f64 / 512.0;
        let (cx, cy) = (
            n as f64 / 2.0 + rng.range(-6.0, 6.0) * s,
            n as f64 / 2.0 + rng.range(0.0, 14.0) * s,
        );
        let neck = z < 0.1;
        let abdomen = z > 0.9;
        let k = if neck { 0.42 } else { 1.0 };
        let body = Ellipse::new(
            cx,
            cy,
            rng.range(185.0, 210.0) * s * k,
            rng.range(135.0, 150.0) * s * k,
            rng.range(-0.03, 0.03),
        );
        let fat = rng.range(8.0, 18.0) * s * k;
        let muscle = Ellipse::new(cx, cy, body.a - fat, body.b - fat * 0.8, 0.0);
        // lungs grow from the apex, are widest mid-chest and shrink at the base
        let profile = ((z - 0.1) / 0.8 * std::f64::consts::PI).sin().max(0.0).sqrt();
        let lungs = (!neck && !abdomen && profile > 0.05).then(|| {
            let (a, b) = (
                rng.range(90.0, 100.0) * s * profile,
                rng.range(118.0, 130.0) * s * profile.max(0.5),
            );
            let (dx, tilt) = (rng.range(80.0, 90.0) * s, rng.range(0.15, 0.3));
            [
                Ellipse::new(cx - dx, cy + 4.0 * s, a, b, tilt),
                Ellipse::new(cx + dx, cy + 4.0 * s, a * 0.95, b, -tilt),
            ]
        });
        let mid = !neck && !abdomen && (0.3..0.8).contains(&z);
        let heart = mid.then(|| {
            Ellipse::new(
                cx + 18.0 * s,
                cy - 28.0 * s,
                rng.range(56.0, 66.0) * s,
                rng.range(42.0, 50.0) * s,
                0.5,
            )
        });
        let contrast = if rng.chance(0.5) {
            rng.range(150.0, 300.0) as f32
        } else {
            40.0
        };
        let mut vessels = Vec::new();
        if !neck {
            vessels.push((Ellipse::circle(cx + 28.0 * s, cy + 62.0 * s, 13.0 * s), contrast)); // descending aorta
        }
        if !neck && !abdomen && z < 0.55 {
            vessels.push((Ellipse::circle(cx + 10.0 * s, cy - 50.0 * s, 15.0 * s), contrast)); // ascending aorta
        }
        let trachea = (z < 0.4).then(|| Ellipse::circle(cx, cy - 10.0 * s * k, 9.0 * s));
        let vertebra = Ellipse::circle(cx, cy + body.b - rng.range(58.0, 66.0) * s * k, 25.0 * s * k);
        let ribs = if neck {
            Vec::new()
        } else {
            (0..18)
                .map(|i| {
                    let side = if i % 2 == 0 { -1.0 } else { 1.0 };
                    let t = 0.35 + (i / 2) as f64 * 0.29 + rng.range(-0.05, 0.05);
                    let (x, y) = (
                        cx + side * muscle.a * 0.965 * t.sin(),
                        cy - muscle.b * 0.94 * t.cos(),
                    );
                    Ellipse::new(x, y, 10.0 * s, 5.5 * s, side * (std::f64::consts::FRAC_PI_2 - t))
                })
                .collect()
        };
        let liver = abdomen.then(|| Ellipse::new(cx - 55.0 * s, cy, 110.0 * s, 95.0 * s, 0.2));
        let fov_mm = rng.range(0.65, 0.75) * 512.0;
        Self {
            s,
            fov: Ellipse::circle(n as f64 / 2.0 - 0.5, n as f64 / 2.0 - 0.5, n as f64 * 0.497),
            fov_mm,
            body,
            muscle,
            lungs,
            heart,
            vessels,
            trachea,
            vertebra,
            ribs,
            liver,
            table_y: cy + body.b + rng.range(8.0, 16.0) * s,
        }
    }

    /// Tissue HU and lung mask before vessels, lesions and acquisition.
    fn paint(&self, rng: &mut Rng, n: usize) -> (Vec<f32>, Vec<u8>) {
        let tex = smooth_field(rng, n, 24);
        let fine = smooth_field(rng, n, 64);
        let mut hu = vec![-1000.0f32; n * n];
        let mut mask = vec![0u8; n * n];
        let inner = self.muscle.scaled(0.94);
        for y in 0..n {
            for x in 0..n {
                let (i, (fx, fy)) = (y * n + x, (x as f64, y as f64));
                hu[i] = self.tissue(fx, fy, tex[i], fine[i], &inner, &mut mask[i]);
            }
        }
        (hu, mask)
    }

    /// HU of one pixel; sets `mask` to 1 for lung parenchyma.
    fn tissue(&self, x: f64, y: f64, tex: f32, fine: f32, inner: &Ellipse, mask: &mut u8) -> f32 {
        if self.body.r2(x, y) > 1.0 {
            return -1000.0;
        }
        if self.muscle.r2(x, y) > 1.0 {
            return -100.0 + 12.0 * tex + 8.0 * fine;
        }
        for rib in &self.ribs {
            let r2 = rib.r2(x, y);
            if r2 <= 1.0 {
                return if r2 > 0.5 {
                    850.0 + 60.0 * fine
                } else {
                    300.0 + 40.0 * fine
                };
            }
        }
        let vr2 = self.vertebra.r2(x, y);
        if vr2 <= 1.0 {
            return if vr2 > 0.8 {
                800.0 + 80.0 * fine
            } else {
                260.0 + 50.0 * tex + 30.0 * fine
            };
        }
        let canal = Ellipse::circle(
            self.vertebra.cx,
            self.vertebra.cy + self.vertebra.a * 1.45,
            self.vertebra.a * 0.42,
        );
        if canal.r2(x, y) <= 1.0 {
            return 20.0 + 5.0 * fine;
        }
        let process = Ellipse::new(
            canal.cx,
            canal.cy + canal.a * 2.0,
            canal.a * 1.1,
            canal.a * 0.9,
            0.0,
        );
        if process.r2(x, y) <= 1.0 {
            return 650.0 + 80.0 * fine;
        }
        if let Some(t) = self.trachea.filter(|t| t.r2(x, y) <= 1.0) {
            return if t.r2(x, y) > 0.75 {
                40.0
            } else {
                -1000.0 + 5.0 * fine
            };
        }
        for (v, value) in &self.vessels {
            if v.r2(x, y) <= 1.0 {
                return value + 8.0 * fine;
            }
        }
        if let Some(h) = self.heart.filter(|h| h.r2(x, y) <= 1.0) {
            return if h.r2(x, y) > 0.82 {
                -90.0 + 10.0 * fine
            } else {
                40.0 + 6.0 * tex
            };
        }
        if self.liver.is_some_and(|l| l.r2(x, y) <= 1.0) {
            return 58.0 + 6.0 * tex + 4.0 * fine;
        }
        if let Some(lungs) = &self.lungs {
            let ir2 = inner.r2(x, y);
            let near_spine = self.vertebra.r2(x, y) < 2.6;
            let near_heart = self.heart.is_some_and(|h| h.r2(x, y) < 1.12);
            for lung in lungs {
                if lung.r2(x, y) <= 1.0 && !near_spine && !near_heart {
                    if ir2 > 1.0 {
                        break;
                    }
                    if ir2 > 0.955 {
                        return -90.0 + 10.0 * fine; // extrapleural fat line
                    }
                    *mask = 1;
                    let posterior = ((y - (lung.cy - lung.b)) / (2.0 * lung.b)).clamp(0.0, 1.0) as f32;
                    return -856.0 + 60.0 * posterior + 10.0 * tex + 8.0 * fine;
                }
            }
        }
        40.0 + 10.0 * tex + 6.0 * fine
    }
}

/// Branching vessel trees from each hilum plus dot cross-sections, pulled to about +40 HU.
fn add_vessels(rng: &mut Rng, anatomy: &Anatomy, hu: &mut [f32], mask: &[u8], n: usize) {
    let Some(lungs) = &anatomy.lungs else { return };
    let s = anatomy.s;
    let mut weight = vec![0.0f32; n * n];
    for (side, lung) in lungs.iter().enumerate() {
        let out = if side == 0 { std::f64::consts::PI } else { 0.0 };
        let hilum = (
            lung.cx + if side == 0 { 0.55 } else { -0.55 } * lung.a,
            lung.cy - 0.1 * lung.b,
        );
        for t in 0..3 {
            let angle = out + (t as f64 - 1.0) * 1.0 + rng.range(-0.3, 0.3);
            branch(rng, &mut weight, n, lung, hilum, angle, 1.5 * s, 26.0 * s, 0);
        }
        let area = std::f64::consts::PI * lung.a * lung.b;
        for _ in 0..(area / 1500.0) as usize {
            let (x, y) = (
                lung.cx + rng.range(-1.0, 1.0) * lung.a,
                lung.cy + rng.range(-1.0, 1.0) * lung.b,
            );
            soft_disc(&mut weight, n, x, y, rng.range(0.5, 1.5) * s.sqrt());
        }
    }
    for i in 0..n * n {
        if mask[i] == 1 && weight[i] > 0.0 {
            hu[i] += (40.0 - hu[i]) * weight[i] * 0.9;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn branch(
    rng: &mut Rng,
    w: &mut [f32],
    n: usize,
    lung: &Ellipse,
    from: (f64, f64),
    angle: f64,
    r: f64,
    len: f64,
    depth: u32,
) {
    let to = (from.0 + len * angle.cos(), from.1 + len * angle.sin());
    let r_end = r * rng.range(0.7, 0.85);
    soft_stroke(w, n, from, to, r, r_end);
    if depth >= 4 || r_end < 0.6 || lung.r2(to.0, to.1) > 1.0 {
        return;
    }
    for sign in [-1.0, 1.0] {
        let turn = sign * rng.range(0.25, 0.6);
        let (r_next, len_next) = (r_end * rng.range(0.75, 0.9), len * rng.range(0.7, 0.9));
        branch(rng, w, n, lung, to, angle + turn, r_next, len_next, depth + 1);
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
                if (x as f64 - anatomy.body.cx).abs() < 185.0 * s {
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
