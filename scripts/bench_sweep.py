"""A sweep against its runs one after another (issue 27's table) and against a shell loop of `fedsim train` calls.

    python scripts/bench_sweep.py [--rounds 20] [--data-dir ../shared/data] [--case stack|algos|all] [--seeds 2,5,10]
    python scripts/bench_sweep.py --case gpu --workload w|w-large [--seeds 8] [--rounds 20]     # on a GPU

W-small: MNIST, the 2NN (`mlp`), 100 clients (IID), 10 a round, batch 10, 1 local epoch, lr 0.05. Cases:
  stack  one run alone (`fedsim train --seed 0`), then for each k of --seeds a k-seed sweep with --stack never (one
         whole run after another in the process: the floor a sweep must never be slower than), always (one executor
         call a round for all k) and auto (the default: each round whichever timing shows is faster). Per round:
         the stack's round (lock-step: its runs' median round time; never: the sum of its runs'), per run (/k) and
         against one run alone; the sweep's wall time against never's; what auto chose. Then the 5-seed sweep
         (auto) against five `fedsim train` commands one after another (target <= 0.55x).
  algos  FedAvg + FedProx (mu 0.001, 0.01) + SCAFFOLD, 3 seeds each (12 runs), against 12 `fedsim train` calls
  gpu    on CUDA: one run of the workload, then a sweep of --seeds seeds (target: <= 2x the one run's time),
         each with the GPU's busy percentage (nvidia-smi, every 0.2 s). W: the CNN, 100 clients, 10 a round;
         W-large: the CNN, 1,000 clients (60 MNIST images each), 100 a round.
Prints markdown tables; every command is timed from its start to its end. Run it on an otherwise idle machine:
the cases run minutes apart, and a shared machine's speed drifts more than the differences measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

COMMON = ["--model", "mlp", "--clients", "100", "--iid", "--fraction", "0.1", "--batch-size", "10", "--lr", "0.05",
          "--quiet"]
FEDSIM = [sys.executable, "-m", "fedsim"]  # this checkout's fedsim when run with PYTHONPATH set to it


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def round_seconds(csv: Path) -> pd.Series:
    """A run's round times, the first round (one-off costs) left out."""
    return pd.read_csv(csv)["round_seconds"].iloc[1:]


def sweep_round(out: Path, name: str, way: str) -> float:
    """Seconds a round of the sweep's stack: in lock-step (auto, always) each run's round spans the whole stack's
    round (its turn, the others' and the training), so the median of the runs' medians; never: the runs train one
    after another, so the sum of their medians."""
    medians = [statistics.median(round_seconds(p)) for p in sorted(out.glob(f"{name}_*.csv"))]
    return sum(medians) if way == "never" else statistics.median(medians)


def stack_case(seeds: list[int], base: list[str], out: Path) -> list[str]:
    one_wall = timed([*FEDSIM, "train", *base, "--seed", "0", "--out-dir", str(out / "one"), "--name", "one"])
    one = statistics.median(round_seconds(out / "one" / "one.csv"))
    lines = [f"One run alone (`fedsim train --seed 0`): {one:.3f} s a round, {one_wall:.1f} s the command.", "",
             "| seeds (k) | --stack | s a round (stack) | per run | per run / one run | sweep wall | wall / never's "
             "| auto chose |", "|---|---|---|---|---|---|---|---|"]
    for k in seeds:
        walls = {}
        for way in ("never", "always", "auto"):
            name = f"k{k}-{way}"
            walls[way] = timed([*FEDSIM, "sweep", *base, "--seed", f"0-{k - 1}", "--stack", way, "--name", name,
                                "--out-dir", str(out / name), "--overwrite"])
            per_round = sweep_round(out / name, name, way)
            chose = "-"
            if way == "auto":
                stacks = json.loads((out / name / f"{name}.sweep.json").read_text())["stacks"]
                chose = ", ".join(s["trains"] + "".join(
                    f"; round {p['round']}: " + " vs ".join(f"{w} {1e6 * t:.0f} us" for w, t in
                                                           p["seconds_per_client_step"].items())
                    for p in s.get("probes", [])) for s in stacks)
            lines.append(f"| {k} | {way} | {per_round:.3f} s | {per_round / k:.3f} s | {per_round / k / one:.2f}x | "
                         f"{walls[way]:.1f} s | {walls[way] / walls['never']:.2f}x | {chose} |")
    return lines


def loop_case(k: int, base: list[str], out: Path) -> list[str]:
    """A k-seed sweep (auto) against k `fedsim train` commands one after another."""
    loop = sum(timed([*FEDSIM, "train", *base, "--seed", str(s), "--out-dir", str(out / "loop"), "--overwrite"])
               for s in range(k))
    sweep = timed([*FEDSIM, "sweep", *base, "--seed", f"0-{k - 1}", "--out-dir", str(out / "loop-sweep"),
                   "--overwrite", "--name", "loop"])
    return ["", "| runs | shell loop of `fedsim train` | `fedsim sweep` (auto) | sweep / loop (target <= 0.55x) |",
            "|---|---|---|---|", f"| {k} seeds | {loop:.1f} s | {sweep:.1f} s | **{sweep / loop:.2f}x** |"]


def algos_case(base: list[str], out: Path) -> list[str]:
    algos = [["--algo", "fedavg"], ["--algo", "fedprox", "--mu", "0.001"], ["--algo", "fedprox", "--mu", "0.01"],
             ["--algo", "scaffold"]]
    runs = [[*a, "--seed", str(s)] for a in algos for s in range(3)]
    loop = sum(timed([*FEDSIM, "train", *base, *run, "--out-dir", str(out / "algos-loop"), "--overwrite"])
               for run in runs)
    sweep = timed([*FEDSIM, "sweep", *base, "--algo", "fedavg,fedprox,scaffold", "--mu", "0.001,0.01", "--seed",
                   "0-2", "--out-dir", str(out / "algos"), "--overwrite", "--name", "algos"])
    return ["", "| case | runs | shell loop | sweep | sweep / loop |", "|---|---|---|---|---|",
            f"| FedAvg + FedProx (mu 0.001, 0.01) + SCAFFOLD x 3 seeds | {len(runs)} | {loop:.1f} s | {sweep:.1f} s | "
            f"{sweep / loop:.2f}x |"]


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
    one, one_busy = timed_busy([*FEDSIM, "train", *args, "--out-dir", str(out / "one"), "--overwrite"])
    sweep, busy = timed_busy([*FEDSIM, "sweep", *args, "--seed", f"0-{seeds - 1}", "--out-dir", str(out / "sweep"),
                              "--overwrite", "--name", workload])
    stacks = json.loads((out / "sweep" / f"{workload}.sweep.json").read_text())["stacks"]
    shown = [f"{b:.0f}%" if b is not None else "n/a" for b in (one_busy, busy)]
    return [f"| {workload} x {seeds} seeds | {one:.1f} s ({shown[0]} busy) | {sweep:.1f} s ({shown[1]} busy) | "
            f"{sweep / one:.2f}x (target <= 2x) | {', '.join(s['trains'] for s in stacks)} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--case", choices=["stack", "algos", "all", "gpu"], default="stack")
    parser.add_argument("--seeds", help="the stack case's sweep sizes (default 2,5,10); the gpu case's seeds (8)")
    parser.add_argument("--workload", choices=["w", "w-large"], default="w", help="the gpu case's")
    parser.add_argument("--device", default="cuda", help="the gpu case's (cpu: to try the script)")
    args = parser.parse_args()
    data = ["--dataset", "mnist", "--data-dir", args.data_dir, "--rounds", str(args.rounds)]
    base = [*data, *COMMON]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.case == "gpu":
            print("| workload | one run | sweep | sweep / one run | the stack trained |\n|---|---|---|---|---|")
            print("\n".join(gpu_case(args.workload, int(args.seeds or 8), data, args.device, out)))
            return
        lines = []
        if args.case in ("stack", "all"):
            lines += stack_case([int(k) for k in (args.seeds or "2,5,10").split(",")], base, out)
            lines += loop_case(5, base, out)
        if args.case in ("algos", "all"):
            lines += algos_case(base, out)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
