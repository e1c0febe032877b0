"""COVID-CT-Mask-Net classifier reference (spec §4.1-4.4): ranked [score, dx, dy, dw, dh] rows and
the logits of module S, written to tests/fixtures/parity/classifier_<variant>.safetensors.

Needs the reference venv (torch 2.11, torchvision 0.26, numpy, safetensors, pillow), e.g.
    /work/refenv/venv/bin/python scripts/reference/classifier_reference.py [--variants r18_t1]
Model: torchvision FasterRCNN (no mask head) built like the segmentation variant but with
box_score_thresh=-0.01, box_nms_thresh=0.75, box_detections_per_img=N; weights from the
deterministic generator (the same values as the segmentation fixture, plus s2new.*).
The RoI post-processing is re-done here as the original does it (§4.3): decode + clip, drop the
background column, flatten, keep area > 0, keep score > -0.01, batched_nms(0.75) per class, first N.
No padding: when fewer than N rows survive, `count` < N is recorded and no logits are written.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torchvision.ops import boxes as box_ops

import tv_models

SCORE_THRESH = -0.01
NMS_THRESH = 0.75


def ranked_rows(model, class_logits, box_regression, proposals, image_shape, n_keep):
    """§4.3 without the padding hack. Returns dict of tensors (rows in batched_nms order)."""
    r, n_c = class_logits.shape
    res_boxes = box_regression.view(r, n_c, 4)  # raw deltas
    boxes = model.roi_heads.box_coder.decode(box_regression, [proposals])  # [R, n_c, 4]
    scores = F.softmax(class_logits, -1)
    boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
    labels = torch.arange(n_c, device=scores.device).view(1, -1).expand_as(scores)
    roi = torch.arange(r, device=scores.device).view(-1, 1).expand_as(scores)
    boxes, scores, labels, res_boxes, roi = (t[:, 1:] for t in (boxes, scores, labels, res_boxes, roi))
    boxes, res_boxes = boxes.reshape(-1, 4), res_boxes.reshape(-1, 4)
    scores, labels, roi = scores.flatten(), labels.flatten(), roi.flatten()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k = torch.where(area > 0)[0]
    boxes, scores, labels, res_boxes, roi = boxes[k], scores[k], labels[k], res_boxes[k], roi[k]
    k = torch.where(scores > SCORE_THRESH)[0]
    boxes, scores, labels, res_boxes, roi = boxes[k], scores[k], labels[k], res_boxes[k], roi[k]
    candidates = scores.numel()
    keep = box_ops.batched_nms(boxes, scores, labels, NMS_THRESH)[:n_keep]
    return {
        "ranked": torch.cat([scores[keep].view(-1, 1), res_boxes[keep]], dim=1).contiguous(),
        "boxes": boxes[keep].contiguous(),
        "labels": labels[keep].contiguous(),
        "roi_index": roi[keep].contiguous(),
        "count": torch.tensor(keep.numel(), dtype=torch.int64),
        "candidates": torch.tensor(candidates, dtype=torch.int64),
    }


def run(variant: str, images) -> dict:
    from safetensors.torch import save_file  # here, so that bench_torchvision.py needs no safetensors

    import make_parity_fixtures as mpf
    _, n, s = tv_models.S_SECTIONS[variant]
    sd = tv_models.original_state_dict(variant, classifier=True)
    assert sd["s2new.fc_scores.weight"].shape == (s, 5 * n)
    model = tv_models.build(
        variant, classifier=True, box_score_thresh=SCORE_THRESH, box_nms_thresh=NMS_THRESH, box_detections_per_img=n
    )
    tv_models.load_original(model, sd)
    model.eval()
    rec = {}
    model.roi_heads.register_forward_pre_hook(lambda m, a: rec.__setitem__("props", a[1][0]))
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: rec.__setitem__("box", o))
    out, summary = {}, {}
    for i, img in enumerate(images):
        with torch.no_grad():
            det = model([img])[0]
            cl, br = rec["box"]
            rows = ranked_rows(model, cl, br, rec["props"], (512, 512), n)
        p = f"img{i}."
        out[p + "rpn.count"] = torch.tensor(rec["props"].shape[0], dtype=torch.int64)
        for k, v in rows.items():
            out[p + k] = v
        # torchvision's own postprocess (remove_small_boxes(1e-2) instead of area > 0) for comparison
        same = det["scores"].shape == rows["ranked"][:, 0].shape and torch.equal(det["scores"], rows["ranked"][:, 0])
        count = int(rows["count"])
        if count == n:
            out[p + "logits"] = tv_models.s_forward(sd, rows["ranked"]).contiguous()
        summary[f"img{i}"] = {
            "count": count,
            "candidates": int(rows["candidates"]),
            "torchvision_postprocess_identical_scores": bool(same),
            "logits": out[p + "logits"].tolist() if count == n else None,
        }
    cfg = {
        "variant": variant,
        "N": n,
        "s_features": s,
        "box_score_thresh": SCORE_THRESH,
        "box_nms_thresh": NMS_THRESH,
        "box_detections_per_img": n,
        "rpn_nms_thresh": 0.75,
        "weights_profile": tv_models.det_weights.PROFILE,
        "summary": summary,
        "tensors": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(out.items())},
    }
    path = mpf.OUT / f"classifier_{variant}.safetensors"
    save_file(out, str(path), metadata={"variant": variant})  # one key: safetensors orders metadata randomly
    path.chmod(0o644)
    (mpf.OUT / f"classifier_{variant}.json").write_text(json.dumps(cfg, indent=1) + "\n")
    print(variant, json.dumps(summary), flush=True)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="r50_fpn5_frozenbn,r18_t1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import make_parity_fixtures as mpf

    images = [mpf.load_png(mpf.OUT / f"image{i}.png") for i in range(len(mpf.IMAGE_SEEDS))]
    for v in args.variants.split(","):
        run(v, images)


if __name__ == "__main__":
    main()
