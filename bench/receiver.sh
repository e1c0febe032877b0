#!/usr/bin/env bash
# The DICOM receiver's own cost: DCMTK's storescu sends N synthetic CT slices over loopback to
# `ctmask daemon` with the receiver on, and this reports
#   - images per second received, stored durably (fsync, rename, folder fsync) and queued
#     (one committed SQLite transaction), i.e. storescu's wall time for the whole association;
#   - the latency the receiver adds per image, from the complete data set in memory to queued
#     (the daemon's debug line "C-STORE handled" store_ms): p50, p95, max;
#   - for reference, the same storescu run against DCMTK's storescp (writes files, no fsync).
# Intake is paused through the socket first, so the models do not compete for the CPU: this is
# the receiver alone. Uses the demo weights (the daemon needs models to start).
#
# Usage: bench/receiver.sh [--images N] [--size S] [--keep]
#   --images N  slices sent in one association (default 200)
#   --size S    slice size in pixels (default 512: 512 KB per image)
#   --keep      keep the temporary folder (printed)
# Needs target/release/ctmask (or $CTMASK_BIN), dcmtk (storescu, echoscu, storescp) and python3.
set -euo pipefail
N=200
SIZE=512
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --images) N="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${CTMASK_BIN:-$ROOT/target/release/ctmask}"
for t in storescu echoscu storescp python3; do
    command -v "$t" >/dev/null || { echo "needs $t (dcmtk: make test-tools as root)" >&2; exit 1; }
done
TMP="$(mktemp -d)"
DAEMON=""
SCP=""
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
    [ -n "$SCP" ] && kill "$SCP" 2>/dev/null && wait "$SCP" 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$BIN" synth --out "$TMP/syn" --layout dicom --count "$N" --seed 1 --size "$SIZE" >/dev/null
mapfile -t FILES < <(find "$TMP/syn" -name '*.dcm' | sort)
PORT="$(free_port)"
mkdir -p "$TMP/in"
cat > "$TMP/ctmask.yaml" <<YAML
models:
  segmentation: $ROOT/pretrained_models/demo_segmentation.safetensors
  classifier: $ROOT/pretrained_models/demo_classifier.safetensors
daemon:
  watch: [$TMP/in]
  output: $TMP/out
  state: $TMP/state
  socket: $TMP/d.sock
  device: cpu
  min_free_bytes: 0
  min_free_percent: 0.0
dicom:
  receiver:
    enabled: true
    port: $PORT
    incoming: $TMP/incoming
YAML
RUST_LOG=warn,ctmask::dicom=debug "$BIN" daemon --config "$TMP/ctmask.yaml" 2>"$TMP/daemon.log" &
DAEMON=$!
for _ in $(seq 1 600); do
    echoscu -aec CTMASK 127.0.0.1 "$PORT" 2>/dev/null && break
    sleep 0.2
done
echoscu -aec CTMASK 127.0.0.1 "$PORT"
python3 - "$TMP/d.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
for req in ({"type": "hello", "version": 1, "client": "bench"}, {"type": "pause"}):
    f.write(json.dumps(req) + "\n"); f.flush(); f.readline()
PY

T0=$(date +%s.%N)
storescu -aec CTMASK 127.0.0.1 "$PORT" "${FILES[@]}"
T1=$(date +%s.%N)

SCP_PORT="$(free_port)"
mkdir -p "$TMP/scp"
storescp -od "$TMP/scp" "$SCP_PORT" &
SCP=$!
sleep 0.5
T2=$(date +%s.%N)
storescu 127.0.0.1 "$SCP_PORT" "${FILES[@]}"
T3=$(date +%s.%N)

python3 - "$TMP" "$N" "$SIZE" "$T0" "$T1" "$T2" "$T3" <<'PY'
import re, sqlite3, sys
tmp, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0, t1, t2, t3 = map(float, sys.argv[4:8])
db = sqlite3.connect(f"{tmp}/state/queue.sqlite3")
queued = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
log = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{tmp}/daemon.log").read())
ms = sorted(float(m) for m in re.findall(r"C-STORE handled.*?store_ms=([0-9.]+)", log))
q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))] if ms else float("nan")
print(f"images: {n} of {size}x{size} ({n} sent, {queued} queued, {len(ms)} stores logged)")
print(f"ctmask receiver: {n / (t1 - t0):.1f} images/s received, stored durably and queued ({t1 - t0:.2f} s)")
print(f"  added latency, data set received -> queued: p50 {q(0.5):.1f} ms, p95 {q(0.95):.1f} ms, max {ms[-1] if ms else float('nan'):.1f} ms")
print(f"DCMTK storescp (no fsync), same files: {n / (t3 - t2):.1f} images/s ({t3 - t2:.2f} s)")
assert queued == n, "every image must be queued"
PY
