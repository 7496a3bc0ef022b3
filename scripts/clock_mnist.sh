#!/usr/bin/env bash
# The README's simulated-clock table (issue 23): simulated time to 97% test accuracy on MNIST with the 2NN,
# 100 IID clients of 600 samples, E=1, B=10, lr 0.1, each client's speed drawn from lognormal(ln 100, 1) samples/s
# (keyed by the seed) and 20 Mbit/s links both ways; four ways to train:
#   fedavg    synchronous FedAvg, 10 clients a round (a round waits for its slowest)
#   deadline  the same with --deadline 10 (a round counts the clients that report within 10 s)
#   fedbuff   FedBuff, buffer K = 10, 20 clients training at once, server lr 1
#   fedasync  FedAsync, 20 clients training at once, mixing 0.6, staleness (1 + τ)^-0.5
# Usage: scripts/clock_mnist.sh DATA_DIR [OUT_DIR] [SEEDS]     (SEEDS: a sweep's values, default 0-2)
# FEDSIM=... picks the command (default `fedsim`; e.g. FEDSIM="python -m fedsim" from a checkout).
set -euo pipefail
data=${1:?usage: $0 DATA_DIR [OUT_DIR] [SEEDS]}
out=${2:-results/clock-mnist}
seeds=${3:-0-2}
fedsim=${FEDSIM:-fedsim}
common=(--dataset mnist --data-dir "$data" --clients 100 --iid --model mlp --lr 0.1 --batch-size 10
        --local-epochs 1 --speed "lognormal(4.605,1)" --bandwidth constant:2e7 --seed "$seeds" --out-dir "$out"
        --checkpoint-every 50 --quiet)
$fedsim sweep "${common[@]}" --name fedavg --fraction 0.1 --rounds 120
$fedsim sweep "${common[@]}" --name deadline --fraction 0.1 --deadline 10 --rounds 200
$fedsim sweep "${common[@]}" --name fedbuff --algo fedbuff --buffer-size 10 --concurrency 20 --rounds 200 \
    --eval-every 2
$fedsim sweep "${common[@]}" --name fedasync --algo fedasync --concurrency 20 --rounds 2000 --eval-every 10
$fedsim compare "$out"/*.csv --target 0.97 --format markdown
$fedsim compare "$out"/*.csv --target 0.97 --x sim_seconds --plot "$out/clock.png" > /dev/null
