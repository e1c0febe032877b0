//! Training loops, separate from inference. Segmentation (spec §2.7): batch 1, the plain sum of
//! the five losses, Adam lr 1e-5 with L2 weight decay 1e-3, slices without lesions skipped but
//! counted in the epoch average, checkpoints every N epochs (model file + optimizer state +
//! epoch), a validation pass each epoch (eval mode by default; the original's train-mode pass is
//! an option), a CSV log and a PNG plot of the curves next to the checkpoints.
//!
//! Beside the loops: [`optim`] (Adam with resumable state), [`plot`] (the curves' PNG) and
//! [`eval`] (the original's per-image mask AP, COCO AP and the confusion matrix).

pub mod eval;
pub mod optim;
pub mod plot;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use rand::seq::SliceRandom;
use tch::{Device, Tensor};

use crate::data::cncb::{CncbDataset, Instance};
use crate::model::{MaskRcnn, Target};
use crate::ops::sampler::{SamplingRng, sampling_rng};
use crate::slice::Slice;
use crate::training::optim::Adam;
use crate::{Error, Result};

/// Options of `ctmask train-segmentation`.
#[derive(Debug, Clone)]
pub struct SegTrainOptions {
    pub out: PathBuf,
    pub epochs: usize,
    pub lr: f64,
    /// Epochs (1-based, counted from the first) after which the learning rate is multiplied by
    /// `lr_gamma` (PyTorch's MultiStepLR); empty: constant, as the original.
    pub lr_steps: Vec<usize>,
    pub lr_gamma: f64,
    pub weight_decay: f64,
    pub save_every: usize,
    pub seed: i64,
    pub val_train_mode: bool,
    pub augment: bool,
    pub device: Device,
    pub model_name: String,
}

/// The learning rate of (0-based) `epoch`: `lr * gamma^(steps passed)`.
pub fn lr_at(opts: &SegTrainOptions, epoch: usize) -> f64 {
    let passed = opts.lr_steps.iter().filter(|&&s| epoch >= s).count();
    opts.lr * opts.lr_gamma.powi(passed as i32)
}

/// The tensors of one slice: image `[3, H, W]` and its target.
pub fn to_example(slice: &Slice, inst: &[Instance], device: Device) -> Result<(Tensor, Target)> {
    let img = crate::model::transform::tensor_from_rgb(&slice.rgb, slice.width, slice.height, device)?;
    let (w, h) = (slice.width as i64, slice.height as i64);
    let k = inst.len() as i64;
    let boxes: Vec<f32> = inst.iter().flat_map(|i| i.bbox).collect();
    let labels: Vec<i64> = inst.iter().map(|i| i.label).collect();
    let masks: Vec<u8> = inst.iter().flat_map(|i| i.mask.iter().copied()).collect();
    Ok((
        img,
        Target {
            boxes: Tensor::from_slice(&boxes).view([k, 4]).to_device(device),
            labels: Tensor::from_slice(&labels).to_device(device),
            masks: Tensor::from_slice(&masks).view([k, h, w]).to_device(device),
        },
    ))
}

/// Random horizontal flip and small intensity jitter (off by default, as in the original).
fn augment(img: Tensor, t: Target, rng: &mut SamplingRng) -> (Tensor, Target) {
    let flip = rng.r#gen::<f64>() < 0.5;
    let gain = 1.0 + (rng.r#gen::<f64>() - 0.5) * 0.1;
    let img = (img * gain).clamp(0.0, 1.0);
    if !flip {
        return (img, t);
    }
    let w = img.size()[2] as f64;
    let b = &t.boxes;
    let boxes = Tensor::stack(
        &[
            w - b.select(1, 2),
            b.select(1, 1),
            w - b.select(1, 0),
            b.select(1, 3),
        ],
        1,
    );
    (
        img.flip([2]),
        Target {
            boxes,
            labels: t.labels,
            masks: t.masks.flip([2]),
        },
    )
}

/// Parameters trained for segmentation: all, except what torchvision 0.3.0 froze for the
/// FrozenBatchNorm2d models (conv1 and layer1; frozen BN has no trainable parameters). The frozen
/// ones stop requiring gradients, as torchvision's `requires_grad_(False)` and its BN buffers do,
/// so autograd neither computes their gradients nor back-propagates below layer2 (the most
/// expensive part of the backward pass, at the highest resolution).
pub fn segmentation_parameters(model: &MaskRcnn) -> Vec<(String, Tensor)> {
    let frozen_bn = !model.cfg.bn_num_batches_tracked;
    let trained = |n: &str| {
        if !frozen_bn {
            return true;
        }
        let body = n.starts_with("backbone.body.");
        let late = ["layer2", "layer3", "layer4"].iter().any(|l| n.contains(l));
        let bn = n.contains(".bn") || n.contains("downsample.1");
        !(body && (!late || bn))
    };
    let mut v = Vec::new();
    for (n, t) in model.vs.variables() {
        if !t.requires_grad() || !t.is_floating_point() || n.contains("running_") {
            continue;
        }
        if trained(&n) {
            v.push((n, t));
        } else {
            let _ = t.shallow_clone().set_requires_grad(false);
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Mean of the five losses and their sum over a data set (no optimiser step).
pub fn validation_losses(model: &MaskRcnn, data: &CncbDataset, train_mode: bool) -> Result<[f64; 6]> {
    let mut acc = [0.0; 6];
    for i in 0..data.len() {
        let (slice, inst, _) = data.item(i).map_err(|e| Error::Other(e.to_string()))?;
        if inst.is_empty() {
            continue;
        }
        let (img, t) = to_example(&slice, &inst, model.device())?;
        // one fixed draw for every validation pass, so epochs compare on the same samples
        let mut rng = sampling_rng(0, u64::MAX);
        let l = tch::no_grad(|| model.losses_t(&[img], &[t], train_mode, &mut rng))?;
        for (j, (_, v)) in l.values().iter().enumerate() {
            acc[j] += v;
        }
        acc[5] += l.total().double_value(&[]);
    }
    let n = data.len().max(1) as f64;
    Ok(acc.map(|v| v / n))
}

fn progress(
    epoch: usize,
    epochs: usize,
    step: usize,
    steps: usize,
    losses: &[(&str, f64); 5],
    started: Instant,
) {
    let done = step as f64 / steps.max(1) as f64;
    let el = started.elapsed().as_secs_f64();
    let eta = if done > 0.0 { el / done - el } else { 0.0 };
    let terms: Vec<String> = losses
        .iter()
        .map(|(n, v)| format!("{}={v:.3}", n.trim_start_matches("loss_")))
        .collect();
    eprint!(
        "\repoch {epoch}/{epochs} [{step}/{steps}] {} | {:.2} it/s eta {:.0}s   ",
        terms.join(" "),
        step as f64 / el.max(1e-9),
        eta
    );
    let _ = std::io::stderr().flush();
}

/// Train a segmentation model; returns the path of the last checkpoint.
pub fn train_segmentation(
    model: &MaskRcnn,
    train: &CncbDataset,
    val: Option<&CncbDataset>,
    opts: &SegTrainOptions,
    resume: Option<&Path>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    tch::manual_seed(opts.seed);
    let mut adam = Adam::new(segmentation_parameters(model), opts.lr, opts.weight_decay);
    let mut start_epoch = 0;
    if let Some(ckpt) = resume {
        let (_, meta) = crate::model::weights::read_config(ckpt)?;
        start_epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
        adam.load(&optimizer_path(ckpt))?;
        tracing::info!(epoch = start_epoch, "resumed from {}", ckpt.display());
    }
    let log_path = opts.out.join("training_log.csv");
    let mut log = if start_epoch > 0 && log_path.exists() {
        std::fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?
    } else {
        "epoch,loss_classifier,loss_box_reg,loss_mask,loss_objectness,loss_rpn_box_reg,loss_total,val_total,seconds\n".into()
    };
    let mut last = PathBuf::new();
    let mut rng_order: Vec<usize> = (0..train.len()).collect();
    for epoch in start_epoch..opts.epochs {
        let started = Instant::now();
        adam.lr = lr_at(opts, epoch);
        if epoch == start_epoch || adam.lr != lr_at(opts, epoch.saturating_sub(1)) {
            tracing::info!(epoch = epoch + 1, lr = adam.lr, "learning rate");
        }
        // the run's own generator, one stream per epoch: a resumed run draws what the
        // uninterrupted run drew, whatever else in the process uses libtorch's generator
        let mut rng = sampling_rng(opts.seed as u64, epoch as u64);
        rng_order.sort_unstable();
        rng_order.shuffle(&mut rng);
        let mut sums = [0.0f64; 6];
        for (step, &i) in rng_order.iter().enumerate() {
            let (slice, inst, path) = train.item(i).map_err(|e| Error::Other(e.to_string()))?;
            if inst.is_empty() {
                continue; // the original skips empty slices but counts them in the average
            }
            let (mut img, mut t) = to_example(&slice, &inst, opts.device)?;
            if opts.augment {
                (img, t) = augment(img, t, &mut rng);
            }
            let l = model.losses(&[img], &[t], &mut rng)?;
            let total = l.total();
            let tv = total.double_value(&[]);
            if !tv.is_finite() {
                eprintln!();
                return Err(Error::Other(format!(
                    "non-finite loss ({tv}) at epoch {} on {}: lower the learning rate or check the data",
                    epoch + 1,
                    path.display()
                )));
            }
            adam.zero_grad();
            total.backward();
            adam.step();
            let vals = l.values();
            for (j, (_, v)) in vals.iter().enumerate() {
                sums[j] += v;
            }
            sums[5] += tv;
            progress(epoch + 1, opts.epochs, step + 1, train.len(), &vals, started);
        }
        eprintln!();
        let n = train.len().max(1) as f64;
        let means = sums.map(|v| v / n);
        let val_total = match val {
            Some(v) => validation_losses(model, v, opts.val_train_mode)?[5],
            None => f64::NAN,
        };
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            epoch = epoch + 1,
            train = means[5],
            val = val_total,
            seconds = secs,
            "epoch done"
        );
        log.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
            epoch + 1,
            means[0],
            means[1],
            means[2],
            means[3],
            means[4],
            means[5],
            val_total,
            secs
        ));
        crate::fsutil::write_atomic(&log_path, log.as_bytes())?;
        plot_log(&log, &opts.out.join("training_curves.png"))?;
        if (epoch + 1) % opts.save_every.max(1) == 0 || epoch + 1 == opts.epochs {
            last = save_checkpoint(model, &adam, &opts.out, &opts.model_name, epoch + 1)?;
        }
    }
    Ok(last)
}

/// `<checkpoint>.optim.safetensors` beside a model checkpoint.
pub fn optimizer_path(ckpt: &Path) -> PathBuf {
    let mut s = ckpt.as_os_str().to_owned();
    s.push(".optim");
    PathBuf::from(s)
}

/// `<out>/<model_name>_ckpt_<epoch>.safetensors` plus the optimizer state beside it.
fn save_checkpoint(
    model: &MaskRcnn,
    adam: &Adam,
    out: &Path,
    model_name: &str,
    epoch: usize,
) -> Result<PathBuf> {
    let path = out.join(format!("{model_name}_ckpt_{epoch}.safetensors"));
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("model_name".to_string(), model_name.to_string());
    meta.insert("lrate".to_string(), adam.lr.to_string());
    model.save(&path, &meta)?;
    adam.save(&optimizer_path(&path))?;
    tracing::info!("saved {}", path.display());
    Ok(path)
}

/// Plot the CSV log's train and validation totals.
pub fn plot_log(csv: &str, png: &Path) -> Result<()> {
    let mut cols: Vec<(String, Vec<f64>)> = Vec::new();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    for h in header.iter().skip(1) {
        if *h != "seconds" {
            cols.push((h.to_string(), Vec::new()));
        }
    }
    for line in lines {
        for (i, v) in line.split(',').skip(1).enumerate() {
            if let Some(c) = cols.get_mut(i) {
                c.1.push(v.parse().unwrap_or(f64::NAN));
            }
        }
    }
    crate::training::plot::line_plot(png, &cols, 640, 360)
}

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
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    tch::manual_seed(opts.seed);
    let params = classifier_parameters(model, opts.update);
    tracing::info!(
        tensors = params.len(),
        scalars = params.iter().map(|p| p.1.numel()).sum::<usize>(),
        "trainable parameters"
    );
    let mut adam = Adam::new(params, opts.lr, opts.weight_decay);
    let mut start_epoch = 0;
    if let Some(ckpt) = resume {
        let (_, meta) = crate::model::weights::read_config(ckpt)?;
        start_epoch = meta.get("epoch").and_then(|e| e.parse().ok()).unwrap_or(0);
        adam.load(&optimizer_path(ckpt))?;
    }
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
    let log_path = opts.out.join("training_log.csv");
    let mut log = if start_epoch > 0 && log_path.exists() {
        std::fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?
    } else {
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n".into()
    };
    let mut last = PathBuf::new();
    for epoch in start_epoch..opts.epochs {
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
        log.push_str(&format!(
            "{},{:.6},{:.4},{:.6},{:.4},{:.1}\n",
            epoch + 1,
            loss_sum / seen.max(1) as f64,
            correct as f64 / seen.max(1) as f64,
            if val.is_empty() { f64::NAN } else { vl / nv },
            if val.is_empty() { f64::NAN } else { vc as f64 / nv },
            secs
        ));
        tracing::info!(
            epoch = epoch + 1,
            val_accuracy = vc as f64 / nv,
            seconds = secs,
            "epoch done"
        );
        crate::fsutil::write_atomic(&log_path, log.as_bytes())?;
        plot_log(&log, &opts.out.join("training_curves.png"))?;
        if (epoch + 1) % opts.save_every.max(1) == 0 || epoch + 1 == opts.epochs {
            last = save_checkpoint(model, &adam, &opts.out, &opts.model_name, epoch + 1)?;
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_drops_after_each_step_epoch() {
        let opts = SegTrainOptions {
            out: PathBuf::new(),
            epochs: 50,
            lr: 3e-4,
            lr_steps: vec![30, 40],
            lr_gamma: 0.1,
            weight_decay: 1e-3,
            save_every: 10,
            seed: 0,
            val_train_mode: false,
            augment: false,
            device: Device::Cpu,
            model_name: "m".into(),
        };
        // epochs are 0-based here: epoch 29 is the 30th, the last at the full rate
        for (epoch, want) in [
            (0, 3e-4),
            (29, 3e-4),
            (30, 3e-5),
            (39, 3e-5),
            (40, 3e-6),
            (49, 3e-6),
        ] {
            assert!((lr_at(&opts, epoch) - want).abs() < want * 1e-9, "epoch {epoch}");
        }
        let constant = SegTrainOptions {
            lr_steps: vec![],
            ..opts
        };
        assert_eq!(lr_at(&constant, 45), 3e-4);
    }
}
