"""Store a ctmask model file's float32 tensors as float16, keeping its metadata.

ctmask loads them back as float32 (the demo weights use this to stay under 30 MB).
Needs only the Python standard library: the safetensors format (an 8-byte little-endian header
length, a JSON header, then the raw little-endian tensor bytes) is read and written here, and
struct's IEEE half format rounds to nearest even, as torch's .half() does.
--training-data TEXT records what the model was trained on in the `training_data` metadata
(`synthetic phantoms` for the demo weights); reports and the dashboard show it.

Usage: python scripts/half_model.py SRC.safetensors DST.safetensors [--training-data TEXT]
"""
import argparse
import json
import os
import struct

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("src")
parser.add_argument("dst")
parser.add_argument("--training-data", help="what the model was trained on")
args = parser.parse_args()

with open(args.src, "rb") as f:
    raw = f.read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
meta = header.pop("__metadata__", {}) or {}
body = raw[8 + n:]
tensors = {}
for name, info in header.items():
    start, end = info["data_offsets"]
    data, dtype = body[start:end], info["dtype"]
    if dtype == "F32":
        count = len(data) // 4
        data = struct.pack("<%de" % count, *struct.unpack("<%df" % count, data))
        dtype = "F16"
    tensors[name] = (dtype, info["shape"], data)
meta["stored_dtype"] = "float16"
if args.training_data:
    meta["training_data"] = args.training_data

out_header = {"__metadata__": meta}
chunks, offset = [], 0
for name in sorted(tensors):
    dtype, shape, data = tensors[name]
    out_header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
head = json.dumps(out_header, separators=(",", ":")).encode()
head += b" " * ((8 - len(head) % 8) % 8)
tmp = args.dst + ".tmp"
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for c in chunks:
        f.write(c)
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, args.dst)
