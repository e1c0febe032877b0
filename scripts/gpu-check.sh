#!/usr/bin/env bash
# GPU checks of ctmask (issue 10), for a GPU test machine with no cargo and no internet: the
# release binary built elsewhere and carried as target/release/ctmask, PyTorch 2.11 (with
# torchvision) in /opt/torch/.venv. Within 5 minutes of GPU time (a global deadline; every step
# runs under `timeout` and is skipped when too little time is left), it:
#   1. points LD_LIBRARY_PATH at that venv's torch/lib and nvidia/*/lib and runs `ctmask doctor`;
#   2. benchmarks R50 screening (segmentation + classifier, deterministic weights of preset
#      r50-fpn5-frozenbn) on CUDA: fp32 batch 1, fp32 batch 8, bf16 at the daemon's default batch
#      (4: the memory check), bf16 batch 16, and bf16 batch 16 with CUDA graphs when this ctmask
#      has `bench --cuda-graphs`; each reports its device-to-host syncs per batch;
#   3. compares CUDA and CPU outputs of `ctmask segment` and `ctmask classify` in fp32 on 3 slices
#      (same count and labels, boxes within 1e-2 px, scores and probabilities within 1e-4, mask
#      areas within 1 %) with the benchmarked R50 models (`ctmask bench --save-models`), or
#      pretrained_models/demo_{segmentation,classifier}.safetensors when saving failed;
#   4. runs bench/side_by_side.sh --device cuda --quick --rounds 1 (ctmask vs torchvision, batch 1
#      fp32, segmentation and screening);
#   5. checks bf16 against fp32 on 24 slices: the same slice label (`ctmask classify --precision`)
#      on >= 99 % of them and a Dice >= 0.95 of the lesion masks (`ctmask segment --precision
#      --out`, the <name>_mask.png files, lesion = any non-zero pixel, pooled over all slices),
#      with the demo weights (trained: the gated check) and with the R50 deterministic weights
#      (random: their class probabilities all lie near 0.5, so labels there flip on rounding;
#      reported, not gated). Step 3 also runs on the demo weights.
# Results: one small JSON file, $OUT/gpu-check.json (./gpu-check-results.json when $OUT is unset),
# with the step statuses, the figures and the issue's pass/fail checks; the full output goes to
# gpu-check.log beside it.
#
# Usage: scripts/gpu-check.sh [--cpu-dry-run] [--torch-venv DIR] [--slices N] [--budget S]
#   --cpu-dry-run   test the script without a GPU: cpu instead of cuda, preset r18-t1, 4 slices,
#                   batch 2, side by side on 2 slices in one round; torch venv /work/refenv/venv
#   --torch-venv    the PyTorch venv (default /opt/torch/.venv)
#   --slices N      slices per bench run (default 96)
#   --budget S      total seconds for all steps (default 285; 900 with --cpu-dry-run)
# Exit status: 0 when every step ran and every check that could be made passed, 1 otherwise.
set -uo pipefail

# the whole script is one function, so that bash has read all of it before it runs
main() {
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dry=0 venv="" slices=48 slices_set="" budget=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --cpu-dry-run) dry=1; shift ;;
    --torch-venv) venv=$2; shift 2 ;;
    --slices) slices=$2; slices_set=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; return 0 ;;
    *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; return 2 ;;
    esac
done
if [[ $dry == 1 ]]; then
    dev=cpu preset=r18-t1 n_det=128 s_feat=512 slices=4 big_batch=2 venv=${venv:-/work/refenv/venv}
    budget=${budget:-900}
else
    dev=cuda preset=r50-fpn5-frozenbn n_det=256 s_feat=1024 big_batch=8 venv=${venv:-/opt/torch/.venv}
    slices=${slices_set:-96}
    budget=${budget:-285}
fi
deadline=$((SECONDS + budget))
outdir=${OUT:-.}
if [[ -n ${OUT:-} ]]; then results=$outdir/gpu-check.json; else results=$outdir/gpu-check-results.json; fi
log=$outdir/gpu-check.log
mkdir -p "$outdir"
: >"$log"
exec > >(tee -a "$log") 2>&1
tee_pid=$!
work=$(mktemp -d "${TMPDIR:-/tmp}/ctmask-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/steps"
bin=$here/target/release/ctmask
py=$venv/bin/python3
[[ -x $py ]] || py=$(command -v python3)

# 1. libraries: the venv's libtorch and the NVIDIA wheels' libraries
sp=$(ls -d "$venv"/lib/python3.*/site-packages 2>/dev/null | head -n 1)
libs=""
if [[ -n $sp && -d $sp/torch/lib ]]; then
    libs=$sp/torch/lib
    for d in "$sp"/nvidia/*/lib "$sp"/nvidia/*/*/lib; do [[ -d $d ]] && libs=$libs:$d; done
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
else
    echo "gpu-check: no torch/lib under $venv/lib/python3.*/site-packages; using the binary's own libtorch path"
fi
echo "gpu-check: $(date -u +%FT%TZ) dry_run=$dry device=$dev preset=$preset venv=$venv python=$py"
echo "gpu-check: LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# step NAME LIMIT_S CMD...: run with stdout to steps/NAME.out, status in steps/NAME.status
step() {
    local name=$1 limit=$2; shift 2
    local left=$((deadline - SECONDS - 5))
    if ((left < 10)); then
        echo "skipped: out of time budget" >"$work/steps/$name.status"
        echo "== $name: skipped (out of time)"; return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" >"$work/steps/$name.out" 2> >(tee "$work/steps/$name.err" >&2) || rc=$?
    local s="ok"
    ((rc == 124 || rc == 137)) && s="timeout after ${limit}s"
    ((rc != 0 && rc != 124 && rc != 137)) && s="failed: exit $rc"
    echo "$s|$((SECONDS - t0))" >"$work/steps/$name.status"
    echo "== $name: $s in $((SECONDS - t0))s"
    tail -c 2000 "$work/steps/$name.out"; echo
    return $rc
}
skip() { echo "skipped: $2" >"$work/steps/$1.status"; echo "== $1: skipped: $2"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$work/nvidia-smi.txt" 2>/dev/null || true
cuda_ok=1
if ! [[ -x $bin ]]; then
    echo "gpu-check: no binary at $bin"; cuda_ok=0
    skip doctor "no binary at $bin"
elif step doctor 60 "$bin" doctor --json; then
    if [[ $dry == 0 ]] && ! grep -q '"cuda_available": *true' "$work/steps/doctor.out"; then
        cuda_ok=0
    fi
else
    cuda_ok=0
fi

# 2. bench: R50 screening on CUDA
run_bench() { # name precision batch [more arguments]
    step "$1" 90 "$bin" bench --log warn --preset "$preset" --classify --detections "$n_det" \
        --s-features "$s_feat" --slices "$slices" --size 512 --warmup 2 --device "$dev" \
        --precision "$2" --batch-size "$3" --json "${@:4}"
}
bench_names=(bench_fp32_b1 bench_fp32_b$big_batch bench_bf16_b4 bench_bf16_b16 bench_bf16_b16_graphs)
if [[ $cuda_ok == 1 ]]; then
    run_bench bench_fp32_b1 fp32 1 --save-models "$work/models"
    run_bench bench_fp32_b$big_batch fp32 "$big_batch"
    run_bench bench_bf16_b4 bf16 4
    run_bench bench_bf16_b16 bf16 16
    if "$bin" bench --help 2>/dev/null | grep -q -- '--cuda-graphs'; then
        run_bench bench_bf16_b16_graphs bf16 16 --cuda-graphs
    else
        skip bench_bf16_b16_graphs "this ctmask bench has no --cuda-graphs"
    fi
else
    for n in "${bench_names[@]}"; do skip "$n" "CUDA is not usable (see doctor)"; done
fi

# 3. CUDA vs CPU on 3 slices (one per class: synth cycles control, CP, COVID per 5-slice patient)
models=""
if [[ $cuda_ok == 1 ]]; then
    "$bin" synth --log warn --layout covidx --size 512 --count 15 --seed 5 --out "$work/slices" >/dev/null
    mapfile -t all < <(LC_ALL=C ls "$work"/slices/*.png)
    three=("${all[0]}" "${all[5]}" "${all[10]}")
    demo_seg=$here/pretrained_models/demo_segmentation.safetensors
    demo_cls=$here/pretrained_models/demo_classifier.safetensors
    if [[ -f $work/models/segmentation.safetensors && -f $work/models/classifier.safetensors ]]; then
        seg_model=$work/models/segmentation.safetensors cls_model=$work/models/classifier.safetensors
        models="the benchmarked $preset models (deterministic weights, ctmask bench --save-models)"
    elif [[ -f $demo_seg && -f $demo_cls ]]; then
        seg_model=$demo_seg cls_model=$demo_cls models="demo weights (pretrained_models/)"
    fi
    if [[ -n $models ]]; then
        step segment_cuda 60 "$bin" segment --log warn --model "$seg_model" --device "$dev" --json - "${three[@]}"
        step segment_cpu 90 "$bin" segment --log warn --model "$seg_model" --device cpu --json - "${three[@]}"
        step classify_cuda 60 "$bin" classify --log warn --model "$cls_model" --device "$dev" --json - "${three[@]}"
        step classify_cpu 90 "$bin" classify --log warn --model "$cls_model" --device cpu --json - "${three[@]}"
        if [[ -f $demo_seg && -f $demo_cls && $seg_model != "$demo_seg" ]]; then
            step segment_cuda_demo 60 "$bin" segment --log warn --model "$demo_seg" --device "$dev" --json - "${three[@]}"
            step segment_cpu_demo 60 "$bin" segment --log warn --model "$demo_seg" --device cpu --json - "${three[@]}"
            step classify_cuda_demo 60 "$bin" classify --log warn --model "$demo_cls" --device "$dev" --json - "${three[@]}"
            step classify_cpu_demo 60 "$bin" classify --log warn --model "$demo_cls" --device cpu --json - "${three[@]}"
        fi
    else
        skip segment_cuda "no model files (bench --save-models failed and there are no demo weights)"
    fi
else
    skip segment_cuda "CUDA is not usable (see doctor)"
fi

# 4. side by side with torchvision on the GPU
if [[ $cuda_ok == 1 ]]; then
    if [[ $dry == 1 ]]; then
        sbs=(--device cpu --preset "$preset" --slices 2 --rounds 1 --timeout 120)
    else
        sbs=(--device cuda --quick --rounds 1 --timeout 60 --cases segmentation,screening)
    fi
    # leave time for bf16 (4 short runs) and for the summary after the last run
    sbs_limit=$((deadline - SECONDS - 60)); ((sbs_limit > 170)) && sbs_limit=170
    sbs+=(--budget $((sbs_limit - 15)))
    step side_by_side "$sbs_limit" "$here/bench/side_by_side.sh" "${sbs[@]}" --python "$py" --json "$work/side_by_side.json"
else
    skip side_by_side "CUDA is not usable (see doctor)"
fi

# 5. bf16 vs fp32 agreement (skipped where a carried binary is too old to support it)
bf16_reason=""
if [[ $cuda_ok != 1 || -z $models ]]; then
    bf16_reason="CUDA is not usable or there are no model files"
elif ! "$bin" classify --help 2>/dev/null | grep -q -- '--precision'; then
    bf16_reason="this ctmask classify has no --precision option; only the bench throughput of bf16 is measured"
else
    agree_n=24; [[ $dry == 1 ]] && agree_n=3
    "$bin" synth --log warn --layout covidx --size 512 --count "$agree_n" --seed 6 --out "$work/agree" >/dev/null
    mapfile -t agree < <(LC_ALL=C ls "$work"/agree/*.png)
    step classify_fp32 60 "$bin" classify --log warn --model "$cls_model" --device "$dev" --precision fp32 --json - "${agree[@]}"
    step classify_bf16 60 "$bin" classify --log warn --model "$cls_model" --device "$dev" --precision bf16 --json - "${agree[@]}"
    if "$bin" segment --help 2>/dev/null | grep -q -- '--precision' && "$bin" segment --help | grep -q -- '--out'; then
        step segment_fp32 60 "$bin" segment --log warn --model "$seg_model" --device "$dev" --precision fp32 --out "$work/seg_fp32" --json - "${agree[@]}"
        step segment_bf16 60 "$bin" segment --log warn --model "$seg_model" --device "$dev" --precision bf16 --out "$work/seg_bf16" --json - "${agree[@]}"
    fi
    demo_seg=$here/pretrained_models/demo_segmentation.safetensors
    demo_cls=$here/pretrained_models/demo_classifier.safetensors
    if [[ -f $demo_seg && -f $demo_cls ]]; then
        step classify_fp32_demo 60 "$bin" classify --log warn --model "$demo_cls" --device "$dev" --precision fp32 --json - "${agree[@]}"
        step classify_bf16_demo 60 "$bin" classify --log warn --model "$demo_cls" --device "$dev" --precision bf16 --json - "${agree[@]}"
        step segment_fp32_demo 60 "$bin" segment --log warn --model "$demo_seg" --device "$dev" --precision fp32 --out "$work/seg_fp32_demo" --json - "${agree[@]}"
        step segment_bf16_demo 60 "$bin" segment --log warn --model "$demo_seg" --device "$dev" --precision bf16 --out "$work/seg_bf16_demo" --json - "${agree[@]}"
    fi
fi
[[ -n $bf16_reason ]] && skip bf16_agreement "$bf16_reason"

WORK=$work RESULTS=$results DRY=$dry DEV=$dev PRESET=$preset MODELS=$models ELAPSED=$SECONDS \
    BIG=$big_batch "$py" - <<'EOF'
import json, os
from pathlib import Path

work = Path(os.environ["WORK"])
steps_dir = work / "steps"


def read_json(name):
    p = steps_dir / f"{name}.out"
    try:
        t = p.read_text()
        return json.loads(t[t.index("[") if t.lstrip().startswith("[") else t.index("{"):])
    except (OSError, ValueError):
        return None


steps = {}
for s in sorted(steps_dir.glob("*.status")):
    status, _, secs = s.read_text().strip().partition("|")
    steps[s.stem] = {"status": status, "seconds": int(secs) if secs else None}

doctor = read_json("doctor") or {}
gpu = (work / "nvidia-smi.txt").read_text().strip() if (work / "nvidia-smi.txt").exists() else ""
big = os.environ["BIG"]
bench = {}
for name in ("bench_fp32_b1", f"bench_fp32_b{big}", "bench_bf16_b4", "bench_bf16_b16", "bench_bf16_b16_graphs"):
    j = read_json(name)
    if isinstance(j, dict):
        bench[name] = {k: j.get(k) for k in ("device", "precision", "batch_size", "slices", "slices_per_s",
                                             "latency_ms_p50", "latency_ms_p95", "peak_rss_mb", "peak_gpu_mb",
                                             "syncs_per_batch", "stage_ms_per_slice", "cuda_graphs", "cuda_graphs_vs_eager")}


def compare(sfx=""):
    sc, sp = read_json("segment_cuda" + sfx), read_json("segment_cpu" + sfx)
    cc, cp = read_json("classify_cuda" + sfx), read_json("classify_cpu" + sfx)
    if sc is None or sp is None:
        return None
    problems, box_d, score_d, area_r, prob_d = [], 0.0, 0.0, 0.0, 0.0
    for a, b in zip(sc, sp):
        da, db = a["detections"], b["detections"]
        name = Path(a["input"]).name
        if len(da) != len(db):
            problems.append(f"{name}: {len(da)} detections on cuda, {len(db)} on cpu")
        for x, y in zip(da, db):
            if x["label"] != y["label"]:
                problems.append(f"{name}: label {x['label']} vs {y['label']}")
            box_d = max(box_d, max(abs(p - q) for p, q in zip(x["box"], y["box"])))
            score_d = max(score_d, abs(x["score"] - y["score"]))
            if max(x["mask_area_px"], y["mask_area_px"]) > 0:
                area_r = max(area_r, abs(x["mask_area_px"] - y["mask_area_px"]) / max(x["mask_area_px"], y["mask_area_px"]))
    if cc is not None and cp is not None:
        for a, b in zip(cc, cp):
            if a["label"] != b["label"]:
                problems.append(f"{Path(a['input']).name}: class {a['label']} vs {b['label']}")
            prob_d = max(prob_d, max(abs(p - q) for p, q in zip(a["probabilities"], b["probabilities"])))
    else:
        problems.append("classify did not run on both devices")
    detections = [len(a["detections"]) for a in sc]
    ok = not problems and box_d <= 1e-2 and score_d <= 1e-4 and area_r <= 0.01 and prob_d <= 1e-4
    models = "demo weights (pretrained_models/)" if sfx == "_demo" else os.environ.get("MODELS")
    return {"models": models, "slices": len(sc), "detections_cuda": detections,
            "max_box_diff_px": box_d, "max_score_diff": score_d, "max_mask_area_rel_diff": area_r,
            "max_probability_diff": prob_d, "problems": problems[:10], "pass": ok}


def bf16(sfx=""):
    f, b = read_json("classify_fp32" + sfx), read_json("classify_bf16" + sfx)
    if f is None or b is None:
        st = steps.get("bf16_agreement", {}).get("status", "not run")
        return {"pass": None, "status": st}
    same = sum(x["label"] == y["label"] for x, y in zip(f, b)) / max(1, len(f))
    res = {"slices": len(f), "same_label_fraction": same,
           "max_probability_diff": max((abs(p - q) for x, y in zip(f, b)
                                        for p, q in zip(x["probabilities"], y["probabilities"])), default=None)}
    sf, sb = read_json("segment_fp32" + sfx), read_json("segment_bf16" + sfx)
    if sf is not None and sb is not None:
        res["same_detection_count_fraction"] = sum(
            len(x["detections"]) == len(y["detections"]) for x, y in zip(sf, sb)) / max(1, len(sf))
    dice = None
    da, db = work / ("seg_fp32" + sfx), work / ("seg_bf16" + sfx)
    if da.is_dir() and db.is_dir():
        try:
            import numpy as np
            from PIL import Image
            inter = tot = pairs = 0
            for p in sorted(da.rglob("*_mask.png")):
                q = db / p.relative_to(da)
                if q.exists():
                    x = np.asarray(Image.open(p)) > 0
                    y = np.asarray(Image.open(q)) > 0
                    inter += int((x & y).sum()); tot += int(x.sum() + y.sum()); pairs += 1
            res["mask_pairs"] = pairs
            if pairs:
                dice = 2 * inter / tot if tot else 1.0  # no lesion pixels in either: they agree
            else:
                res["dice_error"] = "no <name>_mask.png pairs in the two --out folders"
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            res["dice_error"] = str(e)
    res["lesion_mask_dice"] = dice
    res["pass"] = same >= 0.99 and (dice is None or dice >= 0.95)
    return res


sbs = None
p = work / "side_by_side.json"
if p.exists():
    s = json.loads(p.read_text())
    sbs = {"device": s["device"], "slices": s["slices"], "rounds": s["rounds"], "cases": {}}
    for c, e in s["cases"].items():
        sbs["cases"][c] = {
            "ctmask_per_s": e["ctmask"]["throughput"], "python_per_s": e["python"]["throughput"],
            "ratio_ctmask_over_python": e["ratio_ctmask_over_python"],
            "peak_rss_mb": {"ctmask": e["ctmask"]["peak_rss_mb"], "python": e["python"]["peak_rss_mb"]},
            "peak_gpu_mb": {"ctmask": e["ctmask"]["peak_gpu_mb"], "python": e["python"]["peak_gpu_mb"]},
        }

best = max(bench.values(), key=lambda b: b.get("slices_per_s") or 0, default=None)
best_rate = best.get("slices_per_s") if best else None
py_rate = (((sbs or {}).get("cases") or {}).get("screening") or {}).get("python_per_s")
checks = {
    "best_screening_config": f"{best['precision']} batch {best['batch_size']}" if best else None,
    "screening_at_least_100_per_s": None if best_rate is None else best_rate >= 100,
    "screening_at_least_3x_python_fp32_b1": None if not (best_rate and py_rate) else best_rate >= 3 * py_rate,
    "screening_vs_python_ratio": None if not (best_rate and py_rate) else best_rate / py_rate,
}
cvc = compare()
cvc_demo = compare("_demo")
agree = bf16()
agree_demo = bf16("_demo")
checks["cuda_cpu_parity_fp32"] = cvc_demo["pass"] if cvc_demo else (cvc["pass"] if cvc else None)
checks["cuda_cpu_parity_fp32_r50_random"] = cvc["pass"] if cvc else None
checks["bf16_agrees_with_fp32"] = agree_demo.get("pass") if agree_demo.get("pass") is not None else agree.get("pass")
checks["bf16_agrees_with_fp32_r50_random"] = agree.get("pass")
b4 = bench.get("bench_bf16_b4") or {}
checks["bf16_default_batch_gpu_mb"] = b4.get("peak_gpu_mb")
checks["bf16_default_batch_under_8gb"] = None if b4.get("peak_gpu_mb") is None else b4["peak_gpu_mb"] < 8192
fails = [n for n, st in steps.items() if not st["status"].startswith(("ok", "skipped"))]
res = {
    "dry_run": os.environ["DRY"] == "1",
    "device": os.environ["DEV"],
    "preset": os.environ["PRESET"],
    "gpu": gpu or None,
    "doctor": {k: doctor.get(k) for k in ("ctmask_version", "libtorch_version", "libtorch_path", "cuda_available",
                                          "cuda_unavailable_reason", "cuda_devices", "cores_available")},
    "steps": steps,
    "bench": bench,
    "cuda_vs_cpu": cvc,
    "cuda_vs_cpu_demo": cvc_demo,
    "bf16_vs_fp32": agree,
    "bf16_vs_fp32_demo": agree_demo,
    "side_by_side": sbs,
    "checks": checks,
    "failed_steps": fails,
    "total_s": int(os.environ["ELAPSED"]),
}
Path(os.environ["RESULTS"]).write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps({"checks": checks, "failed_steps": fails}, indent=1))
gated = ("cuda_", "bf16_") if res["dry_run"] else ("screening_at", "cuda_", "bf16_")  # no speed goals on a CPU
bad = fails or any(v is False for k, v in checks.items() if k.startswith(gated) and not k.endswith("_r50_random"))
raise SystemExit(1 if bad else 0)
EOF
local rc=$?
echo "gpu-check: results in $results, log in $log ($SECONDS s)"
exec >/dev/null 2>&1
wait "$tee_pid" 2>/dev/null # the log is complete when the script ends
return $rc
}
main "$@"
