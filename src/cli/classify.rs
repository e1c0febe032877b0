//! `ctmask classify`, `ctmask train-classifier` and `ctmask evaluate-classifier`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::covidx::CovidxDataset;
use crate::device::DeviceChoice;
use crate::model::MaskRcnn;
use crate::model::config::ClassifierConfig;
use crate::training::eval::{CLASSIFIER_CLASSES, classification_metrics, confusion};
use crate::training::{ClsTrainOptions, PilResize, UpdateType, copy_matching, train_classifier};

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// The classifier (a ctmask model file with module S).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// fp32 (parity), or bf16 / fp16 for the backbone on CUDA.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: crate::config::Precision,
    /// Write the results as a JSON array to this file ("-" for stdout). Probabilities are the
    /// sigmoid of each logit (one-vs-all training), so they need not sum to 1.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Slice files (PNG, JPEG or DICOM).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ClassifyJson {
    pub input: String,
    /// Frame index inside a multi-frame object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<u32>,
    pub logits: [f32; 3],
    pub probabilities: [f32; 3],
    /// Empty when the input was refused.
    pub label: String,
    /// No detection survived: S saw an all-zero input (a case the original never handled).
    pub no_detections: bool,
    /// Why the input was refused or failed (then it has no label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn run_classify(a: &ClassifyArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let mut model = MaskRcnn::load(&a.model, device)?;
    anyhow::ensure!(
        model.s2new.is_some(),
        "{}: not a classifier (no module S)",
        a.model.display()
    );
    crate::screening::apply_precision(&mut model, a.precision, device);
    let mut out = Vec::new();
    let mut refused = 0;
    for input in &a.inputs {
        let classified = crate::slice::read_slices(input, &Default::default())
            .map_err(|e| anyhow::anyhow!(e.reason()))
            .and_then(|slices| {
                slices
                    .iter()
                    .map(|s| {
                        let img =
                            crate::model::transform::tensor_from_rgb(&s.rgb, s.width, s.height, device)?;
                        // PIL's Resize(512) of the shorter side first, as the original evaluates
                        let img = crate::screening::classifier_input(s, &img, &model)?;
                        let c = crate::screening::classify(&model, &img)?;
                        Ok(ClassifyJson {
                            input: input.display().to_string(),
                            frame: s.meta.frame,
                            logits: c.logits,
                            probabilities: c.probabilities,
                            label: c.label,
                            no_detections: c.no_detections,
                            error: None,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            });
        match classified {
            Ok(items) => out.extend(items),
            Err(e) => {
                // one bad file never stops the others: it is reported and the run goes on
                refused += 1;
                eprintln!("{}: refused: {e:#}", input.display());
                out.push(ClassifyJson {
                    input: input.display().to_string(),
                    frame: None,
                    logits: [0.0; 3],
                    probabilities: [0.0; 3],
                    label: String::new(),
                    no_detections: false,
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
    let text = serde_json::to_string_pretty(&out)?;
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{text}"),
        Some(p) => crate::fsutil::write_atomic(p, text.as_bytes())?,
        None => {
            for c in out.iter().filter(|c| c.error.is_none()) {
                println!(
                    "{}: {} (control {:.3}, pneumonia {:.3}, covid {:.3}){}",
                    c.input,
                    c.label,
                    c.probabilities[0],
                    c.probabilities[1],
                    c.probabilities[2],
                    if c.no_detections { " [no detections]" } else { "" }
                );
            }
        }
    }
    super::inputs_outcome(refused, a.inputs.len())
}

fn open_set(dir: Option<&Path>, split: Option<&Path>) -> anyhow::Result<Vec<(PathBuf, u8)>> {
    let set = match (dir, split) {
        (Some(d), Some(s)) => CovidxDataset::from_split(s, d)?,
        (Some(d), None) => CovidxDataset::from_dir(d)?,
        (None, Some(s)) => CovidxDataset::from_split(s, s.parent().unwrap_or(Path::new(".")))?,
        (None, None) => anyhow::bail!("give a data folder or a split file"),
    };
    Ok(set.items().to_vec())
}

#[derive(Debug, clap::Args)]
pub struct TrainClsArgs {
    /// The trained segmentation model whose matching weights start the classifier.
    #[arg(long, required_unless_present = "resume")]
    pub segmentation_model: Option<PathBuf>,
    /// COVIDx-layout training folder (`<cls>_<patient>_<scan>_<slice>.png`).
    #[arg(long)]
    pub train: PathBuf,
    /// COVIDx-layout validation folder.
    #[arg(long)]
    pub val: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// N: detections fed to S (full 256, lightweight 128).
    #[arg(long, default_value_t = ClassifierConfig::default().detections)]
    pub detections: i64,
    /// Hidden width of S (full 1024, lightweight 512).
    #[arg(long, default_value_t = ClassifierConfig::default().s_features)]
    pub s_features: i64,
    /// heads_bn (S and `*bn*` affine parameters, the original) or heads (S alone).
    #[arg(long, value_enum, default_value_t = ClsTrainOptions::default().update)]
    pub update: UpdateType,
    #[arg(long, default_value_t = ClsTrainOptions::default().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = ClsTrainOptions::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = ClsTrainOptions::default().weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = ClsTrainOptions::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = ClsTrainOptions::default().save_every)]
    pub save_every: usize,
    /// Square training resize side (the original: 512); 0 keeps the images' size.
    #[arg(long, default_value_t = ClsTrainOptions::default().resize.unwrap_or(0))]
    pub resize: u32,
    #[arg(long, default_value_t = ClsTrainOptions::default().seed)]
    pub seed: i64,
    /// Continue from a checkpoint written by this command.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    #[arg(long, default_value_t = ClsTrainOptions::default().model_name)]
    pub model_name: String,
}

pub fn run_train(a: &TrainClsArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let train = open_set(Some(&a.train), None)?;
    let val = match &a.val {
        Some(v) => open_set(Some(v), None)?,
        None => Vec::new(),
    };
    let model = match (&a.resume, &a.segmentation_model) {
        (Some(ckpt), _) => MaskRcnn::load(ckpt, device)?,
        (None, Some(seg_path)) => {
            let seg = MaskRcnn::load(seg_path, device)?;
            let cfg = seg.cfg.clone().into_classifier(a.detections, a.s_features);
            let cls = MaskRcnn::new(&cfg, device)?;
            let (copied, left) = copy_matching(&seg, &cls);
            println!(
                "copied {} tensors from {}; left at initialisation: {}",
                copied.len(),
                seg_path.display(),
                left.join(", ")
            );
            cls
        }
        (None, None) => anyhow::bail!("give --segmentation-model or --resume"),
    };
    eprintln!("{}", crate::DISCLAIMER);
    let opts = ClsTrainOptions {
        out: a.out.clone(),
        epochs: a.epochs,
        lr: a.lr,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        save_every: a.save_every,
        seed: a.seed,
        update: a.update,
        resize: (a.resize > 0).then_some(a.resize),
        device,
        model_name: a.model_name.clone(),
    };
    let last = train_classifier(&model, &train, &val, &opts, a.resume.as_deref())?;
    println!("{}", last.display());
    Ok(())
}

/// Resize rule for evaluation.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EvalResize {
    /// Shorter side to the model's min_size, aspect kept (the original's evaluation, §4.7).
    Shorter,
    /// Square min_size x min_size (the original's training resize).
    Square,
}

#[derive(Debug, clap::Args)]
pub struct EvalClsArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// COVIDx-layout folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// COVIDx split file (`<file> <class> <xmin> <ymin> <xmax> <ymax>`); images beside it or in --data.
    #[arg(long)]
    pub split: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "shorter")]
    pub resize: EvalResize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

pub fn run_eval(a: &EvalClsArgs) -> anyhow::Result<()> {
    let device = a.device.resolve()?;
    crate::device::set_threads(None);
    let model = MaskRcnn::load(&a.model, device)?;
    anyhow::ensure!(
        model.s2new.is_some(),
        "{}: not a classifier (no module S)",
        a.model.display()
    );
    let items = open_set(a.data.as_deref(), a.split.as_deref())?;
    let resize = match a.resize {
        EvalResize::Shorter => PilResize::Shorter(model.cfg.transform.min_size as u32),
        EvalResize::Square => PilResize::Square(model.cfg.transform.min_size as u32),
    };
    let m = classification_metrics(confusion(&model, &items, Some(resize))?);
    println!(
        "{}\nconfusion matrix (rows true, columns predicted; 0 control, 1 pneumonia, 2 covid):",
        crate::DISCLAIMER
    );
    for (i, row) in m.confusion.iter().enumerate() {
        println!(
            "  {:<10} {:>7} {:>7} {:>7}",
            CLASSIFIER_CLASSES[i], row[0], row[1], row[2]
        );
    }
    println!(
        "{:<10} {:>11} {:>9} {:>6}",
        "class", "sensitivity", "precision", "F1"
    );
    for (c, name) in CLASSIFIER_CLASSES.iter().enumerate() {
        println!(
            "{:<10} {:>11.4} {:>9.4} {:>6.4}",
            name, m.sensitivity[c], m.precision[c], m.f1[c]
        );
    }
    println!(
        "accuracy {:.4}  macro-F1 {:.4}  COVID sensitivity {:.4}  ({} images)",
        m.accuracy, m.macro_f1, m.covid_sensitivity, m.images
    );
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&m)?.as_bytes())?;
    }
    Ok(())
}
