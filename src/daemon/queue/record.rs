//! The queue's records: one screened slice, the JSON of the `jobs.summary` column (an array,
//! one record per frame), read back for the dashboard (`protocol::SliceSummary`) and the series
//! reports (`series::SeriesSlice`); and one reported series, the JSON of the `series.summary`
//! column, read back for the dashboard (`protocol::SeriesSummary`). Their version is the
//! database's (`schema::SCHEMA_VERSION`). Thumbnails live in their own table; the `thumbnail`
//! key stays, always null, so a row reads byte for byte as earlier versions wrote it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::{Label, SeriesSummary, SliceSummary, Thumbnail, Verdict};

/// One screened slice as the queue keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceRecord {
    pub job_id: i64,
    pub frame: Option<u32>,
    pub series_key: String,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub instance_number: Option<i32>,
    pub slice_location: Option<f64>,
    pub position_z: Option<f64>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    /// The slice's name: its outputs' stem (SOP instance UID, or the content hash's first 16 hex
    /// digits; `_f<frame>` for a frame). Never the input's file name (it may hold a patient name).
    pub file_name: String,
    /// The per-slice report's file name inside the series folder.
    pub report: String,
    pub label: Option<Label>,
    pub probabilities: Option<[f32; 3]>,
    /// Counted lesions per class (lesions flagged outside the lung or scored below the counting
    /// threshold are not).
    pub lesion_counts: BTreeMap<String, u32>,
    /// Lesions flagged outside the lung field by the lung gate.
    #[serde(default)]
    pub lesions_outside_lung: u32,
    /// The lung gate's setting when the slice was screened (None: not gated).
    #[serde(default)]
    pub lung_gate_min_fraction: Option<f64>,
    /// Lesions scored below the counting threshold (listed in the slice report only).
    #[serde(default)]
    pub lesions_low_score: u32,
    /// The counting threshold when the slice was screened (None: not recorded).
    #[serde(default)]
    pub min_counted_score: Option<f64>,
    /// GGO and consolidation pixels counted (inside the lung field when the gate is on).
    pub ggo_px: u64,
    pub consolidation_px: u64,
    pub lung_px: Option<u64>,
    pub involvement: BTreeMap<String, f64>,
    pub device: String,
    /// Model time for this slice (ms).
    pub time_ms: f64,
    pub done_ms: u64,
    #[serde(default)]
    pub thumbnail: NoThumbnail,
}

crate::protocol::slice_position!(SliceRecord);

/// What the worker hands the queue for one slice: its record and its thumbnail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScreenedSlice {
    pub record: SliceRecord,
    pub thumbnail: Option<Thumbnail>,
}

/// The `thumbnail` key of stored rows and report rows: written as `null`, read from anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoThumbnail;

impl Serialize for NoThumbnail {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

impl<'de> Deserialize<'de> for NoThumbnail {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NoThumbnail, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NoThumbnail)
    }
}

/// Converts a [`SliceRecord`] into another slice format, field by field; `thumbnail` is what the
/// target's thumbnail starts as. A field the target gains and this list lacks fails to compile.
macro_rules! from_record {
    ($to:ty, thumbnail: $thumbnail:expr) => {
        impl From<$crate::daemon::queue::SliceRecord> for $to {
            fn from(r: $crate::daemon::queue::SliceRecord) -> $to {
                Self {
                    job_id: r.job_id,
                    frame: r.frame,
                    series_key: r.series_key,
                    series_uid: r.series_uid,
                    sop_uid: r.sop_uid,
                    instance_number: r.instance_number,
                    slice_location: r.slice_location,
                    position_z: r.position_z,
                    pixel_spacing: r.pixel_spacing,
                    slice_thickness: r.slice_thickness,
                    file_name: r.file_name,
                    report: r.report,
                    label: r.label,
                    probabilities: r.probabilities,
                    lesion_counts: r.lesion_counts,
                    lesions_outside_lung: r.lesions_outside_lung,
                    lung_gate_min_fraction: r.lung_gate_min_fraction,
                    lesions_low_score: r.lesions_low_score,
                    min_counted_score: r.min_counted_score,
                    ggo_px: r.ggo_px,
                    consolidation_px: r.consolidation_px,
                    lung_px: r.lung_px,
                    involvement: r.involvement,
                    device: r.device,
                    time_ms: r.time_ms,
                    done_ms: r.done_ms,
                    thumbnail: $thumbnail,
                }
            }
        }
    };
}
pub(crate) use from_record;

// The dashboard's view of a record (its thumbnail is attached by the server when sent).
from_record!(SliceSummary, thumbnail: None);

/// One reported series as the queue keeps it (the `series.summary` column).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub key: String,
    pub series_uid: Option<String>,
    pub slice_count: u32,
    /// Slices per classifier label.
    pub counts: BTreeMap<String, u32>,
    pub verdict: Verdict,
    /// The verdict rule, spelled out with its thresholds.
    pub rule: String,
    pub ggo_ml: Option<f64>,
    pub consolidation_ml: Option<f64>,
    pub involvement_percent: Option<f64>,
    pub lesion_counts: BTreeMap<String, u32>,
    pub revision: u32,
    pub updated_ms: u64,
}

/// Converts between [`SeriesRecord`] and the wire's [`SeriesSummary`], field by field, both
/// ways (a field one gains and the other lacks fails to compile).
macro_rules! series_fields {
    ($from:ty => $to:ty) => {
        impl From<$from> for $to {
            fn from(s: $from) -> $to {
                Self {
                    key: s.key,
                    series_uid: s.series_uid,
                    slice_count: s.slice_count,
                    counts: s.counts,
                    verdict: s.verdict,
                    rule: s.rule,
                    ggo_ml: s.ggo_ml,
                    consolidation_ml: s.consolidation_ml,
                    involvement_percent: s.involvement_percent,
                    lesion_counts: s.lesion_counts,
                    revision: s.revision,
                    updated_ms: s.updated_ms,
                }
            }
        }
    };
}
series_fields!(SeriesSummary => SeriesRecord);
series_fields!(SeriesRecord => SeriesSummary);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::series::SeriesSlice;

    /// The database row and the report row are byte for byte what the one shared type (the wire's
    /// `SliceSummary`, thumbnail stripped) wrote before each format had its own type.
    #[test]
    fn rows_read_as_the_shared_type_wrote_them() {
        let record = SliceRecord {
            job_id: 7,
            frame: Some(2),
            series_key: "1.2.3".into(),
            sop_uid: Some("1.2.3.4".into()),
            pixel_spacing: Some([0.7, 0.7]),
            file_name: "1.2.3.4_f2".into(),
            label: Some(Label::Covid),
            probabilities: Some([0.1, 0.2, 0.7]),
            lesion_counts: BTreeMap::from([("ggo".into(), 2)]),
            lung_gate_min_fraction: Some(0.5),
            ggo_px: 120,
            lung_px: Some(9000),
            involvement: BTreeMap::from([("ggo".into(), 0.013)]),
            device: "cpu".into(),
            time_ms: 41.5,
            done_ms: 1_700_000_000_000,
            ..SliceRecord::default()
        };
        let wire = serde_json::to_string(&SliceSummary::from(record.clone())).expect("wire");
        assert_eq!(
            serde_json::to_string(&[&record]).expect("row"),
            format!("[{wire}]")
        );
        assert!(wire.ends_with(",\"thumbnail\":null}") && wire.contains("\"label\":\"covid\""));
        assert_eq!(
            serde_json::to_string_pretty(&SeriesSlice::from(record.clone())).expect("report row"),
            serde_json::to_string_pretty(&SliceSummary::from(record.clone())).expect("wire")
        );
        let back: Vec<SliceRecord> = serde_json::from_str(&format!("[{wire}]")).expect("read back");
        assert_eq!(back, vec![record]);
        let with_thumbnail = wire.replace(
            "\"thumbnail\":null",
            "\"thumbnail\":{\"width\":1,\"height\":1,\"channels\":1,\"data\":\"09\"}",
        );
        assert!(
            serde_json::from_str::<SliceRecord>(&with_thumbnail).is_ok(),
            "an old row's thumbnail is skipped"
        );
    }

    /// The database's series row is byte for byte what the wire's `SeriesSummary` wrote when
    /// it was the type of both.
    #[test]
    fn series_rows_read_as_the_shared_type_wrote_them() {
        let summary = SeriesSummary {
            key: "1.2.3".into(),
            series_uid: Some("1.2.3".into()),
            slice_count: 12,
            counts: BTreeMap::from([("covid".into(), 9), ("control".into(), 3)]),
            verdict: Verdict::Covid,
            rule: "covid_fraction: at least 3 slices or 10 %".into(),
            ggo_ml: Some(12.5),
            involvement_percent: Some(3.25),
            lesion_counts: BTreeMap::from([("ggo".into(), 4)]),
            revision: 2,
            updated_ms: 1_700_000_000_000,
            ..SeriesSummary::default()
        };
        let wire = serde_json::to_string(&summary).expect("wire");
        let record = SeriesRecord::from(summary.clone());
        assert_eq!(serde_json::to_string(&record).expect("row"), wire);
        assert!(wire.contains("\"verdict\":\"covid\""));
        let back: SeriesRecord = serde_json::from_str(&wire).expect("read back");
        assert_eq!(SeriesSummary::from(back), summary);
    }
}
