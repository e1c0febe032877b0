//! SHA-256 content hashes as lower-case hex: job keys, file names, model identities. The one
//! implementation for the daemon, the DICOM receiver and the screening CLI.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Lower-case hex of some bytes (a digest).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of some bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of everything `reader` yields, streamed in 64 KiB pieces: (hex, bytes read).
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), total))
}

/// SHA-256 of a file's content, streamed.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(sha256_reader(std::fs::File::open(path)?)?.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn streamed_and_whole_hashes_agree() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (h, n) = super::sha256_reader(&bytes[..]).expect("reads");
        assert_eq!((h.as_str(), n), (super::sha256_hex(&bytes).as_str(), 200_000));
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
