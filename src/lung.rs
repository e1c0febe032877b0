//! The original's overlay rendering (§2.8) of a slice's label mask and detection boxes. The lung
//! field itself is in [`crate::lung_field`].

use crate::slice::Slice;

/// The original's overlay (§2.8): `addWeighted(slice, 0.5, mask, 0.75)` saturating, GGO red,
/// consolidation blue (merged lesions red), with dashed boxes in the class colour.
pub fn overlay(s: &Slice, label_mask: &[u8], boxes: &[(Vec<f32>, i64)], class_names: &[String]) -> Vec<u8> {
    let (w, h) = (s.width as usize, s.height as usize);
    let colour = |m: u8| match m {
        crate::findings::MASK_CONSOLIDATION => [0u8, 0, 255],
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
    fn overlay_blends_lesion_colours() {
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
        let o = overlay(&s, &lm, &[], &["ggo".into(), "consolidation".into()]);
        assert_eq!(&o[(5 * 8 + 5) * 3..(5 * 8 + 5) * 3 + 3], &[0, 0, 191]);
    }
}
