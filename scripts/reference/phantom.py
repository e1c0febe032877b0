"""Deterministic synthetic chest-CT-like test slices (512x512 uint8) for the parity fixtures.

Needs numpy only (runs in the reference venv). A body ellipse of soft tissue, two dark lung
ellipses, a bright spine and table, a few bright blobs (vessels / lesion-like) inside the lungs,
and seeded Gaussian noise. Also the made-up ground-truth instances used by the loss fixture.
"""
from __future__ import annotations

import numpy as np

SIZE = 512


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return u * u + v * v <= 1.0


def phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = np.full((SIZE, SIZE), 0.02)
    img[_ellipse(yy, xx, 256, 256, 190 + 6 * rng.standard_normal(), 235)] = 0.45
    img[_ellipse(yy, xx, 256, 256, 172, 218)] = 0.52  # muscle/fat rim
    for side in (-1, 1):
        cx = 256 + side * (100 + 4 * rng.standard_normal())
        img[_ellipse(yy, xx, 245, cx, 130 + 5 * rng.standard_normal(), 72, side * 0.12)] = 0.08
    img[_ellipse(yy, xx, 395, 256, 28, 26)] = 0.9  # vertebra
    img[_ellipse(yy, xx, 250, 262, 38, 30)] = 0.55  # heart / mediastinum
    img[480:490, 40:472] = 0.7  # table
    for _ in range(7):
        side = rng.choice([-1, 1])
        cy = 245 + rng.uniform(-90, 90)
        cx = 256 + side * rng.uniform(70, 130)
        r = rng.uniform(5, 22)
        blob = _ellipse(yy, xx, cy, cx, r, r * rng.uniform(0.6, 1.4), rng.uniform(0, np.pi))
        img[blob] = np.maximum(img[blob], rng.uniform(0.35, 0.8))
    img += 0.03 * rng.standard_normal(img.shape)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def ground_truth(seed: int):
    """(boxes float32 [K,4] x1,y1,x2,y2 with x2 = last column + 1, labels int64 [K], masks uint8 [K,H,W])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    specs = [  # cy, cx, ry, rx, angle, label
        (210 + rng.uniform(-5, 5), 150 + rng.uniform(-5, 5), 34, 22, 0.3, 1),
        (300 + rng.uniform(-5, 5), 365 + rng.uniform(-5, 5), 18, 27, -0.5, 2),
        (170 + rng.uniform(-5, 5), 340 + rng.uniform(-5, 5), 12, 9, 0.0, 1),
    ]
    masks, boxes, labels = [], [], []
    for cy, cx, ry, rx, ang, lab in specs:
        m = _ellipse(yy, xx, cy, cx, ry, rx, ang)
        ys, xs = np.nonzero(m)
        masks.append(m.astype(np.uint8))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(lab)
    return np.array(boxes, np.float32), np.array(labels, np.int64), np.stack(masks)
