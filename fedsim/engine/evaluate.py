"""Evaluation in eval() mode: the global model on the test split, each client's model on its test slice.

Evaluation runs under `torch.inference_mode` in batches of `eval_batch` rows: 4,096 on a GPU; 256 on a CPU, where
the char-LSTM evaluated 16% faster and the CNN on MNIST 2x faster in batches of 256 than of 4,096 on a 2-core VM,
the 2NN within 10%, and a small batch keeps the thread probe below cheap (a few batches of a fraction of a second).
It has its own CPU thread count, whatever training chose (the sequential executor keeps one thread: one client's
small steps gain nothing from a second core, while a batch of hundreds of rows does): `--threads N`, else chosen
by timing its batches on one thread and on every core (engine/threads.py's ThreadChooser), which gives every core
on an idle machine and one thread where another process holds a core (on a shared 2-core VM under other jobs'
load, every core took 1.5x as long as one thread on Shakespeare's char-LSTM).

`--eval-sample` and `--eval-clients` (as TensorFlow Federated's StackOverflow and FedScale's evaluations) measure a
part instead of all of it, drawn once from the run's seed (`EvalPlan`): the same rows and clients every round,
after a resume, and whichever executor trains.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedsim.core import rng
from fedsim.engine.threads import ThreadChooser

EVAL_BATCH = {"cuda": 4096, "cpu": 256}


def eval_batch(x: torch.Tensor) -> int:
    return EVAL_BATCH.get(x.device.type, EVAL_BATCH["cuda"])


@torch.inference_mode()
def predict(model: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor, batch: int | None = None,
            threads: ThreadChooser | None = None):
    """Per-sample loss and correctness of `state` on (x, y); `threads` (evaluation's ThreadChooser) times each batch."""
    model.eval()
    batch = batch or eval_batch(x)
    losses, correct = [], []
    for start in range(0, len(x), batch):
        with threads.step() if threads is not None else nullcontext():
            out = functional_call(model, state, (x[start : start + batch],))
        target = y[start : start + batch]
        losses.append(F.cross_entropy(out.float(), target, reduction="none"))
        correct.append(out.argmax(1) == target)
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


def evaluation_threads(threads: int | None = None) -> ThreadChooser:
    """Evaluation's own thread count: `threads` (--threads), else chosen by timing batches on 1 thread and on every
    core. Its batches are many and alike, so a probe costs a few batches of one evaluation."""
    return ThreadChooser(fixed=threads)


@contextmanager
def evaluating_on(threads: ThreadChooser):
    """torch on evaluation's thread count inside (`predict` steps it), the training's count restored after."""
    before = torch.get_num_threads()
    threads.apply()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def personal_summary(correct_per_client: list[np.ndarray]) -> dict:
    """Per-client accuracies over all clients with a non-empty test slice."""
    sizes = np.array([len(c) for c in correct_per_client])
    hits = np.array([c.sum() for c in correct_per_client])
    keep = sizes > 0
    acc = hits[keep] / sizes[keep]
    if not len(acc):
        return dict.fromkeys(("mean", "std", "min", "p10", "pooled"), float("nan"))
    return {
        "mean": float(acc.mean()),
        "std": float(acc.std()),
        "min": float(acc.min()),
        "p10": float(np.percentile(acc, 10)),
        "pooled": float(hits[keep].sum() / sizes[keep].sum()),
    }


def sample_size(spec: float | None, total: int) -> int:
    """How many of `total` a --eval-sample/--eval-clients value asks for: N (spec >= 1) or round(F x total), at least
    1 and at most total; all when unset."""
    if spec is None:
        return total
    size = int(spec) if spec >= 1 else round(spec * total)
    return min(max(size, 1), total)


def stratified_sample(owner: np.ndarray, size: int, generator: np.random.Generator) -> np.ndarray:
    """Sorted positions of `size` rows: each owner's share in proportion to its rows (largest remainders, ties at
    random), drawn at random among its rows. Owners here are clients (-1: a row no client holds)."""
    groups, where, counts = np.unique(owner, return_inverse=True, return_counts=True)
    exact = counts * (size / len(owner))
    share = np.floor(exact).astype(np.int64)
    share[np.lexsort((generator.random(len(groups)), share - exact))[: size - int(share.sum())]] += 1
    shuffled = generator.permutation(len(owner))
    grouped = shuffled[np.argsort(where[shuffled], kind="stable")]  # by owner, in random order inside each
    starts = np.cumsum(counts) - counts
    return np.sort(np.concatenate([grouped[s : s + k] for s, k in zip(starts, share, strict=True)]))


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation measures: `test_rows`, the test split's rows of the global columns (None: all), and
    `clients`, the clients of the personal columns with the rows of each one's slice they are measured on."""

    test_rows: np.ndarray | None
    clients: dict[int, np.ndarray]
    test_total: int
    clients_total: int

    @property
    def sampled(self) -> bool:
        return self.test_rows is not None or len(self.clients) < self.clients_total

    def record(self) -> dict:
        return {"test_samples": self.test_total if self.test_rows is None else len(self.test_rows),
                "test_split": self.test_total, "clients": len(self.clients), "clients_with_test_slice":
                self.clients_total, "drawn_from": "the run's seed, once (the same every round)"}


def eval_plan(test_offsets: np.ndarray, test_index: np.ndarray, slices_in_test_split: bool, test_total: int,
              eval_sample: float | None, eval_clients: float | None, seed: int) -> EvalPlan:
    """The plan of --eval-sample and --eval-clients (None: all) for a partition's client test slices (CSR
    `test_offsets`, `test_index`; indices into the test split when `slices_in_test_split`).

    --eval-sample draws its rows of the test split stratified by the client holding each row, so every client's
    slice is sampled in proportion (a client whose share rounds to 0 rows leaves the personal columns); slices held
    out of the train split (--client-test-fraction) are measured whole. --eval-clients draws the clients of the
    personal columns among those with a test slice."""
    sizes = np.diff(test_offsets)
    with_slice = np.flatnonzero(sizes > 0)
    keep = sample_size(eval_clients, len(with_slice))
    chosen = with_slice if keep == len(with_slice) else np.sort(
        rng.keyed_rng(rng.EVAL_CLIENTS, seed).choice(with_slice, keep, replace=False))
    slices = {int(c): test_index[test_offsets[c] : test_offsets[c + 1]] for c in chosen}
    size = sample_size(eval_sample, test_total)
    if size == test_total:
        return EvalPlan(None, slices, test_total, len(with_slice))
    owner = np.full(test_total, -1, dtype=np.int64)
    if slices_in_test_split:
        owner[test_index] = np.repeat(np.arange(len(sizes)), sizes)
    rows = stratified_sample(owner, size, rng.keyed_rng(rng.EVAL_SAMPLE, seed))
    if slices_in_test_split:
        slices = {c: s[np.isin(s, rows)] for c, s in slices.items()}
        slices = {c: s for c, s in slices.items() if len(s)}
    return EvalPlan(rows, slices, test_total, len(with_slice))
