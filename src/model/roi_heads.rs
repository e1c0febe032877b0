//! RoI heads (port of torchvision `models/detection/roi_heads.py` as COVID-CT-Mask-Net configures
//! it, spec §2.5-2.6 and §4.3): MultiScaleRoIAlign, the 128-wide TwoMLPHead and the predictor,
//! detection post-processing, the mask branch, training-sample selection and the Fast R-CNN and
//! mask losses, and the classifier's ranking of candidates for module S.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{MaskHeadKind, ModelConfig};
use super::layers::{conv2d, linear};
use crate::ops::boxes::{BoxCoder, box_iou, clip_boxes_to_image, has_area, large_enough};
use crate::ops::matcher::{BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher};
use crate::ops::nms::{SortedProblems, greedy_sorted_with};
use crate::ops::roi_align::{MultiScaleRoiAlign, roi_align};
use crate::ops::sampler::{BalancedSampler, SamplingRng};

/// Detections of one image in the resized image's coordinates.
#[derive(Debug)]
pub struct RawDetections {
    pub boxes: Tensor,
    pub scores: Tensor,
    pub labels: Tensor,
    /// `[K, 28, 28]` mask logits of each detection's class, when the model has a mask head.
    pub mask_logits: Option<Tensor>,
}

/// Ground truth of one image in the resized image's coordinates (boxes scaled, masks resized
/// like the image).
#[derive(Debug)]
pub struct RoiTarget {
    pub boxes: Tensor,
    pub labels: Tensor,
    pub masks: Tensor,
}

/// The RoI heads' training losses (Fast R-CNN classification and box regression, mask).
#[derive(Debug)]
pub struct RoiLosses {
    pub classifier: Tensor,
    pub box_reg: Tensor,
    pub mask: Tensor,
}

/// Training samples of one image.
#[derive(Debug)]
pub struct RoiSamples {
    pub proposals: Tensor,
    pub labels: Tensor,
    pub matched_idxs: Tensor,
    pub regression_targets: Tensor,
}

#[derive(Debug)]
struct MaskBranch {
    fcns: Vec<nn::Conv2D>,
    conv5_mask: nn::ConvTranspose2D,
    mask_fcn_logits: nn::Conv2D,
}

impl MaskBranch {
    fn new(p: &nn::Path, kind: MaskHeadKind, num_classes: i64) -> Option<Self> {
        let (n, width) = kind.layers_and_width()?;
        let head = p / "mask_head";
        let pred = p / "mask_predictor";
        let mut cin = ModelConfig::FPN_CHANNELS;
        let fcns = (1..=n)
            .map(|i| {
                let c = conv2d(&head / format!("mask_fcn{i}"), cin, width, 3, 1, 1, true);
                cin = width;
                c
            })
            .collect();
        let conv5_mask = nn::conv_transpose2d(
            &pred / "conv5_mask",
            width,
            width,
            2,
            nn::ConvTransposeConfig {
                stride: 2,
                ..Default::default()
            },
        );
        let mask_fcn_logits = conv2d(&pred / "mask_fcn_logits", width, num_classes, 1, 1, 0, true);
        Some(MaskBranch {
            fcns,
            conv5_mask,
            mask_fcn_logits,
        })
    }

    /// `[R, 256, 14, 14]` -> `[R, n_c, 28, 28]` logits.
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.shallow_clone();
        for c in &self.fcns {
            y = c.forward(&y).relu();
        }
        self.mask_fcn_logits.forward(&self.conv5_mask.forward(&y).relu())
    }
}

#[derive(Debug)]
pub struct RoiHeads {
    fc6: nn::Linear,
    fc7: nn::Linear,
    cls_score: nn::Linear,
    bbox_pred: nn::Linear,
    mask: Option<MaskBranch>,
    box_pool: MultiScaleRoiAlign,
    mask_pool: MultiScaleRoiAlign,
    pub box_coder: BoxCoder,
    cfg: ModelConfig,
}

impl RoiHeads {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        let r = cfg.representation_size;
        let bh = &p / "box_head";
        let bp = &p / "box_predictor";
        RoiHeads {
            fc6: linear(
                &bh / "fc6",
                ModelConfig::FPN_CHANNELS * ModelConfig::BOX_ROI_SIZE * ModelConfig::BOX_ROI_SIZE,
                r,
            ),
            fc7: linear(&bh / "fc7", r, r),
            cls_score: linear(&bp / "cls_score", r, cfg.num_classes),
            bbox_pred: linear(&bp / "bbox_pred", r, cfg.num_classes * 4),
            mask: MaskBranch::new(&p, cfg.mask_head, cfg.num_classes),
            box_pool: MultiScaleRoiAlign {
                output_size: ModelConfig::BOX_ROI_SIZE,
                sampling_ratio: ModelConfig::ROI_SAMPLING_RATIO,
            },
            mask_pool: MultiScaleRoiAlign {
                output_size: ModelConfig::MASK_ROI_SIZE,
                sampling_ratio: ModelConfig::ROI_SAMPLING_RATIO,
            },
            box_coder: BoxCoder::new(cfg.roi_heads.bbox_reg_weights),
            cfg: cfg.clone(),
        }
    }

    /// Replace the hyperparameters (inference thresholds and the like; not the architecture).
    pub fn set_config(&mut self, cfg: &ModelConfig) {
        self.cfg = cfg.clone();
    }

    /// Whether the model has a mask branch.
    pub fn has_mask(&self) -> bool {
        self.mask.is_some()
    }

    /// Box branch on per-image proposals: `(class_logits [R, n_c], box_regression [R, 4 n_c])`.
    pub fn box_forward(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> (Tensor, Tensor) {
        let pooled = self.box_pool.pool(features, proposals, sizes); // [R, 256, 7, 7]
        // the layers run in their weights' precision (bf16 / fp16 when asked for on CUDA);
        // RoIAlign before them and the box coding after them stay in float32
        let kind = self.fc6.ws.kind();
        let x = self
            .fc7
            .forward(&self.fc6.forward(&pooled.flatten(1, -1).to_kind(kind)).relu())
            .relu();
        (
            self.cls_score.forward(&x).to_kind(Kind::Float),
            self.bbox_pred.forward(&x).to_kind(Kind::Float),
        )
    }

    /// Mask logits `[R, n_c, 28, 28]` of boxes (per image).
    pub fn mask_forward(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Option<Tensor> {
        let m = self.mask.as_ref()?;
        let pooled = self.mask_pool.pool(features, boxes, sizes);
        let kind = self.fc6.ws.kind();
        Some(m.forward(&pooled.to_kind(kind)).to_kind(Kind::Float))
    }

    /// Decoded, clipped boxes `[R, n_c, 4]` and softmax scores `[R, n_c]` of one image.
    fn decode(
        &self,
        logits: &Tensor,
        regression: &Tensor,
        proposals: &Tensor,
        size: (i64, i64),
    ) -> (Tensor, Tensor) {
        let boxes = self.box_coder.decode(regression, proposals);
        let boxes = clip_boxes_to_image(&boxes, size.0, size.1);
        (boxes, logits.softmax(-1, Kind::Float))
    }

    /// torchvision's candidate filter and per-class NMS for every image at once: each image's
    /// foreground candidates (each class of each RoI, flattened RoI-major) are kept when their
    /// box has a positive area (or, per the semantics, is not small) and their score is over
    /// `box_score_thresh`; NMS runs per image and class, then the kept candidates are ordered by
    /// descending score (ties in flattened order) and the best `box_detections_per_img` kept.
    /// `boxes` `[R_i, n_c, 4]` and `scores` `[R_i, n_c]` per image (decoded, clipped, softmax).
    /// Returns per image the kept candidates' flattened indices into `R_i * (n_c - 1)`, in
    /// order. The NMS passes of all images and classes share one read to the host.
    fn select(&self, per_image: &[(Tensor, Tensor)]) -> Vec<Vec<i64>> {
        let b = per_image.len() as i64;
        if b == 0 {
            return Vec::new();
        }
        let nc = self.cfg.num_classes;
        let fg = nc - 1;
        let device = per_image[0].1.device();
        let rs: Vec<i64> = per_image.iter().map(|(_, s)| s.size()[0]).collect();
        let r_max = rs.iter().copied().max().unwrap_or(0);
        // [B, R_max, fg, 4] boxes and [B, R_max, fg] scores: each image's foreground classes,
        // padded with zeros (invalid) to R_max RoIs
        let stacked = |pick: fn(&(Tensor, Tensor)) -> &Tensor| {
            let padded: Vec<Tensor> = per_image
                .iter()
                .zip(&rs)
                .map(|(p, &r)| {
                    let t = pick(p).narrow(1, 1, fg);
                    let mut shape = t.size();
                    shape[0] = r_max - r;
                    Tensor::cat(&[t.shallow_clone(), Tensor::zeros(shape, (t.kind(), device))], 0)
                })
                .collect();
            Tensor::stack(&padded, 0)
        };
        let boxes = stacked(|p| &p.0);
        let scores = stacked(|p| &p.1);
        let present = Tensor::stack(
            &rs.iter()
                .map(|&r| Tensor::arange(r_max, (Kind::Int64, device)).lt(r))
                .collect::<Vec<_>>(),
            0,
        )
        .unsqueeze(2); // [B, R_max, 1]
        let shape_ok = match self.cfg.roi_heads.box_min_size {
            None => has_area(&boxes),
            Some(min) => large_enough(&boxes, min),
        };
        let valid = shape_ok
            .logical_and(&scores.gt(self.cfg.roi_heads.box_score_thresh))
            .logical_and(&present); // [B, R_max, fg]
        let mut families = Vec::with_capacity(fg as usize);
        let mut orders = Vec::with_capacity(fg as usize);
        for c in 0..fg {
            let sc = scores.select(2, c); // [B, R_max]
            // NMS priority: descending score, ties in RoI order (padding last: it is invalid)
            let order = sc
                .masked_fill(&present.squeeze_dim(2).logical_not(), f64::NEG_INFINITY)
                .argsort_stable(true, 1, true);
            let bx = boxes
                .select(2, c)
                .gather(1, &order.unsqueeze(2).expand([b, r_max, 4], false), false);
            families.push(SortedProblems {
                boxes: bx,
                valid: valid.select(2, c).gather(1, &order, false),
            });
            orders.push(order);
        }
        // RoI positions (< 2^24) travel as float32 with the scores
        let order_f = Tensor::stack(&orders, 2).to_kind(Kind::Float); // [B, R_max, fg]
        let (kept, floats) =
            greedy_sorted_with(&families, self.cfg.roi_heads.box_nms_thresh, &[&scores, &order_f]);
        let (host_scores, host_order) = (&floats[0], &floats[1]);
        let (rm, fgu) = (r_max as usize, fg as usize);
        (0..b as usize)
            .map(|i| {
                // flattened candidate index r * fg + c of each kept candidate, ascending
                let mut keep: Vec<usize> = (0..fgu)
                    .flat_map(|c| {
                        kept[c][i].iter().map(move |&p| {
                            let r = host_order[(i * rm + p) * fgu + c] as usize;
                            r * fgu + c
                        })
                    })
                    .collect();
                keep.sort_unstable();
                let sc = &host_scores[i * rm * fgu..(i + 1) * rm * fgu];
                keep.sort_by(|&x, &y| sc[y].partial_cmp(&sc[x]).unwrap_or(std::cmp::Ordering::Equal));
                keep.truncate(self.cfg.roi_heads.box_detections_per_img.max(0) as usize);
                keep.into_iter().map(|k| k as i64).collect()
            })
            .collect()
    }

    /// Inference: detections per image (resized coordinates), masks included when present.
    pub fn detect(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<RawDetections> {
        let mut out = self.detect_boxes(features, proposals, sizes);
        self.attach_masks(features, sizes, &mut out);
        out
    }

    /// The box branch and post-processing: detections without masks.
    pub fn detect_boxes(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<RawDetections> {
        let (logits, regression) = self.box_forward(features, proposals, sizes);
        self.postprocess_detections(&logits, &regression, proposals, sizes)
    }

    /// torchvision `postprocess_detections`: decode each image's boxes, clip, drop the
    /// background and low scores (and, per the semantics, small boxes), batched NMS per class,
    /// keep the `box_detections_per_img` best ([`RoiHeads::select`]).
    pub fn postprocess_detections(
        &self,
        logits: &Tensor,
        regression: &Tensor,
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<RawDetections> {
        let decoded = self.decode_all(logits, regression, proposals, sizes);
        let chosen = self.select(&decoded);
        let device = logits.device();
        let fg = self.cfg.num_classes - 1;
        let flat: Vec<i64> = chosen.iter().flatten().copied().collect();
        let idx = crate::ops::host::upload_i64(&flat, device);
        let mut start = 0;
        decoded
            .iter()
            .zip(&chosen)
            .map(|((boxes, scores), keep)| {
                let k = keep.len() as i64;
                let ix = idx.narrow(0, start, k);
                start += k;
                let labels = ix.remainder(fg) + 1;
                let b = boxes.narrow(1, 1, fg).reshape([-1, 4]).index_select(0, &ix);
                let s = scores.narrow(1, 1, fg).reshape([-1]).index_select(0, &ix);
                RawDetections {
                    boxes: b,
                    scores: s,
                    labels,
                    mask_logits: None,
                }
            })
            .collect()
    }

    /// Each image's decoded, clipped boxes `[R_i, n_c, 4]` and softmax scores `[R_i, n_c]`.
    fn decode_all(
        &self,
        logits: &Tensor,
        regression: &Tensor,
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<(Tensor, Tensor)> {
        let mut start = 0;
        proposals
            .iter()
            .zip(sizes)
            .map(|(p, &size)| {
                let r = p.size()[0];
                let d = self.decode(
                    &logits.narrow(0, start, r),
                    &regression.narrow(0, start, r),
                    p,
                    size,
                );
                start += r;
                d
            })
            .collect()
    }

    /// The mask branch on the detections' boxes: each detection's mask logits at its label.
    pub fn attach_masks(&self, features: &[Tensor], sizes: &[(i64, i64)], out: &mut [RawDetections]) {
        if self.mask.is_none() {
            return;
        }
        let boxes: Vec<Tensor> = out.iter().map(|d| d.boxes.shallow_clone()).collect();
        if let Some(all) = self.mask_forward(features, &boxes, sizes) {
            let mut start = 0;
            for d in out.iter_mut() {
                let k = d.boxes.size()[0];
                let m = all.narrow(0, start, k); // [K, n_c, 28, 28]
                start += k;
                let idx = d
                    .labels
                    .view([-1, 1, 1, 1])
                    .expand([k, 1, m.size()[2], m.size()[3]], false);
                d.mask_logits = Some(m.gather(1, &idx, false).squeeze_dim(1));
            }
        }
    }

    /// The classifier's ranked detections of one image (§4.3): `[score, raw dx, dy, dw, dh]` of
    /// the kept candidates in descending score order, `[k, 5]` with k <= N (no padding here).
    pub fn ranked(&self, features: &[Tensor], proposals: &Tensor, size: (i64, i64)) -> Tensor {
        self.ranked_batch(features, std::slice::from_ref(proposals), &[size])
            .pop()
            .expect("one image in, one ranking out")
    }

    /// [`RoiHeads::ranked`] of every image of a batch (features of the whole batch).
    pub fn ranked_batch(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<Tensor> {
        let (logits, regression) = self.box_forward(features, proposals, sizes);
        let decoded = self.decode_all(&logits, &regression, proposals, sizes);
        let chosen = self.select(&decoded);
        let nc = self.cfg.num_classes;
        let device = logits.device();
        let flat: Vec<i64> = chosen.iter().flatten().copied().collect();
        let idx = crate::ops::host::upload_i64(&flat, device);
        let (mut start, mut row) = (0, 0);
        decoded
            .iter()
            .zip(&chosen)
            .zip(proposals)
            .map(|(((_, scores), keep), p)| {
                let r = p.size()[0];
                let k = keep.len() as i64;
                let ix = idx.narrow(0, start, k);
                start += k;
                let raw = regression
                    .narrow(0, row, r)
                    .reshape([r, nc, 4])
                    .narrow(1, 1, nc - 1)
                    .reshape([-1, 4]);
                row += r;
                let s = scores.narrow(1, 1, nc - 1).reshape([-1]).index_select(0, &ix);
                Tensor::cat(&[s.unsqueeze(1), raw.index_select(0, &ix)], 1)
            })
            .collect()
    }

    /// Training: sample RoIs from the proposals (GT boxes appended) with `rng`, run the box and
    /// mask branches on them, and return the Fast R-CNN and mask losses (torchvision
    /// `RoIHeads.forward` in training mode).
    pub fn losses(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
        targets: &[RoiTarget],
        rng: &mut SamplingRng,
    ) -> RoiLosses {
        let sampler = BalancedSampler {
            batch_size_per_image: self.cfg.roi_heads.box_batch_size_per_image,
            positive_fraction: self.cfg.roi_heads.box_positive_fraction,
        };
        let samples: Vec<RoiSamples> = proposals
            .iter()
            .zip(targets)
            .map(|(p, t)| self.select_training_samples(p, &t.boxes, &t.labels, &sampler, rng))
            .collect();
        let props: Vec<Tensor> = samples.iter().map(|s| s.proposals.shallow_clone()).collect();
        let (class_logits, box_regression) = self.box_forward(features, &props, sizes);
        let cat = |f: fn(&RoiSamples) -> &Tensor| {
            Tensor::cat(
                &samples.iter().map(|s| f(s).shallow_clone()).collect::<Vec<_>>(),
                0,
            )
        };
        let (classifier, box_reg) = self.fastrcnn_loss(
            &class_logits,
            &box_regression,
            &cat(|s| &s.labels),
            &cat(|s| &s.regression_targets),
        );
        let device = class_logits.device();
        let mask = if self.has_mask() {
            self.maskrcnn_loss(features, sizes, &samples, targets)
        } else {
            Tensor::zeros([], (Kind::Float, device))
        };
        RoiLosses {
            classifier,
            box_reg,
            mask,
        }
    }

    /// torchvision `maskrcnn_loss` over a batch: the mask branch on every image's positive
    /// samples, and one mean over all positives (each image's [`RoiHeads::mask_loss`] weighted
    /// by its share of them); zero, with the graph kept, when no image has a positive.
    pub fn maskrcnn_loss(
        &self,
        features: &[Tensor],
        sizes: &[(i64, i64)],
        samples: &[RoiSamples],
        targets: &[RoiTarget],
    ) -> Tensor {
        let mut pos_boxes = Vec::with_capacity(samples.len());
        let mut pos_labels = Vec::with_capacity(samples.len());
        let mut pos_matched = Vec::with_capacity(samples.len());
        for s in samples {
            let pos = s.labels.gt(0).nonzero().squeeze_dim(1);
            pos_boxes.push(s.proposals.index_select(0, &pos));
            pos_labels.push(s.labels.index_select(0, &pos));
            pos_matched.push(s.matched_idxs.index_select(0, &pos));
        }
        let Some(logits) = self.mask_forward(features, &pos_boxes, sizes) else {
            return Tensor::zeros([], (Kind::Float, features[0].device()));
        };
        let mut start = 0;
        let mut parts = Vec::new();
        let mut weights = Vec::new();
        for (((b, l), matched), t) in pos_boxes.iter().zip(&pos_labels).zip(&pos_matched).zip(targets) {
            let k = b.size()[0];
            if k > 0 {
                parts.push(self.mask_loss(&logits.narrow(0, start, k), b, &t.masks, l, matched));
                weights.push(k as f64);
            }
            start += k;
        }
        if parts.is_empty() {
            return logits.sum(Kind::Float) * 0.0;
        }
        // torchvision concatenates all positives and takes one mean over them
        let total: f64 = weights.iter().sum();
        parts
            .iter()
            .zip(&weights)
            .map(|(p, w)| p * (*w / total))
            .fold(Tensor::zeros([], (Kind::Float, logits.device())), |a, b| a + b)
    }

    /// Append GT boxes to the proposals, match, sample and encode targets (one image).
    pub fn select_training_samples(
        &self,
        proposals: &Tensor,
        gt_boxes: &Tensor,
        gt_labels: &Tensor,
        sampler: &BalancedSampler,
        rng: &mut SamplingRng,
    ) -> RoiSamples {
        let proposals = Tensor::cat(
            &[proposals.shallow_clone(), gt_boxes.to_kind(proposals.kind())],
            0,
        );
        let (matched, labels) = self.assign(&proposals, gt_boxes, gt_labels);
        let sampled = sampler.sample(&labels, rng).all();
        self.samples_at(&proposals, gt_boxes, &matched, &labels, &sampled)
    }

    /// Matched GT index and label (0 background, -1 ignored) of each proposal.
    pub fn assign(&self, proposals: &Tensor, gt_boxes: &Tensor, gt_labels: &Tensor) -> (Tensor, Tensor) {
        let n = proposals.size()[0];
        let device = proposals.device();
        if gt_boxes.size()[0] == 0 {
            return (
                Tensor::zeros([n], (Kind::Int64, device)),
                Tensor::zeros([n], (Kind::Int64, device)),
            );
        }
        let matcher = Matcher::new(
            self.cfg.roi_heads.box_fg_iou_thresh,
            self.cfg.roi_heads.box_bg_iou_thresh,
            false,
        );
        let matched = matcher.matches(&box_iou(gt_boxes, proposals));
        let labels = gt_labels
            .index_select(0, &matched.clamp_min(0))
            .to_kind(Kind::Int64)
            .masked_fill(&matched.eq(BELOW_LOW_THRESHOLD), 0)
            .masked_fill(&matched.eq(BETWEEN_THRESHOLDS), -1);
        (matched.clamp_min(0), labels)
    }

    /// The samples at `idx` (ascending) of the matched proposals, with encoded targets.
    pub fn samples_at(
        &self,
        proposals: &Tensor,
        gt_boxes: &Tensor,
        matched: &Tensor,
        labels: &Tensor,
        idx: &Tensor,
    ) -> RoiSamples {
        let proposals = proposals.index_select(0, idx);
        let matched = matched.index_select(0, idx);
        let labels = labels.index_select(0, idx);
        let gt = if gt_boxes.size()[0] == 0 {
            Tensor::zeros([1, 4], (Kind::Float, proposals.device()))
        } else {
            gt_boxes.shallow_clone()
        };
        let regression_targets = self.box_coder.encode(&gt.index_select(0, &matched), &proposals);
        RoiSamples {
            proposals,
            labels,
            matched_idxs: matched,
            regression_targets,
        }
    }

    /// Fast R-CNN losses: cross-entropy over sampled RoIs and smooth-L1 on the class-specific
    /// deltas of positives, summed and divided by the number of sampled RoIs.
    pub fn fastrcnn_loss(
        &self,
        class_logits: &Tensor,
        box_regression: &Tensor,
        labels: &Tensor,
        targets: &Tensor,
    ) -> (Tensor, Tensor) {
        let cls = class_logits.cross_entropy_for_logits(labels);
        let pos = labels.gt(0).nonzero().squeeze_dim(1);
        let n = class_logits.size()[0];
        let reg = box_regression.reshape([n, -1, 4]);
        let labels_pos = labels.index_select(0, &pos);
        let pred = reg
            .index_select(0, &pos)
            .gather(1, &labels_pos.view([-1, 1, 1]).expand([-1, 1, 4], false), false)
            .squeeze_dim(1);
        let tgt = targets.index_select(0, &pos);
        let box_loss = pred.smooth_l1_loss(&tgt, tch::Reduction::Sum, self.cfg.roi_heads.box_loss_beta)
            / labels.numel().max(1) as f64;
        (cls, box_loss)
    }

    /// Mask loss: BCE-with-logits between the GT-class channel and the GT masks projected on the
    /// positive proposals by RoIAlign (adaptive sampling, scale 1).
    pub fn mask_loss(
        &self,
        mask_logits: &Tensor,
        proposals: &Tensor,
        gt_masks: &Tensor,
        labels: &Tensor,
        matched: &Tensor,
    ) -> Tensor {
        let m = mask_logits.size()[3];
        if proposals.size()[0] == 0 {
            return mask_logits.sum(Kind::Float) * 0.0;
        }
        let rois = Tensor::cat(
            &[
                matched.to_kind(Kind::Float).unsqueeze(1),
                proposals.shallow_clone(),
            ],
            1,
        );
        let targets = tch::no_grad(|| {
            roi_align(
                &gt_masks.unsqueeze(1).to_kind(Kind::Float),
                &rois,
                (m, m),
                1.0,
                -1,
            )
            .squeeze_dim(1)
        });
        let k = labels.size()[0];
        let idx = labels.view([-1, 1, 1, 1]).expand([k, 1, m, m], false);
        let logits = mask_logits.gather(1, &idx, false).squeeze_dim(1);
        logits.binary_cross_entropy_with_logits::<Tensor>(&targets, None, None, tch::Reduction::Mean)
    }
}
