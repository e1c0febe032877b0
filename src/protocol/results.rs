//! What `recent`, `series` and `thumbnail` answer: series and slice summaries as the dashboard
//! shows them, and thumbnails (made by `daemon::thumbnail`; sent as hex strings to keep lines short).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Label, Verdict};

/// Recent series and slices (`recent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Newest first.
    pub series: Vec<SeriesSummary>,
    /// Newest first.
    pub slices: Vec<SliceSummary>,
    /// For `series`: how many slices the series has (pages with `offset` and `limit`).
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// The series' output folder name (series UID, or `dir-<hash>` for loose images).
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
    /// Lesion pixels over lung pixels, all slices, in percent.
    pub involvement_percent: Option<f64>,
    pub lesion_counts: BTreeMap<String, u32>,
    /// How many times the series was reported (late slices report it again).
    pub revision: u32,
    pub updated_ms: u64,
}

/// One screened slice as the dashboard sees it (the queue keeps `daemon::queue::SliceRecord`, a
/// series report lists `daemon::series::SeriesSlice`; `From` converts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceSummary {
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
    /// Lesions flagged outside the lung field by the lung gate (listed in the slice report only).
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
    pub thumbnail: Option<Thumbnail>,
}

/// A small image for half-block rendering: `data` is `height * width * channels` bytes, row-major,
/// channels 1 (grey) or 3 (RGB); sent as a hex string.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

impl Thumbnail {
    /// The RGB colour at (x, y), or None outside the image or for malformed data.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let c = usize::from(self.channels);
        let i = (y as usize * self.width as usize + x as usize) * c;
        match c {
            1 => self.data.get(i).map(|&g| [g, g, g]),
            3 => self.data.get(i..i + 3).map(|p| [p[0], p[1], p[2]]),
            _ => None,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(D::Error::custom("hex string of odd length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16).map_err(D::Error::custom))
            .collect()
    }
}
