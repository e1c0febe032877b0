//! Result thumbnails: the overlay (or the slice) box-filtered down to at most
//! `THUMBNAIL_MAX_SIDE` pixels a side, small enough for the dashboard's half-block rendering.

use crate::protocol::Thumbnail;

/// Longest side of a result thumbnail, in pixels.
pub const THUMBNAIL_MAX_SIDE: u32 = 48;

/// Box-filters an RGB image down so that its longest side is at most `max_side`.
pub fn downsample(width: u32, height: u32, rgb: &[u8], max_side: u32) -> Option<Thumbnail> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || rgb.len() != w * h * 3 || max_side == 0 {
        return None;
    }
    let scale = (width.max(height) as f64 / max_side as f64).max(1.0);
    let tw = ((width as f64 / scale).round() as usize).max(1);
    let th = ((height as f64 / scale).round() as usize).max(1);
    let mut data = Vec::with_capacity(tw * th * 3);
    for ty in 0..th {
        let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
        for tx in 0..tw {
            let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
            let mut sum = [0u64; 3];
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = (y * w + x) * 3;
                    for c in 0..3 {
                        sum[c] += u64::from(rgb[p + c]);
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u64;
            data.extend(sum.iter().map(|s| (s / n) as u8));
        }
    }
    Some(Thumbnail {
        width: tw as u32,
        height: th as u32,
        channels: 3,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_downsample_and_carry_hex() {
        let mut rgb = vec![0u8; 4 * 4 * 3];
        rgb[..3].copy_from_slice(&[255, 0, 0]);
        let t = downsample(4, 4, &rgb, 2).expect("thumbnail");
        assert_eq!((t.width, t.height, t.data.len()), (2, 2, 12));
        assert_eq!(t.pixel(0, 0), Some([63, 0, 0]));
        assert_eq!(t.pixel(2, 0), None);
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains("\"3f0000"), "{json}");
        assert!(downsample(4, 4, &rgb[..5], 2).is_none());
        let grey = Thumbnail {
            width: 1,
            height: 1,
            channels: 1,
            data: vec![9],
        };
        assert_eq!(grey.pixel(0, 0), Some([9, 9, 9]));
    }
}
