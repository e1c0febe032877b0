"""Deterministic weights shared by ctmask and this Python reference (docs/deterministic-weights.md).

Needs the reference venv (torch 2.11, torchvision 0.26, numpy, safetensors), e.g.
/work/refenv/venv/bin/python. Everything here is numpy with uint64 wrapping arithmetic, so the
values are bit-identical to the Rust implementation of the same generator.

Also parses spec/original_state_dict_keys.txt into per-variant key/shape lists.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3

_REPO = Path(__file__).resolve().parents[2]
# original_state_dict_keys.txt: $CTMASK_KEYS_FILE, else the first of these that exists.
KEYS_FILE_CANDIDATES = [
    _REPO / "spec" / "original_state_dict_keys.txt",
    _REPO / "docs" / "original_state_dict_keys.txt",
    Path("/work/shared/spec/original_state_dict_keys.txt"),
]


def keys_file() -> Path:
    env = os.environ.get("CTMASK_KEYS_FILE")
    if env:
        return Path(env)
    for p in KEYS_FILE_CANDIDATES:
        if p.exists():
            return p
    raise FileNotFoundError("original_state_dict_keys.txt not found; set CTMASK_KEYS_FILE")


def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def uniform(name: str, numel: int) -> np.ndarray:
    """u(name, i) for i = 0..numel-1 as float64 in [-1, 1)."""
    seed = np.uint64(fnv1a64(name))
    i1 = np.arange(1, numel + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i1 * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24) * 2.0 - 1.0


# Opt-in amendment, NOT part of docs/deterministic-weights.md (proposed to the lead): with the
# documented table the ResNet50 activations grow ~2x in variance per residual block (FPN std ~240),
# RPN/class logits saturate (sigmoid/softmax == 1.0) and the parity outputs degenerate (R50: ~35
# proposals, 1-3 detections all scoring 1.0). Profile "scaled" multiplies by 0.1, in float64 before
# the float32 cast: the last BN weight of every residual branch (layer*.*.bn3.weight; bn2.weight
# when the state dict has no bn3, i.e. BasicBlock) and the rank>=2 weights of the final predictor
# layers (rpn.head.cls_logits, rpn.head.bbox_pred, roi_heads.box_predictor.*,
# roi_heads.mask_predictor.mask_fcn_logits). Default profile: "scaled" (docs/deterministic-weights.md); "doc" is the bare table.
PROFILE = os.environ.get("CTMASK_WEIGHTS_PROFILE", "scaled")
_LAST_BN3 = re.compile(r"layer\d+\.\d+\.bn3\.weight$")
_LAST_BN2 = re.compile(r"layer\d+\.\d+\.bn2\.weight$")
_HEAD_OUT = re.compile(
    r"^(rpn\.head\.(cls_logits|bbox_pred)|roi_heads\.box_predictor\.(cls_score|bbox_pred)"
    r"|roi_heads\.mask_predictor\.mask_fcn_logits)\.weight$"
)


def tensor_value(name: str, shape: tuple[int, ...], profile: str | None = None, basic_block: bool = False) -> np.ndarray:
    """The deterministic value of one state-dict entry (float32, or int64 for num_batches_tracked)."""
    profile = profile or PROFILE
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    u = uniform(name, numel)
    if name.endswith("running_var"):
        v = 1.25 + 0.25 * u
    elif name.endswith("running_mean"):
        v = 0.1 * u
    elif len(shape) == 1 and name.endswith("weight") and ("bn" in name or "downsample.1" in name):
        v = 1.0 + 0.1 * u
    elif len(shape) == 1:
        v = 0.05 * u
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = u * np.sqrt(3.0) * np.sqrt(2.0 / fan_in)
    else:
        raise ValueError(f"no rule for rank-0 tensor {name}")
    if profile == "scaled":
        last_bn = _LAST_BN2 if basic_block else _LAST_BN3
        if last_bn.search(name) or _HEAD_OUT.match(name):
            v = v * 0.1
    elif profile != "doc":
        raise ValueError(f"unknown weights profile {profile}")
    return v.astype(np.float32).reshape(shape)


def parse_key_sections(path: Path | None = None) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Section title (text after '### ') -> [(key, shape)] in file order."""
    path = path or keys_file()
    sections: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    cur = None
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            cur = line[4:].strip()
            sections[cur] = []
        elif cur is not None and "\t" in line:
            key, shape = line.split("\t")
            dims = tuple(int(d) for d in re.findall(r"\d+", shape))
            sections[cur].append((key, dims))
    return sections


def find_section(sections, prefix: str):
    hits = [k for k in sections if k.startswith(prefix)]
    if len(hits) != 1:
        raise KeyError(f"section prefix {prefix!r} matches {hits}")
    return sections[hits[0]]


def with_num_classes(keys, n_c: int):
    """Re-shape the class-dependent predictor keys of a listing for n_c classes."""
    out = []
    for key, shape in keys:
        if key.startswith("roi_heads.box_predictor.cls_score") or key.startswith(
            "roi_heads.mask_predictor.mask_fcn_logits"
        ):
            shape = (n_c,) + shape[1:]
        elif key.startswith("roi_heads.box_predictor.bbox_pred"):
            shape = (4 * n_c,) + shape[1:]
        out.append((key, shape))
    return out


def state_dict(keys, profile: str | None = None) -> "OrderedDict[str, np.ndarray]":
    basic = not any(".bn3." in k for k, _ in keys)
    return OrderedDict((k, tensor_value(k, s, profile, basic)) for k, s in keys)
