#!/usr/bin/env bash
# The README's robustness table: FedAvg on MNIST Dirichlet(0.1), 20 clients (all every round), mlp, B=10, lr 0.05,
# 50 local steps a round, 20 rounds, one seed; the server's mean, median, trimmed mean (10% each end), Krum or
# multi-Krum (f = 8, the most 20 clients allow; m = 12), with 0%, 10% or 30% of the clients sending their update
# times -4.
# Usage: scripts/robust_mnist_dir01.sh DATA_DIR [OUT_DIR]
set -euo pipefail
data=${1:?usage: $0 DATA_DIR [OUT_DIR]}
out=${2:-results/mnist-dir0.1-robust}
mkdir -p "$out"
fedsim partition --dataset mnist --data-dir "$data" --clients 20 --dirichlet 0.1 --seed 0 \
    --out "$out/partition.fsp" > /dev/null
for aggregate in mean median trimmed-mean krum multi-krum; do
    for attackers in 0 0.1 0.3; do
        attack=()
        if [ "$attackers" != 0 ]; then attack=(--malicious-fraction "$attackers" --attack sign-flip); fi
        fedsim train --dataset mnist --data-dir "$data" --partition "$out/partition.fsp" --model mlp \
            --rounds 20 --lr 0.05 --batch-size 10 --local-steps 50 --aggregate "$aggregate" "${attack[@]}" \
            --out-dir "$out" --name "$aggregate-$attackers" --overwrite --quiet \
            || echo "$aggregate-$attackers stopped (exit $?): the table says how"  # an attacked mean may diverge
    done
done
fedsim compare "$out"/*.csv --format markdown
