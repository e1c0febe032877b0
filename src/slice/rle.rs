//! A check of RLE Lossless pixel data (DICOM PS3.5 annex G) before dicom-rs decodes it.
//!
//! dicom-transfer-syntax-registry 0.10's RLE reader trusts the data: a fragment shorter than its
//! header, a segment count past the fragment's end, or a segment that decodes to fewer bytes than
//! Rows x Columns makes it index out of bounds and panic (found by fuzzing the slice reader). This
//! walks every fragment the way that reader will, without allocating, and refuses what would
//! make it panic, so a damaged file is rejected as corrupt with the reason instead.

/// Checks every fragment of RLE pixel data of `rows x cols` pixels with `samples` samples of
/// `bits_allocated` bits each. `Err` names the first problem found.
pub(super) fn check(
    fragments: &[Vec<u8>],
    rows: u32,
    cols: u32,
    samples: u32,
    bits_allocated: u32,
) -> Result<(), String> {
    if fragments.is_empty() {
        return Err("RLE pixel data without fragments".into());
    }
    let segments_needed = samples as usize * (bits_allocated as usize / 8).max(1);
    let plane = rows as u64 * cols as u64;
    for (f, fragment) in fragments.iter().enumerate() {
        let offsets = header(fragment).map_err(|e| format!("RLE fragment {f}: {e}"))?;
        if offsets.len() < segments_needed {
            // dicom-rs refuses this itself, cleanly; say it here with the numbers
            return Err(format!(
                "RLE fragment {f}: {} segments, {segments_needed} needed",
                offsets.len()
            ));
        }
        for s in 0..segments_needed {
            let start = offsets[s] as usize;
            let end = offsets.get(s + 1).map_or(fragment.len(), |&o| o as usize);
            let Some(segment) = fragment.get(start..end) else {
                return Err(format!("RLE fragment {f}: segment {s} lies outside the fragment"));
            };
            let decoded =
                packbits_len(segment).ok_or_else(|| format!("RLE fragment {f}: segment {s} is truncated"))?;
            if decoded < plane {
                return Err(format!(
                    "RLE fragment {f}: segment {s} decodes to {decoded} bytes, {plane} needed"
                ));
            }
        }
    }
    Ok(())
}

/// The segment offsets of an RLE header: a u32 count (1 to 15) and that many u32 offsets.
fn header(fragment: &[u8]) -> Result<Vec<u32>, String> {
    let word = |i: usize| {
        fragment
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let n = word(0).ok_or("shorter than the RLE header")? as usize;
    if !(1..=15).contains(&n) {
        return Err(format!("{n} segments (1 to 15 allowed)"));
    }
    (1..=n)
        .map(|i| word(i).ok_or_else(|| "shorter than its RLE header".to_string()))
        .collect()
}

/// The length a PackBits segment decodes to, reading it exactly as dicom-rs's PackBitsReader
/// does (a literal run cut short by the end counts in full there: it is cut here too); `None`
/// where that reader would fail for want of bytes.
fn packbits_len(segment: &[u8]) -> Option<u64> {
    let (mut i, mut out) = (0usize, 0u64);
    while i < segment.len() {
        let h = segment[i] as i8;
        i += 1;
        match h {
            -127..=-1 => {
                segment.get(i)?;
                i += 1;
                out += (1 - h as i64) as u64;
            }
            0..=127 => {
                let n = h as usize + 1;
                out += n.min(segment.len() - i) as u64;
                i += n;
            }
            -128 => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(segments: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        for (i, s) in segments.iter().enumerate() {
            f[4 + 4 * i..8 + 4 * i].copy_from_slice(&at.to_le_bytes());
            at += s.len() as u32;
        }
        for s in segments {
            f.extend_from_slice(s);
        }
        f
    }

    #[test]
    fn accepts_whole_segments_and_refuses_short_or_broken_ones() {
        // 2x2 pixels, 8-bit: one segment of 4 bytes: a repeat of 3 and a literal of 1
        let good = fragment(&[&[0xFE, 7, 0x00, 9]]);
        assert_eq!(check(std::slice::from_ref(&good), 2, 2, 1, 8), Ok(()));
        // 16-bit needs two segments
        assert!(
            check(std::slice::from_ref(&good), 2, 2, 1, 16)
                .unwrap_err()
                .contains("2 needed")
        );
        // decodes to 3 bytes of 4: what made dicom-rs panic
        let short = fragment(&[&[0xFE, 7]]);
        assert!(
            check(&[short], 2, 2, 1, 8)
                .unwrap_err()
                .contains("decodes to 3 bytes")
        );
        // a repeat run without its byte
        let cut = fragment(&[&[0xFD]]);
        assert!(check(&[cut], 2, 2, 1, 8).unwrap_err().contains("truncated"));
        // headers: too short, a silly count, an offset past the end
        assert!(check(&[vec![1, 0]], 2, 2, 1, 8).unwrap_err().contains("header"));
        let mut many = good.clone();
        many[0] = 200;
        assert!(check(&[many], 2, 2, 1, 8).unwrap_err().contains("200 segments"));
        let mut far = good.clone();
        far[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(check(&[far], 2, 2, 1, 8).unwrap_err().contains("outside"));
        assert!(check(&[], 2, 2, 1, 8).is_err());
        // every fragment (frame) is checked
        assert!(check(&[good.clone(), vec![0; 3]], 2, 2, 1, 8).is_err());
    }
}
