//! The lung field of a slice, estimated from HU (or from the windowed grey level when the input
//! had no HU): air-like pixels (below -300 HU) that are not connected to the image border (the
//! air outside the body), plus the lesion pixels (consolidation is dense). Used for the fraction
//! of lung involved; an estimate, documented as such in reports.

use crate::slice::Slice;

/// HU below which a pixel counts as air-like (lung parenchyma and GGO are -900..-300).
pub const AIR_HU: f32 = -300.0;

/// `H*W` booleans: inside the lung field.
pub fn lung_field(s: &Slice, label_mask: &[u8]) -> Vec<bool> {
    let (w, h) = (s.width as usize, s.height as usize);
    let air: Vec<bool> = match &s.hu {
        Some(hu) => hu.iter().map(|&v| v < AIR_HU).collect(),
        None => {
            // grey g = 255 * (HU + 1350) / 1500 under the lung window
            let g_max = 255.0 * (AIR_HU + 1350.0) / 1500.0;
            s.rgb.chunks_exact(3).map(|p| (p[0] as f32) < g_max).collect()
        }
    };
    let mut outside = vec![false; w * h];
    let mut stack: Vec<usize> = Vec::new();
    for x in 0..w {
        stack.push(x);
        stack.push((h - 1) * w + x);
    }
    for y in 0..h {
        stack.push(y * w);
        stack.push(y * w + w - 1);
    }
    while let Some(i) = stack.pop() {
        if outside[i] || !air[i] {
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
    (0..w * h)
        .map(|i| (air[i] && !outside[i]) || label_mask.get(i).is_some_and(|&m| m != 0))
        .collect()
}

/// The original's overlay (§2.8): `addWeighted(slice, 0.5, mask, 0.75)` saturating, GGO red,
/// consolidation blue (merged lesions red), with dashed boxes in the class colour.
pub fn overlay(s: &Slice, label_mask: &[u8], boxes: &[(Vec<f32>, i64)], class_names: &[String]) -> Vec<u8> {
    let (w, h) = (s.width as usize, s.height as usize);
    let colour = |m: u8| match m {
        crate::structures::MASK_CONSOLIDATION => [0u8, 0, 255],
        0 => [0, 0, 0],
        _ => [255, 0, 0],
    };
    let mut out = vec![0u8; w * h * 3];
    for i in 0..w * h {
        let c = colour(label_mask.get(i).copied().unwrap_or(0));
        for ch in 0..3 {
            let v = s.rgb[i * 3 + ch] as f32 * 0.5 + c[ch] as f32 * 0.75;
            out[i * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    for (b, label) in boxes {
        let name = class_names
            .get((*label - 1).max(0) as usize)
            .map(String::as_str)
            .unwrap_or("");
        let c = if name == "consolidation" {
            [0, 0, 255]
        } else {
            [255, 0, 0]
        };
        let x0 = (b[0].max(0.0) as usize).min(w - 1);
        let y0 = (b[1].max(0.0) as usize).min(h - 1);
        let x1 = (b[2].max(0.0) as usize).min(w - 1);
        let y1 = (b[3].max(0.0) as usize).min(h - 1);
        let mut put = |x: usize, y: usize, k: usize| {
            if k % 10 < 6 {
                out[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
            }
        };
        for x in x0..=x1 {
            put(x, y0, x - x0);
            put(x, y1, x - x0);
        }
        for y in y0..=y1 {
            put(x0, y, y - y0);
            put(x1, y, y - y0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::{SliceFormat, SliceMeta};

    #[test]
    fn lung_is_enclosed_air_plus_lesions() {
        // 8x8: outside air ring, body wall, a 2x2 air pocket inside, one dense lesion pixel
        let (w, h) = (8usize, 8usize);
        let mut hu = vec![-1000.0f32; w * h];
        for y in 1..7 {
            for x in 1..7 {
                hu[y * w + x] = 40.0;
            }
        }
        for (y, x) in [(3, 3), (3, 4), (4, 3), (4, 4)] {
            hu[y * w + x] = -850.0;
        }
        let s = Slice {
            width: 8,
            height: 8,
            rgb: vec![0; 192],
            hu: Some(hu),
            format: SliceFormat::Png,
            meta: SliceMeta::default(),
        };
        let mut lm = vec![0u8; 64];
        lm[5 * 8 + 5] = 2;
        let lung = lung_field(&s, &lm);
        assert_eq!(lung.iter().filter(|&&v| v).count(), 5);
        assert!(!lung[0] && lung[3 * 8 + 3] && lung[5 * 8 + 5]);
        let o = overlay(&s, &lm, &[], &["ggo".into(), "consolidation".into()]);
        assert_eq!(&o[(5 * 8 + 5) * 3..(5 * 8 + 5) * 3 + 3], &[0, 0, 191]);
    }
}
