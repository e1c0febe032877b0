//! `import-weights` from loaded checkpoints: what the keys tell is inferred (the released full
//! classifier's `s2new.fc_scores.weight [1024, 1280]`), unused mask-head keys are ignored, and a
//! torchvision-named state dict imports to a model that gives torchvision's own detections.
//! (The `.pth` reader itself is tested bit-exactly on files written by PyTorch, in
//! `src/checkpoint`.)

use std::path::Path;

use ctmask::checkpoint::import::{import_value, original_key};
use ctmask::checkpoint::{DType, RawTensor, Value};
use ctmask::model::config::{MaskHeadKind, ModelConfig, Semantics};
use ctmask::model::{MaskRcnn, deterministic_init};
use tch::{Device, Kind};

fn raw(t: &tch::Tensor) -> RawTensor {
    let t = t.to_kind(Kind::Float).contiguous();
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    RawTensor {
        dtype: DType::F32,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The original's nested checkpoint layout around a state dict.
fn checkpoint(model: &MaskRcnn, rename: impl Fn(&str) -> String) -> Value {
    let mut sd: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
    sd.sort_by(|a, b| a.0.cmp(&b.0));
    let dict = sd
        .iter()
        .map(|(k, t)| {
            let v = if t.kind() == Kind::Int64 {
                let mut r = raw(t);
                r.dtype = DType::I64;
                r.data = vec![0; 8];
                Value::Tensor(r)
            } else {
                Value::Tensor(raw(t))
            };
            (Value::Str(rename(k)), v)
        })
        .collect();
    let floats = |v: &[f64]| Value::Tuple(v.iter().map(|&x| Value::Float(x)).collect());
    let anchors = Value::Object {
        class: "torchvision.models.detection.anchor_utils.AnchorGenerator".into(),
        args: vec![],
        state: Some(Box::new(Value::Dict(vec![
            (
                Value::Str("sizes".into()),
                Value::Tuple(vec![
                    Value::Tuple(
                        [2i64, 4, 8, 16, 32].iter().map(|&x| Value::Int(x)).collect()
                    );
                    5
                ]),
            ),
            (
                Value::Str("aspect_ratios".into()),
                Value::Tuple(vec![floats(&[0.1, 0.25, 0.5, 1.0, 1.5, 2.0]); 5]),
            ),
        ]))),
    };
    Value::Dict(vec![
        (Value::Str("model_weights".into()), Value::Dict(dict)),
        (Value::Str("anchor_generator".into()), anchors),
        (Value::Str("epoch".into()), Value::Str("50".into())),
        (Value::Str("model_name".into()), Value::Str("x".into())),
    ])
}

/// torchvision 0.26's name for an original key (the forward map of tv_name_map.json).
fn tv_key(k: &str) -> String {
    let p: Vec<&str> = k.split('.').collect();
    match p.as_slice() {
        ["backbone", "fpn", b, i, w] => format!("backbone.fpn.{b}.{i}.0.{w}"),
        ["rpn", "head", "conv", w] => format!("rpn.head.conv.0.0.{w}"),
        ["roi_heads", "mask_head", f, w] if f.starts_with("mask_fcn") => {
            let n: usize = f[8..].parse().unwrap();
            format!("roi_heads.mask_head.{}.0.{w}", n - 1)
        }
        _ => k.to_string(),
    }
}

#[test]
fn tv_names_round_trip() {
    let m = MaskRcnn::new(&ModelConfig::r50_fpn4(), Device::Cpu).unwrap();
    for (k, _) in m.parameter_shapes() {
        assert_eq!(original_key(&tv_key(&k)), k);
    }
}

#[test]
fn released_full_classifier_shape_imports_and_runs() {
    // the old full classifier: 5-level BatchNorm R50, S 1024 x 1280 (N 256), unused mask head
    let mut cfg = ModelConfig::preset("r50-fpn5")
        .unwrap()
        .into_classifier(256, 1024);
    cfg.mask_head = MaskHeadKind::Full;
    let src = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&src);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("cls.safetensors");
    let r = import_value(
        &checkpoint(&src, str::to_string),
        Path::new("classification_model.pth"),
        "r50-fpn5",
        &dst,
    )
    .unwrap();
    assert!(
        r.inferred
            .iter()
            .any(|s| s.contains("N 256") && s.contains("S width 1024")),
        "{:?}",
        r.inferred
    );
    assert!(
        r.ignored.iter().any(|s| s.contains("mask-head")),
        "{:?}",
        r.ignored
    );
    let m = MaskRcnn::load(&dst, Device::Cpu).unwrap();
    assert_eq!(m.cfg.fpn_levels(), 5);
    assert_eq!(m.cfg.mask_head, MaskHeadKind::None);
    let shapes: std::collections::BTreeMap<_, _> = m.parameter_shapes().into_iter().collect();
    assert_eq!(shapes["s2new.fc_scores.weight"], vec![1024, 1280]);
    assert!(m.vs.variables()["s2new.fc_scores.weight"].equal(&src.vs.variables()["s2new.fc_scores.weight"]));
    let c = m.classify(&super::parity::image(0)).unwrap();
    assert!(c.logits.iter().all(|v| v.is_finite()));
    // a preset that does not describe the checkpoint fails naming the key
    let mut seg_cfg = ModelConfig::preset("r18-t1").unwrap();
    seg_cfg.num_classes = 2;
    seg_cfg.class_names = vec!["lesion".into()];
    let light = MaskRcnn::new(&seg_cfg, Device::Cpu).unwrap();
    let e = import_value(
        &checkpoint(&light, |k| {
            if k.contains("cls_score.weight") {
                "junk".into()
            } else {
                k.to_string()
            }
        }),
        Path::new("x.pth"),
        "r18-t1",
        &dst,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("x.pth") && e.contains("cls_score.weight"), "{e}");
}

#[test]
fn imported_torchvision_state_dict_gives_torchvision_detections() {
    let cfg = ModelConfig::preset("r18-t1").unwrap();
    let src = MaskRcnn::new(&cfg, Device::Cpu).unwrap();
    deterministic_init::fill(&src);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("tv.safetensors");
    import_value(
        &checkpoint(&src, tv_key),
        Path::new("tv.pth"),
        "torchvision",
        &dst,
    )
    .unwrap();
    let m = MaskRcnn::load(&dst, Device::Cpu).unwrap();
    assert_eq!(m.cfg.semantics, Semantics::Torchvision);
    let fx: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(
        super::common::repo().join("tests/fixtures/parity/parity_r18_t1.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    // order-free, as the parity tests: near-tied scores may swap ranks on another CPU
    assert_eq!(super::parity::compare_detections(&m, &fx, 0), Ok(()));
}
