"""Operator fixtures (ops.safetensors): RoIAlign fwd/bwd, NMS, box coder, Matcher, mask paste,
MultiScaleRoIAlign levels, anchors, all computed by torchvision 0.26.

Needs the reference venv (torch 2.11, torchvision 0.26, safetensors); called from
make_parity_fixtures.py. Tensor names are listed in tests/fixtures/parity/README.md.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, nms, roi_align
from torchvision.ops.poolers import LevelMapper

import tv_models

SCALES = {"1": 1.0, "0.25": 0.25, "0.0625": 1.0 / 16}
SAMPLING = {"2": 2, "adaptive": -1}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def roi_align_cases(o: dict) -> None:
    g = _gen(10)
    x = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float32)
    # boxes in FEATURE-map coordinates (x1, y1, x2, y2); map is 24 wide, 20 high
    feat_boxes = torch.tensor(
        [
            [0, 1.0, 2.0, 9.5, 7.25],  # ordinary
            [1, 3.3, 4.7, 17.9, 15.2],  # ordinary, image 1
            [0, -3.0, -2.0, 5.0, 6.0],  # partly outside top-left
            [1, 18.0, 15.0, 30.0, 25.0],  # partly outside bottom-right
            [0, 10.2, 10.4, 10.5, 10.6],  # tiny (< 1 px)
            [1, 7.0, 7.0, 7.0, 7.0],  # zero size
            [0, 0.0, 0.0, 24.0, 20.0],  # whole map
            [1, -8.0, -6.0, 34.0, 28.0],  # larger than the map
            [0, 22.5, 1.0, 23.9, 19.5],  # thin tall at the right edge
            [1, 5.0, 12.0, 3.0, 14.0],  # inverted x (x2 < x1)
            [0, 2.25, 17.75, 20.75, 19.99],  # thin wide at the bottom edge
            [1, -0.9, -0.9, 0.4, 0.4],  # corner, mostly outside
        ],
        dtype=torch.float32,
    )
    g_out = torch.randn(feat_boxes.shape[0], 3, 7, 7, generator=g)
    o["roi_align.input"] = x
    o["roi_align.boxes_feature_coords"] = feat_boxes
    o["roi_align.grad_output"] = g_out
    for sname, scale in SCALES.items():
        rois = feat_boxes.clone()
        rois[:, 1:] = rois[:, 1:] / scale
        o[f"roi_align.scale{sname}.rois"] = rois
        for rname, sr in SAMPLING.items():
            xi = x.clone().requires_grad_(True)
            y = roi_align(xi, rois, (7, 7), spatial_scale=scale, sampling_ratio=sr, aligned=False)
            (y * g_out).sum().backward()
            o[f"roi_align.scale{sname}.sr{rname}.output"] = y.detach()
            o[f"roi_align.scale{sname}.sr{rname}.grad_input"] = xi.grad.detach()


def _greedy_nms_stable(boxes, scores, thr):
    order = torch.sort(scores, descending=True, stable=True)[1]
    iou = box_iou(boxes, boxes)
    keep, removed = [], torch.zeros(len(scores), dtype=torch.bool)
    for i in order.tolist():
        if removed[i]:
            continue
        keep.append(i)
        removed |= iou[i] > thr
    return torch.tensor(keep, dtype=torch.int64)


def nms_cases(o: dict, notes: list) -> None:
    g = _gen(20)
    n = 200
    xy = torch.rand(n, 2, generator=g) * 90
    wh = torch.rand(n, 2, generator=g) * 30 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes = (boxes * 4).round() / 4  # quarter-pixel grid: exact IoU ties possible
    boxes[50:60] = boxes[40:50]  # exact duplicate boxes
    scores = (torch.rand(n, generator=g) * 20).floor() / 20  # 20 distinct values: many ties
    scores[55] = scores[45]
    idxs = torch.randint(0, 3, (n,), generator=g)
    o["nms.boxes"], o["nms.scores"], o["nms.idxs"] = boxes, scores, idxs
    for t in (0.5, 0.75):
        k = nms(boxes, scores, t)
        o[f"nms.keep_iou{t}"] = k
        if not torch.equal(k, _greedy_nms_stable(boxes, scores, t)):
            notes.append(f"nms thr {t}: torchvision differs from a stable-sort greedy NMS")
        o[f"batched_nms.keep_iou{t}"] = batched_nms(boxes, scores, idxs, t)


def box_coder_cases(o: dict) -> None:
    g = _gen(30)
    m = 20
    xy = torch.rand(m, 2, generator=g) * 100
    wh = torch.rand(m, 2, generator=g) * 60 + 1
    props = torch.cat([xy, xy + wh], 1)
    xy2 = xy + torch.randn(m, 2, generator=g) * 8
    wh2 = wh * torch.exp(torch.randn(m, 2, generator=g) * 0.4)
    gt = torch.cat([xy2, xy2 + wh2], 1)
    o["box_coder.proposals"], o["box_coder.reference"] = props, gt
    for name, w in (("w1111", (1.0, 1.0, 1.0, 1.0)), ("w10_10_5_5", (10.0, 10.0, 5.0, 5.0))):
        coder = det_utils.BoxCoder(w)
        o[f"box_coder.{name}.encoded"] = coder.encode([gt], [props])[0]
        codes = torch.randn(m, 8, generator=g) * 2.0
        codes[:5, 2] = torch.tensor([4.0, 4.2, 6.0, 30.0, 100.0]) * w[2]  # dw beyond log(1000/16)
        codes[5:10, 7] = torch.tensor([4.1, 4.2, 8.0, -9.0, 50.0]) * w[3]  # dh of the 2nd box set
        o[f"box_coder.{name}.codes"] = codes
        o[f"box_coder.{name}.decoded"] = coder.decode(codes, [props])  # [m, 2, 4]
    o["box_coder.bbox_xform_clip"] = torch.tensor(math.log(1000.0 / 16), dtype=torch.float64)


def matcher_cases(o: dict) -> None:
    g = _gen(40)
    iou = (torch.rand(5, 40, generator=g) * 20).floor() / 20  # multiples of 0.05: ties
    iou[:, 10] = iou[:, 11]  # duplicate column
    iou[0, 3], iou[1, 3] = 0.9, 0.9  # tie between two GT for one prediction
    iou[2, :] = iou[2, :] * 0.4  # GT 2 has only low-quality matches
    iou[2, 7] = iou[2, 8] = iou[2].max() + 0.01  # ... with a tie for its best
    iou[3, 20], iou[3, 21], iou[3, 22], iou[3, 23] = 0.7, 0.3, 0.75, 0.5  # exactly on thresholds
    iou[4, 30:34] = 0.0  # zero rows in a column
    iou[:, 35] = 0.0
    o["matcher.iou"] = iou
    o["matcher.rpn_0.7_0.3_lowq"] = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou.clone())
    o["matcher.roi_0.75_0.5"] = det_utils.Matcher(0.75, 0.5, allow_low_quality_matches=False)(iou.clone())


def paste_cases(o: dict) -> None:
    g = _gen(50)
    masks = torch.rand(5, 1, 28, 28, generator=g)
    boxes = torch.tensor(
        [[10.3, 5.7, 40.2, 30.9], [-6.0, -4.5, 20.0, 12.0], [60.5, 50.0, 90.0, 70.0], [30.0, 30.0, 30.4, 30.2],
         [0.0, 0.0, 80.0, 64.0]],
        dtype=torch.float32,
    )
    o["paste.masks"], o["paste.boxes"] = masks, boxes
    o["paste.image_hw"] = torch.tensor([64, 80], dtype=torch.int64)
    o["paste.output"] = paste_masks_in_image(masks, boxes, (64, 80), padding=1)


def pooler_cases(o: dict) -> None:
    sides = torch.tensor([1.0, 10.0, 56.0, 111.9, 112.0, 112.1, 150.0, 223.9, 224.0, 300.0, 448.0, 500.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    boxes = torch.cat([boxes, torch.tensor([[5.0, 5.0, 405.0, 45.0], [0.0, 0.0, 0.0, 0.0]])])
    o["levels.boxes"] = boxes
    o["levels.level_k2_5"] = LevelMapper(2, 5)([boxes]).to(torch.int64) + 2  # absolute level k
    g = _gen(60)
    feats = OrderedDict(
        (k, torch.randn(1, 4, s, s, generator=g)) for k, s in (("0", 32), ("1", 16), ("2", 8), ("3", 4), ("pool", 2))
    )
    rois = torch.tensor(
        [[2.0, 3.0, 20.0, 30.0], [0.0, 0.0, 128.0, 128.0], [50.0, 60.0, 52.0, 61.0], [10.0, 70.0, 120.0, 90.0],
         [-10.0, -5.0, 60.0, 40.0], [64.0, 64.0, 127.0, 127.0]]
    )
    for k, v in feats.items():
        o[f"msroialign.feature.{k}"] = v
    o["msroialign.boxes"] = rois
    o["msroialign.image_hw"] = torch.tensor([128, 128], dtype=torch.int64)
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    o["msroialign.output"] = pool(feats, [rois], [(128, 128)])


def anchor_cases(o: dict) -> None:
    ag = tv_models.anchor_generator(2)
    img = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feats = [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 3)]
    o["anchors.cell"] = ag.generate_anchors(tv_models.ANCHOR_SIZES, tv_models.ANCHOR_RATIOS)
    o["anchors.image_64x96_feats_4x6_2x3"] = ag(img, feats)[0]


def write(path: Path) -> list[str]:
    o: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    roi_align_cases(o)
    nms_cases(o, notes)
    box_coder_cases(o)
    matcher_cases(o)
    paste_cases(o)
    pooler_cases(o)
    anchor_cases(o)
    save_file({k: v.contiguous() for k, v in o.items()}, str(path))
    for n in notes:
        print("NOTE:", n)
    return notes
