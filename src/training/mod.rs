//! Training loops, separate from inference. Segmentation (spec §2.7): batch 1, the plain sum of
//! the five losses, Adam lr 1e-5 with L2 weight decay 1e-3, slices without lesions skipped but
//! counted in the epoch average, checkpoints every N epochs (model file + optimizer state +
//! epoch), a validation pass each epoch (eval mode by default; the original's train-mode pass is
//! an option), a CSV log and a PNG plot of the curves next to the checkpoints.
//!
//! The loops: [`segmentation`] and [`classification`], sharing [`run`] (resume, CSV log, plot,
//! checkpoints). Beside them: [`optim`] (Adam with resumable state), [`plot`] (the curves' PNG)
//! and [`eval`] (the evaluation loops and their metrics: the original's per-image mask AP, COCO
//! AP and the confusion matrix).

pub mod classification;
pub mod eval;
pub mod optim;
pub mod plot;
pub mod run;
pub mod segmentation;

pub use classification::{
    ClsTrainOptions, PilResize, UpdateType, classifier_image, classifier_parameters, copy_matching,
    train_classifier,
};
pub use run::{optimizer_path, plot_log};
pub use segmentation::{
    SegTrainOptions, lr_at, segmentation_parameters, to_example, train_segmentation, validation_losses,
};
