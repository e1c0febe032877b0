//! RoI heads (port of torchvision `models/detection/roi_heads.py` as COVID-CT-Mask-Net configures
//! it, spec §2.5-2.6 and §4.3): MultiScaleRoIAlign, the 128-wide TwoMLPHead and the predictor,
//! detection post-processing, the mask branch, training-sample selection and the Fast R-CNN and
//! mask losses, and the classifier's ranking of candidates for module S.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{MaskHeadKind, ModelConfig};
use super::layers::{conv2d, linear};
use crate::ops::boxes::{BoxCoder, box_iou, clip_boxes_to_image, positive_area, remove_small_boxes};
use crate::ops::matcher::{BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher};
use crate::ops::nms::batched_nms;
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
        let x = self
            .fc7
            .forward(&self.fc6.forward(&pooled.flatten(1, -1)).relu())
            .relu();
        (self.cls_score.forward(&x), self.bbox_pred.forward(&x))
    }

    /// Mask logits `[R, n_c, 28, 28]` of boxes (per image).
    pub fn mask_forward(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Option<Tensor> {
        let m = self.mask.as_ref()?;
        Some(m.forward(&self.mask_pool.pool(features, boxes, sizes)))
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

    /// Foreground candidates of one image, flattened (each class of each RoI), before NMS:
    /// `(boxes [C,4], scores [C], labels [C], candidate index [C] into R*(n_c-1))`.
    fn candidates(&self, boxes: &Tensor, scores: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
        let (r, nc) = (scores.size()[0], scores.size()[1]);
        let device = scores.device();
        let labels = Tensor::arange(nc, (Kind::Int64, device))
            .view([1, -1])
            .expand([r, nc], false);
        let boxes = boxes.narrow(1, 1, nc - 1).reshape([-1, 4]);
        let scores = scores.narrow(1, 1, nc - 1).reshape([-1]);
        let labels = labels.narrow(1, 1, nc - 1).reshape([-1]);
        let mut index = Tensor::arange(r * (nc - 1), (Kind::Int64, device));
        let mut keep_mask = match self.cfg.roi_heads.box_min_size {
            None => positive_area(&boxes),
            Some(_) => Tensor::arange(boxes.size()[0], (Kind::Int64, device)),
        };
        let (mut b, mut s, mut l) = (boxes, scores, labels);
        let sel = |t: &Tensor, k: &Tensor| t.index_select(0, k);
        b = sel(&b, &keep_mask);
        s = sel(&s, &keep_mask);
        l = sel(&l, &keep_mask);
        index = sel(&index, &keep_mask);
        keep_mask = s.gt(self.cfg.roi_heads.box_score_thresh).nonzero().squeeze_dim(1);
        b = sel(&b, &keep_mask);
        s = sel(&s, &keep_mask);
        l = sel(&l, &keep_mask);
        index = sel(&index, &keep_mask);
        if let Some(min) = self.cfg.roi_heads.box_min_size {
            let k = remove_small_boxes(&b, min);
            b = sel(&b, &k);
            s = sel(&s, &k);
            l = sel(&l, &k);
            index = sel(&index, &k);
        }
        (b, s, l, index)
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
    /// keep the `box_detections_per_img` best.
    pub fn postprocess_detections(
        &self,
        logits: &Tensor,
        regression: &Tensor,
        proposals: &[Tensor],
        sizes: &[(i64, i64)],
    ) -> Vec<RawDetections> {
        let mut start = 0;
        let mut out = Vec::with_capacity(proposals.len());
        for (p, &size) in proposals.iter().zip(sizes) {
            let r = p.size()[0];
            let (boxes, scores) = self.decode(
                &logits.narrow(0, start, r),
                &regression.narrow(0, start, r),
                p,
                size,
            );
            start += r;
            let (b, s, l, _) = self.candidates(&boxes, &scores);
            let keep = batched_nms(&b, &s, &l, self.cfg.roi_heads.box_nms_thresh);
            let keep = keep.narrow(
                0,
                0,
                self.cfg.roi_heads.box_detections_per_img.min(keep.size()[0]),
            );
            out.push(RawDetections {
                boxes: b.index_select(0, &keep),
                scores: s.index_select(0, &keep),
                labels: l.index_select(0, &keep),
                mask_logits: None,
            });
        }
        out
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
        let (logits, regression) = self.box_forward(features, &[proposals.shallow_clone()], &[size]);
        let (boxes, scores) = self.decode(&logits, &regression, proposals, size);
        let r = regression.size()[0];
        let nc = self.cfg.num_classes;
        let raw = regression
            .reshape([r, nc, 4])
            .narrow(1, 1, nc - 1)
            .reshape([-1, 4]);
        let (b, s, l, index) = self.candidates(&boxes, &scores);
        let keep = batched_nms(&b, &s, &l, self.cfg.roi_heads.box_nms_thresh);
        let keep = keep.narrow(
            0,
            0,
            self.cfg.roi_heads.box_detections_per_img.min(keep.size()[0]),
        );
        let deltas = raw.index_select(0, &index.index_select(0, &keep));
        Tensor::cat(&[s.index_select(0, &keep).unsqueeze(1), deltas], 1)
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
