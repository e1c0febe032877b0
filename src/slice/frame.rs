//! Per-frame DICOM work: attributes looked up frame by frame (per-frame functional groups,
//! then shared ones, then the top level), axial screening, stored values and HU.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use dicom_pixeldata::{DecodedPixelData, PixelRepresentation};

use super::dicom::{is_localizer, text};
use super::{Rejection, SliceMeta, SliceOptions, lung_window};

/// What one frame needs for screening and conversion.
#[derive(Debug, Clone)]
pub(super) struct FrameInfo {
    pub frame: u32,
    pub slope: f64,
    pub intercept: f64,
    /// ImageOrientationPatient: `None` when absent, an error text when malformed.
    orientation: Result<Option<[f64; 6]>, String>,
    localizer: bool,
    /// What the object says of its acquisition (ImageType / FrameType and GantryDetectorTilt).
    acquisition: Acquisition,
    pub meta: SliceMeta,
}

/// What the header says of how a frame was acquired, for telling a gantry-tilted axial scan
/// from an oblique reformat of the same geometry.
#[derive(Debug, Clone, Default)]
struct Acquisition {
    /// ImageType value 1 is ORIGINAL (reformats are DERIVED).
    original: bool,
    /// ImageType value 3 is AXIAL.
    axial: bool,
    /// GantryDetectorTilt in degrees, when present.
    gantry_tilt: Option<f64>,
}

/// Degrees of agreement asked between GantryDetectorTilt and the tilt of the orientation.
const TILT_AGREEMENT_DEG: f64 = 1.0;

impl FrameInfo {
    /// Accept axial frames: row and column direction cosines both within `axial_tolerance` of
    /// the axial plane (|z| components), or a gantry-tilted axial acquisition (see
    /// [`tilted_axial`]); absent orientation is accepted. Returns the gantry tilt in degrees
    /// of a tilted acquisition.
    pub fn screen(&self, opts: &SliceOptions) -> Result<Option<f64>, Rejection> {
        if self.localizer {
            return Err(Rejection::Localizer);
        }
        match &self.orientation {
            Err(message) => Err(Rejection::Corrupt(message.clone())),
            Ok(None) => Ok(None),
            Ok(Some(o)) => {
                let tol = f64::from(opts.axial_tolerance);
                if o[2].abs() <= tol && o[5].abs() <= tol {
                    return Ok(None);
                }
                tilted_axial(o, &self.acquisition, tol, f64::from(opts.max_gantry_tilt))
                    .map(Some)
                    .ok_or_else(|| Rejection::NotAxial(plane_name(o, &self.acquisition)))
            }
        }
    }
}

/// The tilt in degrees of a gantry-tilted axial acquisition: the rows run along the patient's
/// x axis (|x| cosine within `tol` of 1), the columns lie in the y-z plane rotated by the tilt,
/// at most `max_tilt` degrees, and the header says it was acquired so: ImageType ORIGINAL and
/// either GantryDetectorTilt agreeing with the orientation (sign aside: vendors differ) or
/// ImageType AXIAL. An oblique reformat of the same geometry is DERIVED and stays refused.
fn tilted_axial(o: &[f64; 6], acq: &Acquisition, tol: f64, max_tilt: f64) -> Option<f64> {
    let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    if row[2].abs() > tol || row[1].abs() > tol || col[0].abs() > tol || !acq.original {
        return None;
    }
    let tilt = col[2].atan2(col[1]).to_degrees();
    if !tilt.is_finite() || tilt.abs() > max_tilt {
        return None;
    }
    let agrees = acq
        .gantry_tilt
        .is_some_and(|g| (g.abs() - tilt.abs()).abs() <= TILT_AGREEMENT_DEG);
    (agrees || acq.axial).then_some(tilt)
}

/// What a refused orientation is, by the axis its normal is closest to.
fn plane_name(o: &[f64; 6], acq: &Acquisition) -> String {
    let n = [
        o[1] * o[5] - o[2] * o[4],
        o[2] * o[3] - o[0] * o[5],
        o[0] * o[4] - o[1] * o[3],
    ];
    let (x, y, z) = (n[0].abs(), n[1].abs(), n[2].abs());
    if z >= x && z >= y {
        // near axial, yet neither axial nor a recognised gantry tilt
        return if acq.original {
            "tilted plane"
        } else {
            "oblique reformat"
        }
        .to_string();
    }
    let plane = if y >= x { "coronal" } else { "sagittal" };
    if x.max(y) > 0.995 {
        plane.to_string()
    } else {
        format!("oblique ({plane})")
    }
}

/// The element `tag` for `frame`: per-frame group item `seq`, then the shared group, then top level.
fn frame_elem(obj: &InMemDicomObject, frame: u32, seq: Tag, tag: Tag) -> Option<&InMemElement> {
    let in_group = |group: Tag, index: usize| {
        obj.get(group)?
            .items()?
            .get(index)?
            .get(seq)?
            .items()?
            .first()?
            .get(tag)
    };
    in_group(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frame as usize)
        .or_else(|| in_group(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, 0))
        .or_else(|| obj.get(tag))
}

fn floats(elem: Option<&InMemElement>) -> Option<Vec<f64>> {
    elem?.to_multi_float64().ok().filter(|v| !v.is_empty())
}

fn float_n<const N: usize>(elem: Option<&InMemElement>) -> Option<[f64; N]> {
    floats(elem)?.try_into().ok()
}

/// Gather screening inputs and report metadata of one frame.
pub(super) fn frame_info(obj: &InMemDicomObject, frame: u32, frames: u32) -> FrameInfo {
    let at = |seq, tag| frame_elem(obj, frame, seq, tag);
    let orientation = match floats(at(
        tags::PLANE_ORIENTATION_SEQUENCE,
        tags::IMAGE_ORIENTATION_PATIENT,
    )) {
        None => Ok(None),
        Some(v) => <[f64; 6]>::try_from(v.as_slice())
            .map(Some)
            .map_err(|_| format!("ImageOrientationPatient has {} values", v.len())),
    };
    let pvt = tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE;
    let scalar = |seq, tag| floats(at(seq, tag)).and_then(|v| v.first().copied());
    let measures = tags::PIXEL_MEASURES_SEQUENCE;
    let meta = SliceMeta {
        study_uid: text(obj, tags::STUDY_INSTANCE_UID),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID),
        sop_uid: text(obj, tags::SOP_INSTANCE_UID),
        instance_number: obj
            .get(tags::INSTANCE_NUMBER)
            .and_then(|e| e.to_int::<i32>().ok()),
        slice_location: (frames == 1)
            .then(|| floats(obj.get(tags::SLICE_LOCATION)).and_then(|v| v.first().copied()))
            .flatten(),
        image_position: float_n(at(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)),
        pixel_spacing: float_n(at(measures, tags::PIXEL_SPACING)),
        slice_thickness: scalar(measures, tags::SLICE_THICKNESS),
        frame: (frames > 1).then_some(frame),
        gantry_tilt_deg: None,
    };
    FrameInfo {
        frame,
        slope: scalar(pvt, tags::RESCALE_SLOPE).unwrap_or(1.0),
        intercept: scalar(pvt, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        orientation,
        localizer: is_localizer(at(tags::CT_IMAGE_FRAME_TYPE_SEQUENCE, tags::FRAME_TYPE)),
        acquisition: acquisition(obj, at(tags::CT_IMAGE_FRAME_TYPE_SEQUENCE, tags::FRAME_TYPE)),
        meta,
    }
}

/// ImageType (or the frame's FrameType) values 1 and 3, and GantryDetectorTilt.
fn acquisition(obj: &InMemDicomObject, frame_type: Option<&InMemElement>) -> Acquisition {
    let values: Vec<String> = frame_type
        .or_else(|| obj.get(tags::IMAGE_TYPE))
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect())
        .unwrap_or_default();
    Acquisition {
        original: values.first().is_some_and(|v| v == "ORIGINAL"),
        axial: values.get(2).is_some_and(|v| v == "AXIAL"),
        gantry_tilt: floats(obj.get(tags::GANTRY_DETECTOR_TILT))
            .and_then(|v| v.first().copied())
            .filter(|t| t.is_finite()),
    }
}

/// How raw decoded samples become stored values: shifted down past the unused low bits
/// (HighBit), masked to BitsStored and sign-extended when PixelRepresentation is 1.
struct StoredBits {
    signed: bool,
    allocated: u32,
    stored: u32,
    shift: u32,
    /// JPEG 2000 samples are taken as decoded (sign-extended from BitsAllocated).
    jpeg2000: bool,
}

impl StoredBits {
    fn value(&self, raw: u32) -> i32 {
        if self.jpeg2000 {
            return sign_extend(raw, self.allocated, self.signed);
        }
        let mask = if self.stored >= 32 {
            u32::MAX
        } else {
            (1 << self.stored) - 1
        };
        sign_extend((raw >> self.shift) & mask, self.stored, self.signed)
    }
}

/// The stored values of one frame as i32, masked to BitsStored and sign-extended
/// (JPEG 2000 samples are taken as decoded).
pub(super) fn stored_values(
    px: &DecodedPixelData<'_>,
    frame: u32,
    jpeg2000: bool,
) -> Result<Vec<i32>, Rejection> {
    let data = px
        .frame_data(frame)
        .map_err(|e| Rejection::Corrupt(format!("frame {frame}: {e}")))?;
    let allocated = u32::from(px.bits_allocated());
    let stored = u32::from(px.bits_stored()).clamp(1, allocated);
    let bits = StoredBits {
        signed: px.pixel_representation() == PixelRepresentation::Signed,
        allocated,
        stored,
        shift: (u32::from(px.high_bit()) + 1).saturating_sub(stored),
        jpeg2000,
    };
    let values = match allocated {
        8 => data.iter().map(|&b| bits.value(u32::from(b))).collect(),
        16 => data
            .chunks_exact(2)
            .map(|c| bits.value(u32::from(u16::from_le_bytes([c[0], c[1]]))))
            .collect(),
        32 => data
            .chunks_exact(4)
            .map(|c| bits.value(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        other => {
            return Err(Rejection::UnsupportedEncoding(format!("{other} bits allocated")));
        }
    };
    Ok(values)
}

/// Stored values of samples a JPEG decoder gave right-aligned (no HighBit shift), masked to
/// `bits_stored` and sign-extended when `signed`, like [`stored_values`].
pub(super) fn stored_values_of_samples(samples: &[u16], bits_stored: u32, signed: bool) -> Vec<i32> {
    let bits = StoredBits {
        signed,
        allocated: 16,
        stored: bits_stored.clamp(1, 16),
        shift: 0,
        jpeg2000: false,
    };
    samples.iter().map(|&s| bits.value(u32::from(s))).collect()
}

/// Interpret the low `bits` of `v` as two's complement when `signed`.
fn sign_extend(v: u32, bits: u32, signed: bool) -> i32 {
    if !signed || bits >= 32 {
        return v as i32;
    }
    let sign = 1u32 << (bits - 1);
    if v & sign != 0 {
        (v as i64 - (1i64 << bits)) as i32
    } else {
        v as i32
    }
}

/// HU (clamped) and the windowed grey copied to RGB.
pub(super) fn hu_and_rgb(
    stored: &[i32],
    slope: f64,
    intercept: f64,
    opts: &SliceOptions,
) -> (Vec<f32>, Vec<u8>) {
    let (lo, hi) = opts.hu_clamp;
    let hu: Vec<f32> = stored
        .iter()
        .map(|&s| ((f64::from(s) * slope + intercept) as f32).clamp(lo, hi))
        .collect();
    let rgb = hu
        .iter()
        .flat_map(|&h| {
            let g = lung_window(h, opts.window_level, opts.window_width);
            [g, g, g]
        })
        .collect();
    (hu, rgb)
}
