//! Segmentation training on synthetic CNCB data: checkpoints, the CSV log and the plot,
//! `--resume` continuing from the saved epoch with the saved optimizer state, and
//! `--train-empty` training slices without lesions as negatives.

use ctmask::data::cncb::{CncbDataset, CncbOptions};
use ctmask::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};
use ctmask::model::MaskRcnn;
use ctmask::training::{SegTrainOptions, optimizer_path, train_segmentation};

/// `count` synthetic 128-pixel CNCB slices of `class` under `dir`, opened as a dataset.
fn synth_cncb(dir: &std::path::Path, count: usize, seed: u64, class: ClassChoice) -> CncbDataset {
    let data = dir.join("cncb");
    run_synth(&SynthOptions {
        out: data.clone(),
        layout: Layout::Cncb,
        count,
        seed,
        class,
        size: 128,
        preview: false,
        zoom: 0.0,
    })
    .unwrap();
    CncbDataset::open(
        &data.join("imgs"),
        &data.join("masks"),
        None,
        CncbOptions::default(),
    )
    .unwrap()
}

/// The optimizer steps taken so far, as saved beside checkpoint `ck`.
fn optimizer_step(ck: &std::path::Path) -> i64 {
    tch::Tensor::read_safetensors(optimizer_path(ck))
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "step")
        .unwrap()
        .1
        .int64_value(&[0])
}

#[test]
fn resume_continues_from_the_saved_epoch_and_optimizer_state() {
    let dir = tempfile::tempdir().unwrap();
    let set = synth_cncb(dir.path(), 3, 4, ClassChoice::Covid);
    let with_lesions = (0..set.len())
        .filter(|&i| !set.item(i).unwrap().1.is_empty())
        .count();
    assert!(with_lesions > 0);
    let cfg = super::common::tiny_config();
    let model = MaskRcnn::new(&cfg, tch::Device::Cpu).unwrap();
    let out = dir.path().join("run");
    let opts = SegTrainOptions {
        out: out.clone(),
        epochs: 1,
        lr: 1e-4,
        lr_steps: vec![1],
        lr_gamma: 0.5,
        weight_decay: 1e-3,
        save_every: 1,
        seed: 1,
        val_train_mode: false,
        augment: false,
        train_empty: false,
        device: tch::Device::Cpu,
        model_name: "t".into(),
    };
    let ck1 = train_segmentation(&model, &set, None, &opts, None).unwrap();
    assert!(ck1.ends_with("t_ckpt_1.safetensors"));
    assert!(out.join("training_curves.png").exists());
    let step1 = optimizer_step(&ck1);
    assert_eq!(step1 as usize, with_lesions, "one step per slice with lesions");
    // resume: a fresh process would load the checkpoint; epochs 2 of 2 run, the log keeps epoch 1
    let resumed = MaskRcnn::load(&ck1, tch::Device::Cpu).unwrap();
    let ck2 = train_segmentation(
        &resumed,
        &set,
        None,
        &SegTrainOptions {
            epochs: 2,
            ..opts.clone()
        },
        Some(&ck1),
    )
    .unwrap();
    assert!(ck2.ends_with("t_ckpt_2.safetensors"));
    let step2 = optimizer_step(&ck2);
    assert_eq!(
        step2,
        2 * step1,
        "the optimizer continued from its saved step count"
    );
    let log = std::fs::read_to_string(out.join("training_log.csv")).unwrap();
    let epochs: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(epochs, vec!["1", "2"]);
    let (_, meta) = ctmask::model::weights::read_config(&ck2).unwrap();
    assert_eq!(meta["epoch"], "2");
}

#[test]
fn train_empty_trains_on_slices_without_lesions_as_negatives_only() {
    let dir = tempfile::tempdir().unwrap();
    let set = synth_cncb(dir.path(), 2, 5, ClassChoice::Control);
    assert_eq!(set.len(), 2);
    assert!(
        (0..2).all(|i| set.item(i).unwrap().1.is_empty()),
        "controls have no lesion"
    );
    let model = MaskRcnn::new(&super::common::tiny_config(), tch::Device::Cpu).unwrap();
    let steps = |train_empty: bool, name: &str| {
        let out = dir.path().join(name);
        let ck = train_segmentation(
            &model,
            &set,
            Some(&set),
            &SegTrainOptions {
                out: out.clone(),
                epochs: 1,
                lr: 1e-4,
                save_every: 1,
                seed: 2,
                train_empty,
                model_name: "t".into(),
                ..SegTrainOptions::default()
            },
            None,
        )
        .unwrap();
        let step = optimizer_step(&ck);
        let log = std::fs::read_to_string(out.join("training_log.csv")).unwrap();
        let row: Vec<f64> = log
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        (step, row)
    };
    // the original skips them: no optimizer step, every loss zero, validation included
    let (skipped, row) = steps(false, "skip");
    assert_eq!(skipped, 0);
    assert!(row[1..8].iter().all(|&v| v == 0.0), "{row:?}");
    // as negatives: one step per slice; only the two classification losses are non-zero
    // (columns: epoch, classifier, box_reg, mask, objectness, rpn_box_reg, total, val, seconds)
    let (trained, row) = steps(true, "neg");
    assert_eq!(trained, 2);
    assert!(
        row[1] > 0.0 && row[4] > 0.0,
        "classifier and objectness losses: {row:?}"
    );
    assert_eq!(
        (row[2], row[3], row[5]),
        (0.0, 0.0, 0.0),
        "no box or mask targets: {row:?}"
    );
    assert!(row[6].is_finite());
    // and validated as negatives too: the validation loss measures what is trained
    assert!(row[7] > 0.0, "validation loss of the negatives: {row:?}");
}
