//! COVID-CT-Mask-Net's networks on tch, mirroring torchvision's detection code file by file:
//! `MaskRcnn` = transform -> backbone (ResNet + FPN) -> RPN -> RoI heads -> post-processing, and,
//! for the classifier, module S on the ranked detections (spec §2, §4). Parameter paths are the
//! original checkpoint keys, so loading needs no renaming.

pub mod anchors;
pub mod backbone;
pub mod classifier;
pub mod config;
pub mod det_init;
pub mod fpn;
pub mod layers;
pub mod roi_heads;
pub mod rpn;
pub mod transform;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::ModelConfig;

use backbone::BackboneWithFpn;
use classifier::{S2Predictor, pad_ranked};
use roi_heads::RoiHeads;
use rpn::Rpn;
use transform::{ImageBatch, batch_images, paste_masks, resize_boxes};

use crate::ops::sampler::SamplingRng;
use crate::{Error, Result};

/// The space the pasted mask values are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSpace {
    /// Raw logits (the original returns these).
    Logits,
    /// Sigmoid probabilities (today's torchvision).
    Probabilities,
}

/// Detections of one image in its original coordinates.
#[derive(Debug)]
pub struct Detections {
    /// `[K, 4]` (x1, y1, x2, y2).
    pub boxes: Tensor,
    /// `[K]` softmax scores.
    pub scores: Tensor,
    /// `[K]` int64 labels (1-based foreground classes).
    pub labels: Tensor,
    /// `[K, H, W]` pasted masks in `mask_space`, when the model has a mask head.
    pub masks: Option<Tensor>,
    pub mask_space: MaskSpace,
    /// `(h, w)` of the input image.
    pub image_size: (i64, i64),
}

impl Detections {
    /// Number of detections.
    pub fn len(&self) -> i64 {
        self.scores.size()[0]
    }

    /// Whether nothing was detected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[K, H, W]` booleans: mask probability above `threshold` (compared in logit space for
    /// logit masks, so `sigmoid(0.5)` reproduces the original's `logit > 0.5` exactly).
    pub fn binary_masks(&self, threshold: f64) -> Option<Tensor> {
        let m = self.masks.as_ref()?;
        Some(match self.mask_space {
            MaskSpace::Probabilities => m.gt(threshold),
            MaskSpace::Logits => m.gt(logit(threshold)),
        })
    }
}

/// `log(p / (1 - p))`.
pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The original's default mask threshold, `logit > 0.5`, as a probability.
pub fn default_mask_threshold() -> f64 {
    sigmoid(0.5)
}

/// Wall time per stage, optionally synchronising CUDA at each lap so GPU work is attributed to
/// its stage (off in production: no synchronisation in the hot path).
#[derive(Debug, Default)]
pub struct StageClock {
    enabled: bool,
    last: Option<std::time::Instant>,
    /// Accumulated milliseconds per stage name.
    pub ms: BTreeMap<&'static str, f64>,
}

impl StageClock {
    /// A clock that records nothing.
    pub fn off() -> Self {
        StageClock::default()
    }

    /// A recording clock, started now.
    pub fn on() -> Self {
        StageClock {
            enabled: true,
            last: Some(std::time::Instant::now()),
            ms: BTreeMap::new(),
        }
    }

    /// Restart the lap timer (e.g. after work that belongs to no stage).
    pub fn reset(&mut self) {
        if self.enabled {
            self.last = Some(std::time::Instant::now());
        }
    }

    /// Close the current lap as `stage`.
    pub fn lap(&mut self, stage: &'static str, device: Device) {
        if !self.enabled {
            return;
        }
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = std::time::Instant::now();
        if let Some(t) = self.last {
            *self.ms.entry(stage).or_insert(0.0) += (now - t).as_secs_f64() * 1e3;
        }
        self.last = Some(now);
    }
}

/// The five training losses (spec §2.7: their plain sum is optimised).
#[derive(Debug)]
pub struct Losses {
    pub classifier: Tensor,
    pub box_reg: Tensor,
    pub mask: Tensor,
    pub objectness: Tensor,
    pub rpn_box_reg: Tensor,
}

impl Losses {
    pub fn total(&self) -> Tensor {
        &self.classifier + &self.box_reg + &self.mask + &self.objectness + &self.rpn_box_reg
    }

    /// `(name, value)` pairs in the original's printing order.
    pub fn values(&self) -> [(&'static str, f64); 5] {
        let v = |t: &Tensor| t.double_value(&[]);
        [
            ("loss_classifier", v(&self.classifier)),
            ("loss_box_reg", v(&self.box_reg)),
            ("loss_mask", v(&self.mask)),
            ("loss_objectness", v(&self.objectness)),
            ("loss_rpn_box_reg", v(&self.rpn_box_reg)),
        ]
    }
}

/// Ground truth of one training image.
#[derive(Debug)]
pub struct Target {
    /// `[K, 4]` float boxes in the input image's coordinates.
    pub boxes: Tensor,
    /// `[K]` int64 labels.
    pub labels: Tensor,
    /// `[K, H, W]` uint8 instance masks.
    pub masks: Tensor,
}

/// The classifier's output for one image.
#[derive(Debug, Clone)]
pub struct ClassScores {
    pub logits: [f32; 3],
    /// Detections that survived before padding.
    pub detections: i64,
    /// Whether fewer than N survived and the ranked rows were padded.
    pub padded: bool,
    /// No detection survived: S saw an all-zero input.
    pub no_detections: bool,
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

    /// Run the backbone and FPN in `kind` (bf16 or fp16 on CUDA), the heads in fp32: the bulk
    /// of the arithmetic in reduced precision, box coding, NMS and RoIAlign exact.
    pub fn set_backbone_kind(&mut self, kind: Kind) {
        tch::no_grad(|| {
            for (name, mut v) in self.vs.variables() {
                if name.starts_with("backbone.") && v.is_floating_point() {
                    let c = v.to_kind(kind);
                    v.set_data(&c);
                }
            }
        });
        self.backbone_kind = kind;
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
            let batch = batch_images(images, &self.cfg)?;
            clock.lap("transform", self.device());
            let features = self.features(&batch, false);
            clock.lap("backbone", self.device());
            let size = batch.tensors.size();
            let rpn_out = self.rpn.head_outputs(&features, (size[2], size[3]));
            let proposals = self.rpn.proposals(&rpn_out, &batch.image_sizes, false);
            let boxes: Vec<Tensor> = proposals.into_iter().map(|p| p.boxes).collect();
            clock.lap("rpn", self.device());
            let roi_features = &features[..self.cfg.roi_levels()];
            let mut raw = self
                .roi_heads
                .detect_boxes(roi_features, &boxes, &batch.image_sizes);
            clock.lap("roi_heads", self.device());
            self.roi_heads
                .attach_masks(roi_features, &batch.image_sizes, &mut raw);
            let out: Vec<Detections> = raw
                .into_iter()
                .zip(batch.image_sizes.iter().zip(&batch.original_sizes))
                .map(|(d, (&resized, &original))| {
                    let boxes = resize_boxes(&d.boxes, resized, original);
                    let masks = d.mask_logits.map(|m| {
                        let m = if self.cfg.mask_paste_probabilities {
                            m.sigmoid()
                        } else {
                            m
                        };
                        paste_masks(&m, &boxes, original)
                    });
                    Detections {
                        boxes,
                        scores: d.scores,
                        labels: d.labels,
                        masks,
                        mask_space: if self.cfg.mask_paste_probabilities {
                            MaskSpace::Probabilities
                        } else {
                            MaskSpace::Logits
                        },
                        image_size: original,
                    }
                })
                .collect();
            clock.lap("masks", self.device());
            Ok(out)
        })
    }

    /// The ranked `[k, 5]` rows of one image (before padding), with gradients when `grad`.
    pub fn ranked(&self, image: &Tensor, grad: bool) -> Result<Tensor> {
        let run = || -> Result<Tensor> {
            let batch = batch_images(std::slice::from_ref(image), &self.cfg)?;
            let features = self.features(&batch, false);
            let size = batch.tensors.size();
            let rpn_out = self.rpn.head_outputs(&features, (size[2], size[3]));
            let proposals = self.rpn.proposals(&rpn_out, &batch.image_sizes, false);
            Ok(self.roi_heads.ranked(
                &features[..self.cfg.roi_levels()],
                &proposals[0].boxes,
                batch.image_sizes[0],
            ))
        };
        if grad { run() } else { tch::no_grad(run) }
    }

    /// Classifier logits for one image as a tensor `[3]` (differentiable when `grad`), with the
    /// ranking facts.
    pub fn classify_tensor(&self, image: &Tensor, grad: bool) -> Result<(Tensor, ClassScores)> {
        let s2 = self
            .s2new
            .as_ref()
            .ok_or_else(|| Error::Input("this model has no classifier (module S)".into()))?;
        let cfg = self
            .cfg
            .classifier
            .as_ref()
            .expect("a model with s2new has a classifier config");
        let ranked = self.ranked(image, grad)?;
        let k = ranked.size()[0];
        let (rows, padded) = pad_ranked(&ranked, cfg.detections, cfg.padding_seed);
        let logits = if grad {
            s2.forward(&rows)
        } else {
            tch::no_grad(|| s2.forward(&rows))
        };
        let v: Vec<f32> = Vec::try_from(logits.detach().to_kind(Kind::Float).to_device(Device::Cpu))
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
        let batch = batch_images(images, &self.cfg)?;
        let features = self.features(&batch, train_bn);
        let size = batch.tensors.size();
        let rpn_out = self.rpn.head_outputs(&features, (size[2], size[3]));
        let proposals = self.rpn.proposals(&rpn_out, &batch.image_sizes, true);
        // targets scaled like the images
        let scaled: Vec<Tensor> = targets
            .iter()
            .zip(batch.image_sizes.iter().zip(&batch.original_sizes))
            .map(|(t, (&r, &o))| resize_boxes(&t.boxes.to_kind(Kind::Float), o, r))
            .collect();
        let mut labels = Vec::new();
        let mut reg_targets = Vec::new();
        let mut sampled = Vec::new();
        let sampler = self.rpn.sampler();
        for gt in &scaled {
            let (l, matched) = self.rpn.assign_targets(&rpn_out.anchors, gt);
            reg_targets.push(self.rpn.box_coder.encode(&matched, &rpn_out.anchors));
            sampled.push(sampler.sample(&l, rng));
            labels.push(l);
        }
        let (objectness, rpn_box_reg) = self.rpn.loss(&rpn_out, &labels, &reg_targets, &sampled);
        let box_sampler = crate::ops::sampler::BalancedSampler {
            batch_size_per_image: self.cfg.box_batch_size_per_image,
            positive_fraction: self.cfg.box_positive_fraction,
        };
        let samples: Vec<_> = proposals
            .iter()
            .zip(scaled.iter().zip(targets))
            .map(|(p, (gt, t))| {
                self.roi_heads
                    .select_training_samples(&p.boxes, gt, &t.labels, &box_sampler, rng)
            })
            .collect();
        let roi_features = &features[..self.cfg.roi_levels()];
        let props: Vec<Tensor> = samples.iter().map(|s| s.proposals.shallow_clone()).collect();
        let (class_logits, box_regression) =
            self.roi_heads
                .box_forward(roi_features, &props, &batch.image_sizes);
        let all_labels = Tensor::cat(
            &samples
                .iter()
                .map(|s| s.labels.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let all_targets = Tensor::cat(
            &samples
                .iter()
                .map(|s| s.regression_targets.shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let (classifier, box_reg) =
            self.roi_heads
                .fastrcnn_loss(&class_logits, &box_regression, &all_labels, &all_targets);
        let mask = if self.roi_heads.has_mask() {
            let mut pos_boxes = Vec::new();
            let mut pos_labels = Vec::new();
            let mut pos_masks = Vec::new();
            for ((s, t), (&r, &o)) in samples
                .iter()
                .zip(targets)
                .zip(batch.image_sizes.iter().zip(&batch.original_sizes))
            {
                let pos = s.labels.gt(0).nonzero().squeeze_dim(1);
                pos_boxes.push(s.proposals.index_select(0, &pos));
                pos_labels.push(s.labels.index_select(0, &pos));
                let gt_masks = scaled_masks(&t.masks, o, r);
                pos_masks.push((gt_masks, s.matched_idxs.index_select(0, &pos)));
            }
            let logits = self
                .roi_heads
                .mask_forward(roi_features, &pos_boxes, &batch.image_sizes)
                .expect("the model has a mask head");
            let mut start = 0;
            let mut parts = Vec::new();
            let mut weights = Vec::new();
            for ((b, l), (m, matched)) in pos_boxes.iter().zip(&pos_labels).zip(&pos_masks) {
                let k = b.size()[0];
                if k > 0 {
                    parts.push(
                        self.roi_heads
                            .mask_loss(&logits.narrow(0, start, k), b, m, l, matched),
                    );
                    weights.push(k as f64);
                }
                start += k;
            }
            if parts.is_empty() {
                logits.sum(Kind::Float) * 0.0
            } else {
                // torchvision concatenates all positives and takes one mean over them
                let total: f64 = weights.iter().sum();
                parts
                    .iter()
                    .zip(&weights)
                    .map(|(p, w)| p * (*w / total))
                    .fold(Tensor::zeros([], (Kind::Float, self.device())), |a, b| a + b)
            }
        } else {
            Tensor::zeros([], (Kind::Float, self.device()))
        };
        Ok(Losses {
            classifier,
            box_reg,
            mask,
            objectness,
            rpn_box_reg,
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
