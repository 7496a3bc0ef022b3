"""Where a sweep stack's time goes on this machine (issue 27), measured inside one process, cases alternating.

    python scripts/profile_stack.py [--data-dir ../shared/data] [--repeats 8] [--part step,ops,eval,sweep]

W-small (MNIST, the 2NN, 100 IID clients, 10 a round, batch 10, lr 0.05). Parts:
  step   the vmap executor on k runs' cohorts (k = 2, 5; 10 clients each): one call for all (together) against one
         call per run (one after another), on 1 and on 2 threads: seconds per client step, and their ratio
  ops    the two operations that read each client's 784x200 first-layer weights every step (the forward matmul
         and the in-place SGD update) for K clients stacked: microseconds per client and step as K grows past
         what the caches hold (K=10 is one run's cohort: 6 MB of such weights)
  eval   one evaluation (10,000 test images) on 1 and 2 threads (torch's thread count is each thread's own: a
         stack's runs evaluate in their own threads)
  sweep  run_sweep of k = 1, 2, 5 seeds (5 rounds), --stack always and never, with setup, executor.train and
         evaluate timed: the rest (the runs' threads taking turns, the barrier, loading, rows, checkpoints)
Each figure is the median over repeats, with its spread; the machine's load is printed first. Shared machines
drift: compare only figures of one run of this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


def setup_w_small(data_dir: str):
    import numpy as np

    from fedsim.config import Config
    from fedsim.core.hooks import ClientStore
    from fedsim.core.state import model_state
    from fedsim.experiment import setup

    config = Config(dataset="mnist", data_dir=data_dir, clients=100, iid=True, model="mlp", fraction=0.1,
                    batch_size=10, lr=0.05, rounds=20, quiet=True)
    exp = setup(config)
    algo = exp.algorithm
    server = algo.init_server(model_state(exp.model))
    store = ClientStore(algo.personal_initial(model_state(exp.model)), {})
    eligible = np.flatnonzero(exp.partition.train_sizes > 0)

    def cohort(seed: int, round: int) -> list:
        """A run's 10 clients for `round` (another run: another seed), from the same global model."""
        clients = np.sort(np.random.default_rng([seed, round]).choice(eligible, 10, replace=False))
        jobs = [algo.client_job(server, store, int(c)) for c in clients]
        for job in jobs:
            job.seed = seed
        return jobs

    return exp, server, store, cohort


def part_step(exp, cohort, repeats: int) -> None:
    import torch

    executor, phases = exp.executor, exp.algorithm.phases()

    def call(jobs, round) -> tuple[float, int]:
        start = time.perf_counter()
        results = executor.train(phases, jobs, round, 0.05)
        return time.perf_counter() - start, sum(sum(r.steps) for r in results)

    print("\n## step: together (one call) against one after another (one call per run), seconds per client step")
    print("| threads | runs | together | one after another | together / one after another |\n|---|---|---|---|---|")
    for threads in (1, 2):
        executor.threads.fixed = executor.threads.current = threads
        torch.set_num_threads(threads)
        for k in (2, 5):
            together, apart, ratio = [], [], []
            for rep in range(repeats + 1):
                runs = [cohort(seed, rep + 2) for seed in range(k)]
                cases = ["together", "apart"] if rep % 2 else ["apart", "together"]
                got = {}
                for case in cases:
                    if case == "together":
                        s, n = call([j for jobs in runs for j in jobs], rep + 2)
                    else:
                        s, n = (sum(x) for x in zip(*(call(jobs, rep + 2) for jobs in runs), strict=True))
                    got[case] = s / n
                if rep:  # the first repeat warms up
                    together.append(got["together"] * 1e6)
                    apart.append(got["apart"] * 1e6)
                    ratio.append(got["together"] / got["apart"])
            print(f"| {threads} | {k} | {spread(together)} us | {spread(apart)} us | {spread(ratio)} |")


def part_ops(repeats: int) -> None:
    import torch

    torch.set_num_threads(1)
    sizes = [1, 2, 5, 10, 20, 50, 100]
    tensors = {k: (torch.randn(k, 200, 784) * 0.01, torch.randn(k, 1, 200), torch.randn(k, 10, 784),
                   torch.randn(k, 10, 200)) for k in sizes}

    def per_client(k: int, steps: int = 20) -> float:
        w, b, x, dy = tensors[k]
        start = time.perf_counter()
        for _ in range(steps):
            torch.baddbmm(b, x, w.transpose(1, 2))  # the forward pass of the first layer, K clients
            w.baddbmm_(dy.transpose(1, 2), x, alpha=-0.05)  # its SGD update, in place (engine/outer.py)
        return (time.perf_counter() - start) / steps / k * 1e6

    times = {k: [] for k in sizes}
    for rep in range(repeats):
        for k in sizes if rep % 2 else sizes[::-1]:
            times[k].append(per_client(k))
    print("\n## ops: the first layer's forward matmul + in-place update, 1 thread, microseconds per client and step")
    print("| clients stacked (K) | their weights | us per client-step | against K=10 |\n|---|---|---|---|")
    ten = statistics.median(times[10])
    for k in sizes:
        print(f"| {k} | {k * 200 * 784 * 4 / 2**20:.1f} MiB | {spread(times[k])} | "
              f"{statistics.median(times[k]) / ten:.2f}x |")


def part_eval(exp, server, store, repeats: int) -> None:
    import torch

    from fedsim.experiment import evaluate

    times = {1: [], 2: []}
    for rep in range(repeats + 1):
        for threads in (1, 2) if rep % 2 else (2, 1):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            evaluate(exp, server, store, 1, 0.05)
            if rep:
                times[threads].append((time.perf_counter() - start) * 1e3)
    print("\n## eval: one evaluation of the global model (10,000 test images), milliseconds")
    print(f"1 thread {spread(times[1])} ms, 2 threads {spread(times[2])} ms")


def part_sweep(data_dir: str, repeats: int) -> None:
    import collections

    import fedsim.experiment as experiment
    from fedsim.engine.vmap import VmapExecutor
    from fedsim.sweep import expand, run_sweep

    spent = collections.defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    experiment.evaluate = timed("evaluate", experiment.evaluate)
    experiment.setup = timed("setup", experiment.setup)
    VmapExecutor.train = timed("train", VmapExecutor.train)
    print("\n## sweep: run_sweep of W-small, 5 rounds, seconds (medians over repeats); other = the rest of its wall "
          "time (loading the data, writing rows and checkpoints, the runs' threads taking turns, the barrier)")
    print("| seeds | --stack | wall | setup | training | evaluations | other | other per run |")
    print("|---|---|---|---|---|---|---|---|")
    fixed = dict(dataset="mnist", data_dir=data_dir, clients=100, iid=True, model="mlp", fraction=0.1,
                 batch_size=10, lr=0.05, rounds=5, quiet=True)
    rows = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            for k, way in ((1, "never"), (2, "always"), (2, "never"), (5, "always"), (5, "never")):
                spent.clear()
                runs = expand({**fixed, "out_dir": out}, {"seed": list(range(k))}, "p")
                start = time.perf_counter()
                run_sweep(runs, "p", out, overwrite=True, stack=way)
                wall = time.perf_counter() - start
                parts = [spent[name] for name in ("setup", "train", "evaluate")]
                rows[k, way].append((wall, *parts, wall - sum(parts)))
    for (k, way), values in rows.items():
        wall, setup, train, evaluations, other = (statistics.median(v) for v in zip(*values, strict=True))
        print(f"| {k} | {way if k > 1 else '-'} | {wall:.2f} | {setup:.2f} | {train:.2f} | {evaluations:.2f} | "
              f"{other:.2f} | {other / k:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--part", default="step,ops,eval,sweep")
    args = parser.parse_args()
    parts = args.part.split(",")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if {"step", "eval"} & set(parts):
        exp, server, store, cohort = setup_w_small(args.data_dir)
        if "step" in parts:
            part_step(exp, cohort, args.repeats)
        if "eval" in parts:
            part_eval(exp, server, store, args.repeats)
    if "ops" in parts:
        part_ops(args.repeats)
    if "sweep" in parts:
        part_sweep(args.data_dir, max(1, args.repeats // 4))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
