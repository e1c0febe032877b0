#!/usr/bin/env bash
# ctmask vs the Python reference (torchvision 0.26 Mask R-CNN + the COVID-CT-Mask-Net classifier
# path), side by side in one run on one machine: the same deterministic weights
# (docs/deterministic-weights.md), the same synthetic slices, batch 1, fp32, the same threads.
#
# Cases: segmentation (the Mask R-CNN alone), screening (segmentation + classifier, two models
# per slice, as ctmask screens) and one segmentation training step (forward, backward, Adam).
# Each case runs ctmask and Python alternately, A B, in each of --rounds 2 rounds (all cases
# in round 1, then all in round 2), so drift on a shared machine hits both; the table gives the mean of the rounds with each round in brackets, the ratio
# ctmask/python of the throughputs (training: steps per second), so > 1 means ctmask is faster,
# and the peak resident memory of each process (whole process, model building included).
#
# Needs the release binary at target/release/ctmask (or $CTMASK_BIN) and a reference venv with
# torch 2.11 + torchvision 0.26 (+ numpy, pillow; safetensors for the fixture scripts). Make one with
#     python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.11.0 torchvision==0.26.0 \
#         numpy safetensors pillow
# (.venv-ref is git-ignored like .venv). The Python side reads the models that
# `ctmask bench --save-models` writes (numpy only; no keys file needed).
# Python used: --python PATH, else $CTMASK_REF_PYTHON, else .venv-ref/bin/python when it exists,
# else /work/refenv/venv/bin/python.
#
# Usage: bench/side_by_side.sh [--device cpu|cuda] [--python PATH] [--slices K] [--quick]
#            [--threads T] [--preset r50-fpn5-frozenbn] [--size 512] [--rounds 2]
#            [--cases segmentation,screening,training] [--timeout S] [--budget S] [--json FILE]
#            [--keep DIR]
#   --quick      4 slices on the CPU, 16 on CUDA (default 16 / 64)
#   --timeout S  limit for each single run (a run over it counts as failed)
#   --budget S   start no run that, at the pace of the longest run so far, would end after S
#                seconds (skipped runs count as failed; the table shows what ran)
#   --json FILE  also write the summary (every run's JSON and the ratios) to FILE
#   --keep DIR   keep the slices and every run's output in DIR (default: a temporary folder)
# Exit status: 0 when every run succeeded, 1 otherwise (the table still shows what ran).
set -euo pipefail

# the whole script is one function, so that bash has read all of it before it runs (editing a
# running script is then harmless)
main() {

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
device=cpu python="" slices="" quick=0 threads="" preset=r50-fpn5-frozenbn size=512 rounds=2
cases=segmentation,screening,training timeout_s="" budget_s="" json_out="" keep=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --device) device=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --threads) threads=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --budget) budget_s=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "side_by_side.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $device in cpu | cuda) ;; *) echo "side_by_side.sh: --device must be cpu or cuda, not $device" >&2; exit 2 ;; esac

bin=${CTMASK_BIN:-$here/target/release/ctmask}
[[ -x $bin ]] || { echo "side_by_side.sh: no ctmask binary at $bin (cargo build --release)" >&2; exit 2; }
if [[ -z $python ]]; then
    if [[ -n ${CTMASK_REF_PYTHON:-} ]]; then python=$CTMASK_REF_PYTHON
    elif [[ -x $here/.venv-ref/bin/python ]]; then python=$here/.venv-ref/bin/python
    else python=/work/refenv/venv/bin/python; fi
fi
if ! "$python" -c 'import torch, torchvision, numpy, PIL' 2>/dev/null; then
    echo "side_by_side.sh: $python cannot import torch, torchvision, numpy and PIL;" \
        "make the reference venv (see the top of this script) or pass --python" >&2
    exit 2
fi
if [[ -z $slices ]]; then
    if [[ $quick == 1 ]]; then [[ $device == cuda ]] && slices=16 || slices=4
    else [[ $device == cuda ]] && slices=64 || slices=16; fi
fi
if [[ -z $threads ]]; then
    threads=$("$bin" doctor --json 2>/dev/null | "$python" -c 'import json,sys; print(json.load(sys.stdin)["cores_available"])' 2>/dev/null) || threads=$(nproc)
fi
variant=${preset//-/_}
case $preset in r18-t1 | r34-t1) n_det=128 s_feat=512 ;; *) n_det=256 s_feat=1024 ;; esac

if [[ -n $keep ]]; then work=$keep; mkdir -p "$work"
else work=$(mktemp -d "${TMPDIR:-/tmp}/ctmask-sbs.XXXXXX"); trap 'rm -rf "$work"' EXIT; fi
rm -rf "$work/slices" "$work/runs" "$work/models"; mkdir -p "$work/runs"
"$bin" synth --log warn --layout covidx --size "$size" --count "$slices" --seed 5 --out "$work/slices" >/dev/null
export LC_ALL=C
files=("$work"/slices/*.png)

# the Python side reads ctmask's own model files, so both run on bit-identical weights (without
# them it computes the same deterministic weights itself, which needs original_state_dict_keys.txt)
weights=()
if "$bin" bench --log warn --preset "$preset" --classify --detections "$n_det" --s-features "$s_feat" \
    --slices 1 --size 64 --warmup 0 --device cpu --save-models "$work/models" --json >/dev/null; then
    weights=(--weights "$work/models")
else
    echo "side_by_side.sh: ctmask bench --save-models failed; Python computes the weights itself" >&2
fi
common_rs=(--log warn --preset "$preset" --files "${files[@]}" --batch-size 1 --precision fp32
    --device "$device" --threads "$threads" --warmup 1 --json)
common_py=(--variant "$variant" --images "$work/slices" --size "$size" --device "$device"
    --threads "$threads" --warmup 1 "${weights[@]}")
cls_rs=(--classify --detections "$n_det" --s-features "$s_feat")
cls_py=(--classify --detections "$n_det" --s-features "$s_feat")
limit=()
[[ -n $timeout_s ]] && limit=(timeout --kill-after=10 "$timeout_s")

echo "side by side: ctmask vs torchvision, $preset, $device ($threads threads), $slices slices" \
    "${size}x${size}, batch 1 fp32, $rounds rounds; python $python" >&2
failed=0 longest=0
run() { # case tool round command...
    local name=$1_$2_$3; shift 3
    local t0=$SECONDS
    local need=$longest
    [[ $2 == ctmask ]] && need=$((2 * longest)) # its Python partner must fit too
    if [[ -n $budget_s ]] && ((t0 + need > budget_s)); then
        echo "  $name: skipped (--budget $budget_s s)" >&2
        failed=1
        return
    fi
    if "${limit[@]}" "$@" >"$work/runs/$name.out" 2>"$work/runs/$name.err"; then
        echo "  $name: $((SECONDS - t0)) s" >&2
    else
        echo "  $name: FAILED (exit $?; $work/runs/$name.err: $(tail -n 1 "$work/runs/$name.err"))" >&2
        failed=1
    fi
    ((SECONDS - t0 > longest)) && longest=$((SECONDS - t0))
    return 0
}
py=("$python" "$here/scripts/reference/bench_torchvision.py")
IFS=, read -r -a case_list <<<"$cases"
for ((r = 1; r <= rounds; r++)); do # rounds outside: under --budget, every case gets round 1 first
    for c in "${case_list[@]}"; do
        case $c in
        segmentation)
            run "$c" ctmask "$r" "$bin" bench "${common_rs[@]}"
            run "$c" python "$r" "${py[@]}" "${common_py[@]}" ;;
        screening)
            run "$c" ctmask "$r" "$bin" bench "${common_rs[@]}" "${cls_rs[@]}"
            run "$c" python "$r" "${py[@]}" "${common_py[@]}" "${cls_py[@]}" ;;
        training)
            run "$c" ctmask "$r" "$bin" bench "${common_rs[@]}" --train-step
            run "$c" python "$r" "${py[@]}" "${common_py[@]}" --train-step ;;
        *) echo "side_by_side.sh: unknown case $c" >&2; exit 2 ;;
        esac
    done
done

CASES=$cases WORK=$work JSON_OUT=$json_out META="$preset|$device|$threads|$slices|$size|$rounds|$python" \
    "$python" - <<'EOF'
import json, os, statistics
from pathlib import Path

work = Path(os.environ["WORK"])
preset, device, threads, slices, size, rounds, python = os.environ["META"].split("|")
titles = {"segmentation": "segmentation", "screening": "screening (seg + classifier)", "training": "training step"}


def last_json(p: Path):
    try:
        lines = [l for l in p.read_text().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except OSError:
        return None


summary = {"preset": preset, "device": device, "threads": int(threads), "slices": int(slices),
           "size": int(size), "rounds": int(rounds), "python": python, "cases": {}}
rows = []
for case in os.environ["CASES"].split(","):
    entry = {}
    for tool in ("ctmask", "python"):
        runs = [last_json(work / "runs" / f"{case}_{tool}_{r}.out") for r in range(1, int(rounds) + 1)]
        ok = [j for j in runs if j]
        if case == "training":
            vals = [1.0 / j["train_step_s"] for j in ok if j.get("train_step_s")]
        else:
            vals = [j["slices_per_s"] for j in ok if j.get("slices_per_s")]
        entry[tool] = {
            "runs": runs,
            "throughput": statistics.mean(vals) if vals else None,
            "per_round": vals,
            "peak_rss_mb": max((j["peak_rss_mb"] for j in ok if j.get("peak_rss_mb")), default=None),
            "peak_gpu_mb": max((j["peak_gpu_mb"] for j in ok if j.get("peak_gpu_mb")), default=None),
        }
    a, b = entry["ctmask"]["throughput"], entry["python"]["throughput"]
    entry["ratio_ctmask_over_python"] = a / b if a and b else None
    summary["cases"][case] = entry
    rows.append((case, entry))


def fmt(case, t):
    if not t["throughput"]:
        return "failed"
    if case == "training":
        each = " ".join(f"{1 / v:.2f}" for v in t["per_round"])
        return f"{1 / t['throughput']:.2f} s/step ({each})"
    each = " ".join(f"{v:.2f}" for v in t["per_round"])
    return f"{t['throughput']:.2f}/s ({each})"


def mb(v):
    return f"{v:.0f} MB" if v else "-"


gpu = device == "cuda"
print(f"ctmask vs torchvision reference: {preset}, {device} ({threads} threads), {slices} slices "
      f"{size}x{size}, batch 1 fp32, {rounds} round(s) of ctmask then python")
head = f"{'case':<30} {'ctmask':<26} {'python':<26} {'ratio':>6}  {'RSS ctmask':>10} {'RSS python':>10}"
if gpu:
    head += f" {'GPU ctmask':>10} {'GPU python':>10}"
print(head)
for case, e in rows:
    r = e["ratio_ctmask_over_python"]
    line = (f"{titles.get(case, case):<30} {fmt(case, e['ctmask']):<26} {fmt(case, e['python']):<26} "
            f"{(f'{r:.2f}x' if r else '-'):>6}  {mb(e['ctmask']['peak_rss_mb']):>10} {mb(e['python']['peak_rss_mb']):>10}")
    if gpu:
        line += f" {mb(e['ctmask']['peak_gpu_mb']):>10} {mb(e['python']['peak_gpu_mb']):>10}"
    print(line)
print("throughput: slices/s (training: s/step), mean of the rounds, each round in brackets; "
      "ratio = ctmask/python throughput (> 1: ctmask faster); RSS = peak resident memory of the process")
if os.environ.get("JSON_OUT"):
    Path(os.environ["JSON_OUT"]).write_text(json.dumps(summary, indent=1) + "\n")
EOF
return $failed
}
main "$@"
