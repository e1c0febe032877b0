"""torchvision 0.26 Mask R-CNN configured like COVID-CT-Mask-Net, for the ctmask parity reference.

Needs the reference venv: torch 2.11, torchvision 0.26, numpy, safetensors
(e.g. /work/refenv/venv/bin/python). Variants:

  r50_fpn5_frozenbn  ResNet50 + FPN + LastLevelMaxPool (levels '0'..'3','pool'), FrozenBatchNorm2d
                     with eps=0 (torchvision 0.3.0 semantics), mask head 4x256 (the Oct 2020 weights)
  r50_fpn4           ResNet50 + FPN without extra block (levels '0'..'3'), BatchNorm2d eps 1e-5
                     (HEAD code); the module is put in eval() by build()
  r18_t1             ResNet18 up to layer3, one FPN level '0' (stride 16), mask head 1x128

Weights: original_state_dict(variant) gives the original-naming state dict from the deterministic
generator (det_weights.py); load_original() renames it with original_to_tv() and loads it strictly.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import det_weights

VARIANTS = ("r50_fpn5_frozenbn", "r50_fpn4", "r18_t1")
NUM_CLASSES = 3  # bg, GGO, consolidation
ANCHOR_SIZES = (2, 4, 8, 16, 32)
ANCHOR_RATIOS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)

# Which listing of original_state_dict_keys.txt each variant follows (n_c replaced by 3).
KEY_SECTIONS = {
    "r50_fpn5_frozenbn": "seg_resnet50_merge(n_c=2) [old torchvision-0.3.0 code, FrozenBN]",
    "r50_fpn4": "seg_resnet50_both(n_c=3) [HEAD code, BatchNorm2d]",
    "r18_t1": "seg_resnet18_t1_merge(n_c=2)",
}
# S module (classifier) listings: (section, N, s_features)
S_SECTIONS = {
    "r50_fpn5_frozenbn": ("cls_resnet50_both(n_c=3) OLD (with mask head)", 256, 1024),
    "r50_fpn4": ("cls_resnet50_both(n_c=3) OLD (with mask head)", 256, 1024),
    "r18_t1": ("cls_resnet18_t1_merge(n_c=2)", 128, 512),
}

# Segmentation hyperparameters (spec §2.3-2.6, §2.8); keep torchvision's argument names.
SEG_KWARGS = dict(
    min_size=512,
    max_size=1024,
    image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225],
    rpn_pre_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=2000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.75,
    rpn_fg_iou_thresh=0.7,
    rpn_bg_iou_thresh=0.3,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.75,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
    box_fg_iou_thresh=0.75,
    box_bg_iou_thresh=0.5,
    box_batch_size_per_image=256,
    box_positive_fraction=0.75,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
)

# ---------------------------------------------------------------------------------------------
# Name mapping original (torchvision 0.3.0 / COVID-CT-Mask-Net) -> torchvision 0.26.
# This table is also the spec of ctmask's `torchvision` import preset (written out as
# tests/fixtures/parity/tv_name_map.json by write_name_map_json()). Rules are applied in order,
# first full match wins; keys matching no rule are identical in both namings.
#
#   original                                         torchvision 0.26
#   backbone.fpn.inner_blocks.{i}.{weight,bias}      backbone.fpn.inner_blocks.{i}.0.{weight,bias}
#   backbone.fpn.layer_blocks.{i}.{weight,bias}      backbone.fpn.layer_blocks.{i}.0.{weight,bias}
#   rpn.head.conv.{weight,bias}                      rpn.head.conv.0.0.{weight,bias}
#   roi_heads.mask_head.mask_fcn{k}.{weight,bias}    roi_heads.mask_head.{k-1}.0.{weight,bias}
#   everything else (backbone.body.*, box head/predictor, mask predictor, s2new.*)   unchanged
# ---------------------------------------------------------------------------------------------
NAME_RULES = [
    (r"backbone\.fpn\.inner_blocks\.(\d+)\.(weight|bias)", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"backbone\.fpn\.layer_blocks\.(\d+)\.(weight|bias)", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"rpn\.head\.conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
]
_MASK_FCN = re.compile(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)")


def original_to_tv(key: str) -> str:
    """Original checkpoint key -> torchvision 0.26 key (the one place the renaming lives)."""
    for pat, rep in NAME_RULES:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    m = _MASK_FCN.fullmatch(key)
    if m:
        return f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
    return key


def write_name_map_json(path: Path) -> None:
    rules = [{"original": f"^{p}$", "torchvision": r.replace("\\1", "$1").replace("\\2", "$2")} for p, r in NAME_RULES]
    rules.append(
        {
            "original": r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$",
            "torchvision": "roi_heads.mask_head.{$1-1}.0.$2",
            "note": "layer index is k-1 (mask_fcn1 -> 0)",
        }
    )
    doc = {
        "about": "original COVID-CT-Mask-Net / torchvision 0.3.0 state-dict key -> torchvision 0.26 key; "
        "rules in order, regexes match the whole key, first match wins, unmatched keys are identical. "
        "Generated by scripts/reference/tv_models.py (original_to_tv).",
        "rules": rules,
        "notes": [
            "FrozenBatchNorm2d (old torchvision segmentation checkpoints) has no num_batches_tracked; "
            "nn.BatchNorm2d checkpoints (HEAD code) have it. torchvision's FrozenBatchNorm2d drops it on load.",
            "torchvision 0.26 FrozenBatchNorm2d default eps is 1e-5; torchvision 0.3.0 used no eps.",
            "s2new.* (classifier module S) has no torchvision counterpart; keep the names.",
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
class BodyWithFpn(nn.Module):
    """IntermediateLayerGetter + FeaturePyramidNetwork, like torchvision's BackboneWithFPN but
    allowing extra_blocks=None (BackboneWithFPN silently substitutes LastLevelMaxPool)."""

    def __init__(self, body: nn.Module, return_layers, in_channels_list, extra_blocks):
        super().__init__()
        self.body = IntermediateLayerGetter(body, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, 256, extra_blocks=extra_blocks)
        self.out_channels = 256

    def forward(self, x):
        return self.fpn(self.body(x))


def anchor_generator(levels: int) -> AnchorGenerator:
    return AnchorGenerator(sizes=(ANCHOR_SIZES,) * levels, aspect_ratios=(ANCHOR_RATIOS,) * levels)


def build_backbone(variant: str) -> tuple[BodyWithFpn, list[str]]:
    """Backbone and the feature names RoIAlign uses."""
    if variant == "r50_fpn5_frozenbn":
        body = resnet50(weights=None, norm_layer=partial(FrozenBatchNorm2d, eps=0.0))
        rl = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        return BodyWithFpn(body, rl, [256, 512, 1024, 2048], LastLevelMaxPool()), ["0", "1", "2", "3"]
    if variant == "r50_fpn4":
        body = resnet50(weights=None, norm_layer=nn.BatchNorm2d)
        rl = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        return BodyWithFpn(body, rl, [256, 512, 1024, 2048], None), ["0", "1", "2", "3"]
    if variant == "r18_t1":
        body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
        return BodyWithFpn(body, {"layer3": "0"}, [256], None), ["0"]
    raise ValueError(f"unknown variant {variant}")


def num_levels(variant: str) -> int:
    return {"r50_fpn5_frozenbn": 5, "r50_fpn4": 4, "r18_t1": 1}[variant]


def build(variant: str, classifier: bool = False, **overrides) -> nn.Module:
    """MaskRCNN (or, with classifier=True, the mask-less FasterRCNN of §4.1) in eval mode,
    with torchvision's default init (call load_original() for the deterministic weights)."""
    backbone, names = build_backbone(variant)
    light = variant == "r18_t1"
    kw = dict(SEG_KWARGS)
    kw.update(
        rpn_anchor_generator=anchor_generator(num_levels(variant)),
        box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(256 * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, NUM_CLASSES),
    )
    kw.update(overrides)
    if classifier:
        model = FasterRCNN(backbone, num_classes=None, **kw)
    else:
        kw.update(
            mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(256, (128,), 1) if light else MaskRCNNHeads(256, (256,) * 4, 1),
            mask_predictor=MaskRCNNPredictor(128, 128, NUM_CLASSES)
            if light
            else MaskRCNNPredictor(256, 256, NUM_CLASSES),
        )
        model = MaskRCNN(backbone, num_classes=None, **kw)
    return model.eval()


def original_keys(variant: str, classifier: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) in original naming, as original_state_dict_keys.txt lists them (n_c = 3).
    classifier=True drops the mask keys and appends the S keys."""
    sections = det_weights.parse_key_sections()
    keys = det_weights.with_num_classes(det_weights.find_section(sections, KEY_SECTIONS[variant]), NUM_CLASSES)
    if classifier:
        keys = [k for k in keys if not k[0].startswith("roi_heads.mask_")]
        sec, _, _ = S_SECTIONS[variant]
        keys += [k for k in det_weights.find_section(sections, sec) if k[0].startswith("s2new.")]
    return keys


def original_state_dict(variant: str, classifier: bool = False) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(
        (k, torch.from_numpy(v)) for k, v in det_weights.state_dict(original_keys(variant, classifier)).items()
    )


def load_original(model: nn.Module, sd: "OrderedDict[str, torch.Tensor]") -> None:
    """Rename an original-naming state dict and load it strictly; every key must be used and
    every model key filled (s2new.* keys are skipped: S is not part of the torchvision model)."""
    mapped = OrderedDict((original_to_tv(k), v) for k, v in sd.items() if not k.startswith("s2new."))
    if len(mapped) != len([k for k in sd if not k.startswith("s2new.")]):
        raise AssertionError("name mapping is not injective")
    target = model.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise AssertionError(f"key mismatch: missing {missing[:8]} unexpected {unexpected[:8]}")
    for k, v in mapped.items():
        if tuple(target[k].shape) != tuple(v.shape):
            raise AssertionError(f"shape mismatch for {k}: model {tuple(target[k].shape)} vs {tuple(v.shape)}")
    res = model.load_state_dict(mapped, strict=True)
    assert not res.missing_keys and not res.unexpected_keys


def build_with_weights(variant: str, classifier: bool = False, **overrides) -> nn.Module:
    model = build(variant, classifier=classifier, **overrides)
    load_original(model, original_state_dict(variant, classifier))
    return model.eval()


def s_forward(sd, ranked: torch.Tensor) -> torch.Tensor:
    """Module S (§4.4): [N,5] -> view(1,5N) -> fc, relu, fc, relu, fc -> [3] logits."""
    x = ranked.reshape(1, -1)
    x = torch.relu(x @ sd["s2new.fc_scores.weight"].T + sd["s2new.fc_scores.bias"])
    x = torch.relu(x @ sd["s2new.fc_scores_2.weight"].T + sd["s2new.fc_scores_2.bias"])
    return (x @ sd["s2new.fc_scores_img.weight"].T + sd["s2new.fc_scores_img.bias"])[0]


if __name__ == "__main__":
    for v in VARIANTS:
        print(v, "segmentation:", len(build_with_weights(v).state_dict()), "entries loaded")
        print(v, "classifier:", len(build_with_weights(v, classifier=True).state_dict()), "entries loaded")
