#!/usr/bin/env bash
# The GPU checks, as one prepared script for a fresh GPU machine (about 8-12 minutes): install, the CUDA
# tests, the benchmark's W and W-large on CUDA, the sweep's 8 seeds against one run, and a 20-round MNIST
# CNN run with the default executor with its peak GPU memory and busy percentage. Ends with a markdown table
# to paste into the README.
#
#   FEDSIM_DATA=<folder holding MNIST/raw/*.gz> bash scripts/gpu_check.sh      # default data: ../shared/data
#
# On the lent GPU machine (nothing can be downloaded there; its python3 has torch, typer, rich, pandas), copy
# the MNIST files into an ignored folder first and carry it: mkdir -p .gpu-data && cp -r ../shared/data/MNIST
# .gpu-data/ (then FEDSIM_DATA=.gpu-data). Logs go to $OUT (or /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
data=${FEDSIM_DATA:-../shared/data}
py=python3

step() { echo; echo "== $1"; }
step "install (no network: the machine's own torch and friends)"
$py -m pip install --no-deps --no-build-isolation -q -e . >"$out/install.log" 2>&1 || { tail -5 "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

step "CUDA tests (pytest -k cuda)"
timeout 150 $py -m pytest -q -k cuda tests/ 2>&1 | tee "$out/pytest_cuda.log" | tail -5
cuda_tests=$(tail -1 "$out/pytest_cuda.log")

step "benchmark W on CUDA"
timeout 150 $py scripts/benchmark.py --workload w --device cuda --rounds 5 2>&1 | tee "$out/bench_w.log"
step "benchmark W-large on CUDA"
timeout 200 $py scripts/benchmark.py --workload w-large --device cuda --rounds 5 2>&1 | tee "$out/bench_w_large.log"

step "fedsim sweep on CUDA (issue 11): W and W-large x 8 seeds against one run"
timeout 240 $py scripts/bench_sweep.py --case gpu --workload w --seeds 8 --rounds 20 --data-dir "$data" 2>&1 \
    | tee "$out/sweep_w.log"
timeout 300 $py scripts/bench_sweep.py --case gpu --workload w-large --seeds 8 --rounds 10 --data-dir "$data" 2>&1 \
    | tee "$out/sweep_w_large.log"

step "fedsim train: MNIST, CNN, 100 clients, 10 a round, 20 rounds, default executor"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$out/smi.csv" &
smi=$!
start=$(date +%s.%N)
timeout 200 fedsim train --dataset mnist --data-dir "$data" --model cnn --clients 100 --fraction 0.1 \
    --rounds 20 --out-dir "$out" --name gpu-mnist-cnn --overwrite --quiet 2>&1 | tail -3
rc=$?
wall=$(echo "$(date +%s.%N) - $start" | bc)
kill $smi 2>/dev/null
read -r busy peak < <(awk -F', *' '{u+=$1; n++; if ($2>m) m=$2} END {printf "%.0f %d\n", (n ? u/n : 0), m}' "$out/smi.csv")
record="$out/gpu-mnist-cnn.json"
summary=$($py - "$record" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, e = r.get("summary", {}), r["executor"]
print(f"{s.get('final_test_accuracy', float('nan')):.4f} {s.get('elapsed_seconds', float('nan')):.1f} {e['name']}")
PY
)
read -r acc train_s executor <<<"${summary:-nan nan ?}"

step "summary (paste into the README)"
echo "| check | result |"
echo "|---|---|"
echo "| GPU | $(head -1 "$out/gpu.txt") |"
echo "| CUDA tests | ${cuda_tests} |"
echo "| W (cnn, 10 clients a round): fedsim vmap vs one-model loop | see bench_w.log table above |"
echo "| W-large (1,000 clients, 100 a round) | see bench_w_large.log table above |"
echo "| sweep of 8 seeds / one run (target <= 2x) | see sweep_w.log, sweep_w_large.log above |"
echo "| MNIST CNN 20 rounds (exit $rc): final test accuracy | $acc |"
echo "| training time (rounds) / whole command | ${train_s} s / ${wall} s |"
echo "| executor | $executor |"
echo "| GPU busy (mean over the run, nvidia-smi) / peak GPU memory | ${busy}% / ${peak} MiB |"
