"""The README's simulated-clock table (issue 23): simulated time to 97% test accuracy on MNIST with the 2NN.

100 IID clients of 600 samples, E=1, B=10, lr 0.1; each client's speed drawn from lognormal(ln 100, 1) samples/s
(keyed by the seed: a median client trains its epoch in 6 s, one in ten takes over 22 s) and 20 Mbit/s links both
ways (the 2NN's 797 KB take 0.32 s). Four ways to train, each over the seeds (one `fedsim sweep` each):

    fedavg    synchronous FedAvg, 10 clients a round (a round waits for its slowest client)
    deadline  the same with --deadline 10 (a round counts the clients that report within 10 s)
    fedbuff   FedBuff, buffer K = 10, 20 clients training at once, server lr 1
    fedasync  FedAsync, 20 clients training at once, mixing 0.6, staleness (1 + τ)^-0.5

    python scripts/clock_mnist.py --data-dir ../shared/data [--out results/clock-mnist] [--seeds 0-2]

Prints the commands, the machine, a markdown table (simulated time and server steps to 97%, mean ± sample std over
the seeds that reached it, the speed-up over FedAvg, the final accuracy) and `fedsim compare`'s full table; writes
the accuracy against simulated time to <out>/clock.png. Runs already finished are kept (a sweep resumes).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time

RUNS = {  # name -> (what it is, its own options)
    "fedavg": ("FedAvg, 10 clients a round", ["--fraction", "0.1", "--rounds", "60"]),
    "deadline": ("FedAvg, 10 a round, --deadline 10", ["--fraction", "0.1", "--deadline", "10", "--rounds", "80"]),
    "fedbuff": ("FedBuff, K = 10, concurrency 20", ["--algo", "fedbuff", "--buffer-size", "10", "--concurrency", "20",
                                                    "--rounds", "100", "--eval-every", "2"]),
    "fedasync": ("FedAsync, concurrency 20, α = 0.6", ["--algo", "fedasync", "--concurrency", "20", "--rounds", "1000",
                                                       "--eval-every", "10"]),
}
TARGET = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="results/clock-mnist")
    parser.add_argument("--seeds", default="0-2")
    args = parser.parse_args()
    common = ["--dataset", "mnist", "--data-dir", args.data_dir, "--clients", "100", "--iid", "--model", "mlp",
              "--lr", "0.1", "--batch-size", "10", "--local-epochs", "1", "--speed", "lognormal(4.605,1)",
              "--bandwidth", "constant:2e7", "--seed", args.seeds, "--out-dir", args.out, "--checkpoint-every", "50",
              "--quiet"]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    walls = {}
    for name, (_, own) in RUNS.items():
        command = [sys.executable, "-m", "fedsim", "sweep", *common, "--name", name, *own]
        print("$ fedsim " + shlex.join(command[3:]), flush=True)
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        walls[name] = time.perf_counter() - began
    print_table(args.out, walls)


def print_table(out: str, walls: dict) -> None:
    import math
    from pathlib import Path

    from fedsim.compare import compare_runs, plot_curves, to_markdown
    from fedsim.compare.summary import _mean_std

    def pm(values, digits=0):
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "–"
        mean, std = _mean_std(values)
        return f"{mean:.{digits}f}" + ("" if len(values) < 2 else f" ± {std:.{digits}f}")

    rows, fedavg = [], None
    for name, (what, _) in RUNS.items():
        summary = compare_runs(sorted(Path(out).glob(f"{name}*.csv")), target=TARGET)
        runs = summary.runs[0]
        sim = [r.sim_time_to_target for r in runs if r.reached]
        steps = [r.rounds_to_target for r in runs if r.reached]
        mean = sum(sim) / len(sim) if sim else math.nan
        fedavg = mean if name == "fedavg" else fedavg
        rows.append(f"| {what} | {len(sim)}/{len(runs)} | {pm(sim)} | {pm(steps)} | "
                    f"{fedavg / mean:.1f}x | {pm([r.final for r in runs], 3)} | {walls.get(name, math.nan) / 60:.0f} |")
    print(f"\n| run | seeds at {TARGET:g} | simulated seconds to {TARGET:g} | server steps to {TARGET:g} | "
          f"speed-up over FedAvg | final accuracy | wall minutes (all seeds) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    everything = compare_runs(sorted(Path(out).glob("*.csv")), target=TARGET)
    print("\n" + to_markdown(everything))
    plot_curves(everything, Path(out) / "clock.png", x="sim_seconds")


if __name__ == "__main__":
    main()
