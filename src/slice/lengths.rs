//! A guard run before dicom-rs parses a buffer: walk the top-level data elements and refuse a
//! value whose declared length runs past the end of the bytes, so a forged length cannot make the
//! parser allocate gigabytes (found by the slice fuzzer). Only what can be walked cheaply is
//! checked: the file meta group, then the data set in implicit or explicit VR little endian or
//! explicit VR big endian (a deflated data set is inflated first, at most 64 times its size or
//! 512 MiB). Sequences and items are walked into (by VR, or in implicit VR by their items),
//! fragments of encapsulated pixel data skipped by their lengths, and headers read as dicom-rs
//! reads them (an unknown explicit VR has a 4-byte length, as UN).

/// Whether an explicit-VR header has a 2-byte length (PS3.5 table 7.1-2). Every other VR,
/// including an unknown one (dicom-rs reads those as UN), has 2 reserved bytes and a 4-byte
/// length: the walk must read headers exactly as the parser will.
fn short_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// An item tag (FFFE,E000) in little endian at the start of `v`.
fn starts_with_item(v: &[u8]) -> bool {
    v.starts_with(&[0xFE, 0xFF, 0x00, 0xE0])
}

#[derive(Clone, Copy, PartialEq)]
enum Syntax {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

/// Walk elements from `pos`, into sequences and items; Err(tag, length) for a value that does
/// not fit. Returns the position where the walk stopped and the transfer syntax UID seen (in the
/// meta group). Fragments of encapsulated pixel data are skipped by their lengths.
fn walk(
    b: &[u8],
    mut pos: usize,
    syntax: Syntax,
    stop_at: Option<usize>,
) -> Result<(usize, Option<String>), (u32, u64)> {
    let mut ts = None;
    let mut in_fragments = false;
    let be = syntax == Syntax::ExplicitBe;
    let u16_at = |p: usize| {
        if be {
            u16::from_be_bytes([b[p], b[p + 1]])
        } else {
            u16::from_le_bytes([b[p], b[p + 1]])
        }
    };
    let u32_at = |p: usize| {
        let x = [b[p], b[p + 1], b[p + 2], b[p + 3]];
        if be {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        }
    };
    while pos + 8 <= b.len() && stop_at.is_none_or(|s| pos < s) {
        let group = u16_at(pos);
        let elem = u16_at(pos + 2);
        let tag = (u32::from(group) << 16) | u32::from(elem);
        if group == 0xFFFE {
            let len = u64::from(u32_at(pos + 4));
            pos += 8;
            match elem {
                0xE000 if in_fragments => {
                    if pos as u64 + len > b.len() as u64 {
                        return Err((tag, len));
                    }
                    pos += len as usize;
                }
                0xE000 if len != 0xFFFF_FFFF && pos as u64 + len > b.len() as u64 => return Err((tag, len)),
                0xE0DD => in_fragments = false,
                _ => {} // an item's elements follow, or a delimiter
            }
            continue;
        }
        let (len, header, sq) = match syntax {
            // implicit VR: a sequence is known by its items (the parser knows it by dictionary)
            Syntax::ImplicitLe => {
                let len = u64::from(u32_at(pos + 4));
                let v = &b[(pos + 8).min(b.len())..];
                (
                    len,
                    8,
                    tag != 0x7FE0_0010 && (len == 0xFFFF_FFFF || starts_with_item(v)),
                )
            }
            _ => {
                let vr = &b[pos + 4..pos + 6];
                if short_vr(vr) {
                    (u64::from(u16_at(pos + 6)), 8, false)
                } else {
                    if pos + 12 > b.len() {
                        break;
                    }
                    let len = u64::from(u32_at(pos + 8));
                    // UN of undefined length is read as a sequence too
                    (len, 12, vr == b"SQ" || (len == 0xFFFF_FFFF && tag != 0x7FE0_0010))
                }
            }
        };
        let start = pos + header;
        if len == 0xFFFF_FFFF {
            // only encapsulated pixel data holds fragments; anything else holds items to walk
            in_fragments = !sq && tag == 0x7FE0_0010;
            pos = start;
            continue;
        }
        if start as u64 + len > b.len() as u64 {
            return Err((tag, len));
        }
        if tag == 0x0002_0010 {
            ts = Some(
                String::from_utf8_lossy(&b[start..start + len as usize])
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            );
        }
        // a defined-length explicit sequence: walk its items; anything else: skip the value
        pos = if sq { start } else { start + len as usize };
    }
    Ok((pos, ts))
}

/// The value of the (0002,0000) element at `start` and where the next element begins, read as
/// dicom-rs's meta parser reads it (explicit VR LE, any VR, length exactly 4); `None` where that
/// parser refuses the file itself.
fn meta_group_length(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let h = b.get(start..start + 8)?;
    if h[..4] != [0x02, 0x00, 0x00, 0x00] {
        return None;
    }
    let (len, value) = if short_vr(&h[4..6]) {
        (u32::from(u16::from_le_bytes([h[6], h[7]])), start + 8)
    } else {
        let l = b.get(start + 8..start + 12)?;
        (u32::from_le_bytes([l[0], l[1], l[2], l[3]]), start + 12)
    };
    let v = b.get(value..value + 4)?;
    (len == 4).then(|| (u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize, value + 4))
}

/// Check the declared lengths of a DICOM buffer: `start` is where the file meta (`DICM` + 4) or,
/// without meta, the data set begins; `bare_explicit` the syntax of a bare data set.
pub fn check(b: &[u8], start: usize, has_meta: bool, bare_explicit: bool) -> Result<(), String> {
    let bad = |(tag, len): (u32, u64)| {
        format!(
            "element ({:04X},{:04X}) declares {len} bytes but the file has fewer",
            tag >> 16,
            tag & 0xFFFF
        )
    };
    let (data_start, syntax) = if has_meta {
        // dicom-rs reads the meta group as (0002,0000) UL, then elements (whatever their tags)
        // until that many bytes are read; without that header it refuses the file itself
        // (whatever VR it declares: the header is read by that VR, and the length must be 4)
        let Some((group_length, first)) = meta_group_length(b, start) else {
            return Ok(());
        };
        let meta_end = first.saturating_add(group_length);
        let (end, ts) = walk(b, first, Syntax::ExplicitLe, Some(meta_end)).map_err(bad)?;
        let syntax = match ts.as_deref() {
            Some("1.2.840.10008.1.2") => Syntax::ImplicitLe,
            Some("1.2.840.10008.1.2.2") => Syntax::ExplicitBe,
            Some("1.2.840.10008.1.2.1.99") => return check_deflated(&b[end.min(b.len())..]),
            None => return Ok(()),
            Some(_) => Syntax::ExplicitLe,
        };
        (end, syntax)
    } else {
        (
            start,
            if bare_explicit {
                Syntax::ExplicitLe
            } else {
                Syntax::ImplicitLe
            },
        )
    };
    walk(b, data_start, syntax, None).map(|_| ()).map_err(bad)
}

/// Inflate a deflated explicit-VR-LE data set (bounded) and walk it.
fn check_deflated(compressed: &[u8]) -> Result<(), String> {
    use std::io::Read;
    let cap = (compressed.len() as u64 * 64).min(512 << 20);
    // first count what it inflates to, holding nothing: a bomb is refused without allocating
    // its output (a broken stream counts up to where it breaks)
    let mut counter = flate2::read::DeflateDecoder::new(compressed).take(cap + 1);
    let mut chunk = [0u8; 1 << 16];
    let mut inflated = 0u64;
    while let Ok(n @ 1..) = counter.read(&mut chunk) {
        inflated += n as u64;
    }
    if inflated > cap {
        return Err(format!("deflated data set inflates to more than {cap} bytes"));
    }
    let mut out = Vec::with_capacity(inflated as usize);
    let mut reader = flate2::read::DeflateDecoder::new(compressed).take(inflated);
    // a broken stream still has its readable start walked: the parser reads that far too
    let _ = reader.read_to_end(&mut out);
    walk(&out, 0, Syntax::ExplicitLe, None)
        .map(|_| ())
        .map_err(|(tag, len)| {
            format!(
                "element ({:04X},{:04X}) declares {len} bytes but the data set has fewer",
                tag >> 16,
                tag & 0xFFFF
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_length_is_refused_and_real_files_pass() {
        // explicit VR LE element (0028,1052) DS with a 2-byte length that fits, then an OB with a
        // forged 4-byte length
        let mut b = vec![0x28, 0x00, 0x52, 0x10, b'D', b'S', 2, 0, b'1', b' '];
        assert!(check(&b, 0, false, true).is_ok());
        b.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0x7C, 0x5A, 0x7D, 0x7C]);
        let e = check(&b, 0, false, true).unwrap_err();
        assert!(e.contains("(7FE0,0010)"), "{e}");
        let dir = crate::test_support::shared_dicom_dir();
        for f in std::fs::read_dir(dir).unwrap().flatten() {
            if f.path().extension().is_some_and(|x| x == "dcm") {
                let bytes = std::fs::read(f.path()).unwrap();
                assert!(check(&bytes, 132, true, false).is_ok(), "{:?}", f.path());
            }
        }
    }
}
