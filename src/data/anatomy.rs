//! The anatomy of a synthetic axial chest slice, painted in HU with partial-volume edges.
//!
//! The body wall is described by depth from the skin along rays from the body centre: skin,
//! subcutaneous fat of varying thickness, muscle (pectorals in front, latissimus and serratus
//! on the sides, trapezius and the scapular muscles behind), the rib band (ribs with cortex
//! and marrow, intercostal muscle between them) and the extrapleural fat line; inside it lies
//! the thoracic cavity, which starts as lung. Then, in order, the structures painted over it:
//! breasts, scapulae, sternum, the paravertebral tissue, vertebra with the spinal canal and
//! cord, paraspinal muscles, then (in [`super::mediastinum`]) the mediastinal fat, heart (pericardial fat, myocardium, four
//! chambers, contrast-filled or not), ascending and descending aorta or the arch, pulmonary
//! trunk and arteries, superior vena cava, azygos, trachea or main bronchi, oesophagus, and the
//! liver and stomach domes at the base. What each structure covers and its size depend on the
//! level `z` (0.1 apex .. 0.5 mid .. 0.9 base; outside that neck or abdomen).
//!
//! Every paint call blends by coverage, so edges carry partial volumes, and lowers the pixel's
//! lung weight; the lung mask is where that weight stays at or above one half. A tissue map
//! (the tissue covering most of each pixel) is kept for the HU statistics tests.
//! Written here because no crate draws anatomy; the HU figures are `spec/synthetic-ct.md`'s.

use std::f64::consts::PI;

use super::canvas::{Ellipse, smooth_field, soft_stroke};
use super::rng::Rng;

/// The tissue covering most of a pixel (for statistics; not written to any file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tissue {
    Air = 0,
    Lung = 1,
    Fat = 2,
    /// Muscle, skin, blood, organs.
    Soft = 3,
    Bone = 4,
    /// Blood with contrast medium (150-300 HU).
    Contrast = 5,
}

/// How a structure is filled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fill {
    /// `hu + tex * smooth texture`.
    Plain(f32, f32, Tissue),
    /// Cortex outside `inner` (fraction of the radius), marrow inside.
    Bone {
        cortex: f32,
        marrow: f32,
        inner: f64,
    },
    Air,
}

/// HU, lung weight and tissue per pixel while a slice is painted.
pub struct Canvas {
    pub n: usize,
    pub hu: Vec<f32>,
    pub lung: Vec<f32>,
    pub tissue: Vec<u8>,
    tex: Vec<f32>,
    fine: Vec<f32>,
}

impl Canvas {
    fn new(rng: &mut Rng, n: usize) -> Self {
        Self {
            n,
            hu: vec![-1000.0; n * n],
            lung: vec![0.0; n * n],
            tissue: vec![Tissue::Air as u8; n * n],
            tex: smooth_field(rng, n, 24),
            fine: smooth_field(rng, n, 64),
        }
    }

    /// Blend `value` into pixel `i` with weight `w`.
    pub(super) fn put(&mut self, i: usize, w: f32, value: f32, tissue: Tissue, keeps_lung: bool) {
        if w <= 0.0 {
            return;
        }
        self.hu[i] += (value - self.hu[i]) * w;
        if !keeps_lung {
            self.lung[i] *= 1.0 - w;
        }
        if w >= 0.5 {
            self.tissue[i] = tissue as u8;
        }
    }

    pub(super) fn fill_value(&self, i: usize, fill: Fill, r: f64) -> (f32, Tissue) {
        let (tex, fine) = (self.tex[i], self.fine[i]);
        match fill {
            Fill::Plain(hu, amp, t) => (hu + amp * tex + 0.5 * amp * fine, t),
            Fill::Bone {
                cortex,
                marrow,
                inner,
            } => {
                let k = ((r - inner) / (1.0 - inner).max(1e-3) * 2.0).clamp(0.0, 1.0) as f32;
                let m = marrow + 35.0 * tex + 25.0 * fine;
                (m + (cortex + 60.0 * fine - m) * k, Tissue::Bone)
            }
            Fill::Air => (-1000.0 + 4.0 * fine, Tissue::Air),
        }
    }

    /// Paint an ellipse with partial-volume edges.
    pub(super) fn ellipse(&mut self, e: &Ellipse, fill: Fill) {
        self.ellipse_in(e, fill, &|_, _| 1.0);
    }

    /// Paint an ellipse, its coverage multiplied by `clip` (0..1) at each pixel.
    pub(super) fn ellipse_in(&mut self, e: &Ellipse, fill: Fill, clip: &dyn Fn(f64, f64) -> f32) {
        let n = self.n;
        let (x0, x1, y0, y1) = e.bounds(n);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (fx, fy) = (x as f64, y as f64);
                let w = e.coverage(fx, fy);
                let w = if w > 0.0 { w * clip(fx, fy) } else { 0.0 };
                if w > 0.0 {
                    let i = y * n + x;
                    let (v, t) = self.fill_value(i, fill, e.r2(fx, fy).sqrt());
                    self.put(i, w, v, t, false);
                }
            }
        }
    }

    /// Paint a tapered tube (an arch, an artery) from `from` to `to`.
    pub(super) fn tube(&mut self, from: (f64, f64), to: (f64, f64), r0: f64, r1: f64, fill: Fill) {
        let n = self.n;
        let mut w = vec![0.0f32; n * n];
        soft_stroke(&mut w, n, from, to, r0, r1);
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 {
                let (v, t) = self.fill_value(i, fill, 0.0);
                self.put(i, wi, v, t, false);
            }
        }
    }
}

/// Smooth periodic function of the angle: a few random harmonics, about unit amplitude.
struct Ring([(f64, f64); 4]);

impl Ring {
    fn draw(rng: &mut Rng) -> Self {
        Self(std::array::from_fn(|k| {
            (rng.range(0.2, 0.6) / (k as f64 + 1.0), rng.range(0.0, 2.0 * PI))
        }))
    }

    fn at(&self, alpha: f64) -> f64 {
        self.0
            .iter()
            .enumerate()
            .map(|(k, (amp, phase))| amp * ((k as f64 + 1.0) * alpha + phase).sin())
            .sum()
    }
}

pub(super) fn bump(x: f64, centre: f64, width: f64) -> f64 {
    (-((x - centre) / width).powi(2)).exp()
}

/// Geometry of one slice; everything in pixels (`s` = size / 512).
pub struct Anatomy {
    pub s: f64,
    pub z: f64,
    pub fov: Ellipse,
    pub fov_mm: f64,
    pub cx: f64,
    pub cy: f64,
    /// Body semi-axes and superellipse exponents (front, back).
    pub a: f64,
    pub b: f64,
    pub(super) p: (f64, f64),
    pub(super) fat: f64,
    fat_ring: Ring,
    pub(super) pect: f64,
    pub(super) back: f64,
    pub(super) has_lungs: bool,
    pub(super) neck: bool,
    pub(super) breasts: bool,
    pub(super) contrast: Option<f32>,
    /// Centre of the vertebral body.
    pub spine: (f64, f64),
    /// Top of the thoracic cavity (inner face of the anterior wall).
    pub cav_top: f64,
    /// Hilum of each lung (image left = patient's right first).
    pub hila: [(f64, f64); 2],
    pub table_y: f64,
    /// Some patients lie with denser dependent (posterior) lung.
    pub dependent: Option<(f32, f64)>,
}

impl Anatomy {
    pub fn draw(rng: &mut Rng, n: usize, z: f64) -> Self {
        let s = n as f64 / 512.0;
        let neck = z < 0.1;
        let abdomen = z > 0.9;
        let k = if neck { 0.45 } else { 1.0 };
        let (cx, cy) = (
            n as f64 / 2.0 + rng.range(-6.0, 6.0) * s,
            n as f64 / 2.0 + rng.range(0.0, 14.0) * s,
        );
        let a = rng.range(178.0, 212.0) * s * k;
        let b = rng.range(128.0, 148.0) * s * k;
        let p = (rng.range(2.0, 2.3), rng.range(2.5, 3.1));
        let fat = rng.range(4.0, 20.0) * s * k;
        let pect = rng.range(6.0, 15.0) * s * k;
        let back = rng.range(5.0, 10.0) * s * k;
        let fat_ring = Ring::draw(rng);
        let breasts = !neck && rng.chance(0.4);
        let contrast = rng.chance(0.5).then(|| rng.range(150.0, 300.0) as f32);
        let dependent = rng
            .chance(0.35)
            .then(|| (rng.range(70.0, 190.0) as f32, rng.range(6.0, 16.0) * s));
        let spine_depth = fat * 0.6 + rng.range(62.0, 72.0) * s * k;
        let spine = (cx, cy + b - spine_depth);
        let cav_top = cy - b + fat * 0.7 + 22.0 * s * k;
        let hy = spine.1 - 0.32 * (spine.1 - cav_top);
        let hila = [(cx - 58.0 * s, hy), (cx + 60.0 * s, hy + 4.0 * s)];
        let fov_mm = rng.range(0.65, 0.75) * 512.0;
        Self {
            s,
            z,
            fov: Ellipse::circle(n as f64 / 2.0 - 0.5, n as f64 / 2.0 - 0.5, n as f64 * 0.497),
            fov_mm,
            cx,
            cy,
            a,
            b,
            p,
            fat,
            fat_ring,
            pect,
            back,
            has_lungs: !neck && !abdomen,
            neck,
            breasts,
            contrast,
            spine,
            cav_top,
            hila,
            table_y: cy + b + rng.range(8.0, 16.0) * s,
            dependent,
        }
    }

    /// Angle from the anterior midline (0 front, +-PI back, + towards the patient's left) and
    /// depth below the skin of pixel (x, y).
    pub(super) fn polar(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let rho = (dx * dx + dy * dy).sqrt().max(1e-6);
        let (c, si) = (dx / rho, dy / rho);
        let p = if si > 0.0 { self.p.1 } else { self.p.0 };
        let t = 1.0 / ((c / self.a).abs().powf(p) + (si / self.b).abs().powf(p)).powf(1.0 / p);
        (dx.atan2(-dy), t - rho)
    }

    /// Depths of the layer boundaries at angle `alpha`: end of skin, fat, muscle (and the
    /// fascia inside it), rib band, extrapleural fat.
    pub(super) fn wall(&self, alpha: f64) -> [f64; 6] {
        let s = self.s;
        let (front, lateral) = (alpha.cos(), alpha.sin().abs());
        let fat = self.fat
            * (0.7 + 0.5 * lateral + 0.3 * (-front).max(0.0))
            * (1.0 + 0.35 * self.fat_ring.at(alpha)).max(0.3);
        let scap = if self.z < 0.6 { 1.5 } else { 1.0 };
        let muscle = 3.0 * s
            + self.pect * bump(alpha.abs(), 0.8, 0.45)
            + (3.0 + 4.0 * lateral) * s
            + self.back * scap * bump(alpha.abs(), 2.35, 0.5)
            + 22.0 * s * bump(alpha.abs(), PI, 0.38);
        let skin = 1.6 * s;
        let m0 = skin + fat;
        let fascia = m0 + muscle * 0.45;
        let ribs = m0 + muscle;
        let pleura = ribs + 7.5 * s;
        [skin, m0, fascia, ribs, pleura, pleura + 2.0 * s]
    }

    /// Paint the slice: HU, lung weight and tissue map before vessels, lesions and acquisition.
    pub fn paint(&self, rng: &mut Rng, n: usize) -> Canvas {
        let mut c = Canvas::new(rng, n);
        self.paint_wall(&mut c);
        if self.breasts {
            self.paint_breasts(rng, &mut c);
        }
        self.paint_ribs(rng, &mut c);
        self.paint_posterior(&mut c);
        if self.neck {
            self.paint_neck(&mut c);
        } else {
            self.paint_mediastinum(rng, &mut c);
            self.paint_domes(&mut c);
        }
        c
    }

    /// Skin, fat, muscle, rib band, extrapleural fat and the cavity (lung or apex tissue).
    fn paint_wall(&self, c: &mut Canvas) {
        let s = self.s;
        let n = c.n;
        let apex = self.apex_limits();
        for y in 0..n {
            for x in 0..n {
                let (fx, fy) = (x as f64, y as f64);
                let (alpha, depth) = self.polar(fx, fy);
                let body = (depth + 0.5).clamp(0.0, 1.0) as f32;
                if body <= 0.0 {
                    continue;
                }
                let i = y * n + x;
                let (tex, fine) = (c.tex[i], c.fine[i]);
                let wall = self.wall(alpha);
                let fat = -100.0 + 7.0 * tex + 5.0 * fine;
                let muscle = 42.0 + 5.0 * tex + 4.0 * fine;
                let ramp = |d: f64| (depth - d + 0.5).clamp(0.0, 1.0) as f32;
                let fascia = (1.0 - ((depth - wall[2]).abs() / (0.9 * s)).min(1.0)) as f32
                    * f32::from(self.pect * bump(alpha.abs(), 0.8, 0.45) > 6.0 * s);
                let mut v = 45.0 + 4.0 * fine; // skin
                let mut t = Tissue::Soft;
                v += (fat - v) * ramp(wall[0]);
                v += (muscle - v) * ramp(wall[1]);
                v += (fat - v) * fascia * 0.8;
                v += (38.0 + 4.0 * fine - v) * ramp(wall[3]); // intercostal muscle
                v += (fat - v) * ramp(wall[4]);
                if depth >= wall[0] && depth < wall[1] || depth >= wall[4] - 0.5 {
                    t = Tissue::Fat;
                }
                let cavity = ramp(wall[5]);
                let mut lung_w = 0.0f32;
                if cavity > 0.0 {
                    let limit = match &apex {
                        None if self.has_lungs => 1.0,
                        None => 0.0,
                        Some(limits) => limits[usize::from(fx > self.cx)].coverage(fx, fy),
                    };
                    let post = ((fy - self.cav_top) / (self.spine.1 - self.cav_top)).clamp(0.0, 1.2);
                    let lung = -856.0 + 55.0 * post as f32 + 10.0 * tex + 8.0 * fine;
                    // apex and neck: muscle and fat where the lung is not
                    let other = if tex > 0.2 { fat } else { muscle };
                    let inside = lung + (other - lung) * (1.0 - limit);
                    v += (inside - v) * cavity;
                    lung_w = cavity * limit;
                    if cavity >= 0.5 {
                        t = if limit >= 0.5 {
                            Tissue::Lung
                        } else if tex > 0.2 {
                            Tissue::Fat
                        } else {
                            Tissue::Soft
                        };
                    }
                }
                c.hu[i] = -1000.0 + (v + 1000.0) * body;
                c.lung[i] = lung_w * body;
                if body >= 0.5 {
                    c.tissue[i] = t as u8;
                }
            }
        }
    }

    /// At the apex the lungs are two small domes beside the trachea.
    fn apex_limits(&self) -> Option<[Ellipse; 2]> {
        if !self.has_lungs || self.z >= 0.34 {
            return None;
        }
        let s = self.s;
        let q = ((self.z - 0.08) / 0.26).clamp(0.05, 1.0);
        let y = self.cav_top + 0.55 * (self.spine.1 - self.cav_top);
        let (ra, rb) = (150.0 * s * q.powf(0.8), 120.0 * s * q.powf(0.6));
        Some([
            Ellipse::new(self.cx - 85.0 * s, y, ra, rb, 0.2),
            Ellipse::new(self.cx + 85.0 * s, y, ra, rb, -0.2),
        ])
    }

    fn paint_breasts(&self, rng: &mut Rng, c: &mut Canvas) {
        let s = self.s;
        let size = rng.range(45.0, 75.0) * s;
        for side in [-1.0, 1.0] {
            let e = Ellipse::new(
                self.cx + side * 0.45 * self.a,
                self.cy - 0.78 * self.b,
                size * 1.2,
                size * 0.8,
                side * 0.35,
            );
            let n = c.n;
            let (x0, x1, y0, y1) = e.bounds(n);
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let (fx, fy) = (x as f64, y as f64);
                    let (_, depth) = self.polar(fx, fy);
                    let w = e.coverage(fx, fy) * ((0.5 - depth).clamp(0.0, 1.0) as f32);
                    if w > 0.0 {
                        let i = y * n + x;
                        // fibroglandular strands in fat; a skin line at the edge
                        let gland = c.tex[i] + 0.6 * c.fine[i] > 0.5;
                        let edge = e.r2(fx, fy) > 0.97;
                        let (v, t) = match (edge, gland) {
                            (true, _) => (45.0, Tissue::Soft),
                            (false, true) => (30.0 + 5.0 * c.fine[i], Tissue::Soft),
                            _ => (-100.0 + 6.0 * c.tex[i], Tissue::Fat),
                        };
                        c.put(i, w, v, t, false);
                    }
                }
            }
        }
    }

    /// A point at `depth` below the skin on the ray at angle `alpha`.
    fn at_depth(&self, alpha: f64, depth: f64) -> (f64, f64) {
        let (dx, dy) = (alpha.sin(), -alpha.cos());
        let far = (self.cx + dx * 400.0, self.cy + dy * 400.0);
        let (_, d_far) = self.polar(far.0, far.1);
        let t = 400.0 + d_far - depth;
        (self.cx + dx * t, self.cy + dy * t)
    }

    fn paint_ribs(&self, rng: &mut Rng, c: &mut Canvas) {
        let s = self.s;
        if self.neck {
            return;
        }
        let k = rng.int(8, 10);
        for side in [-1.0, 1.0] {
            for r in 0..k {
                let alpha = side * (0.3 + r as f64 * 2.45 / f64::from(k) + rng.range(-0.06, 0.06));
                let wall = self.wall(alpha);
                let (x, y) = self.at_depth(alpha, (wall[3] + wall[4]) / 2.0);
                let tangent = alpha; // the long axis follows the body outline
                let rib = Ellipse::new(x, y, rng.range(7.0, 15.0) * s, rng.range(4.0, 5.2) * s, tangent);
                let fill = Fill::Bone {
                    cortex: rng.range(750.0, 950.0) as f32,
                    marrow: rng.range(230.0, 330.0) as f32,
                    inner: 0.55,
                };
                c.ellipse(&rib, fill);
            }
            // the scapula above the heart: a thin plate in the posterior muscles
            if self.z < 0.62 {
                let alpha = side * rng.range(2.15, 2.4);
                let wall = self.wall(alpha);
                let (x, y) = self.at_depth(alpha, wall[1] + 0.4 * (wall[3] - wall[1]));
                let plate = Ellipse::new(x, y, rng.range(34.0, 48.0) * s, 3.4 * s, alpha);
                c.ellipse(
                    &plate,
                    Fill::Bone {
                        cortex: 820.0,
                        marrow: 420.0,
                        inner: 0.3,
                    },
                );
            }
        }
        // sternum on the anterior midline
        let wall = self.wall(0.0);
        let (x, y) = self.at_depth(0.0, wall[3] + 2.0 * s);
        let width = if self.z < 0.3 { 24.0 } else { 15.0 };
        c.ellipse(
            &Ellipse::new(x, y, width * s, 7.0 * s, 0.0),
            Fill::Bone {
                cortex: 780.0,
                marrow: 260.0,
                inner: 0.55,
            },
        );
    }

    /// Paravertebral tissue, vertebra with canal, cord and processes, paraspinal muscles.
    fn paint_posterior(&self, c: &mut Canvas) {
        let (s, (vx, vy)) = (self.s, self.spine);
        let k = if self.neck { 0.6 } else { 1.0 };
        let soft = Fill::Plain(40.0, 5.0, Tissue::Soft);
        c.ellipse(
            &Ellipse::new(vx, vy + 6.0 * s, 38.0 * s * k, 32.0 * s * k, 0.0),
            soft,
        );
        for side in [-1.0, 1.0] {
            let m = Ellipse::new(
                vx + side * 29.0 * s * k,
                vy + 42.0 * s * k,
                21.0 * s * k,
                20.0 * s * k,
                side * 0.2,
            );
            c.ellipse(&m, Fill::Plain(44.0, 5.0, Tissue::Soft));
        }
        let r = 24.0 * s * k;
        let canal = (vx, vy + r + 11.0 * s * k);
        let bone = |inner| Fill::Bone {
            cortex: 820.0,
            marrow: 250.0,
            inner,
        };
        for side in [-1.0, 1.0] {
            let process = Ellipse::new(
                vx + side * 20.0 * s * k,
                canal.1 - 2.0 * s * k,
                17.0 * s * k,
                5.0 * s * k,
                side * 0.45,
            );
            c.ellipse(&process, bone(0.4));
        }
        c.ellipse(
            &Ellipse::new(canal.0, canal.1 + 20.0 * s * k, 5.0 * s * k, 15.0 * s * k, 0.0),
            bone(0.4),
        );
        c.ellipse(&Ellipse::circle(canal.0, canal.1, 15.0 * s * k), bone(0.5));
        c.ellipse(
            &Ellipse::circle(canal.0, canal.1, 9.0 * s * k),
            Fill::Plain(12.0, 2.0, Tissue::Soft),
        );
        c.ellipse(
            &Ellipse::circle(canal.0, canal.1, 5.0 * s * k),
            Fill::Plain(34.0, 2.0, Tissue::Soft),
        );
        c.ellipse(&Ellipse::new(vx, vy, r, r * 0.92, 0.0), bone(0.85));
    }
}
