//! Plain-data results shared by the screener, the CLI and the daemon: what one slice's screening
//! found (`Finding`: classification, lesions, lung involvement, label mask and overlay). No tensors
//! here, so the daemon, the protocol and the reports stay independent of libtorch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The classifier's classes, in the order of `probabilities` and `logits`.
pub const CLASS_NAMES: [&str; 3] = ["control", "pneumonia", "covid"];

/// Label-mask values (`Finding::label_mask`).
pub const MASK_BACKGROUND: u8 = 0;
/// Ground-glass opacity.
pub const MASK_GGO: u8 = 1;
/// Consolidation.
pub const MASK_CONSOLIDATION: u8 = 2;

/// The slice classifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// One of `CLASS_NAMES`.
    pub label: String,
    /// Sigmoid of each logit (one-vs-all training) for control, pneumonia, covid: independent
    /// probabilities that need not sum to 1.
    pub probabilities: [f32; 3],
    pub logits: [f32; 3],
    /// True when the segmenter found no lesion boxes (the classifier then saw none).
    pub no_detections: bool,
}

impl Classification {
    /// Index of `label` in `CLASS_NAMES`, if it is one of them.
    pub fn class_index(&self) -> Option<usize> {
        CLASS_NAMES.iter().position(|c| *c == self.label)
    }
}

/// One detected lesion instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    /// `ggo`, `consolidation`, or `lesion` for single-class models.
    pub class: String,
    /// The model's class label (1 ggo, 2 consolidation).
    pub label: i64,
    pub score: f32,
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f32; 4],
    pub area_px: u64,
    /// Area in mm² when the pixel spacing is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area_mm2: Option<f64>,
    /// Fraction of the lesion's mask inside the lung field (None when not computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_fraction: Option<f64>,
    /// Flagged by the lung gate: essentially outside the lung field, so not counted.
    #[serde(default)]
    pub outside_lung: bool,
    /// Scored below `screening.min_counted_score`: listed, not counted.
    #[serde(default)]
    pub low_score: bool,
}

impl Lesion {
    /// Counted in the lesion counts, the involvement, the burden, the label mask and the overlay:
    /// neither flagged outside the lung nor scored below the counting threshold.
    pub fn counted(&self) -> bool {
        !self.outside_lung && !self.low_score
    }
}

/// The lung gate's setting and what it did on one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LungGate {
    /// Lesions with less than this fraction of their mask in the lung field are flagged.
    pub min_lung_fraction: f64,
    /// Lesions flagged `outside_lung` (listed, not counted).
    pub flagged: u32,
    /// Lesion pixels left out: outside the lung field, or of lesions not counted (flagged by
    /// this gate or scored below the counting threshold).
    pub excluded_px: u64,
    pub description: String,
}

/// The counting threshold's setting and what it did on one slice: lesions reported (scoring at
/// least `screening.score_threshold`) but scoring below `min_counted_score` are listed with
/// `low_score` and not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreGate {
    pub min_counted_score: f64,
    /// Lesions flagged `low_score` (listed, not counted).
    pub flagged: u32,
    pub description: String,
}

impl ScoreGate {
    /// The gate at `min_counted_score` over lesions scored `scores`: which are low, and the
    /// report's entry.
    pub fn over(min_counted_score: f64, scores: impl IntoIterator<Item = f32>) -> (Vec<bool>, ScoreGate) {
        let low: Vec<bool> = scores
            .into_iter()
            .map(|s| f64::from(s) < min_counted_score)
            .collect();
        let description = if min_counted_score <= 0.0 {
            "off: every reported lesion is counted".to_string()
        } else {
            format!(
                "lesions scoring below {min_counted_score} are listed with low_score and left out of \
                 the lesion counts, involvement, burden, label mask and overlay (the default, 0.75, \
                 is the score threshold of the original's evaluation, at which the model cards' mask \
                 AP is measured); the classifier's input is unchanged"
            )
        };
        let gate = ScoreGate {
            min_counted_score,
            flagged: low.iter().filter(|&&l| l).count() as u32,
            description,
        };
        (low, gate)
    }
}

/// Everything screening found on one slice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// None when only the segmenter ran.
    pub classification: Option<Classification>,
    pub lesions: Vec<Lesion>,
    /// Lung field in pixels, estimated from the HU image (None without HU).
    pub lung_field_px: Option<u64>,
    /// Fraction of the lung field covered, per class (`ggo`, `consolidation`): lesion pixels
    /// inside the lung field only.
    pub involvement: BTreeMap<String, f64>,
    /// The lung gate's setting and effect (None when no lesion was gated, e.g. unsegmented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_gate: Option<LungGate>,
    /// The counting threshold's setting and effect (None when unsegmented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_gate: Option<ScoreGate>,
    pub width: u32,
    pub height: u32,
    /// `height * width` labels: 0 background, 1 GGO, 2 consolidation (empty when not segmented):
    /// counted lesions' pixels only, inside the lung field when the lung gate is on.
    #[serde(skip)]
    pub label_mask: Vec<u8>,
    /// `height * width * 3` RGB overlay (empty when not rendered).
    #[serde(skip)]
    pub overlay_rgb: Vec<u8>,
    /// Stage timings in milliseconds (`segment`, `classify`, ...).
    pub timings_ms: BTreeMap<String, f64>,
    pub device: String,
}

impl Finding {
    /// Number of counted lesions ([`Lesion::counted`]) per class name.
    pub fn lesion_counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for lesion in self.lesions.iter().filter(|l| l.counted()) {
            *counts.entry(lesion.class.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Pixels of the label mask with value `label`.
    pub fn mask_pixels(&self, label: u8) -> u64 {
        self.label_mask.iter().filter(|&&v| v == label).count() as u64
    }

    /// Fills `area_mm2` of every lesion from a `[row, column]` pixel spacing in mm.
    pub fn set_lesion_areas_mm2(&mut self, pixel_spacing: [f64; 2]) {
        let pixel_mm2 = pixel_spacing[0] * pixel_spacing[1];
        for lesion in &mut self.lesions {
            lesion.area_mm2 = Some(lesion.area_px as f64 * pixel_mm2);
        }
    }
}

impl Classification {
    /// The label's index (0 control, 1 pneumonia, 2 covid); 0 for an unknown label.
    pub fn class_index_or_zero(&self) -> usize {
        self.class_index().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding() -> Finding {
        Finding {
            classification: Some(Classification {
                label: "covid".into(),
                probabilities: [0.1, 0.2, 0.7],
                logits: [-1.0, 0.0, 1.5],
                no_detections: false,
            }),
            lesions: vec![
                Lesion {
                    class: "ggo".into(),
                    label: 1,
                    score: 0.9,
                    bbox: [1.0, 2.0, 3.0, 4.0],
                    area_px: 10,
                    area_mm2: None,
                    lung_fraction: Some(1.0),
                    outside_lung: false,
                    low_score: false,
                },
                Lesion {
                    class: "ggo".into(),
                    label: 1,
                    score: 0.8,
                    bbox: [0.0; 4],
                    area_px: 4,
                    area_mm2: None,
                    lung_fraction: Some(0.0),
                    outside_lung: true,
                    low_score: false,
                },
            ],
            width: 2,
            height: 2,
            label_mask: vec![0, 1, 1, 2],
            overlay_rgb: vec![0; 12],
            ..Finding::default()
        }
    }

    #[test]
    fn score_gate_flags_lesions_below_the_counting_score() {
        let (low, gate) = ScoreGate::over(0.75, [0.9, 0.75, 0.7499, 0.05]);
        assert_eq!(low, [false, false, true, true]);
        assert_eq!((gate.min_counted_score, gate.flagged), (0.75, 2));
        assert!(gate.description.contains("below 0.75"), "{}", gate.description);
        let (low, gate) = ScoreGate::over(0.0, [0.9, 0.05]);
        assert_eq!((low, gate.flagged), (vec![false, false], 0));
        assert!(gate.description.starts_with("off"));
    }

    #[test]
    fn serde_skips_images_and_round_trips_the_rest() {
        let f = finding();
        let json = serde_json::to_string(&f).expect("serialize");
        assert!(!json.contains("label_mask") && !json.contains("overlay_rgb"));
        let back: Finding = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.lesions, f.lesions);
        assert_eq!(back.classification, f.classification);
        assert!(back.label_mask.is_empty());
    }

    #[test]
    fn counts_pixels_and_areas() {
        let mut f = finding();
        // the second lesion is flagged outside the lung: listed, not counted
        assert_eq!(f.lesion_counts().get("ggo"), Some(&1));
        // so is a lesion scored below the counting threshold
        f.lesions[0].low_score = true;
        assert!(!f.lesions[0].counted() && f.lesion_counts().is_empty());
        f.lesions[0].low_score = false;
        assert_eq!(f.mask_pixels(MASK_GGO), 2);
        assert_eq!(f.mask_pixels(MASK_CONSOLIDATION), 1);
        f.set_lesion_areas_mm2([0.5, 0.5]);
        assert_eq!(f.lesions[0].area_mm2, Some(2.5));
        assert_eq!(
            f.classification.as_ref().and_then(Classification::class_index),
            Some(2)
        );
    }
}
