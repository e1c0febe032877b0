//! Reader tests on files that are truncated, misnamed, forged or built to exhaust the reader
//! (value lengths, RLE segments, a decoder panic, a multiframe bomb), and 12-bit JPEG frames:
//! each is refused with its reason or read, never a crash. Split from `tests.rs`, whose helpers
//! (the edited chest CT, `reason_of`...) they share.

use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};

use super::tests::{chest, fixtures, put_str, put_u16, reason_of, to_bytes, wide};
use super::*;

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
