//! Every hyperparameter of the Mask R-CNN and of module S in one struct, with torchvision's names
//! and the original's defaults (spec `original-model.md` §2.4-2.10, §4). Where the original (a
//! copy of torchvision 0.3.0) and today's torchvision behave differently, the difference is a
//! field, and two presets exist: [`Semantics::Original`] (the default) and
//! [`Semantics::Torchvision`]. The config travels inside every model file (safetensors metadata).

use serde::{Deserialize, Serialize};

/// The settings that shape a model's parameters or what they mean: a run that resumes from a
/// checkpoint (or starts from its weights) keeps them; every other setting may change.
pub const ARCHITECTURE_SETTINGS: &[&str] = &[
    "backbone",
    "truncation",
    "fpn_pool_level",
    "bn_eps",
    "bn_num_batches_tracked",
    "num_classes",
    "class_names",
    "mask_head",
    "representation_size",
    "semantics",
    "anchor_sizes",
    "anchor_aspect_ratios",
    "classifier",
];

/// ResNet depth of the backbone body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    Resnet18,
    Resnet34,
    Resnet50,
}

/// Which post-processing and loss conventions the model follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Semantics {
    /// COVID-CT-Mask-Net's copy of torchvision 0.3.0.
    #[default]
    Original,
    /// torchvision 0.26 (PyTorch 2.11).
    Torchvision,
}

/// The mask head's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskHeadKind {
    /// No mask branch (the classifier's Faster R-CNN).
    None,
    /// Four 3x3 convs of 256 and a 256-wide predictor (ResNet50 models).
    Full,
    /// One 3x3 conv of 128 and a 128-wide predictor (the lightweight models).
    Light,
}

impl MaskHeadKind {
    /// `(convolutions, width)` of the mask head, `None` without one.
    pub fn layers_and_width(self) -> Option<(i64, i64)> {
        match self {
            MaskHeadKind::None => None,
            MaskHeadKind::Full => Some((4, 256)),
            MaskHeadKind::Light => Some((1, 128)),
        }
    }
}

/// How the RPN box loss is computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxLoss {
    /// Plain L1 (torchvision 0.3.0's RPN).
    L1,
    /// Smooth L1 with the given beta.
    SmoothL1 { beta: f64 },
}

/// How anchor strides are computed from the padded image and feature sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorStride {
    /// `image / grid` in floating point (torchvision 0.3.0).
    Float,
    /// `image // grid` in integers (today's torchvision).
    Floor,
}

/// Module S (`s2new`): the classifier head on the ranked detections (§4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// N: detections fed to S (`box_detections_per_img` of the classifier).
    pub detections: i64,
    /// Hidden width of S (`s_features`).
    pub s_features: i64,
    /// Seed of the deterministic padding (the original pads at random positions).
    pub padding_seed: u64,
}

/// The input transform (torchvision's `GeneralizedRCNNTransform`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformConfig {
    pub min_size: i64,
    pub max_size: i64,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub size_divisible: i64,
}

/// The anchor generator (torchvision's `AnchorGenerator`): one entry per FPN level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnchorConfig {
    pub anchor_sizes: Vec<Vec<f64>>,
    pub anchor_aspect_ratios: Vec<Vec<f64>>,
    pub anchor_stride: AnchorStride,
}

/// The region proposal network (torchvision's `RegionProposalNetwork` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpnConfig {
    pub rpn_pre_nms_top_n_train: i64,
    pub rpn_pre_nms_top_n_test: i64,
    pub rpn_post_nms_top_n_train: i64,
    pub rpn_post_nms_top_n_test: i64,
    pub rpn_nms_thresh: f64,
    pub rpn_fg_iou_thresh: f64,
    pub rpn_bg_iou_thresh: f64,
    pub rpn_batch_size_per_image: i64,
    pub rpn_positive_fraction: f64,
    /// Keep proposals with sigmoid(objectness) >= this (torchvision: 0.0; None: no filter).
    pub rpn_score_thresh: Option<f64>,
    /// remove_small_boxes size in the RPN (original 0, torchvision 1e-3).
    pub rpn_min_size: f64,
    /// NMS on sigmoid probabilities (torchvision) instead of logits (original).
    pub rpn_nms_on_probabilities: bool,
    pub rpn_box_loss: BoxLoss,
}

/// The RoI heads (torchvision's `RoIHeads` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoiHeadsConfig {
    pub box_score_thresh: f64,
    pub box_nms_thresh: f64,
    pub box_detections_per_img: i64,
    pub box_fg_iou_thresh: f64,
    pub box_bg_iou_thresh: f64,
    pub box_batch_size_per_image: i64,
    pub box_positive_fraction: f64,
    pub bbox_reg_weights: [f64; 4],
    /// remove_small_boxes size on detections (torchvision 1e-2); None keeps boxes of area > 0 (original).
    pub box_min_size: Option<f64>,
    /// Beta of the Fast R-CNN smooth-L1 box loss (original 1.0, torchvision 1/9).
    pub box_loss_beta: f64,
    /// Masks are pasted as probabilities (torchvision) rather than logits (original).
    pub mask_paste_probabilities: bool,
}

impl Default for ClassifierConfig {
    /// The full model's S (§4.4): N = 256 detections, 1024 hidden features (the lightweight
    /// models: 128 and 512).
    fn default() -> Self {
        ClassifierConfig {
            detections: 256,
            s_features: 1024,
            padding_seed: 0,
        }
    }
}

/// The whole architecture and every hyperparameter of a model, nested per stage. Each stage's
/// struct is flattened into one JSON object, so a model file's `config` metadata keeps the flat
/// keys (and their order) it always had; unknown keys are still rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneKind,
    /// ResNet18/34 truncation: 0 = FPN on layer4, 1 = layer3, 2 = layer2 (ResNet50: 0, all four).
    pub truncation: u8,
    /// Add the max-pool level P6 ('pool') to the FPN (the released full weights have it).
    pub fpn_pool_level: bool,
    /// Batch-norm epsilon (1e-5 for BatchNorm2d, 0 for torchvision 0.3.0's FrozenBatchNorm2d).
    pub bn_eps: f64,
    /// Keep `num_batches_tracked` buffers (nn.BatchNorm2d checkpoints have them).
    pub bn_num_batches_tracked: bool,
    /// Classes including background (3: GGO + consolidation; 2: merged lesion or GGO only).
    pub num_classes: i64,
    /// Names of the foreground classes, in label order.
    pub class_names: Vec<String>,
    pub mask_head: MaskHeadKind,
    pub representation_size: i64,
    pub semantics: Semantics,
    #[serde(flatten)]
    pub transform: TransformConfig,
    #[serde(flatten)]
    pub anchors: AnchorConfig,
    #[serde(flatten)]
    pub rpn: RpnConfig,
    #[serde(flatten)]
    pub roi_heads: RoiHeadsConfig,
    /// Module S; None for a segmentation model.
    pub classifier: Option<ClassifierConfig>,
}

impl AnchorConfig {
    /// The original's anchors (sizes 2..32, ratios 0.1..2) on `levels` FPN levels.
    fn per_level(levels: usize) -> Self {
        AnchorConfig {
            anchor_sizes: vec![vec![2.0, 4.0, 8.0, 16.0, 32.0]; levels],
            anchor_aspect_ratios: vec![vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0]; levels],
            anchor_stride: AnchorStride::Float,
        }
    }
}

impl ModelConfig {
    /// Channels of every FPN level, and so of the RPN head's and the RoI heads' inputs
    /// (torchvision's `out_channels`, 256 in every variant of the original).
    pub const FPN_CHANNELS: i64 = 256;
    /// Side of the box branch's RoIAlign output (`MultiScaleRoIAlign(output_size=7)`).
    pub const BOX_ROI_SIZE: i64 = 7;
    /// Side of the mask branch's RoIAlign output (`output_size=14`; the mask logits are 28x28).
    pub const MASK_ROI_SIZE: i64 = 14;
    /// RoIAlign samples per bin side in both branches (`sampling_ratio=2`).
    pub const ROI_SAMPLING_RATIO: i64 = 2;

    /// The original's ResNet50 segmentation model at HEAD code: 4 FPN levels, BatchNorm2d.
    pub fn r50_fpn4() -> Self {
        ModelConfig {
            backbone: BackboneKind::Resnet50,
            truncation: 0,
            fpn_pool_level: false,
            bn_eps: 1e-5,
            bn_num_batches_tracked: true,
            num_classes: 3,
            class_names: vec!["ggo".into(), "consolidation".into()],
            mask_head: MaskHeadKind::Full,
            representation_size: 128,
            semantics: Semantics::Original,
            transform: TransformConfig {
                min_size: 512,
                max_size: 1024,
                image_mean: [0.485, 0.456, 0.406],
                image_std: [0.229, 0.224, 0.225],
                size_divisible: 32,
            },
            anchors: AnchorConfig::per_level(4),
            rpn: RpnConfig {
                rpn_pre_nms_top_n_train: 2000,
                rpn_pre_nms_top_n_test: 1000,
                rpn_post_nms_top_n_train: 2000,
                rpn_post_nms_top_n_test: 1000,
                rpn_nms_thresh: 0.75,
                rpn_fg_iou_thresh: 0.7,
                rpn_bg_iou_thresh: 0.3,
                rpn_batch_size_per_image: 256,
                rpn_positive_fraction: 0.75,
                rpn_score_thresh: None,
                rpn_min_size: 0.0,
                rpn_nms_on_probabilities: false,
                rpn_box_loss: BoxLoss::L1,
            },
            roi_heads: RoiHeadsConfig {
                box_score_thresh: 0.05,
                box_nms_thresh: 0.5,
                box_detections_per_img: 100,
                box_fg_iou_thresh: 0.75,
                box_bg_iou_thresh: 0.5,
                box_batch_size_per_image: 256,
                box_positive_fraction: 0.75,
                bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
                box_min_size: None,
                box_loss_beta: 1.0,
                mask_paste_probabilities: false,
            },
            classifier: None,
        }
    }

    /// The released full segmentation models: torchvision 0.3.0's own Mask R-CNN (5 FPN levels,
    /// FrozenBatchNorm2d without eps, no num_batches_tracked).
    pub fn r50_fpn5_frozenbn() -> Self {
        ModelConfig {
            fpn_pool_level: true,
            bn_eps: 0.0,
            bn_num_batches_tracked: false,
            anchors: AnchorConfig::per_level(5),
            ..Self::r50_fpn4()
        }
    }

    /// The lightweight models: ResNet18/34 truncated (1 = layer3), one FPN level, light mask head.
    pub fn lightweight(backbone: BackboneKind, truncation: u8) -> Self {
        ModelConfig {
            backbone,
            truncation,
            mask_head: MaskHeadKind::Light,
            anchors: AnchorConfig::per_level(1),
            ..Self::r50_fpn4()
        }
    }

    /// A named preset: `r50-fpn4`, `r50-fpn5-frozenbn`, `r50-fpn5`, `r18-t0|t1|t2`, `r34-t0|t1|t2`.
    pub fn preset(name: &str) -> Option<Self> {
        let light = |b, t| Some(Self::lightweight(b, t));
        match name {
            "r50-fpn4" => Some(Self::r50_fpn4()),
            "r50-fpn5-frozenbn" => Some(Self::r50_fpn5_frozenbn()),
            "r50-fpn5" => Some(ModelConfig {
                bn_eps: 1e-5,
                bn_num_batches_tracked: true,
                ..Self::r50_fpn5_frozenbn()
            }),
            "r18-t0" => light(BackboneKind::Resnet18, 0),
            "r18-t1" => light(BackboneKind::Resnet18, 1),
            "r18-t2" => light(BackboneKind::Resnet18, 2),
            "r34-t0" => light(BackboneKind::Resnet34, 0),
            "r34-t1" => light(BackboneKind::Resnet34, 1),
            "r34-t2" => light(BackboneKind::Resnet34, 2),
            _ => None,
        }
    }

    /// Names accepted by [`ModelConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &[
        "r50-fpn4",
        "r50-fpn5-frozenbn",
        "r50-fpn5",
        "r18-t0",
        "r18-t1",
        "r18-t2",
        "r34-t0",
        "r34-t1",
        "r34-t2",
    ];

    /// Switch every field where the two differ to `semantics`' behaviour.
    pub fn with_semantics(mut self, semantics: Semantics) -> Self {
        self.semantics = semantics;
        match semantics {
            Semantics::Original => {
                self.rpn.rpn_score_thresh = None;
                self.rpn.rpn_min_size = 0.0;
                self.rpn.rpn_nms_on_probabilities = false;
                self.rpn.rpn_box_loss = BoxLoss::L1;
                self.roi_heads.box_min_size = None;
                self.roi_heads.box_loss_beta = 1.0;
                self.roi_heads.mask_paste_probabilities = false;
                self.anchors.anchor_stride = AnchorStride::Float;
            }
            Semantics::Torchvision => {
                self.rpn.rpn_score_thresh = Some(0.0);
                self.rpn.rpn_min_size = 1e-3;
                self.rpn.rpn_nms_on_probabilities = true;
                self.rpn.rpn_box_loss = BoxLoss::SmoothL1 { beta: 1.0 / 9.0 };
                self.roi_heads.box_min_size = Some(1e-2);
                self.roi_heads.box_loss_beta = 1.0 / 9.0;
                self.roi_heads.mask_paste_probabilities = true;
                self.anchors.anchor_stride = AnchorStride::Floor;
            }
        }
        self
    }

    /// Turn this model into COVID-CT-Mask-Net's classifier (§4.1): Faster R-CNN inference with
    /// score threshold -0.01, NMS 0.75, N detections, and module S.
    pub fn into_classifier(mut self, detections: i64, s_features: i64) -> Self {
        self.roi_heads.box_score_thresh = -0.01;
        self.roi_heads.box_nms_thresh = 0.75;
        self.roi_heads.box_detections_per_img = detections;
        self.mask_head = MaskHeadKind::None;
        self.classifier = Some(ClassifierConfig {
            detections,
            s_features,
            padding_seed: 0,
        });
        self
    }

    /// This config with the settings in `overrides` (a map of the flat keys a model file's
    /// metadata has, e.g. from a YAML file) put in. With `frozen` ([`ARCHITECTURE_SETTINGS`]
    /// when resuming from or starting with a checkpoint's weights) those settings may not change.
    /// The error names the key; a value that is not a mapping changes nothing.
    pub fn with_overrides(&self, overrides: &serde_json::Value, frozen: &[&str]) -> Result<Self, String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let (Some(base), Some(over)) = (v.as_object_mut(), overrides.as_object()) {
            for (k, val) in over {
                if !base.contains_key(k) {
                    return Err(format!("unknown model setting {k}"));
                }
                if frozen.contains(&k.as_str()) && base[k] != *val {
                    return Err(format!(
                        "{k} shapes the model's parameters and cannot change when resuming"
                    ));
                }
                base.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).map_err(|e| format!("bad model setting: {e}"))
    }

    /// Number of FPN levels the backbone returns (the pool level included).
    pub fn fpn_levels(&self) -> usize {
        let body = match self.backbone {
            BackboneKind::Resnet50 => 4,
            BackboneKind::Resnet18 | BackboneKind::Resnet34 => 1,
        };
        body + usize::from(self.fpn_pool_level)
    }

    /// Levels used by MultiScaleRoIAlign (the pool level never is).
    pub fn roi_levels(&self) -> usize {
        self.fpn_levels() - usize::from(self.fpn_pool_level)
    }

    /// Anchors per location on each level.
    pub fn anchors_per_location(&self) -> i64 {
        (self.anchors.anchor_sizes.first().map_or(0, Vec::len)
            * self.anchors.anchor_aspect_ratios.first().map_or(0, Vec::len)) as i64
    }

    /// Check internal consistency; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let prob = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be within [0, 1], got {v}"))
            }
        };
        prob("rpn_nms_thresh", self.rpn.rpn_nms_thresh)?;
        prob("box_nms_thresh", self.roi_heads.box_nms_thresh)?;
        prob("rpn_positive_fraction", self.rpn.rpn_positive_fraction)?;
        prob("box_positive_fraction", self.roi_heads.box_positive_fraction)?;
        prob("rpn_fg_iou_thresh", self.rpn.rpn_fg_iou_thresh)?;
        prob("rpn_bg_iou_thresh", self.rpn.rpn_bg_iou_thresh)?;
        prob("box_fg_iou_thresh", self.roi_heads.box_fg_iou_thresh)?;
        prob("box_bg_iou_thresh", self.roi_heads.box_bg_iou_thresh)?;
        if self.num_classes < 2 {
            return Err(format!(
                "num_classes must be at least 2, got {}",
                self.num_classes
            ));
        }
        if self.class_names.len() as i64 != self.num_classes - 1 {
            return Err(format!(
                "class_names has {} names for {} foreground classes",
                self.class_names.len(),
                self.num_classes - 1
            ));
        }
        if self.truncation > 2 || (self.backbone == BackboneKind::Resnet50 && self.truncation != 0) {
            return Err(format!(
                "truncation {} is not valid for {:?}",
                self.truncation, self.backbone
            ));
        }
        if self.transform.min_size <= 0 || self.transform.max_size < self.transform.min_size {
            return Err("min_size must be positive and max_size >= min_size".into());
        }
        if self.anchors.anchor_sizes.len() < self.fpn_levels()
            || self.anchors.anchor_aspect_ratios.len() < self.fpn_levels()
        {
            return Err(format!(
                "anchor_sizes and anchor_aspect_ratios need one entry per FPN level ({})",
                self.fpn_levels()
            ));
        }
        let a = self.anchors_per_location();
        for (s, r) in self
            .anchors
            .anchor_sizes
            .iter()
            .zip(&self.anchors.anchor_aspect_ratios)
        {
            if (s.len() * r.len()) as i64 != a {
                return Err("every level must have the same number of anchors".into());
            }
        }
        if let Some(c) = &self.classifier
            && (c.detections < 1 || c.s_features < 1)
        {
            return Err("classifier detections and s_features must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_named() {
        for name in ModelConfig::PRESETS {
            let c = ModelConfig::preset(name).expect("listed preset exists");
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(ModelConfig::preset("nope").is_none());
        assert_eq!(ModelConfig::r50_fpn5_frozenbn().fpn_levels(), 5);
        assert_eq!(ModelConfig::r50_fpn5_frozenbn().roi_levels(), 4);
        assert_eq!(ModelConfig::r50_fpn4().fpn_levels(), 4);
        assert_eq!(ModelConfig::preset("r18-t1").unwrap().fpn_levels(), 1);
        assert_eq!(ModelConfig::r50_fpn4().anchors_per_location(), 30);
    }

    #[test]
    fn semantics_switch_every_difference() {
        let o = ModelConfig::r50_fpn4();
        let t = o.clone().with_semantics(Semantics::Torchvision);
        assert_eq!(t.rpn.rpn_min_size, 1e-3);
        assert_eq!(t.roi_heads.box_min_size, Some(1e-2));
        assert!(t.roi_heads.mask_paste_probabilities);
        assert_eq!(t.clone().with_semantics(Semantics::Original), o);
    }

    /// Below 0.5 the original's pasted logits (0 outside each box) mark whole frames: named for
    /// logit models, not for models that paste probabilities.
    #[test]
    fn mask_thresholds_below_one_half_are_named_for_logit_models() {
        let o = ModelConfig::r50_fpn4();
        let t = o.clone().with_semantics(Semantics::Torchvision);
        let problem = crate::model::mask_threshold_problem(&o, 0.4).expect("named");
        assert!(problem.contains("below 0.5"), "{problem}");
        for th in [0.5, crate::model::default_mask_threshold()] {
            assert_eq!(crate::model::mask_threshold_problem(&o, th), None);
        }
        assert_eq!(crate::model::mask_threshold_problem(&t, 0.4), None);
    }

    /// The nested config reads and writes a model file's `config` metadata exactly as the flat
    /// struct before it did: same keys, same order, same bytes; unknown keys are still refused.
    #[test]
    fn model_file_metadata_round_trips_byte_identical() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = [
            "pretrained_models/demo_segmentation.safetensors",
            "pretrained_models/demo_classifier.safetensors",
        ];
        for f in files {
            let (cfg, meta) = crate::model::weights::read_config(&root.join(f)).expect(f);
            let stored = &meta["config"];
            assert_eq!(&serde_json::to_string(&cfg).unwrap(), stored, "{f}");
        }
        let mut v = serde_json::to_value(ModelConfig::r50_fpn4()).unwrap();
        v.as_object_mut().unwrap().insert("min_sise".into(), 3.into());
        let e = serde_json::from_value::<ModelConfig>(v).unwrap_err().to_string();
        assert!(e.contains("min_sise"), "{e}");
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = ModelConfig::r50_fpn5_frozenbn().into_classifier(256, 1024);
        let s = serde_json::to_string(&c).unwrap();
        let back: ModelConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
    }
}
