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
    // out = round(rgb * 0.5 + colour * 0.75) per channel, saturating; a colour channel is 0 or
    // 255, so two 256-entry tables hold every value
    let blend = |c: u8| -> [u8; 256] {
        std::array::from_fn(|v| (v as f32 * 0.5 + c as f32 * 0.75).round().clamp(0.0, 255.0) as u8)
    };
    let tables = [blend(0), blend(255)];
    let mut out = vec![0u8; w * h * 3];
    for (i, (o, px)) in out.chunks_exact_mut(3).zip(s.rgb.chunks_exact(3)).enumerate() {
        let c = colour(label_mask.get(i).copied().unwrap_or(0));
        for ch in 0..3 {
            o[ch] = tables[usize::from(c[ch] == 255)][usize::from(px[ch])];
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

    #[test]
    fn overlay_tables_give_the_blend_formula() {
        // every grey value under every label value, against the original's per-pixel formula
        let rgb: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let s = Slice {
            width: 256,
            height: 3,
            rgb: [rgb.clone(), rgb.clone(), rgb].concat(),
            hu: None,
            format: SliceFormat::Png,
            meta: SliceMeta::default(),
        };
        let lm: Vec<u8> = (0..256 * 3).map(|i| (i / 256) as u8).collect();
        let o = overlay(&s, &lm, &[], &[]);
        for i in 0..256 * 3 {
            let c: [f32; 3] = match lm[i] {
                2 => [0.0, 0.0, 255.0],
                0 => [0.0; 3],
                _ => [255.0, 0.0, 0.0],
            };
            for ch in 0..3 {
                let want = (s.rgb[i * 3 + ch] as f32 * 0.5 + c[ch] * 0.75)
                    .round()
                    .clamp(0.0, 255.0) as u8;
                assert_eq!(o[i * 3 + ch], want, "pixel {i} channel {ch}");
            }
        }
    }
}
