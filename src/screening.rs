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
use crate::findings::{
    CLASS_NAMES, Classification, Finding, Lesion, LungGate, MASK_CONSOLIDATION, MASK_GGO, ScoreGate,
};
use crate::lung_field::{Bitmap, LungField, MaskCrop};
use crate::model::{Detections, MaskRcnn, MaskSpace, StageClock};
use crate::ops::host;
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
        if let Some(problem) =
            crate::model::mask_threshold_problem(&s.segmentation.cfg, s.settings.mask_threshold.0)
        {
            tracing::warn!("{problem}");
        }
        apply_precision(&mut s.segmentation, s.settings.precision, device);
        if let Some(c) = s.classifier.as_mut() {
            apply_precision(c, s.settings.precision, device);
        }
        // channels-last: on the CPU (oneDNN) when set; on CUDA in bf16 / fp16, where cuDNN's
        // NHWC kernels are faster (an H200, R50 backbone + FPN at batch 8: 7.6 -> 7.2 ms in
        // bf16), and not in fp32, where they are slower (24.7 -> 30.5 ms)
        let channels_last = if device.is_cuda() {
            s.settings.precision != Precision::Fp32
        } else {
            s.settings.cpu_channels_last
        };
        if channels_last {
            s.segmentation.set_channels_last();
            if let Some(c) = s.classifier.as_mut() {
                c.set_channels_last();
            }
        }
        if device.is_cuda() && s.settings.cuda_graphs {
            s.segmentation.set_cuda_graphs(true);
            if let Some(c) = s.classifier.as_mut() {
                c.set_cuda_graphs(true);
            }
            let status = s.segmentation.cuda_graphs_status();
            if status.starts_with("unavailable") {
                tracing::warn!(cuda_graphs = %status, "screening runs eagerly");
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
    ///
    /// The models run on this thread; the host's share runs on other threads: the slices' lung
    /// fields (they need nothing from the models) while the models run, then each slice's
    /// finding from its detections brought to the host ([`finding_on_host`]), one slice per
    /// core at a time.
    pub fn screen_batch_timed(&self, slices: &[Slice], clock: &mut StageClock) -> Vec<Result<Finding>> {
        if slices.is_empty() {
            return Vec::new();
        }
        let workers = worker_threads().min(slices.len());
        let t0 = Instant::now();
        // the images go to the device first, before other threads start work
        let images: Vec<Tensor> = match slices
            .iter()
            .map(|s| crate::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, self.device))
            .collect::<Result<_>>()
        {
            Ok(i) => i,
            Err(e) => return slices.iter().map(|_| Err(Error::Input(e.to_string()))).collect(),
        };
        clock.lap("decode", self.device);
        std::thread::scope(|scope| {
            let fields = scope.spawn(move || par_map(slices, workers, crate::lung_field::lung_field));
            let models = self.run_models(slices, &images, t0, clock);
            let fields = fields.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            let (seg_ms, cls_ms, per_slice) = match models {
                Ok(m) => m,
                Err(e) => return slices.iter().map(|_| Err(Error::Other(e.to_string()))).collect(),
            };
            let work: Vec<_> = slices.iter().zip(fields).zip(per_slice).collect();
            // plain data only on the worker threads (the models' tensors stay here)
            let (settings, device) = (&self.settings, self.device);
            let class_names = &self.segmentation.cfg.class_names;
            let findings = par_map(&work, workers, |((s, lf), (hd, classification))| {
                let t = Instant::now();
                let hd = hd.as_ref().map_err(|e| Error::Other(e.to_string()))?;
                let classification = classification.as_ref().map_err(|e| Error::Other(e.to_string()))?;
                let mut f = finding_on_host(s, lf, hd, settings, class_names, device);
                f.classification = classification.clone();
                f.timings_ms = BTreeMap::from([
                    ("segmentation".to_string(), seg_ms),
                    ("classification".to_string(), cls_ms),
                    ("postprocess".to_string(), t.elapsed().as_secs_f64() * 1e3),
                ]);
                Ok(f)
            });
            clock.lap("outputs", self.device);
            findings
        })
    }

    /// The models' share of a batch, on this thread: segmentation, classification, and each
    /// slice's detections brought to the host. Returns the milliseconds per slice of the
    /// segmentation and the classification, and per slice its detections and verdict.
    #[allow(clippy::type_complexity)]
    fn run_models(
        &self,
        slices: &[Slice],
        images: &[Tensor],
        t0: Instant,
        clock: &mut StageClock,
    ) -> Result<(
        f64,
        f64,
        Vec<(Result<HostDetections>, Result<Option<Classification>>)>,
    )> {
        let dets = self.segmentation.detect_timed(images, clock)?;
        let seg_ms = t0.elapsed().as_secs_f64() * 1e3 / slices.len() as f64;
        clock.reset();
        let t = Instant::now();
        let classifications = self.classify_all(slices, images);
        clock.lap("classifier", self.device);
        let cls_ms = t.elapsed().as_secs_f64() * 1e3 / slices.len() as f64;
        let sizes: Vec<(usize, usize)> = slices
            .iter()
            .map(|s| (s.width as usize, s.height as usize))
            .collect();
        let per_slice = host_detections_batch(&dets, &self.settings, &sizes)
            .into_iter()
            .zip(classifications)
            .collect();
        Ok((seg_ms, cls_ms, per_slice))
    }

    /// The classifier's verdict on each slice (none without a classifier): the batch in one
    /// pass when every slice's classifier input has one size (CT slices do), else one by one.
    fn classify_all(&self, slices: &[Slice], images: &[Tensor]) -> Vec<Result<Option<Classification>>> {
        let Some(c) = &self.classifier else {
            return slices.iter().map(|_| Ok(None)).collect();
        };
        let inputs: Vec<Result<Tensor>> = slices
            .iter()
            .zip(images)
            .map(|(s, img)| classifier_input(s, img, c))
            .collect();
        let one_size = inputs.iter().all(|i| i.is_ok())
            && inputs
                .windows(2)
                .all(|w| matches!((&w[0], &w[1]), (Ok(a), Ok(b)) if a.size() == b.size()));
        if one_size && inputs.len() > 1 {
            let batch: Vec<Tensor> = inputs.iter().flatten().map(|t| t.shallow_clone()).collect();
            match c.classify_batch(&batch) {
                Ok(scores) => return scores.into_iter().map(|c| Ok(Some(verdict(c)))).collect(),
                Err(e) => return slices.iter().map(|_| Err(Error::Other(e.to_string()))).collect(),
            }
        }
        inputs.into_iter().map(|i| Ok(Some(classify(c, &i?)?))).collect()
    }

    /// Lesions, label mask, overlay and involvement of one slice's detections: at most two reads
    /// from the device ([`host_detections`]), the rest on the host ([`finding_on_host`], with
    /// the slice's lung field, which needs nothing from the model).
    pub fn finding(&self, s: &Slice, d: &Detections) -> Result<Finding> {
        let hd = host_detections(d, &self.settings, (s.width as usize, s.height as usize))?;
        let lf = crate::lung_field::lung_field(s);
        Ok(finding_on_host(
            s,
            &lf,
            &hd,
            &self.settings,
            &self.segmentation.cfg.class_names,
            self.device,
        ))
    }
}

/// The threads the host's share of a batch may use: the cores this process may use (read once:
/// on Linux it reads the cgroup's CPU limit from files).
fn worker_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// `f` of each item, on up to `workers` threads (contiguous shares, in order); a panic in `f`
/// reaches the caller as it would without threads.
fn par_map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if workers <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let share = items.len().div_ceil(workers);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(share)
            .map(|c| scope.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// One slice's detections on the host: every detection's score, label and box, and the binary
/// mask of each kept one (score at or above the threshold) as its bounding box's words. Plain
/// data: the host half of the outputs can run on any thread.
struct HostDetections {
    scores: Vec<f32>,
    labels: Vec<i64>,
    boxes: Vec<Vec<f32>>,
    /// Indices of the detections at or above the score threshold, in order.
    keep: Vec<usize>,
    /// Per kept detection, its mask above the mask threshold (empty without a mask head).
    masks: Vec<MaskCrop>,
}

/// Bring one slice's detections to the host ([`host_detections_batch`] of one slice).
fn host_detections(
    d: &Detections,
    settings: &ScreeningSettings,
    size: (usize, usize),
) -> Result<HostDetections> {
    host_detections_batch(std::slice::from_ref(d), settings, &[size])
        .pop()
        .expect("one slice in, one out")
}

/// Bring a batch's detections to the host in at most two reads ([`host::read`]) for the whole
/// batch: first every slice's scores, labels, boxes and each mask's maximum as `[K, 7]` float
/// rows, concatenated; then the thresholded masks of the kept detections whose maximum passes
/// the threshold, bit-packed on the device (64 pixels a word: `[n, H, W / 8]` bytes, 3.3 MB for
/// 100 masks of 512x512 against 26 MB of bytes), concatenated, and cropped to their bounding
/// boxes here. The threshold is [`Detections::binary_masks`]'s (`>` the probability, or its
/// logit for logit masks). `sizes` are the slices' `(width, height)`; a slice whose masks do
/// not match its size gets an error, the others their detections.
fn host_detections_batch(
    dets: &[Detections],
    settings: &ScreeningSettings,
    sizes: &[(usize, usize)],
) -> Vec<Result<HostDetections>> {
    let cut_of = |d: &Detections| match d.mask_space {
        MaskSpace::Probabilities => settings.mask_threshold.0,
        MaskSpace::Logits => crate::model::logit(settings.mask_threshold.0),
    };
    let checked: Vec<Result<()>> = dets
        .iter()
        .zip(sizes)
        .map(|(d, &(w, h))| {
            let k = d.len();
            match d.masks.as_ref().filter(|_| k > 0) {
                Some(m) if m.size() != [k, h as i64, w as i64] => Err(Error::Other(format!(
                    "masks of shape {:?} for {k} detections on a {w}x{h} slice",
                    m.size()
                ))),
                _ => Ok(()),
            }
        })
        .collect();
    let ok: Vec<usize> = (0..dets.len()).filter(|&i| checked[i].is_ok()).collect();
    // read 1: the rows of every slice
    let small: Vec<Tensor> = ok
        .iter()
        .map(|&i| {
            let d = &dets[i];
            let k = d.len();
            let peak = match d.masks.as_ref().filter(|_| k > 0) {
                Some(m) => m.flatten(1, -1).amax([1], false).to_kind(Kind::Float),
                None => Tensor::zeros([k], (Kind::Float, d.scores.device())),
            };
            Tensor::stack(
                &[
                    d.scores.to_kind(Kind::Float),
                    d.labels.to_kind(Kind::Float),
                    d.boxes.select(1, 0).to_kind(Kind::Float),
                    d.boxes.select(1, 1).to_kind(Kind::Float),
                    d.boxes.select(1, 2).to_kind(Kind::Float),
                    d.boxes.select(1, 3).to_kind(Kind::Float),
                    peak,
                ],
                1,
            )
            .flatten(0, -1)
        })
        .collect();
    let rows_all: Vec<f32> = if small.is_empty() {
        Vec::new()
    } else {
        match host::read(&Tensor::cat(&small, 0)) {
            Ok(v) => v,
            Err(e) => return dets.iter().map(|_| Err(Error::Other(e.to_string()))).collect(),
        }
    };
    struct Part {
        rows: Vec<f32>,
        keep: Vec<usize>,
        lit: Vec<usize>,
    }
    let mut at = 0;
    let parts: Vec<Part> = ok
        .iter()
        .map(|&i| {
            let d = &dets[i];
            let n = d.len() as usize * 7;
            let rows = rows_all[at..at + n].to_vec();
            at += n;
            let keep: Vec<usize> = (0..d.len() as usize)
                .filter(|&j| rows[7 * j] as f64 >= settings.score_threshold.0)
                .collect();
            // the kept masks with a pixel above the threshold, packed; the others are empty. A
            // filter only (the device's `gt` decides every bit): a NaN maximum may hide such a
            // pixel, and a pixel the device finds above the threshold (rounded to the masks'
            // kind) is above it here
            let cut = cut_of(d);
            let lit: Vec<usize> = (0..keep.len())
                .filter(|&j| {
                    let peak = f64::from(rows[7 * keep[j] + 6]);
                    peak > cut || peak.is_nan()
                })
                .collect();
            Part { rows, keep, lit }
        })
        .collect();
    // read 2: the lit masks of every slice, packed
    let packed: Vec<Tensor> = ok
        .iter()
        .zip(&parts)
        .filter_map(|(&i, p)| {
            let m = dets[i].masks.as_ref()?;
            if p.lit.is_empty() {
                return None;
            }
            let picked: Vec<i64> = p.lit.iter().map(|&j| p.keep[j] as i64).collect();
            let sel = if picked.iter().enumerate().all(|(j, &i)| i == j as i64) {
                m.narrow(0, 0, picked.len() as i64)
            } else {
                m.index_select(0, &host::upload_i64(&picked, m.device()))
            };
            Some(pack_bits(&sel.gt(cut_of(&dets[i]))).flatten(0, -1))
        })
        .collect();
    let bytes_all: Vec<u8> = if packed.is_empty() {
        Vec::new()
    } else {
        match host::read(&Tensor::cat(&packed, 0)) {
            Ok(v) => v,
            Err(e) => return dets.iter().map(|_| Err(Error::Other(e.to_string()))).collect(),
        }
    };
    let mut at = 0;
    let mut done: Vec<Option<HostDetections>> = (0..dets.len()).map(|_| None).collect();
    for (&i, p) in ok.iter().zip(parts) {
        let (w, h) = sizes[i];
        let rows: Vec<&[f32]> = p.rows.chunks_exact(7).collect();
        let mut crops = vec![MaskCrop::from_frame(&[], 1); p.keep.len()];
        if dets[i].masks.is_some() && !p.lit.is_empty() {
            let wpr = w.div_ceil(64);
            let per_mask = h * wpr * 8;
            let bytes = &bytes_all[at..at + p.lit.len() * per_mask];
            at += p.lit.len() * per_mask;
            let mut frame = vec![0u64; h * wpr];
            for (&j, c) in p.lit.iter().zip(bytes.chunks_exact(per_mask)) {
                for (f, b) in frame.iter_mut().zip(c.chunks_exact(8)) {
                    *f = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
                crops[j] = MaskCrop::from_frame(&frame, wpr);
            }
        }
        done[i] = Some(HostDetections {
            scores: rows.iter().map(|r| r[0]).collect(),
            // labels are small integers: exact in f32
            labels: rows.iter().map(|r| r[1] as i64).collect(),
            boxes: rows.iter().map(|r| r[2..6].to_vec()).collect(),
            keep: p.keep,
            masks: crops,
        });
    }
    checked
        .into_iter()
        .zip(done)
        .map(|(c, d)| c.map(|()| d.expect("every checked slice is read")))
        .collect()
}

/// `[K, H, W]` booleans bit-packed on their device into `[K, H, 8 * ceil(W / 64)]` bytes, the
/// little-endian bytes of [`crate::lung_field::Bitmap`] rows: each row zero-padded to whole
/// 64-pixel words, then every 8 pixels (one 0/1 byte each, read as an int64) gathered into one
/// byte by the multiply trick (byte `i` times `2^(56 - 7 i)` lands in bit `56 + i`; the other
/// products fall below bit 56 or past bit 63 without carries).
fn pack_bits(binary: &Tensor) -> Tensor {
    let w = binary.size()[2];
    let padded_w = (w + 63) / 64 * 64;
    let bytes = binary.to_kind(Kind::Uint8);
    let bytes = if padded_w > w {
        bytes.constant_pad_nd([0, padded_w - w])
    } else {
        bytes.contiguous()
    };
    bytes
        .view_dtype(Kind::Int64)
        .g_mul_scalar(0x0102_0408_1020_4080_i64)
        .bitwise_right_shift_tensor_scalar(56)
        .bitwise_and(0xff)
        .to_kind(Kind::Uint8)
}

/// The [`Finding`] of one slice's detections brought to the host (everything but the
/// classification and the timings): the lung gate, label mask, involvement and counts over the
/// masks' bounding-box words, never detections x pixels.
fn finding_on_host(
    s: &Slice,
    lung_field: &LungField,
    hd: &HostDetections,
    settings: &ScreeningSettings,
    class_names: &[String],
    device: Device,
) -> Finding {
    let (w, h) = (s.width as usize, s.height as usize);
    let HostDetections {
        scores,
        labels,
        boxes,
        keep,
        masks,
    } = hd;
    let names: Vec<String> = keep
        .iter()
        .map(|&i| {
            class_names
                .get((labels[i] - 1).max(0) as usize)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let gate = LungGateOutcome::compute(lung_field, masks, settings.min_lung_fraction.0);
    let (low, score_gate) = ScoreGate::over(settings.min_counted_score.0, keep.iter().map(|&i| scores[i]));
    let counted: Vec<bool> = (0..keep.len()).map(|k| !gate.flagged[k] && !low[k]).collect();
    // the label of the last (lowest-scored) counted detection covering each pixel, as the
    // original's figures paint them; with the gate on, inside the lung field only. Painted as
    // two bit planes (GGO, consolidation), a word at a time.
    let mut ggo = Bitmap::new(w, h);
    let mut consolidation = Bitmap::new(w, h);
    for (k, m) in masks.iter().enumerate() {
        if !counted[k] {
            continue;
        }
        let (paint, clear) = if names[k] == "consolidation" {
            (&mut consolidation, &mut ggo)
        } else {
            (&mut ggo, &mut consolidation)
        };
        for (i, v) in m.frame_words(gate.field.words_per_row) {
            let bits = if gate.min_fraction <= 0.0 {
                v
            } else {
                v & gate.field.words[i]
            };
            paint.words[i] |= bits;
            clear.words[i] &= !bits;
        }
    }
    let mut label_mask = vec![0u8; w * h];
    let mut counted_px = 0u64;
    for (i, (&g, &c)) in ggo.words.iter().zip(&consolidation.words).enumerate() {
        let (y, x0) = (i / ggo.words_per_row, 64 * (i % ggo.words_per_row));
        counted_px += u64::from((g | c).count_ones());
        for (plane, value) in [(g, MASK_GGO), (c, MASK_CONSOLIDATION)] {
            let mut bits = plane;
            while bits != 0 {
                label_mask[y * w + x0 + bits.trailing_zeros() as usize] = value;
                bits &= bits - 1;
            }
        }
    }
    let lesions: Vec<Lesion> = keep
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let b = &boxes[i];
            Lesion {
                class: names[k].clone(),
                label: labels[i],
                score: scores[i],
                bbox: [b[0], b[1], b[2], b[3]],
                area_px: masks[k].area,
                area_mm2: None,
                lung_fraction: Some(gate.fractions[k]),
                outside_lung: gate.flagged[k],
                low_score: low[k],
            }
        })
        .collect();
    let lung_px = gate.field.count();
    let mut involvement = BTreeMap::new();
    if lung_px > 0 {
        let inside = |plane: &Bitmap| -> u64 {
            plane
                .words
                .iter()
                .zip(&gate.field.words)
                .map(|(&p, &f)| u64::from((p & f).count_ones()))
                .sum()
        };
        for (name, plane) in [("ggo", &ggo), ("consolidation", &consolidation)] {
            involvement.insert(name.to_string(), inside(plane) as f64 / lung_px as f64);
        }
    }
    let all_px: u64 = masks.iter().map(|m| m.area).sum();
    let lung_gate = LungGate {
        min_lung_fraction: settings.min_lung_fraction.0,
        flagged: gate.flagged.iter().filter(|&&f| f).count() as u32,
        excluded_px: all_px.saturating_sub(counted_px),
        description: gate.description(),
    };
    let reported: Vec<(Vec<f32>, i64)> = keep
        .iter()
        .enumerate()
        .filter(|&(k, _)| counted[k])
        .map(|(_, &i)| (boxes[i].clone(), labels[i]))
        .collect();
    let mut f = Finding {
        classification: None,
        lesions,
        lung_field_px: Some(lung_px),
        involvement,
        lung_gate: Some(lung_gate),
        score_gate: Some(score_gate),
        width: s.width,
        height: s.height,
        overlay_rgb: crate::lung::overlay(s, &label_mask, &reported, class_names),
        label_mask,
        timings_ms: BTreeMap::new(),
        device: crate::device::device_name(device),
    };
    if let Some(sp) = s.meta.pixel_spacing {
        f.set_lesion_areas_mm2(sp);
    }
    f
}

/// The lung field of one slice with its lesions, and the gate's decision on each lesion.
struct LungGateOutcome {
    /// The lung field with the lesions of the lung ([`crate::lung_field`]).
    field: Bitmap,
    fractions: Vec<f64>,
    flagged: Vec<bool>,
    min_fraction: f64,
}

impl LungGateOutcome {
    fn compute(lf: &LungField, masks: &[MaskCrop], min_fraction: f64) -> Self {
        let (field, fractions) = lf.with_lesion_crops(masks);
        let flagged = fractions.iter().map(|&f| f < min_fraction).collect();
        Self {
            field,
            fractions,
            flagged,
            min_fraction,
        }
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
    Ok(verdict(model.classify(image)?))
}

/// A [`Classification`] of the classifier's scores.
fn verdict(c: crate::model::ClassScores) -> Classification {
    let probabilities = c.logits.map(|l| crate::model::sigmoid(l as f64) as f32);
    let best = (0..3)
        .max_by(|&a, &b| c.logits[a].total_cmp(&c.logits[b]))
        .unwrap_or(0);
    Classification {
        label: CLASS_NAMES[best].to_string(),
        probabilities,
        logits: c.logits,
        no_detections: c.no_detections,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{LesionClass, phantom};
    use crate::slice::{SliceFormat, SliceMeta};

    /// The full-frame computation `finding()` did before the masks were packed and cropped: the
    /// reference the packed path must equal field for field.
    fn reference_finding(
        s: &Slice,
        d: &Detections,
        settings: &ScreeningSettings,
        class_names: &[String],
        device: Device,
    ) -> Finding {
        let (w, h) = (s.width as usize, s.height as usize);
        let scores: Vec<f32> = Vec::try_from(d.scores.to_device(Device::Cpu)).unwrap();
        let labels: Vec<i64> = Vec::try_from(d.labels.to_device(Device::Cpu)).unwrap();
        let boxes: Vec<Vec<f32>> = Vec::try_from(d.boxes.to_device(Device::Cpu)).unwrap();
        let keep: Vec<usize> = (0..scores.len())
            .filter(|&i| scores[i] as f64 >= settings.score_threshold.0)
            .collect();
        let names: Vec<String> = keep
            .iter()
            .map(|&i| {
                class_names
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
        let masks: Vec<Vec<bool>> = match d.binary_masks(settings.mask_threshold.0) {
            Some(m) if !keep.is_empty() => {
                let idx = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>());
                let bytes: Vec<u8> =
                    Vec::try_from(m.index_select(0, &idx).to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
                bytes
                    .chunks_exact(w * h)
                    .map(|c| c.iter().map(|&v| v != 0).collect())
                    .collect()
            }
            _ => vec![vec![false; w * h]; keep.len()],
        };
        let min_fraction = settings.min_lung_fraction.0;
        let (field, fractions) = crate::lung_field::lung_field(s).with_lesions(&masks);
        let flagged: Vec<bool> = fractions.iter().map(|&f| f < min_fraction).collect();
        let (low, score_gate) =
            ScoreGate::over(settings.min_counted_score.0, keep.iter().map(|&i| scores[i]));
        let counts_pixel = |i: usize| min_fraction <= 0.0 || field[i];
        let mut label_mask = vec![0u8; w * h];
        for (k, m) in masks.iter().enumerate() {
            if flagged[k] || low[k] {
                continue;
            }
            for (i, _) in m.iter().enumerate().filter(|&(i, &on)| on && counts_pixel(i)) {
                label_mask[i] = values[k];
            }
        }
        let lesions = keep
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let b = &boxes[i];
                Lesion {
                    class: names[k].clone(),
                    label: labels[i],
                    score: scores[i],
                    bbox: [b[0], b[1], b[2], b[3]],
                    area_px: masks[k].iter().filter(|&&v| v).count() as u64,
                    area_mm2: None,
                    lung_fraction: Some(fractions[k]),
                    outside_lung: flagged[k],
                    low_score: low[k],
                }
            })
            .collect();
        let lung_px = field.iter().filter(|&&v| v).count() as u64;
        let mut involvement = BTreeMap::new();
        if lung_px > 0 {
            for (name, value) in [("ggo", MASK_GGO), ("consolidation", MASK_CONSOLIDATION)] {
                let n = label_mask
                    .iter()
                    .zip(&field)
                    .filter(|&(&m, &l)| l && m == value)
                    .count();
                involvement.insert(name.to_string(), n as f64 / lung_px as f64);
            }
        }
        let all_px: u64 = masks.iter().flatten().filter(|&&v| v).count() as u64;
        let counted_px = label_mask.iter().filter(|&&v| v != 0).count() as u64;
        let gate = LungGateOutcome {
            field: Bitmap::new(0, 0),
            fractions: Vec::new(),
            flagged: Vec::new(),
            min_fraction,
        };
        let lung_gate = LungGate {
            min_lung_fraction: min_fraction,
            flagged: flagged.iter().filter(|&&f| f).count() as u32,
            excluded_px: all_px.saturating_sub(counted_px),
            description: gate.description(),
        };
        let reported: Vec<(Vec<f32>, i64)> = keep
            .iter()
            .enumerate()
            .filter(|&(k, _)| !flagged[k] && !low[k])
            .map(|(_, &i)| (boxes[i].clone(), labels[i]))
            .collect();
        let mut f = Finding {
            classification: None,
            lesions,
            lung_field_px: Some(lung_px),
            involvement,
            lung_gate: Some(lung_gate),
            score_gate: Some(score_gate),
            width: s.width,
            height: s.height,
            overlay_rgb: crate::lung::overlay(s, &label_mask, &reported, class_names),
            label_mask,
            timings_ms: BTreeMap::new(),
            device: crate::device::device_name(device),
        };
        if let Some(sp) = s.meta.pixel_spacing {
            f.set_lesion_areas_mm2(sp);
        }
        f
    }

    /// splitmix64 in [0, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn below(&mut self, n: usize) -> usize {
            ((self.next() * n as f64) as usize).min(n.saturating_sub(1))
        }
    }

    /// A COVID phantom cut to a non-square `w` x `h` window whose width is no multiple of 64 (the
    /// packed rows' padding), with its lung mask (1 lung, 2 GGO, 3 consolidation).
    fn slice(seed: u64) -> (Slice, Vec<u8>) {
        let p = phantom(seed, LesionClass::Covid, 256);
        let (w, h, x0, y0) = (250usize, 236usize, 3usize, 10usize);
        let mut hu = Vec::with_capacity(w * h);
        let mut mask = Vec::with_capacity(w * h);
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                hu.push(f32::from(p.hu[y * 256 + x]).clamp(-1024.0, 3071.0));
                mask.push(p.mask[y * 256 + x]);
            }
        }
        let rgb = hu
            .iter()
            .flat_map(|&v| [crate::slice::lung_window(v, -600.0, 1500.0); 3])
            .collect();
        let meta = SliceMeta {
            pixel_spacing: Some([p.pixel_spacing_mm, p.pixel_spacing_mm]),
            ..Default::default()
        };
        let s = Slice {
            width: w as u32,
            height: h as u32,
            rgb,
            hu: Some(hu),
            format: SliceFormat::Png,
            meta,
        };
        (s, mask)
    }

    /// `n` overlapping detections on `s`: ellipses around lesion and lung pixels, in the chest
    /// wall and across the image's edges, with speckled probabilities inside and 0 outside
    /// (as pasted masks are), a few empty; scores descending when `sorted`, else shuffled
    /// around the score threshold.
    fn detections(s: &Slice, mask: &[u8], n: usize, seed: u64, sorted: bool, space: MaskSpace) -> Detections {
        let (w, h) = (s.width as usize, s.height as usize);
        let mut rng = Rng(seed);
        let lesion_px: Vec<usize> = (0..w * h).filter(|&i| mask[i] >= 2).collect();
        let lung_px: Vec<usize> = (0..w * h).filter(|&i| mask[i] == 1).collect();
        let mut probs = vec![0f32; n * w * h];
        let mut boxes = Vec::new();
        for k in 0..n {
            let (cx, cy) = match k % 5 {
                0 | 1 if !lesion_px.is_empty() => {
                    let i = lesion_px[rng.below(lesion_px.len())];
                    ((i % w) as f64, (i / w) as f64)
                }
                2 | 3 if !lung_px.is_empty() => {
                    let i = lung_px[rng.below(lung_px.len())];
                    ((i % w) as f64, (i / w) as f64)
                }
                _ => (rng.next() * w as f64, rng.next() * h as f64),
            };
            let (rx, ry) = (2.0 + rng.next() * 35.0, 2.0 + rng.next() * 35.0);
            let empty = k % 17 == 16;
            let (mut bx0, mut by0, mut bx1, mut by1) = (f32::MAX, f32::MAX, 0f32, 0f32);
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = ((x as f64 - cx) / rx, (y as f64 - cy) / ry);
                    if empty || dx * dx + dy * dy > 1.0 {
                        continue;
                    }
                    probs[k * w * h + y * w + x] = (0.2 + 0.8 * rng.next()) as f32;
                    (bx0, by0) = (bx0.min(x as f32), by0.min(y as f32));
                    (bx1, by1) = (bx1.max(x as f32), by1.max(y as f32));
                }
            }
            if bx0 > bx1 {
                (bx0, by0, bx1, by1) = (cx as f32, cy as f32, cx as f32 + 1.0, cy as f32 + 1.0);
            }
            boxes.extend([bx0 - 1.5, by0 - 1.5, bx1 + 1.5, by1 + 1.5]);
        }
        // scores over [0, 1): below the report's 0.05, reported but under the counting 0.75,
        // and counted
        let mut scores: Vec<f32> = (0..n).map(|_| rng.next() as f32).collect();
        if sorted {
            scores.sort_by(|a, b| b.total_cmp(a));
        }
        let labels: Vec<i64> = (0..n)
            .map(|k| {
                if k % 23 == 22 {
                    5
                } else {
                    1 + (rng.below(2) as i64)
                }
            })
            .collect();
        let masks = Tensor::from_slice(&probs).view([n as i64, h as i64, w as i64]);
        let masks = match space {
            MaskSpace::Probabilities => masks,
            // logits whose pasted zero outside the boxes stays 0, as the model pastes them
            MaskSpace::Logits => {
                masks.clamp(1e-6, 1.0 - 1e-6).logit(None) * masks.gt(0.0).to_kind(Kind::Float)
            }
        };
        Detections {
            boxes: Tensor::from_slice(&boxes).view([n as i64, 4]),
            scores: Tensor::from_slice(&scores),
            labels: Tensor::from_slice(&labels),
            masks: Some(masks),
            mask_space: space,
            image_size: (h as i64, w as i64),
        }
    }

    fn packed(s: &Slice, d: &Detections, settings: &ScreeningSettings, names: &[String]) -> Finding {
        let hd = host_detections(d, settings, (s.width as usize, s.height as usize)).unwrap();
        finding_on_host(
            s,
            &crate::lung_field::lung_field(s),
            &hd,
            settings,
            names,
            Device::Cpu,
        )
    }

    #[test]
    fn packed_masks_give_the_full_frame_finding() {
        let names: Vec<String> = vec!["ggo".into(), "consolidation".into()];
        let (s, mask) = slice(7);
        let gate_on = ScreeningSettings::default();
        let gate_off = ScreeningSettings {
            min_lung_fraction: crate::config::Probability(0.0),
            ..Default::default()
        };
        // every reported lesion counted, as the original's inference draws them
        let count_all = ScreeningSettings {
            min_counted_score: crate::config::Probability(0.0),
            ..Default::default()
        };
        let (mut grew, mut flagged, mut counted, mut low) = (false, false, false, false);
        let lung_alone = crate::lung_field::lung_field(&s).pixels();
        for (n, seed, sorted) in [(100, 1u64, true), (60, 2, false), (20, 3, true), (16, 4, true)] {
            let d = detections(&s, &mask, n, seed, sorted, MaskSpace::Probabilities);
            let mut painted = Vec::new();
            for settings in [&gate_on, &gate_off, &count_all] {
                let got = packed(&s, &d, settings, &names);
                let want = reference_finding(&s, &d, settings, &names, Device::Cpu);
                assert_eq!(got.lesions, want.lesions, "n {n} seed {seed}");
                assert!(
                    got.label_mask == want.label_mask,
                    "n {n} seed {seed}: label masks differ"
                );
                assert!(
                    got.overlay_rgb == want.overlay_rgb,
                    "n {n} seed {seed}: overlays differ"
                );
                assert_eq!(got, want, "n {n} seed {seed}");
                grew |= got.lung_field_px.unwrap() > lung_alone;
                flagged |= got.lung_gate.as_ref().unwrap().flagged > 0;
                counted |= got.mask_pixels(MASK_GGO) > 0 && got.mask_pixels(MASK_CONSOLIDATION) > 0;
                let gate = got.score_gate.as_ref().unwrap();
                assert_eq!(gate.min_counted_score, settings.min_counted_score.0);
                low |= gate.flagged > 0;
                for l in &got.lesions {
                    assert_eq!(l.low_score, f64::from(l.score) < settings.min_counted_score.0);
                }
                painted.push(got.mask_pixels(MASK_GGO) + got.mask_pixels(MASK_CONSOLIDATION));
            }
            // counting every reported lesion paints at least what counting the confident ones does
            assert!(painted[2] >= painted[0], "n {n} seed {seed}: {painted:?}");
        }
        // the cases the packed path must get right all occur
        assert!(
            grew && flagged && counted && low,
            "grew {grew} flagged {flagged} counted {counted} low {low}"
        );
    }

    #[test]
    fn a_batch_reads_as_its_slices_one_by_one() {
        // several slices' detections brought to the host together (two reads for the batch)
        // give each slice what it gets alone; a slice whose masks do not fit it fails alone
        let names: Vec<String> = vec!["ggo".into(), "consolidation".into()];
        let settings = ScreeningSettings::default();
        let (s, mask) = slice(7);
        let dets = vec![
            detections(&s, &mask, 60, 2, false, MaskSpace::Probabilities),
            detections(&s, &mask, 0, 5, true, MaskSpace::Probabilities),
            detections(&s, &mask, 20, 3, true, MaskSpace::Probabilities),
            detections(&s, &mask, 16, 4, true, MaskSpace::Probabilities),
        ];
        let size = (s.width as usize, s.height as usize);
        let mut sizes = vec![size; dets.len()];
        sizes[3] = (s.width as usize + 1, s.height as usize); // masks of another size
        let before = host::syncs();
        let got = host_detections_batch(&dets, &settings, &sizes);
        assert_eq!(host::syncs(), before, "no synchronisation is counted on the CPU");
        assert_eq!(got.len(), 4);
        assert!(
            got[3]
                .as_ref()
                .is_err_and(|e| e.to_string().contains("masks of shape"))
        );
        let field = crate::lung_field::lung_field(&s);
        let mut lesions = 0;
        for (d, g) in dets.iter().zip(&got).take(3) {
            let alone = host_detections(d, &settings, size).unwrap();
            let a = finding_on_host(&s, &field, &alone, &settings, &names, Device::Cpu);
            let b = finding_on_host(&s, &field, g.as_ref().unwrap(), &settings, &names, Device::Cpu);
            lesions += a.lesions.len();
            assert_eq!(a, b);
        }
        assert!(lesions > 0);
    }

    #[test]
    fn packed_masks_match_for_logits_no_masks_and_no_detections() {
        let names: Vec<String> = vec!["ggo".into(), "consolidation".into()];
        let (s, mask) = slice(11);
        // logits: at 0.7 the pasted zero is off; at 0.3 (logit < 0) it is on, the masks cover
        // the whole frame and the crops are the whole frame
        for threshold in [0.7, 0.3] {
            let settings = ScreeningSettings {
                mask_threshold: crate::config::Probability(threshold),
                ..Default::default()
            };
            let d = detections(&s, &mask, 24, 5, false, MaskSpace::Logits);
            assert_eq!(
                packed(&s, &d, &settings, &names),
                reference_finding(&s, &d, &settings, &names, Device::Cpu),
                "logits at {threshold}"
            );
        }
        let settings = ScreeningSettings::default();
        let mut d = detections(&s, &mask, 30, 6, true, MaskSpace::Probabilities);
        d.masks = None;
        assert_eq!(
            packed(&s, &d, &settings, &names),
            reference_finding(&s, &d, &settings, &names, Device::Cpu)
        );
        let empty = Detections {
            boxes: Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            scores: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            labels: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
            masks: Some(Tensor::zeros([0, 236, 250], (Kind::Float, Device::Cpu))),
            mask_space: MaskSpace::Probabilities,
            image_size: (236, 250),
        };
        assert_eq!(
            packed(&s, &empty, &settings, &names),
            reference_finding(&s, &empty, &settings, &names, Device::Cpu)
        );
    }

    /// On CUDA: the same finding as the CPU reference, in two counted reads.
    #[cfg(feature = "gpu-tests")]
    #[test]
    fn packed_masks_on_cuda_give_the_reference_finding_in_two_reads() {
        crate::device::init();
        assert!(tch::Cuda::is_available(), "gpu-tests need CUDA");
        let cuda = Device::Cuda(0);
        let names: Vec<String> = vec!["ggo".into(), "consolidation".into()];
        let (s, mask) = slice(7);
        let settings = ScreeningSettings::default();
        for space in [MaskSpace::Probabilities, MaskSpace::Logits] {
            let d = detections(&s, &mask, 100, 1, false, space);
            let want = reference_finding(&s, &d, &settings, &names, Device::Cpu);
            let on_gpu = Detections {
                boxes: d.boxes.to_device(cuda),
                scores: d.scores.to_device(cuda),
                labels: d.labels.to_device(cuda),
                masks: d.masks.as_ref().map(|m| m.to_device(cuda)),
                mask_space: d.mask_space,
                image_size: d.image_size,
            };
            let before = host::syncs();
            let hd = host_detections(&on_gpu, &settings, (s.width as usize, s.height as usize)).unwrap();
            assert_eq!(host::syncs() - before, 2, "{space:?}");
            let mut got = finding_on_host(
                &s,
                &crate::lung_field::lung_field(&s),
                &hd,
                &settings,
                &names,
                cuda,
            );
            got.device = want.device.clone();
            assert_eq!(got, want, "{space:?}");
        }
    }

    #[test]
    fn bits_pack_64_pixels_a_word_little_endian() {
        let mut rng = Rng(42);
        let (k, h, w) = (3usize, 5usize, 130usize);
        let on: Vec<bool> = (0..k * h * w).map(|_| rng.next() < 0.4).collect();
        let t = Tensor::from_slice(&on).view([k as i64, h as i64, w as i64]);
        let bytes: Vec<u8> = Vec::try_from(pack_bits(&t).flatten(0, -1)).unwrap();
        let wpr = w.div_ceil(64);
        assert_eq!(bytes.len(), k * h * wpr * 8);
        for (i, &v) in on.iter().enumerate() {
            let (m, y, x) = (i / (h * w), i / w % h, i % w);
            let byte = bytes[(m * h + y) * wpr * 8 + x / 8];
            assert_eq!(byte >> (x % 8) & 1 == 1, v, "mask {m} ({x}, {y})");
        }
        // the padding past the width is off
        for (m, y) in (0..k).flat_map(|m| (0..h).map(move |y| (m, y))) {
            let row = &bytes[(m * h + y) * wpr * 8..(m * h + y + 1) * wpr * 8];
            assert_eq!(row[w / 8] >> (w % 8), 0);
            assert!(row[w / 8 + 1..].iter().all(|&b| b == 0));
        }
    }
}
