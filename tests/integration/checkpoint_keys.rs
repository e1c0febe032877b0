//! VarStore paths equal the original checkpoint keys (`original_state_dict_keys.txt`) with the
//! same shapes, for every variant listed there.

use std::collections::BTreeMap;

use ctmask::model::MaskRcnn;
use ctmask::model::config::{BackboneKind, MaskHeadKind, ModelConfig};

/// Sections of the key listing: title -> (key -> shape).
fn sections() -> Vec<(String, BTreeMap<String, Vec<i64>>)> {
    let text =
        std::fs::read_to_string(super::common::shared().join("spec/original_state_dict_keys.txt")).unwrap();
    let mut out: Vec<(String, BTreeMap<String, Vec<i64>>)> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            out.push((title.to_string(), BTreeMap::new()));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (k, s) = line.split_once('\t').expect("key<TAB>shape");
            let shape: Vec<i64> = s
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| x.trim().parse().unwrap())
                .collect();
            out.last_mut()
                .expect("a section precedes keys")
                .1
                .insert(k.to_string(), shape);
        }
    }
    out
}

/// The config a section title describes.
fn config_for(title: &str) -> ModelConfig {
    let nc = if title.contains("(n_c=3)") { 3 } else { 2 };
    let names = if nc == 3 {
        vec!["ggo".into(), "consolidation".into()]
    } else {
        vec!["lesion".into()]
    };
    let mut c = if title.contains("resnet50") {
        if title.contains("old torchvision") {
            ModelConfig::r50_fpn5_frozenbn()
        } else if title.contains("OLD") {
            ModelConfig::preset("r50-fpn5").unwrap()
        } else {
            ModelConfig::r50_fpn4()
        }
    } else {
        let b = if title.contains("resnet18") {
            BackboneKind::Resnet18
        } else {
            BackboneKind::Resnet34
        };
        let t = title
            .split("_t")
            .nth(1)
            .and_then(|s| s[..1].parse().ok())
            .unwrap();
        ModelConfig::lightweight(b, t)
    };
    c.num_classes = nc;
    c.class_names = names;
    if title.starts_with("cls_") {
        let (n, s) = if title.contains("s=1024") {
            (256, 1024)
        } else {
            (128, 512)
        };
        let with_mask = title.contains("with mask head");
        c = c.into_classifier(n, s);
        if with_mask {
            c.mask_head = MaskHeadKind::Full;
        }
    }
    c
}

#[test]
fn varstore_paths_are_the_original_keys_for_every_variant() {
    let secs = sections();
    assert_eq!(secs.len(), 17, "17 variants listed");
    for (title, keys) in secs {
        let cfg = config_for(&title);
        let model = MaskRcnn::new(&cfg, tch::Device::Cpu).unwrap();
        let ours: BTreeMap<String, Vec<i64>> = model.parameter_shapes().into_iter().collect();
        let missing: Vec<_> = keys.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !keys.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{title}: missing {missing:?} extra {extra:?}"
        );
        for (k, shape) in &keys {
            assert_eq!(&ours[k], shape, "{title}: shape of {k}");
        }
        // the listing's total_params (weights, biases and BN affine) equals ours
        let total: i64 = ours
            .iter()
            .filter(|(k, _)| !k.contains("running_") && !k.ends_with("num_batches_tracked"))
            .map(|(_, s)| s.iter().product::<i64>())
            .sum();
        let want: i64 = title
            .split("total_params=")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let tracked: i64 = ours.keys().filter(|k| k.ends_with("num_batches_tracked")).count() as i64;
        assert!(
            total == want || total + tracked == want,
            "{title}: {total} params vs {want}"
        );
    }
}

#[test]
fn trainable_parameters_of_heads_bn_match_spec_4_5() {
    use ctmask::training::{UpdateType, classifier_parameters};
    let count = |cfg: &ModelConfig, u| -> usize {
        let m = MaskRcnn::new(cfg, tch::Device::Cpu).unwrap();
        classifier_parameters(&m, u).iter().map(|(_, t)| t.numel()).sum()
    };
    let full = ModelConfig::r50_fpn4().into_classifier(256, 1024);
    assert_eq!(count(&full, UpdateType::HeadsBn), 2_364_419 + 45_440);
    assert_eq!(count(&full, UpdateType::Heads), 2_364_419);
    let light = ModelConfig::preset("r18-t1").unwrap().into_classifier(128, 512);
    assert_eq!(count(&light, UpdateType::HeadsBn), 592_387 + 3_712);
    // downsample batch norms are not trained: 'bn' is not in their names
    let m = MaskRcnn::new(&full, tch::Device::Cpu).unwrap();
    assert!(
        classifier_parameters(&m, UpdateType::HeadsBn)
            .iter()
            .all(|(n, _)| !n.contains("downsample"))
    );
}
