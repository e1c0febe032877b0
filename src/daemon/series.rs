//! Per-series reports: `<output>/<series key>/series.json`, written when no slice of the series
//! arrived for the quiet period and written again (next `revision`) when late slices arrive.
//!
//! Slices are listed in anatomical order: by ImagePositionPatient z (ascending: feet to head) when
//! every slice has it, else SliceLocation, else InstanceNumber, else file name. The lesion burden
//! sums each slice's GGO and consolidation areas (pixels x row spacing x column spacing) times the
//! slice thickness (SliceThickness, else the median spacing of successive z positions), in mL; the
//! involvement is lesion pixels over lung-field pixels over the slices whose lung field is known.
//! Both count only lesion pixels the lung gate kept (in the lung field, of lesions not flagged
//! `outside_lung`); `lung_gate` names the setting and how many lesions it flagged.
//! The verdict follows the configured rule (`SeriesSettings`), named and spelled out in the report.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::outputs::OutputError;
use super::queue::{NoThumbnail, SliceRecord, from_record};
use super::settings::{SeriesSettings, VerdictRule};
use crate::fsutil::write_atomic_creating_dir;
use crate::protocol::{Label, ModelInfo, SeriesSummary, Verdict};

/// File name of the series report inside the series folder.
pub const SERIES_FILE: &str = "series.json";

#[derive(Debug, Clone, Serialize)]
pub struct Burden {
    pub ggo_ml: Option<f64>,
    pub consolidation_ml: Option<f64>,
    pub involvement_percent: Option<f64>,
    pub slice_thickness_mm: Option<f64>,
    /// `slice_thickness`, `position_spacing` or `unknown`.
    pub thickness_source: &'static str,
    pub method: &'static str,
}

/// The counting threshold over the series: its setting and how many lesions scored below it.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesScoreGate {
    /// The setting the slices were screened with (None: not recorded).
    pub min_counted_score: Option<f64>,
    /// Lesions scored below it over all slices: listed in the slice reports, left out of
    /// `lesion_counts`, the burden and the involvement.
    pub lesions_low_score: u32,
    pub description: &'static str,
}

/// The lung gate over the series: its setting and how many lesions it flagged.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesLungGate {
    /// The setting the slices were screened with (None: no slice was gated).
    pub min_lung_fraction: Option<f64>,
    /// Lesions flagged outside the lung field over all slices: listed in the slice reports,
    /// left out of `lesion_counts`, the burden and the involvement.
    pub lesions_outside_lung: u32,
    pub description: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesVerdict {
    pub label: Verdict,
    pub rule: &'static str,
    pub description: String,
    pub classified_slices: u32,
    pub covid_slices: u32,
    pub covid_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    pub schema: &'static str,
    pub research_use_only: bool,
    pub disclaimer: &'static str,
    pub series_key: String,
    pub series_uid: Option<String>,
    pub revision: u32,
    pub complete: bool,
    pub slice_count: u32,
    /// How `slices` are ordered.
    pub order: &'static str,
    pub slices: Vec<SeriesSlice>,
    /// Slices per classifier label (`unclassified` for slices without a label).
    pub counts: BTreeMap<String, u32>,
    /// Counted lesions per class (not those flagged outside the lung or scored low).
    pub lesion_counts: BTreeMap<String, u32>,
    pub lung_gate: SeriesLungGate,
    pub score_gate: SeriesScoreGate,
    pub burden: Burden,
    pub verdict: SeriesVerdict,
    pub models: Vec<ModelInfo>,
    pub reported_ms: i64,
}

impl SeriesReport {
    /// Schema (the version marker) of `series.json`.
    pub const SCHEMA: &'static str = "ctmask.series/1";
}

/// One slice as `series.json` lists it (one row of `slices`, in anatomical order). It reads as the
/// queue's record did when reports were first written; `SeriesReport::SCHEMA` versions it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SeriesSlice {
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
    pub lesions_outside_lung: u32,
    /// The lung gate's setting when the slice was screened (None: not gated).
    pub lung_gate_min_fraction: Option<f64>,
    /// Lesions scored below the counting threshold (listed in the slice report only).
    pub lesions_low_score: u32,
    /// The counting threshold when the slice was screened (None: not recorded).
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
    pub thumbnail: NoThumbnail,
}

from_record!(SeriesSlice, thumbnail: NoThumbnail);

/// Sorts slices anatomically (`protocol::anatomical_order`); returns the key used.
pub fn order_slices(slices: &mut [SliceRecord]) -> &'static str {
    crate::protocol::anatomical_order(slices)
}

/// The series verdict by the configured rule.
pub fn verdict(slices: &[SliceRecord], cfg: &SeriesSettings) -> SeriesVerdict {
    let classified: Vec<&SliceRecord> = slices.iter().filter(|s| s.label.is_some()).collect();
    let n = classified.len() as u32;
    let count = |label: Label| classified.iter().filter(|s| s.label == Some(label)).count() as u32;
    let percent = |k: u32| {
        if n == 0 {
            0.0
        } else {
            100.0 * f64::from(k) / f64::from(n)
        }
    };
    let covid = count(Label::Covid);
    let (rule, description, label) = match cfg.rule {
        VerdictRule::CovidFraction => {
            let (k, p) = (cfg.min_covid_slices, cfg.min_covid_percent);
            let hit = |c: u32| c > 0 && (c >= k || percent(c) >= p);
            let label = if n == 0 {
                Verdict::Unclassified
            } else if hit(covid) {
                Verdict::Covid
            } else if hit(count(Label::Pneumonia)) {
                Verdict::Pneumonia
            } else {
                Verdict::Control
            };
            let text = format!(
                "covid if at least {k} slices or {p}% of the classified slices are labelled covid; \
                 else pneumonia by the same thresholds; else control"
            );
            ("covid_fraction", text, label)
        }
        VerdictRule::MeanProbability => {
            let mut mean = [0f64; 3];
            let with_p: Vec<[f32; 3]> = slices.iter().filter_map(|s| s.probabilities).collect();
            for p in &with_p {
                for (m, v) in mean.iter_mut().zip(p) {
                    *m += f64::from(*v) / with_p.len() as f64;
                }
            }
            let best = (0..3).max_by(|&a, &b| mean[a].total_cmp(&mean[b])).unwrap_or(0);
            let label = if with_p.is_empty() {
                Verdict::Unclassified
            } else {
                Label::from_index(best).map_or(Verdict::Unclassified, Verdict::from)
            };
            (
                "mean_probability",
                "the class with the highest mean probability over the slices".to_string(),
                label,
            )
        }
    };
    SeriesVerdict {
        label,
        rule,
        description,
        classified_slices: n,
        covid_slices: covid,
        covid_percent: percent(covid),
    }
}

/// GGO and consolidation volumes and lung involvement of slices in anatomical order.
pub fn burden(slices: &[SliceRecord]) -> Burden {
    let zs: Vec<f64> = slices.iter().filter_map(|s| s.position_z).collect();
    let mut gaps: Vec<f64> = zs
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .filter(|g| *g > 1e-6)
        .collect();
    gaps.sort_by(f64::total_cmp);
    let spacing_z = gaps.get(gaps.len() / 2).copied();
    let has_thickness = slices.iter().any(|s| s.slice_thickness.is_some());
    let mut volumes = [Some(0.0f64), Some(0.0f64)];
    for s in slices {
        let thickness = s.slice_thickness.or(spacing_z);
        for (vol, px) in volumes.iter_mut().zip([s.ggo_px, s.consolidation_px]) {
            *vol = match (*vol, s.pixel_spacing, thickness) {
                (Some(v), Some([r, c]), Some(t)) => Some(v + px as f64 * r * c * t / 1000.0),
                _ => None,
            };
        }
    }
    if slices.is_empty() {
        volumes = [None, None];
    }
    let with_lung: Vec<&SliceRecord> = slices
        .iter()
        .filter(|s| s.lung_px.is_some_and(|l| l > 0))
        .collect();
    let lung: u64 = with_lung.iter().filter_map(|s| s.lung_px).sum();
    let lesion: u64 = with_lung.iter().map(|s| s.ggo_px + s.consolidation_px).sum();
    Burden {
        ggo_ml: volumes[0],
        consolidation_ml: volumes[1],
        involvement_percent: (lung > 0).then(|| 100.0 * lesion as f64 / lung as f64),
        slice_thickness_mm: slices.iter().find_map(|s| s.slice_thickness).or(spacing_z),
        thickness_source: if has_thickness {
            "slice_thickness"
        } else if spacing_z.is_some() {
            "position_spacing"
        } else {
            "unknown"
        },
        method: "sum over slices of lesion pixels x row spacing x column spacing x slice thickness; \
                 involvement = lesion pixels / lung-field pixels",
    }
}

/// Builds the report of one series from all its screened slices.
pub fn build(
    key: &str,
    mut slices: Vec<SliceRecord>,
    cfg: &SeriesSettings,
    revision: u32,
    models: &[ModelInfo],
) -> SeriesReport {
    let order = order_slices(&mut slices);
    let mut counts = BTreeMap::new();
    let mut lesion_counts = BTreeMap::new();
    for s in &slices {
        *counts
            .entry(Verdict::of_slice(s.label).as_str().to_string())
            .or_insert(0) += 1;
        for (class, n) in &s.lesion_counts {
            *lesion_counts.entry(class.clone()).or_insert(0) += n;
        }
    }
    SeriesReport {
        schema: SeriesReport::SCHEMA,
        research_use_only: true,
        disclaimer: crate::DISCLAIMER,
        series_key: key.to_string(),
        series_uid: slices.iter().find_map(|s| s.series_uid.clone()),
        revision,
        complete: true,
        slice_count: slices.len() as u32,
        order,
        burden: burden(&slices),
        verdict: verdict(&slices, cfg),
        counts,
        lesion_counts,
        lung_gate: SeriesLungGate {
            min_lung_fraction: slices.iter().find_map(|s| s.lung_gate_min_fraction),
            lesions_outside_lung: slices.iter().map(|s| s.lesions_outside_lung).sum(),
            description: "a lesion with less than min_lung_fraction of its mask in the lung field is \
                          flagged outside_lung; the burden and involvement count lesion pixels in \
                          the lung field only",
        },
        score_gate: SeriesScoreGate {
            min_counted_score: slices.iter().find_map(|s| s.min_counted_score),
            lesions_low_score: slices.iter().map(|s| s.lesions_low_score).sum(),
            description: "a lesion scoring below min_counted_score is flagged low_score and left out \
                          of the lesion counts, the burden and the involvement",
        },
        slices: slices.into_iter().map(SeriesSlice::from).collect(),
        models: models.to_vec(),
        reported_ms: crate::clock::now_ms(),
    }
}

impl SeriesReport {
    /// The dashboard's view of this report.
    pub fn summary(&self) -> SeriesSummary {
        SeriesSummary {
            key: self.series_key.clone(),
            series_uid: self.series_uid.clone(),
            slice_count: self.slice_count,
            counts: self.counts.clone(),
            verdict: self.verdict.label,
            rule: format!("{}: {}", self.verdict.rule, self.verdict.description),
            ggo_ml: self.burden.ggo_ml,
            consolidation_ml: self.burden.consolidation_ml,
            involvement_percent: self.burden.involvement_percent,
            lesion_counts: self.lesion_counts.clone(),
            revision: self.revision,
            updated_ms: self.reported_ms.max(0) as u64,
        }
    }

    /// Writes `<output>/<key>/series.json` atomically.
    pub fn write(&self, output: &Path) -> Result<(), OutputError> {
        let path = output.join(&self.series_key).join(SERIES_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| OutputError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(write_atomic_creating_dir(&path, &json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(job_id: i64, z: f64, label: &str, ggo_px: u64) -> SliceRecord {
        SliceRecord {
            job_id,
            series_key: "S".into(),
            series_uid: Some("1.2".into()),
            position_z: Some(z),
            instance_number: Some(job_id as i32),
            pixel_spacing: Some([0.5, 0.5]),
            label: Label::parse(label),
            probabilities: Some(if label == "covid" {
                [0.1, 0.1, 0.8]
            } else {
                [0.8, 0.1, 0.1]
            }),
            ggo_px,
            consolidation_px: 100,
            lung_px: Some(10_000),
            ..SliceRecord::default()
        }
    }

    #[test]
    fn orders_anatomically_and_measures_burden() {
        let mut slices = vec![
            slice(1, 10.0, "covid", 400),
            slice(2, 0.0, "control", 0),
            slice(3, 5.0, "covid", 400),
        ];
        for s in &mut slices {
            (s.lesions_outside_lung, s.lesions_low_score) = (1, 2);
            (s.lung_gate_min_fraction, s.min_counted_score) = (Some(0.5), Some(0.75));
        }
        let r = build("S", slices, &SeriesSettings::default(), 1, &[]);
        // both gates name their setting and sum what they flagged over the slices
        assert_eq!(
            (r.lung_gate.min_lung_fraction, r.lung_gate.lesions_outside_lung),
            (Some(0.5), 3)
        );
        assert_eq!(
            (r.score_gate.min_counted_score, r.score_gate.lesions_low_score),
            (Some(0.75), 6)
        );
        assert_eq!(r.order, "image_position_z");
        assert_eq!(
            r.slices.iter().map(|s| s.job_id).collect::<Vec<_>>(),
            vec![2, 3, 1]
        );
        assert_eq!(r.burden.thickness_source, "position_spacing");
        // 800 px * 0.25 mm² * 5 mm / 1000 = 1 mL; consolidation 300 px -> 0.375 mL.
        assert!((r.burden.ggo_ml.expect("ggo") - 1.0).abs() < 1e-9);
        assert!((r.burden.consolidation_ml.expect("cons") - 0.375).abs() < 1e-9);
        assert!((r.burden.involvement_percent.expect("inv") - 100.0 * 1100.0 / 30_000.0).abs() < 1e-9);
        assert_eq!(r.counts.get("covid"), Some(&2));
        let summary = r.summary();
        assert_eq!((summary.verdict.as_str(), summary.slice_count), ("covid", 3));
        assert!(summary.rule.starts_with("covid_fraction"));
    }

    #[test]
    fn falls_back_to_other_orders_and_unknown_volumes() {
        let mut s = vec![slice(1, 0.0, "covid", 1), slice(2, 0.0, "covid", 1)];
        s[0].position_z = None;
        s[0].instance_number = Some(9);
        s[1].instance_number = Some(3);
        s[0].pixel_spacing = None;
        assert_eq!(order_slices(&mut s), "instance_number");
        assert_eq!(s[0].job_id, 2);
        let b = burden(&s);
        assert_eq!((b.ggo_ml, b.thickness_source), (None, "unknown"));
    }

    #[test]
    fn verdict_rules_follow_their_thresholds() {
        let mut slices: Vec<SliceRecord> = (0..20).map(|i| slice(i, i as f64, "control", 0)).collect();
        let cfg = SeriesSettings {
            min_covid_slices: 3,
            min_covid_percent: 15.0,
            ..SeriesSettings::default()
        };
        assert_eq!(verdict(&slices, &cfg).label, Verdict::Control);
        slices[0].label = Some(Label::Covid);
        slices[1].label = Some(Label::Covid);
        assert_eq!(
            verdict(&slices, &cfg).label,
            Verdict::Control,
            "2 slices = 10 %: under both thresholds"
        );
        slices[2].label = Some(Label::Covid);
        let v = verdict(&slices, &cfg);
        assert_eq!(
            (v.label.as_str(), v.covid_slices, v.covid_percent),
            ("covid", 3, 15.0)
        );
        let mean = SeriesSettings {
            rule: VerdictRule::MeanProbability,
            ..cfg.clone()
        };
        assert_eq!(verdict(&slices, &mean).label, Verdict::Control);
        assert_eq!(verdict(&[], &cfg).label, Verdict::Unclassified);
    }
}
