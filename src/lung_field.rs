//! The lung field of a slice: the lungs *including* the dense lesions inside them, from HU for
//! DICOM and from the lung-windowed grey level otherwise (inverted through the COVIDx window).
//!
//! 1. Air-like pixels: below [`AIR_HU`] (lung parenchyma and most GGO are -900..-400).
//! 2. Their 4-connected components; a component is a lung when it is large enough (at least
//!    [`MIN_LUNG_CM2`]), thick (some pixel at least [`MIN_THICKNESS_MM`] from its border: a
//!    table pad or a sliver of air is not) and not gas: its median HU lies above [`GAS_HU`]
//!    (outside air, the trachea, the stomach and the outside-FOV fill are -1000 or lower, lung
//!    parenchyma about -820; a real scan's outside air and pads measured -949). Components touching the image border are kept when they pass
//!    these tests, so a crop through the lungs keeps them.
//! 3. Per lung: a morphological closing with a disc of [`CLOSING_MM`] (dense lesions against
//!    the pleura leave a bite in the air mask that the closing fills; concavities wider than
//!    the disc, such as the heart's, stay open), then every hole is filled (vessels, nodules,
//!    consolidation surrounded by lung).
//! 4. A lobar consolidation can replace a whole stretch of the lung's edge, more than any
//!    closing restores. [`LungField::with_lesions`] therefore adds the pixels of detected
//!    lesions that lie mostly (at least [`SEED_FRACTION`]) in the field or a lung's convex hull
//!    (with a lung on each side, also the hulls' mirror images across the midline: a lobar
//!    consolidation that replaced the front of one lung lies in the other's mirrored hull), or
//!    whose border lies on the field for at least [`SEED_CONTACT`], and connect to it; a
//!    detection in the fat, the breasts or the muscles outside the ribs lies outside the hulls,
//!    which follow the lungs' outer edge, and adds nothing.
//!    (A detection in the heart can lie inside the left lung's hull: the gate does not catch
//!    every false positive.)
//!
//! The closing uses exact Euclidean distance transforms (Felzenszwalb and Huttenlocher's
//! lower-envelope algorithm), so its cost does not grow with the disc; written here because
//! the image crates this project uses have no distance transform and no disc closing over a
//! boolean mask, and a few dozen lines do it.

use crate::slice::Slice;

/// HU below which a pixel is air-like.
pub const AIR_HU: f32 = -400.0;
/// A component whose median HU is at or below this is gas, not lung.
pub const GAS_HU: f32 = -920.0;
/// Smallest lung, in cm² (a lung base or apex is several cm²).
pub const MIN_LUNG_CM2: f64 = 1.0;
/// A lung holds a pixel at least this far (mm) from its border.
pub const MIN_THICKNESS_MM: f64 = 1.5;
/// Radius of the closing disc, in mm.
pub const CLOSING_MM: f64 = 15.0;
/// A lesion with at least this fraction of its mask in the field or a lung's convex hull is
/// taken for a lesion of the lung, and its pixels join the field ([`LungField::with_lesions`]).
pub const SEED_FRACTION: f64 = 0.5;
/// ... or when at least this fraction of its border touches the field (a consolidation that
/// replaced the lung's edge keeps the aerated lung on its inner side).
pub const SEED_CONTACT: f64 = 0.25;
/// Pixel size assumed when the input does not say (a 350 mm field of view over the width).
pub const DEFAULT_FOV_MM: f64 = 350.0;

/// What [`lung_field`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct LungField {
    pub width: usize,
    pub height: usize,
    /// `H*W`: inside the lung field.
    pub mask: Vec<bool>,
    /// Number of lungs (components) found.
    pub lungs: usize,
    /// `H*W`: inside the convex hull of a lung's air-like pixels, or (with a lung on each side)
    /// inside the mirror image of such a hull across the midline between them.
    pub hull: Vec<bool>,
}

impl LungField {
    pub fn pixels(&self) -> u64 {
        self.mask.iter().filter(|&&v| v).count() as u64
    }

    /// The field with the lesions of the lung, and the fraction of each lesion's mask inside
    /// it. A lesion with at least [`SEED_FRACTION`] of its mask in the field or the lungs'
    /// convex hulls (and their mirror images), or [`SEED_CONTACT`] of its border on the field, is a lesion of the lung: its pixels connected to the field (4-connected,
    /// through the pixels of such lesions) join it. A lesion in the chest wall or the fat lies
    /// outside the hulls (they follow the lungs' outer edge), adds nothing and keeps its small
    /// fraction.
    pub fn with_lesions(&self, lesions: &[Vec<bool>]) -> (Vec<bool>, Vec<f64>) {
        let (w, h) = (self.width, self.height);
        let fraction = |field: &[bool], m: &[bool]| {
            let area = m.iter().filter(|&&v| v).count();
            let inside = m.iter().zip(field).filter(|&(&v, &f)| v && f).count();
            if area == 0 {
                0.0
            } else {
                inside as f64 / area as f64
            }
        };
        let mut grows = vec![false; w * h];
        let near: Vec<bool> = self.mask.iter().zip(&self.hull).map(|(&m, &h)| m || h).collect();
        let seed = |m: &Vec<bool>| {
            fraction(&near, m) >= SEED_FRACTION || contact(&self.mask, m, w, h) >= SEED_CONTACT
        };
        for m in lesions.iter().filter(|m| seed(m)) {
            for (g, &v) in grows.iter_mut().zip(m.iter()) {
                *g |= v;
            }
        }
        let mut out = self.mask.clone();
        let mut stack: Vec<usize> = (0..w * h).filter(|&i| self.mask[i]).collect();
        while let Some(i) = stack.pop() {
            for j in neighbours4(i, w, h) {
                if !out[j] && grows[j] {
                    out[j] = true;
                    stack.push(j);
                }
            }
        }
        let fractions = lesions.iter().map(|m| fraction(&out, m)).collect();
        (out, fractions)
    }

    /// [`LungField::with_lesions`] over bit-packed lesion masks, each kept as the words of its
    /// bounding box ([`MaskCrop`]): the same field (as a [`Bitmap`]) and the same fractions, at
    /// a cost that follows the lesions' boxes and the frame's words, not lesions x pixels.
    pub fn with_lesion_crops(&self, lesions: &[MaskCrop]) -> (Bitmap, Vec<f64>) {
        let (w, h) = (self.width, self.height);
        let field = Bitmap::from_bools(&self.mask, w, h);
        let near_px: Vec<bool> = self.mask.iter().zip(&self.hull).map(|(&m, &h)| m || h).collect();
        let near = Bitmap::from_bools(&near_px, w, h);
        let mut grows = Bitmap::new(w, h);
        for m in lesions
            .iter()
            .filter(|m| m.fraction_in(&near) >= SEED_FRACTION || contact_crop(&field, m) >= SEED_CONTACT)
        {
            m.or_into(&mut grows);
        }
        // the grow pixels 4-connected to the field (through grow pixels) join it: seeded from
        // those beside the field, the same set as a flood from every field pixel
        let mut out = field.clone();
        let mut stack = Vec::new();
        for (idx, (&g, &f)) in grows.words.iter().zip(&field.words).enumerate() {
            let mut bits = g & !f;
            let (y, x0) = (idx / grows.words_per_row, 64 * (idx % grows.words_per_row));
            while bits != 0 {
                let x = x0 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if neighbours4(y * w + x, w, h).any(|j| field.get(j % w, j / w)) {
                    out.set(x, y);
                    stack.push(y * w + x);
                }
            }
        }
        while let Some(i) = stack.pop() {
            for j in neighbours4(i, w, h) {
                let (x, y) = (j % w, j / w);
                if !out.get(x, y) && grows.get(x, y) {
                    out.set(x, y);
                    stack.push(j);
                }
            }
        }
        let fractions = lesions.iter().map(|m| m.fraction_in(&out)).collect();
        (out, fractions)
    }
}

/// A `width` x `height` binary image bit-packed row by row: `words_per_row` (`width / 64`
/// rounded up) words a row, pixel `x` of a row in bit `x % 64` of its word `x / 64`; the bits
/// past the width are 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub width: usize,
    pub height: usize,
    pub words_per_row: usize,
    /// `height * words_per_row` words.
    pub words: Vec<u64>,
}

impl Bitmap {
    /// All off.
    pub fn new(width: usize, height: usize) -> Self {
        let words_per_row = width.div_ceil(64);
        Bitmap {
            width,
            height,
            words_per_row,
            words: vec![0; words_per_row * height],
        }
    }

    /// From `width * height` row-major booleans.
    pub fn from_bools(m: &[bool], width: usize, height: usize) -> Self {
        let mut b = Self::new(width, height);
        for (y, row) in m.chunks_exact(width.max(1)).take(height).enumerate() {
            for (x, _) in row.iter().enumerate().filter(|&(_, &on)| on) {
                b.set(x, y);
            }
        }
        b
    }

    /// As `width * height` row-major booleans.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.width * self.height)
            .map(|i| self.get(i % self.width, i / self.width))
            .collect()
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.words[y * self.words_per_row + x / 64] >> (x % 64) & 1 != 0
    }

    pub fn set(&mut self, x: usize, y: usize) {
        self.words[y * self.words_per_row + x / 64] |= 1 << (x % 64);
    }

    /// Pixels on.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// One mask of a frame as the words of its bounding box in the frame's [`Bitmap`] layout: rows
/// `y0..y1`, words `w0..w1` of each (pixels `64 * w0 .. 64 * w1`); the mask is off elsewhere.
/// A pasted detection mask is off outside its box, so a few dozen of them take little room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskCrop {
    pub y0: usize,
    pub y1: usize,
    pub w0: usize,
    pub w1: usize,
    /// `(y1 - y0) * (w1 - w0)` words, row by row.
    pub words: Vec<u64>,
    /// Pixels on.
    pub area: u64,
}

impl MaskCrop {
    /// The crop of one full frame's words (`words_per_row` a row): the rows and words that hold
    /// a set bit (an empty crop when none does).
    pub fn from_frame(frame: &[u64], words_per_row: usize) -> Self {
        let (mut y0, mut y1, mut w0, mut w1) = (usize::MAX, 0, usize::MAX, 0);
        for (y, row) in frame.chunks_exact(words_per_row.max(1)).enumerate() {
            let (Some(first), Some(last)) = (
                row.iter().position(|&v| v != 0),
                row.iter().rposition(|&v| v != 0),
            ) else {
                continue;
            };
            (y0, y1, w0, w1) = (y0.min(y), y + 1, w0.min(first), w1.max(last + 1));
        }
        if y0 == usize::MAX {
            return MaskCrop {
                y0: 0,
                y1: 0,
                w0: 0,
                w1: 0,
                words: Vec::new(),
                area: 0,
            };
        }
        let words: Vec<u64> = (y0..y1)
            .flat_map(|y| {
                frame[y * words_per_row + w0..y * words_per_row + w1]
                    .iter()
                    .copied()
            })
            .collect();
        let area = words.iter().map(|w| u64::from(w.count_ones())).sum();
        MaskCrop {
            y0,
            y1,
            w0,
            w1,
            words,
            area,
        }
    }

    /// The crop of `width * height` row-major booleans.
    pub fn from_bools(m: &[bool], width: usize, height: usize) -> Self {
        Self::from_frame(&Bitmap::from_bools(m, width, height).words, width.div_ceil(64))
    }

    /// Word `k` of row `y` in the frame's layout (0 outside the crop).
    pub fn word(&self, y: usize, k: usize) -> u64 {
        if (self.y0..self.y1).contains(&y) && (self.w0..self.w1).contains(&k) {
            self.words[(y - self.y0) * (self.w1 - self.w0) + k - self.w0]
        } else {
            0
        }
    }

    /// `(index in the frame's words, word)` of every word of the crop.
    pub fn frame_words(&self, words_per_row: usize) -> impl Iterator<Item = (usize, u64)> + '_ {
        let span = self.w1 - self.w0;
        self.words.iter().enumerate().map(move |(i, &v)| {
            (
                (self.y0 + i / span.max(1)) * words_per_row + self.w0 + i % span.max(1),
                v,
            )
        })
    }

    /// Pixels on in both the mask and `frame`.
    pub fn count_and(&self, frame: &Bitmap) -> u64 {
        self.frame_words(frame.words_per_row)
            .map(|(i, v)| u64::from((v & frame.words[i]).count_ones()))
            .sum()
    }

    /// Fraction of the mask inside `frame` (0 for an empty mask).
    pub fn fraction_in(&self, frame: &Bitmap) -> f64 {
        if self.area == 0 {
            0.0
        } else {
            self.count_and(frame) as f64 / self.area as f64
        }
    }

    /// OR the mask into `frame`.
    pub fn or_into(&self, frame: &mut Bitmap) {
        for (i, v) in self.frame_words(frame.words_per_row) {
            frame.words[i] |= v;
        }
    }

    /// As a full frame.
    pub fn to_bitmap(&self, width: usize, height: usize) -> Bitmap {
        let mut b = Bitmap::new(width, height);
        self.or_into(&mut b);
        b
    }
}

/// [`contact`] of a cropped mask, a word (64 pixels) at a time: a pixel of `m` is on its
/// border when one of its 4-neighbours in the frame is off `m`, and touches the field when such
/// a neighbour is in the `field`.
fn contact_crop(field: &Bitmap, m: &MaskCrop) -> f64 {
    if m.area == 0 {
        return 0.0;
    }
    let (w, h, wpr) = (field.width, field.height, field.words_per_row);
    // the last column has no right neighbour (nor the first a left one): count it as inside
    let (edge_word, edge_bit) = ((w - 1) / 64, 1u64 << ((w - 1) % 64));
    let f = |y: usize, k: usize| field.words[y * wpr + k];
    let (mut border, mut touching) = (0u64, 0u64);
    for y in m.y0..m.y1 {
        for k in m.w0..m.w1 {
            let c = m.word(y, k);
            if c == 0 {
                continue;
            }
            let prev = if k > 0 { m.word(y, k - 1) >> 63 } else { 1 };
            let next = if k + 1 < wpr { m.word(y, k + 1) << 63 } else { 0 };
            let left_in = (c << 1) | prev;
            let right_in = (c >> 1) | next | if k == edge_word { edge_bit } else { 0 };
            let up_in = if y > 0 { m.word(y - 1, k) } else { !0 };
            let down_in = if y + 1 < h { m.word(y + 1, k) } else { !0 };
            let (ol, or, ou, od) = (c & !left_in, c & !right_in, c & !up_in, c & !down_in);
            border += u64::from((ol | or | ou | od).count_ones());
            let fc = f(y, k);
            let fl = (fc << 1) | if k > 0 { f(y, k - 1) >> 63 } else { 0 };
            let fr = (fc >> 1) | if k + 1 < wpr { f(y, k + 1) << 63 } else { 0 };
            let fu = if y > 0 { f(y - 1, k) } else { 0 };
            let fd = if y + 1 < h { f(y + 1, k) } else { 0 };
            touching += u64::from(((ol & fl) | (or & fr) | (ou & fu) | (od & fd)).count_ones());
        }
    }
    if border == 0 {
        0.0
    } else {
        touching as f64 / border as f64
    }
}

/// Fraction of the border pixels of mask `m` (inside pixels with a 4-neighbour outside it)
/// that touch the `field`.
fn contact(field: &[bool], m: &[bool], w: usize, h: usize) -> f64 {
    let (mut border, mut touching) = (0usize, 0usize);
    for i in (0..w * h).filter(|&i| m[i]) {
        let (x, y) = (i % w, i / w);
        let nb = [
            (x > 0).then(|| i - 1),
            (x + 1 < w).then(|| i + 1),
            (y > 0).then(|| i - w),
            (y + 1 < h).then(|| i + w),
        ];
        let outside: Vec<usize> = nb.iter().flatten().copied().filter(|&j| !m[j]).collect();
        if !outside.is_empty() {
            border += 1;
            touching += usize::from(outside.iter().any(|&j| field[j]));
        }
    }
    if border == 0 {
        0.0
    } else {
        touching as f64 / border as f64
    }
}

/// The lung field of a slice (HU when it has them, else the windowed grey level).
pub fn lung_field(s: &Slice) -> LungField {
    let (w, h) = (s.width as usize, s.height as usize);
    let spacing = s
        .meta
        .pixel_spacing
        .map(|p| (p[0] + p[1]) / 2.0)
        .filter(|p| p.is_finite() && *p > 0.0)
        .unwrap_or(DEFAULT_FOV_MM / w.max(1) as f64);
    match &s.hu {
        Some(hu) => lung_field_hu(hu, w, h, spacing),
        None => {
            // the COVIDx lung window inverted: g = 255 (HU + 1350) / 1500
            let hu: Vec<f32> = s
                .rgb
                .chunks_exact(3)
                .map(|p| f32::from(p[0]) / 255.0 * 1500.0 - 1350.0)
                .collect();
            lung_field_hu(&hu, w, h, spacing)
        }
    }
}

/// The lung field of a `w`x`h` HU image with square pixels of `spacing_mm`.
pub fn lung_field_hu(hu: &[f32], w: usize, h: usize, spacing_mm: f64) -> LungField {
    let air: Vec<bool> = hu.iter().map(|&v| v < AIR_HU).collect();
    let min_px = (MIN_LUNG_CM2 * 100.0 / (spacing_mm * spacing_mm)) as usize;
    let min_depth_sq = (MIN_THICKNESS_MM / spacing_mm).powi(2) as f32;
    let radius = CLOSING_MM / spacing_mm;
    let mut mask = vec![false; w * h];
    let mut hull = vec![false; w * h];
    let mut lungs = 0;
    for comp in components(&air, w, h) {
        if comp.len() < min_px {
            continue;
        }
        let mut values: Vec<f32> = comp.iter().map(|&i| hu[i]).collect();
        let mid = values.len() / 2;
        let median = *values.select_nth_unstable_by(mid, f32::total_cmp).1;
        // the gas test first: the outside air, the largest component, then needs no distances
        if median <= GAS_HU || !thick(&comp, &air, w, h, min_depth_sq) {
            continue;
        }
        lungs += 1;
        close_and_fill(&comp, w, h, radius, &mut mask);
        fill_hull(&comp, w, &mut hull);
    }
    mirror_hulls(&mask, w, h, &mut hull);
    LungField {
        width: w,
        height: h,
        mask,
        lungs,
        hull,
    }
}

/// Whether some pixel of `comp` lies at least `sqrt(min_depth_sq)` px from every pixel that is
/// not `air` ([`edt_sq`] of those pixels over the image), computed in the component's box grown
/// by that distance: a nearer non-air pixel lies inside it, so the answer is the same.
fn thick(comp: &[usize], air: &[bool], w: usize, h: usize, min_depth_sq: f32) -> bool {
    let pad = f64::from(min_depth_sq.max(0.0)).sqrt().ceil() as usize + 1;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for &i in comp {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (x0, y0) = (x0.saturating_sub(pad), y0.saturating_sub(pad));
    let (lw, lh) = ((x1 + pad).min(w - 1) - x0 + 1, (y1 + pad).min(h - 1) - y0 + 1);
    let feature: Vec<bool> = (0..lw * lh)
        .map(|i| !air[(y0 + i / lw) * w + x0 + i % lw])
        .collect();
    let depth = edt_sq(&feature, lw, lh);
    comp.iter()
        .any(|&i| depth[(i / w - y0) * lw + i % w - x0] >= min_depth_sq)
}

/// With a lung on each side, add the hulls' mirror images across the midline between the lungs'
/// outer edges: a lobar consolidation that replaced the front or the side of one lung (its air
/// hull then stops short of the chest wall there) lies inside the other lung's mirrored hull,
/// which follows the chest's outer edge too. Skipped when one side holds less than a fifth of
/// the field (one lung in view, a crop).
fn mirror_hulls(field: &[bool], w: usize, h: usize, hull: &mut [bool]) {
    let xs: Vec<usize> = (0..w * h).filter(|&i| field[i]).map(|i| i % w).collect();
    let (Some(&lo), Some(&hi)) = (xs.iter().min(), xs.iter().max()) else {
        return;
    };
    let twice_mid = lo + hi;
    let total = xs.len();
    let left = xs.iter().filter(|&&x| 2 * x < twice_mid).count();
    if 5 * left < total || 5 * (total - left) < total {
        return;
    }
    let own = hull.to_vec();
    for i in (0..w * h).filter(|&i| own[i]) {
        let x = i % w;
        if let Some(mx) = twice_mid.checked_sub(x).filter(|&mx| mx < w) {
            hull[i - x + mx] = true;
        }
    }
}

/// 4-connected components of `on`, each as its pixel indices.
fn components(on: &[bool], w: usize, h: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !on[start] || seen[start] {
            continue;
        }
        let mut comp = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            comp.push(i);
            for j in neighbours4(i, w, h) {
                if on[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        out.push(comp);
    }
    out
}

/// Close one component with a disc of `radius` px and fill its holes, OR-ing into `mask`.
fn close_and_fill(comp: &[usize], w: usize, h: usize, radius: f64, mask: &mut [bool]) {
    let pad = radius.ceil() as usize + 2;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for &i in comp {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    // a local frame padded by the radius: the dilation never reaches its edge
    let (lw, lh) = (x1 - x0 + 1 + 2 * pad, y1 - y0 + 1 + 2 * pad);
    let mut local = vec![false; lw * lh];
    for &i in comp {
        let (x, y) = (i % w - x0 + pad, i / w - y0 + pad);
        local[y * lw + x] = true;
    }
    let r2 = (radius * radius) as f32;
    let to_fg = edt_sq(&local, lw, lh);
    let dilated: Vec<bool> = to_fg.iter().map(|&d| d <= r2).collect();
    let to_bg = edt_sq(&dilated.iter().map(|&v| !v).collect::<Vec<_>>(), lw, lh);
    let closed: Vec<bool> = to_bg.iter().map(|&d| d > r2).collect();
    let mut filled = fill_holes(&closed, lw, lh);
    for (f, l) in filled.iter_mut().zip(&local) {
        *f |= *l;
    }
    for ly in 0..lh {
        for lx in 0..lw {
            if !filled[ly * lw + lx] {
                continue;
            }
            let (x, y) = (
                lx as isize + x0 as isize - pad as isize,
                ly as isize + y0 as isize - pad as isize,
            );
            if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
                mask[y as usize * w + x as usize] = true;
            }
        }
    }
}

/// The convex hull of the pixel centres of `comp` (indices into rows of `w`): its vertices in
/// the monotone chain's order (Andrew's algorithm: lower hull, then upper).
fn convex_hull(comp: &[usize], w: usize) -> Vec<(i64, i64)> {
    let mut pts: Vec<(i64, i64)> = comp.iter().map(|&i| ((i % w) as i64, (i / w) as i64)).collect();
    pts.sort_unstable();
    pts.dedup();
    let cross =
        |o: (i64, i64), a: (i64, i64), b: (i64, i64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(i64, i64)> = Vec::new();
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Vec<(i64, i64)> = if pass == 0 {
            pts.clone()
        } else {
            pts.iter().rev().copied().collect()
        };
        for p in ordered {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// Mark the convex hull of the pixel centres of `comp` in `out`.
fn fill_hull(comp: &[usize], w: usize, out: &mut [bool]) {
    let hull = convex_hull(comp, w);
    if hull.len() < 3 {
        return;
    }
    let span = |f: fn(&(i64, i64)) -> i64| {
        let v: Vec<i64> = hull.iter().map(f).collect();
        (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(-1),
        )
    };
    let ((x0, x1), (y0, y1)) = (span(|p| p.0), span(|p| p.1));
    // counter-clockwise hull: inside when on the left of (or on) every edge, i.e. when
    // cross(o, a, (x, y)) = ex (y - oy) - ey (x - ox) >= 0 for each edge o -> a: on a row, an
    // interval of x bounded (exactly, in integers) by the edges that are not horizontal
    for y in y0..=y1 {
        let (mut lo, mut hi) = (x0, x1);
        for k in 0..hull.len() {
            let (o, a) = (hull[k], hull[(k + 1) % hull.len()]);
            let (ex, ey) = (a.0 - o.0, a.1 - o.1);
            // ey x <= r
            let r = ex * (y - o.1) + ey * o.0;
            match ey.signum() {
                1 => hi = hi.min(r.div_euclid(ey)),
                -1 => lo = lo.max(-(r.div_euclid(-ey))),
                _ if r < 0 => hi = lo - 1,
                _ => {}
            }
        }
        for x in lo..=hi {
            out[y as usize * w + x as usize] = true;
        }
    }
}

/// `on` plus every off pixel not 4-connected to the frame's border.
fn fill_holes(on: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut outside = vec![false; w * h];
    let mut stack: Vec<usize> = (0..w).flat_map(|x| [x, (h - 1) * w + x]).collect();
    stack.extend((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    while let Some(i) = stack.pop() {
        if on[i] || outside[i] {
            continue;
        }
        outside[i] = true;
        let (x, y) = (i % w, i / w);
        if x > 0 {
            stack.push(i - 1);
        }
        if x + 1 < w {
            stack.push(i + 1);
        }
        if y > 0 {
            stack.push(i - w);
        }
        if y + 1 < h {
            stack.push(i + w);
        }
    }
    outside.iter().map(|&o| !o).collect()
}

/// Squared Euclidean distance of every pixel to the nearest `feature` pixel (a large value
/// when there is none): two passes of the 1-D lower-envelope transform.
pub fn edt_sq(feature: &[bool], w: usize, h: usize) -> Vec<f32> {
    const INF: f32 = 1e12;
    let mut d: Vec<f32> = feature.iter().map(|&f| if f { 0.0 } else { INF }).collect();
    let mut buf = vec![0.0f32; w.max(h)];
    let mut out = vec![0.0f32; w.max(h)];
    for x in 0..w {
        for y in 0..h {
            buf[y] = d[y * w + x];
        }
        edt_1d(&buf[..h], &mut out[..h]);
        for y in 0..h {
            d[y * w + x] = out[y];
        }
    }
    for y in 0..h {
        buf[..w].copy_from_slice(&d[y * w..(y + 1) * w]);
        edt_1d(&buf[..w], &mut out[..w]);
        d[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
    }
    d
}

/// 1-D squared distance transform of sampled function `f` (Felzenszwalb & Huttenlocher 2012).
fn edt_1d(f: &[f32], out: &mut [f32]) {
    let n = f.len();
    let mut v = vec![0usize; n];
    let mut z = vec![0.0f64; n + 1];
    let mut k = 0usize;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let parabola = |q: usize, p: usize| {
        let (fq, fp) = (f64::from(f[q]), f64::from(f[p]));
        ((fq + (q * q) as f64) - (fp + (p * p) as f64)) / (2.0 * q as f64 - 2.0 * p as f64)
    };
    for q in 1..n {
        let mut s = parabola(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = parabola(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let dq = q as f64 - v[k] as f64;
        *o = (dq * dq + f64::from(f[v[k]])) as f32;
    }
}

/// The 4-connected neighbours of pixel `i` in a `w` x `h` raster (left, right, up, down), for
/// both flood fills above.
fn neighbours4(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (i % w, i / w);
    [
        (x > 0).then(|| i - 1),
        (x + 1 < w).then(|| i + 1),
        (y > 0).then(|| i - w),
        (y + 1 < h).then(|| i + w),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
#[path = "lung_field_tests.rs"]
mod tests;
