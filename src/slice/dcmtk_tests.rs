//! The DICOM JPEG syntaxes decoded by libjpeg-turbo give DCMTK's pixels: each JPEG fixture
//! is decompressed by DCMTK's `dcmdjpeg` (IJG 8/12/16-bit codecs) to native pixel data, and
//! both files must read to the same HU at every pixel. Skipped, saying so, where `dcmdjpeg` is
//! not installed (`make test` installs Debian's dcmtk when run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{SliceFormat, SliceOptions, read_slices};

fn wide() -> SliceOptions {
    SliceOptions {
        hu_clamp: (f32::MIN, f32::MAX),
        ..SliceOptions::default()
    }
}

#[test]
fn jpeg_syntaxes_decode_to_dcmtks_pixels() {
    if Command::new("dcmdjpeg").arg("--version").output().is_err() {
        eprintln!("SKIPPED: dcmdjpeg is not installed (make test installs dcmtk when run as root)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/slice");
    let mut files: Vec<PathBuf> = [
        "u8_jpeg_baseline.dcm",
        "u12_jpeg_extended.dcm",
        "u12_jpeg_lossless_sv6.dcm",
        "s16_jpeg_lossless_sv1.dcm",
    ]
    .iter()
    .map(|f| fixtures.join(f))
    .collect();
    let shared = root.join("../shared/data/dicom/ct_siemens_unsigned12_jpeg_lossless_badseq.dcm");
    if shared.exists() {
        files.push(shared);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for file in files {
        let name = file.file_name().expect("name").to_string_lossy().to_string();
        let native = tmp.path().join(&name);
        // a bare data set (-F): dcmdjpeg copies SOPInstanceUID into a new file meta, and the
        // shared file's anonymised UID is not a valid one
        let out = Command::new("dcmdjpeg")
            .arg("-F")
            .arg(&file)
            .arg(&native)
            .output()
            .expect("dcmdjpeg runs");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = read_slices(&file, &wide()).unwrap_or_else(|e| panic!("{e}"));
        let dcmtk = read_slices(&native, &wide()).unwrap_or_else(|e| panic!("{e}"));
        let SliceFormat::Dicom { transfer_syntax } = &ours[0].format else {
            panic!("{name}: not DICOM")
        };
        assert!(
            transfer_syntax.starts_with("1.2.840.10008.1.2.4."),
            "{name}: {transfer_syntax}"
        );
        assert_eq!(ours.len(), dcmtk.len(), "{name}");
        for (a, b) in ours.iter().zip(&dcmtk) {
            let (a, b) = (a.hu.as_ref().expect("hu"), b.hu.as_ref().expect("hu"));
            let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ,
                0,
                "{name}: {differ} of {} pixels differ from DCMTK's",
                a.len()
            );
        }
    }
}
