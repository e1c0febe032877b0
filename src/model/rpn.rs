//! Region proposal network (port of torchvision `models/detection/rpn.py`, spec §2.4): the shared
//! head, proposal filtering (per-level top-n, decode, clip, small-box removal, per-level NMS,
//! post-NMS top-n) and the training loss.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

use super::anchors::AnchorGenerator;
use super::config::{BoxLoss, ModelConfig};
use crate::ops::boxes::{BoxCoder, box_iou, clip_batched, large_enough};
use crate::ops::matcher::Matcher;
use crate::ops::nms::{SortedProblems, greedy_sorted_with};
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
        let (objectness, deltas) = self.head_raw(features);
        self.with_anchors(objectness, deltas, features, padded)
    }

    /// The head alone (fixed shapes, no host work: what a CUDA graph captures): objectness
    /// `[N, total]` and deltas `[N, total, 4]`, flattened over levels in torchvision's order.
    pub fn head_raw(&self, features: &[Tensor]) -> (Tensor, Tensor) {
        let mut obj = Vec::new();
        let mut del = Vec::new();
        // the head runs in its weights' precision (bf16 / fp16 when asked for on CUDA), its
        // outputs are float32
        let kind = self.head.conv.ws.kind();
        for f in features {
            let t = self.head.conv.forward(&f.to_kind(kind)).relu();
            let logits = self.head.cls_logits.forward(&t).to_kind(Kind::Float);
            let deltas = self.head.bbox_pred.forward(&t).to_kind(Kind::Float);
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
        }
        (Tensor::cat(&obj, 1), Tensor::cat(&del, 1))
    }

    /// [`RpnOutput`] of the head's outputs on `features`: the anchors of the padded batch.
    pub fn with_anchors(
        &self,
        objectness: Tensor,
        deltas: Tensor,
        features: &[Tensor],
        padded: (i64, i64),
    ) -> RpnOutput {
        let a = self.cfg.anchors_per_location();
        let grids: Vec<(i64, i64)> = features.iter().map(|f| (f.size()[2], f.size()[3])).collect();
        let per_level = grids.iter().map(|&(h, w)| h * w * a).collect();
        let device = features[0].device();
        RpnOutput {
            objectness,
            deltas,
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
        self.forward_from(self.head_outputs(features, padded), image_sizes, targets)
    }

    /// [`Rpn::forward`] from the head's outputs.
    pub fn forward_from(
        &self,
        out: RpnOutput,
        image_sizes: &[(i64, i64)],
        targets: Option<(&[Tensor], &mut SamplingRng)>,
    ) -> (Vec<Proposals>, Option<RpnLosses>) {
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

    /// Filter proposals per image (`image_sizes` are the un-padded sizes): per level the top-n
    /// anchors by objectness, decoded and clipped, small boxes (and, per the semantics, low
    /// scores) left out, NMS within each level, then the post-NMS top-n by score (torchvision's
    /// `filter_proposals` with its per-level `batched_nms`). Every image of the batch is done at
    /// once on the device, and the NMS passes of all images and levels share one read to the
    /// host ([`greedy_sorted_with`]): one synchronisation per batch on CUDA.
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
        let b = image_sizes.len() as i64;
        let bound = |f: fn(&(i64, i64)) -> i64| {
            let v: Vec<f32> = image_sizes.iter().map(|s| f(s) as f32).collect();
            Tensor::from_slice(&v).to_device(device).view([b, 1])
        };
        let (heights, widths) = (bound(|s| s.0), bound(|s| s.1));
        let mut families = Vec::new();
        let mut level_boxes = Vec::new();
        let mut level_scores = Vec::new();
        let mut offset = 0;
        for &n in &out.per_level {
            let k = pre_n.min(n);
            let (mut scores, top) = objectness.narrow(1, offset, n).topk(k, 1, true, true); // [B, k]
            let top = top + offset;
            offset += n;
            let anchors = out.anchors.index_select(0, &top.flatten(0, -1));
            let d = deltas
                .gather(1, &top.unsqueeze(2).expand([b, k, 4], false), false)
                .reshape([b * k, 4]);
            let boxes = self.box_coder.decode(&d, &anchors).view([b, k, 4]);
            let boxes = clip_batched(&boxes, &heights, &widths);
            if self.cfg.rpn.rpn_nms_on_probabilities {
                scores = scores.sigmoid();
            }
            let mut valid = large_enough(&boxes, self.cfg.rpn.rpn_min_size);
            if let Some(t) = self.cfg.rpn.rpn_score_thresh {
                let probs = if self.cfg.rpn.rpn_nms_on_probabilities {
                    scores.shallow_clone()
                } else {
                    scores.sigmoid()
                };
                valid = valid.logical_and(&probs.ge(t));
            }
            // topk's order is descending, so each level is already in NMS priority order
            families.push(SortedProblems {
                boxes: boxes.shallow_clone(),
                valid,
            });
            level_boxes.push(boxes);
            level_scores.push(scores);
        }
        let all_scores = Tensor::cat(&level_scores, 1); // [B, N]
        let (kept, floats) = greedy_sorted_with(&families, self.cfg.rpn.rpn_nms_thresh, &[&all_scores]);
        let total = all_scores.size()[1] as usize;
        let host_scores = &floats[0];
        let mut starts = Vec::with_capacity(out.per_level.len());
        let mut s0 = 0usize;
        for f in &families {
            starts.push(s0);
            s0 += f.boxes.size()[1] as usize;
        }
        // per image: the kept positions of every level, by descending score, ties in
        // (level, rank) order (torchvision sorts the kept indices, then stably by score)
        let mut selected = Vec::new();
        let mut counts = Vec::with_capacity(b as usize);
        for i in 0..b as usize {
            let mut keep: Vec<usize> = kept
                .iter()
                .zip(&starts)
                .flat_map(|(per_image, &st)| per_image[i].iter().map(move |&p| st + p))
                .collect();
            let sc = &host_scores[i * total..(i + 1) * total];
            keep.sort_by(|&x, &y| sc[y].partial_cmp(&sc[x]).unwrap_or(std::cmp::Ordering::Equal));
            keep.truncate(post_n.max(0) as usize);
            counts.push(keep.len() as i64);
            selected.extend(keep.iter().map(|&p| (i * total + p) as i64));
        }
        let idx = crate::ops::host::upload_i64(&selected, device);
        let boxes = Tensor::cat(&level_boxes, 1).view([-1, 4]).index_select(0, &idx);
        let scores = all_scores.view([-1]).index_select(0, &idx);
        let mut start = 0;
        counts
            .iter()
            .map(|&c| {
                let p = Proposals {
                    boxes: boxes.narrow(0, start, c),
                    scores: scores.narrow(0, start, c),
                };
                start += c;
                p
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
