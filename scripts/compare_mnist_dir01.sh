#!/usr/bin/env bash
# The README's algorithm comparison: MNIST Dirichlet(0.1), 20 clients, all clients every round, mlp,
# E=1, B=10, lr 0.05, 30 rounds, one seed. Usage: scripts/compare_mnist_dir01.sh DATA_DIR [OUT_DIR]
set -euo pipefail
data=${1:?usage: $0 DATA_DIR [OUT_DIR]}
out=${2:-results/mnist-dir0.1}
mkdir -p "$out"
fedsim partition --dataset mnist --data-dir "$data" --clients 20 --dirichlet 0.1 --seed 0 \
    --out "$out/partition.fsp" --plot "$out/split.png"
for algo in fedavg fedprox scaffold fedper fedrep ditto fedas; do
    fedsim train --dataset mnist --data-dir "$data" --partition "$out/partition.fsp" --model mlp \
        --rounds 30 --lr 0.05 --batch-size 10 --local-epochs 1 --algo "$algo" --mu 0.01 --lam 0.1 \
        --out-dir "$out" --name "$algo" --overwrite --quiet
done
fedsim compare "$out"/*.csv --format markdown
fedsim compare "$out"/*.csv --metric personal_accuracy_mean --plot "$out/personal.png" > /dev/null
