//! The shipped demo weights, recomputed on a small subset of the synthetic test sets named in
//! their model cards (the first 15 slices of the same seeds), the real normal slices of
//! `../shared/data/dicom/` through the lung gate, `ctmask demo`'s three verdicts, and the size
//! budget of `pretrained_models/`.

use std::path::PathBuf;

use ctmask::data::synth::{ClassChoice, Layout, SynthOptions, run_synth};

fn weights(name: &str) -> PathBuf {
    super::common::repo().join("pretrained_models").join(name)
}

#[test]
fn pretrained_models_stay_under_30_mb() {
    let total: u64 = std::fs::read_dir(super::common::repo().join("pretrained_models"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(total < 30 * 1024 * 1024, "{total} bytes");
}

#[test]
fn demo_segmentation_scores_on_a_test_subset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seg");
    run_synth(&SynthOptions {
        out: data.clone(),
        layout: Layout::Cncb,
        count: 15,
        seed: 6363,
        class: ClassChoice::Mixed,
        size: 512,
        preview: false,
        zoom: 0.0,
    })
    .unwrap();
    let args = ctmask::cli::train_seg::DataArgs {
        data: data.clone(),
        split: None,
        mask_type: ctmask::cli::train_seg::MaskTypeArg::Both,
        original_labels: false,
        min_area: 100,
    };
    let set = args.open(&data).unwrap();
    let mut model =
        ctmask::model::MaskRcnn::load(&weights("demo_segmentation.safetensors"), tch::Device::Cpu).unwrap();
    let mut cfg = model.cfg.clone();
    cfg.roi_heads.box_nms_thresh = 0.75;
    cfg.roi_heads.box_detections_per_img = 128;
    model.set_config(cfg).unwrap();
    let m = ctmask::training::eval::evaluate_segmentation(
        &mut model,
        &set,
        0.75,
        ctmask::model::default_mask_threshold(),
    )
    .unwrap();
    // the card's unseen seed-6363 set, first 15 of its 90 slices as the current generator draws
    // them: AP@0.5 0.8114 and mAP 0.6504 when the card was updated (0.8397 on all 90, over the
    // 0.75 target); the bound is the measured figure less 0.05, so one borderline detection on
    // another CPU keeps it
    assert!(m.ap_50 >= 0.8114 - 0.05, "AP@0.5 {}", m.ap_50);
    assert!(m.map_50_95 >= 0.6504 - 0.05, "mAP {}", m.map_50_95);
    // the involvement's agreement per counting threshold: counting fewer detections never adds
    // involvement, so the bias and the lesion-free mean fall as the threshold rises
    let rows = &m.involvement;
    let ths: Vec<f64> = rows.iter().map(|r| r.score_threshold).collect();
    assert_eq!(ths, ctmask::training::eval::INVOLVEMENT_SCORE_THRESHOLDS);
    for w in rows.windows(2) {
        assert!(w[1].mean_error_pp <= w[0].mean_error_pp + 1e-12, "{rows:?}");
        assert!(
            w[1].lesion_free_mean_pp <= w[0].lesion_free_mean_pp + 1e-12,
            "{rows:?}"
        );
    }
    assert!(
        rows.iter()
            .all(|r| r.lesion_free_images == rows[0].lesion_free_images)
    );
    assert!(
        rows[0].lesion_free_images > 0,
        "the first 15 slices hold controls"
    );
}

/// The confusion matrix of the demo classifier on the first 15 slices of a synthetic COVIDx set.
fn demo_classifier_confusion(seed: u64) -> [[u64; 3]; 3] {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cls");
    run_synth(&SynthOptions {
        out: data.clone(),
        layout: Layout::Covidx,
        count: 15,
        seed,
        class: ClassChoice::Mixed,
        size: 512,
        preview: false,
        zoom: 0.0,
    })
    .unwrap();
    let items = ctmask::data::covidx::CovidxDataset::from_dir(&data)
        .unwrap()
        .items()
        .to_vec();
    let model =
        ctmask::model::MaskRcnn::load(&weights("demo_classifier.safetensors"), tch::Device::Cpu).unwrap();
    ctmask::training::eval::confusion(&model, &items, None).unwrap()
}

#[test]
fn demo_classifier_scores_on_a_test_subset() {
    // the first 15 slices of seed 6262 as the current generator draws them: all 15 right when
    // the card was written; accuracy 0.956 on the unseen 90-slice seed-6464 set and 0.963 on the
    // 300-slice seed-6868 set, over the 0.95 target (see the card). At most one borderline
    // slice may differ on another CPU.
    let cm = demo_classifier_confusion(6262);
    let right: u64 = (0..3).map(|k| cm[k][k]).sum();
    assert!(right >= 15 - 1, "{cm:?}");
    assert!(cm[0][0] >= 4, "control slices: {cm:?}");
}

/// Runs the ctmask binary from the repository root (where `pretrained_models/` is found) and
/// returns its standard output; a failed run fails the test with both outputs.
fn run_ctmask(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctmask"))
        .args(args)
        .current_dir(super::common::repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn make_demo_gives_each_of_its_three_patients_the_right_verdict() {
    let text = run_ctmask(&[
        "demo",
        "--slices",
        "3",
        "--discard",
        "--timeout",
        "400",
        "--log",
        "warn",
    ]);
    assert!(
        text.starts_with("research use only: not a medical device"),
        "{text}"
    );
    assert!(text.contains("DEMO MODEL: NOT FOR REAL SCANS"), "{text}");
    // one row per patient: the class dropped in, the slice count, then the daemon's verdict
    for class in ["control", "pneumonia", "covid"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(class) && l.split_whitespace().nth(1) == Some("3"))
            .unwrap_or_else(|| panic!("no row for {class}:\n{text}"));
        let verdict = row.split_whitespace().nth(2);
        assert_eq!(verdict, Some(class), "{row}\n{text}");
    }
    assert!(text.contains("3 of 3 verdicts right"), "{text}");
}

/// `ctmask bench-daemon` runs the real daemon on the demo weights and reports every figure it
/// promises (values, not timings, are asserted: timings are for the benchmark to show).
#[test]
fn bench_daemon_reports_intake_latency_and_overhead() {
    let text = run_ctmask(&[
        "bench-daemon",
        "--slices",
        "5",
        "--burst",
        "3",
        "--size",
        "128",
        "--json",
        "--log",
        "warn",
        "--timeout",
        "120",
    ]);
    let j: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(j["watch"], "inotify");
    // slice 0 warms up; of slices 1..4, 1 and 3 are renamed in, 2 and 4 written in place
    assert_eq!(j["intake_closed_ms"]["n"], 2, "{j}");
    assert_eq!(j["intake_renamed_ms"]["n"], 2, "{j}");
    assert_eq!(j["overhead_ms"]["n"], 4, "{j}");
    for key in ["intake_closed_ms", "intake_renamed_ms", "model_ms"] {
        let p50 = j[key]["p50"].as_f64().expect("p50");
        assert!(p50 > 0.0 && p50 < 60_000.0, "{key}: {j}");
        assert!(j[key]["max"].as_f64().unwrap() >= p50, "{key}: {j}");
    }
    assert!(j["overhead_ms"]["p50"].as_f64().unwrap().is_finite(), "{j}");
    assert_eq!(j["burst_slices"], 3);
    assert!(j["burst_slices_per_s"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["targets"]["met"].is_boolean());
}

/// The real, normal chest slices in `../shared/data/dicom/` (a posterior chest crop and a
/// lung-base slice) screened with the demo weights and the default settings: labelled control,
/// involvement under 1 %; the lung gate reports every lesion with its fraction in the lung field
/// and counts none outside it, and lesions scoring under the counting threshold are listed, not
/// counted.
#[test]
fn demo_weights_on_real_normal_slices_count_no_lesion_outside_the_lungs() {
    let paths = ctmask::config::ModelPaths {
        segmentation: weights("demo_segmentation.safetensors"),
        classifier: Some(weights("demo_classifier.safetensors")),
    };
    let screener = ctmask::screening::ModelScreener::new(
        &paths,
        tch::Device::Cpu,
        ctmask::config::ScreeningSettings::default(),
    )
    .unwrap();
    assert_eq!(
        screener.training_data(),
        vec![Some("synthetic phantoms".to_string()); 2],
        "the demo weights say what they were trained on"
    );
    let mut failures = Vec::new();
    for name in [
        "chest_ct1_128_crop_explicit_le.dcm",
        "ct_siemens_unsigned12_jpeg_lossless_badseq.dcm",
    ] {
        let path = super::common::shared().join("data/dicom").join(name);
        let slice = ctmask::slice::read_slices(&path, &ctmask::slice::SliceOptions::default())
            .unwrap()
            .remove(0);
        let f = screener
            .screen_batch(std::slice::from_ref(&slice))
            .remove(0)
            .unwrap();
        let label = f.classification.as_ref().map(|c| c.label.as_str());
        let involved: f64 = f.involvement.values().sum();
        let gate = f.lung_gate.as_ref().expect("the gate is reported");
        eprintln!(
            "{name}: {:?}, {} lesions ({} flagged outside the lung), involvement {involved:.4}, lung {:?} px",
            f.classification.as_ref().map(|c| (&c.label, c.probabilities)),
            f.lesions.len(),
            gate.flagged,
            f.lung_field_px
        );
        assert_eq!(gate.min_lung_fraction, 0.5);
        // every lesion still counted lies in the lung field; the rest are flagged
        for l in &f.lesions {
            let inside = l.lung_fraction.expect("computed");
            if !l.outside_lung && inside < 0.5 {
                failures.push(format!("{name}: counted lesion with {inside} in the lung field"));
            }
        }
        // The targets on these slices: label control (0.870 and 0.666 when the card was
        // written) and involvement under 1 %. The demo detector still reports low-scored
        // lesions inside the lungs here (5 on the crop, top score 0.64, a magnified vessel at its
        // left edge; 1 at 0.14 on the base, the grey tip of a posterior recess): listed, flagged
        // low_score (under the default min_counted_score 0.75), not counted.
        if label != Some("control") {
            failures.push(format!("{name}: labelled {label:?}, not control"));
        }
        if involved >= 0.01 {
            failures.push(format!("{name}: involvement {involved:.4}, not under 1 %"));
        }
        let gate = f.score_gate.as_ref().expect("the counting threshold is reported");
        assert_eq!(gate.min_counted_score, 0.75);
        assert_eq!(
            gate.flagged as usize,
            f.lesions.iter().filter(|l| l.low_score).count()
        );
        for l in &f.lesions {
            assert_eq!(l.low_score, l.score < 0.75, "{name}: {l:?}");
        }
        let painted = f.label_mask.iter().filter(|&&v| v != 0).count();
        assert!(
            painted as f64 <= involved * f.lung_field_px.unwrap_or(0) as f64 + 0.5,
            "{name}: the mask paints only counted lesions ({painted} px)"
        );
        if f.lung_field_px.is_none_or(|p| p == 0) {
            failures.push(format!("{name}: no lung field"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A batch is screened as its slices are one by one: the batched RPN and RoI-head NMS (one read
/// to the host per batch), the classifier over the batch and the findings finished on worker
/// threads give each slice what it gets alone (lesions, their scores, boxes and areas, the
/// involvement, the label and its probabilities), on three phantoms of the three classes.
#[test]
fn a_batch_is_screened_as_its_slices_one_by_one() {
    use ctmask::data::synth::{LesionClass, phantom};
    use ctmask::slice::{Slice, SliceFormat, SliceMeta};
    let slices: Vec<Slice> = [LesionClass::Covid, LesionClass::Cp, LesionClass::Control]
        .iter()
        .enumerate()
        .map(|(i, &class)| {
            let p = phantom(4100 + i as u64, class, 512);
            let hu: Vec<f32> = p.hu.iter().map(|&v| v as f32).collect();
            Slice {
                width: p.width,
                height: p.height,
                rgb: hu
                    .iter()
                    .flat_map(|&v| [ctmask::slice::lung_window(v, -600.0, 1500.0); 3])
                    .collect(),
                hu: Some(hu),
                format: SliceFormat::Png,
                meta: SliceMeta::default(),
            }
        })
        .collect();
    let paths = ctmask::config::ModelPaths {
        segmentation: weights("demo_segmentation.safetensors"),
        classifier: Some(weights("demo_classifier.safetensors")),
    };
    let screener =
        ctmask::screening::ModelScreener::new(&paths, tch::Device::Cpu, Default::default()).unwrap();
    let batch: Vec<_> = screener
        .screen_batch(&slices)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut lesions = 0;
    for (s, b) in slices.iter().zip(&batch) {
        let a = screener
            .screen_batch(std::slice::from_ref(s))
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(a.lesions.len(), b.lesions.len());
        lesions += a.lesions.len();
        for (x, y) in a.lesions.iter().zip(&b.lesions) {
            assert_eq!((x.label, x.outside_lung), (y.label, y.outside_lung));
            assert!((x.score - y.score).abs() < 1e-4, "{} vs {}", x.score, y.score);
            for (p, q) in x.bbox.iter().zip(&y.bbox) {
                assert!((p - q).abs() < 1e-2, "{:?} vs {:?}", x.bbox, y.bbox);
            }
            let (pa, pb) = (x.area_px as f64, y.area_px as f64);
            assert!((pa - pb).abs() <= 0.01 * pa.max(pb) + 1.0, "{pa} vs {pb}");
        }
        for (k, v) in &a.involvement {
            assert!(
                (v - b.involvement[k]).abs() < 1e-3,
                "{k}: {v} vs {}",
                b.involvement[k]
            );
        }
        let (ca, cb) = (
            a.classification.unwrap(),
            b.classification.as_ref().unwrap().clone(),
        );
        assert_eq!(ca.label, cb.label);
        for (p, q) in ca.probabilities.iter().zip(&cb.probabilities) {
            assert!(
                (p - q).abs() < 1e-4,
                "{:?} vs {:?}",
                ca.probabilities,
                cb.probabilities
            );
        }
    }
    assert!(lesions > 0, "the phantoms with lesions give lesions to compare");
}
