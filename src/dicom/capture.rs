//! Secondary Capture overlays, for viewers that cannot show a SEG: per source slice, the overlay
//! the daemon already renders (the lung-windowed slice with GGO in red and consolidation in blue)
//! with "RESEARCH USE ONLY: NOT A MEDICAL DEVICE" burned in, as SC Image Storage objects in the
//! source series' study, in a series of their own.
//!
//! The notice is drawn with the public-domain 8x8 bitmap glyphs of the `font8x8` crate (scaled by
//! whole pixels, on a black box, in yellow): a font rasteriser would be far more than two lines
//! of capitals need.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::elements::{
    Code, copy_patient_study, date_time, file_bytes, put, put_code, put_seq, put_str, put_u16,
};
use super::seg::{put_equipment, software_versions};
use super::source::{SeriesSource, SourceImage};
use super::uids::derived_uid;
use crate::daemon::series::SeriesReport;

/// Secondary Capture Image Storage.
pub const SC_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const SC_SERIES_NUMBER: &str = "9903";
/// The notice burned into every overlay.
pub const NOTICE: [&str; 2] = ["RESEARCH USE ONLY:", "NOT A MEDICAL DEVICE"];
const NOTICE_RGB: [u8; 3] = [255, 255, 0];
const SOURCE_FOR_PROCESSING: Code = Code("121322", "DCM", "Source image for image processing operation");

/// Draws the notice into an RGB image at the top left; returns the box it covers (x, y, w, h).
pub fn burn_notice(rgb: &mut [u8], width: usize, height: usize) -> (usize, usize, usize, usize) {
    let scale = (width / 256).max(1);
    let margin = 2 * scale;
    let line_h = 10 * scale;
    let longest = NOTICE.iter().map(|l| l.len()).max().unwrap_or(0);
    let box_w = (longest * 8 * scale + 2 * margin).min(width);
    let box_h = (NOTICE.len() * line_h + 2 * margin).min(height);
    for y in 0..box_h {
        for x in 0..box_w {
            let p = (y * width + x) * 3;
            rgb[p..p + 3].copy_from_slice(&[0, 0, 0]);
        }
    }
    for (row, line) in NOTICE.iter().enumerate() {
        for (col, ch) in line.bytes().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY[usize::from(ch & 0x7F)];
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..8 {
                    if bits & (1 << gx) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let x = margin + (col * 8 + gx) * scale + dx;
                            let y = margin + row * line_h + gy * scale + dy;
                            if x < box_w && y < box_h {
                                let p = (y * width + x) * 3;
                                rgb[p..p + 3].copy_from_slice(&NOTICE_RGB);
                            }
                        }
                    }
                }
            }
        }
    }
    (0, 0, box_w, box_h)
}

/// Patient Orientation (row and column directions) from Image Orientation (Patient).
pub fn patient_orientation(iop: &[f64; 6]) -> String {
    let letter = |v: &[f64]| {
        let (axis, value) = v
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, v)| (i, *v))
            .unwrap_or((0, 1.0));
        match (axis, value >= 0.0) {
            (0, true) => "L",
            (0, false) => "R",
            (1, true) => "P",
            (1, false) => "A",
            (_, true) => "H",
            (_, false) => "F",
        }
    };
    format!("{}\\{}", letter(&iop[..3]), letter(&iop[3..]))
}

fn one(
    src: &SeriesSource,
    report: &SeriesReport,
    img: &SourceImage,
    index: usize,
) -> Result<(String, Vec<u8>), String> {
    let (w, h) = (usize::from(img.columns), usize::from(img.rows));
    if img.overlay.len() != w * h * 3 {
        return Err("an overlay does not match its slice".into());
    }
    let when = report.reported_ms.to_string();
    let revision = report.revision.to_string();
    let sop_uid = derived_uid(&[&src.series_uid, "sc", &revision, &when, &img.sop_instance_uid]);
    let (date, time) = date_time(report.reported_ms);
    let mut rgb = img.overlay.clone();
    burn_notice(&mut rgb, w, h);

    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(&src.header, &mut o);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SC_STORAGE);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put_str(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    put_str(&mut o, tags::MODALITY, VR::CS, "OT");
    // Type 2C: the chest is not a paired body part, so empty
    put_str(&mut o, tags::LATERALITY, VR::CS, "");
    put_str(
        &mut o,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &derived_uid(&[&src.series_uid, "sc-series"]),
    );
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, SC_SERIES_NUMBER);
    put_str(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "ctmask overlays (research use only)",
    );
    put_equipment(&mut o, report);
    // SC Equipment
    put_str(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_str(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
        VR::LO,
        "ctmask",
    );
    put(
        &mut o,
        tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(software_versions(report).into_iter().collect()),
    );
    // General Image
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(index + 1).to_string());
    put_str(
        &mut o,
        tags::PATIENT_ORIENTATION,
        VR::CS,
        &patient_orientation(&img.orientation),
    );
    put_str(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
    put_str(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        "lung window with ctmask lesion masks: GGO red, consolidation blue",
    );
    let mut source = InMemDicomObject::new_empty();
    put_str(
        &mut source,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &img.sop_class_uid,
    );
    put_str(
        &mut source,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &img.sop_instance_uid,
    );
    put_code(
        &mut source,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        SOURCE_FOR_PROCESSING,
    );
    put_seq(&mut o, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    put_str(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut o, tags::IMAGE_COMMENTS, VR::LT, crate::DISCLAIMER);
    // Image Pixel
    put_u16(&mut o, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(&mut o, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut o, tags::ROWS, img.rows);
    put_u16(&mut o, tags::COLUMNS, img.columns);
    put_u16(&mut o, tags::BITS_ALLOCATED, 8);
    put_u16(&mut o, tags::BITS_STORED, 8);
    put_u16(&mut o, tags::HIGH_BIT, 7);
    put_u16(&mut o, tags::PIXEL_REPRESENTATION, 0);
    if rgb.len() % 2 == 1 {
        rgb.push(0);
    }
    put(&mut o, tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(rgb.into()));
    let bytes = file_bytes(o, SC_STORAGE, &sop_uid)?;
    Ok((sop_uid, bytes))
}

/// One SC per slice, in the report's order: (source SOP instance UID, SC SOP instance UID, bytes).
pub fn build(src: &SeriesSource, report: &SeriesReport) -> Result<Vec<(String, String, Vec<u8>)>, String> {
    src.images
        .iter()
        .enumerate()
        .map(|(i, img)| one(src, report, img, i).map(|(uid, b)| (img.sop_instance_uid.clone(), uid, b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_is_burned_in_and_orientation_named() {
        let (w, h) = (200, 40);
        let mut rgb = vec![128u8; w * h * 3];
        let (_, _, bw, bh) = burn_notice(&mut rgb, w, h);
        assert_eq!((bw, bh), (20 * 8 + 4, 24));
        let yellow = rgb.chunks(3).filter(|p| *p == NOTICE_RGB).count();
        assert!(yellow > 100, "{yellow} text pixels");
        // outside the box nothing changed
        assert!(rgb[(30 * w + 190) * 3..].iter().all(|&v| v == 128));
        assert_eq!(patient_orientation(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), "L\\P");
        assert_eq!(patient_orientation(&[-1.0, 0.0, 0.0, 0.0, 0.0, -1.0]), "R\\F");
    }
}
