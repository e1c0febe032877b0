//! One slice through segmentation and classification to a [`Finding`], shared by the daemon and
//! the CLI. The worker thread that owns the models calls [`ModelScreener::screen_batch`]: the
//! segmentation model runs on the whole batch (one padded tensor), the classifier on each slice
//! (the original's one-at-a-time path, §4.6), and everything after the model (label mask,
//! overlay, lung field, the lung gate, involvement) is plain Rust on the CPU. The lung gate
//! acts on what is reported, never on the classifier's input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::config::{ModelPaths, Precision, ScreeningSettings};
use crate::findings::{CLASS_NAMES, Classification, Finding, Lesion, LungGate, MASK_CONSOLIDATION, MASK_GGO};
use crate::model::{Detections, MaskRcnn, StageClock};
use crate::slice::Slice;
use crate::{Error, Result};

/// The segmentation model, the optional classifier and the settings, on one device.
pub struct ModelScreener {
    pub segmentation: MaskRcnn,
    pub classifier: Option<MaskRcnn>,
    pub settings: ScreeningSettings,
    identity: Vec<(String, String)>,
    /// Per model in `identity`, its file's `training_data` metadata.
    training_data: Vec<Option<String>>,
    device: Device,
}

impl ModelScreener {
    /// Load the models once.
    pub fn new(paths: &ModelPaths, device: Device, settings: ScreeningSettings) -> Result<Self> {
        let mut identity = Vec::new();
        let mut training_data = Vec::new();
        let mut load = |p: &Path| -> Result<MaskRcnn> {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            identity.push((name, crate::digest::sha256_file(p).map_err(|e| Error::io(p, e))?));
            training_data.push(training_data_of(p)?);
            MaskRcnn::load(p, device)
        };
        let segmentation = load(&paths.segmentation)?;
        if !segmentation.roi_heads.has_mask() {
            return Err(Error::model_file(
                &paths.segmentation,
                "not a segmentation model: it has no mask head",
            ));
        }
        let classifier = paths.classifier.as_deref().map(&mut load).transpose()?;
        if let (Some(c), Some(p)) = (&classifier, &paths.classifier)
            && c.s2new.is_none()
        {
            return Err(Error::model_file(
                p,
                "not a classifier: it has no module S (s2new)",
            ));
        }
        let mut s = Self::from_models(segmentation, classifier, settings, device);
        s.identity = identity;
        s.training_data = training_data;
        Ok(s)
    }

    /// A screener over models already in memory (benchmarks); identity names them by their config.
    pub fn from_models(
        segmentation: MaskRcnn,
        classifier: Option<MaskRcnn>,
        settings: ScreeningSettings,
        device: Device,
    ) -> Self {
        let mut s = ModelScreener {
            segmentation,
            classifier,
            settings,
            identity: vec![("in-memory".into(), String::new())],
            training_data: vec![None],
            device,
        };
        apply_precision(&mut s.segmentation, s.settings.precision, device);
        if let Some(c) = s.classifier.as_mut() {
            apply_precision(c, s.settings.precision, device);
        }
        if !device.is_cuda() && s.settings.cpu_channels_last {
            s.segmentation.set_channels_last();
            if let Some(c) = s.classifier.as_mut() {
                c.set_channels_last();
            }
        }
        s
    }

    /// What each model was trained on (the files' `training_data` metadata), as `identity`.
    pub fn training_data(&self) -> Vec<Option<String>> {
        self.training_data.clone()
    }

    /// (file name, sha256) of the models, segmentation first.
    pub fn identity(&self) -> Vec<(String, String)> {
        self.identity.clone()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Screen a batch; one result per slice, a failure as its reason.
    pub fn screen_batch(&self, slices: &[Slice]) -> Vec<Result<Finding>> {
        self.screen_batch_timed(slices, &mut StageClock::off())
    }

    /// [`ModelScreener::screen_batch`] with per-stage times (decode, backbone, rpn, roi_heads,
    /// masks, classifier, outputs) recorded in `clock`.
    pub fn screen_batch_timed(&self, slices: &[Slice], clock: &mut StageClock) -> Vec<Result<Finding>> {
        if slices.is_empty() {
            return Vec::new();
        }
        let t0 = Instant::now();
        let images: Result<Vec<Tensor>> = slices
            .iter()
            .map(|s| crate::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, self.device))
            .collect();
        let images = match images {
            Ok(i) => i,
            Err(e) => return slices.iter().map(|_| Err(Error::Input(e.to_string()))).collect(),
        };
        clock.lap("decode", self.device);
        let dets = match self.segmentation.detect_timed(&images, clock) {
            Ok(d) => d,
            Err(e) => return slices.iter().map(|_| Err(Error::Other(e.to_string()))).collect(),
        };
        let seg_ms = t0.elapsed().as_secs_f64() * 1e3 / slices.len() as f64;
        clock.reset();
        slices
            .iter()
            .zip(images.iter().zip(dets))
            .map(|(s, (img, d))| {
                let mut timings = BTreeMap::new();
                timings.insert("segmentation".to_string(), seg_ms);
                let t = Instant::now();
                let classification = match &self.classifier {
                    Some(c) => Some(classify(c, &classifier_input(s, img, c)?)?),
                    None => None,
                };
                clock.lap("classifier", self.device);
                timings.insert("classification".to_string(), t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                let mut f = self.finding(s, &d)?;
                clock.lap("outputs", self.device);
                f.classification = classification;
                timings.insert("postprocess".to_string(), t.elapsed().as_secs_f64() * 1e3);
                f.timings_ms = timings;
                Ok(f)
            })
            .collect()
    }

    /// Lesions, label mask, overlay and involvement of one slice's detections.
    pub fn finding(&self, s: &Slice, d: &Detections) -> Result<Finding> {
        let (w, h) = (s.width as usize, s.height as usize);
        let cfg = &self.segmentation.cfg;
        let scores: Vec<f32> = Vec::try_from(d.scores.to_device(Device::Cpu)).map_err(torch)?;
        let labels: Vec<i64> = Vec::try_from(d.labels.to_device(Device::Cpu)).map_err(torch)?;
        let boxes: Vec<Vec<f32>> = Vec::try_from(d.boxes.to_device(Device::Cpu)).map_err(torch)?;
        let keep: Vec<usize> = (0..scores.len())
            .filter(|&i| scores[i] as f64 >= self.settings.score_threshold.0)
            .collect();
        let names: Vec<String> = keep
            .iter()
            .map(|&i| {
                cfg.class_names
                    .get((labels[i] - 1).max(0) as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let values: Vec<u8> = names
            .iter()
            .map(|n| {
                if n == "consolidation" {
                    MASK_CONSOLIDATION
                } else {
                    MASK_GGO
                }
            })
            .collect();
        // Each kept detection's binary mask comes back to the CPU ([K, H, W] bytes, K small
        // after the score threshold): the lung gate needs each lesion's pixels.
        let masks: Vec<Vec<bool>> = match d.binary_masks(self.settings.mask_threshold.0) {
            Some(m) if !keep.is_empty() => {
                let idx = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>())
                    .to_device(m.device());
                let bytes: Vec<u8> = Vec::try_from(
                    m.index_select(0, &idx)
                        .to_kind(Kind::Uint8)
                        .flatten(0, -1)
                        .to_device(Device::Cpu),
                )
                .map_err(torch)?;
                bytes
                    .chunks_exact(w * h)
                    .map(|c| c.iter().map(|&v| v != 0).collect())
                    .collect()
            }
            _ => vec![vec![false; w * h]; keep.len()],
        };
        let gate = LungGateOutcome::compute(s, &masks, self.settings.min_lung_fraction.0);
        // the label of the last (lowest-scored) counted detection covering each pixel, as the
        // original's figures paint them; with the gate on, inside the lung field only
        let mut label_mask = vec![0u8; w * h];
        for (k, m) in masks.iter().enumerate() {
            if gate.flagged[k] {
                continue;
            }
            for (i, _) in m
                .iter()
                .enumerate()
                .filter(|&(i, &on)| on && gate.counts_pixel(i))
            {
                label_mask[i] = values[k];
            }
        }
        let mut lesions = Vec::new();
        for (k, &i) in keep.iter().enumerate() {
            let b = &boxes[i];
            lesions.push(Lesion {
                class: names[k].clone(),
                label: labels[i],
                score: scores[i],
                bbox: [b[0], b[1], b[2], b[3]],
                area_px: masks[k].iter().filter(|&&v| v).count() as u64,
                area_mm2: None,
                lung_fraction: Some(gate.fractions[k]),
                outside_lung: gate.flagged[k],
            });
        }
        let lung_px = gate.field.iter().filter(|&&v| v).count() as u64;
        let mut involvement = BTreeMap::new();
        if lung_px > 0 {
            for (name, value) in [("ggo", MASK_GGO), ("consolidation", MASK_CONSOLIDATION)] {
                let n = label_mask
                    .iter()
                    .zip(&gate.field)
                    .filter(|&(&m, &l)| l && m == value)
                    .count();
                involvement.insert(name.to_string(), n as f64 / lung_px as f64);
            }
        }
        let all_px: u64 = masks.iter().flatten().filter(|&&v| v).count() as u64;
        let counted_px = label_mask.iter().filter(|&&v| v != 0).count() as u64;
        let lung_gate = LungGate {
            min_lung_fraction: self.settings.min_lung_fraction.0,
            flagged: gate.flagged.iter().filter(|&&f| f).count() as u32,
            excluded_px: all_px.saturating_sub(counted_px),
            description: gate.description(),
        };
        let reported: Vec<(Vec<f32>, i64)> = keep
            .iter()
            .enumerate()
            .filter(|&(k, _)| !gate.flagged[k])
            .map(|(_, &i)| (boxes[i].clone(), labels[i]))
            .collect();
        let mut f = Finding {
            classification: None,
            lesions,
            lung_field_px: Some(lung_px),
            involvement,
            lung_gate: Some(lung_gate),
            width: s.width,
            height: s.height,
            overlay_rgb: crate::lung::overlay(s, &label_mask, &reported, &cfg.class_names),
            label_mask,
            timings_ms: BTreeMap::new(),
            device: crate::device::device_name(self.device),
        };
        if let Some(sp) = s.meta.pixel_spacing {
            f.set_lesion_areas_mm2(sp);
        }
        Ok(f)
    }
}

/// The lung field of one slice with its lesions, and the gate's decision on each lesion.
struct LungGateOutcome {
    /// `H*W`: the lung field with the lesions of the lung ([`crate::lung_field`]).
    field: Vec<bool>,
    fractions: Vec<f64>,
    flagged: Vec<bool>,
    min_fraction: f64,
}

impl LungGateOutcome {
    fn compute(s: &Slice, masks: &[Vec<bool>], min_fraction: f64) -> Self {
        let lf = crate::lung_field::lung_field(s);
        let (field, fractions) = lf.with_lesions(masks);
        let flagged = fractions.iter().map(|&f| f < min_fraction).collect();
        Self {
            field,
            fractions,
            flagged,
            min_fraction,
        }
    }

    /// Whether lesion pixel `i` counts (in the lung field, or the gate is off).
    fn counts_pixel(&self, i: usize) -> bool {
        self.min_fraction <= 0.0 || self.field[i]
    }

    fn description(&self) -> String {
        if self.min_fraction <= 0.0 {
            return "off: every lesion counted; involvement counts lesion pixels in the lung field".into();
        }
        format!(
            "lesions with less than {:.0}% of their mask in the lung field are flagged outside_lung and \
             left out of the lesion counts, involvement and burden; only lesion pixels in the lung \
             field are counted; the classifier's input is unchanged",
            100.0 * self.min_fraction
        )
    }
}

/// Run the model's backbone in bf16/fp16 when asked for on CUDA (fp32 elsewhere).
pub fn apply_precision(model: &mut MaskRcnn, precision: Precision, device: Device) {
    match precision {
        Precision::Bf16 if device.is_cuda() => model.set_backbone_kind(Kind::BFloat16),
        Precision::Fp16 if device.is_cuda() => model.set_backbone_kind(Kind::Half),
        _ => {}
    }
}

fn torch(e: tch::TchError) -> Error {
    Error::Torch(e)
}

/// The classifier's input for a slice, as the original's `evaluate_classifier.py` makes it
/// (§4.7): PIL `Resize(min_size)` of the shorter side (bilinear with PIL's antialiasing) before
/// the model's own transform. A slice whose shorter side already is `min_size` (512x512 CT) is
/// used as it is (`image`, its plain tensor).
pub fn classifier_input(s: &Slice, image: &Tensor, model: &MaskRcnn) -> Result<Tensor> {
    let side = model.cfg.transform.min_size as u32;
    let (w, h) = crate::slice::resample::shorter_side_size(s.width, s.height, side);
    if (w, h) == (s.width, s.height) {
        return Ok(image.shallow_clone());
    }
    let rgb = crate::slice::resample::pil_bilinear(
        &s.rgb,
        (s.width as usize, s.height as usize),
        3,
        (w as usize, h as usize),
    );
    crate::model::transform::tensor_from_rgb(&rgb, w, h, image.device())
}

/// The classifier's verdict on one image: probabilities are the sigmoid of each logit (the
/// one-vs-all BCE training implies independent per-class probabilities), the label the argmax.
pub fn classify(model: &MaskRcnn, image: &Tensor) -> Result<Classification> {
    let c = model.classify(image)?;
    let probabilities = c.logits.map(|l| crate::model::sigmoid(l as f64) as f32);
    let best = (0..3)
        .max_by(|&a, &b| c.logits[a].total_cmp(&c.logits[b]))
        .unwrap_or(0);
    Ok(Classification {
        label: CLASS_NAMES[best].to_string(),
        probabilities,
        logits: c.logits,
        no_detections: c.no_detections,
    })
}

/// The daemon's view of the screener.
impl crate::daemon::worker::Screener for ModelScreener {
    fn screen_batch(&mut self, slices: &[Slice]) -> Vec<std::result::Result<Finding, String>> {
        ModelScreener::screen_batch(self, slices)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    fn model_identity(&self) -> Vec<(String, String)> {
        self.identity()
    }

    fn device(&self) -> String {
        crate::device::device_name(self.device)
    }

    fn training_data(&self) -> Vec<Option<String>> {
        ModelScreener::training_data(self)
    }
}

/// A model file's `training_data` metadata (what it was trained on), if it says.
pub fn training_data_of(path: &Path) -> Result<Option<String>> {
    let (_, meta) = crate::model::weights::read_config(path)?;
    Ok(meta.get(TRAINING_DATA_KEY).cloned())
}

/// The model-file metadata key naming the training data (`synthetic phantoms` for the demo
/// weights).
pub const TRAINING_DATA_KEY: &str = "training_data";
