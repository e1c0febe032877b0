//! UIDs of the objects ctmask writes.
//!
//! Root: `2.25`, the UUID-derived root of PS3.5 §B.2 (no registration needed; a UID is `2.25.`
//! followed by the decimal value of a 128-bit UUID, at most 44 characters). ctmask's UUIDs are
//! name-based: the first 128 bits of SHA-256 over `ctmask` and what the UID names (the source
//! series UID, the object kind, the report revision and time, the source instance), with the
//! RFC 9562 version (8, custom) and variant bits set. So a derived series UID is stable across
//! restarts and re-reports (the SEG of a series stays in one series), while each report revision
//! gets new SOP instance UIDs; no clock or random number is needed for uniqueness across
//! machines, since every input is itself a globally unique UID.

use sha2::{Digest, Sha256};

/// The UID root of every UID ctmask creates.
pub const UID_ROOT: &str = "2.25";

/// A `2.25.<decimal>` UID derived from `parts` (name-based UUID, version 8).
pub fn derived_uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"ctmask");
    for p in parts {
        // length-prefixed, so ("ab", "c") and ("a", "bc") differ
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0F) | 0x80; // version 8
    b[8] = (b[8] & 0x3F) | 0x80; // RFC 9562 variant
    format!("{UID_ROOT}.{}", u128::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_distinct_and_valid() {
        let a = derived_uid(&["1.2.3", "seg-series"]);
        assert_eq!(a, derived_uid(&["1.2.3", "seg-series"]));
        assert_ne!(a, derived_uid(&["1.2.3", "sr-series"]));
        assert_ne!(derived_uid(&["ab", "c"]), derived_uid(&["a", "bc"]));
        assert!(a.starts_with("2.25.") && a.len() <= 44, "{a}");
        let digits = &a[5..];
        assert!(digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0'));
        let v: u128 = digits.parse().expect("u128");
        assert_eq!((v >> 76) & 0xF, 8, "version nibble");
        assert_eq!((v >> 62) & 0b11, 0b10, "variant bits");
    }
}
