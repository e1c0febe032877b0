"""Store a ctmask model file's float32 tensors as float16, keeping its metadata.

ctmask loads them back as float32 (the demo weights use this to stay under 30 MB).
Needs a Python with torch and safetensors (for example the reference venv of bench/side_by_side.sh).
Usage: python scripts/half_model.py SRC.safetensors DST.safetensors
"""
import sys

from safetensors import safe_open
from safetensors.torch import save_file
import torch

src, dst = sys.argv[1], sys.argv[2]
with safe_open(src, framework="pt") as f:
    meta = f.metadata()
    tensors = {k: f.get_tensor(k) for k in f.keys()}
tensors = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in tensors.items()}
meta["stored_dtype"] = "float16"
save_file(tensors, dst, metadata=meta)
