"""A sweep against a shell loop of `fedsim train` calls (issue 11's targets), start-up included.

    python scripts/bench_sweep.py [--rounds 50] [--data-dir ../shared/data] [--case seeds|algos|all]

W-small: MNIST, the 2NN (`mlp`), 100 clients, 10 a round, batch 10, 1 local epoch, lr 0.05. Cases:
  seeds  5 seeds of FedAvg: the sweep's wall time against five `fedsim train` calls one after another, and its
         time per round against one run's
  algos  FedAvg + FedProx (mu 0.001, 0.01) + SCAFFOLD, 3 seeds each (12 runs), against 12 `fedsim train` calls
Prints a markdown table; every command is timed from its start to its end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

COMMON = ["--model", "mlp", "--clients", "100", "--fraction", "0.1", "--batch-size", "10", "--lr", "0.05", "--quiet"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def case(label: str, runs: list[list[str]], sweep_args: list[str], base: list[str], out: Path) -> list[str]:
    loop = sum(timed(["fedsim", "train", *base, *run, "--out-dir", str(out / "loop"), "--overwrite"])
               for run in runs)
    sweep = timed(["fedsim", "sweep", *base, *sweep_args, "--out-dir", str(out / "sweep"), "--overwrite",
                   "--quiet", "--name", label])
    one = timed(["fedsim", "train", *base, *runs[0], "--out-dir", str(out / "one"), "--overwrite"])
    # a stacked run's round takes as long as its stack's: the sweep's time per round is its runs' mean
    per_round = statistics.mean(statistics.median(pd.read_csv(p)["round_seconds"])
                                for p in (out / "sweep").glob(f"{label}_*.csv"))
    one_round = statistics.median(pd.read_csv(next((out / "one").glob("*.csv")))["round_seconds"])
    return [f"| {label} | {len(runs)} | {loop:.1f} s | {sweep:.1f} s | {sweep / loop:.2f}x | {one:.1f} s | "
            f"{per_round:.3f} s / {one_round:.3f} s = {per_round / one_round:.2f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--case", choices=["seeds", "algos", "all"], default="all")
    args = parser.parse_args()
    base = ["--dataset", "mnist", "--data-dir", args.data_dir, "--rounds", str(args.rounds), *COMMON]
    lines = ["| case | runs | shell loop | sweep | sweep / loop | one run | s per round: sweep / one run |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.case in ("seeds", "all"):
            runs = [["--seed", str(s)] for s in range(5)]
            lines += case("seeds", runs, ["--seed", "0-4"], base, out)
        if args.case in ("algos", "all"):
            algos = [["--algo", "fedavg"], ["--algo", "fedprox", "--mu", "0.001"],
                     ["--algo", "fedprox", "--mu", "0.01"],
                     ["--algo", "scaffold"]]
            runs = [[*a, "--seed", str(s)] for a in algos for s in range(3)]
            lines += case("algos", runs,
                          ["--algo", "fedavg,fedprox,scaffold", "--mu", "0.001,0.01", "--seed", "0-2"], base, out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
