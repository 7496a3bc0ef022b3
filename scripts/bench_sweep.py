"""A sweep against a shell loop of `fedsim train` calls (issue 11's targets), start-up included.

    python scripts/bench_sweep.py [--rounds 50] [--data-dir ../shared/data] [--case seeds|algos|all]
    python scripts/bench_sweep.py --case gpu --workload w|w-large [--seeds 8] [--rounds 20]     # on a GPU

W-small: MNIST, the 2NN (`mlp`), 100 clients, 10 a round, batch 10, 1 local epoch, lr 0.05. Cases:
  seeds  5 seeds of FedAvg: the sweep's wall time against five `fedsim train` calls one after another, and its
         time per round against one run's
  algos  FedAvg + FedProx (mu 0.001, 0.01) + SCAFFOLD, 3 seeds each (12 runs), against 12 `fedsim train` calls
  gpu    on CUDA: one run of the workload, then a sweep of --seeds seeds (target: <= 2x the one run's time), each
         with the GPU's busy percentage (nvidia-smi, every 0.2 s). W: the CNN, 100 clients, 10 a round;
         W-large: the CNN, 1,000 clients (60 MNIST images each), 100 a round.
Prints a markdown table; every command is timed from its start to its end.
"""

from __future__ import annotations

import argparse
import shutil
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


def timed_busy(command: list[str]) -> tuple[float, float | None]:
    """(seconds, mean GPU busy % while it ran; None without nvidia-smi)."""
    smi = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                "-lms", "200"], stdout=subprocess.PIPE, text=True)
    seconds = timed(command)
    if smi is None:
        return seconds, None
    smi.terminate()
    samples = [float(v) for v in smi.communicate()[0].split() if v.strip().replace(".", "").isdigit()]
    return seconds, statistics.mean(samples) if samples else None


def gpu_case(workload: str, seeds: int, data: list[str], device: str, out: Path) -> list[str]:
    clients = {"w": "100", "w-large": "1000"}[workload]
    args = [*data, "--model", "cnn", "--clients", clients, "--fraction", "0.1", "--batch-size", "10", "--lr", "0.05",
            "--device", device, "--quiet"]
    one, one_busy = timed_busy(["fedsim", "train", *args, "--out-dir", str(out / "one"), "--overwrite"])
    sweep, busy = timed_busy(["fedsim", "sweep", *args, "--seed", f"0-{seeds - 1}", "--out-dir", str(out / "sweep"),
                              "--overwrite", "--name", workload])
    shown = [f"{b:.0f}%" if b is not None else "n/a" for b in (one_busy, busy)]
    return [f"| {workload} x {seeds} seeds | {one:.1f} s ({shown[0]} busy) | {sweep:.1f} s ({shown[1]} busy) | "
            f"{sweep / one:.2f}x (target <= 2x) |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--case", choices=["seeds", "algos", "all", "gpu"], default="all")
    parser.add_argument("--workload", choices=["w", "w-large"], default="w", help="the gpu case's")
    parser.add_argument("--seeds", type=int, default=8, help="the gpu case's")
    parser.add_argument("--device", default="cuda", help="the gpu case's (cpu: to try the script)")
    args = parser.parse_args()
    data = ["--dataset", "mnist", "--data-dir", args.data_dir, "--rounds", str(args.rounds)]
    base = [*data, *COMMON]
    if args.case == "gpu":
        with tempfile.TemporaryDirectory() as tmp:
            print("| workload | one run | sweep | sweep / one run |\n|---|---|---|---|")
            print("\n".join(gpu_case(args.workload, args.seeds, data, args.device, Path(tmp))))
        return
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
