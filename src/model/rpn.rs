//! Region proposal network (port of torchvision `models/detection/rpn.py`, spec §2.4): the shared
//! head, proposal filtering (per-level top-n, decode, clip, small-box removal, per-level NMS,
//! post-NMS top-n) and the training loss.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::anchors::AnchorGenerator;
use super::config::{BoxLoss, ModelConfig};
use crate::ops::boxes::{BoxCoder, box_iou, clip_boxes_to_image, remove_small_boxes};
use crate::ops::matcher::Matcher;
use crate::ops::nms::batched_nms;
use crate::ops::sampler::{BalancedSampler, Sampled, SamplingRng};

#[derive(Debug)]
pub struct RpnHead {
    conv: nn::Conv2D,
    cls_logits: nn::Conv2D,
    bbox_pred: nn::Conv2D,
}

fn head_conv(p: nn::Path, cin: i64, cout: i64, k: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            padding: k / 2,
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

impl RpnHead {
    pub fn new(p: nn::Path, channels: i64, anchors: i64) -> Self {
        RpnHead {
            conv: head_conv(&p / "conv", channels, channels, 3),
            cls_logits: head_conv(&p / "cls_logits", channels, anchors, 1),
            bbox_pred: head_conv(&p / "bbox_pred", channels, anchors * 4, 1),
        }
    }
}

/// Raw RPN outputs of a batch, flattened over levels in torchvision's order.
#[derive(Debug)]
pub struct RpnOutput {
    /// `[N, total]` objectness logits.
    pub objectness: Tensor,
    /// `[N, total, 4]` box deltas.
    pub deltas: Tensor,
    /// `[total, 4]` anchors (the same for every image of the padded batch).
    pub anchors: Tensor,
    /// Anchors per level.
    pub per_level: Vec<i64>,
}

/// Proposals of one image with their objectness (logits or probabilities, per the semantics).
#[derive(Debug)]
pub struct Proposals {
    pub boxes: Tensor,
    pub scores: Tensor,
}

/// The RPN's two training losses (spec §2.4: objectness BCE, box regression L1 by default).
#[derive(Debug)]
pub struct RpnLosses {
    pub objectness: Tensor,
    pub box_reg: Tensor,
}

#[derive(Debug)]
pub struct Rpn {
    pub head: RpnHead,
    pub anchor_generator: AnchorGenerator,
    pub box_coder: BoxCoder,
    cfg: ModelConfig,
}

impl Rpn {
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Rpn {
            head: RpnHead::new(&p / "head", ModelConfig::FPN_CHANNELS, cfg.anchors_per_location()),
            anchor_generator: AnchorGenerator::new(
                cfg.anchors.anchor_sizes.clone(),
                cfg.anchors.anchor_aspect_ratios.clone(),
                cfg.anchors.anchor_stride,
            ),
            box_coder: BoxCoder::new([1.0, 1.0, 1.0, 1.0]),
            cfg: cfg.clone(),
        }
    }

    /// Replace the hyperparameters (not the architecture).
    pub fn set_config(&mut self, cfg: &ModelConfig) {
        self.cfg = cfg.clone();
    }

    /// Run the head on every level: `[N, A, H, W]` / `[N, 4A, H, W]` -> `[N, H*W*A]` / `[N, H*W*A, 4]`.
    pub fn head_outputs(&self, features: &[Tensor], padded: (i64, i64)) -> RpnOutput {
        let mut obj = Vec::new();
        let mut del = Vec::new();
        let mut grids = Vec::new();
        let mut per_level = Vec::new();
        for f in features {
            let t = self.head.conv.forward(f).relu();
            let logits = self.head.cls_logits.forward(&t);
            let deltas = self.head.bbox_pred.forward(&t);
            let [n, a, h, w] = logits.size()[..] else {
                unreachable!("conv output is 4-D")
            };
            obj.push(logits.permute([0, 2, 3, 1]).reshape([n, -1])); // [N, H*W*A]
            del.push(
                deltas
                    .view([n, a, 4, h, w])
                    .permute([0, 3, 4, 1, 2])
                    .reshape([n, -1, 4]),
            );
            grids.push((h, w));
            per_level.push(h * w * a);
        }
        let device = features[0].device();
        RpnOutput {
            objectness: Tensor::cat(&obj, 1),
            deltas: Tensor::cat(&del, 1),
            anchors: self.anchor_generator.anchors(padded, &grids, device),
            per_level,
        }
    }

    /// torchvision `RegionProposalNetwork.forward`: the proposals of each image of the padded
    /// batch (`padded` its size, `image_sizes` the un-padded ones) and, when ground-truth boxes
    /// (in the resized images' coordinates) are given, the losses on anchors sampled from `rng`.
    /// With targets the training top-n apply, as in torchvision's training mode.
    pub fn forward(
        &self,
        features: &[Tensor],
        padded: (i64, i64),
        image_sizes: &[(i64, i64)],
        targets: Option<(&[Tensor], &mut SamplingRng)>,
    ) -> (Vec<Proposals>, Option<RpnLosses>) {
        let out = self.head_outputs(features, padded);
        let proposals = self.proposals(&out, image_sizes, targets.is_some());
        let losses = targets.map(|(gt_boxes, rng)| {
            let sampler = self.sampler();
            let mut labels = Vec::with_capacity(gt_boxes.len());
            let mut regression_targets = Vec::with_capacity(gt_boxes.len());
            let mut sampled = Vec::with_capacity(gt_boxes.len());
            for gt in gt_boxes {
                let (l, matched) = self.assign_targets(&out.anchors, gt);
                regression_targets.push(self.box_coder.encode(&matched, &out.anchors));
                sampled.push(sampler.sample(&l, rng));
                labels.push(l);
            }
            let (objectness, box_reg) = self.loss(&out, &labels, &regression_targets, &sampled);
            RpnLosses { objectness, box_reg }
        });
        (proposals, losses)
    }

    /// Filter proposals per image (`image_sizes` are the un-padded sizes).
    pub fn proposals(&self, out: &RpnOutput, image_sizes: &[(i64, i64)], train: bool) -> Vec<Proposals> {
        let (pre_n, post_n) = if train {
            (
                self.cfg.rpn.rpn_pre_nms_top_n_train,
                self.cfg.rpn.rpn_post_nms_top_n_train,
            )
        } else {
            (
                self.cfg.rpn.rpn_pre_nms_top_n_test,
                self.cfg.rpn.rpn_post_nms_top_n_test,
            )
        };
        let objectness = out.objectness.detach();
        let deltas = out.deltas.detach();
        let device = objectness.device();
        image_sizes
            .iter()
            .enumerate()
            .map(|(i, &(h, w))| {
                let ob = objectness.get(i as i64);
                // top-n per level
                let mut idx = Vec::new();
                let mut lv = Vec::new();
                let mut offset = 0;
                for (l, &n) in out.per_level.iter().enumerate() {
                    let k = pre_n.min(n);
                    let top = ob.narrow(0, offset, n).topk(k, 0, true, true).1 + offset;
                    lv.push(Tensor::full([k], l as i64, (Kind::Int64, device)));
                    idx.push(top);
                    offset += n;
                }
                let idx = Tensor::cat(&idx, 0);
                let levels = Tensor::cat(&lv, 0);
                let mut scores = ob.index_select(0, &idx);
                let anchors = out.anchors.index_select(0, &idx);
                let d = deltas.get(i as i64).index_select(0, &idx);
                let boxes = self.box_coder.decode(&d, &anchors).squeeze_dim(1);
                let mut boxes = clip_boxes_to_image(&boxes, h, w);
                let mut levels = levels;
                if self.cfg.rpn.rpn_nms_on_probabilities {
                    scores = scores.sigmoid();
                }
                let keep = remove_small_boxes(&boxes, self.cfg.rpn.rpn_min_size);
                boxes = boxes.index_select(0, &keep);
                scores = scores.index_select(0, &keep);
                levels = levels.index_select(0, &keep);
                if let Some(t) = self.cfg.rpn.rpn_score_thresh {
                    let probs = if self.cfg.rpn.rpn_nms_on_probabilities {
                        scores.shallow_clone()
                    } else {
                        scores.sigmoid()
                    };
                    let keep = probs.ge(t).nonzero().squeeze_dim(1);
                    boxes = boxes.index_select(0, &keep);
                    scores = scores.index_select(0, &keep);
                    levels = levels.index_select(0, &keep);
                }
                let keep = batched_nms(&boxes, &scores, &levels, self.cfg.rpn.rpn_nms_thresh);
                let keep = keep.narrow(0, 0, post_n.min(keep.size()[0]));
                Proposals {
                    boxes: boxes.index_select(0, &keep),
                    scores: scores.index_select(0, &keep),
                }
            })
            .collect()
    }

    /// Anchor labels (1 fg, 0 bg, -1 ignored) and matched GT boxes for one image.
    pub fn assign_targets(&self, anchors: &Tensor, gt_boxes: &Tensor) -> (Tensor, Tensor) {
        let n = anchors.size()[0];
        let device = anchors.device();
        if gt_boxes.size()[0] == 0 {
            return (
                Tensor::zeros([n], (Kind::Float, device)),
                Tensor::zeros([n, 4], (Kind::Float, device)),
            );
        }
        let matcher = Matcher::new(
            self.cfg.rpn.rpn_fg_iou_thresh,
            self.cfg.rpn.rpn_bg_iou_thresh,
            true,
        );
        let matched = matcher.matches(&box_iou(gt_boxes, anchors));
        let matched_boxes = gt_boxes.index_select(0, &matched.clamp_min(0));
        let labels = matched
            .ge(0)
            .to_kind(Kind::Float)
            .masked_fill(&matched.eq(crate::ops::matcher::BETWEEN_THRESHOLDS), -1.0);
        (labels, matched_boxes)
    }

    /// The anchor sampler of the configuration.
    pub fn sampler(&self) -> BalancedSampler {
        BalancedSampler {
            batch_size_per_image: self.cfg.rpn.rpn_batch_size_per_image,
            positive_fraction: self.cfg.rpn.rpn_positive_fraction,
        }
    }

    /// RPN losses (objectness, box regression) for a batch given the sampled anchors per image.
    pub fn loss(
        &self,
        out: &RpnOutput,
        labels: &[Tensor],
        regression_targets: &[Tensor],
        sampled: &[Sampled],
    ) -> (Tensor, Tensor) {
        let total = out.objectness.size()[1];
        let mut pos = Vec::new();
        let mut all = Vec::new();
        for (i, s) in sampled.iter().enumerate() {
            pos.push(&s.positive + i as i64 * total);
            all.push(s.all() + i as i64 * total);
        }
        let pos = Tensor::cat(&pos, 0);
        let all = Tensor::cat(&all, 0);
        let objectness = out.objectness.reshape([-1]);
        let deltas = out.deltas.reshape([-1, 4]);
        let labels = Tensor::cat(labels, 0);
        let targets = Tensor::cat(regression_targets, 0);
        let pred = deltas.index_select(0, &pos);
        let tgt = targets.index_select(0, &pos);
        let box_sum = match self.cfg.rpn.rpn_box_loss {
            BoxLoss::L1 => (pred - tgt).abs().sum(Kind::Float),
            BoxLoss::SmoothL1 { beta } => pred.smooth_l1_loss(&tgt, tch::Reduction::Sum, beta),
        };
        let n = all.size()[0].max(1) as f64;
        let obj = objectness
            .index_select(0, &all)
            .binary_cross_entropy_with_logits::<Tensor>(
                &labels.index_select(0, &all),
                None,
                None,
                tch::Reduction::Mean,
            );
        (obj, box_sum / n)
    }
}
