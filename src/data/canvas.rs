//! Drawing primitives for the synthetic phantoms: tilted ellipses, smooth value-noise
//! texture, separable [1 2 1] blur, soft tapered strokes and Gaussian blob fields, with
//! partial-volume (fractional) coverage at edges.

use super::rng::Rng;

/// A tilted ellipse in pixel coordinates.
#[derive(Debug, Clone, Copy)]
pub struct Ellipse {
    pub cx: f64,
    pub cy: f64,
    pub a: f64,
    pub b: f64,
    cos: f64,
    sin: f64,
}

impl Ellipse {
    pub fn new(cx: f64, cy: f64, a: f64, b: f64, angle: f64) -> Self {
        let (sin, cos) = angle.sin_cos();
        Self {
            cx,
            cy,
            a,
            b,
            cos,
            sin,
        }
    }

    pub fn circle(cx: f64, cy: f64, r: f64) -> Self {
        Self::new(cx, cy, r, r, 0.0)
    }

    /// Normalised squared radius: <= 1 inside.
    pub fn r2(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.a;
        let v = (-dx * self.sin + dy * self.cos) / self.b;
        u * u + v * v
    }

    /// Fraction of the pixel at (x, y) covered (partial volume): 1 inside, 0 outside, a ramp
    /// one pixel wide across the border (distance measured along the ray from the centre).
    pub fn coverage(&self, x: f64, y: f64) -> f32 {
        let r2 = self.r2(x, y);
        if r2 < 0.25 {
            return 1.0;
        }
        let rho = ((x - self.cx).powi(2) + (y - self.cy).powi(2)).sqrt();
        let d = rho * (1.0 - 1.0 / r2.sqrt());
        (0.5 - d).clamp(0.0, 1.0) as f32
    }

    /// Pixel bounds of the ellipse plus a margin (a square of its larger semi-axis).
    pub fn bounds(&self, n: usize) -> (usize, usize, usize, usize) {
        bbox(self.cx, self.cy, self.a.max(self.b) + 1.5, n)
    }

    pub fn scaled(&self, k: f64) -> Self {
        Self {
            a: self.a * k,
            b: self.b * k,
            ..*self
        }
    }
}

/// Smooth noise of unit-ish sd: a `cells`x`cells` grid of normals, smoothstep-interpolated.
pub fn smooth_field(rng: &mut Rng, n: usize, cells: usize) -> Vec<f32> {
    let g = cells + 2;
    let grid: Vec<f32> = (0..g * g).map(|_| rng.normal()).collect();
    let step = cells as f32 / n as f32;
    let axis: Vec<(usize, f32)> = (0..n)
        .map(|i| {
            let p = i as f32 * step;
            let (cell, t) = (p.floor(), p - p.floor());
            (cell as usize, t * t * (3.0 - 2.0 * t))
        })
        .collect();
    let mut out = vec![0.0; n * n];
    for (y, &(gy, ty)) in axis.iter().enumerate() {
        let (r0, r1) = (&grid[gy * g..], &grid[(gy + 1) * g..]);
        for (x, &(gx, tx)) in axis.iter().enumerate() {
            let top = r0[gx] + (r0[gx + 1] - r0[gx]) * tx;
            let bottom = r1[gx] + (r1[gx + 1] - r1[gx]) * tx;
            out[y * n + x] = (top + (bottom - top) * ty) * 1.6;
        }
    }
    out
}

/// Separable [1 2 1]/4 blur with edge clamping, in place.
pub fn blur121(img: &mut [f32], n: usize) {
    let mut tmp = vec![0.0f32; img.len()];
    for y in 0..n {
        let row = &img[y * n..(y + 1) * n];
        for x in 0..n {
            let (l, r) = (row[x.saturating_sub(1)], row[(x + 1).min(n - 1)]);
            tmp[y * n + x] = 0.25 * l + 0.5 * row[x] + 0.25 * r;
        }
    }
    for y in 0..n {
        let (up, down) = (y.saturating_sub(1) * n, (y + 1).min(n - 1) * n);
        for x in 0..n {
            img[y * n + x] = 0.25 * tmp[up + x] + 0.5 * tmp[y * n + x] + 0.25 * tmp[down + x];
        }
    }
}

/// Pixel index range of a square of radius `r` around (cx, cy), clipped to the image.
pub fn bbox(cx: f64, cy: f64, r: f64, n: usize) -> (usize, usize, usize, usize) {
    let lo = |c: f64| (c - r).floor().max(0.0) as usize;
    let hi = |c: f64| ((c + r).ceil().max(0.0) as usize).min(n - 1);
    (lo(cx), hi(cx), lo(cy), hi(cy))
}

/// Max-accumulate a soft disc (partial-volume edge one pixel wide) into `weight`.
pub fn soft_disc(weight: &mut [f32], n: usize, cx: f64, cy: f64, r: f64) {
    let (x0, x1, y0, y1) = bbox(cx, cy, r + 1.0, n);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
            let w = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
            let cell = &mut weight[y * n + x];
            *cell = cell.max(w);
        }
    }
}

/// A tapered stroke from radius `r0` to `r1` as overlapping soft discs.
pub fn soft_stroke(weight: &mut [f32], n: usize, from: (f64, f64), to: (f64, f64), r0: f64, r1: f64) {
    let len = ((to.0 - from.0).powi(2) + (to.1 - from.1).powi(2)).sqrt();
    let steps = (len / 0.7).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (from.0 + (to.0 - from.0) * t, from.1 + (to.1 - from.1) * t);
        soft_disc(weight, n, x, y, r0 + (r1 - r0) * t);
    }
}

/// Add a Gaussian blob of amplitude `amp` and sd `sigma` into `field` (within 3 sigma).
pub fn add_blob(field: &mut [f32], n: usize, cx: f64, cy: f64, sigma: f64, amp: f32) {
    let (x0, x1, y0, y1) = bbox(cx, cy, 3.0 * sigma, n);
    let k = -1.0 / (2.0 * sigma * sigma);
    for y in y0..=y1 {
        let dy2 = (y as f64 - cy).powi(2);
        for x in x0..=x1 {
            let d2 = (x as f64 - cx).powi(2) + dy2;
            field[y * n + x] += amp * (d2 * k).exp() as f32;
        }
    }
}

/// Hermite smoothstep of `x` between `e0` and `e1`.
pub fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}
