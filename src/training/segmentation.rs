//! The segmentation trainer (spec §2.7): batch 1, the plain sum of the five losses, Adam with
//! L2 weight decay and optional MultiStepLR drops, slices without lesions skipped but counted in
//! the epoch average (or, with `train_empty`, trained as negatives: every anchor and RoI is
//! background), a validation pass each epoch (eval mode by default; the original's train-mode
//! pass is an option).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use rand::seq::SliceRandom;
use tch::{Device, Tensor};

use super::optim::Adam;
use super::run::Run;
use crate::data::cncb::{CncbDataset, Instance};
use crate::model::{MaskRcnn, Target};
use crate::ops::sampler::{SamplingRng, sampling_rng};
use crate::slice::Slice;
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
    /// Train on slices without lesions too, as negatives (torchvision's detection models accept
    /// empty targets); the original skips them (off: the original).
    pub train_empty: bool,
    pub device: Device,
    pub model_name: String,
}

impl Default for SegTrainOptions {
    /// The original's schedule (spec §2.7): 50 epochs of Adam at 1e-5 with weight decay 1e-3,
    /// a checkpoint every 10, no learning-rate steps, no augmentation.
    fn default() -> Self {
        SegTrainOptions {
            out: PathBuf::new(),
            epochs: 50,
            lr: 1e-5,
            lr_steps: Vec::new(),
            lr_gamma: 0.1,
            weight_decay: 1e-3,
            save_every: 10,
            seed: 0,
            val_train_mode: false,
            augment: false,
            train_empty: false,
            device: Device::Cpu,
            model_name: "ctmask_segmentation".into(),
        }
    }
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

/// Mean of the five losses and their sum over a data set (no optimiser step). Slices without
/// lesions count as zero (the original's average) unless `with_empty`, which scores them as
/// negatives the way `train_empty` trains them, so that the validation loss measures what is
/// trained.
pub fn validation_losses(
    model: &MaskRcnn,
    data: &CncbDataset,
    train_mode: bool,
    with_empty: bool,
) -> Result<[f64; 6]> {
    let mut acc = [0.0; 6];
    for i in 0..data.len() {
        let (slice, inst, _) = data.item(i).map_err(|e| Error::Other(e.to_string()))?;
        if inst.is_empty() && !with_empty {
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
    tch::manual_seed(opts.seed);
    let mut adam = Adam::new(segmentation_parameters(model), opts.lr, opts.weight_decay);
    let mut run = Run::start(
        &opts.out,
        &opts.model_name,
        opts.epochs,
        opts.save_every,
        "epoch,loss_classifier,loss_box_reg,loss_mask,loss_objectness,loss_rpn_box_reg,loss_total,val_total,seconds\n",
        &mut adam,
        resume,
    )?;
    let start_epoch = run.start_epoch;
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
            if inst.is_empty() && !opts.train_empty {
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
            Some(v) => validation_losses(model, v, opts.val_train_mode, opts.train_empty)?[5],
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
        let row = format!(
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
        );
        run.end_epoch(epoch + 1, &row, model, &adam)?;
    }
    Ok(run.last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_drops_after_each_step_epoch() {
        let opts = SegTrainOptions {
            lr: 3e-4,
            lr_steps: vec![30, 40],
            lr_gamma: 0.1,
            ..SegTrainOptions::default()
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
