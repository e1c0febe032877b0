//! Per-slice outputs under `<output>/<series key>/`: `<stem>.json` (the report), `<stem>_mask.png`
//! (label mask: 0 background, 1 GGO, 2 consolidation) and `<stem>_overlay.png`. The series key is
//! the series UID, or `dir-<hash of the folder>` for loose images; the stem is the SOP instance
//! UID, or the first 16 hex digits of the content hash (plus `_f<frame>` for multi-frame files).
//! Names come from UIDs and hashes only, never from patient data; neither the reports nor the
//! summaries carry the input's path or file name (folders and file names often hold patient
//! names): a slice is named by its series and SOP UIDs, instance number and content hash.
//!
//! Every file appears whole: written under a temporary name (`.ctmask-tmp-*`) in the same folder,
//! fsynced, renamed, and the folder fsynced once per batch of files ([`crate::fsutil`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::sha256_hex;
use crate::fsutil::{AtomicBatch, TEMP_PREFIX, WriteError};
use crate::png_encode::{ExtendedColorType, FilterType, encode_png};

use super::queue::{ScreenedSlice, SliceRecord};
use super::thumbnail::{THUMBNAIL_MAX_SIDE, downsample};
use crate::findings::{Classification, Finding, Lesion, MASK_CONSOLIDATION, MASK_GGO};
use crate::protocol::{Label, ModelInfo};
use crate::slice::{Slice, SliceFormat, SliceMeta};

/// Schema of the per-slice JSON report.
/// Version 2: `input.path` removed (privacy).
pub const SLICE_SCHEMA: &str = "ctmask.slice/2";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
}

impl OutputError {
    /// Whether the disk (or a quota) is full: not the slice's fault, so not counted as a try.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutputError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

type Result<T> = std::result::Result<T, OutputError>;

impl From<WriteError> for OutputError {
    fn from(e: WriteError) -> Self {
        OutputError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Removes temporary files left by a crash in `root` and its series folders; returns how many.
pub fn sweep_temp_files(root: &Path) -> usize {
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest with `_`, never starts with `.`, at most 64 chars.
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

/// The series folder name: the series UID, or `dir-<hash>` of the input's folder.
pub fn series_key(meta: &SliceMeta, input: &Path) -> String {
    match meta.series_uid.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(uid) => sanitize(uid.trim()),
        None => folder_key(input),
    }
}

/// `dir-<first 16 hex digits of sha256(folder path)>`.
pub fn folder_key(input: &Path) -> String {
    let folder = input.parent().unwrap_or(Path::new("/"));
    format!("dir-{}", &sha256_hex(folder.as_os_str().as_encoded_bytes())[..16])
}

/// The file stem of one slice's outputs.
pub fn slice_stem(meta: &SliceMeta, sha256: &str) -> String {
    let base = match meta.sop_uid.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(uid) => sanitize(uid.trim()),
        None => sha256.chars().take(16).collect(),
    };
    match meta.frame {
        Some(f) => format!("{base}_f{f}"),
        None => base,
    }
}

fn format_name(f: &SliceFormat) -> (&'static str, Option<&str>) {
    match f {
        SliceFormat::Png => ("png", None),
        SliceFormat::Jpeg => ("jpeg", None),
        SliceFormat::Dicom { transfer_syntax } => ("dicom", Some(transfer_syntax.as_str())),
    }
}

/// What the daemon knows about a slice besides the slice itself.
pub struct SliceContext<'a> {
    pub job_id: i64,
    /// Only for the series key of loose images (a hash of its folder); never written out.
    pub path: &'a Path,
    pub sha256: &'a str,
    pub models: &'a [ModelInfo],
}

#[derive(Serialize)]
struct InputInfo<'a> {
    sha256: &'a str,
    format: &'static str,
    transfer_syntax: Option<&'a str>,
    series_uid: Option<&'a str>,
    sop_uid: Option<&'a str>,
    instance_number: Option<i32>,
    frame: Option<u32>,
    slice_location: Option<f64>,
    image_position: Option<[f64; 3]>,
    pixel_spacing: Option<[f64; 2]>,
    slice_thickness: Option<f64>,
    gantry_tilt_deg: Option<f64>,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
struct OutputNames {
    mask: Option<String>,
    overlay: Option<String>,
}

#[derive(Serialize)]
struct SliceReport<'a> {
    schema: &'static str,
    research_use_only: bool,
    disclaimer: &'static str,
    input: InputInfo<'a>,
    models: &'a [ModelInfo],
    device: &'a str,
    job_id: i64,
    classification: Option<&'a Classification>,
    lesions: &'a [Lesion],
    /// The lung gate's setting and effect on this slice.
    #[serde(skip_serializing_if = "Option::is_none")]
    lung_gate: Option<&'a crate::findings::LungGate>,
    /// The counting threshold's setting and effect on this slice.
    #[serde(skip_serializing_if = "Option::is_none")]
    score_gate: Option<&'a crate::findings::ScoreGate>,
    lung_field_px: Option<u64>,
    involvement: &'a std::collections::BTreeMap<String, f64>,
    timings_ms: &'a std::collections::BTreeMap<String, f64>,
    outputs: OutputNames,
    screened_ms: i64,
}

fn png(path: &Path, w: u32, h: u32, data: &[u8], color: ExtendedColorType) -> Result<Vec<u8>> {
    encode_png(data, w, h, color, FilterType::Sub).map_err(|e| OutputError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes one slice's report, mask and overlay; returns the record the queue keeps and the
/// thumbnail.
pub fn write_slice(
    output: &Path,
    ctx: &SliceContext<'_>,
    slice: &Slice,
    finding: &Finding,
) -> Result<ScreenedSlice> {
    let meta = &slice.meta;
    let key = series_key(meta, ctx.path);
    let stem = slice_stem(meta, ctx.sha256);
    let dir = output.join(&key);
    let mut finding = finding.clone();
    if let Some(spacing) = meta.pixel_spacing
        && finding.lesions.iter().any(|l| l.area_mm2.is_none())
    {
        finding.set_lesion_areas_mm2(spacing);
    }
    let (w, h) = (finding.width, finding.height);
    let n = w as usize * h as usize;
    let mut batch = AtomicBatch::new(&dir)?;
    let mut names = OutputNames {
        mask: None,
        overlay: None,
    };
    if n > 0 && finding.label_mask.len() == n {
        let name = format!("{stem}_mask.png");
        batch.add(
            &name,
            &png(&dir.join(&name), w, h, &finding.label_mask, ExtendedColorType::L8)?,
        )?;
        names.mask = Some(name);
    }
    if n > 0 && finding.overlay_rgb.len() == n * 3 {
        let name = format!("{stem}_overlay.png");
        batch.add(
            &name,
            &png(
                &dir.join(&name),
                w,
                h,
                &finding.overlay_rgb,
                ExtendedColorType::Rgb8,
            )?,
        )?;
        names.overlay = Some(name);
    }
    let (format, transfer_syntax) = format_name(&slice.format);
    let report_name = format!("{stem}.json");
    let report = SliceReport {
        schema: SLICE_SCHEMA,
        research_use_only: true,
        disclaimer: crate::DISCLAIMER,
        input: InputInfo {
            sha256: ctx.sha256,
            format,
            transfer_syntax,
            series_uid: meta.series_uid.as_deref(),
            sop_uid: meta.sop_uid.as_deref(),
            instance_number: meta.instance_number,
            frame: meta.frame,
            slice_location: meta.slice_location,
            image_position: meta.image_position,
            pixel_spacing: meta.pixel_spacing,
            slice_thickness: meta.slice_thickness,
            gantry_tilt_deg: meta.gantry_tilt_deg,
            width: slice.width,
            height: slice.height,
        },
        models: ctx.models,
        device: &finding.device,
        job_id: ctx.job_id,
        classification: finding.classification.as_ref(),
        lesions: &finding.lesions,
        lung_gate: finding.lung_gate.as_ref(),
        score_gate: finding.score_gate.as_ref(),
        lung_field_px: finding.lung_field_px,
        involvement: &finding.involvement,
        timings_ms: &finding.timings_ms,
        outputs: names,
        screened_ms: crate::clock::now_ms(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| OutputError::Encode {
        path: dir.join(&report_name),
        reason: e.to_string(),
    })?;
    // The report goes last in the batch: whoever sees it finds the images beside it.
    batch.add(&report_name, &json)?;
    batch.commit()?;

    let thumbnail = if finding.overlay_rgb.len() == n * 3 && n > 0 {
        downsample(w, h, &finding.overlay_rgb, THUMBNAIL_MAX_SIDE)
    } else {
        downsample(slice.width, slice.height, &slice.rgb, THUMBNAIL_MAX_SIDE)
    };
    let record = SliceRecord {
        job_id: ctx.job_id,
        frame: meta.frame,
        series_key: key,
        series_uid: meta.series_uid.clone(),
        sop_uid: meta.sop_uid.clone(),
        instance_number: meta.instance_number,
        slice_location: meta.slice_location,
        position_z: meta.image_position.map(|p| p[2]),
        pixel_spacing: meta.pixel_spacing,
        slice_thickness: meta.slice_thickness,
        file_name: stem,
        report: report_name,
        label: finding
            .classification
            .as_ref()
            .and_then(|c| Label::parse(&c.label)),
        probabilities: finding.classification.as_ref().map(|c| c.probabilities),
        lesion_counts: finding.lesion_counts(),
        lesions_outside_lung: finding.lesions.iter().filter(|l| l.outside_lung).count() as u32,
        lung_gate_min_fraction: finding.lung_gate.as_ref().map(|g| g.min_lung_fraction),
        lesions_low_score: finding.lesions.iter().filter(|l| l.low_score).count() as u32,
        min_counted_score: finding.score_gate.as_ref().map(|g| g.min_counted_score),
        ggo_px: finding.mask_pixels(MASK_GGO),
        consolidation_px: finding.mask_pixels(MASK_CONSOLIDATION),
        lung_px: finding.lung_field_px,
        involvement: finding.involvement.clone(),
        device: finding.device.clone(),
        time_ms: finding.timings_ms.values().sum(),
        done_ms: crate::clock::now_ms() as u64,
        ..SliceRecord::default()
    };
    Ok(ScreenedSlice { record, thumbnail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_atomic;

    #[test]
    fn batches_appear_whole_and_failures_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("series");
        let mut batch = AtomicBatch::new(&sub).expect("batch");
        batch.add("a.json", b"{}").expect("a");
        batch.add("b.png", b"png").expect("b");
        // Staged files are invisible under their final names until commit.
        assert!(!sub.join("a.json").exists());
        assert_eq!(std::fs::read_dir(&sub).expect("dir").count(), 2);
        batch.commit().expect("commit");
        assert_eq!(std::fs::read(sub.join("a.json")).expect("a"), b"{}");
        write_atomic(&sub.join("a.json"), b"{\"x\":1}").expect("replace");
        assert_eq!(std::fs::read(sub.join("a.json")).expect("a"), b"{\"x\":1}");
        let names: Vec<String> = std::fs::read_dir(&sub)
            .expect("dir")
            .map(|e| e.expect("e").file_name().to_string_lossy().into())
            .collect();
        assert_eq!(names.len(), 2, "no temporary left: {names:?}");

        let mut abandoned = AtomicBatch::new(&sub).expect("batch");
        abandoned.add("c.json", b"{}").expect("c");
        drop(abandoned); // e.g. an error before commit
        assert!(!sub.join("c.json").exists());
        assert_eq!(std::fs::read_dir(&sub).expect("dir").count(), 2);

        std::fs::write(sub.join(format!("{TEMP_PREFIX}1-0-x.json")), b"{").expect("leftover");
        assert_eq!(sweep_temp_files(dir.path()), 1);
    }

    #[test]
    fn names_come_from_uids_or_hashes() {
        let mut meta = SliceMeta {
            series_uid: Some("1.2.840.1".into()),
            sop_uid: Some("1.2.840.1.7".into()),
            ..SliceMeta::default()
        };
        assert_eq!(series_key(&meta, Path::new("/in/x.dcm")), "1.2.840.1");
        assert_eq!(slice_stem(&meta, "abcdef0123456789ff"), "1.2.840.1.7");
        meta.frame = Some(3);
        assert_eq!(slice_stem(&meta, "ab"), "1.2.840.1.7_f3");
        let loose = SliceMeta::default();
        let k = series_key(&loose, Path::new("/in/study/a.png"));
        assert!(k.starts_with("dir-") && k.len() == 20, "{k}");
        assert_eq!(k, series_key(&loose, Path::new("/in/study/b.png")));
        assert_ne!(k, series_key(&loose, Path::new("/in/other/a.png")));
        assert_eq!(slice_stem(&loose, "abcdef0123456789ff"), "abcdef0123456789");
        assert_eq!(sanitize("../x y"), "_.._x_y");
        assert_eq!(sha256_hex(b"").len(), 64);
    }

    #[test]
    fn a_slice_gets_report_mask_and_overlay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slice = Slice {
            width: 2,
            height: 2,
            rgb: vec![100; 12],
            hu: None,
            format: SliceFormat::Dicom {
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
            },
            meta: SliceMeta {
                series_uid: Some("1.2.3".into()),
                sop_uid: Some("1.2.3.4".into()),
                pixel_spacing: Some([0.5, 0.5]),
                image_position: Some([0.0, 0.0, -50.0]),
                ..SliceMeta::default()
            },
        };
        let finding = Finding {
            lesions: vec![Lesion {
                class: "ggo".into(),
                label: 1,
                score: 0.9,
                bbox: [0.0; 4],
                area_px: 8,
                area_mm2: None,
                lung_fraction: None,
                outside_lung: false,
                low_score: false,
            }],
            width: 2,
            height: 2,
            label_mask: vec![0, 1, 1, 2],
            overlay_rgb: vec![50; 12],
            device: "cpu".into(),
            ..Finding::default()
        };
        let models = [ModelInfo {
            name: "seg".into(),
            sha256: "00".into(),
            training_data: None,
        }];
        let ctx = SliceContext {
            job_id: 3,
            path: Path::new("/in/IM1"),
            sha256: "ff",
            models: &models,
        };
        let out = write_slice(dir.path(), &ctx, &slice, &finding).expect("write");
        let s = &out.record;
        assert_eq!(
            (
                s.series_key.as_str(),
                s.report.as_str(),
                s.ggo_px,
                s.consolidation_px
            ),
            ("1.2.3", "1.2.3.4.json", 2, 1)
        );
        assert_eq!(s.position_z, Some(-50.0));
        assert_eq!(
            s.file_name, "1.2.3.4",
            "named by its SOP UID, not by the input file"
        );
        let series = dir.path().join("1.2.3");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(series.join("1.2.3.4.json")).expect("report"))
                .expect("json");
        assert_eq!(json["schema"], SLICE_SCHEMA);
        assert_eq!(json["research_use_only"], true);
        assert_eq!(json["input"]["format"], "dicom");
        assert!(json["input"].get("path").is_none(), "no input path in reports");
        assert!(!json.to_string().contains("IM1"), "no input file name in reports");
        assert_eq!(json["lesions"][0]["area_mm2"], 2.0);
        assert_eq!(json["outputs"]["mask"], "1.2.3.4_mask.png");
        let mask = image::open(series.join("1.2.3.4_mask.png"))
            .expect("mask png")
            .to_luma8();
        assert_eq!(mask.into_raw(), vec![0, 1, 1, 2]);
        assert!(series.join("1.2.3.4_overlay.png").is_file());
        assert_eq!(
            out.thumbnail.as_ref().map(|t| t.pixel(0, 0)),
            Some(Some([50, 50, 50]))
        );
    }
}
