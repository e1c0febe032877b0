"""Write tests/fixtures/parity/: the Python reference ctmask's Mask R-CNN is checked against.

Needs the reference venv (torch 2.11, torchvision 0.26, numpy, safetensors, pillow), e.g.
    /work/refenv/venv/bin/python scripts/reference/make_parity_fixtures.py [--only ops,r18_t1,...]
Deterministic: one torch thread, fixed seeds; re-running gives byte-identical files.
What each file holds is documented in tests/fixtures/parity/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.detection.roi_heads import project_masks_on_boxes

import ops_fixtures
import phantom
import tv_models

# output folder: $CTMASK_PARITY_OUT or tests/fixtures/parity
OUT = Path(os.environ.get("CTMASK_PARITY_OUT", Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity"))
IMAGE_SEEDS = (1, 2)
GT_SEED = 7
TRAIN_SEED = 1234
CROP = 16
CROP_CHANNELS = 8
MASK_CROPS = 3
MASK_WINDOW = 64


def load_png(path: Path) -> torch.Tensor:
    """PNG (8-bit grey) -> [3,H,W] float in [0,1], grey copied to 3 channels (§2.1)."""
    a = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    return torch.from_numpy(a.astype(np.float32) / 255.0)[None].expand(3, -1, -1).contiguous()


def write_images() -> list[Path]:
    paths = []
    for i, seed in enumerate(IMAGE_SEEDS):
        p = OUT / f"image{i}.png"
        Image.fromarray(phantom.phantom(seed), mode="L").save(p, optimize=False)
        paths.append(p)
    return paths


def f64(x) -> torch.Tensor:
    return torch.tensor(float(x), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
def eval_fixture(model, variant: str, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    rec: dict[str, object] = {}
    hooks = [
        model.backbone.body.register_forward_hook(lambda m, i, o: rec.__setitem__("body", o)),
        model.backbone.fpn.register_forward_hook(lambda m, i, o: rec.__setitem__("fpn", o)),
        model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: rec.__setitem__("mask_logits", o)),
    ]
    orig_filter = model.rpn.filter_proposals

    def filter_proposals(*a, **k):
        boxes, scores = orig_filter(*a, **k)
        rec["rpn"] = (boxes[0], scores[0])
        return boxes, scores

    model.rpn.filter_proposals = filter_proposals
    out: dict[str, torch.Tensor] = {}
    for i, img in enumerate(images):
        p = f"img{i}."
        with torch.no_grad():
            det = model([img])[0]
            normed = model.transform([img])[0].tensors
        out[p + "input.sum"] = f64(normed.double().sum())
        for k, c in rec["body"].items():
            out[p + f"body.{k}.channel_mean"] = c[0].double().mean(dim=(1, 2)).float()
        for k, f in rec["fpn"].items():
            f = f[0]
            out[p + f"fpn.{k}.sum"] = f64(f.double().sum())
            out[p + f"fpn.{k}.mean"] = f64(f.double().mean())
            out[p + f"fpn.{k}.channel_mean"] = f.double().mean(dim=(1, 2)).float()
            h, w = f.shape[-2:]
            y0, x0 = max((h - CROP) // 2, 0), max((w - CROP) // 2, 0)
            out[p + f"fpn.{k}.crop"] = f[:CROP_CHANNELS, y0 : y0 + CROP, x0 : x0 + CROP].contiguous()
            out[p + f"fpn.{k}.crop_origin"] = torch.tensor([y0, x0], dtype=torch.int64)
        boxes, scores = rec["rpn"]
        out[p + "rpn.boxes"] = boxes.contiguous()
        out[p + "rpn.scores"] = scores.contiguous()
        out[p + "rpn.count"] = torch.tensor(boxes.shape[0], dtype=torch.int64)
        n = det["boxes"].shape[0]
        out[p + "det.count"] = torch.tensor(n, dtype=torch.int64)
        out[p + "det.boxes"] = det["boxes"].contiguous()
        out[p + "det.labels"] = det["labels"].contiguous()
        out[p + "det.scores"] = det["scores"].contiguous()
        probs = det["masks"][:, 0]  # [N,H,W] probabilities (torchvision applies sigmoid)
        thr = 1.0 / (1.0 + math.exp(-0.5))
        out[p + "det.mask_area_gt_sigmoid05"] = (probs > thr).sum(dim=(1, 2)).to(torch.int64)
        out[p + "det.mask_area_gt05"] = (probs > 0.5).sum(dim=(1, 2)).to(torch.int64)
        out[p + "det.mask_prob_sum"] = probs.double().sum(dim=(1, 2)).float()
        ml = rec["mask_logits"]
        k = min(n, MASK_CROPS)
        out[p + "det.mask_logits28"] = ml[torch.arange(k), det["labels"][:k]].contiguous()
        H, W = probs.shape[-2:]
        for j in range(k):
            # the region paste_mask_in_image writes (expanded box, int64 cast, clipped); zero outside
            b = det["boxes"][j : j + 1]
            eb = tv_roi_expand(b, 30.0 / 28.0).to(torch.int64)[0].tolist()
            y0, y1 = max(eb[1], 0), min(eb[3] + 1, H)
            x0, x1 = max(eb[0], 0), min(eb[2] + 1, W)
            region = probs[j, y0:y1, x0:x1]
            rest = probs[j].sum() - region.sum()
            assert abs(float(rest)) < 1e-3, "mask nonzero outside its pasted region"
            crop = region[:MASK_WINDOW, :MASK_WINDOW]  # top-left window of the pasted region
            out[p + f"det.mask{j}"] = crop.to(torch.float16).contiguous()
            out[p + f"det.mask{j}_region"] = torch.tensor([y0, x0, y1, x1], dtype=torch.int64)
    for h in hooks:
        h.remove()
    model.rpn.filter_proposals = orig_filter
    return out


def tv_roi_expand(boxes, scale):
    from torchvision.models.detection.roi_heads import expand_boxes

    return expand_boxes(boxes, scale)


# ----------------------------------------------------------------------------------------------
class Recorder:
    """Wraps a callable attribute and records its arguments and result."""

    def __init__(self, fn, store: list):
        self.fn, self.store = fn, store

    def __getattr__(self, name):  # BELOW_LOW_THRESHOLD etc.
        return getattr(self.fn, name)

    def __call__(self, *a, **k):
        r = self.fn(*a, **k)
        self.store.append((a, r))
        return r


def loss_fixture(model, image: torch.Tensor, gt) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    boxes, labels, masks = gt
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(labels),
        "masks": torch.from_numpy(masks),
    }
    model.train()
    for m in model.modules():  # BN statistics stay frozen (running stats), see README
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    rpn, rh = model.rpn, model.roi_heads
    rec = {k: [] for k in ("rpn_match", "rpn_sample", "rpn_loss", "anchors", "roi_match", "roi_sample", "sel")}
    rpn.proposal_matcher = Recorder(rpn.proposal_matcher, rec["rpn_match"])
    rpn.fg_bg_sampler = Recorder(rpn.fg_bg_sampler, rec["rpn_sample"])
    rpn.compute_loss = Recorder(rpn.compute_loss, rec["rpn_loss"])
    rh.proposal_matcher = Recorder(rh.proposal_matcher, rec["roi_match"])
    rh.fg_bg_sampler = Recorder(rh.fg_bg_sampler, rec["roi_sample"])
    rh.select_training_samples = Recorder(rh.select_training_samples, rec["sel"])
    hk = {}
    hooks = [
        rpn.anchor_generator.register_forward_hook(lambda m, i, o: hk.__setitem__("anchors", o[0])),
        rh.box_predictor.register_forward_hook(lambda m, i, o: hk.__setitem__("box", o)),
        rh.mask_predictor.register_forward_hook(lambda m, i, o: hk.__setitem__("mask", o)),
        rpn.head.register_forward_hook(lambda m, i, o: hk.__setitem__("num_per_level", [x.shape for x in o[0]])),
    ]
    torch.manual_seed(TRAIN_SEED)
    with torch.no_grad():
        losses = model([image], [target])
    for h in hooks:
        h.remove()
    for name in ("proposal_matcher", "fg_bg_sampler", "compute_loss"):
        setattr(rpn, name, getattr(rpn, name).fn)
    for name in ("proposal_matcher", "fg_bg_sampler", "select_training_samples"):
        setattr(rh, name, getattr(rh, name).fn)
    model.eval()

    o: dict[str, torch.Tensor] = {}
    o["gt.boxes"] = target["boxes"]
    o["gt.labels"] = target["labels"]
    o["gt.masks_packbits"] = torch.from_numpy(np.packbits(masks.reshape(masks.shape[0], -1), axis=1))
    o["gt.mask_shape"] = torch.tensor(masks.shape, dtype=torch.int64)

    # ---- RPN
    anchors = hk["anchors"]
    apl = [s[1] * s[2] * s[3] for s in hk["num_per_level"]]
    o["rpn.num_anchors_per_level"] = torch.tensor(apl, dtype=torch.int64)
    matches = rec["rpn_match"][0][1]
    pos_mask, neg_mask = (t[0] for t in rec["rpn_sample"][0][1])
    pos = torch.where(pos_mask)[0]
    neg = torch.where(neg_mask)[0]
    sampled = torch.cat([pos, neg])
    (objectness, deltas, lab_list, reg_list), _ = rec["rpn_loss"][0]
    objectness = objectness.flatten()
    lab, reg = lab_list[0], reg_list[0]
    o["rpn.sampled_pos"] = pos
    o["rpn.sampled_neg"] = neg
    o["rpn.matched_idxs_pos"] = matches[pos]
    o["rpn.matched_idxs_sampled"] = matches[sampled]
    o["rpn.anchors_sampled"] = anchors[sampled].contiguous()
    o["rpn.objectness_sampled"] = objectness[sampled].contiguous()
    o["rpn.labels_sampled"] = lab[sampled].contiguous()
    o["rpn.deltas_pos"] = deltas[pos].contiguous()
    o["rpn.regression_targets_pos"] = reg[pos].contiguous()
    # ---- RoI heads
    (sel_args, sel_out) = rec["sel"][0]
    rpn_props = sel_args[0][0]
    o["rpn.proposals_train"] = rpn_props.contiguous()
    props_gt = torch.cat([rpn_props, target["boxes"]])
    roi_matches = rec["roi_match"][0][1]
    rpos_mask, rneg_mask = (t[0] for t in rec["roi_sample"][0][1])
    rsampled = torch.where(rpos_mask | rneg_mask)[0]
    s_props, s_matched, s_labels, s_reg = (x[0] for x in sel_out)
    assert torch.equal(s_props, props_gt[rsampled])
    o["roi.proposals_with_gt"] = props_gt.contiguous()
    o["roi.matched_idxs"] = roi_matches
    o["roi.sampled_pos"] = torch.where(rpos_mask)[0]
    o["roi.sampled_neg"] = torch.where(rneg_mask)[0]
    o["roi.sampled_inds"] = rsampled
    o["roi.labels"] = s_labels
    o["roi.matched_gt"] = s_matched
    o["roi.regression_targets"] = s_reg.contiguous()
    class_logits, box_regression = hk["box"]
    o["roi.class_logits"] = class_logits.contiguous()
    o["roi.box_regression"] = box_regression.contiguous()
    # ---- mask branch (positives of the sampled RoIs, in sampled order)
    mpos = torch.where(s_labels > 0)[0]
    mprops, mmatched, mlabels = s_props[mpos], s_matched[mpos], s_labels[mpos]
    mask_logits = hk["mask"]
    o["mask.pos_in_sampled"] = mpos
    o["mask.labels"] = mlabels
    o["mask.logits_at_label"] = mask_logits[torch.arange(len(mpos)), mlabels].contiguous()
    o["mask.targets"] = project_masks_on_boxes(target["masks"], mprops, mmatched, 28).contiguous()

    # ---- recompute the losses from the stored tensors (self-check) + torchvision 0.3.0 semantics
    n_s = sampled.numel()
    l_obj = F.binary_cross_entropy_with_logits(o["rpn.objectness_sampled"], o["rpn.labels_sampled"])
    l_rpn_box = F.smooth_l1_loss(o["rpn.deltas_pos"], o["rpn.regression_targets_pos"], beta=1 / 9, reduction="sum") / n_s
    l_rpn_box_l1 = F.l1_loss(o["rpn.deltas_pos"], o["rpn.regression_targets_pos"], reduction="sum") / n_s
    l_cls = F.cross_entropy(class_logits, s_labels)
    rp = torch.where(s_labels > 0)[0]
    br = box_regression.reshape(box_regression.shape[0], -1, 4)[rp, s_labels[rp]]
    l_box = F.smooth_l1_loss(br, s_reg[rp], beta=1 / 9, reduction="sum") / s_labels.numel()
    l_box_b1 = F.smooth_l1_loss(br, s_reg[rp], beta=1.0, reduction="sum") / s_labels.numel()
    l_mask = F.binary_cross_entropy_with_logits(o["mask.logits_at_label"], o["mask.targets"])
    mine = {
        "loss_objectness": l_obj,
        "loss_rpn_box_reg": l_rpn_box,
        "loss_classifier": l_cls,
        "loss_box_reg": l_box,
        "loss_mask": l_mask,
    }
    for k, v in mine.items():
        assert torch.allclose(v, losses[k], rtol=1e-5, atol=1e-6), (k, float(v), float(losses[k]))
        o[f"losses.{k}"] = losses[k].detach().reshape(())
    orig = dict(mine, loss_rpn_box_reg=l_rpn_box_l1, loss_box_reg=l_box_b1)
    for k, v in orig.items():
        o[f"losses_v030.{k}"] = v.detach().reshape(())
    o = {("loss." + k): v.contiguous() for k, v in o.items()}
    summary = {k: float(v) for k, v in losses.items()}
    summary.update({f"v030_{k}": float(v) for k, v in orig.items()})
    summary.update(
        rpn_pos=int(pos.numel()), rpn_neg=int(neg.numel()), roi_sampled=int(rsampled.numel()), roi_pos=int(mpos.numel())
    )
    return o, summary


# ----------------------------------------------------------------------------------------------
def variant_config(variant: str) -> dict:
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in tv_models.SEG_KWARGS.items()}
    cfg.update(
        variant=variant,
        num_classes=tv_models.NUM_CLASSES,
        anchor_sizes=list(tv_models.ANCHOR_SIZES),
        anchor_aspect_ratios=list(tv_models.ANCHOR_RATIOS),
        fpn_levels=tv_models.num_levels(variant),
        key_listing=tv_models.KEY_SECTIONS[variant],
        batchnorm={"r50_fpn5_frozenbn": "FrozenBatchNorm2d eps=0", "r50_fpn4": "BatchNorm2d eps=1e-5 (eval)",
                   "r18_t1": "BatchNorm2d eps=1e-5 (eval)"}[variant],
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        torch_threads=torch.get_num_threads(),
        images=[f"image{i}.png" for i in range(len(IMAGE_SEEDS))],
        image_seeds=list(IMAGE_SEEDS),
        gt_seed=GT_SEED,
        train_seed=TRAIN_SEED,
        loss_image="image0.png",
        loss_bn_mode="model.train() with every BatchNorm2d put back in eval() (running statistics)",
        weights_profile=tv_models.det_weights.PROFILE,
        rpn_min_size=1e-3,
        rpn_score_thresh=0.0,
        roi_remove_small_boxes=1e-2,
    )
    return cfg


def run_variant(variant: str, images, gt) -> None:
    model = tv_models.build_with_weights(variant)
    tensors = eval_fixture(model, variant, images)
    loss_t, summary = loss_fixture(model, images[0], gt)
    tensors.update(loss_t)
    cfg = variant_config(variant)
    cfg["loss_summary"] = summary
    cfg["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}
    save_file(tensors, str(OUT / f"parity_{variant}.safetensors"), metadata={"variant": variant})
    (OUT / f"parity_{variant}.safetensors").chmod(0o644)
    (OUT / f"parity_{variant}.json").write_text(json.dumps(cfg, indent=1) + "\n")
    print(variant, "detections", [int(tensors[f"img{i}.det.count"]) for i in range(len(images))],
          "proposals", [int(tensors[f"img{i}.rpn.count"]) for i in range(len(images))], summary, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma list of: images, ops, " + ", ".join(tv_models.VARIANTS))
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    paths = write_images()
    tv_models.write_name_map_json(OUT / "tv_name_map.json")
    images = [load_png(p) for p in paths]
    gt = phantom.ground_truth(GT_SEED)
    if not only or "ops" in only:
        ops_fixtures.write(OUT / "ops.safetensors")
        (OUT / "ops.safetensors").chmod(0o644)
    for v in tv_models.VARIANTS:
        if not only or v in only:
            run_variant(v, images, gt)


if __name__ == "__main__":
    main()
