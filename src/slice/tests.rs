//! Reader tests over the real DICOM files in `../shared/data/dicom/`, the transfer-syntax
//! fixtures in `tests/fixtures/slice/` (expected HU from pydicom, see make_fixtures.py) and
//! DICOM objects edited in memory for each refusal.

use std::path::PathBuf;

use dicom_core::{DataElement, PrimitiveValue, VR, smallvec::smallvec};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use super::*;

use crate::test_support::shared_dicom_dir as shared_dicom;

pub(super) fn fixtures() -> PathBuf {
    crate::test_support::first_dir(
        &["tests/fixtures/slice", "../../main/tests/fixtures/slice"],
        "tests/fixtures/slice must exist",
    )
}

pub(super) fn wide() -> SliceOptions {
    SliceOptions {
        hu_clamp: (-32768.0, 32767.0),
        ..SliceOptions::default()
    }
}

fn hu_at(s: &Slice, row: usize, col: usize) -> f32 {
    s.hu.as_ref().expect("dicom slice has HU")[row * s.width as usize + col]
}

pub(super) fn reason_of(bytes: &[u8]) -> String {
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

pub(super) fn chest() -> DefaultDicomObject {
    OpenFileOptions::new()
        .open_file(shared_dicom().join("chest_ct1_128_crop_explicit_le.dcm"))
        .expect("chest CT opens")
}

pub(super) fn to_bytes(obj: &DefaultDicomObject) -> Vec<u8> {
    let mut out = Vec::new();
    obj.write_all(&mut out).expect("write to memory");
    out
}

pub(super) fn put_str(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(super) fn put_u16(obj: &mut InMemDicomObject, tag: dicom_core::Tag, value: u16) {
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
