//! COVID-CT-Mask-Net's classifier trainer (§4.5-4.6): module S (and optionally the batch-norm
//! affine parameters) trained with BCE-with-logits on one-hot labels, the segmentation model's
//! matching weights copied in first, images read and resized as the original's dataset does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use tch::{Device, Tensor};

use super::optim::Adam;
use super::run::Run;
use crate::model::MaskRcnn;
use crate::ops::sampler::sampling_rng;
use crate::{Error, Result};

/// What the classifier trains (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpdateType {
    /// Module S alone.
    Heads,
    /// Module S and every batch-norm affine parameter whose name contains `bn` (not the
    /// downsample ones), with batch-norm statistics frozen: the original's default.
    HeadsBn,
}

/// Options of `ctmask train-classifier`.
#[derive(Debug, Clone)]
pub struct ClsTrainOptions {
    pub out: PathBuf,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub save_every: usize,
    pub seed: i64,
    pub update: UpdateType,
    /// Square training resize side (the original: 512x512); None keeps the image size.
    pub resize: Option<u32>,
    pub device: Device,
    pub model_name: String,
}

impl Default for ClsTrainOptions {
    /// The original's classifier training (§4.5): 50 epochs, Adam at 1e-5 with weight decay
    /// 1e-3, batches of 8 at 512x512, S and the batch-norm affine parameters.
    fn default() -> Self {
        ClsTrainOptions {
            out: PathBuf::new(),
            epochs: 50,
            lr: 1e-5,
            weight_decay: 1e-3,
            batch_size: 8,
            save_every: 10,
            seed: 0,
            update: UpdateType::HeadsBn,
            resize: Some(512),
            device: Device::Cpu,
            model_name: "covid_ct_mask_net".into(),
        }
    }
}

/// Copy every tensor of `seg` whose name and shape the classifier shares. Returns (copied, left).
pub fn copy_matching(seg: &MaskRcnn, cls: &MaskRcnn) -> (Vec<String>, Vec<String>) {
    let src = seg.vs.variables();
    let mut copied = Vec::new();
    let mut left = Vec::new();
    tch::no_grad(|| {
        let mut names: Vec<(String, Tensor)> = cls.vs.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut dst) in names {
            match src.get(&name) {
                Some(s) if s.size() == dst.size() => {
                    dst.copy_(s);
                    copied.push(name);
                }
                _ => left.push(name),
            }
        }
    });
    (copied, left)
}

/// The parameters the optimiser updates: `s2new.*`, plus `*bn*` affine parameters for heads_bn.
pub fn classifier_parameters(model: &MaskRcnn, update: UpdateType) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(n, t)| t.requires_grad() && t.is_floating_point() && !n.contains("running_"))
        .filter(|(n, _)| n.contains("new") || (update == UpdateType::HeadsBn && n.contains("bn")))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// How the original's torchvision transforms resize a classifier image (a PIL image, PIL
/// bilinear with its antialiasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilResize {
    /// `Resize((side, side))`: the training transform (§3.2).
    Square(u32),
    /// `Resize(side)`: the shorter side to `side`, aspect kept (the evaluation transform, §4.7).
    Shorter(u32),
}

/// A classifier image: the slice read and resized as the original's dataset and evaluation do.
pub fn classifier_image(path: &Path, resize: Option<PilResize>, device: Device) -> Result<Tensor> {
    let s = crate::slice::read_slices(path, &Default::default())
        .map_err(|e| Error::Input(e.to_string()))?
        .swap_remove(0);
    let (w, h) = match resize {
        Some(PilResize::Square(side)) => (side, side),
        Some(PilResize::Shorter(side)) => crate::slice::resample::shorter_side_size(s.width, s.height, side),
        None => (s.width, s.height),
    };
    if w == 0 || h == 0 {
        return Err(Error::Input(format!("{}: resize to {w}x{h}", path.display())));
    }
    let rgb = if (w, h) == (s.width, s.height) {
        s.rgb
    } else {
        crate::slice::resample::pil_bilinear(
            &s.rgb,
            (s.width as usize, s.height as usize),
            3,
            (w as usize, h as usize),
        )
    };
    crate::model::transform::tensor_from_rgb(&rgb, w, h, device)
}

/// Train COVID-CT-Mask-Net's classifier (§4.5-4.6): BCE-with-logits on one-hot labels over the
/// three logits, Adam with L2 weight decay, batches of images run one at a time.
pub fn train_classifier(
    model: &MaskRcnn,
    train: &[(PathBuf, u8)],
    val: &[(PathBuf, u8)],
    opts: &ClsTrainOptions,
    resume: Option<&Path>,
) -> Result<PathBuf> {
    tch::manual_seed(opts.seed);
    let params = classifier_parameters(model, opts.update);
    tracing::info!(
        tensors = params.len(),
        scalars = params.iter().map(|p| p.1.numel()).sum::<usize>(),
        "trainable parameters"
    );
    let mut adam = Adam::new(params, opts.lr, opts.weight_decay);
    let mut run = Run::start(
        &opts.out,
        &opts.model_name,
        opts.epochs,
        opts.save_every,
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n",
        &mut adam,
        resume,
    )?;
    let (s2, cfg) = model
        .classifier_head()
        .ok_or_else(|| Error::Input("the model has no module S".into()))?;
    let cfg = cfg.clone();
    // With S alone trained, the ranked rows never change: compute them once.
    let mut cache: BTreeMap<PathBuf, Tensor> = BTreeMap::new();
    let logits_of = |path: &Path, grad: bool, cache: &mut BTreeMap<PathBuf, Tensor>| -> Result<Tensor> {
        if opts.update == UpdateType::Heads {
            if !cache.contains_key(path) {
                let img = classifier_image(path, opts.resize.map(PilResize::Square), opts.device)?;
                let ranked = model.ranked(&img, false)?;
                let (rows, _) =
                    crate::model::classifier::pad_ranked(&ranked, cfg.detections, cfg.padding_seed);
                cache.insert(path.to_path_buf(), rows);
            }
            let rows = &cache[path];
            return Ok(if grad {
                s2.forward(rows)
            } else {
                tch::no_grad(|| s2.forward(rows))
            });
        }
        let img = classifier_image(path, opts.resize.map(PilResize::Square), opts.device)?;
        Ok(model.classify_tensor(&img, grad)?.0)
    };
    let one_hot = |labels: &[u8]| {
        let v: Vec<f32> = labels
            .iter()
            .flat_map(|&l| (0..3u8).map(move |c| f32::from(u8::from(c == l))))
            .collect();
        Tensor::from_slice(&v)
            .view([labels.len() as i64, 3])
            .to_device(opts.device)
    };
    for epoch in run.start_epoch..opts.epochs {
        let started = Instant::now();
        let mut perm: Vec<i64> = (0..train.len() as i64).collect();
        perm.shuffle(&mut sampling_rng(opts.seed as u64, epoch as u64));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let batches: Vec<&[i64]> = perm.chunks(opts.batch_size.max(1)).collect();
        for (bi, batch) in batches.iter().enumerate() {
            let mut outs = Vec::new();
            let mut labels = Vec::new();
            for &i in *batch {
                let (p, l) = &train[i as usize];
                outs.push(logits_of(p, true, &mut cache)?);
                labels.push(*l);
            }
            let scores = Tensor::stack(&outs, 0); // [B, 3]
            let loss = scores.binary_cross_entropy_with_logits::<Tensor>(
                &one_hot(&labels),
                None,
                None,
                tch::Reduction::Mean,
            );
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(Error::Other(format!(
                    "non-finite loss ({lv}) at epoch {}",
                    epoch + 1
                )));
            }
            adam.zero_grad();
            loss.backward();
            adam.step();
            let pred: Vec<i64> = Vec::try_from(scores.argmax(1, false).to_device(Device::Cpu))?;
            correct += pred
                .iter()
                .zip(&labels)
                .filter(|(p, l)| **p == i64::from(**l))
                .count();
            seen += labels.len();
            loss_sum += lv * labels.len() as f64;
            eprint!(
                "\repoch {}/{} [{}/{}] loss {:.4} acc {:.3}   ",
                epoch + 1,
                opts.epochs,
                bi + 1,
                batches.len(),
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            );
        }
        eprintln!();
        let (mut vl, mut vc) = (0.0, 0usize);
        for (p, l) in val {
            let s = logits_of(p, false, &mut cache)?;
            vl += s
                .unsqueeze(0)
                .binary_cross_entropy_with_logits::<Tensor>(&one_hot(&[*l]), None, None, tch::Reduction::Mean)
                .double_value(&[]);
            vc += usize::from(s.argmax(0, false).int64_value(&[]) == i64::from(*l));
        }
        let nv = val.len().max(1) as f64;
        let secs = started.elapsed().as_secs_f64();
        let row = format!(
            "{},{:.6},{:.4},{:.6},{:.4},{:.1}\n",
            epoch + 1,
            loss_sum / seen.max(1) as f64,
            correct as f64 / seen.max(1) as f64,
            if val.is_empty() { f64::NAN } else { vl / nv },
            if val.is_empty() { f64::NAN } else { vc as f64 / nv },
            secs
        );
        tracing::info!(
            epoch = epoch + 1,
            val_accuracy = vc as f64 / nv,
            seconds = secs,
            "epoch done"
        );
        run.end_epoch(epoch + 1, &row, model, &adam)?;
    }
    Ok(run.last)
}
