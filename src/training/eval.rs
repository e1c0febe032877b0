//! Metrics. Segmentation: the original's per-image mask AP (spec §2.9: matterport-style
//! matching that loops over ground truths, AP per image, images without predictions or ground
//! truth scored by the table below, averaged over all images) beside a COCO-style dataset-level
//! mask AP. Classification: the confusion matrix and the figures derived from it. Below them,
//! the evaluation loops that run a model over a data set into these metrics.
//!
//! | predictions | ground truth | AP of the image |
//! |---|---|---|
//! | yes | yes | computed |
//! | no | no | 1 |
//! | no | yes | 0 |
//! | yes | no | 0 |

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::cncb::CncbDataset;
use crate::model::MaskRcnn;
use crate::training::{PilResize, classifier_image};

/// One predicted or ground-truth instance of an image: class label and a binary mask.
#[derive(Debug, Clone)]
pub struct MaskInstance {
    pub label: i64,
    pub score: f32,
    /// Row-major H*W, nonzero inside.
    pub mask: Vec<bool>,
}

/// The original's ten IoU thresholds (`torch.arange(0.5, 1, 0.05)` in float32).
pub fn iou_thresholds() -> Vec<f32> {
    (0..10).map(|i| 0.5f32 + 0.05f32 * i as f32).collect()
}

/// IoU of two binary masks.
pub fn mask_iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut na, mut nb) = (0u64, 0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        na += u64::from(x);
        nb += u64::from(y);
        inter += u64::from(x && y);
    }
    let union = na + nb - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// AP of one image at one threshold, exactly as the original computes it (§2.9).
pub fn image_ap(preds: &[MaskInstance], gts: &[MaskInstance], threshold: f32) -> f64 {
    match (preds.is_empty(), gts.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        _ => {}
    }
    let mut order: Vec<usize> = (0..preds.len()).collect();
    order.sort_by(|&a, &b| preds[b].score.total_cmp(&preds[a].score));
    let sorted: Vec<&MaskInstance> = order.iter().map(|&i| &preds[i]).collect();
    let mut pred_matched = vec![false; sorted.len()];
    for gt in gts {
        let mut cands: Vec<(usize, f64)> = sorted
            .iter()
            .enumerate()
            .map(|(j, p)| (j, mask_iou(&p.mask, &gt.mask)))
            .filter(|&(_, iou)| iou > threshold as f64)
            .collect();
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(&(j, _)) = cands.iter().find(|&&(j, _)| sorted[j].label == gt.label) {
            pred_matched[j] = true;
        }
    }
    ap_from_matches(&pred_matched, gts.len())
}

/// matterport's AP from per-prediction matches (in score order) and the number of GT.
pub fn ap_from_matches(matched: &[bool], num_gt: usize) -> f64 {
    let mut precisions = vec![0.0];
    let mut recalls = vec![0.0];
    let mut hits = 0usize;
    for (k, &m) in matched.iter().enumerate() {
        hits += usize::from(m);
        precisions.push(hits as f64 / (k + 1) as f64);
        recalls.push(hits as f64 / num_gt as f64);
    }
    precisions.push(0.0);
    recalls.push(1.0);
    for i in (0..precisions.len() - 1).rev() {
        precisions[i] = precisions[i].max(precisions[i + 1]);
    }
    (1..recalls.len())
        .filter(|&i| recalls[i - 1] != recalls[i])
        .map(|i| (recalls[i] - recalls[i - 1]) * precisions[i])
        .sum()
}

/// Segmentation metrics of a data set.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentationMetrics {
    pub images: usize,
    /// The original's per-image metric: mean over images at each threshold.
    pub per_threshold: Vec<(f32, f64)>,
    pub map_50_95: f64,
    pub ap_50: f64,
    pub ap_75: f64,
    /// Per class (label, name): the original's per-image AP@0.5 restricted to that class.
    pub per_class_ap_50: Vec<(i64, String, f64)>,
    /// The original's AP@0.5 of each image, in the order the images were added.
    pub per_image_ap_50: Vec<f64>,
    /// COCO-style dataset-level mask AP (101-point interpolation, greedy by score).
    pub coco_map_50_95: f64,
    pub coco_ap_50: f64,
    pub coco_ap_75: f64,
    /// The lung involvement's agreement with the ground truth per detection score threshold
    /// (filled by [`evaluate_segmentation`]; empty from [`SegmentationEvaluator::finish`]).
    pub involvement: Vec<InvolvementRow>,
}

/// Accumulates images and computes [`SegmentationMetrics`].
#[derive(Debug, Default)]
pub struct SegmentationEvaluator {
    images: Vec<(Vec<MaskInstance>, Vec<MaskInstance>)>,
}

impl SegmentationEvaluator {
    pub fn add(&mut self, preds: Vec<MaskInstance>, gts: Vec<MaskInstance>) {
        self.images.push((preds, gts));
    }

    pub fn finish(&self, class_names: &[String]) -> SegmentationMetrics {
        let ths = iou_thresholds();
        let n = self.images.len().max(1) as f64;
        // AP of every image at every threshold (rows: thresholds, the first 0.5)
        let per_image: Vec<Vec<f64>> = ths
            .iter()
            .map(|&t| self.images.iter().map(|(p, g)| image_ap(p, g, t)).collect())
            .collect();
        let per_threshold: Vec<(f32, f64)> = ths
            .iter()
            .zip(&per_image)
            .map(|(&t, aps)| (t, aps.iter().sum::<f64>() / n))
            .collect();
        let map = per_threshold.iter().map(|x| x.1).sum::<f64>() / per_threshold.len() as f64;
        let per_class = class_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let label = i as i64 + 1;
                let only =
                    |v: &[MaskInstance]| v.iter().filter(|m| m.label == label).cloned().collect::<Vec<_>>();
                let ap = self
                    .images
                    .iter()
                    .map(|(p, g)| image_ap(&only(p), &only(g), 0.5))
                    .sum::<f64>()
                    / n;
                (label, name.clone(), ap)
            })
            .collect();
        let coco: Vec<f64> = ths
            .iter()
            .map(|&t| self.coco_ap(t, class_names.len() as i64))
            .collect();
        SegmentationMetrics {
            images: self.images.len(),
            ap_50: per_threshold[0].1,
            ap_75: per_threshold[5].1,
            per_threshold,
            map_50_95: map,
            per_class_ap_50: per_class,
            per_image_ap_50: per_image.into_iter().next().unwrap_or_default(),
            coco_map_50_95: coco.iter().sum::<f64>() / coco.len() as f64,
            coco_ap_50: coco[0],
            coco_ap_75: coco[5],
            involvement: Vec::new(),
        }
    }

    /// COCO-style AP at one threshold, averaged over classes that have ground truth.
    fn coco_ap(&self, threshold: f32, classes: i64) -> f64 {
        let mut aps = Vec::new();
        for label in 1..=classes {
            let num_gt: usize = self
                .images
                .iter()
                .map(|(_, g)| g.iter().filter(|m| m.label == label).count())
                .sum();
            if num_gt == 0 {
                continue;
            }
            let mut preds: Vec<(f32, usize, usize)> = Vec::new();
            for (ii, (p, _)) in self.images.iter().enumerate() {
                for (pi, m) in p.iter().enumerate() {
                    if m.label == label {
                        preds.push((m.score, ii, pi));
                    }
                }
            }
            preds.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut used: Vec<Vec<bool>> = self.images.iter().map(|(_, g)| vec![false; g.len()]).collect();
            let mut tp = Vec::with_capacity(preds.len());
            for &(_, ii, pi) in &preds {
                let (p, g) = &self.images[ii];
                let mut best = (-1.0f64, None);
                for (gi, gt) in g.iter().enumerate() {
                    if gt.label != label || used[ii][gi] {
                        continue;
                    }
                    let iou = mask_iou(&p[pi].mask, &gt.mask);
                    if iou >= threshold as f64 && iou > best.0 {
                        best = (iou, Some(gi));
                    }
                }
                if let (_, Some(gi)) = best {
                    used[ii][gi] = true;
                    tp.push(true);
                } else {
                    tp.push(false);
                }
            }
            let mut prec = Vec::new();
            let mut rec = Vec::new();
            let mut hits = 0;
            for (k, &t) in tp.iter().enumerate() {
                hits += usize::from(t);
                prec.push(hits as f64 / (k + 1) as f64);
                rec.push(hits as f64 / num_gt as f64);
            }
            for i in (0..prec.len().saturating_sub(1)).rev() {
                prec[i] = prec[i].max(prec[i + 1]);
            }
            let ap = (0..=100)
                .map(|r| {
                    let r = r as f64 / 100.0;
                    rec.iter().position(|&x| x >= r).map_or(0.0, |i| prec[i])
                })
                .sum::<f64>()
                / 101.0;
            aps.push(ap);
        }
        if aps.is_empty() {
            0.0
        } else {
            aps.iter().sum::<f64>() / aps.len() as f64
        }
    }
}

/// The score thresholds at which [`InvolvementAgreement`] compares involvement: the screening
/// default (0.05, the original's inference), three between, the original's evaluation threshold
/// (0.75, the screening's `min_counted_score`) and two above it.
pub const INVOLVEMENT_SCORE_THRESHOLDS: [f64; 6] = [0.05, 0.25, 0.5, 0.75, 0.9, 0.95];

/// How well the model's lung involvement (lesion pixels in the lung field over lung-field
/// pixels) agrees with the ground truth's when only detections scoring at least a threshold are
/// counted: one row per threshold, in percentage points.
#[derive(Debug, Clone, Serialize)]
pub struct InvolvementRow {
    pub score_threshold: f64,
    /// Mean |model - truth| over all images.
    pub mean_abs_error_pp: f64,
    /// Mean (model - truth): positive where the model overstates the burden.
    pub mean_error_pp: f64,
    /// Images whose ground truth has no lesion pixel, and the model's mean involvement on them.
    pub lesion_free_images: usize,
    pub lesion_free_mean_pp: f64,
    /// Lesion-free images where the model's involvement is 1 % or more.
    pub lesion_free_at_least_1pct: usize,
}

/// Accumulates, per image, the true involvement and the model's at each of
/// [`INVOLVEMENT_SCORE_THRESHOLDS`]. The lung field is the ground truth's (lung and lesion
/// pixels), so the figures measure the detections and their masks, not the lung-field estimate.
#[derive(Debug, Default)]
pub struct InvolvementAgreement {
    /// (true involvement, the model's per threshold), as fractions.
    images: Vec<(f64, Vec<f64>)>,
}

impl InvolvementAgreement {
    /// One image: its mask values (0 background, 1 lung, 2 GGO, 3 consolidation) and the model's
    /// instances (score and mask over the same pixels). An image without lung pixels is skipped.
    pub fn add(&mut self, mask: &[u8], preds: &[MaskInstance]) {
        let in_lung = |v: u8| (1..=3).contains(&v);
        let lung = mask.iter().filter(|&&v| in_lung(v)).count();
        if lung == 0 {
            return;
        }
        let truth = mask.iter().filter(|&&v| v == 2 || v == 3).count();
        // the best score covering each lung pixel: the pixel counts at threshold t when an
        // instance scoring at least t covers it
        let mut best = vec![f32::NEG_INFINITY; mask.len()];
        for p in preds {
            for ((b, &m), &v) in best.iter_mut().zip(&p.mask).zip(mask) {
                if m && in_lung(v) && p.score > *b {
                    *b = p.score;
                }
            }
        }
        let model = INVOLVEMENT_SCORE_THRESHOLDS
            .iter()
            .map(|&t| best.iter().filter(|&&b| f64::from(b) >= t).count() as f64 / lung as f64)
            .collect();
        self.images.push((truth as f64 / lung as f64, model));
    }

    pub fn finish(&self) -> Vec<InvolvementRow> {
        let n = self.images.len().max(1) as f64;
        let free: Vec<&(f64, Vec<f64>)> = self.images.iter().filter(|(t, _)| *t == 0.0).collect();
        INVOLVEMENT_SCORE_THRESHOLDS
            .iter()
            .enumerate()
            .map(|(k, &t)| InvolvementRow {
                score_threshold: t,
                mean_abs_error_pp: 100.0 * self.images.iter().map(|(g, m)| (m[k] - g).abs()).sum::<f64>() / n,
                mean_error_pp: 100.0 * self.images.iter().map(|(g, m)| m[k] - g).sum::<f64>() / n,
                lesion_free_images: free.len(),
                lesion_free_mean_pp: 100.0 * free.iter().map(|(_, m)| m[k]).sum::<f64>()
                    / free.len().max(1) as f64,
                lesion_free_at_least_1pct: free.iter().filter(|(_, m)| m[k] >= 0.01).count(),
            })
            .collect()
    }
}

/// Class names of the classifier, in label order.
pub const CLASSIFIER_CLASSES: [&str; 3] = ["control", "pneumonia", "covid"];

/// Classification metrics from a confusion matrix (rows true, columns predicted).
#[derive(Debug, Clone, Serialize)]
pub struct ClassificationMetrics {
    pub confusion: [[u64; 3]; 3],
    pub sensitivity: [f64; 3],
    pub precision: [f64; 3],
    pub f1: [f64; 3],
    pub accuracy: f64,
    pub macro_f1: f64,
    pub covid_sensitivity: f64,
    pub images: u64,
}

/// Metrics of a confusion matrix.
pub fn classification_metrics(cm: [[u64; 3]; 3]) -> ClassificationMetrics {
    let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    let total: u64 = cm.iter().flatten().sum();
    let mut sens = [0.0; 3];
    let mut prec = [0.0; 3];
    let mut f1 = [0.0; 3];
    for c in 0..3 {
        let tp = cm[c][c] as f64;
        let row: u64 = cm[c].iter().sum();
        let col: u64 = (0..3).map(|r| cm[r][c]).sum();
        sens[c] = div(tp, row as f64);
        prec[c] = div(tp, col as f64);
        f1[c] = div(2.0 * sens[c] * prec[c], sens[c] + prec[c]);
    }
    let trace: u64 = (0..3).map(|c| cm[c][c]).sum();
    ClassificationMetrics {
        confusion: cm,
        sensitivity: sens,
        precision: prec,
        f1,
        accuracy: div(trace as f64, total as f64),
        macro_f1: f1.iter().sum::<f64>() / 3.0,
        covid_sensitivity: sens[2],
        images: total,
    }
}

// The evaluation loops: a model over a data set, into the metrics above.

/// Evaluate a segmentation model on a data set with detection score threshold `confidence` and
/// mask probability threshold `mask_threshold` (`ctmask evaluate-segmentation`). The model runs
/// once, at the lower of `confidence` and the screening default 0.05: the AP takes the
/// detections scoring above `confidence` (the same detections as a run at `confidence`: lower
/// scores suppress none of them in NMS, and the best are kept first), the involvement agreement
/// all of them.
pub fn evaluate_segmentation(
    model: &mut MaskRcnn,
    data: &CncbDataset,
    confidence: f64,
    mask_threshold: f64,
) -> crate::Result<SegmentationMetrics> {
    let mut cfg = model.cfg.clone();
    cfg.roi_heads.box_score_thresh = confidence.min(INVOLVEMENT_SCORE_THRESHOLDS[0]);
    model.set_config(cfg)?;
    let mut ev = SegmentationEvaluator::default();
    let mut involvement = InvolvementAgreement::default();
    for i in 0..data.len() {
        let (slice, inst, mask, path) = data
            .item_with_mask(i)
            .map_err(|e| crate::Error::Other(e.to_string()))?;
        let img =
            crate::model::transform::tensor_from_rgb(&slice.rgb, slice.width, slice.height, model.device())?;
        let d = model.detect(&[img])?.remove(0);
        let gts: Vec<MaskInstance> = inst
            .iter()
            .map(|g| MaskInstance {
                label: g.label,
                score: 1.0,
                mask: g.mask.iter().map(|&v| v != 0).collect(),
            })
            .collect();
        let all = match d.binary_masks(mask_threshold) {
            Some(m) if !d.is_empty() => {
                let labels: Vec<i64> = Vec::try_from(&d.labels)?;
                let scores: Vec<f32> = Vec::try_from(&d.scores)?;
                let flat: Vec<bool> = Vec::try_from(m.flatten(0, -1).to_device(tch::Device::Cpu))?;
                let hw = (slice.width * slice.height) as usize;
                labels
                    .iter()
                    .zip(&scores)
                    .enumerate()
                    .map(|(k, (&label, &score))| MaskInstance {
                        label,
                        score,
                        mask: flat[k * hw..(k + 1) * hw].to_vec(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        involvement.add(&mask, &all);
        let preds: Vec<MaskInstance> = all
            .into_iter()
            .filter(|p| f64::from(p.score) > confidence)
            .collect();
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_image(&path, &preds, &gts);
        }
        ev.add(preds, gts);
    }
    let mut m = ev.finish(&model.cfg.class_names);
    m.involvement = involvement.finish();
    Ok(m)
}

/// One evaluated image at debug level: each prediction in score order with its class, score and
/// best mask IoU with a ground-truth region of its class (what decides its match at AP@0.5), the
/// ground-truth regions, and the image's AP@0.5.
fn log_image(path: &Path, preds: &[MaskInstance], gts: &[MaskInstance]) {
    let mut order: Vec<&MaskInstance> = preds.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let predictions: Vec<String> = order
        .iter()
        .map(|p| {
            let best = gts
                .iter()
                .filter(|g| g.label == p.label)
                .map(|g| mask_iou(&p.mask, &g.mask))
                .fold(0.0f64, f64::max);
            format!("{}:{:.3}/iou{:.2}", p.label, p.score, best)
        })
        .collect();
    let ground_truth: Vec<String> = gts
        .iter()
        .map(|g| format!("{}:{}px", g.label, g.mask.iter().filter(|&&v| v).count()))
        .collect();
    tracing::debug!(
        image = %path.display(),
        ap_50 = image_ap(preds, gts, 0.5),
        ground_truth = %ground_truth.join(" "),
        predictions = %predictions.join(" "),
        "evaluated"
    );
}

/// Confusion matrix of a classifier over labelled images (`ctmask evaluate-classifier`).
pub fn confusion(
    model: &MaskRcnn,
    items: &[(PathBuf, u8)],
    resize: Option<PilResize>,
) -> crate::Result<[[u64; 3]; 3]> {
    let mut cm = [[0u64; 3]; 3];
    for (p, l) in items {
        let img = classifier_image(p, resize, model.device())
            .map_err(|e| crate::Error::Other(format!("{}: {e}", p.display())))?;
        let c = crate::screening::classify(model, &img)?;
        let pred = c.class_index_or_zero();
        cm[*l as usize][pred] += 1;
    }
    Ok(cm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(label: i64, score: f32, cells: &[usize]) -> MaskInstance {
        let mut mask = vec![false; 100];
        for &c in cells {
            mask[c] = true;
        }
        MaskInstance { label, score, mask }
    }

    #[test]
    fn image_case_table() {
        let g = vec![inst(1, 1.0, &[1, 2, 3])];
        let p = vec![inst(1, 0.9, &[1, 2, 3])];
        assert_eq!(image_ap(&[], &[], 0.5), 1.0);
        assert_eq!(image_ap(&[], &g, 0.5), 0.0);
        assert_eq!(image_ap(&p, &[], 0.5), 0.0);
        assert_eq!(image_ap(&p, &g, 0.5), 1.0);
    }

    #[test]
    fn hand_computed_precision_recall() {
        // two GT; predictions in score order: miss, hit, hit -> p = [0, 1/2, 2/3], r = [0, .5, 1]
        let g = vec![inst(1, 1.0, &[0, 1, 2, 3]), inst(2, 1.0, &[50, 51, 52, 53])];
        let p = vec![
            inst(1, 0.9, &[90, 91]),
            inst(1, 0.8, &[0, 1, 2, 3]),
            inst(2, 0.7, &[50, 51, 52]),
        ];
        let ap = image_ap(&p, &g, 0.5);
        // recall steps at k=2 (0.5, precision max(1/2, 2/3) = 2/3) and k=3 (1.0, 2/3)
        assert!((ap - 2.0 / 3.0).abs() < 1e-12, "{ap}");
        // at IoU > 0.75 the 3-of-4 prediction (IoU 0.75) no longer matches
        let ap = image_ap(&p, &g, 0.75);
        assert!((ap - 0.25).abs() < 1e-12, "{ap}");
        // a class mismatch never matches
        let wrong = vec![inst(2, 0.9, &[0, 1, 2, 3])];
        assert_eq!(image_ap(&wrong, &g[..1], 0.5), 0.0);
    }

    #[test]
    fn one_prediction_matching_two_ground_truths_counts_once() {
        let g = vec![
            inst(1, 1.0, &[0, 1, 2, 3, 4, 5]),
            inst(1, 1.0, &[0, 1, 2, 3, 4, 6]),
        ];
        let p = vec![inst(1, 0.9, &[0, 1, 2, 3, 4, 5, 6])];
        // the prediction matches both GTs, but only one prediction is matched: recall 1/2
        assert!((image_ap(&p, &g, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn evaluator_and_coco() {
        let mut e = SegmentationEvaluator::default();
        e.add(vec![inst(1, 0.9, &[1, 2, 3])], vec![inst(1, 1.0, &[1, 2, 3])]);
        e.add(vec![], vec![]);
        e.add(vec![], vec![inst(2, 1.0, &[7])]);
        let m = e.finish(&["ggo".into(), "consolidation".into()]);
        assert!((m.ap_50 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.map_50_95 - 2.0 / 3.0).abs() < 1e-12);
        // COCO: ggo AP 1, consolidation AP 0 (a GT never found)
        assert!((m.coco_ap_50 - 0.5).abs() < 1e-12, "{}", m.coco_ap_50);
        assert_eq!(iou_thresholds().len(), 10);
    }

    #[test]
    fn involvement_agreement_by_score_threshold() {
        // 10x10: lung in the left 5 columns (50 px), 10 of them a lesion (value 2)
        let mut mask = vec![0u8; 100];
        for y in 0..10 {
            for x in 0..5 {
                mask[y * 10 + x] = 1;
            }
        }
        let lesion: Vec<usize> = (0..10).map(|y| y * 10).collect();
        for &c in &lesion {
            mask[c] = 2;
        }
        // a 0.9 detection on the lesion, a 0.3 one on 5 other lung pixels and 5 outside the lung
        let fp: Vec<usize> = (0..5)
            .map(|y| y * 10 + 2)
            .chain((0..5).map(|y| y * 10 + 8))
            .collect();
        let mut a = InvolvementAgreement::default();
        a.add(&mask, &[inst(1, 0.9, &lesion), inst(1, 0.3, &fp)]);
        // a lesion-free image with the same lungs: one 0.6 detection of 2 lung pixels
        let free: Vec<u8> = mask.iter().map(|&v| v.min(1)).collect();
        a.add(&free, &[inst(2, 0.6, &[1, 11])]);
        // no lung at all: skipped
        a.add(&[0u8; 100], &[inst(1, 0.9, &[1])]);
        let rows = a.finish();
        let at = |t: f64| rows.iter().find(|r| r.score_threshold == t).unwrap();
        // 0.05: image 1 reads 15/50 (truth 10/50, +10 pp), image 2 2/50 (+4 pp)
        let r = at(0.05);
        assert!((r.mean_abs_error_pp - 7.0).abs() < 1e-9, "{r:?}");
        assert!((r.mean_error_pp - 7.0).abs() < 1e-9);
        assert_eq!((r.lesion_free_images, r.lesion_free_at_least_1pct), (1, 1));
        assert!((r.lesion_free_mean_pp - 4.0).abs() < 1e-9);
        // 0.5: the 0.3 detection is gone (image 1 exact), the 0.6 one stays
        let r = at(0.5);
        assert!((r.mean_abs_error_pp - 2.0).abs() < 1e-9, "{r:?}");
        // 0.75: only the lesion's detection: exact on both
        let r = at(0.75);
        assert!(r.mean_abs_error_pp.abs() < 1e-9, "{r:?}");
        assert_eq!(r.lesion_free_at_least_1pct, 0);
        // 0.95: the lesion is missed: -20 pp on image 1, a mean of -10
        let r = at(0.95);
        assert!((r.mean_error_pp + 10.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn confusion_matrix_figures() {
        // the original README's first model
        let m = classification_metrics([[8703, 738, 9], [406, 6767, 213], [14, 386, 3946]]);
        assert!((m.accuracy - 0.9166).abs() < 1e-3);
        assert!((m.covid_sensitivity - 0.9080).abs() < 1e-3);
        let mean_recall = m.sensitivity.iter().sum::<f64>() / 3.0;
        assert!((mean_recall - 0.9150).abs() < 1e-3);
        assert!((m.macro_f1 - 0.9167).abs() < 1e-3);
    }
}
