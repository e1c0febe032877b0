//! JPEG through libjpeg-turbo beyond the PIL corpus: the DICOM JPEG syntaxes give DCMTK's
//! pixels (each JPEG fixture is decompressed by DCMTK's `dcmdjpeg`, IJG 8/12/16-bit codecs, to
//! native pixel data, and both files must read to the same HU at every pixel; skipped, saying
//! so, where `dcmdjpeg` is not installed: `make test` installs Debian's dcmtk when run as
//! root), and JPEG streams the reader refuses, by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR, smallvec::smallvec};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

use super::{SliceFormat, SliceOptions, read_slices, read_slices_from_bytes};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// The first JPEG stream in a fixture's encapsulated pixel data.
fn dicom_stream(name: &str) -> Vec<u8> {
    OpenFileOptions::new()
        .open_file(fixture("slice").join(name))
        .expect("opens")
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .expect("encapsulated")
        .concat()
}

fn refusal(bytes: &[u8]) -> String {
    read_slices_from_bytes(bytes, "x", &SliceOptions::default())
        .expect_err("refused")
        .reason()
}

#[test]
fn jpeg_streams_the_reader_refuses_by_name() {
    // PIL reads 8-bit JPEG only ("cannot handle 12-bit layers"): so does the raster reader
    let twelve = dicom_stream("u12_jpeg_extended.dcm");
    assert_eq!(refusal(&twelve), "unsupported encoding: 12-bit JPEG");
    // a JPEG that ends early is truncated for PIL too
    let grey = std::fs::read(fixture("pil/grey_progressive_64x48.jpg")).expect("fixture");
    assert_eq!(
        refusal(&grey[..grey.len() / 2]),
        "corrupt: JPEG: Premature end of JPEG file"
    );
    // a colour JPEG in a MONOCHROME DICOM object: named, not converted
    let colour = std::fs::read(fixture("pil/ycc444_baseline_64x48.jpg")).expect("fixture");
    let mut obj = OpenFileOptions::new()
        .open_file(fixture("slice/u8_jpeg_baseline.dcm"))
        .expect("opens");
    for (tag, value) in [(tags::ROWS, 48), (tags::COLUMNS, 64)] {
        obj.put(DataElement::new(
            tag,
            VR::US,
            PrimitiveValue::U16(smallvec![value]),
        ));
    }
    let seq = PixelFragmentSequence::new(vec![], vec![colour]);
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).expect("write to memory");
    assert_eq!(
        refusal(&bytes),
        "unsupported encoding: 1.2.840.10008.1.2.4.50: frame 0: YCbCr JPEG for one sample per pixel"
    );
}

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
    let fixtures = fixture("slice");
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

#[test]
fn mutated_jpegs_decode_or_are_refused_never_crash() {
    // seeded byte flips and truncations of every corpus JPEG: each result is either a whole
    // image of the declared size or a named refusal
    let dir = fixture("pil");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg") && !p.to_string_lossy().contains("256x256"))
        .collect();
    files.sort();
    let (mut decoded, mut refused) = (0, 0);
    for path in files {
        let original = std::fs::read(&path).expect("jpeg");
        for _ in 0..40 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let i = 2 + (next() as usize) % (bytes.len() - 2);
                bytes[i] = next() as u8;
            }
            if next() % 4 == 0 {
                bytes.truncate(3 + (next() as usize) % (bytes.len() - 3));
            }
            match read_slices_from_bytes(&bytes, "x", &SliceOptions::default()) {
                Ok(s) => {
                    assert_eq!(s[0].rgb.len(), (s[0].width * s[0].height * 3) as usize);
                    decoded += 1;
                }
                Err(e) => {
                    let reason = e.reason();
                    assert!(
                        [
                            "corrupt: ",
                            "unsupported encoding: ",
                            "too large: ",
                            "unknown format"
                        ]
                        .iter()
                        .any(|p| reason.starts_with(p)),
                        "{}: {reason}",
                        path.display()
                    );
                    refused += 1;
                }
            }
        }
    }
    assert!(
        decoded > 100 && refused > 100,
        "{decoded} decoded, {refused} refused"
    );
}
