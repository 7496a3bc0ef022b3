"""Seconds per FedAvg round: fedsim's executors against a plain PyTorch loop and Flower, in one process.

    python scripts/benchmark.py [--workload w-small|w|w-large] [--rounds N] [--device cpu|cuda] [--flower]

Workloads (McMahan et al.'s MNIST setting): 100 clients x 600 samples, 10 clients a round, 1 local epoch,
batch 10, SGD lr 0.05; w-small trains the `mlp`, w the `cnn`; w-large (for a GPU) has 1,000 clients and
100 a round. The data are random tensors of MNIST's shape (1, 28, 28) with 10 classes: this measures
speed, not accuracy. fedsim and the plain loop train the same cohorts (Flower samples its own, the same
number); fedsim's engine is driven directly (ClientData, LocalSpec, executors, FedAvg), so rounds are
timed, not setup.

Reported per method: the median seconds of `--rounds` timed rounds after one warm-up round; the median
ratio to a one-model loop (a round's worth of plain-torch SGD steps at batch 10 on one model, 600; 6,000
for w-large; on a CPU with --threads above 1, the faster, pass by pass, of that loop on 1 thread and on
--threads, so that no ratio is taken against a loop slowed by threads it cannot use). The timed rounds
go round-robin over the methods (one pass = one round of each), so each ratio compares rounds run
moments apart, and a change in a shared machine's load cannot favour one method.
Also: peak memory in the method's first round (RSS, or CUDA max allocated); start-up (the first round,
compile included); on CUDA, the GPU's busy percentage (NVML) while the method's rounds ran.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import statistics
import threading
import time
from datetime import date

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from fedsim.algorithms.fedavg import FedAvg
from fedsim.config import Config
from fedsim.core import rng
from fedsim.core.hooks import ClientStore, ModelKeys
from fedsim.core.state import model_state
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round
from fedsim.engine.vmap import VmapExecutor
from fedsim.models import build_model

WORKLOADS = {  # model, clients, samples per client, clients per round
    "w-small": ("mlp", 100, 600, 10),
    "w": ("cnn", 100, 600, 10),
    "w-large": ("cnn", 1000, 600, 100),
}
BATCH, LR, SEED = 10, 0.05, 0


class Memory:
    """Peak memory of one method: CUDA max allocated, or the process's peak RSS reset before it (Linux)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM, the peak RSS
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def malloc_tune() -> None:
    """Large tensors (a K-stacked gradient is megabytes) then reuse freed heap memory instead of getting fresh
    pages from the OS every step, as jemalloc/tcmalloc would; the same for every method in this process."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Workload:
    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.model_name, self.num_clients, self.per_client, self.cohort_size = WORKLOADS[name]
        g = torch.Generator().manual_seed(SEED)
        n = self.num_clients * self.per_client
        self.x = torch.randn(n, 1, 28, 28, generator=g).to(device)
        self.y = torch.randint(0, 10, (n,), generator=g).to(device)
        self.index = torch.randperm(n, generator=g).to(device)
        self.offsets = np.arange(self.num_clients + 1) * self.per_client
        torch.manual_seed(SEED)
        self.model = build_model(self.model_name, (1, 28, 28), 10).to(device)

    def cohort(self, round: int) -> list[int]:
        chosen = rng.keyed_rng(rng.COHORT, SEED, round).choice(self.num_clients, self.cohort_size, replace=False)
        return sorted(int(c) for c in chosen)

    def client_indices(self, c: int) -> torch.Tensor:
        return self.index[self.offsets[c] : self.offsets[c + 1]]


def fedsim_method(w: Workload, executor_fn):
    """A round function driving fedsim's engine: jobs from FedAvg, the executor, FedAvg's aggregation."""
    model = copy.deepcopy(w.model)
    keys = ModelKeys([k for k, _ in model.named_parameters()], [k for k, _ in model.named_buffers()], [])
    algo = FedAvg(Config(), keys)
    data = ClientData(w.x, w.y, w.index, w.offsets)
    spec = LocalSpec(OptimizerSpec("sgd", LR), BATCH, epochs=1, seed=SEED)
    executor = executor_fn(model, data, spec)
    server = [algo.init_server(model_state(model))]
    store = ClientStore({})

    def round_fn(r: int):
        server[0] = run_round(algo, executor, server[0], store, w.cohort(r), r, LR).server

    return round_fn


def plain_torch_method(w: Workload):
    """FedAvg as users write it: a deepcopy per client, a DataLoader over a Subset, optimizer.step()."""
    global_model = copy.deepcopy(w.model)
    dataset = TensorDataset(w.x, w.y)

    def round_fn(r: int):
        states, sizes = [], []
        for c in w.cohort(r):
            model = copy.deepcopy(global_model)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            loader = DataLoader(Subset(dataset, w.client_indices(c).tolist()), batch_size=BATCH, shuffle=True)
            for xb, yb in loader:
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            states.append(model.state_dict())
            sizes.append(w.per_client)
        total = sum(sizes)
        global_model.load_state_dict({k: sum(s[k] * (n / total) for s, n in zip(states, sizes, strict=True))
                                      for k in states[0]})

    return round_fn


def one_model_method(w: Workload, steps: int):
    """The unit of the ratio column: a round's worth of plain-torch SGD steps at batch 10 on one model."""
    model = copy.deepcopy(w.model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    order = torch.randint(0, len(w.x), (steps, BATCH), device=w.device)

    def round_fn(r: int):
        for i in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(w.x[order[i]]), w.y[order[i]]).backward()
            opt.step()

    return round_fn


def on_threads(n: int, round_fn):
    """round_fn run with n torch threads (the process's setting restored after)."""
    def run(r: int):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            round_fn(r)
        finally:
            torch.set_num_threads(before)

    return run


def flower_method(w: Workload, rounds: int):
    """Flower's simulation engine (Ray), the same clients and model; returns (startup, per-round times)."""
    import flwr as fl

    # what the clients need, on the CPU (shipped to Ray's workers); batches go to the device there
    dataset, index, offsets = TensorDataset(w.x.cpu(), w.y.cpu()), w.index.cpu(), w.offsets
    template, device = copy.deepcopy(w.model).cpu(), w.device

    def get(model):
        return [v.detach().cpu().numpy() for v in model.state_dict().values()]

    def put(model, arrays):
        model.load_state_dict({k: torch.from_numpy(a) for k, a in zip(model.state_dict(), arrays, strict=True)})

    class Client(fl.client.NumPyClient):
        def __init__(self, cid: int):
            self.cid = cid

        def fit(self, parameters, config):
            model = copy.deepcopy(template)
            put(model, parameters)
            model.to(device)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            idx = index[offsets[self.cid] : offsets[self.cid + 1]].tolist()
            for xb, yb in DataLoader(Subset(dataset, idx), batch_size=BATCH, shuffle=True):
                opt.zero_grad()
                F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
                opt.step()
            return get(model), len(idx), {}

    stamps = []

    class Strategy(fl.server.strategy.FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return out

    strategy = Strategy(fraction_fit=w.cohort_size / w.num_clients, fraction_evaluate=0.0,
                        min_fit_clients=w.cohort_size, min_available_clients=w.num_clients,
                        initial_parameters=fl.common.ndarrays_to_parameters(get(template)))
    def client_fn(context):  # flwr >= 1.13 passes a Context, older versions the client id
        return Client(int(context if isinstance(context, str) else context.node_config["partition-id"])).to_client()

    start = time.perf_counter()
    fl.simulation.start_simulation(client_fn=client_fn, num_clients=w.num_clients,
                                   config=fl.server.ServerConfig(num_rounds=rounds + 1), strategy=strategy,
                                   client_resources={"num_cpus": 1, "num_gpus": 0.1 if device.type == "cuda" else 0.0})
    times = np.diff([start, *stamps])
    return float(times[0]), [float(t) for t in times[1:]]


def gpu_busy_sampler(device: torch.device):
    """NVML's GPU busy percentage (torch.cuda.utilization), or None where unavailable (CPU, no pynvml)."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
    except Exception:  # pynvml missing or NVML unusable: the table leaves the column out
        return None
    return lambda: torch.cuda.utilization(device)


def timed(round_fn, r: int, device: torch.device, sample_busy=None, busy: list | None = None) -> float:
    """Seconds for round r; with `sample_busy`, GPU busy % is sampled every 0.1 s into `busy` meanwhile."""
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            busy.append(sample_busy())

    sampler = threading.Thread(target=sample) if sample_busy is not None else None
    if sampler:
        sampler.start()
    sync(device)
    start = time.perf_counter()
    round_fn(r)
    sync(device)
    seconds = time.perf_counter() - start
    done.set()
    if sampler:
        sampler.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=list(WORKLOADS), default="w-small")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (>= 5)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--flower", action="store_true", help="also time Flower's simulation (flwr[simulation])")
    parser.add_argument("--chunk", type=int, default=None, help="vmap: clients per chunk (default: automatic)")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out, e.g. 'plain,compile'")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (fedsim.run uses 1 on CPU)")
    parser.add_argument("--malloc-tune", action="store_true",
                        help="glibc: keep freed memory instead of returning it to the OS (fewer page faults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc_tune:
        malloc_tune()
    device = torch.device(args.device)
    w = Workload(args.workload, device)
    memory = Memory(device)
    steps = w.cohort_size * (w.per_client // BATCH)  # one round's worth of local steps
    skip = set(filter(None, args.skip.split(",")))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cpu = f"{cpu} ({os.cpu_count()} cores)"
    print(f"fedsim benchmark {args.workload}: model {w.model_name}, {w.num_clients} clients x {w.per_client} "
          f"random (1,28,28) samples, {w.cohort_size} a round, 1 epoch, batch {BATCH}, SGD lr {LR}")
    print(f"{date.today()}  torch {torch.__version__}  device {device}  threads {torch.get_num_threads()}  "
          f"cpu {cpu}  {args.rounds} timed rounds after 1 warm-up{'  malloc tuned' if args.malloc_tune else ''}")

    methods = [
        ("unit", f"one-model loop, {torch.get_num_threads()} thread(s)", lambda: one_model_method(w, steps)),
        ("unit1", "one-model loop, 1 thread", lambda: on_threads(1, one_model_method(w, steps))),
        ("sequential", "fedsim sequential", lambda: fedsim_method(w, SequentialExecutor)),
        ("vmap", "fedsim vmap", lambda: fedsim_method(w, lambda m, d, s: VmapExecutor(m, d, s, chunk=args.chunk))),
        ("compile", "fedsim vmap --compile",
         lambda: fedsim_method(w, lambda m, d, s: VmapExecutor(m, d, s, chunk=args.chunk, compile=True))),
        ("plain", "plain PyTorch loop", lambda: plain_torch_method(w)),
    ]
    # The unit is the faster of the two one-model loops in each pass: on a CPU one thread is often faster for
    # a batch-10 step, and a ratio to a loop slowed by threads it cannot use would flatter everything else.
    methods = [m for m in methods if m[0] == "unit" or m[0] not in skip
               and not (m[0] == "unit1" and (device.type != "cpu" or torch.get_num_threads() == 1))]
    # Start-up and peak memory: each method's first round, alone. Then the timed rounds go round-robin over
    # the methods, so a change in the machine's load hits all of them alike and each ratio is taken against
    # the unit's time in the same pass.
    round_fns, startup, peak = {}, {}, {}
    for key, _, make in methods:
        memory.reset()
        round_fns[key] = make()
        startup[key] = timed(round_fns[key], 1, device)
        peak[key] = memory.peak_mb()
    times = {key: [] for key, _, _ in methods}
    sample_busy, busy = gpu_busy_sampler(device), {key: [] for key, _, _ in methods}
    for r in range(2, args.rounds + 2):
        for key, _, _ in methods:
            times[key].append(timed(round_fns[key], r, device, sample_busy, busy[key]))
        print(f"  pass {r - 1}: " + "  ".join(f"{key} {times[key][-1]:.3f}s" for key, _, _ in methods), flush=True)
    unit_times = [min(pair) for pair in zip(*(times[k] for k in ("unit", "unit1") if k in times), strict=True)]
    rows = [(label, times[key], [t / u for t, u in zip(times[key], unit_times, strict=True)], peak[key],
             startup[key], busy[key]) for key, label, _ in methods]
    if args.flower:
        try:
            import flwr  # noqa: F401
        except ImportError:
            print("Flower: skipped: flwr not installed (pip install 'flwr[simulation]' in a separate venv)")
        else:
            memory.reset()
            flower_startup, flower_times = flower_method(w, args.rounds)
            unit = statistics.median(unit_times)
            rows.append(("Flower simulation (run after the others)", flower_times, [t / unit for t in flower_times],
                         memory.peak_mb(), flower_startup, []))

    mem = "peak CUDA MB" if device.type == "cuda" else "peak RSS MB"
    gpu = " GPU busy % (NVML) |" if sample_busy is not None else ""
    print(f"\n| method | s/round (median) | x one-model loop (median of per-pass ratios) | {mem} | "
          f"start-up s (1st round) |{gpu} rounds (s) |")
    print("|---|---|---|---|---|" + ("---|" if gpu else "") + "---|")
    for label, secs, ratios, mb, first, util in rows:
        util_cell = f" {statistics.mean(util):.0f} |" if util else (" - |" if gpu else "")
        print(f"| {label} | {statistics.median(secs):.3f} | {statistics.median(ratios):.2f} | {mb:.0f} | {first:.2f} |"
              f"{util_cell} {' '.join(f'{t:.2f}' for t in secs)} |")
    if device.type == "cpu":
        print("peak RSS: the whole process during the method's first round (torch and the data come first, the "
              "one-model loop shows that base); Flower: its driver process only (Ray's workers are separate processes)")

if __name__ == "__main__":
    main()
