//! `segment` and `classify` on many inputs: a refused or broken file is reported (in the JSON
//! array with its reason, and on stderr), the others are still processed and written, and the
//! exit status (2) says that something was refused. Third-party chatter stays out of the
//! default log level.

use std::path::{Path, PathBuf};
use std::process::Output;

fn ctmask(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ctmask"))
        .args(args)
        .current_dir(super::common::repo())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A good PNG, a real chest CT, an MR (refused), garbage (refused), a missing file.
fn mixed_inputs(dir: &Path) -> Vec<PathBuf> {
    let dicom = super::common::shared().join("data/dicom");
    let png = dir.join("slice.png");
    let img = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([((x * 3 + y * 2) % 256) as u8]));
    img.save(&png).unwrap();
    let garbage = dir.join("garbage.dcm");
    std::fs::write(&garbage, b"DICM? no, just bytes").unwrap();
    vec![
        png,
        dicom.join("mr_64_explicit_le.dcm"),
        dicom.join("chest_ct1_128_crop_explicit_le.dcm"),
        garbage,
        dir.join("missing.png"),
    ]
}

fn run_batch(command: &str, model: &str) -> (Output, Vec<serde_json::Value>, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let inputs = mixed_inputs(dir.path());
    let json = dir.path().join("out.json");
    let mut args = vec![
        command.to_string(),
        "--model".into(),
        model.into(),
        "--device".into(),
        "cpu".into(),
        "--json".into(),
        json.display().to_string(),
    ];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let out = ctmask(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(&json).unwrap_or_else(|e| panic!("{command} wrote no JSON ({e}): {out:?}")),
    )
    .unwrap();
    (out, rows, inputs)
}

fn check_batch(command: &str, model: &str, ok_field: &str) {
    let (out, rows, inputs) = run_batch(command, model);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{command}: exit status\n{stderr}");
    assert_eq!(rows.len(), inputs.len(), "{command}: one row per input\n{rows:?}");
    let input = |i: usize| inputs[i].display().to_string();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["input"], input(i), "{command}: rows keep the input order");
    }
    // processed: the PNG and the chest CT
    for i in [0, 2] {
        assert!(rows[i].get("error").is_none(), "{command}: {:?}", rows[i]);
        assert!(!rows[i][ok_field].is_null(), "{command}: {:?}", rows[i]);
    }
    // refused, each with its reason, in the JSON and on stderr
    assert_eq!(rows[1]["error"], "not CT: modality MR", "{command}");
    assert!(
        rows[3]["error"].as_str().unwrap().starts_with("corrupt"),
        "{:?}",
        rows[3]
    );
    assert!(
        rows[4]["error"].as_str().unwrap().starts_with("cannot read file"),
        "{:?}",
        rows[4]
    );
    for i in [1, 3, 4] {
        assert!(
            stderr.contains(&format!("{}: refused: ", input(i))),
            "{command}: stderr names {}\n{stderr}",
            input(i)
        );
    }
    assert!(stderr.contains("3 of 5 input(s) refused"), "{stderr}");
}

#[test]
fn segment_reports_refused_inputs_and_processes_the_rest() {
    check_batch(
        "segment",
        "pretrained_models/demo_segmentation.safetensors",
        "detections",
    );
}

#[test]
fn classify_reports_refused_inputs_and_processes_the_rest() {
    check_batch(
        "classify",
        "pretrained_models/demo_classifier.safetensors",
        "label",
    );
}

#[test]
fn codec_chatter_stays_out_of_the_default_log() {
    // the JPEG 2000 head CT: its codec logs every codestream header at info
    let head = super::common::shared().join("data/dicom/head_ct_693_j2k_lossy.dcm");
    let out = ctmask(&[
        "segment",
        "--model",
        "pretrained_models/demo_segmentation.safetensors",
        "--device",
        "cpu",
        head.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| l.contains(" INFO ")) {
        assert!(
            line.contains(" ctmask"),
            "a third-party info line at the default level: {line}"
        );
    }
    assert_eq!(ctmask::cli::log_filter("info"), "warn,ctmask=info");
    assert_eq!(ctmask::cli::log_filter("debug"), "warn,ctmask=debug");
    assert_eq!(ctmask::cli::log_filter("error"), "error");
    assert_eq!(ctmask::cli::log_filter("jpeg2k=info"), "jpeg2k=info");
}

/// `segment --out` paints what the daemon counts and flags the rest in its JSON: on the real
/// lung-base slice the demo detector's one detection (score 0.14) is listed `low_score` and the
/// mask stays empty; on the head CT every detection is `outside_lung`; with
/// `--min-counted-score 0` the base's detection is painted, as the original's script draws it.
#[test]
fn segment_out_paints_the_counted_lesions_and_flags_the_rest() {
    let dicom = super::common::shared().join("data/dicom");
    let base = dicom.join("ct_siemens_unsigned12_jpeg_lossless_badseq.dcm");
    let head = dicom.join("head_ct_693_j2k_lossy.dcm");
    let painted = |dir: &Path, stem: &str| -> usize {
        let m = image::open(dir.join(format!("{stem}_mask.png")))
            .unwrap()
            .into_luma8();
        m.pixels().filter(|p| p.0[0] != 0).count()
    };
    let mut painted_at = Vec::new();
    for min_score in ["0.75", "0"] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("all.json");
        let out = ctmask(&[
            "segment",
            "--model",
            "pretrained_models/demo_segmentation.safetensors",
            "--device",
            "cpu",
            "--min-counted-score",
            min_score,
            "--out",
            dir.path().to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            base.to_str().unwrap(),
            head.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let min: f64 = min_score.parse().unwrap();
        for item in v.as_array().unwrap() {
            let dets = item["detections"].as_array().unwrap();
            assert!(!dets.is_empty(), "{item}");
            for d in dets {
                let low = d.get("low_score").and_then(|x| x.as_bool()).unwrap_or(false);
                assert_eq!(low, d["score"].as_f64().unwrap() < min, "{d}");
                if item["input"].as_str().unwrap().contains("head_ct") {
                    assert_eq!(d["outside_lung"], true, "a head has no lungs: {d}");
                }
            }
        }
        assert_eq!(painted(dir.path(), "head_ct_693_j2k_lossy"), 0);
        painted_at.push(painted(dir.path(), "ct_siemens_unsigned12_jpeg_lossless_badseq"));
    }
    assert_eq!(painted_at[0], 0, "nothing counted at 0.75");
    assert!(
        painted_at[1] > 100,
        "the 0.14 detection painted at 0: {painted_at:?}"
    );
}
