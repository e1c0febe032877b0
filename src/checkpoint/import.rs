//! `ctmask import-weights`: turn an original COVID-CT-Mask-Net (or torchvision) `.pth` into a
//! ctmask model file. What the keys tell (backbone depth, truncation, classes, mask head and its
//! width, N and width of module S, batch-norm kind) is inferred; what they cannot tell (FPN pool
//! level, batch-norm eps of frozen checkpoints, post-processing semantics) comes from the preset;
//! anchors come from the pickled AnchorGenerator when the file has one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{Kind, Tensor};

use super::{AnchorSpec, DType, RawTensor};
use crate::model::MaskRcnn;
use crate::model::config::{BackboneKind, MaskHeadKind, ModelConfig, Semantics};
use crate::{Error, Result};

/// Import presets: the name and what it stands for.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "r50-fpn5-frozenbn",
        "released full segmentation models: torchvision 0.3.0 Mask R-CNN, 5 FPN levels, FrozenBatchNorm2d without eps",
    ),
    (
        "r50-fpn5",
        "released full classifiers: BatchNorm2d, 5 FPN levels (unused mask-head keys are ignored)",
    ),
    (
        "r50-fpn4",
        "checkpoints of the original's latest (HEAD) code: BatchNorm2d, 4 FPN levels",
    ),
    (
        "r18-t1",
        "lightweight ResNet18 truncated at layer3 (one FPN level)",
    ),
    (
        "r34-t1",
        "lightweight ResNet34 truncated at layer3 (one FPN level)",
    ),
    (
        "torchvision",
        "a state dict of today's torchvision MaskRCNN/FasterRCNN built with the original's anchors and heads; torchvision post-processing",
    ),
];

/// What the import found and did, for printing.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub inferred: Vec<String>,
    pub ignored: Vec<String>,
    pub config: Option<ModelConfig>,
}

/// Today's torchvision key -> the original key (inverse of `tests/fixtures/parity/tv_name_map.json`).
pub fn original_key(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [
            "backbone",
            "fpn",
            blocks @ ("inner_blocks" | "layer_blocks"),
            i,
            "0",
            w,
        ] => {
            format!("backbone.fpn.{blocks}.{i}.{w}")
        }
        ["rpn", "head", "conv", "0", "0", w] => format!("rpn.head.conv.{w}"),
        ["roi_heads", "mask_head", k, "0", w] if k.chars().all(|c| c.is_ascii_digit()) => {
            let k: usize = k.parse().unwrap_or(0);
            format!("roi_heads.mask_head.mask_fcn{}.{w}", k + 1)
        }
        _ => key.to_string(),
    }
}

fn shape(keys: &HashMap<String, RawTensor>, k: &str) -> Option<Vec<usize>> {
    keys.get(k).map(|t| t.shape.clone())
}

/// Infer the architecture from the keys on top of the preset's defaults.
pub fn infer_config(
    preset: &str,
    keys: &HashMap<String, RawTensor>,
    anchors: Option<&AnchorSpec>,
    report: &mut ImportReport,
) -> Result<ModelConfig> {
    let (base, semantics) = if preset == "torchvision" {
        (ModelConfig::r50_fpn5_frozenbn(), Semantics::Torchvision)
    } else {
        let c = ModelConfig::preset(preset).ok_or_else(|| {
            Error::Input(format!(
                "unknown preset {preset:?}; known: {}",
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            ))
        })?;
        (c, Semantics::Original)
    };
    let mut cfg = base;
    let has = |k: &str| keys.contains_key(k);
    cfg.backbone = if has("backbone.body.layer1.0.conv3.weight") {
        BackboneKind::Resnet50
    } else if has("backbone.body.layer1.2.conv1.weight") {
        BackboneKind::Resnet34
    } else if has("backbone.body.layer1.0.conv1.weight") {
        BackboneKind::Resnet18
    } else {
        return Err(Error::Input(
            "no backbone.body.layer1.0.conv1.weight: not a Mask R-CNN state dict".into(),
        ));
    };
    let last_layer = (1..=4)
        .rev()
        .find(|l| has(&format!("backbone.body.layer{l}.0.conv1.weight")))
        .unwrap_or(4);
    cfg.truncation = if cfg.backbone == BackboneKind::Resnet50 {
        0
    } else {
        (4 - last_layer) as u8
    };
    report.inferred.push(format!(
        "backbone {:?}, truncation {}",
        cfg.backbone, cfg.truncation
    ));
    if cfg.backbone != BackboneKind::Resnet50 {
        cfg.fpn_pool_level = false;
        cfg.mask_head = MaskHeadKind::Light;
    }
    let tracked = keys.keys().any(|k| k.ends_with("num_batches_tracked"));
    cfg.bn_num_batches_tracked = tracked;
    if tracked {
        cfg.bn_eps = 1e-5;
    }
    report.inferred.push(format!(
        "batch norm: {} (eps {})",
        if tracked {
            "BatchNorm2d"
        } else {
            "FrozenBatchNorm2d"
        },
        cfg.bn_eps
    ));
    let nc = shape(keys, "roi_heads.box_predictor.cls_score.weight")
        .ok_or_else(|| Error::Input("missing roi_heads.box_predictor.cls_score.weight".into()))?[0]
        as i64;
    cfg.num_classes = nc;
    cfg.class_names = match nc {
        3 => vec!["ggo".into(), "consolidation".into()],
        2 => vec!["lesion".into()],
        n => (1..n).map(|i| format!("class{i}")).collect(),
    };
    report.inferred.push(format!(
        "{nc} classes including background ({})",
        cfg.class_names.join(", ")
    ));
    if let Some(s) = shape(keys, "s2new.fc_scores.weight") {
        let (sf, n5) = (s[0] as i64, s[1] as i64);
        cfg = cfg.into_classifier(n5 / 5, sf);
        report
            .inferred
            .push(format!("classifier: N {} detections, S width {sf}", n5 / 5));
        if keys.keys().any(|k| k.starts_with("roi_heads.mask_")) {
            report.ignored.push("mask-head keys of a classifier checkpoint (unused by the classifier, the original's issue #9)".into());
        }
    } else if let Some(s) = shape(keys, "roi_heads.mask_head.mask_fcn1.weight") {
        cfg.mask_head = if s[0] == 128 {
            MaskHeadKind::Light
        } else {
            MaskHeadKind::Full
        };
        report.inferred.push(format!("mask head {:?}", cfg.mask_head));
    } else {
        cfg.mask_head = MaskHeadKind::None;
        report.inferred.push("no mask head".into());
    }
    let levels = cfg.fpn_levels();
    if let Some(a) = anchors {
        let take = |v: &Vec<Vec<f64>>| {
            (0..levels)
                .map(|i| v.get(i).or(v.last()).cloned().unwrap_or_default())
                .collect()
        };
        cfg.anchors.anchor_sizes = take(&a.sizes);
        cfg.anchors.anchor_aspect_ratios = take(&a.aspect_ratios);
        report.inferred.push(format!(
            "anchors from the pickled AnchorGenerator: sizes {:?}, ratios {:?}",
            a.sizes.first(),
            a.aspect_ratios.first()
        ));
    } else {
        let s = cfg.anchors.anchor_sizes[0].clone();
        let r = cfg.anchors.anchor_aspect_ratios[0].clone();
        cfg.anchors.anchor_sizes = vec![s; levels];
        cfg.anchors.anchor_aspect_ratios = vec![r; levels];
        report
            .inferred
            .push("no pickled AnchorGenerator: the original's anchors".into());
    }
    let cfg = cfg.with_semantics(semantics);
    cfg.validate().map_err(Error::Config)?;
    Ok(cfg)
}

fn to_tensor(name: &str, t: &RawTensor) -> Result<Tensor> {
    let kind = match t.dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F64 => Kind::Double,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::U8 => Kind::Uint8,
        other => {
            return Err(Error::Input(format!(
                "{name}: unsupported dtype {}",
                other.name()
            )));
        }
    };
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(&t.data, &shape, kind)?)
}

/// Import `src` with `preset` and write the ctmask model file `dst`.
pub fn import(src: &Path, preset: &str, dst: &Path) -> Result<ImportReport> {
    let value = super::load_torch_file(src).map_err(|e| Error::model_file(src, e.to_string()))?;
    import_value(&value, src, preset, dst)
}

/// Import an already loaded checkpoint (`src` names it in errors and provenance).
pub fn import_value(value: &super::Value, src: &Path, preset: &str, dst: &Path) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let value = value.clone();
    let sd = super::state_dict(&value).map_err(|e| Error::model_file(src, e.to_string()))?;
    let keys: HashMap<String, RawTensor> = sd.into_iter().map(|(k, t)| (original_key(&k), t)).collect();
    let anchors = super::anchor_generator(&value);
    let cfg = infer_config(preset, &keys, anchors.as_ref(), &mut report)
        .map_err(|e| Error::model_file(src, e.to_string()))?;
    let model = MaskRcnn::new(&cfg, tch::Device::Cpu)?;
    let vars = model.vs.variables();
    let mut missing: Vec<&String> = vars.keys().filter(|k| !keys.contains_key(*k)).collect();
    missing.sort();
    if let Some(k) = missing.first() {
        return Err(Error::model_file(
            src,
            format!("missing tensor {k} ({} missing in all)", missing.len()),
        ));
    }
    let mut ignored: Vec<&String> = keys.keys().filter(|k| !vars.contains_key(*k)).collect();
    ignored.sort();
    for k in &ignored {
        let benign = k.starts_with("roi_heads.mask_") || k.ends_with("num_batches_tracked");
        if !benign {
            return Err(Error::model_file(
                src,
                format!("unexpected tensor {k}: the preset does not describe this checkpoint"),
            ));
        }
    }
    if !ignored.is_empty() {
        report.ignored.push(format!(
            "{} tensors ignored: {}",
            ignored.len(),
            ignored
                .iter()
                .take(4)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    tch::no_grad(|| -> Result<()> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let src_t = &keys[name];
            let mut var = vars[name].shallow_clone();
            let want: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
            if src_t.shape != want {
                return Err(Error::model_file(
                    src,
                    format!(
                        "{name}: shape {:?} in the checkpoint, {want:?} expected",
                        src_t.shape
                    ),
                ));
            }
            var.f_copy_(&to_tensor(name, src_t)?.to_kind(var.kind()))?;
        }
        Ok(())
    })?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "imported_from".into(),
        src.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    meta.insert("import_preset".into(), preset.into());
    if let Some(e) = value.get("epoch").and_then(|v| {
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_i64().map(|i| i.to_string()))
    }) {
        meta.insert("epoch".into(), e);
    }
    if let Some(n) = value.get("model_name").and_then(|v| v.as_str()) {
        meta.insert("model_name".into(), n.into());
    }
    model.save(dst, &meta)?;
    report.config = Some(cfg);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_names_map_back() {
        assert_eq!(
            original_key("backbone.fpn.inner_blocks.2.0.weight"),
            "backbone.fpn.inner_blocks.2.weight"
        );
        assert_eq!(
            original_key("backbone.fpn.layer_blocks.0.0.bias"),
            "backbone.fpn.layer_blocks.0.bias"
        );
        assert_eq!(original_key("rpn.head.conv.0.0.weight"), "rpn.head.conv.weight");
        assert_eq!(
            original_key("roi_heads.mask_head.0.0.weight"),
            "roi_heads.mask_head.mask_fcn1.weight"
        );
        assert_eq!(
            original_key("roi_heads.mask_head.3.0.bias"),
            "roi_heads.mask_head.mask_fcn4.bias"
        );
        assert_eq!(
            original_key("backbone.body.layer1.0.conv1.weight"),
            "backbone.body.layer1.0.conv1.weight"
        );
        assert_eq!(original_key("rpn.head.conv.weight"), "rpn.head.conv.weight");
    }
}
