"""One run over several processes with torchrun: the ranks split each round's cohort and gather what it sent.

    torchrun --nproc-per-node N -m fedsim train ...        (or `fedsim train --nproc N ...`: `launch`, below)

Every rank loads the data and the partition and builds the same model and algorithm; `Ranks.agree` checks that
with one all_gather at start-up (the config, the data's, the partition's and the initial weights' hashes), and
turns an error on any rank into one line for all. Each round, `Ranks.share` gives this rank its part of the
cohort (`split_work`: balanced by the clients' local work, samples x epochs), its executor trains it and the
algorithm's `client_finish` runs there; then `Ranks.gather` hands every rank what the whole cohort sent, in
cohort order, and the state its clients keep (the store's entries). So every rank runs the same channel and
server update on the same messages and holds the same server state and client store: a client trains the same on any
rank (every draw is keyed by (seed, round, client)), and the CSV is the one-process run's. Only rank 0 evaluates
and writes the run's files (fedsim/experiment.py).

Why gather the clients' messages rather than all_reduce weighted sums: the sums would give the channel another
form (per-client fields such as FedNova's a_i, robust reducers that need every update, DP's one noise draw) and
change the float summation order, so the numbers would depend on the
number of processes. Gathering moves each client's model once (pickled through the CPU); measured on the CPU,
scripts/benchmark_distributed.py and the README, it is a small part of a round.

A rank that dies closes its connections, and the others' next collective fails at once; one that hangs is given
up on after the collectives' timeout ($FEDSIM_COLLECTIVE_TIMEOUT seconds, default 600: rank 0's evaluation
between two rounds must fit in it). Either way each rank raises FedsimError (one line, exit 2), and rank 0
keeps its rows whole and checkpoints the last completed round. torch is imported inside the functions: the CLI
asks `process_rank()` without loading it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from fedsim.errors import FedsimError

TIMEOUT_ENV = "FEDSIM_COLLECTIVE_TIMEOUT"
LAUNCHER_ENV = "FEDSIM_NPROC_REPORT"  # set by `launch` for its ranks: a file rank 0 marks once it printed an error
DEFAULT_TIMEOUT_SECONDS = 600.0


def process_rank() -> int:
    """This process's rank under torchrun (0 outside it), from the environment torchrun sets."""
    return int(os.environ.get("RANK", "0"))


def reports_stops() -> bool:
    """Whether this process says where a stopped run's rows are: rank 0, unless `launch` started it (then the
    launcher, which knows whether Ctrl-C or another rank's end stopped the run, says it once)."""
    return process_rank() == 0 and LAUNCHER_ENV not in os.environ


def note_reported() -> None:
    """Rank 0 printed an error's one line: `launch` then adds none of its own."""
    if LAUNCHER_ENV in os.environ:
        with open(os.environ[LAUNCHER_ENV], "a") as report:
            report.write("reported\n")


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def collective_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise FedsimError(f"${TIMEOUT_ENV} must be a number of seconds > 0 (got {text!r})")
    return seconds


def split_work(work: Sequence[float], parts: int) -> list[list[int]]:
    """Positions 0..len(work)-1 in `parts` lists of near-equal total work: the largest first (ties: the earlier
    position), each to the least-loaded list (ties: the lower); each list in position order. Deterministic, so
    every rank computes the same split; a sweep can split its stacks of runs by their cost the same way."""
    loads = [0.0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        least = min(range(parts), key=lambda p: (loads[p], p))
        shares[least].append(i)
        loads[least] += work[i]
    return [sorted(s) for s in shares]


@dataclass(frozen=True)
class Diverged:
    """The first client of the cohort whose loss or weights became NaN/inf, as every rank learns of it."""

    client: int
    last_finite_loss: float


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's, and the collectives a run needs (see the module docstring)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    timeout: float
    # set by `for_run`: the clients' training sample counts and the run's local work, to balance the cohort
    sizes: tuple[int, ...] = ()
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: it evaluates and writes the run's files."""
        return self.rank == 0

    def for_run(self, sizes, epochs: int, steps: int | None, batch_size: int, cohort_size: int) -> Ranks:
        """These ranks for a run whose clients hold `sizes` samples and train `epochs` (or `steps` batches) a
        round; FedsimError when a round's cohort is too small to give every rank a client."""
        if self.world_size > cohort_size:
            raise FedsimError(f"{self.world_size} processes, but each round trains {cohort_size} clients: run at "
                              f"most {cohort_size} processes (each needs a client), or raise --fraction")
        return replace(self, sizes=tuple(int(s) for s in sizes), epochs=epochs, steps=steps, batch_size=batch_size)

    def client_work(self, client: int, override: dict | None = None) -> float:
        """A client's local work this round: samples x epochs, or rows x steps (a straggler's own epochs/steps)."""
        override = override or {}
        steps = override.get("steps", self.steps)
        if steps is not None:
            return steps * min(self.batch_size, self.sizes[client])
        return override.get("epochs", self.epochs) * self.sizes[client]

    def share(self, cohort, overrides: dict | None = None) -> list[int]:
        """This rank's clients of `cohort`, in cohort order (`overrides`: run_round's per-client local work)."""
        cohort = [int(c) for c in cohort]
        work = [self.client_work(c, (overrides or {}).get(c)) for c in cohort]
        return [cohort[i] for i in split_work(work, self.world_size)[self.rank]]

    def all_gather(self, value, during: str) -> list:
        """Every rank's `value` (any picklable object), by rank; a lost rank or the timeout is a FedsimError."""
        import torch.distributed as dist

        gathered = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, value)
        except RuntimeError as e:  # gloo's and NCCL's failures (DistBackendError is one)
            reason = _first_line(e)
            raise FedsimError(f"rank {self.rank} lost contact with the other processes during {during} ({reason}): "
                              f"another rank ended, or none answered within {self.timeout:g} s "
                              f"(${TIMEOUT_ENV}); every rank stops (resume the run with --resume)") from None
        return gathered

    def agree(self, build: Callable[[], object], describe: Callable[[object], dict]) -> object:
        """`build()` on every rank, then one all_gather: a FedsimError on any rank is raised on all (naming the
        rank unless every rank had the same error), and so is a fact of `describe(built)` on which a rank differs
        from rank 0 (its config, the partition's hash, ...). Returns what `build` made here."""
        try:
            built = build()
            report = ("ok", describe(built))
        except FedsimError as e:
            built, report = None, ("error", str(e))
        reports = self.all_gather(report, "start-up")
        failed = [(rank, text) for rank, (kind, text) in enumerate(reports) if kind == "error"]
        if failed:
            rank, text = failed[0]
            everywhere = len(failed) == self.world_size and len({t for _, t in failed}) == 1
            raise FedsimError(text if everywhere else f"rank {rank}: {text}")
        lead = reports[0][1]
        for rank, (_, facts) in enumerate(reports):
            differ = [key for key in lead if facts.get(key) != lead[key]]
            if differ:
                raise FedsimError(f"the processes disagree: rank {rank}'s {', '.join(differ)} differ(s) from rank "
                                  "0's; every rank must run the same command, fedsim and torch on the same data "
                                  "and partition")
        return built

    def gather(self, cohort, diverged, sent: list, store, round: int, device) -> tuple[Diverged | None, list]:
        """After this rank's `client_finish`: every rank's messages and its clients' kept state. Returns the
        cohort's first diverged client (by cohort order) if any, else everything sent in cohort order; the other
        ranks' clients' kept state is put into `store`. `diverged`: this rank's first diverged result, or None."""
        kept = store.states()
        mine = [r.client for r in sent]
        payload = (None if diverged is None else Diverged(diverged.client, diverged.last_finite_loss),
                   _to(sent, "cpu"), {c: _to(kept[c], "cpu") for c in mine if c in kept})
        parts = self.all_gather(payload, f"round {round}")
        position = {int(c): i for i, c in enumerate(cohort)}
        bad = [part[0] for part in parts if part[0] is not None]
        if bad:
            return min(bad, key=lambda d: position[d.client]), []
        everything = {r.client: r for r in sent}
        for rank, (_, theirs, their_kept) in enumerate(parts):
            if rank == self.rank:
                continue
            everything.update((r.client, _to(r, device)) for r in theirs)
            for client, state in their_kept.items():
                store.put(client, _to(state, device))
        return None, sorted(everything.values(), key=lambda r: position[r.client])

    def cpu_threads(self, cores: int) -> int:
        """Torch threads per rank on a CPU of `cores` shared by this machine's ranks."""
        return max(1, cores // self.local_world_size)

    def device(self, device):
        """This rank's device: its own GPU (cuda:LOCAL_RANK) when the run asks for CUDA without an index."""
        import torch

        if device.type != "cuda" or device.index is not None:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise FedsimError(f"{self.local_world_size} processes on this machine but {torch.cuda.device_count()} "
                              "CUDA device(s): run one process per GPU, or --device cpu")
        return torch.device("cuda", self.local_rank)


def join(device_type: str = "cpu") -> Ranks | None:
    """This process's Ranks under torchrun (None outside it, or with one process): the process group is made on
    the first call (gloo for a CPU run, NCCL for CUDA), from torchrun's environment, and kept for the process's
    life (a sweep's runs reuse it)."""
    if not under_torchrun():
        return None
    import atexit
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    timeout = collective_timeout()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            reason = _first_line(e)
            raise FedsimError(f"rank {process_rank()} could not join the other processes ({reason})") from None
        atexit.register(_leave)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank,
                 int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), timeout)


def _first_line(error: Exception) -> str:
    """The gist of a collective's error: its first line, without gloo's "[source/file.cc:129] " prefix."""
    import re

    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line)[:160]


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _to(value, device):
    """`value` (tensors in Messages, dicts, lists and tuples) with its tensors on `device`: the gathered
    messages travel pickled through the CPU, so that a rank never unpickles a tensor onto another rank's GPU."""
    import torch

    from fedsim.core.channel import Message

    if isinstance(value, torch.Tensor):
        return value if value.device == torch.device(device) else value.to(device)
    if isinstance(value, Message):
        return replace(value, fields=_to(value.fields, device))
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


# --- the launcher: `fedsim train --nproc N` ----------------------------------------------------------------------


def torchrun_available() -> bool:
    try:
        import torch.distributed as dist
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return False
    return dist.is_available()


def launch(nproc: int, args: list[str], stopped: str = "") -> int:
    """`python -m torch.distributed.run --nproc-per-node nproc -m fedsim <args>` on this machine, run in this
    process so that a stop is one line rather than torchrun's pages of report. Returns the exit code: 0 when all
    finished; rank 0's when it printed an error's one line (2, 3: bad input, divergence, a lost rank); 130 after
    Ctrl-C; else 2, with one line naming the rank that ended first, then `stopped` (where the rows are, how to
    resume). FedsimError when torchrun cannot be started."""
    if under_torchrun() or "TORCHELASTIC_RUN_ID" in os.environ:
        raise FedsimError("--nproc inside torchrun: torchrun already started the processes; drop --nproc")
    if not torchrun_available():
        raise FedsimError("--nproc needs torchrun (torch.distributed), which this PyTorch build lacks; "
                          "run without --nproc")
    import logging
    import signal
    import sys
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from fedsim.engine.threads import cpu_count

    # torchrun's own logs (the thread-count notice, a failed rank's report) are for its users, not ours
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // nproc)))
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "reported"
        os.environ[LAUNCHER_ENV] = str(report)
        try:
            run(parse_args(["--nproc-per-node", str(nproc), "--module", "fedsim", *args]))
        except (KeyboardInterrupt, SignalException):
            sys.stderr.write(f"stopped; {stopped}\n" if stopped else "stopped\n")
            return 130
        except ChildFailedError as e:
            rank, first = e.get_first_failure()
            if report.exists():  # rank 0 said why (bad input, divergence, a lost rank): its exit code
                lead = e.failures.get(0)
                return next((f.exitcode for f in (lead, first) if f is not None and f.exitcode > 0), 2)
            how = (f"was killed by {signal.Signals(-first.exitcode).name}" if first.exitcode < 0
                   else f"exited with code {first.exitcode}")
            sys.stderr.write(f"error: rank {rank} (pid {first.pid}) {how}, and every rank stopped"
                             + (f"; {stopped}" if stopped else "") + "\n")
            return 2
        finally:
            del os.environ[LAUNCHER_ENV]
    return 0
