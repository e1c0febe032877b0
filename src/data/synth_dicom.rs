//! Synthetic phantoms as DICOM CT Image Storage files (explicit VR little endian) that can be
//! dropped into a watch folder: `2.25.<decimal>` UIDs derived from the seed, stored value =
//! HU + 1024 (signed 16-bit, RescaleIntercept -1024, slope 1), axial geometry, and only the
//! fixed anonymous patient `SYNTHETIC^PHANTOM` / `SYNTH`. No dates from the clock, so the
//! same seed writes the same files.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::phantom::Phantom;
use super::rng::Rng;

/// Slice spacing and thickness of synthetic series, in mm.
const SLICE_MM: f64 = 5.0;

/// UIDs and numbers shared by the slices of one synthetic series.
#[derive(Debug, Clone)]
pub struct SeriesInfo {
    seed: u64,
    patient: usize,
    pub study_uid: String,
    pub series_uid: String,
    frame_uid: String,
}

impl SeriesInfo {
    pub fn new(seed: u64, patient: usize, size: u32) -> Self {
        let uid_of = |kind| uid(seed, patient, kind, u64::from(size));
        Self {
            seed,
            patient,
            study_uid: uid_of(1),
            series_uid: uid_of(2),
            frame_uid: uid_of(3),
        }
    }

    pub fn sop_uid(&self, slice: usize) -> String {
        uid(self.seed, self.patient, 4, slice as u64)
    }
}

/// A `2.25.<u128>` UID (at most 44 characters) from the seed and what it names.
fn uid(seed: u64, patient: usize, kind: u64, item: u64) -> String {
    let key = seed ^ (patient as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ kind << 56 ^ item.rotate_left(24);
    let mut rng = Rng::stream(key, 0x0055_4944);
    let value = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).max(1);
    format!("2.25.{value}")
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

fn ds(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| {
            format!("{v:.6}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\\")
}

/// Encode slice `slice` of `series` as a complete DICOM file (preamble, meta, data set).
pub fn dicom_bytes(ph: &Phantom, series: &SeriesInfo, slice: usize) -> Result<Vec<u8>, String> {
    let sop_uid = series.sop_uid(slice);
    let sp = ph.pixel_spacing_mm;
    let z = -(slice as f64) * SLICE_MM;
    let origin = [
        -(f64::from(ph.width) / 2.0) * sp,
        -(f64::from(ph.height) / 2.0) * sp,
        z,
    ];
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str());
    put(&mut o, tags::STUDY_DATE, VR::DA, "20200101");
    put(&mut o, tags::CONTENT_DATE, VR::DA, "20200101");
    put(&mut o, tags::STUDY_TIME, VR::TM, "120000");
    put(&mut o, tags::CONTENT_TIME, VR::TM, "120000");
    put(&mut o, tags::ACCESSION_NUMBER, VR::SH, "");
    put(&mut o, tags::MODALITY, VR::CS, "CT");
    put(&mut o, tags::MANUFACTURER, VR::LO, "ctmask synthetic phantom");
    put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "SYNTHETIC CHEST CT");
    put(&mut o, tags::PATIENT_NAME, VR::PN, "SYNTHETIC^PHANTOM");
    put(&mut o, tags::PATIENT_ID, VR::LO, "SYNTH");
    put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "");
    put(&mut o, tags::PATIENT_SEX, VR::CS, "O");
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    put(&mut o, tags::SLICE_THICKNESS, VR::DS, ds(&[SLICE_MM]));
    put(&mut o, tags::KVP, VR::DS, "120");
    put(&mut o, tags::PATIENT_POSITION, VR::CS, "HFS");
    put(
        &mut o,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        series.study_uid.as_str(),
    );
    put(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        series.series_uid.as_str(),
    );
    put(&mut o, tags::STUDY_ID, VR::SH, "SYNTH");
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "1");
    put(&mut o, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, (slice + 1).to_string());
    put(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&origin));
    put(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        "1\\0\\0\\0\\1\\0",
    );
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        series.frame_uid.as_str(),
    );
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put(&mut o, tags::SLICE_LOCATION, VR::DS, ds(&[z]));
    put(
        &mut o,
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    );
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut o, tags::ROWS, VR::US, PrimitiveValue::from(ph.height as u16));
    put(
        &mut o,
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(ph.width as u16),
    );
    put(&mut o, tags::PIXEL_SPACING, VR::DS, ds(&[sp, sp]));
    put(&mut o, tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(&mut o, tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(&mut o, tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(
        &mut o,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(1u16),
    );
    put(&mut o, tags::WINDOW_CENTER, VR::DS, "-600");
    put(&mut o, tags::WINDOW_WIDTH, VR::DS, "1500");
    put(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    put(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
    let stored: Vec<i16> = ph.hu.iter().map(|&h| h.saturating_add(1024)).collect();
    let raw: Vec<u16> = stored.iter().map(|&v| v as u16).collect();
    put(&mut o, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(raw.into()));

    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop_uid.as_str());
    let file = o.with_meta(meta).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
