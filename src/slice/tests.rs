//! Reader tests over the real DICOM files in `../shared/data/dicom/`, the transfer-syntax
//! fixtures in `tests/fixtures/slice/` (expected HU from pydicom, see make_fixtures.py) and
//! DICOM objects edited in memory for each refusal.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR, smallvec::smallvec};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use super::*;

/// `../shared/data/dicom` next to the crate (or next to its parent for scratch crates).
fn shared_dicom() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("../shared/data/dicom"),
        root.join("../../shared/data/dicom"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("shared/data/dicom must sit beside the repository")
}

fn fixtures() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("tests/fixtures/slice"),
        root.join("../../main/tests/fixtures/slice"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .expect("tests/fixtures/slice must exist")
}

fn wide() -> SliceOptions {
    SliceOptions {
        hu_clamp: (-32768.0, 32767.0),
        ..SliceOptions::default()
    }
}

fn hu_at(s: &Slice, row: usize, col: usize) -> f32 {
    s.hu.as_ref().expect("dicom slice has HU")[row * s.width as usize + col]
}

fn reason_of(bytes: &[u8]) -> String {
    read_slices_from_bytes(bytes, "x", &SliceOptions::default())
        .expect_err("must be refused")
        .reason()
}

#[test]
fn lung_window_known_values() {
    let w = |hu| lung_window(hu, -600.0, 1500.0);
    assert_eq!(w(-1350.0), 0);
    assert_eq!(w(-3024.0), 0);
    assert_eq!(w(-1250.0), 17); // exactly 17.0: no float undershoot
    assert_eq!(w(-1000.0), 59); // 59.5
    assert_eq!(w(-600.0), 127); // 127.5
    assert_eq!(w(149.0), 254);
    assert_eq!(w(150.0), 255);
    assert_eq!(w(3071.0), 255);
    assert_eq!(w(f32::NAN), 0);
    // every integer HU agrees with the integer form of the formula
    for hu in -1400..200 {
        let exact = ((255 * (hu + 1350)).clamp(0, 255 * 1500) / 1500) as u8;
        assert_eq!(w(hu as f32), exact, "hu {hu}");
    }
}

#[test]
fn real_files_screened_or_rejected_as_readme_says() {
    let dir = shared_dicom();
    let cases = [
        (
            "chest_ct1_128_crop_explicit_le.dcm",
            Ok((128, "1.2.840.10008.1.2.1")),
        ),
        (
            "ct_siemens_unsigned12_jpeg_lossless_badseq.dcm",
            Ok((512, "1.2.840.10008.1.2.4.70")),
        ),
        ("head_ct_693_j2k_lossy.dcm", Ok((512, "1.2.840.10008.1.2.4.91"))),
        ("mr_64_explicit_le.dcm", Err("not CT: modality MR")),
        ("us_rgb_explicit_big_endian.dcm", Err("not CT: modality US")),
        ("seg_liver_1bit_1frame.dcm", Err("not an image: modality SEG")),
    ];
    for (name, want) in cases {
        let path = dir.join(name);
        let got = read_slices(&path, &SliceOptions::default());
        match (want, got) {
            (Ok((size, ts)), Ok(slices)) => {
                assert_eq!(slices.len(), 1, "{name}");
                let s = &slices[0];
                assert_eq!(
                    (s.width, s.height, s.rgb.len()),
                    (size, size, (size * size * 3) as usize)
                );
                let transfer_syntax = ts.to_string();
                assert_eq!(s.format, SliceFormat::Dicom { transfer_syntax }, "{name}");
            }
            (Err(reason), Err(e)) => {
                assert_eq!(e.reason(), reason, "{name}");
                assert_eq!(e.to_string(), format!("{}: {reason}", path.display()));
            }
            (want, got) => panic!("{name}: wanted {want:?}, got {:?}", got.map(|v| v.len())),
        }
    }
}

#[test]
fn real_files_hu_match_pydicom() {
    let dir = shared_dicom();
    // (file, [(row, col, HU)]) from pydicom 3.0 + pylibjpeg: stored * slope + intercept
    type Pixels = &'static [(usize, usize, f32)];
    let cases: [(&str, Pixels); 3] = [
        (
            "chest_ct1_128_crop_explicit_le.dcm",
            &[
                (0, 0, -849.0),
                (10, 100, 203.0),
                (64, 64, 904.0),
                (100, 20, 19.0),
                (127, 127, -115.0),
            ],
        ),
        (
            "ct_siemens_unsigned12_jpeg_lossless_badseq.dcm",
            &[
                (0, 0, 58.0),
                (10, 100, 43.0),
                (256, 256, 202.0),
                (300, 120, 80.0),
                (511, 511, -965.0),
            ],
        ),
        (
            "head_ct_693_j2k_lossy.dcm",
            &[
                (0, 0, -3040.0),
                (127, 127, -956.0),
                (256, 256, 32.0),
                (300, 120, -856.0),
            ],
        ),
    ];
    for (name, pixels) in cases {
        let s = &read_slices(&dir.join(name), &wide()).expect("screened")[0];
        for &(r, c, hu) in pixels {
            assert_eq!(hu_at(s, r, c), hu, "{name} ({r},{c})");
        }
    }
    // the default clamp bounds the lossy J2K overshoot, and the window follows the clamped HU
    let head =
        &read_slices(&dir.join("head_ct_693_j2k_lossy.dcm"), &SliceOptions::default()).expect("screened")[0];
    assert_eq!(hu_at(head, 0, 0), -1024.0);
    let hu = head.hu.as_ref().expect("hu");
    assert!(hu.iter().all(|&h| (-1024.0..=3071.0).contains(&h)));
    let i = 256 * 512 + 256;
    assert_eq!(head.rgb[3 * i], lung_window(32.0, -600.0, 1500.0));
}

#[test]
fn real_chest_meta_has_uids_and_geometry_but_no_patient() {
    let s = read_slices(
        &shared_dicom().join("chest_ct1_128_crop_explicit_le.dcm"),
        &SliceOptions::default(),
    )
    .expect("screened")
    .remove(0);
    let m = &s.meta;
    assert_eq!(
        m.study_uid.as_deref(),
        Some("1.3.6.1.4.1.5962.1.2.1.20040119072730.12322")
    );
    assert_eq!(m.instance_number, Some(1));
    assert_eq!(m.slice_location, Some(-77.2040634155));
    assert_eq!(m.image_position, Some([-158.135803, -179.035797, -75.699997]));
    assert_eq!(m.pixel_spacing, Some([0.661468, 0.661468]));
    assert_eq!(m.slice_thickness, Some(5.0));
    assert_eq!(m.frame, None);
    assert!(m.series_uid.is_some() && m.sop_uid.is_some());
}

#[test]
fn every_transfer_syntax_fixture_decodes_to_pydicom_hu() {
    let dir = fixtures();
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("expected.txt");
    let mut seen = Vec::new();
    for line in expected.lines() {
        let mut parts = line.split_whitespace();
        let (name, ts) = (parts.next().expect("name"), parts.next().expect("ts"));
        seen.push(ts.to_string());
        let s = &read_slices(&dir.join(name), &wide()).unwrap_or_else(|e| panic!("{e}"))[0];
        assert_eq!(
            s.format,
            SliceFormat::Dicom {
                transfer_syntax: ts.to_string()
            }
        );
        // lossy codecs: our decoders may round differently from libjpeg/openjpeg by a level
        let tolerance = match ts {
            // the JPEG syntaxes, decoded by libjpeg-turbo: pydicom's values exactly (the
            // baseline fixture's intercept is fractional and expected.txt rounds to integers)
            "1.2.840.10008.1.2.4.50" => 0.5,
            "1.2.840.10008.1.2.4.51" => 0.0,
            "1.2.840.10008.1.2.4.81" | "1.2.840.10008.1.2.4.91" => 1.0,
            _ => 0.0,
        };
        for pixel in parts {
            let (rc, hu) = pixel.split_once('=').expect("r,c=hu");
            let (r, c) = rc.split_once(',').expect("r,c");
            let (r, c, hu): (usize, usize, f32) =
                (r.parse().unwrap(), c.parse().unwrap(), hu.parse().unwrap());
            let got = hu_at(s, r, c);
            assert!((got - hu).abs() <= tolerance, "{name} ({r},{c}): {got} vs {hu}");
        }
    }
    for ts in DECODED_TRANSFER_SYNTAXES {
        assert!(seen.iter().any(|s| s == ts), "no fixture for {ts}");
    }
}

// ---- refusals and edge cases on objects edited in memory ----

fn chest() -> DefaultDicomObject {
    OpenFileOptions::new()
        .open_file(shared_dicom().join("chest_ct1_128_crop_explicit_le.dcm"))
        .expect("chest CT opens")
}

fn to_bytes(obj: &DefaultDicomObject) -> Vec<u8> {
    let mut out = Vec::new();
    obj.write_all(&mut out).expect("write to memory");
    out
}

fn put_str(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_u16(obj: &mut InMemDicomObject, tag: dicom_core::Tag, value: u16) {
    obj.put(DataElement::new(
        tag,
        VR::US,
        PrimitiveValue::U16(smallvec![value]),
    ));
}

fn set_pixels(obj: &mut InMemDicomObject, values: &[u16]) {
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(values.into()),
    ));
}

fn chest_stored() -> Vec<u16> {
    let obj = chest();
    obj.get(tags::PIXEL_DATA)
        .expect("pixels")
        .to_bytes()
        .expect("bytes")
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The chest CT with ImageType `image_type`, GantryDetectorTilt `gantry` (if any) and its
/// columns rotated by `degrees` about the patient's left-right axis.
fn tilted_chest(degrees: f64, image_type: &str, gantry: Option<f64>) -> Vec<u8> {
    let (s, c) = degrees.to_radians().sin_cos();
    let mut obj = chest();
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, image_type);
    put_str(
        &mut obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &format!("1\\0\\0\\0\\{c:.6}\\{s:.6}"),
    );
    match gantry {
        Some(g) => put_str(&mut obj, tags::GANTRY_DETECTOR_TILT, VR::DS, &format!("{g}")),
        None => {
            obj.remove_element(tags::GANTRY_DETECTOR_TILT);
        }
    }
    to_bytes(&obj)
}

fn orientation_reason(orientation: &str, image_type: &str) -> String {
    let mut obj = chest();
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, image_type);
    put_str(&mut obj, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, orientation);
    reason_of(&to_bytes(&obj))
}

#[test]
fn localizer_not_axial_and_tilt_tolerance() {
    let mut obj = chest();
    put_str(&mut obj, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\LOCALIZER");
    assert_eq!(reason_of(&to_bytes(&obj)), "localizer image");

    let opts = SliceOptions::default();
    // within the axial tolerance: screened, no tilt reported
    let near = read_slices_from_bytes(&tilted_chest(5.0, "DERIVED\\PRIMARY", None), "t", &opts).unwrap();
    assert_eq!(near[0].meta.gantry_tilt_deg, None);

    let mut obj = chest();
    obj.remove_element(tags::IMAGE_ORIENTATION_PATIENT);
    assert!(read_slices_from_bytes(&to_bytes(&obj), "o", &SliceOptions::default()).is_ok());
}

#[test]
fn tilted_gantry_axial_is_screened_with_its_tilt() {
    let opts = SliceOptions::default();
    let tilt_of = |bytes: &[u8]| {
        let s = read_slices_from_bytes(bytes, "t", &opts).expect("a tilted axial acquisition is screened");
        s[0].meta.gantry_tilt_deg.expect("tilt reported")
    };
    // the head CT of the issue: ORIGINAL\PRIMARY\AXIAL, GantryDetectorTilt -22, columns
    // rotated by the same angle
    let t = tilt_of(&tilted_chest(-22.0, "ORIGINAL\\PRIMARY\\AXIAL", Some(-22.0)));
    assert!((t + 22.0).abs() < 1e-3, "{t}");
    // GantryDetectorTilt alone (vendors sign it either way) or AXIAL alone is evidence enough
    let t = tilt_of(&tilted_chest(15.0, "ORIGINAL\\PRIMARY\\OTHER", Some(-15.0)));
    assert!((t - 15.0).abs() < 1e-3, "{t}");
    let t = tilt_of(&tilted_chest(12.0, "ORIGINAL\\PRIMARY\\AXIAL", None));
    assert!((t - 12.0).abs() < 1e-3, "{t}");
    // pixels and HU are those of the untilted slice
    let plain = read_slices_from_bytes(&to_bytes(&chest()), "p", &opts).unwrap();
    let tilted = read_slices_from_bytes(
        &tilted_chest(-22.0, "ORIGINAL\\PRIMARY\\AXIAL", Some(-22.0)),
        "t",
        &opts,
    )
    .unwrap();
    assert_eq!(plain[0].hu, tilted[0].hu);
}

#[test]
fn reformats_and_other_planes_stay_refused_with_their_reason() {
    // the same 22 degrees as an oblique reformat (DERIVED) is not an acquisition
    let e = read_slices_from_bytes(
        &tilted_chest(-22.0, "DERIVED\\PRIMARY\\REFORMATTED", Some(-22.0)),
        "r",
        &SliceOptions::default(),
    )
    .expect_err("oblique reformat");
    assert_eq!(e.reason(), "not axial: oblique reformat");
    // a tilt GantryDetectorTilt contradicts, without AXIAL: refused
    let e = read_slices_from_bytes(
        &tilted_chest(22.0, "ORIGINAL\\PRIMARY\\OTHER", Some(5.0)),
        "c",
        &SliceOptions::default(),
    )
    .expect_err("contradicting tilt");
    assert_eq!(e.reason(), "not axial: tilted plane");
    // beyond max_gantry_tilt
    let strict = SliceOptions {
        max_gantry_tilt: 20.0,
        ..SliceOptions::default()
    };
    let bytes = tilted_chest(-22.0, "ORIGINAL\\PRIMARY\\AXIAL", Some(-22.0));
    assert!(read_slices_from_bytes(&bytes, "s", &strict).is_err());
    let coronal = orientation_reason("1\\0\\0\\0\\0\\-1", "DERIVED\\PRIMARY\\REFORMATTED");
    assert_eq!(coronal, "not axial: coronal");
    // an original coronal acquisition is still coronal
    assert_eq!(
        orientation_reason("1\\0\\0\\0\\0\\-1", "ORIGINAL\\PRIMARY\\AXIAL"),
        "not axial: coronal"
    );
    assert_eq!(
        orientation_reason("0\\1\\0\\0\\0\\-1", "ORIGINAL\\PRIMARY"),
        "not axial: sagittal"
    );
    let oblique = orientation_reason("0.8\\0.6\\0\\0\\0.6\\-0.8", "DERIVED\\PRIMARY");
    assert_eq!(oblique, "not axial: oblique (coronal)");
}

/// `obj` rewritten with every element of its data set (pixel data included) as VR UN, the
/// values encoded as Implicit VR Little Endian would hold them (PS3.5 6.2.2), with numbers in
/// the byte order of `ts` as pydicom reads them; written with transfer syntax `ts`.
fn all_un(obj: &DefaultDicomObject, ts: &str) -> Vec<u8> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::{TransferSyntaxRegistry, entries};
    let implicit = TransferSyntaxRegistry
        .get(entries::IMPLICIT_VR_LITTLE_ENDIAN.uid())
        .unwrap();
    let big_endian = ts == "1.2.840.10008.1.2.2";
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid(obj.meta().media_storage_sop_class_uid().trim_end_matches('\0'))
        .media_storage_sop_instance_uid(obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0'))
        .build()
        .unwrap();
    let mut file = DefaultDicomObject::new_empty_with_meta(meta);
    for e in obj.iter() {
        let tag = e.header().tag;
        let mut one = InMemDicomObject::new_empty();
        one.put(e.clone());
        let mut bytes = Vec::new();
        one.write_dataset_with_ts(&mut bytes, implicit).unwrap();
        let undefined = bytes[4..8] == [0xFF; 4];
        let mut value = bytes[8..].to_vec();
        if undefined {
            value.truncate(value.len() - 8); // the sequence delimitation item
        }
        let unit = match e.vr() {
            VR::US | VR::SS | VR::OW | VR::AT => 2,
            VR::UL | VR::SL | VR::FL | VR::OL | VR::OF => 4,
            VR::FD | VR::OD => 8,
            _ => 1,
        };
        if big_endian && unit > 1 {
            value.chunks_exact_mut(unit).for_each(<[u8]>::reverse);
        }
        file.put(DataElement::new(tag, VR::UN, PrimitiveValue::from(value)));
    }
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes
}

#[test]
fn every_element_as_vr_un_reads_as_the_original_in_both_byte_orders() {
    let original = read_slices_from_bytes(&to_bytes(&chest()), "o", &wide())
        .unwrap()
        .remove(0);
    for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"] {
        let bytes = all_un(&chest(), ts);
        // the file really holds UN elements: Modality's bytes read as numbers without the pass
        let raw = OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Always)
            .from_reader(std::io::Cursor::new(&bytes))
            .unwrap();
        assert_eq!(raw.get(tags::MODALITY).unwrap().vr(), VR::UN);
        let s = read_slices_from_bytes(&bytes, "un", &wide())
            .unwrap_or_else(|e| panic!("{ts}: {}", e.reason()))
            .remove(0);
        assert_eq!(s.hu, original.hu, "{ts}: HU");
        assert_eq!(s.rgb, original.rgb, "{ts}: model input");
        assert_eq!(s.meta, original.meta, "{ts}: report metadata");
    }
}

#[test]
fn no_pixel_data_too_large_and_unsupported_encoding() {
    let mut obj = chest();
    obj.remove_element(tags::PIXEL_DATA);
    assert_eq!(reason_of(&to_bytes(&obj)), "no pixel data");

    let small = SliceOptions {
        max_pixels: (100, 100),
        ..SliceOptions::default()
    };
    let e = read_slices_from_bytes(&to_bytes(&chest()), "big", &small).expect_err("too large");
    assert_eq!(e.reason(), "too large: 128x128 exceeds limit 100x100");

    // same byte length as 1.2.840.10008.1.2.1, so the meta group length stays right
    let mut bytes = to_bytes(&chest());
    let at = bytes
        .windows(20)
        .position(|w| w == b"1.2.840.10008.1.2.1\0")
        .expect("ts uid");
    bytes[at..at + 20].copy_from_slice(b"1.2.840.10008.1.2.9\0");
    let reason = reason_of(&bytes);
    assert!(reason.starts_with("unsupported encoding: "), "{reason}");
    assert!(reason.contains("1.2.840.10008.1.2.9"), "{reason}");
}

#[test]
fn stored_values_are_masked_and_sign_extended() {
    let stored = chest_stored(); // signed 16-bit, all positive here
    // unsigned 12-bit with junk in the 4 unused high bits
    let mut obj = chest();
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    put_u16(&mut obj, tags::BITS_STORED, 12);
    put_u16(&mut obj, tags::HIGH_BIT, 11);
    set_pixels(&mut obj, &stored.iter().map(|v| v | 0xA000).collect::<Vec<_>>());
    let s = &read_slices_from_bytes(&to_bytes(&obj), "u12", &wide()).expect("ok")[0];
    assert_eq!(hu_at(s, 64, 64), 904.0);

    // signed 12-bit: -5 stored as 0x0FFB, intercept 0
    let mut obj = chest();
    put_u16(&mut obj, tags::BITS_STORED, 12);
    put_u16(&mut obj, tags::HIGH_BIT, 11);
    put_str(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
    set_pixels(&mut obj, &vec![0x0FFB; 128 * 128]);
    let s = &read_slices_from_bytes(&to_bytes(&obj), "s12", &wide()).expect("ok")[0];
    assert_eq!(hu_at(s, 3, 3), -5.0);
}

#[test]
fn dicom_without_preamble_or_without_meta_reads_the_same() {
    let full = to_bytes(&chest());
    let want = read_slices_from_bytes(&full, "full", &wide()).expect("full");
    let no_preamble = read_slices_from_bytes(&full[128..], "np", &wide()).expect("no preamble");
    assert_eq!(no_preamble[0].hu, want[0].hu);

    for ts in [
        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    ] {
        let mut bare = Vec::new();
        chest()
            .write_dataset_with_ts(&mut bare, &ts)
            .expect("write data set");
        let got = read_slices_from_bytes(&bare, "bare", &wide()).expect("bare data set");
        assert_eq!(got[0].hu, want[0].hu, "{}", ts.uid());
    }
}

#[test]
fn enhanced_multiframe_keeps_axial_frames_with_their_geometry() {
    let stored = chest_stored();
    let mut obj = chest();
    let mut all = stored.clone();
    all.extend(stored.iter().map(|v| v + 10));
    all.extend(stored.iter().map(|v| v + 20));
    set_pixels(&mut obj, &all);
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, "3");
    for tag in [
        tags::IMAGE_ORIENTATION_PATIENT,
        tags::IMAGE_POSITION_PATIENT,
        tags::RESCALE_INTERCEPT,
        tags::RESCALE_SLOPE,
    ] {
        obj.remove_element(tag);
    }
    let item = |seq, inner: InMemDicomObject| {
        DataElement::new(seq, VR::SQ, dicom_core::value::DataSetSequence::from(vec![inner]))
    };
    let frame_group = |z: f64, orientation: &str| {
        let mut pos = InMemDicomObject::new_empty();
        put_str(
            &mut pos,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("0\\0\\{z}"),
        );
        let mut ori = InMemDicomObject::new_empty();
        put_str(&mut ori, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, orientation);
        InMemDicomObject::from_element_iter([
            item(tags::PLANE_POSITION_SEQUENCE, pos),
            item(tags::PLANE_ORIENTATION_SEQUENCE, ori),
        ])
    };
    let per_frame = vec![
        frame_group(-10.0, "1\\0\\0\\0\\1\\0"),
        frame_group(-15.0, "1\\0\\0\\0\\0\\-1"),
        frame_group(-20.0, "1\\0\\0\\0\\1\\0"),
    ];
    obj.put(DataElement::new(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(per_frame),
    ));
    let mut pvt = InMemDicomObject::new_empty();
    put_str(&mut pvt, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put_str(&mut pvt, tags::RESCALE_SLOPE, VR::DS, "1");
    let shared = InMemDicomObject::from_element_iter([item(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, pvt)]);
    obj.put(item(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, shared));

    let slices = read_slices_from_bytes(&to_bytes(&obj), "mf", &wide()).expect("multi-frame");
    let frames: Vec<_> = slices.iter().map(|s| s.meta.frame).collect();
    assert_eq!(frames, [Some(0), Some(2)]); // frame 1 is coronal
    assert_eq!(slices[1].meta.image_position, Some([0.0, 0.0, -20.0]));
    assert_eq!(hu_at(&slices[0], 64, 64), 904.0);
    assert_eq!(hu_at(&slices[1], 64, 64), 924.0);
}

#[test]
fn truncated_empty_and_garbage_files_give_clear_errors() {
    let full = to_bytes(&chest());
    assert_eq!(reason_of(&[]), "empty file");
    assert_eq!(
        reason_of(b"hello, not an image"),
        "unknown format: not PNG, JPEG or DICOM"
    );
    for cut in [140, 600, full.len() - 100] {
        let reason = reason_of(&full[..cut]);
        assert!(reason.starts_with("corrupt: "), "cut {cut}: {reason}");
    }
    let png = raster_png();
    assert!(reason_of(&png[..png.len() / 2]).starts_with("corrupt: "));
    assert!(reason_of(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).starts_with("corrupt: "));

    let missing = Path::new("/nonexistent/slice.dcm");
    let e = read_slices(missing, &SliceOptions::default()).expect_err("missing file");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/slice.dcm: cannot read file"),
        "{e}"
    );
    assert!(e.rejection().is_none());
}

fn raster_png() -> Vec<u8> {
    let img = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([(x * 16 + y) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

#[test]
fn format_comes_from_content_not_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let png_as_dcm = dir.path().join("slice.dcm");
    std::fs::write(&png_as_dcm, raster_png()).expect("write");
    let s = &read_slices(&png_as_dcm, &SliceOptions::default()).expect("png read")[0];
    assert_eq!(
        (s.format.clone(), s.width, s.height, s.hu.is_none()),
        (SliceFormat::Png, 16, 8, true)
    );
    assert_eq!(&s.rgb[3 * 17..3 * 18], &[17, 17, 17]); // x=1, y=1

    let dcm_as_png = dir.path().join("slice.png");
    std::fs::write(&dcm_as_png, to_bytes(&chest())).expect("write");
    let s = &read_slices(&dcm_as_png, &SliceOptions::default()).expect("dicom read")[0];
    assert!(matches!(s.format, SliceFormat::Dicom { .. }));
}

/// Why the reader refuses `tests/fixtures/slice/forged/<name>` (a file the fuzzer found).
fn forged_refusal(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/slice/forged")
        .join(name);
    read_slices(&path, &SliceOptions::default())
        .expect_err(name)
        .reason()
}

#[test]
fn forged_value_lengths_are_refused_before_parsing() {
    // found by fuzzing: a declared length of 2 GB that made dicom-rs allocate it before reading
    // and one with a non-standard VR (read by dicom-rs as UN, with a 4-byte length) whose
    // nested sequences hide a 2 GB length
    // and a deflated data set whose stream breaks after a forged length, and a file meta group
    // with a foreign tag (dicom-rs reads the meta by its group length, so must the guard)
    for name in [
        "huge_value_length.dcm",
        "unknown_vr_nested_length.dcm",
        "deflate_broken_stream_length.dcm",
        "meta_odd_tag_length.dcm",
        "meta_length_odd_vr_deflate.dcm",
    ] {
        let reason = forged_refusal(name);
        assert!(
            reason.starts_with("corrupt") && reason.contains("declares"),
            "{name}: {reason}"
        );
    }
}

#[test]
fn rle_segments_that_decode_short_are_refused_not_a_panic() {
    // found by fuzzing: an RLE segment decoding to fewer than Rows x Columns bytes made
    // dicom-rs 0.10 index out of bounds; rle.rs checks the fragments first
    let reason = forged_refusal("rle_short_segment.dcm");
    assert!(
        reason.starts_with("corrupt") && reason.contains("RLE"),
        "{reason}"
    );
}

#[test]
fn a_decoder_panic_is_a_refusal_not_a_crash() {
    // found by fuzzing: a JPEG 2000 codestream larger than Rows x Columns makes dicom-rs 0.10's
    // adapter slice out of bounds; the reader turns the panic into a refusal naming the decoder
    let reason = forged_refusal("j2k_codestream_larger.dcm");
    assert!(
        reason.starts_with("corrupt: pixel data: the decoder failed"),
        "{reason}"
    );
}

#[test]
fn twelve_bit_jpeg_extended_frames_fragments_and_refusals() {
    // the 12-bit JPEG Extended fixture, whose stream libjpeg-turbo decodes
    let path = fixtures().join("u12_jpeg_extended.dcm");
    let single = read_slices(&path, &wide()).expect("decodes").remove(0);
    let open = || OpenFileOptions::new().open_file(&path).expect("opens");
    let stream: Vec<u8> = open()
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .expect("encapsulated")
        .concat();
    let with_pixels = |frames: &str, offsets: Vec<u32>, fragments: Vec<Vec<u8>>| {
        let mut obj = open();
        put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, frames);
        let seq = dicom_core::value::PixelFragmentSequence::new(offsets, fragments);
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, seq));
        read_slices_from_bytes(&to_bytes(&obj), "x", &wide())
    };
    // two frames: one fragment each, by the offset table, split by SOI markers
    // even lengths: the writer pads odd fragments, which would corrupt a split stream
    let half = (stream.len() / 2) & !1;
    let (a, b) = (stream[..half].to_vec(), stream[half..].to_vec());
    let frag_len = 8 + stream.len() as u32;
    for (offsets, fragments) in [
        (vec![], vec![stream.clone(), stream.clone()]),
        (vec![0, frag_len], vec![stream.clone(), stream.clone()]),
        (
            vec![0, 16 + stream.len() as u32],
            vec![a.clone(), b.clone(), a.clone(), b.clone()],
        ),
        (vec![], vec![a.clone(), b.clone(), a.clone(), b.clone()]),
    ] {
        let slices =
            with_pixels("2", offsets.clone(), fragments).unwrap_or_else(|e| panic!("{offsets:?}: {e}"));
        assert_eq!(slices.len(), 2);
        assert!(slices.iter().all(|s| s.hu == single.hu && s.rgb == single.rgb));
    }
    // refusals name the frame and the reason
    let reason = |r: Result<Vec<Slice>, SliceError>| r.expect_err("refused").reason();
    let truncated = stream[..stream.len() - 200].to_vec();
    assert_eq!(
        reason(with_pixels("2", vec![], vec![stream.clone(), truncated])),
        "corrupt: pixel data: frame 1: JPEG: Premature end of JPEG file"
    );
    assert_eq!(
        reason(with_pixels("2", vec![0, 5], vec![stream.clone(), stream.clone()])),
        "corrupt: pixel data: offset table entry 5 is not the start of a fragment"
    );
    assert_eq!(
        reason(with_pixels("3", vec![], vec![stream.clone(), stream.clone()])),
        "corrupt: pixel data: 2 fragments for 3 frames and no offset table"
    );
    // a sequential stream relabelled progressive: libjpeg-turbo's own error names the cause
    let mut progressive = stream.clone();
    let sof = progressive
        .windows(2)
        .position(|w| w == [0xFF, 0xC1])
        .expect("SOF1");
    progressive[sof + 1] = 0xC2;
    assert_eq!(
        reason(with_pixels("1", vec![], vec![progressive])),
        "corrupt: pixel data: frame 0: JPEG: Invalid progressive/lossless parameters Ss=0 Se=63 Ah=0 Al=0"
    );
    let mut obj = open();
    put_u16(&mut obj, tags::COLUMNS, 40);
    assert_eq!(
        reason(read_slices_from_bytes(&to_bytes(&obj), "x", &wide())),
        "corrupt: pixel data: frame 0: JPEG of 48x48 for Columns x Rows 40x48"
    );
    // a forged frame header is refused from the header, before anything its size is allocated
    let mut forged = stream.clone();
    forged[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000 x 60000
    assert_eq!(
        reason(with_pixels("1", vec![], vec![forged])),
        "corrupt: pixel data: frame 0: JPEG of 60000x60000 for Columns x Rows 48x48"
    );
    let mut obj = open();
    put_u16(&mut obj, tags::BITS_STORED, 16);
    put_u16(&mut obj, tags::HIGH_BIT, 15);
    assert_eq!(
        reason(read_slices_from_bytes(&to_bytes(&obj), "x", &wide())),
        "corrupt: pixel data: frame 0: 12-bit JPEG for BitsStored 16"
    );
}

#[test]
fn a_multiframe_bomb_is_refused_from_its_header() {
    use dicom_core::value::PixelFragmentSequence;
    // 3000 frames of 2048x2048 JPEG 2000, each a 239-byte codestream: 757 KB that would
    // decode to 25 GB
    let mut obj = chest();
    put_u16(&mut obj, tags::ROWS, 2048);
    put_u16(&mut obj, tags::COLUMNS, 2048);
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, "3000");
    let fragments: Vec<Vec<u8>> = (0..3000).map(|i| vec![(i % 251) as u8; 240]).collect();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PixelFragmentSequence::new(Vec::<u32>::new(), fragments),
    ));
    let meta = dicom_object::FileMetaTableBuilder::new()
        .transfer_syntax("1.2.840.10008.1.2.4.90")
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
        .media_storage_sop_instance_uid("1.2.3.4")
        .build()
        .unwrap();
    let mut file = DefaultDicomObject::new_empty_with_meta(meta);
    for e in obj.iter() {
        file.put(e.clone());
    }
    let e = read_slices_from_bytes(&to_bytes(&file), "bomb", &SliceOptions::default()).expect_err("a bomb");
    assert_eq!(
        e.reason(),
        "too large: 3000 frame(s) of 2048x2048 decode to 108000 MiB, over the limit of 1024 MiB"
    );
    // the same budget holds for one large frame
    let tight = SliceOptions {
        max_decoded_bytes: 100_000,
        ..SliceOptions::default()
    };
    let e = read_slices_from_bytes(&to_bytes(&chest()), "c", &tight).expect_err("over a tight budget");
    assert!(
        e.reason().starts_with("too large: 1 frame(s) of 128x128"),
        "{}",
        e.reason()
    );
}
