//! The DICOM Segmentation (BINARY) of a reported series: one segment per lesion class, one frame
//! per segment and source slice (empty frames included, so every segment exists and frame
//! `(segment - 1) * slices + i + 1` is slice `i` in the report's anatomical order), each frame with
//! its Derivation Image / Source Image reference, plane position, segment identification and
//! dimension index values (segment number, then position).
//!
//! Coded concepts (PS3.16):
//! - Segmented Property Category: SCT 49755003 "Morphologically abnormal structure", from CID 7150
//!   (Segmentation Property Categories), the category for lesions and other abnormal findings.
//! - Segmented Property Type: CID 7151 (Segmentation Property Types) is extensible and holds
//!   neither finding, so SNOMED CT concepts are used, as the context group allows:
//!   SCT 1217294009 "Ground glass opacity" (the lung finding the model's class 1 marks) and
//!   SCT 95436008 "Lung consolidation" (class 2).
//! - Anatomic Region: SCT 39607008 "Lung" (CID 4 Anatomic Regions).
//! - Derivation: DCM 113076 "Segmentation" (CID 7203); purpose of reference DCM 121322 "Source
//!   image for image processing operation" (CID 7202).

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{
    Code, code_item, copy_patient_study, date_time, ds, ds_list, file_bytes, put, put_code, put_seq, put_str,
    put_u16,
};
use super::source::SeriesSource;
use super::uids::derived_uid;
use crate::daemon::series::SeriesReport;
use crate::findings::{MASK_CONSOLIDATION, MASK_GGO};

/// Segmentation Storage.
pub const SEG_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// Series number of ctmask's segmentations.
pub const SEG_SERIES_NUMBER: &str = "9901";

pub const CATEGORY: Code = Code("49755003", "SCT", "Morphologically abnormal structure");
pub const GGO: Code = Code("1217294009", "SCT", "Ground glass opacity");
pub const CONSOLIDATION: Code = Code("95436008", "SCT", "Lung consolidation");
pub const LUNG: Code = Code("39607008", "SCT", "Lung");
const DERIVATION_SEGMENTATION: Code = Code("113076", "DCM", "Segmentation");
const SOURCE_FOR_PROCESSING: Code = Code("121322", "DCM", "Source image for image processing operation");

/// A lesion class as a segment: number, label, its value in the label masks, type, display
/// colour (CIELab scaled to 0..65535, the overlay's colours: red GGO, blue consolidation).
pub struct Segment {
    pub number: u16,
    pub label: &'static str,
    pub mask_value: u8,
    pub property: Code,
    pub cielab: [u16; 3],
}

pub const SEGMENTS: [Segment; 2] = [
    Segment {
        number: 1,
        label: "GGO",
        mask_value: MASK_GGO,
        property: GGO,
        cielab: [34891, 53351, 50461],
    },
    Segment {
        number: 2,
        label: "Consolidation",
        mask_value: MASK_CONSOLIDATION,
        property: CONSOLIDATION,
        cielab: [21168, 53248, 5176],
    },
];

/// Model identification: `ctmask <version>` and each model's name and SHA-256.
pub fn software_versions(report: &SeriesReport) -> Vec<String> {
    let mut v = vec![format!("ctmask {}", env!("CARGO_PKG_VERSION"))];
    for m in &report.models {
        let name: String = m.name.chars().take(40).collect();
        v.push(format!("{name} {}", &m.sha256[..m.sha256.len().min(16)]));
    }
    v
}

/// Enhanced General Equipment (and General Equipment) attributes of every object ctmask writes.
pub fn put_equipment(o: &mut InMemDicomObject, report: &SeriesReport) {
    put_str(o, tags::MANUFACTURER, VR::LO, "ctmask");
    put_str(
        o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "ctmask COVID-CT-Mask-Net port",
    );
    put_str(o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "ctmask");
    put(
        o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(software_versions(report).into_iter().collect()),
    );
}

/// Bits of the frames, LSB first, frames packed back to back (PS3.5 §8.1.1), padded to even.
pub fn pack_bits(frames: &[Vec<bool>]) -> Vec<u8> {
    let total: usize = frames.iter().map(Vec::len).sum();
    let mut out = vec![0u8; total.div_ceil(8)];
    for (i, bit) in frames.iter().flatten().enumerate() {
        if *bit {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn image_ref(class: &str, instance: &str) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put_str(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put_str(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
    r
}

/// Referenced Series Sequence of the source series (Common Instance Reference module).
pub fn referenced_series(src: &SeriesSource) -> InMemDicomObject {
    let mut series = InMemDicomObject::new_empty();
    put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &src.series_uid);
    put_seq(
        &mut series,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        src.images
            .iter()
            .map(|i| image_ref(&i.sop_class_uid, &i.sop_instance_uid))
            .collect(),
    );
    series
}

/// The SEG of a series: (SOP instance UID, file bytes).
pub fn build(src: &SeriesSource, report: &SeriesReport) -> Result<(String, Vec<u8>), String> {
    let first = src.images.first().ok_or("no slices")?;
    let (rows, cols) = (first.rows, first.columns);
    if src.images.iter().any(|i| (i.rows, i.columns) != (rows, cols)) {
        return Err("slices of different sizes".into());
    }
    let frame_uid = src
        .frame_of_reference_uid
        .as_deref()
        .ok_or("the source has no FrameOfReferenceUID")?;
    let series_uid = derived_uid(&[&src.series_uid, "seg-series"]);
    let when = report.reported_ms.to_string();
    let revision = report.revision.to_string();
    let sop_uid = derived_uid(&[&src.series_uid, "seg", &revision, &when]);
    let (date, time) = date_time(report.reported_ms);

    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(&src.header, &mut o);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SEG_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    // General and Segmentation Series
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, SEG_SERIES_NUMBER);
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "ctmask lesions (research use only)",
    );
    // Frame of Reference
    put_str(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, frame_uid);
    let pri = super::elements::text(&src.header, tags::POSITION_REFERENCE_INDICATOR).unwrap_or_default();
    put_str(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, &pri);
    put_equipment(&mut o, report);
    // General Image, Segmentation Image, Multi-frame Functional Groups
    put_str(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &revision);
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut o, tags::CONTENT_LABEL, VR::CS, "LESIONS");
    put_str(
        &mut o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "COVID-19 lesions; research use only: not a medical device",
    );
    put_str(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_u16(&mut o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(&mut o, tags::ROWS, rows);
    put_u16(&mut o, tags::COLUMNS, cols);
    put_u16(&mut o, tags::BITS_ALLOCATED, 1);
    put_u16(&mut o, tags::BITS_STORED, 1);
    put_u16(&mut o, tags::HIGH_BIT, 0);
    put_u16(&mut o, tags::PIXEL_REPRESENTATION, 0);
    let algorithm = format!("ctmask {} Mask R-CNN", env!("CARGO_PKG_VERSION"));
    let segments = SEGMENTS
        .iter()
        .map(|s| {
            let mut item = InMemDicomObject::new_empty();
            put_u16(&mut item, tags::SEGMENT_NUMBER, s.number);
            put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, s.label);
            put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
            put_str(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &algorithm);
            put_code(
                &mut item,
                tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                CATEGORY,
            );
            put_code(&mut item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, s.property);
            put_code(&mut item, tags::ANATOMIC_REGION_SEQUENCE, LUNG);
            put(
                &mut item,
                tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                VR::US,
                PrimitiveValue::U16(s.cielab.into_iter().collect()),
            );
            item
        })
        .collect();
    put_seq(&mut o, tags::SEGMENT_SEQUENCE, segments);

    // Dimensions: segment number, then image position.
    let dim_uid = derived_uid(&[&sop_uid, "dimensions"]);
    put_seq(&mut o, tags::DIMENSION_ORGANIZATION_SEQUENCE, {
        let mut d = InMemDicomObject::new_empty();
        put_str(&mut d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
        vec![d]
    });
    let dims = [
        (
            tags::REFERENCED_SEGMENT_NUMBER,
            tags::SEGMENT_IDENTIFICATION_SEQUENCE,
            "Segment Number",
        ),
        (
            tags::IMAGE_POSITION_PATIENT,
            tags::PLANE_POSITION_SEQUENCE,
            "Image Position Patient",
        ),
    ];
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        dims.iter()
            .map(|(pointer, group, label)| {
                let mut d = InMemDicomObject::new_empty();
                put_str(&mut d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
                put(
                    &mut d,
                    tags::DIMENSION_INDEX_POINTER,
                    VR::AT,
                    PrimitiveValue::Tags([*pointer].into_iter().collect()),
                );
                put(
                    &mut d,
                    tags::FUNCTIONAL_GROUP_POINTER,
                    VR::AT,
                    PrimitiveValue::Tags([*group].into_iter().collect()),
                );
                put_str(&mut d, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
                d
            })
            .collect(),
    );

    // Shared functional groups: pixel measures and orientation.
    let mut shared = InMemDicomObject::new_empty();
    let mut measures = InMemDicomObject::new_empty();
    put_str(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &ds_list(&src.pixel_spacing),
    );
    if let Some(t) = src.slice_thickness {
        put_str(&mut measures, tags::SLICE_THICKNESS, VR::DS, &ds(t));
    }
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    let mut orientation = InMemDicomObject::new_empty();
    put_str(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds_list(&first.orientation),
    );
    put_seq(&mut shared, tags::PLANE_ORIENTATION_SEQUENCE, vec![orientation]);
    put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    // Per frame: segment-major, slices in anatomical order.
    let mut per_frame = Vec::with_capacity(SEGMENTS.len() * src.images.len());
    let mut frames = Vec::with_capacity(per_frame.capacity());
    for s in &SEGMENTS {
        for (i, img) in src.images.iter().enumerate() {
            let mut f = InMemDicomObject::new_empty();
            let mut source = image_ref(&img.sop_class_uid, &img.sop_instance_uid);
            put_code(
                &mut source,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                SOURCE_FOR_PROCESSING,
            );
            // the masks are on the source's pixel grid (readers index frames by source with this)
            put_str(&mut source, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
            let mut derivation = InMemDicomObject::new_empty();
            put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
            put_seq(
                &mut derivation,
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code_item(DERIVATION_SEGMENTATION)],
            );
            put_seq(&mut f, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
            let mut content = InMemDicomObject::new_empty();
            put(
                &mut content,
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::U32([u32::from(s.number), i as u32 + 1].into_iter().collect()),
            );
            put_seq(&mut f, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
            let mut position = InMemDicomObject::new_empty();
            put_str(
                &mut position,
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                &ds_list(&img.position),
            );
            put_seq(&mut f, tags::PLANE_POSITION_SEQUENCE, vec![position]);
            let mut ident = InMemDicomObject::new_empty();
            put_u16(&mut ident, tags::REFERENCED_SEGMENT_NUMBER, s.number);
            put_seq(&mut f, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![ident]);
            per_frame.push(f);
            frames.push(img.mask.iter().map(|&m| m == s.mask_value).collect::<Vec<bool>>());
        }
    }
    put_str(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, &frames.len().to_string());
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    put_seq(
        &mut o,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![referenced_series(src)],
    );
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(pack_bits(&frames).into()),
    );
    let bytes = file_bytes(o, SEG_STORAGE, &sop_uid)?;
    Ok((sop_uid, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_lsb_first_across_frames() {
        // two 3-pixel frames: not byte aligned, so the second frame starts at bit 3
        let frames = vec![vec![true, false, false], vec![false, true, true]];
        assert_eq!(pack_bits(&frames), vec![0b0011_0001, 0]);
        assert_eq!(pack_bits(&[vec![true; 9]]), vec![0xFF, 0x01]);
    }
}
