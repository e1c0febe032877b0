//! COVID-CT-Mask-Net's networks on tch, mirroring torchvision's detection code file by file:
//! `generalized_rcnn.rs` (`MaskRcnn` = transform -> backbone (ResNet + FPN) -> RPN -> RoI heads
//! -> post-processing, and, for the classifier, module S on the ranked detections, spec §2, §4),
//! `transform.rs`, `backbone.rs`, `fpn.rs`, `anchors.rs`, `rpn.rs` (proposals and its losses),
//! `roi_heads.rs` (sampling, `fastrcnn_loss`, `maskrcnn_loss`, `postprocess_detections`),
//! `classifier.rs` (module S), `config.rs`, `weights.rs`, `layers.rs` (the building blocks),
//! `deterministic_init.rs` (weights shared with the Python reference). This file holds the plain data the
//! model hands out (detections, losses, targets, class scores). Parameter paths are the
//! original checkpoint keys, so loading needs no renaming.

pub mod anchors;
pub mod backbone;
pub mod classifier;
pub mod config;
pub mod deterministic_init;
pub mod fpn;
pub mod generalized_rcnn;
pub mod layers;
pub mod roi_heads;
pub mod rpn;
pub mod transform;
pub mod weights;

use tch::Tensor;

pub use config::ModelConfig;
pub use generalized_rcnn::MaskRcnn;
// the stage clock lives outside the model; re-exported for the model's callers
pub use crate::stage_clock::StageClock;

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

/// Why `threshold` gives useless masks with a model whose pasted masks are logits (the
/// original's): they are pasted into zeros, and zero is logit(0.5), so below 0.5 every pixel
/// outside each detection's box counts as lesion (the original does the same with a negative
/// `mask_logits_th`). None when the threshold is 0.5 or more, or the model pastes probabilities.
pub fn mask_threshold_problem(cfg: &ModelConfig, threshold: f64) -> Option<String> {
    (!cfg.roi_heads.mask_paste_probabilities && threshold < 0.5).then(|| {
        format!(
            "mask threshold {threshold} is below 0.5: this model pastes mask logits into zeros \
             (logit 0 = probability 0.5), as the original does, so every pixel outside each \
             detection's box counts as lesion; use 0.5 or more"
        )
    })
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
