//! DICOM slices: screen for axial CT, decode pixels through dicom-pixeldata, turn them into
//! HU and lung-window them.
//!
//! Screening order (first failure wins): not an image (SEG, SR, RT...), not CT, localizer,
//! no pixel data, unsupported encoding, too large, then per frame: not axial. Stored values
//! are masked to BitsStored (after HighBit) and sign-extended when PixelRepresentation is 1;
//! JPEG 2000 output is taken as decoded (its codestream carries the sign and its lossy
//! samples may overshoot BitsStored). `HU = stored * RescaleSlope + RescaleIntercept`,
//! looked up per frame in the functional groups of enhanced objects.
//!
//! The JPEG syntaxes (baseline .50, extended .51 in 8 and 12 bits, lossless .57 and .70) are
//! not left to dicom-rs (whose jpeg-decoder rounds differently from libjpeg and has no 12-bit
//! DCT): their frames are taken from the encapsulated fragments and decoded by libjpeg-turbo
//! ([`super::turbo`]), the library behind pydicom's Pillow plugin and close kin of DCMTK's
//! IJG codec, giving the same values as both; then they follow the same path to HU.

use std::io::Cursor;
use std::ops::Range;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{DecodedPixelData, PixelDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxRegistry, entries};

use super::frame::{FrameInfo, frame_info, hu_and_rgb, stored_values, stored_values_of_samples};
use super::raster::check_size;
use super::turbo::{Jpeg, JpegError};
use super::{Detected, Rejection, Slice, SliceFormat, SliceOptions};

/// Modalities whose objects hold no image to screen.
const NON_IMAGE_MODALITIES: &[&str] = &[
    "SEG", "SR", "KO", "PR", "REG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "DOC", "FID", "PLAN", "RWV",
    "AU", "ECG",
];
/// More frames than this is a forged header, not a CT volume.
const MAX_FRAMES: u32 = 10_000;
/// The JPEG syntaxes decoded by libjpeg-turbo: baseline, extended (8 and 12 bits), lossless
/// (any predictor, and predictor 1).
const LIBJPEG_TURBO_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];
/// RLE Lossless: its fragments are checked before dicom-rs decodes them (`rle.rs`).
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// Explicit VR Big Endian (retired, still found in archives).
const EXPLICIT_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
/// Segmentation Storage: refused even when Modality is missing.
const SEG_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// The screened frames of one DICOM object, decoded one at a time as they are asked for: a
/// frame's samples are freed once it is turned into HU and model input, and the caller holds
/// only the frames it has not dropped yet (the daemon screens a multi-frame object a batch at a
/// time). Everything that can be checked from the header is checked when it is opened.
pub struct DicomFrames {
    obj: DefaultDicomObject,
    ts: String,
    width: u32,
    height: u32,
    accepted: std::collections::VecDeque<FrameInfo>,
    /// The JPEG syntaxes: each frame's fragments, BitsStored, signedness.
    jpeg: Option<(Vec<Range<usize>>, u32, bool)>,
    jpeg2000: bool,
    opts: SliceOptions,
}

impl DicomFrames {
    /// Frames not yet decoded.
    pub fn remaining(&self) -> usize {
        self.accepted.len()
    }

    fn decode(&self, info: &FrameInfo) -> Result<Slice, Rejection> {
        let pixels = match &self.jpeg {
            Some((ranges, bits_stored, signed)) => Pixels::Jpeg(JpegFrames {
                fragments: encapsulated(&self.obj).map_or(&[][..], |(f, _)| f),
                ranges,
                width: self.width,
                height: self.height,
                bits_stored: *bits_stored,
                signed: *signed,
                ts: &self.ts,
            }),
            None => Pixels::Decoded {
                obj: &self.obj,
                jpeg2000: self.jpeg2000,
            },
        };
        let stored = pixels.stored(info.frame)?;
        let (hu, rgb) = hu_and_rgb(&stored, info.slope, info.intercept, &self.opts);
        Ok(Slice {
            width: self.width,
            height: self.height,
            rgb,
            hu: Some(hu),
            format: SliceFormat::Dicom {
                transfer_syntax: self.ts.clone(),
            },
            meta: info.meta.clone(),
        })
    }
}

impl Iterator for DicomFrames {
    type Item = Result<Slice, Rejection>;

    fn next(&mut self) -> Option<Self::Item> {
        let info = self.accepted.pop_front()?;
        Some(self.decode(&info))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.accepted.len(), Some(self.accepted.len()))
    }
}

/// Open and screen a DICOM object; its frames are decoded when the result is iterated.
pub(super) fn open_frames(
    bytes: &[u8],
    kind: Detected,
    opts: &SliceOptions,
) -> Result<DicomFrames, Rejection> {
    let guard = match kind {
        Detected::DicomPreamble => super::lengths::check(bytes, 132, true, false),
        Detected::DicomNoPreamble => super::lengths::check(bytes, 4, true, false),
        Detected::DicomBare { explicit } => super::lengths::check(bytes, 0, false, explicit),
        Detected::Png | Detected::Jpeg => Ok(()),
    };
    guard.map_err(Rejection::Corrupt)?;
    let obj = open(bytes, kind)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    screen(&obj)?;
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(Rejection::NoPixelData);
    }
    match TransferSyntaxRegistry.get(&ts) {
        Some(entry) if entry.can_decode_all() => {}
        _ => return Err(Rejection::UnsupportedEncoding(ts)),
    }
    let width = u32_attr(&obj, tags::COLUMNS)?;
    let height = u32_attr(&obj, tags::ROWS)?;
    check_size(width, height, opts)?;
    check_layout(&obj)?;
    let bits_stored = u32_opt(&obj, tags::BITS_STORED).unwrap_or(8);
    let jpeg = LIBJPEG_TURBO_SYNTAXES.contains(&ts.as_str());
    let frames = u32_opt(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if frames > MAX_FRAMES {
        return Err(Rejection::Corrupt(format!("{frames} frames")));
    }

    let infos: Vec<FrameInfo> = (0..frames).map(|f| frame_info(&obj, f, frames)).collect();
    let mut first_refusal = None;
    let accepted: Vec<FrameInfo> = infos
        .into_iter()
        .filter_map(|mut info| match info.screen(opts) {
            Ok(tilt) => {
                info.meta.gantry_tilt_deg = tilt;
                Some(info)
            }
            Err(r) => {
                first_refusal.get_or_insert(r);
                None
            }
        })
        .collect();
    if accepted.is_empty() {
        return Err(first_refusal.unwrap_or(Rejection::NoPixelData));
    }
    check_budget(&obj, accepted.len() as u64, width, height, opts)?;

    if ts == RLE_LOSSLESS {
        let (fragments, _) = encapsulated(&obj).unwrap_or((&[], &[]));
        let samples = u32_opt(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits = u32_opt(&obj, tags::BITS_ALLOCATED).unwrap_or(16);
        super::rle::check(fragments, height, width, samples, bits).map_err(Rejection::Corrupt)?;
    }
    let jpeg = if jpeg {
        let (fragments, offsets) = encapsulated(&obj)
            .ok_or_else(|| Rejection::Corrupt("JPEG pixel data is not encapsulated".into()))?;
        let ranges = frame_fragments(fragments, offsets, frames)
            .map_err(|why| Rejection::Corrupt(format!("pixel data: {why}")))?;
        Some((
            ranges,
            bits_stored,
            u32_opt(&obj, tags::PIXEL_REPRESENTATION) == Some(1),
        ))
    } else {
        None
    };
    Ok(DicomFrames {
        jpeg2000: is_jpeg2000(&ts),
        obj,
        ts,
        width,
        height,
        accepted: accepted.into(),
        jpeg,
        opts: opts.clone(),
    })
}

/// The fragments and Basic Offset Table (empty when absent) of encapsulated pixel data; `None`
/// for native pixel data.
fn encapsulated(obj: &DefaultDicomObject) -> Option<(&[Vec<u8>], &[u32])> {
    let value = obj.get(tags::PIXEL_DATA)?.value();
    Some((value.fragments()?, value.offset_table().unwrap_or(&[])))
}

/// Refuse, from the header alone and before anything is decoded, an object whose accepted
/// frames would take more than `max_decoded_bytes`: per frame its decoded samples (Rows x
/// Columns x SamplesPerPixel x BitsAllocated / 8) plus the model input and HU the reader keeps
/// (7 bytes a pixel). A 757 KB file of 3000 constant 2048x2048 JPEG 2000 frames is refused
/// here at once instead of decoding 25 GB.
fn check_budget(
    obj: &DefaultDicomObject,
    frames: u64,
    width: u32,
    height: u32,
    opts: &SliceOptions,
) -> Result<(), Rejection> {
    let samples = u64::from(u32_opt(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1));
    let bytes = u64::from(
        u32_opt(obj, tags::BITS_ALLOCATED)
            .unwrap_or(16)
            .div_ceil(8)
            .max(1),
    );
    let per_pixel = samples * bytes + 7;
    let needed = frames
        .saturating_mul(u64::from(width))
        .saturating_mul(u64::from(height))
        .saturating_mul(per_pixel);
    if needed > opts.max_decoded_bytes {
        return Err(Rejection::OverBudget {
            frames,
            width,
            height,
            bytes: needed,
            limit: opts.max_decoded_bytes,
        });
    }
    Ok(())
}

/// Decode one frame with dicom-pixeldata (frame by frame: a frame's samples are freed before
/// the next is decoded).
fn decode_frame(obj: &DefaultDicomObject, frame: u32) -> Result<DecodedPixelData<'_>, Rejection> {
    // dicom-rs's decoders trust some headers (an RLE segment or a JPEG 2000 codestream larger
    // or smaller than Rows x Columns makes them index out of bounds): their panics become a
    // refusal of this file, never the end of the reader
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        obj.decode_pixel_data_frame(frame)
    }))
    .map_err(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Rejection::Corrupt(format!("pixel data: the decoder failed ({why})"))
    })?
    .map_err(|e| Rejection::Corrupt(format!("pixel data: {}", chain(&e))))
}

/// Where the stored values of a frame come from.
enum Pixels<'a> {
    /// Frames decoded by dicom-pixeldata one at a time, when asked for.
    Decoded {
        obj: &'a DefaultDicomObject,
        jpeg2000: bool,
    },
    /// A JPEG syntax, decoded by libjpeg-turbo frame by frame when asked for.
    Jpeg(JpegFrames<'a>),
}

impl Pixels<'_> {
    fn stored(&self, frame: u32) -> Result<Vec<i32>, Rejection> {
        match self {
            Self::Decoded { obj, jpeg2000 } => stored_values(&decode_frame(obj, frame)?, 0, *jpeg2000),
            Self::Jpeg(frames) => frames.stored(frame),
        }
    }
}

/// The encapsulated frames of an object in one of the JPEG syntaxes.
struct JpegFrames<'a> {
    fragments: &'a [Vec<u8>],
    /// The fragments of each frame.
    ranges: &'a [Range<usize>],
    width: u32,
    height: u32,
    bits_stored: u32,
    signed: bool,
    ts: &'a str,
}

impl JpegFrames<'_> {
    /// Decode one frame with libjpeg-turbo after checking its header against Columns, Rows
    /// and BitsStored (so a forged header allocates nothing beyond the declared size). The
    /// decoder returns right-aligned samples, so HighBit plays no part; the samples are
    /// masked to BitsStored and sign-extended like every other encoding's.
    fn stored(&self, frame: u32) -> Result<Vec<i32>, Rejection> {
        let corrupt = |why: String| Rejection::Corrupt(format!("pixel data: frame {frame}: {why}"));
        let jpeg_error = |e: JpegError| match e {
            JpegError::Unsupported(why) => {
                Rejection::UnsupportedEncoding(format!("{}: frame {frame}: {why}", self.ts))
            }
            JpegError::Corrupt(why) => corrupt(format!("JPEG: {why}")),
        };
        let range = self
            .ranges
            .get(frame as usize)
            .cloned()
            .ok_or_else(|| corrupt("no fragments".into()))?;
        let stream = self.fragments.get(range).unwrap_or(&[]).concat();
        let jpeg = Jpeg::open(&stream, u64::from(self.width) * u64::from(self.height)).map_err(jpeg_error)?;
        let header = jpeg.header;
        if (header.width, header.height) != (self.width, self.height) {
            return Err(corrupt(format!(
                "JPEG of {}x{} for Columns x Rows {}x{}",
                header.width, header.height, self.width, self.height
            )));
        }
        if header.precision < self.bits_stored {
            return Err(corrupt(format!(
                "{}-bit JPEG for BitsStored {}",
                header.precision, self.bits_stored
            )));
        }
        // libjpeg signals errors by longjmp inside C; a panic on this side is a refusal too
        let samples = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| jpeg.decode_grey_samples()))
            .map_err(|_| corrupt("the JPEG decoder failed".into()))?
            .map_err(jpeg_error)?;
        Ok(stored_values_of_samples(&samples, self.bits_stored, self.signed))
    }
}

/// The fragments that hold each frame of encapsulated pixel data: all of them for a single
/// frame; with several frames, the Basic Offset Table (byte offsets of each frame's first
/// fragment item, counted from the first item after the table, each item having an 8-byte
/// header) when there is one, else one fragment per frame, else (as pydicom does) a new frame
/// at every fragment that starts with a JPEG SOI marker.
fn frame_fragments(fragments: &[Vec<u8>], offsets: &[u32], frames: u32) -> Result<Vec<Range<usize>>, String> {
    let (n, frames) = (fragments.len(), frames as usize);
    if n == 0 {
        return Err("no pixel data fragments".into());
    }
    let firsts: Vec<usize> = if frames == 1 {
        vec![0]
    } else if !offsets.is_empty() {
        if offsets.len() != frames {
            return Err(format!(
                "offset table of {} entries for {frames} frames",
                offsets.len()
            ));
        }
        let mut starts = Vec::with_capacity(n);
        let mut pos = 0u64;
        for f in fragments {
            starts.push(pos);
            pos += 8 + f.len() as u64;
        }
        let firsts = offsets
            .iter()
            .map(|&o| {
                starts
                    .binary_search(&u64::from(o))
                    .map_err(|_| format!("offset table entry {o} is not the start of a fragment"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if firsts.windows(2).any(|w| w[0] >= w[1]) {
            return Err("offset table entries are not increasing".into());
        }
        firsts
    } else if n == frames {
        (0..n).collect()
    } else {
        let firsts: Vec<usize> = (0..n)
            .filter(|&i| fragments[i].starts_with(&[0xFF, 0xD8]))
            .collect();
        if firsts.len() != frames || firsts.first() != Some(&0) {
            return Err(format!("{n} fragments for {frames} frames and no offset table"));
        }
        firsts
    };
    Ok((0..firsts.len())
        .map(|k| firsts[k]..firsts.get(k + 1).copied().unwrap_or(n))
        .collect())
}

/// Parse the bytes with or without preamble and file meta.
fn open(bytes: &[u8], kind: Detected) -> Result<DefaultDicomObject, Rejection> {
    let parsed = match kind {
        Detected::DicomPreamble | Detected::DicomNoPreamble => {
            let preamble = if kind == Detected::DicomPreamble {
                ReadPreamble::Always
            } else {
                ReadPreamble::Never
            };
            OpenFileOptions::new()
                .read_preamble(preamble)
                .from_reader(Cursor::new(bytes))
                .map_err(|e| parse_rejection(&chain(&e)))?
        }
        Detected::DicomBare { explicit } => open_bare(bytes, explicit)?,
        Detected::Png | Detected::Jpeg => {
            return Err(Rejection::UnknownFormat);
        }
    };
    let mut parsed = parsed;
    let big_endian = parsed.meta().transfer_syntax().trim_end_matches(['\0', ' ']) == EXPLICIT_BIG_ENDIAN;
    super::vr_un::resolve(&mut parsed, big_endian);
    Ok(parsed)
}

/// A data set with no file meta: little endian, implicit or explicit VR.
fn open_bare(bytes: &[u8], explicit: bool) -> Result<DefaultDicomObject, Rejection> {
    let ts = if explicit {
        entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let mut obj = InMemDicomObject::read_dataset_with_ts(Cursor::new(bytes), &ts)
        .map_err(|e| parse_rejection(&chain(&e)))?;
    // the meta below is made from SOPClassUID and SOPInstanceUID, which may be UN
    super::vr_un::resolve(&mut obj, false);
    let uid = |tag| text(&obj, tag).unwrap_or_else(|| "2.25.0".to_string());
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts.uid())
        .media_storage_sop_class_uid(uid(tags::SOP_CLASS_UID))
        .media_storage_sop_instance_uid(uid(tags::SOP_INSTANCE_UID));
    obj.with_meta(meta)
        .map_err(|e| Rejection::Corrupt(format!("file meta: {e}")))
}

/// Parser errors: an unknown transfer syntax is an encoding problem, the rest is corruption.
fn parse_rejection(message: &str) -> Rejection {
    let lower = message.to_lowercase();
    if lower.contains("transfer syntax")
        && (lower.contains("unsupported") || lower.contains("unrecognized") || lower.contains("unknown"))
    {
        Rejection::UnsupportedEncoding(message.to_string())
    } else {
        Rejection::Corrupt(message.to_string())
    }
}

/// Object-level screening: image, CT, not a localizer.
fn screen(obj: &DefaultDicomObject) -> Result<(), Rejection> {
    let modality = text(obj, tags::MODALITY);
    let sop_class = text(obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if let Some(m) = modality.as_deref().filter(|m| NON_IMAGE_MODALITIES.contains(m)) {
        return Err(Rejection::NotAnImage(format!("modality {m}")));
    }
    if sop_class == SEG_STORAGE {
        return Err(Rejection::NotAnImage("segmentation storage".to_string()));
    }
    match modality.as_deref() {
        Some("CT") => {}
        Some(m) => return Err(Rejection::NotCt(m.to_string())),
        None => return Err(Rejection::NotCt("missing".to_string())),
    }
    if is_localizer(obj.get(tags::IMAGE_TYPE)) {
        return Err(Rejection::Localizer);
    }
    // screen captures and burned-in annotations (dose reports, protocol pages) carry the
    // patient's name in their pixels
    super::capture::check(obj)?;
    Ok(())
}

/// True when an ImageType/FrameType element holds the value LOCALIZER.
pub(super) fn is_localizer(elem: Option<&dicom_object::mem::InMemElement>) -> bool {
    elem.and_then(|e| e.to_multi_str().ok())
        .is_some_and(|values| values.iter().any(|v| v.trim() == "LOCALIZER"))
}

/// One grey sample per pixel in 8, 16 or 32 bits.
fn check_layout(obj: &DefaultDicomObject) -> Result<(), Rejection> {
    let samples = u32_opt(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if samples != 1 || !photometric.starts_with("MONOCHROME") {
        return Err(Rejection::UnsupportedEncoding(format!(
            "{samples} samples per pixel, photometric {photometric}"
        )));
    }
    let bits = u32_attr(obj, tags::BITS_ALLOCATED)?;
    if ![8, 16, 32].contains(&bits) {
        return Err(Rejection::UnsupportedEncoding(format!("{bits} bits allocated")));
    }
    Ok(())
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

fn is_jpeg2000(ts: &str) -> bool {
    ["1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20"]
        .iter()
        .any(|prefix| ts.starts_with(prefix))
}

/// A trimmed string value, `None` when absent, empty or unreadable.
pub(super) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn u32_opt(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.get(tag)?.to_int::<u32>().ok()
}

fn u32_attr(obj: &InMemDicomObject, tag: Tag) -> Result<u32, Rejection> {
    u32_opt(obj, tag).ok_or_else(|| Rejection::Corrupt(format!("missing or invalid {tag}")))
}
