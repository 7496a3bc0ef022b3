"""How long evaluation takes on Shakespeare's 184,114 test windows with LEAF's char-LSTM, and what --eval-sample saves.

    python scripts/bench_eval.py --data-dir ../shared/data [--windows 8192] [--repeats 3]
    python scripts/bench_eval.py --data-dir ../shared/data --commands [--checkouts BEFORE AFTER]

The first form times `fedsim.engine.evaluate.predict` in one process on the first `--windows` test windows, the
settings taking turns in each repeat (a shared machine gives ratios, not absolute times): the old evaluation
(torch.no_grad, on the one thread the sequential executor sets for the LSTM) against the new one (inference_mode,
every core), at two batch sizes; it prints the medians, their ratio, and the whole test split's time extrapolated.

The second form runs the issue's command (9 clients of 183, 2 local steps, one round):

    fedsim train --dataset shakespeare --natural --model char-lstm --rounds 1 --fraction 0.05 --local-steps 2

with full evaluation and with --eval-sample 10000, in each checkout given (default: this one; e.g. a worktree of
the commit before, `git worktree add /tmp/before <commit>`, then `--checkouts /tmp/before .`), and prints each
run's round_seconds (training and evaluation) from its CSV.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = ["--dataset", "shakespeare", "--natural", "--model", "char-lstm", "--rounds", "1", "--fraction", "0.05",
           "--local-steps", "2"]


def in_process(data_dir: str, windows: int, repeats: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from fedsim.data.datasets import load_dataset
    from fedsim.engine.evaluate import evaluating_on, evaluation_threads, predict
    from fedsim.engine.threads import cpu_count
    from fedsim.models import build_model

    data = load_dataset("shakespeare", data_dir)
    torch.manual_seed(0)
    model = build_model("char-lstm", data.input_shape, data.num_classes)
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    x, y = data.x_test[:windows], data.y_test[:windows]

    @torch.no_grad()
    def before(batch=4096):  # fedsim's predict before this change
        model.eval()
        for start in range(0, len(x), batch):
            out = functional_call(model, state, (x[start : start + batch],))
            F.cross_entropy(out.float(), y[start : start + batch], reduction="none")

    def chosen():  # the default: evaluation's own ThreadChooser, kept from one evaluation to the next
        with evaluating_on(chooser):
            predict(model, state, x, y, threads=chooser)

    cores, chooser = cpu_count(), evaluation_threads()
    settings = {
        "before: no_grad, 1 thread, batch 4096": (1, before),
        f"inference_mode, {cores} threads, batch 4096": (cores, lambda: predict(model, state, x, y)),
        f"inference_mode, {cores} threads, batch 16384": (cores, lambda: predict(model, state, x, y, 16384)),
        "after (the default): inference_mode, threads chosen by timing, batch 4096": (1, chosen),
    }
    times = {name: [] for name in settings}
    for _ in range(repeats):
        for name, (threads, fn) in settings.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(times.values())))
    total = len(data.y_test)
    print(f"{windows} of {total} test windows, median of {repeats}, {cores} cores, torch {torch.__version__}\n")
    print("| setting | seconds | speed-up over before | the whole test split (extrapolated) |")
    print("|---|---|---|---|")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"| {name} | {m:.2f} | {base / m:.2f}x | {m * total / windows:.0f} s |")
    print(f"\nthe chooser's decisions (batch, threads): {chooser.decisions}")


def commands(data_dir: str, checkouts: list[str]) -> None:
    print("| checkout | evaluation | round_seconds |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for checkout in checkouts:
            for label, extra in (("full", []), ("--eval-sample 10000", ["--eval-sample", "10000"])):
                env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
                args = [sys.executable, "-m", "fedsim", "train", *COMMAND, "--data-dir", data_dir, "--out-dir", out,
                        "--name", "bench", "--overwrite", "--quiet", *extra]
                # in the checkout: `python -m` puts the current folder first, ahead of PYTHONPATH
                result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=checkout)
                if result.returncode:
                    seconds = f"failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'}"
                else:
                    header, row = (Path(out) / "bench.csv").read_text().splitlines()[:2]
                    seconds = f"{float(dict(zip(header.split(','), row.split(','), strict=True))['round_seconds']):.1f}"
                print(f"| {checkout} | {label} | {seconds} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("FEDSIM_DATA", "data"))
    parser.add_argument("--windows", type=int, default=8192, help="test windows timed in one process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commands", action="store_true", help="time the issue's fedsim train command instead")
    parser.add_argument("--checkouts", nargs="+", default=["."], help="fedsim checkouts to run the command in")
    args = parser.parse_args()
    if args.commands:
        commands(args.data_dir, args.checkouts)
    else:
        in_process(args.data_dir, args.windows, args.repeats)


if __name__ == "__main__":
    main()
