"""Write tests/fixtures/parity/jpeg/: the model parity reference on JPEG inputs.

The original reads every slice through PIL, so an imported model must see PIL's pixels of a JPEG.
This script saves the two parity phantoms (tests/fixtures/parity/image{0,1}.png) as JPEGs with
Pillow, decodes them again with PIL `convert('RGB')` (what the original feeds its model), and
records torchvision 0.26's detections (segmentation variants) and the classifier's ranked rows and
S logits on those pixels, with the same deterministic weights as the PNG fixtures.

Needs the reference venv (torch 2.11, torchvision 0.26, numpy, safetensors, pillow 13), e.g.
    /work/refenv/venv/bin/python scripts/reference/jpeg_parity_fixtures.py
Deterministic: one torch thread, fixed weights; re-running gives byte-identical files.

Files (what each tensor means is in tests/fixtures/parity/README.md, "JPEG inputs"):
    image0_ycc420_q75.jpg      image0.png as RGB, baseline, YCbCr 4:2:0, quality 75
    image1_grey_prog_q90.jpg   image1.png as L, progressive, quality 90
    parity_<variant>.safetensors/.json      detections (the eval part of the PNG fixture, det.* only)
    classifier_<variant>.safetensors/.json  ranked rows and S logits
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARITY = HERE.parents[1] / "tests" / "fixtures" / "parity"
OUT = PARITY / "jpeg"
# make_parity_fixtures and classifier_reference write into $CTMASK_PARITY_OUT
os.environ["CTMASK_PARITY_OUT"] = str(OUT)
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import classifier_reference  # noqa: E402
import make_parity_fixtures as mpf  # noqa: E402
import tv_models  # noqa: E402

IMAGES = (
    ("image0_ycc420_q75.jpg", "image0.png", "RGB", dict(quality=75, subsampling="4:2:0")),
    ("image1_grey_prog_q90.jpg", "image1.png", "L", dict(quality=90, progressive=True)),
)
DET_VARIANTS = ("r18_t1", "r50_fpn5_frozenbn")
CLASSIFIER_VARIANTS = ("r18_t1", "r50_fpn5_frozenbn")


def write_jpegs() -> list[Path]:
    paths = []
    for name, source, mode, kw in IMAGES:
        p = OUT / name
        Image.open(PARITY / source).convert(mode).save(p, format="JPEG", optimize=False, **kw)
        p.chmod(0o644)
        paths.append(p)
    return paths


def load_jpeg(path: Path) -> torch.Tensor:
    """PIL decode, convert('RGB') as the original -> [3,H,W] float in [0,1]."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def detections(variant: str, images: list[torch.Tensor]) -> None:
    model = tv_models.build_with_weights(variant)
    full = mpf.eval_fixture(model, variant, images)
    keep = {k: v for k, v in full.items() if ".det." in k or k.endswith("input.sum")}
    path = OUT / f"parity_{variant}.safetensors"
    save_file(keep, str(path), metadata={"variant": variant})
    path.chmod(0o644)
    cfg = mpf.variant_config(variant)
    cfg["images"] = [name for name, *_ in IMAGES]
    cfg["decode"] = "PIL Image.open(f).convert('RGB') / 255"
    cfg["pillow"] = PIL.__version__
    cfg["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(keep.items())}
    (OUT / f"parity_{variant}.json").write_text(json.dumps(cfg, indent=1) + "\n")
    print(variant, "detections", [int(keep[f"img{i}.det.count"]) for i in range(len(images))], flush=True)


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    print("torch", torch.__version__, "torchvision", torchvision.__version__, "pillow", PIL.__version__)
    images = [load_jpeg(p) for p in write_jpegs()]
    for v in DET_VARIANTS:
        detections(v, images)
    for v in CLASSIFIER_VARIANTS:
        classifier_reference.run(v, images)


if __name__ == "__main__":
    main()
