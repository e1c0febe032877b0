//! `ctmask train-segmentation` and `ctmask evaluate-segmentation`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::cncb::{CncbDataset, CncbOptions, Labelling, MaskType, TargetOptions};
use crate::device::DeviceChoice;
use crate::model::config::ARCHITECTURE_SETTINGS;
use crate::model::{MaskRcnn, ModelConfig};
use crate::training::eval::evaluate_segmentation;
use crate::training::{SegTrainOptions, train_segmentation};

/// Mask types of the CNCB masks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MaskTypeArg {
    /// GGO and consolidation as two classes (3 with background).
    Both,
    /// GGO only (consolidation becomes background).
    Ggo,
    /// GGO and consolidation merged into one lesion class.
    Merge,
}

impl From<MaskTypeArg> for MaskType {
    fn from(m: MaskTypeArg) -> Self {
        match m {
            MaskTypeArg::Both => MaskType::Both,
            MaskTypeArg::Ggo => MaskType::Ggo,
            MaskTypeArg::Merge => MaskType::Merge,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// A CNCB-layout folder with `imgs/` and `masks/`.
    #[arg(long)]
    pub data: PathBuf,
    /// A split file of `<patient>_<slice>.jpg` lines selecting the images.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Mask type: both, ggo or merge.
    #[arg(long, value_enum, default_value = "both")]
    pub mask_type: MaskTypeArg,
    /// Label classes by the original's per-slice rank of the mask value (its quirk, §9 item 5)
    /// instead of by value.
    #[arg(long)]
    pub original_labels: bool,
    /// Drop ground-truth regions of at most this many pixels.
    #[arg(long, default_value_t = 100)]
    pub min_area: u32,
}

impl DataArgs {
    pub fn open(&self, data: &Path) -> anyhow::Result<CncbDataset> {
        let opts = CncbOptions {
            targets: TargetOptions {
                mask_type: self.mask_type.into(),
                labelling: if self.original_labels {
                    Labelling::OriginalRank
                } else {
                    Labelling::ByValue
                },
                area_threshold: self.min_area,
            },
            slice: Default::default(),
        };
        CncbDataset::open(
            &data.join("imgs"),
            &data.join("masks"),
            self.split.as_deref(),
            opts,
        )
        .with_context(|| format!("{}: cannot open the CNCB data set", data.display()))
    }

    pub fn classes(&self) -> Vec<String> {
        match self.mask_type {
            MaskTypeArg::Both => vec!["ggo".into(), "consolidation".into()],
            MaskTypeArg::Ggo => vec!["ggo".into()],
            MaskTypeArg::Merge => vec!["lesion".into()],
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct TrainSegArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A CNCB-layout validation folder (losses each epoch).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Where checkpoints, the CSV log and the loss plot go.
    #[arg(long)]
    pub out: PathBuf,
    /// Architecture preset (r50-fpn4, r50-fpn5-frozenbn, r50-fpn5, r18-t0..2, r34-t0..2).
    #[arg(long, default_value = "r50-fpn4")]
    pub preset: String,
    /// A YAML file of ModelConfig fields overriding the preset (min_size, anchors, ...). With
    /// --resume it changes the checkpoint's run-time settings only (e.g. min_size for a
    /// fine-tune at another input size); architecture settings are refused.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    #[arg(long, default_value_t = SegTrainOptions::default().epochs)]
    pub epochs: usize,
    /// Adam learning rate (the original: 1e-5).
    #[arg(long, default_value_t = SegTrainOptions::default().lr)]
    pub lr: f64,
    /// Multiply the learning rate by --lr-gamma after these epochs (comma-separated, e.g.
    /// `30,40`; the original keeps it constant).
    #[arg(long, value_delimiter = ',')]
    pub lr_steps: Vec<usize>,
    /// Factor of each --lr-steps drop.
    #[arg(long, default_value_t = SegTrainOptions::default().lr_gamma)]
    pub lr_gamma: f64,
    /// L2 weight decay folded into Adam (the original: 1e-3).
    #[arg(long, default_value_t = SegTrainOptions::default().weight_decay)]
    pub weight_decay: f64,
    /// Save a checkpoint every N epochs (and at the end).
    #[arg(long, default_value_t = SegTrainOptions::default().save_every)]
    pub save_every: usize,
    /// Continue from a checkpoint written by this command (its optimizer state beside it).
    #[arg(long, conflicts_with = "init")]
    pub resume: Option<PathBuf>,
    /// Start a new run (epoch 1, a fresh optimizer) from the weights of a model file, e.g. a
    /// shipped model fine-tuned on new data; --model-config changes its run-time settings only,
    /// as with --resume.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Seed of torch's generator (sampling, shuffling).
    #[arg(long, default_value_t = SegTrainOptions::default().seed)]
    pub seed: i64,
    /// Run the validation pass in train mode, as the original does.
    #[arg(long)]
    pub val_train_mode: bool,
    /// Random flips and small intensity jitter (the original has none).
    #[arg(long)]
    pub augment: bool,
    /// Also train on slices without lesions, as negatives (every anchor and RoI background):
    /// hard negatives such as magnified vessels then teach the detector what is not a lesion.
    /// The original skips such slices (off: the original).
    #[arg(long)]
    pub train_empty: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Name used for checkpoint files.
    #[arg(long, default_value_t = SegTrainOptions::default().model_name)]
    pub model_name: String,
}

/// The preset, with overrides from a YAML file of ModelConfig fields.
pub fn model_config(
    preset: &str,
    overrides: Option<&Path>,
    classes: Vec<String>,
) -> anyhow::Result<ModelConfig> {
    let mut cfg = ModelConfig::preset(preset).with_context(|| {
        format!(
            "unknown preset {preset:?}; known: {}",
            ModelConfig::PRESETS.join(", ")
        )
    })?;
    cfg.num_classes = classes.len() as i64 + 1;
    cfg.class_names = classes;
    if let Some(p) = overrides {
        cfg = apply_overrides(cfg, p, &[])?;
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid model config: {e}"))?;
    Ok(cfg)
}

/// `cfg` with the settings of the YAML file `path` (ModelConfig fields) put in; `frozen` names
/// settings the file may not change ([`ModelConfig::with_overrides`]).
fn apply_overrides(cfg: ModelConfig, path: &Path, frozen: &[&str]) -> anyhow::Result<ModelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let overrides: serde_json::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: bad YAML", path.display()))?;
    cfg.with_overrides(&overrides, frozen)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn run_train(a: &TrainSegArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let train = a.data.open(&a.data.data)?;
    let val = a.val.as_deref().map(|v| a.data.open(v)).transpose()?;
    let model = match a.resume.as_ref().or(a.init.as_ref()) {
        // the checkpoint's own config; --model-config may change its run-time settings
        // (input size, sampling, thresholds) but not its architecture
        Some(ckpt) => match &a.model_config {
            None => MaskRcnn::load(ckpt, device)?,
            Some(p) => {
                let (stored, _) = crate::model::weights::read_config(ckpt)?;
                let cfg = apply_overrides(stored, p, ARCHITECTURE_SETTINGS)?;
                cfg.validate()
                    .map_err(|e| anyhow::anyhow!("invalid model config: {e}"))?;
                MaskRcnn::load_edited(ckpt, device, |_| cfg)?
            }
        },
        None => {
            // the initial weights come from libtorch's generator: seed it with the run's seed
            tch::manual_seed(a.seed);
            MaskRcnn::new(
                &model_config(&a.preset, a.model_config.as_deref(), a.data.classes())?,
                device,
            )?
        }
    };
    eprintln!("{}", crate::DISCLAIMER);
    eprintln!(
        "training on {} slices ({} validation)",
        train.len(),
        val.as_ref().map_or(0, |v| v.len())
    );
    let opts = SegTrainOptions {
        out: a.out.clone(),
        epochs: a.epochs,
        lr: a.lr,
        lr_steps: a.lr_steps.clone(),
        lr_gamma: a.lr_gamma,
        weight_decay: a.weight_decay,
        save_every: a.save_every,
        seed: a.seed,
        val_train_mode: a.val_train_mode,
        augment: a.augment,
        train_empty: a.train_empty,
        device,
        model_name: a.model_name.clone(),
    };
    let last = train_segmentation(&model, &train, val.as_ref(), &opts, a.resume.as_deref())?;
    println!("{}", last.display());
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct EvalSegArgs {
    /// The segmentation model.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Detection score threshold (the original's evaluation: 0.75).
    #[arg(long, default_value_t = 0.75)]
    pub confidence: f64,
    /// RoI NMS threshold (the original's evaluation: 0.75).
    #[arg(long, default_value_t = 0.75)]
    pub roi_nms: f64,
    /// Detections per image (the original's evaluation: 128).
    #[arg(long, default_value_t = 128)]
    pub detections: i64,
    /// Mask probability threshold (sigmoid(0.5): the original's logit > 0.5).
    #[arg(long)]
    pub mask_threshold: Option<f64>,
    /// Write the metrics as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run_eval(a: &EvalSegArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let data = a.data.open(&a.data.data)?;
    let mut model = MaskRcnn::load(&a.model, device)?;
    let mut cfg = model.cfg.clone();
    cfg.roi_heads.box_nms_thresh = a.roi_nms;
    cfg.roi_heads.box_detections_per_img = a.detections;
    model.set_config(cfg)?;
    let th = a
        .mask_threshold
        .unwrap_or_else(crate::model::default_mask_threshold);
    if let Some(problem) = crate::model::mask_threshold_problem(&model.cfg, th) {
        tracing::warn!("{problem}");
    }
    let m = evaluate_segmentation(&mut model, &data, a.confidence, th)?;
    println!(
        "{} images; mask AP (the original's per-image metric, §2.9) and COCO-style:",
        m.images
    );
    println!("{:<12} {:>10} {:>10}", "IoU", "per-image", "");
    for (t, ap) in &m.per_threshold {
        println!("{:<12.2} {:>10.4}", t, ap);
    }
    println!(
        "{:<12} {:>10.4} {:>10}",
        "AP@0.5",
        m.ap_50,
        format!("coco {:.4}", m.coco_ap_50)
    );
    println!(
        "{:<12} {:>10.4} {:>10}",
        "AP@0.75",
        m.ap_75,
        format!("coco {:.4}", m.coco_ap_75)
    );
    println!(
        "{:<12} {:>10.4} {:>10}",
        "mAP",
        m.map_50_95,
        format!("coco {:.4}", m.coco_map_50_95)
    );
    for (l, n, ap) in &m.per_class_ap_50 {
        println!("class {l} {n:<14} AP@0.5 {ap:.4}");
    }
    println!(
        "lung involvement against the ground truth (lesion pixels in the true lung field / its \
         pixels), counting detections scoring at least:"
    );
    println!(
        "{:<8} {:>12} {:>12} {:>28}",
        "score", "|error| pp", "bias pp", "lesion-free: mean pp, >= 1 %"
    );
    for r in &m.involvement {
        println!(
            "{:<8.2} {:>12.3} {:>12.3} {:>16.3} {:>5}/{}",
            r.score_threshold,
            r.mean_abs_error_pp,
            r.mean_error_pp,
            r.lesion_free_mean_pp,
            r.lesion_free_at_least_1pct,
            r.lesion_free_images
        );
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&m)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("over.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn resume_overrides_change_run_time_settings_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = ModelConfig::preset("r18-t1").unwrap();
        let cfg = apply_overrides(
            base.clone(),
            &yaml(dir.path(), "min_size: 256\nmax_size: 640\ntruncation: 1\n"),
            ARCHITECTURE_SETTINGS,
        )
        .unwrap();
        assert_eq!(
            (cfg.transform.min_size, cfg.transform.max_size, cfg.truncation),
            (256, 640, 1)
        );
        for bad in [
            "truncation: 2",
            "representation_size: 64",
            "anchor_sizes: [[4.0]]",
        ] {
            let e = apply_overrides(base.clone(), &yaml(dir.path(), bad), ARCHITECTURE_SETTINGS)
                .unwrap_err()
                .to_string();
            let key = bad.split(':').next().unwrap();
            assert!(
                e.contains(key) && e.contains("cannot change when resuming"),
                "{e}"
            );
        }
        // a fresh model (no resume) may change anything
        let cfg = apply_overrides(base.clone(), &yaml(dir.path(), "truncation: 2"), &[]).unwrap();
        assert_eq!(cfg.truncation, 2);
        let e = apply_overrides(base, &yaml(dir.path(), "min_sise: 3"), &[]).unwrap_err();
        assert!(e.to_string().contains("unknown model setting min_sise"), "{e}");
    }

    #[test]
    fn a_model_loads_with_an_edited_input_size_and_the_same_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ModelConfig::preset("r18-t2").unwrap();
        cfg.transform.min_size = 64;
        cfg.transform.max_size = 96;
        let model = MaskRcnn::new(&cfg, tch::Device::Cpu).unwrap();
        let path = dir.path().join("m.safetensors");
        model.save(&path, &Default::default()).unwrap();
        let edited = MaskRcnn::load_edited(&path, tch::Device::Cpu, |mut c| {
            c.transform.min_size = 80;
            c.transform.max_size = 128;
            c
        })
        .unwrap();
        assert_eq!(
            (edited.cfg.transform.min_size, edited.cfg.transform.max_size),
            (80, 128)
        );
        let a = model.vs.variables();
        for (name, t) in edited.vs.variables() {
            assert!(t.equal(&a[&name]), "{name} differs");
        }
        // an edit that changes a parameter's shape fails to load
        assert!(
            MaskRcnn::load_edited(&path, tch::Device::Cpu, |mut c| {
                c.representation_size = 64;
                c
            })
            .is_err()
        );
    }
}
