//! The mediastinum and the base of a synthetic slice, painted over the thoracic cavity that
//! [`super::anatomy`] lays out: mediastinal fat, heart (pericardial fat, myocardium, four
//! chambers, contrast-filled or not), ascending and descending aorta or the arch, pulmonary
//! trunk and arteries, superior vena cava, azygos, trachea or main bronchi, oesophagus; the
//! neck's thyroid and trachea; the liver and stomach domes rising into the cavity at the base.
//! Which structures appear, and their size, depend on the level `z`.

use std::f64::consts::PI;

use super::anatomy::{Anatomy, Canvas, Fill, Tissue, bump};
use super::canvas::Ellipse;
use super::rng::Rng;

impl Anatomy {
    pub(super) fn paint_neck(&self, c: &mut Canvas) {
        let s = self.s;
        let (vx, vy) = self.spine;
        let y = vy - 45.0 * s;
        c.ellipse(
            &Ellipse::new(vx, y, 30.0 * s, 16.0 * s, 0.0),
            Fill::Plain(60.0, 6.0, Tissue::Soft),
        ); // thyroid
        c.ellipse(
            &Ellipse::circle(vx, y + 2.0 * s, 9.0 * s),
            Fill::Plain(40.0, 2.0, Tissue::Soft),
        );
        c.ellipse(&Ellipse::circle(vx, y + 2.0 * s, 7.0 * s), Fill::Air);
    }

    fn blood(&self, fine_contrast: bool) -> Fill {
        match self.contrast {
            Some(hu) if fine_contrast => Fill::Plain(hu, 6.0, Tissue::Contrast),
            _ => Fill::Plain(40.0, 3.0, Tissue::Soft),
        }
    }

    /// Mediastinal fat, heart, great vessels, airways and oesophagus, by level.
    pub(super) fn paint_mediastinum(&self, rng: &mut Rng, c: &mut Canvas) {
        let (s, z, cx) = (self.s, self.z, self.cx);
        let (vx, vy) = self.spine;
        let top = self.cav_top;
        let depth = vy - top;
        let fat = Fill::Plain(-95.0, 7.0, Tissue::Fat);
        let soft = Fill::Plain(40.0, 4.0, Tissue::Soft);
        let blood = self.blood(true);
        // the mediastinal envelope: narrow in front, wide above the heart
        let width = if z < 0.45 { 40.0 } else { 26.0 } * s * rng.range(0.9, 1.1);
        c.ellipse(
            &Ellipse::new(cx + 4.0 * s, top + depth * 0.5, width, depth * 0.56, 0.0),
            fat,
        );
        // descending aorta beside the spine (in front of it in the abdomen)
        let r_ao = rng.range(11.0, 14.0) * s;
        let desc = (vx + 24.0 * s, vy - 24.0 * s);
        if z >= 0.27 {
            c.ellipse(&Ellipse::circle(desc.0, desc.1, r_ao), blood);
        }
        // heart: pericardial fat, myocardium, chambers
        if (0.47..0.88).contains(&z) {
            let q = ((z - 0.45) / 0.43 * PI).sin().max(0.2).sqrt();
            let (ha, hb) = (rng.range(60.0, 72.0) * s * q, rng.range(46.0, 54.0) * s * q);
            let (hx, hy) = (cx + 24.0 * s, top + 0.45 * depth);
            let tilt = -0.55;
            let heart = Ellipse::new(hx, hy, ha, hb, tilt);
            c.ellipse(&heart.scaled(1.1), fat);
            c.ellipse(&heart, Fill::Plain(46.0, 4.0, Tissue::Soft));
            let (cs, sn) = (f64::cos(tilt), f64::sin(tilt));
            let at = |u: f64, v: f64| (hx + u * ha * cs - v * hb * sn, hy + u * ha * sn + v * hb * cs);
            let chambers = [
                (0.28, 0.2, 0.36, 0.42),   // left ventricle
                (0.2, -0.5, 0.45, 0.3),    // right ventricle
                (-0.55, 0.38, 0.32, 0.34), // left atrium
                (-0.55, -0.35, 0.3, 0.36), // right atrium
            ];
            for (u, v, ra, rb) in chambers {
                let (x, y) = at(u, v);
                c.ellipse(&Ellipse::new(x, y, ra * ha, rb * hb, tilt), self.blood(true));
            }
        }
        // great vessels above the heart
        let front = top + 0.25 * depth;
        if (0.2..0.27).contains(&z) {
            c.tube((cx - 6.0 * s, front), desc, 12.0 * s, r_ao, blood); // aortic arch
        }
        if (0.27..0.52).contains(&z) {
            c.ellipse(
                &Ellipse::circle(cx + 4.0 * s, front, rng.range(13.0, 16.0) * s),
                blood,
            );
        }
        if (0.15..0.5).contains(&z) {
            c.ellipse(&Ellipse::circle(cx - 26.0 * s, front + 2.0 * s, 9.0 * s), blood); // SVC
        }
        if z < 0.2 {
            for (dx, r) in [(-12.0, 6.0), (6.0, 5.0), (20.0, 5.0)] {
                c.ellipse(&Ellipse::circle(cx + dx * s, front + 6.0 * s, r * s), blood);
            }
        }
        if (0.4..0.52).contains(&z) {
            let trunk = (cx + 30.0 * s, front - 4.0 * s);
            c.ellipse(&Ellipse::circle(trunk.0, trunk.1, 14.0 * s), blood);
            let left = (self.hila[1].0, (self.hila[1].1 + trunk.1) / 2.0);
            c.tube(trunk, left, 10.0 * s, 7.0 * s, blood);
            if z >= 0.44 {
                let right = (self.hila[0].0 + 10.0 * s, front + 30.0 * s);
                c.tube((cx + 16.0 * s, front + 24.0 * s), right, 9.0 * s, 6.5 * s, blood);
            }
        }
        if (0.3..0.65).contains(&z) {
            c.ellipse(
                &Ellipse::circle(vx - 15.0 * s, vy - 22.0 * s, 4.5 * s),
                self.blood(false),
            ); // azygos
        }
        // airways: trachea, then the two main bronchi moving out to the hila
        let ty = vy - 50.0 * s;
        if z < 0.4 {
            c.ellipse(&Ellipse::circle(cx, ty, 11.0 * s), soft);
            c.ellipse(&Ellipse::circle(cx, ty, 9.0 * s), Fill::Air);
        } else if z < 0.52 {
            let off = (10.0 + 240.0 * (z - 0.4)) * s;
            for side in [-1.0, 1.0] {
                c.ellipse(&Ellipse::circle(cx + side * off, ty + 4.0 * s, 7.5 * s), soft);
                c.ellipse(
                    &Ellipse::circle(cx + side * off, ty + 4.0 * s, 5.8 * s),
                    Fill::Air,
                );
            }
        }
        // oesophagus, sometimes with air
        let (ox, oy) = (vx - 5.0 * s, vy - 31.0 * s);
        c.ellipse(
            &Ellipse::circle(ox, oy, 7.0 * s),
            Fill::Plain(38.0, 4.0, Tissue::Soft),
        );
        if rng.chance(0.4) {
            c.ellipse(&Ellipse::circle(ox, oy, 2.0 * s), Fill::Air);
        }
    }

    /// Liver and the stomach or spleen rising into the cavity at the base, in front of the
    /// posterior recesses (the domes are highest in front, the recesses deepest at the back).
    pub(super) fn paint_domes(&self, c: &mut Canvas) {
        let s = self.s;
        let (vx, vy) = self.spine;
        let q = ((self.z - 0.7) / 0.22).clamp(0.0, 1.0).powf(0.7);
        if q <= 0.0 {
            return;
        }
        // inside the cavity only: the wall and ribs stay in front of the organs
        let cavity = |x: f64, y: f64| {
            let (alpha, depth) = self.polar(x, y);
            (depth - self.wall(alpha)[5] + 0.5).clamp(0.0, 1.0) as f32
        };
        let liver = Ellipse::new(vx - 35.0 * s, vy - 85.0 * s, 150.0 * s * q, 105.0 * s * q, 0.15);
        c.ellipse_in(&liver, Fill::Plain(58.0, 4.0, Tissue::Soft), &cavity);
        let q2 = ((self.z - 0.78) / 0.14).clamp(0.0, 1.0);
        if q2 > 0.0 {
            let stomach = Ellipse::new(vx + 72.0 * s, vy - 95.0 * s, 85.0 * s * q2, 70.0 * s * q2, -0.3);
            c.ellipse_in(&stomach, Fill::Plain(35.0, 5.0, Tissue::Soft), &cavity);
            let bubble = Ellipse::new(
                stomach.cx + 10.0 * s,
                stomach.cy - 30.0 * s * q2,
                30.0 * s * q2,
                16.0 * s * q2,
                0.0,
            );
            c.ellipse_in(&bubble, Fill::Air, &cavity);
        }
        self.paint_recesses(c);
    }

    /// Below the dome tops (z > 0.8) the abdominal organs fill the cavity from the front; the
    /// lungs are left as recesses around the domes: the posterior costophrenic recesses, crescents
    /// along the back beside the spine, are the deepest and last to go, the anterior and lateral
    /// lung thins first. Their inner border is a broad partial-volume band (the dome surface runs
    /// obliquely through the slice thickness), so the thin lung there is grey, not black, and
    /// normal, down to the grey tips of the crescents.
    fn paint_recesses(&self, c: &mut Canvas) {
        let q = ((self.z - 0.8) / 0.12).clamp(0.0, 1.0);
        if q <= 0.0 {
            return;
        }
        let s = self.s;
        // band width from the body's own draws (no new random draw: the rest stays as it was)
        let band = s * (6.0 + 10.0 * (self.a / s).fract());
        let n = c.n;
        for y in 0..n {
            for x in 0..n {
                let i = y * n + x;
                if c.lung[i] <= 0.0 {
                    continue;
                }
                let (alpha, depth) = self.polar(x as f64, y as f64);
                let inside = depth - self.wall(alpha)[5];
                let back = bump(alpha.abs(), 2.6, 0.9);
                let recess = s * ((10.0 + 70.0 * (1.0 - q)) * back + 20.0 * (1.0 - q).powi(2) * (1.0 - back));
                let w = ((inside - recess) / band).clamp(0.0, 1.0) as f32;
                let w = w * w * (3.0 - 2.0 * w) * c.lung[i];
                let organ = if (x as f64) < self.cx { 58.0 } else { 45.0 };
                let (v, t) = c.fill_value(i, Fill::Plain(organ, 4.0, Tissue::Soft), 0.0);
                c.put(i, w, v, t, false);
            }
        }
    }
}
