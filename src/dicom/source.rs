//! What the DICOM writers need of a reported series, gathered from what the daemon already has:
//! the series report (slices in anatomical order, volumes), each slice's label mask and overlay
//! PNG in the series folder, and the header of each slice's source file (read up to the pixel
//! data: SOP class and instance, geometry, and the patient and study attributes to copy).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::elements::{floats, text};
use crate::daemon::series::SeriesReport;

/// One source image (a single-frame CT slice).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImage {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub position: [f64; 3],
    pub orientation: [f64; 6],
    pub rows: u16,
    pub columns: u16,
    /// Label mask (0 background, 1 GGO, 2 consolidation), rows x columns.
    pub mask: Vec<u8>,
    /// The overlay (grey slice with coloured lesions), rows x columns x RGB.
    pub overlay: Vec<u8>,
}

/// A series ready for the DICOM writers.
#[derive(Debug, Clone)]
pub struct SeriesSource {
    pub series_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub pixel_spacing: [f64; 2],
    pub slice_thickness: Option<f64>,
    /// The first source header (patient, study and frame of reference are copied from it).
    pub header: InMemDicomObject,
    /// In the report's anatomical order.
    pub images: Vec<SourceImage>,
}

fn read_header(path: &Path) -> Result<InMemDicomObject, String> {
    let file = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|_| "a source file is no longer readable DICOM".to_string())?;
    Ok(file.into_inner())
}

fn png(path: &Path, rgb: bool) -> Result<(u32, u32, Vec<u8>), String> {
    let img = image::open(path).map_err(|e| {
        format!(
            "cannot read {}: {e}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )
    })?;
    let (w, h) = (img.width(), img.height());
    let data = if rgb {
        img.into_rgb8().into_raw()
    } else {
        img.into_luma8().into_raw()
    };
    Ok((w, h, data))
}

/// Gathers a series: `paths(job_id)` lists the files a job's content was seen at (newest first).
pub fn gather(
    output: &Path,
    report: &SeriesReport,
    paths: impl Fn(i64) -> Vec<PathBuf>,
) -> Result<SeriesSource, String> {
    let series_uid = report
        .series_uid
        .clone()
        .ok_or("not a DICOM series (no series UID)")?;
    if report.slices.is_empty() {
        return Err("no slices".into());
    }
    let dir = output.join(&report.series_key);
    let mut first_header = None;
    let mut images = Vec::with_capacity(report.slices.len());
    for s in &report.slices {
        if s.frame.is_some() {
            return Err("multi-frame sources are not supported by the DICOM writers".into());
        }
        let sop = s.sop_uid.as_deref().ok_or("a slice has no SOP instance UID")?;
        let mut header = None;
        let mut last_err = format!("the source of job {} is gone", s.job_id);
        for p in paths(s.job_id) {
            match read_header(&p) {
                Ok(h) if text(&h, tags::SOP_INSTANCE_UID).as_deref() == Some(sop) => {
                    header = Some(h);
                    break;
                }
                Ok(_) => last_err = format!("the source of job {} changed", s.job_id),
                Err(e) => last_err = e,
            }
        }
        let h = header.ok_or(last_err)?;
        let stem = s.report.strip_suffix(".json").unwrap_or(&s.report);
        let (mw, mh, mask) = png(&dir.join(format!("{stem}_mask.png")), false)?;
        let (ow, oh, overlay) = png(&dir.join(format!("{stem}_overlay.png")), true)?;
        let rows = h
            .get(tags::ROWS)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(0);
        let columns = h
            .get(tags::COLUMNS)
            .and_then(|e| e.to_int::<u16>().ok())
            .unwrap_or(0);
        if (u32::from(columns), u32::from(rows)) != (mw, mh) || (mw, mh) != (ow, oh) {
            return Err(format!(
                "job {}: mask {mw}x{mh} and overlay {ow}x{oh} do not match the image {columns}x{rows}",
                s.job_id
            ));
        }
        let position = floats(&h, tags::IMAGE_POSITION_PATIENT)
            .and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| format!("job {}: no ImagePositionPatient", s.job_id))?;
        let orientation = floats(&h, tags::IMAGE_ORIENTATION_PATIENT)
            .and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| format!("job {}: no ImageOrientationPatient", s.job_id))?;
        images.push(SourceImage {
            sop_class_uid: text(&h, tags::SOP_CLASS_UID).ok_or("a source has no SOP class")?,
            sop_instance_uid: sop.to_string(),
            position,
            orientation,
            rows,
            columns,
            mask,
            overlay,
        });
        if first_header.is_none() {
            first_header = Some(h);
        }
    }
    let header = first_header.ok_or("no slices")?;
    let pixel_spacing = report
        .slices
        .iter()
        .find_map(|s| s.pixel_spacing)
        .ok_or("no pixel spacing")?;
    Ok(SeriesSource {
        series_uid,
        frame_of_reference_uid: text(&header, tags::FRAME_OF_REFERENCE_UID),
        pixel_spacing,
        slice_thickness: report.burden.slice_thickness_mm,
        header,
        images,
    })
}
