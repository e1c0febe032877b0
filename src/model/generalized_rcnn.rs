//! `MaskRcnn`, the orchestration of torchvision's `GeneralizedRCNN` (spec §2, §4): transform ->
//! backbone + FPN -> RPN -> RoI heads -> postprocess, with one shared path to features and
//! proposals for detection, the classifier's ranking and training; plus loading and saving.
//! COVID-CT-Mask-Net is the same network with module S (`s2new`) on the ranked detections.

use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::backbone::BackboneWithFpn;
use super::classifier::{S2Predictor, pad_ranked};
use super::config::{ClassifierConfig, ModelConfig};
use super::roi_heads::{RawDetections, RoiHeads, RoiTarget};
use super::rpn::{Rpn, RpnLosses};
use super::transform::{ImageBatch, batch_images, paste_masks, resize_boxes};
use super::{ClassScores, Detections, Losses, MaskSpace, Target, weights};
use crate::ops::sampler::SamplingRng;
use crate::stage_clock::StageClock;
use crate::{Error, Result};

/// What the transform, the backbone and the RPN hand the RoI heads.
struct Forward {
    batch: ImageBatch,
    /// FPN levels, finest first.
    features: Vec<Tensor>,
    /// `[R, 4]` proposals per image, in the resized image's coordinates.
    proposals: Vec<Tensor>,
    /// The RPN's losses, when training targets were given.
    rpn_losses: Option<RpnLosses>,
    /// The targets scaled like the images (empty at inference).
    targets: Vec<RoiTarget>,
}

/// Mask R-CNN (segmentation) or COVID-CT-Mask-Net (with module S).
#[derive(Debug)]
pub struct MaskRcnn {
    pub vs: VarStore,
    pub cfg: ModelConfig,
    pub backbone: BackboneWithFpn,
    pub rpn: Rpn,
    pub roi_heads: RoiHeads,
    pub s2new: Option<S2Predictor>,
    /// Precision of the backbone and FPN (float32 unless [`MaskRcnn::set_backbone_kind`]).
    pub backbone_kind: Kind,
    /// CUDA graphs of the fixed-shape part of inference, when turned on
    /// ([`MaskRcnn::set_cuda_graphs`]).
    graphs: std::cell::RefCell<GraphCache>,
}

/// The most input shapes captured as CUDA graphs per model (each holds its own activations).
pub const MAX_GRAPHS: usize = 4;

/// Captured graphs of backbone + FPN + RPN head, one per input shape `[B, 3, H, W]`.
#[derive(Debug, Default)]
struct GraphCache {
    on: bool,
    graphs: std::collections::HashMap<Vec<i64>, crate::cuda_graph::CapturedGraph>,
    /// Why graphs could not be used (then everything runs eagerly).
    failed: Option<String>,
}

impl MaskRcnn {
    /// A freshly initialised model.
    pub fn new(cfg: &ModelConfig, device: Device) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        let vs = VarStore::new(device);
        let root = vs.root();
        let backbone = BackboneWithFpn::new(&root / "backbone", cfg);
        let rpn = Rpn::new(&root / "rpn", cfg);
        let roi_heads = RoiHeads::new(&root / "roi_heads", cfg);
        let s2new = cfg
            .classifier
            .as_ref()
            .map(|c| S2Predictor::new(&root / "s2new", c.detections, c.s_features));
        Ok(MaskRcnn {
            vs,
            cfg: cfg.clone(),
            backbone,
            rpn,
            roi_heads,
            s2new,
            backbone_kind: Kind::Float,
            graphs: Default::default(),
        })
    }

    /// Load a ctmask model file (safetensors with the config in its metadata), strictly.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        Self::load_edited(path, device, |cfg| cfg)
    }

    /// Load a ctmask model file with its stored config passed through `edit` first (e.g. a
    /// fine-tune at another input size). The weights still load strictly, so `edit` cannot
    /// change the parameters' names or shapes.
    pub fn load_edited(
        path: &Path,
        device: Device,
        edit: impl FnOnce(ModelConfig) -> ModelConfig,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (cfg, _) = weights::read_config_bytes(path, &bytes)?;
        let model = Self::new(&edit(cfg), device)?;
        weights::load_into(path, &bytes, &model.vs.variables())?;
        Ok(model)
    }

    /// Save to a ctmask model file with extra metadata (e.g. provenance).
    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        weights::save(path, &named, &self.cfg, extra)
    }

    /// Variable names and shapes, sorted.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut v: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        v.sort();
        v
    }

    /// Change inference hyperparameters (thresholds, top-n, detections per image) in place.
    /// The architecture fields must stay the same.
    pub fn set_config(&mut self, cfg: ModelConfig) -> Result<()> {
        cfg.validate().map_err(Error::Config)?;
        self.rpn.set_config(&cfg);
        self.roi_heads.set_config(&cfg);
        self.cfg = cfg;
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    fn features(&self, batch: &ImageBatch, train: bool) -> Vec<Tensor> {
        let bn_train = train && self.cfg.bn_num_batches_tracked;
        match self.backbone_kind {
            Kind::Float => self.backbone.forward_t(&batch.tensors, bn_train),
            k => self
                .backbone
                .forward_t(&batch.tensors.to_kind(k), bn_train)
                .into_iter()
                .map(|f| f.to_kind(Kind::Float))
                .collect(),
        }
    }

    /// Run the backbone, the FPN and the heads' layers (the RPN head, the box head and
    /// predictor, the mask head) in `kind` (bf16 or fp16 on CUDA), as autocast would: the bulk of
    /// the arithmetic in reduced precision; RoIAlign, box coding, NMS, mask pasting and module S
    /// stay in float32 (each layer's input is cast to its weights' kind, its output back).
    pub fn set_backbone_kind(&mut self, kind: Kind) {
        let reduced = |name: &str| {
            name.starts_with("backbone.") || name.starts_with("rpn.head.") || name.starts_with("roi_heads.")
        };
        tch::no_grad(|| {
            for (name, mut v) in self.vs.variables() {
                if reduced(&name) && v.is_floating_point() {
                    let c = v.to_kind(kind);
                    v.set_data(&c);
                }
            }
        });
        self.backbone_kind = kind;
    }

    /// Run the fixed-shape part of inference (backbone, FPN, RPN head) as CUDA graphs: each
    /// input shape `[B, 3, H, W]` is captured at its first batch and replayed after, for up to
    /// [`MAX_GRAPHS`] shapes (a series' batches and its last, shorter one); others run eagerly.
    /// Call after the precision and layout are set (capture records the weights' memory). Only
    /// on CUDA; where the graph library cannot be loaded or a capture fails, the reason is kept
    /// ([`MaskRcnn::cuda_graphs_status`]) and everything runs eagerly.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        let mut g = self.graphs.borrow_mut();
        g.graphs.clear();
        g.failed = None;
        g.on = on;
        if on && !self.device().is_cuda() {
            g.failed = Some("CUDA graphs need a CUDA device".into());
        } else if on && let Err(e) = crate::cuda_graph::availability() {
            g.failed = Some(e);
        }
    }

    /// "off", "on (N captured)" or why graphs are not used.
    pub fn cuda_graphs_status(&self) -> String {
        let g = self.graphs.borrow();
        match (&g.failed, g.on) {
            (Some(e), _) => format!("unavailable: {e}"),
            (None, false) => "off".into(),
            (None, true) => format!("on ({} captured)", g.graphs.len()),
        }
    }

    /// Features, objectness and deltas of `x` through a captured graph, when graphs are on for
    /// its shape (capturing it the first time); `None`: run eagerly.
    fn graphed_static_part(&self, x: &Tensor) -> Option<(Vec<Tensor>, Tensor, Tensor)> {
        let mut g = self.graphs.borrow_mut();
        let shape = x.size();
        if !g.on || g.failed.is_some() {
            return None;
        }
        if !g.graphs.contains_key(&shape) {
            if g.graphs.len() >= MAX_GRAPHS {
                return None;
            }
            let captured =
                crate::cuda_graph::CapturedGraph::capture(self.device(), vec![x.zeros_like()], 2, |inputs| {
                    let batch = ImageBatch {
                        tensors: inputs[0].shallow_clone(),
                        image_sizes: vec![],
                        original_sizes: vec![],
                    };
                    let mut f = self.features(&batch, false);
                    let (obj, del) = self.rpn.head_raw(&f);
                    f.push(obj);
                    f.push(del);
                    f
                });
            match captured {
                Ok(c) => {
                    tracing::info!(shape = ?shape, "captured a CUDA graph of backbone, FPN and RPN head");
                    g.graphs.insert(shape.clone(), c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CUDA graph capture failed; running eagerly");
                    g.failed = Some(e);
                    return None;
                }
            }
        }
        let out = match g.graphs[&shape].run(&[x]) {
            Ok(o) => o,
            Err(e) => {
                g.failed = Some(e);
                return None;
            }
        };
        let mut out = out;
        let del = out.pop()?;
        let obj = out.pop()?;
        Some((out, obj, del))
    }

    /// Lay every convolution weight out channels-last (NHWC strides; shapes, names and values
    /// unchanged). libtorch's oneDNN convolutions then run, and hand on, channels-last
    /// activations without reordering at each layer: on the 2-core CPU a 512x512 R50 forward is
    /// about 10 % faster. The results differ from the NCHW run only by float rounding (the
    /// parity tests hold either way). Saved files are written contiguous, as always.
    pub fn set_channels_last(&mut self) {
        tch::no_grad(|| {
            for (_, mut v) in self.vs.variables() {
                if v.dim() == 4 && v.is_floating_point() {
                    let c = v.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                    v.set_data(&c);
                }
            }
        });
    }

    /// Inference on `[3, H, W]` float images in [0, 1].
    pub fn detect(&self, images: &[Tensor]) -> Result<Vec<Detections>> {
        self.detect_timed(images, &mut StageClock::off())
    }

    /// [`MaskRcnn::detect`] with the time of each stage recorded in `clock`.
    pub fn detect_timed(&self, images: &[Tensor], clock: &mut StageClock) -> Result<Vec<Detections>> {
        tch::no_grad(|| {
            let f = self.features_and_proposals(images, false, None, clock)?;
            let roi_features = &f.features[..self.cfg.roi_levels()];
            let mut raw = self
                .roi_heads
                .detect_boxes(roi_features, &f.proposals, &f.batch.image_sizes);
            clock.lap("roi_heads", self.device());
            self.roi_heads
                .attach_masks(roi_features, &f.batch.image_sizes, &mut raw);
            let out = self.postprocess(raw, &f.batch);
            clock.lap("masks", self.device());
            Ok(out)
        })
    }

    /// torchvision `GeneralizedRCNNTransform.postprocess`: boxes back to each original image,
    /// masks pasted into it (as logits, or probabilities per the semantics).
    fn postprocess(&self, raw: Vec<RawDetections>, batch: &ImageBatch) -> Vec<Detections> {
        let mask_space = if self.cfg.roi_heads.mask_paste_probabilities {
            MaskSpace::Probabilities
        } else {
            MaskSpace::Logits
        };
        raw.into_iter()
            .zip(batch.image_sizes.iter().zip(&batch.original_sizes))
            .map(|(d, (&resized, &original))| {
                let boxes = resize_boxes(&d.boxes, resized, original);
                let masks = d.mask_logits.map(|m| {
                    let m = match mask_space {
                        MaskSpace::Probabilities => m.sigmoid(),
                        MaskSpace::Logits => m,
                    };
                    paste_masks(&m, &boxes, original)
                });
                Detections {
                    boxes,
                    scores: d.scores,
                    labels: d.labels,
                    masks,
                    mask_space,
                    image_size: original,
                }
            })
            .collect()
    }

    /// The one path to features and proposals that detection, ranking and training share
    /// (torchvision `GeneralizedRCNN.forward` up to the RoI heads): transform, backbone + FPN,
    /// RPN. With `targets` (training) their boxes and masks are scaled like the images, the RPN
    /// samples anchors from the generator and returns its losses.
    fn features_and_proposals(
        &self,
        images: &[Tensor],
        train_bn: bool,
        targets: Option<(&[Target], &mut SamplingRng)>,
        clock: &mut StageClock,
    ) -> Result<Forward> {
        let batch = batch_images(images, &self.cfg)?;
        clock.lap("transform", self.device());
        let size = batch.tensors.size();
        let graphed = if targets.is_none() && !train_bn {
            self.graphed_static_part(&batch.tensors)
        } else {
            None
        };
        let (features, head) = match graphed {
            Some((f, obj, del)) => (f, Some((obj, del))),
            None => (self.features(&batch, train_bn), None),
        };
        clock.lap("backbone", self.device());
        let roi_targets: Vec<RoiTarget> = targets
            .as_ref()
            .map(|(t, _)| {
                t.iter()
                    .zip(batch.image_sizes.iter().zip(&batch.original_sizes))
                    .map(|(t, (&r, &o))| RoiTarget {
                        boxes: resize_boxes(&t.boxes.to_kind(Kind::Float), o, r),
                        labels: t.labels.shallow_clone(),
                        masks: scaled_masks(&t.masks, o, r),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let gt_boxes: Vec<Tensor> = roi_targets.iter().map(|t| t.boxes.shallow_clone()).collect();
        let (proposals, rpn_losses) = match head {
            Some((obj, del)) => self.rpn.forward_from(
                self.rpn.with_anchors(obj, del, &features, (size[2], size[3])),
                &batch.image_sizes,
                None,
            ),
            None => self.rpn.forward(
                &features,
                (size[2], size[3]),
                &batch.image_sizes,
                targets.map(|(_, rng)| (gt_boxes.as_slice(), rng)),
            ),
        };
        clock.lap("rpn", self.device());
        Ok(Forward {
            batch,
            features,
            proposals: proposals.into_iter().map(|p| p.boxes).collect(),
            rpn_losses,
            targets: roi_targets,
        })
    }

    /// The ranked `[k, 5]` rows of one image (before padding), with gradients when `grad`.
    pub fn ranked(&self, image: &Tensor, grad: bool) -> Result<Tensor> {
        let run = || -> Result<Tensor> {
            let f = self.features_and_proposals(
                std::slice::from_ref(image),
                false,
                None,
                &mut StageClock::off(),
            )?;
            Ok(self.roi_heads.ranked(
                &f.features[..self.cfg.roi_levels()],
                &f.proposals[0],
                f.batch.image_sizes[0],
            ))
        };
        if grad { run() } else { tch::no_grad(run) }
    }

    /// Module S and its settings, when the model is a classifier.
    pub fn classifier_head(&self) -> Option<(&S2Predictor, &ClassifierConfig)> {
        self.s2new.as_ref().zip(self.cfg.classifier.as_ref())
    }

    /// Classifier logits for one image as a tensor `[3]` (differentiable when `grad`), with the
    /// ranking facts.
    pub fn classify_tensor(&self, image: &Tensor, grad: bool) -> Result<(Tensor, ClassScores)> {
        let (s2, cfg) = self
            .classifier_head()
            .ok_or_else(|| Error::Input("this model has no classifier (module S)".into()))?;
        let ranked = self.ranked(image, grad)?;
        let k = ranked.size()[0];
        let (rows, padded) = pad_ranked(&ranked, cfg.detections, cfg.padding_seed);
        let logits = if grad {
            s2.forward(&rows)
        } else {
            tch::no_grad(|| s2.forward(&rows))
        };
        let v: Vec<f32> = crate::ops::host::read(&logits.detach().to_kind(Kind::Float))
            .map_err(|e: tch::TchError| Error::Other(e.to_string()))?;
        Ok((
            logits,
            ClassScores {
                logits: [v[0], v[1], v[2]],
                detections: k,
                padded,
                no_detections: k == 0,
            },
        ))
    }

    /// Classifier logits of one image.
    pub fn classify(&self, image: &Tensor) -> Result<ClassScores> {
        Ok(self.classify_tensor(image, false)?.1)
    }

    /// Classifier logits of a batch of images of one size, in one pass (one backbone run, the
    /// rankings' NMS in one read to the host, module S on all rows at once, the logits read
    /// once). With one image it gives what [`MaskRcnn::classify`] gives.
    pub fn classify_batch(&self, images: &[Tensor]) -> Result<Vec<ClassScores>> {
        let (s2, cfg) = self
            .classifier_head()
            .ok_or_else(|| Error::Input("this model has no classifier (module S)".into()))?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        if images.len() == 1 {
            return Ok(vec![self.classify(&images[0])?]);
        }
        tch::no_grad(|| {
            let f = self.features_and_proposals(images, false, None, &mut StageClock::off())?;
            let ranked = self.roi_heads.ranked_batch(
                &f.features[..self.cfg.roi_levels()],
                &f.proposals,
                &f.batch.image_sizes,
            );
            let mut rows = Vec::with_capacity(ranked.len());
            let mut facts = Vec::with_capacity(ranked.len());
            for r in &ranked {
                let k = r.size()[0];
                let (x, padded) = pad_ranked(r, cfg.detections, cfg.padding_seed);
                rows.push(x);
                facts.push((k, padded));
            }
            let logits = s2.forward_batch(&Tensor::stack(&rows, 0));
            let v: Vec<f32> = crate::ops::host::read(&logits.to_kind(Kind::Float).flatten(0, -1))
                .map_err(|e: tch::TchError| Error::Other(e.to_string()))?;
            Ok(facts
                .iter()
                .enumerate()
                .map(|(i, &(k, padded))| ClassScores {
                    logits: [v[3 * i], v[3 * i + 1], v[3 * i + 2]],
                    detections: k,
                    padded,
                    no_detections: k == 0,
                })
                .collect())
        })
    }

    /// Training losses of a batch (the model's parameters get gradients through `total()`).
    /// Anchors and proposals are sampled from `rng`, the training run's own generator.
    pub fn losses(&self, images: &[Tensor], targets: &[Target], rng: &mut SamplingRng) -> Result<Losses> {
        self.losses_t(images, targets, true, rng)
    }

    /// Losses with batch norm in training form (`train_bn`, when the model has BatchNorm2d) or
    /// with its running statistics (a validation pass in eval mode).
    pub fn losses_t(
        &self,
        images: &[Tensor],
        targets: &[Target],
        train_bn: bool,
        rng: &mut SamplingRng,
    ) -> Result<Losses> {
        let f = self.features_and_proposals(
            images,
            train_bn,
            Some((targets, &mut *rng)),
            &mut StageClock::off(),
        )?;
        let rpn = f.rpn_losses.expect("the RPN returns losses when given targets");
        let roi = self.roi_heads.losses(
            &f.features[..self.cfg.roi_levels()],
            &f.proposals,
            &f.batch.image_sizes,
            &f.targets,
            rng,
        );
        Ok(Losses {
            classifier: roi.classifier,
            box_reg: roi.box_reg,
            mask: roi.mask,
            objectness: rpn.objectness,
            rpn_box_reg: rpn.box_reg,
        })
    }
}

/// GT masks `[K, H, W]` resized like the image (nearest), as the transform does.
fn scaled_masks(masks: &Tensor, original: (i64, i64), resized: (i64, i64)) -> Tensor {
    if original == resized || masks.size()[0] == 0 {
        return masks.shallow_clone();
    }
    masks
        .unsqueeze(1)
        .to_kind(Kind::Float)
        .upsample_nearest2d([resized.0, resized.1], None, None)
        .squeeze_dim(1)
        .to_kind(Kind::Uint8)
}
