"""Time torchvision's Mask R-CNN (the reference) for side-by-side benchmarks with ctmask.

Needs the reference venv (torch 2.11, torchvision 0.26, numpy, safetensors, pillow), e.g.
    /work/refenv/venv/bin/python scripts/reference/bench_torchvision.py --variant r18_t1 \
        --device cpu --threads 2 --runs 10 [--train-step]
Builds the variant with the deterministic weights, runs batch-1 fp32 inference on the fixture
images (tests/fixtures/parity/image*.png) and prints one JSON line:
{variant, device, threads, runs, per_image_s: {median, p95}, images_per_s, peak_rss_mb,
 [cuda_peak_mb], [train_step_s: {median, p95}]}.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

import make_parity_fixtures as mpf
import phantom
import tv_models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(xs: list[float]) -> dict:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, max(0, round(0.95 * (len(s) - 1))))]
    return {"median": statistics.median(s), "p95": p95}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="r50_fpn5_frozenbn", choices=tv_models.VARIANTS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--train-step", action="store_true", help="also time one training step (fwd+bwd+Adam)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = tv_models.build_with_weights(args.variant).to(device).eval()
    paths = sorted(mpf.OUT.glob("image*.png"))
    images = [mpf.load_png(p).to(device) for p in paths]
    times = []
    with torch.no_grad():
        for r in range(args.warmup + args.runs):
            img = images[r % len(images)]
            _sync(device)
            t0 = time.perf_counter()
            model([img])
            _sync(device)
            if r >= args.warmup:
                times.append(time.perf_counter() - t0)
    res = {
        "variant": args.variant,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "per_image_s": _stats(times),
        "images_per_s": len(times) / sum(times),
    }
    if args.train_step:
        boxes, labels, masks = phantom.ground_truth(mpf.GT_SEED)
        target = {
            "boxes": torch.from_numpy(boxes).to(device),
            "labels": torch.from_numpy(labels).to(device),
            "masks": torch.from_numpy(masks).to(device),
        }
        model.train()
        for m in model.modules():  # frozen BN statistics, as in the loss fixture
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-3)
        steps = []
        for r in range(args.warmup + max(1, args.runs // 2)):
            _sync(device)
            t0 = time.perf_counter()
            losses = model([images[0]], [target])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            _sync(device)
            if r >= args.warmup:
                steps.append(time.perf_counter() - t0)
        res["train_step_s"] = _stats(steps)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(res))


if __name__ == "__main__":
    main()
