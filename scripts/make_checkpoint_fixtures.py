#!/usr/bin/env python3
"""Write the torch.save fixtures for src/checkpoint (tests/fixtures/checkpoint/).

Needs a venv with torch (2.x) and torchvision, e.g.
    /work/refenv/venv/bin/python scripts/make_checkpoint_fixtures.py

Valid files come in both containers (`*_zip.pth`, and `*_legacy.pth` written with
`_use_new_zipfile_serialization=False`), each with a `<name>.json` sidecar holding the
expected state dict as (key, dtype, shape, hex of contiguous little-endian bytes) so the
Rust tests check bit-exactness. `broken/` holds hand-made bad files, one per error.
"""

import collections
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "checkpoint"


def tensor_record(key, t):
    t = t.detach().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return [key, str(t.dtype).removeprefix("torch."), list(t.shape), raw.hex()]


def save_both(name, obj, state_dict, extra=None):
    torch.save(obj, OUT / f"{name}_zip.pth")
    torch.save(obj, OUT / f"{name}_legacy.pth", _use_new_zipfile_serialization=False)
    side = {"state_dict": [tensor_record(k, v) for k, v in state_dict.items()]}
    side.update(extra or {})
    (OUT / f"{name}.json").write_text(json.dumps(side, indent=1) + "\n")


def dtypes():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 3, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = base
    sd["f16"] = torch.tensor([1.0, -2.5, 65504.0, 6e-8, float("inf")], dtype=torch.float16)
    sd["bf16"] = (base * 3).to(torch.bfloat16)
    sd["f64"] = base.double() / 7
    sd["i64"] = torch.tensor([-(2**40), -1, 0, 2**62], dtype=torch.int64)
    sd["i32"] = torch.tensor([-7, 2**30], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3, dtype=torch.int64)
    sd["parameter"] = torch.nn.Parameter(base[1].clone())  # _rebuild_parameter
    save_both("dtypes", sd, sd)


def views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["base"] = base
    sd["transposed"] = base.t()
    sd["block"] = base[1:3, 2:5]  # storage offset 8, strides (6, 1)
    sd["column"] = base[:, 3]  # stride 6
    sd["element"] = base[3, 4]  # 0-d, offset 22
    sd["stepped"] = base[::2, ::3]  # strides (12, 3)
    sd["empty"] = base[2:2]
    save_both("views", sd, sd)


def nested():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 1))
    adam = torch.optim.Adam(model.parameters(), lr=1e-5)
    model(torch.randn(1, 1, 2, 2)).sum().backward()
    adam.step()
    sd = model.state_dict()
    ag = AnchorGenerator(((2, 4, 8, 16, 32),), ((0.1, 0.25, 0.5, 1, 1.5, 2),))
    ckpt = {
        "model_weights": sd,
        "optimizer_state": adam.state_dict(),
        "anchor_generator": ag,
        "epoch": "50",
        "model_name": "x",
        "lrate": 1e-5,
    }
    extra = {
        "sizes": [list(map(float, s)) for s in ag.sizes],
        "aspect_ratios": [list(map(float, a)) for a in ag.aspect_ratios],
        "cell_anchors": [tensor_record("0", a) for a in ag.cell_anchors],
        "epoch": "50",
        "model_name": "x",
        "lrate": 1e-5,
    }
    save_both("nested", ckpt, sd, extra)


# ---- hand-made files -------------------------------------------------------------------


class Storage:
    """Pickled as the persistent id torch writes for a storage."""

    def __init__(self, key, numel, cls=torch.FloatStorage):
        self.pid = ("storage", cls, key, "cpu", numel)


class Tensor:
    """Pickled as torch._utils._rebuild_tensor_v2 with arbitrary (possibly bad) arguments."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Storage) else None


def craft_pickle(obj):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def craft_zip(path, pkl, storages, byteorder="little"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)


def big_endian():
    """A zip whose byteorder record says big: floats 1..4 stored big-endian, read transposed."""
    data = struct.pack(">4f", 1, 2, 3, 4)
    pkl = craft_pickle({"w": Tensor(Storage("0", 4), 0, (2, 2), (1, 2))})
    craft_zip(OUT / "big_endian_zip.pth", pkl, {"0": data}, byteorder="big")


def broken():
    b = OUT / "broken"
    b.mkdir(exist_ok=True)
    (b / "empty.pth").write_bytes(b"")
    good = (OUT / "dtypes_zip.pth").read_bytes()
    (b / "truncated_zip.pth").write_bytes(good[: len(good) // 2])
    legacy = bytearray((OUT / "dtypes_legacy.pth").read_bytes())
    assert legacy[4:14] == bytes.fromhex("6cfc9c46f9206aa85019")
    legacy[5] ^= 0xFF
    (b / "wrong_magic.pth").write_bytes(bytes(legacy))
    four = struct.pack("<4f", 1, 2, 3, 4)
    s = Storage("0", 4)
    craft_zip(b / "offset_past_end.pth", craft_pickle({"w": Tensor(s, 3, (2,), (1,))}), {"0": four})
    craft_zip(b / "huge_size.pth", craft_pickle({"w": Tensor(s, 0, (1 << 40, 1 << 40), (1 << 40, 1))}), {"0": four})
    craft_zip(b / "storage_too_short.pth", craft_pickle({"w": Tensor(Storage("0", 1 << 30), 0, (4,), (1,))}), {"0": four})
    # ((((...),),),) 1000 deep, written by hand: EMPTY_TUPLE then TUPLE1 1000 times.
    craft_zip(b / "deep_nesting.pth", b"\x80\x02)" + b"\x85" * 1000 + b".", {})
    # {'model_weights': os.system('touch /tmp/ctmask_pwned'), 'x': builtins.eval('1+1')}
    # by hand: GLOBAL, args tuple, REDUCE, exactly what a malicious checkpoint contains.
    cmd = b"touch /tmp/ctmask_pwned"
    evil = (
        b"\x80\x02}q\x00(X\x0d\x00\x00\x00model_weights"
        + b"cos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R"
        + b"X\x01\x00\x00\x00xcbuiltins\neval\nX\x03\x00\x00\x001+1\x85Ru."
    )
    craft_zip(b / "os_system.pth", evil, {})
    (b / "not_a_checkpoint.pth").write_bytes(b"GIF89a not a checkpoint")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    dtypes()
    views()
    nested()
    big_endian()
    broken()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
