#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run, within a time limit; each step's output goes to its own
# file under OUT_DIR as it runs, so a run cut short still leaves what finished: steps.txt (the machine and the steps),
# one log per step, and each real-size run's tables in a folder of their own (8 files for PART `real`).
#
#     bash benchmarks/gpu_suite.sh OUT_DIR [SECONDS] [PART]     # SECONDS: the whole run's limit (default 540)
#
# PART `real` (the default): the `gpu`-marked tests, then the 7B-shaped real-size benchmark, one process per model so
# that each gets its own time budget (prefill, flash, and decode with interleaved rounds).
# PART `extra`: LVTC's host work, LVTC against its oracle at 0.5B, vtc's host overhead where the host is the
# bottleneck, the anatomy of a 7B decode step, decode speed at 0.5B (interleaved rounds), LVTC's pooling kernel
# against a matrix product at width 4096, then torch.compile on a small LLaVA-shaped model.
# PART `gaps`: what the targets still open need (benchmarks/README.md, "Left open"): the first-sight cost of a decode
# step per SDPA backend (with and without TORCH_CUDNN_SDPA_AVOID_RECOMPILE), LVTC's host work at batch 16, Qwen2-VL's
# 7B prefill at batch 1 with 12 rounds, 7B decode at batch 32 (first generations apart, then 2 rounds), torch.compile
# with the graph breaks named. It writes more than 8 files: archive OUT_DIR when the files that come back are limited.
# PART `prune`: the pruning baselines (pool, random, DivPrune, VisionZip, FastV, DART, PyramidDrop) and LVTC without
# restore against the shorter-sequence oracle of their own layer lengths, with decode speed and KV cache, at 0.5B and
# at 7B shapes in bfloat16, batch 8 (`prune_speed.py`).
set -u
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [SECONDS]}
limit=${2:-540}
part=${3:-real}
mkdir -p "$out"
start=$(date +%s)
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

left() { echo $((limit - ($(date +%s) - start))); }

# step NAME CAP_SECONDS COMMAND...: run COMMAND for at most min(CAP, what is left - RESERVE) seconds
step() {
  local name=$1 cap=$2 reserve=${RESERVE:-0}
  shift 2
  local budget=$(($(left) - reserve))
  ((budget > cap)) && budget=$cap
  if ((budget < 20)); then
    echo "[$name] skipped: $(left) s left" | tee -a "$out/steps.txt"
    return
  fi
  echo "[$name] up to $budget s: $*" | tee -a "$out/steps.txt"
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=10 "$budget" "$@" >"$out/$name.txt" 2>&1
  echo "[$name] exit $? after $(($(date +%s) - t0)) s" | tee -a "$out/steps.txt"
  tail -n 40 "$out/$name.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, \
transformers.__version__)"
} 2>&1 | tee "$out/steps.txt"

# With vtc installed from a wheel, the source tree's vtc/ (which lacks vtc.adapters) must not shadow it: -P keeps the
# working directory off sys.path. An editable install needs the working directory, and works either way.
pytest=(python -m pytest)
python -c "import vtc.adapters" 2>/dev/null || pytest=(python -P -m pytest)

if [[ $part == real ]]; then
  RESERVE=440 step gpu_tests 100 "${pytest[@]}" -q -p no:cacheprovider --continue-on-collection-errors -m gpu tests
  for family in llava qwen2_vl; do  # half of what is left to the first model, the rest to the second
    [[ $family == llava ]] && share=$(($(left) / 2))
    [[ $family == qwen2_vl ]] && share=$(left)
    step "real_size_$family" "$share" python benchmarks/real_size.py --device cuda --families "$family" \
      --out "$out/real_size_$family" --decode-repeats 2 --budget-s $((share - 40))
  done
elif [[ $part == prune ]]; then
  RESERVE=330 step prune_speed 150 python benchmarks/prune_speed.py --device cuda --dtype bfloat16 --batch 8 \
    --repeats 5 --new-tokens 32
  step prune_speed_7b 330 python benchmarks/prune_speed.py --device cuda --dtype bfloat16 --batch 8 --7b \
    --repeats 5 --new-tokens 32
elif [[ $part == gaps ]]; then
  RESERVE=490 step first_sight 60 python benchmarks/first_sight.py --device cuda --batch 32 --new-tokens 32
  RESERVE=430 step first_sight_avoid_recompile 60 env TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 \
    python benchmarks/first_sight.py --device cuda --batch 32 --new-tokens 32
  RESERVE=370 step lvtc_host_work 60 python benchmarks/lvtc_host_work.py --device cuda --dtype bfloat16 --batch 16 \
    --repeats 3
  RESERVE=325 step real_size_batch1 45 python benchmarks/real_size.py --device cuda --families qwen2_vl --batches 1 \
    --repeats 12 --no-flash --no-decode --out "$out/real_size_batch1" --budget-s 35
  RESERVE=50 step real_size_decode 280 python benchmarks/real_size.py --device cuda --batches 32 --repeats 1 \
    --no-flash --decode-repeats 2 --out "$out/real_size_decode" --budget-s 260
  step compile_speed 80 python benchmarks/compile_speed.py --device cuda --dtype bfloat16 --batch 8 --repeats 3 \
    --vision-layers 1 --text-layers 4 --compress-layer 1 --restore-layer -1
else
  RESERVE=200 step lvtc_host_work 60 python benchmarks/lvtc_host_work.py --device cuda --dtype bfloat16 --batch 16 \
    --repeats 3
  RESERVE=150 step lvtc_speed 60 python benchmarks/lvtc_speed.py --device cuda --dtype bfloat16 --batch 16 --repeats 10
  RESERVE=200 step host_overhead 60 python benchmarks/host_overhead.py --device cuda --dtype bfloat16 --repeats 5
  RESERVE=200 step decode_anatomy 150 python benchmarks/decode_anatomy.py --device cuda --batch 32
  RESERVE=110 step decode_speed 90 python benchmarks/decode_speed.py --device cuda --dtype bfloat16 --batch 16 \
    --repeats 3 --new-tokens 64
  RESERVE=100 step pool_kernels 40 python benchmarks/pool_kernels.py --device cuda --dtype bfloat16
  step compile_speed 300 python benchmarks/compile_speed.py --device cuda --dtype bfloat16 --batch 8 --repeats 5 \
    --vision-layers 1 --text-layers 8
fi
echo "done in $(($(date +%s) - start)) s" | tee -a "$out/steps.txt"
