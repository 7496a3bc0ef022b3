"""Seconds per FedAvg round in 1 and N processes (torchrun, gloo on the CPU), and what the gather costs.

    python scripts/benchmark_distributed.py [--workload w-small|w] [--rounds 5] [--nproc 2]

The workloads are scripts/benchmark.py's (100 clients x 600 MNIST-shaped random samples, 10 a round, E=1, B=10,
SGD), driven through fedsim's engine as `fedsim train` drives it: the vmap executor, `run_round`, and under
torchrun `fedsim.engine.distributed` (each rank trains its share of the cohort, then all gather what it sent).
One process chooses its CPU threads by timing (fedsim's default); N processes on one machine get cores/N each.

Reported per process count: the median seconds of the timed rounds after one warm-up round; scaling efficiency
T1 / (N x TN); inside a round, the seconds spent in the gather (which include waiting for the slower rank), and,
apart, one gather of a round's payload after a barrier (the transfer alone) against one all_reduce of a model-
sized tensor (what the issue's weighted sums would move); the peak RSS of each rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(args) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from benchmark import BATCH, LR, SEED, Workload

    from fedsim.algorithms.fedavg import FedAvg
    from fedsim.config import Config
    from fedsim.core.channel import MODEL, Message
    from fedsim.core.hooks import ClientStore, ModelKeys
    from fedsim.core.state import model_state
    from fedsim.engine import distributed
    from fedsim.engine.local import ClientData, LocalSpec
    from fedsim.engine.optim import OptimizerSpec
    from fedsim.engine.round import run_round
    from fedsim.engine.threads import ThreadChooser, cpu_count
    from fedsim.engine.vmap import VmapExecutor

    ranks = distributed.join("cpu")
    w = Workload(args.workload, torch.device("cpu"))
    if ranks is not None:
        ranks = ranks.for_run(np.full(w.num_clients, w.per_client), 1, None, BATCH, w.cohort_size)
    threads = ThreadChooser(fixed=None if ranks is None else ranks.cpu_threads(cpu_count()))
    model = w.model
    keys = ModelKeys([k for k, _ in model.named_parameters()], [k for k, _ in model.named_buffers()], [])
    algo = FedAvg(Config(), keys)
    executor = VmapExecutor(model, ClientData(w.x, w.y, w.index, w.offsets),
                            LocalSpec(OptimizerSpec("sgd", LR), BATCH, epochs=1, seed=SEED), threads=threads)
    executor.threads.apply()
    server, store = algo.init_server(model_state(model)), ClientStore({})

    gathering = [0.0]
    if ranks is not None:  # time the gathers inside the rounds
        plain = dist.all_gather_object

        def timed_gather(out, obj, group=None):
            start = time.perf_counter()
            plain(out, obj, group)
            gathering[0] += time.perf_counter() - start

        dist.all_gather_object = timed_gather
    seconds, gathers = [], []
    for r in range(1, args.rounds + 2):
        if ranks is not None:
            dist.barrier()
        gathering[0] = 0.0
        start = time.perf_counter()
        server = run_round(algo, executor, server, store, w.cohort(r), r, LR, ranks=ranks).server
        seconds.append(time.perf_counter() - start)
        gathers.append(gathering[0])
    report = {"seconds": seconds[1:], "gather_in_round": gathers[1:], "threads": executor.threads.describe(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if ranks is not None:
        dist.all_gather_object = plain
        state = model_state(model)
        mine = ranks.share(w.cohort(1))
        payload = [Message(c, w.per_client, {MODEL: state}) for c in mine]
        flat = torch.cat([t.reshape(-1).float() for t in state.values()])
        transfer, reduce = [], []
        for _ in range(5):
            dist.barrier()
            start = time.perf_counter()
            ranks.gather(w.cohort(1), None, payload, ClientStore({}), 0, "cpu")
            transfer.append(time.perf_counter() - start)
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(flat)
            reduce.append(time.perf_counter() - start)
        report.update(gather_alone=statistics.median(transfer), all_reduce=statistics.median(reduce))
        everyone = ranks.all_gather(report, "the report")
        if ranks.lead:
            print("REPORT " + json.dumps(everyone), flush=True)
    else:
        print("REPORT " + json.dumps([report]), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(workload: str, rounds: int, nproc: int) -> list[dict]:
    me = [str(Path(__file__).resolve()), "--worker", "--workload", workload, "--rounds", str(rounds)]
    cmd = ([sys.executable, *me] if nproc == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
            str(free_port()), *me])
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT ")), None)
    if line is None:
        sys.exit(f"{workload} in {nproc} process(es) failed:\n{done.stderr}")
    return json.loads(line[len("REPORT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["w-small", "w"], default="w-small")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    load = os.getloadavg()[0]
    print(f"{date.today()}  {args.workload}  {os.cpu_count()} cores  load average {load:.2f} at the start")
    one = measure(args.workload, args.rounds, 1)[0]
    many = measure(args.workload, args.rounds, args.nproc)
    t1 = statistics.median(one["seconds"])
    tn = statistics.median(many[0]["seconds"])
    print("| processes | s/round (median) | scaling efficiency T1/(N x TN) | gather s in a round (incl. waiting) | "
          "gather alone s | all_reduce of one model s | peak RSS MB per rank | threads per rank |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| 1 | {t1:.3f} | 1.00 | - | - | - | {one['peak_rss_mb']:.0f} | {one['threads']} |")
    rss = " / ".join(f"{r['peak_rss_mb']:.0f}" for r in many)
    print(f"| {args.nproc} | {tn:.3f} | {t1 / (args.nproc * tn):.2f} | "
          f"{statistics.median(many[0]['gather_in_round']):.3f} | {many[0]['gather_alone']:.3f} | "
          f"{many[0]['all_reduce']:.4f} | {rss} | {many[0]['threads']} |")
    print(f"rounds (s): 1 process {' '.join(f'{t:.2f}' for t in one['seconds'])}; {args.nproc} processes "
          f"{' '.join(f'{t:.2f}' for t in many[0]['seconds'])}; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
