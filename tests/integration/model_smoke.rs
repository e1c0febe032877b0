//! Shape-level and behaviour tests of the whole model on tiny configurations.

use std::collections::BTreeMap;

use ctmask::model::{MaskRcnn, Target, deterministic_init};
use ctmask::ops::sampler::sampling_rng;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

use super::common::tiny_config;

fn blob_image(size: i64) -> Tensor {
    let y = Tensor::arange(size, (Kind::Float, Device::Cpu)).view([-1, 1]);
    let x = Tensor::arange(size, (Kind::Float, Device::Cpu)).view([1, -1]);
    let d = (y - 40.0).square() + (x - 30.0).square();
    let img = d.lt(100.0).to_kind(Kind::Float) * 0.6 + 0.2;
    img.unsqueeze(0).repeat([3, 1, 1])
}

#[test]
fn detect_returns_consistent_shapes_and_masks() {
    let cfg = tiny_config();
    let model = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&model);
    let img = blob_image(80);
    let dets = model.detect(&[img.shallow_clone(), blob_image(96)]).unwrap();
    assert_eq!(dets.len(), 2);
    for (d, size) in dets.iter().zip([80, 96]) {
        let k = d.len();
        assert!(k <= cfg.roi_heads.box_detections_per_img);
        assert_eq!(d.boxes.size(), vec![k, 4]);
        let m = d.masks.as_ref().unwrap();
        assert_eq!(m.size(), vec![k, size, size]);
        if k > 0 {
            let s: Vec<f32> = Vec::try_from(&d.scores).unwrap();
            assert!(s.windows(2).all(|w| w[0] >= w[1]), "scores descend");
            assert!(
                s.iter()
                    .all(|&v| v > cfg.roi_heads.box_score_thresh as f32 && v <= 1.0)
            );
            let b: Vec<Vec<f32>> = Vec::try_from(&d.boxes).unwrap();
            assert!(
                b.iter()
                    .all(|r| r[0] >= 0.0 && r[2] <= size as f32 && r[0] <= r[2])
            );
        }
    }
}

#[test]
fn save_load_round_trip_is_exact_and_strict() {
    let cfg = tiny_config();
    let model = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    model.save(&path, &BTreeMap::new()).unwrap();
    let back = MaskRcnn::load(&path, Device::Cpu).unwrap();
    assert_eq!(back.cfg, cfg);
    let a = model.vs.variables();
    for (k, v) in back.vs.variables() {
        assert!(v.equal(&a[&k]), "{k} differs after round trip");
    }
    // a file that is not ours, a truncated one and a missing one give clear errors
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = MaskRcnn::load(&junk, Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("not a safetensors"),
        "{e}"
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = MaskRcnn::load(&cut, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("cut.safetensors"), "{e}");
    let e = MaskRcnn::load(&dir.path().join("none.safetensors"), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.safetensors"), "{e}");
    // a model file of another architecture: the mismatch is named
    let mut other = cfg.clone();
    other.num_classes = 2;
    other.class_names = vec!["lesion".into()];
    let m2 = MaskRcnn::new(&other, Device::Cpu).unwrap();
    let vars = m2.vs.variables();
    let e = ctmask::model::weights::load_into(&path, &bytes, &vars)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cls_score.weight") && e.contains("shape"), "{e}");
}

#[test]
fn bad_images_are_errors_not_panics() {
    let model = MaskRcnn::new(&tiny_config(), Device::Cpu).unwrap();
    assert!(model.detect(&[]).is_err());
    assert!(
        model
            .detect(&[Tensor::zeros([3, 0, 10], (Kind::Float, Device::Cpu))])
            .is_err()
    );
    assert!(
        model
            .detect(&[Tensor::zeros([10, 10], (Kind::Float, Device::Cpu))])
            .is_err()
    );
}

fn target_for_blob(size: i64) -> Target {
    let y = Tensor::arange(size, (Kind::Float, Device::Cpu)).view([-1, 1]);
    let x = Tensor::arange(size, (Kind::Float, Device::Cpu)).view([1, -1]);
    let m = ((y - 40.0).square() + (x - 30.0).square())
        .lt(100.0)
        .to_kind(Kind::Uint8);
    Target {
        boxes: Tensor::from_slice(&[20f32, 30., 40., 50.]).view([1, 4]),
        labels: Tensor::from_slice(&[1i64]),
        masks: m.unsqueeze(0),
    }
}

#[test]
fn losses_are_finite_and_empty_slices_work() {
    let model = MaskRcnn::new(&tiny_config(), Device::Cpu).unwrap();
    deterministic_init::fill(&model);
    let mut rng = sampling_rng(0, 0);
    let l = model
        .losses(&[blob_image(96)], &[target_for_blob(96)], &mut rng)
        .unwrap();
    for (name, v) in l.values() {
        assert!(v.is_finite() && v >= 0.0, "{name} = {v}");
    }
    assert!(l.values()[2].1 > 0.0, "mask loss computed");
    let empty = Target {
        boxes: Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
        labels: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        masks: Tensor::zeros([0, 96, 96], (Kind::Uint8, Device::Cpu)),
    };
    let l = model.losses(&[blob_image(96)], &[empty], &mut rng).unwrap();
    let v = l.values();
    assert_eq!(v[1].1, 0.0, "no box loss without positives");
    assert_eq!(v[2].1, 0.0, "no mask loss without positives");
    assert!(v[3].1 > 0.0 && v[3].1.is_finite());
    l.total().backward();
}

/// Loss trace of `steps` Adam steps on one slice from the deterministic weights, sampling from
/// the run's own generator: nothing here draws from libtorch's global generator, so the trace
/// does not depend on what runs beside it.
fn overfit_trace(steps: usize, seed: u64) -> Vec<f64> {
    let mut cfg = tiny_config();
    cfg.bn_num_batches_tracked = true;
    let model = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&model);
    let mut opt = tch::nn::Adam::default().build(&model.vs, 1e-3).unwrap();
    let img = blob_image(96);
    let mut rng = sampling_rng(seed, 0);
    (0..steps)
        .map(|_| {
            let l = model
                .losses(&[img.shallow_clone()], &[target_for_blob(96)], &mut rng)
                .unwrap()
                .total();
            opt.backward_step(&l);
            l.double_value(&[])
        })
        .collect()
}

#[test]
fn training_overfits_a_few_slices() {
    // the trend over the last few steps (one step's loss can spike), not one step
    let trace = overfit_trace(30, 1);
    let first = trace[0];
    let tail = trace[trace.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        tail < first * 0.4,
        "loss fell from {first} to a mean of {tail} over the last 5 steps: {trace:?}"
    );
}

#[test]
fn training_trace_depends_on_its_seed_alone() {
    // another thread drawing from libtorch's global generator meanwhile changes nothing
    let noise = std::thread::spawn(|| {
        for _ in 0..200 {
            let _ = Tensor::randperm(1000, (Kind::Int64, Device::Cpu));
        }
    });
    let a = overfit_trace(4, 7);
    noise.join().unwrap();
    tch::manual_seed(12345);
    let b = overfit_trace(4, 7);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
}
