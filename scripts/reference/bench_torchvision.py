"""Time the Python reference (torchvision Mask R-CNN + the COVID-CT-Mask-Net classifier path) for
side-by-side benchmarks with `ctmask bench` (bench/side_by_side.sh runs both).

Needs a reference venv with torch 2.11, torchvision 0.26, numpy, safetensors and pillow, e.g.
    python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.11.0 torchvision==0.26.0 \
        numpy safetensors pillow
and original_state_dict_keys.txt (see det_weights.py). Usage:
    .venv-ref/bin/python scripts/reference/bench_torchvision.py [--variant r50_fpn5_frozenbn] \
        [--images DIR] [--slices K] [--size 512] [--classify [--detections 256 --s-features 1024]] \
        [--weights DIR] [--device cpu|cuda] [--threads T] [--warmup 1] [--train-step]

Work per slice, as `ctmask bench` does it (batch 1, fp32, torch.no_grad()): the grey slice
(PNG / 255, copied to 3 channels) goes through the segmentation Mask R-CNN (masks thresholded at
sigmoid(0.5) and counted), then with --classify through a second model, the classifier: the
mask-less FasterRCNN with box_score_thresh -0.01, NMS 0.75 and N detections, whose RoI
post-processing is replaced by the original's ranked [score, dx, dy, dw, dh] rows
(classifier_reference.ranked_rows), padded by repetition to N rows and fed to module S.
Slices: the sorted *.png files of --images (e.g. written by `ctmask synth --layout covidx`),
cycled to --slices when given; without --images, the parity fixture images. Both models have
the deterministic weights of docs/deterministic-weights.md, as `ctmask bench --preset` builds them:
read from --weights DIR (segmentation.safetensors and classifier.safetensors, original key names,
as `ctmask bench --save-models DIR` writes them; needs numpy only), else computed by
det_weights.py (needs original_state_dict_keys.txt).

--train-step times a segmentation training step instead (forward, backward, Adam lr 1e-5 wd 1e-3;
conv1 and layer1 frozen for frozen-BN models, as ctmask and torchvision 0.3.0 do) on the first
slice with ctmask bench's made-up target (three boxes, labels 1 2 1, filled masks): 3 steps, the
first untimed, reported like ctmask does.

Prints one JSON line: {variant, device, threads, classify, slices, slices_per_s, latency_ms_p50,
latency_ms_p95, peak_rss_mb, peak_rss_after_load_mb, peak_gpu_mb, cuda_max_allocated_mb,
train_step_s}. peak_rss_mb is the whole process's peak (VmHWM, as ctmask reports it);
peak_rss_after_load_mb the peak after the models were built. peak_gpu_mb is device memory in use
(total - free, as ctmask measures it) after each slice, the maximum. Unmeasured values are null.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import classifier_reference as cref
import tv_models

MASK_THRESHOLD = 1.0 / (1.0 + math.exp(-0.5))  # the original's logit > 0.5
# ctmask bench's training target (src/cli/bench.rs): three lesion-sized boxes with filled masks
TRAIN_BOXES = [[100.0, 120.0, 160.0, 170.0], [300.0, 200.0, 360.0, 260.0], [220.0, 300.0, 260.0, 340.0]]
TRAIN_LABELS = [1, 2, 1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(xs: list[float], p: float) -> float | None:
    """Nearest rank with rounding half up, as ctmask bench computes it."""
    if not xs:
        return None
    s = sorted(xs)
    return s[int(math.floor((len(s) - 1) * p + 0.5))]


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_hwm() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def gpu_in_use_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20


def read_safetensors(path: Path) -> "dict[str, torch.Tensor]":
    """A .safetensors file as tensors, with numpy only (the GPU machines' venv may lack the
    safetensors package): 8-byte little-endian header length, JSON header, raw data."""
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        arr = np.frombuffer(raw, dtype=dtypes[v["dtype"]], count=(b - a) // np.dtype(dtypes[v["dtype"]]).itemsize,
                            offset=8 + n + a)
        out[k] = torch.from_numpy(arr.reshape(v["shape"]).copy())
    return out


def state_dict(variant: str, classifier: bool, weights: str | None):
    """Original-naming state dict: from `weights`/{segmentation,classifier}.safetensors (written by
    `ctmask bench --save-models`), else from the deterministic generator."""
    if weights:
        return read_safetensors(Path(weights) / ("classifier.safetensors" if classifier else "segmentation.safetensors"))
    return tv_models.original_state_dict(variant, classifier=classifier)


def load_slices(images: str | None, count: int | None, size: int | None) -> list[np.ndarray]:
    """uint8 grey arrays: the PNGs of `images` (sorted) or the parity fixture images, cycled to `count`."""
    if images:
        paths = sorted(Path(images).glob("*.png"))
    else:
        import make_parity_fixtures as mpf

        paths = sorted(mpf.OUT.glob("image*.png"))
    if not paths:
        raise SystemExit(f"no PNG slices in {images or 'the parity fixtures'}")
    arrays = [np.array(Image.open(p).convert("L"), dtype=np.uint8) for p in paths]
    for p, a in zip(paths, arrays):
        if size is not None and a.shape != (size, size):
            raise SystemExit(f"{p}: {a.shape[1]}x{a.shape[0]}, expected {size}x{size}")
    n = count or len(arrays)
    return [arrays[i % len(arrays)] for i in range(n)]


def to_input(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H,W] -> float [3,H,W] in [0,1], the grey copied to 3 channels (spec §2.1)."""
    t = torch.from_numpy(a).to(device).float().div_(255.0)
    return t[None].expand(3, -1, -1).contiguous()


class Classifier:
    """The classifier path of classifier_reference.py: FasterRCNN whose RoI post-processing is the
    original's classification version (§4.3), then module S (§4.4) on the N ranked rows."""

    def __init__(self, variant: str, n: int, s: int, device: torch.device, weights: str | None):
        sd = state_dict(variant, True, weights)
        got = tuple(sd["s2new.fc_scores.weight"].shape)
        if got != (s, 5 * n) and weights:
            raise SystemExit(f"{weights}: module S is {got}, not ({s}, {5 * n}) for N {n} and S width {s}")
        if got != (s, 5 * n):
            # the key listing fixes S's shape; refill it for the requested N and S width
            sd = self._resized_s(sd, n, s)
        self.n = n
        self.model = tv_models.build(
            variant,
            classifier=True,
            box_score_thresh=cref.SCORE_THRESH,
            box_nms_thresh=cref.NMS_THRESH,
            box_detections_per_img=n,
        )
        tv_models.load_original(self.model, sd)
        self.model.to(device).eval()
        self.s = {k: v.to(device) for k, v in sd.items() if k.startswith("s2new.")}
        self.gen = torch.Generator().manual_seed(42)
        self.rows: torch.Tensor | None = None
        model = self.model

        def postprocess(class_logits, box_regression, proposals, image_shapes):
            r = cref.ranked_rows(model, class_logits, box_regression, proposals[0], image_shapes[0], n)
            self.rows = r["ranked"]
            return [r["boxes"]], [r["ranked"][:, 0]], [r["labels"]]

        model.roi_heads.postprocess_detections = postprocess

    @staticmethod
    def _resized_s(sd, n: int, s: int):
        import det_weights

        shapes = {
            "s2new.fc_scores.weight": (s, 5 * n),
            "s2new.fc_scores.bias": (s,),
            "s2new.fc_scores_2.weight": (s, s),
            "s2new.fc_scores_2.bias": (s,),
            "s2new.fc_scores_img.weight": (3, s),
            "s2new.fc_scores_img.bias": (3,),
        }
        fresh = det_weights.state_dict(list(shapes.items()))
        for k in shapes:
            sd[k] = torch.from_numpy(fresh[k])
        return sd

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """Pad [k,5] to [N,5] by repetition at random cut points, as the original does."""
        k = rows.shape[0]
        if k >= self.n:
            return rows[: self.n]
        if k == 0:
            return torch.zeros(self.n, 5, device=rows.device)
        cuts = (torch.randperm(self.n - 2, generator=self.gen)[: k - 1] + 1).sort().values.tolist()
        bounds = [0, *cuts, self.n]
        reps = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])], device=rows.device)
        return rows.repeat_interleave(reps, dim=0)

    def __call__(self, img: torch.Tensor) -> dict:
        self.model([img])
        logits = tv_models.s_forward(self.s, self.pad(self.rows))
        probs = torch.sigmoid(logits)
        return {"label": int(probs.argmax()), "probs": probs.tolist()}


def segment(model, img: torch.Tensor) -> dict:
    det = model([img])[0]
    masks = det["masks"][:, 0] > MASK_THRESHOLD
    return {
        "count": int(det["scores"].numel()),
        "mask_area_px": masks.flatten(1).sum(1).tolist(),
        "labels": det["labels"].tolist(),
    }


def train_step(model, variant: str, img: torch.Tensor, device: torch.device, steps: int) -> float | None:
    h, w = img.shape[-2:]
    masks = torch.zeros(len(TRAIN_BOXES), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(TRAIN_BOXES):
        masks[i, int(y1) : int(y2), int(x1) : int(x2)] = 1
    target = {
        "boxes": torch.tensor(TRAIN_BOXES).to(device),
        "labels": torch.tensor(TRAIN_LABELS).to(device),
        "masks": masks.to(device),
    }
    model.train()
    for m in model.modules():  # batch-norm statistics stay fixed, as in the loss fixture
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    if variant == "r50_fpn5_frozenbn":  # torchvision 0.3.0 froze conv1 and layer1 (ctmask too)
        for name, p in model.backbone.body.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-3)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        losses = model([img], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return percentile(times[1:], 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="r50_fpn5_frozenbn", choices=tv_models.VARIANTS)
    ap.add_argument("--images", help="folder of grey PNG slices (default: the parity fixture images)")
    ap.add_argument("--slices", type=int, help="slices to screen (the images cycled; default: all)")
    ap.add_argument("--runs", type=int, dest="slices", help=argparse.SUPPRESS)  # old name
    ap.add_argument("--size", type=int, help="expected slice width and height (checked)")
    ap.add_argument("--classify", action="store_true", help="also run the classifier path")
    ap.add_argument("--detections", type=int, default=256, help="N of the classifier")
    ap.add_argument("--s-features", type=int, default=1024, help="width of module S")
    ap.add_argument("--weights", help="folder with the models of `ctmask bench --save-models` (default: "
                    "the deterministic generator, which needs original_state_dict_keys.txt)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed slices first")
    ap.add_argument("--train-step", action="store_true", help="time a training step instead of screening")
    ap.add_argument("--train-steps", type=int, default=3, help="training steps (the first untimed)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    slices = load_slices(args.images, args.slices, args.size)
    seg = tv_models.build(args.variant)
    tv_models.load_original(seg, state_dict(args.variant, False, args.weights))
    seg.to(device).eval()
    cls = None
    if args.classify and not args.train_step:
        cls = Classifier(args.variant, args.detections, args.s_features, device, args.weights)
    hwm_reset = reset_hwm()
    res = {
        "variant": args.variant,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "classify": cls is not None,
        "slices": len(slices),
        "slices_per_s": None,
        "latency_ms_p50": None,
        "latency_ms_p95": None,
        "train_step_s": None,
    }
    peak_gpu = None
    if args.train_step:
        res["slices"] = 1
        res["train_step_s"] = train_step(seg, args.variant, to_input(slices[0], device), device, args.train_steps)
    else:
        latencies = []
        with torch.no_grad():
            for i in range(args.warmup):
                img = to_input(slices[i % len(slices)], device)
                segment(seg, img)
                if cls is not None:
                    cls(img)
            _sync(device)
            started = time.perf_counter()
            for a in slices:
                t0 = time.perf_counter()
                img = to_input(a, device)
                segment(seg, img)  # results come back to the host, as ctmask's do
                if cls is not None:
                    cls(img)
                _sync(device)
                latencies.append((time.perf_counter() - t0) * 1e3)
                g = gpu_in_use_mb(device)
                peak_gpu = g if peak_gpu is None or g is None else max(peak_gpu, g)
            total = time.perf_counter() - started
        res["slices_per_s"] = len(slices) / total
        res["latency_ms_p50"] = percentile(latencies, 0.5)
        res["latency_ms_p95"] = percentile(latencies, 0.95)
    res["peak_rss_mb"] = max(vm_hwm_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    res["peak_rss_after_load_mb"] = vm_hwm_mb() if hwm_reset else None
    res["peak_gpu_mb"] = peak_gpu
    res["cuda_max_allocated_mb"] = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
