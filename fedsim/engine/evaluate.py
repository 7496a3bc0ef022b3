"""Evaluation in eval() mode: the global model on the test split, each client's model on its test slice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

EVAL_BATCH = 4096


@torch.no_grad()
def predict(model: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor):
    """Per-sample loss and correctness of `state` on (x, y)."""
    model.eval()
    losses, correct = [], []
    for start in range(0, len(x), EVAL_BATCH):
        out = functional_call(model, state, (x[start : start + EVAL_BATCH],))
        target = y[start : start + EVAL_BATCH]
        losses.append(F.cross_entropy(out.float(), target, reduction="none"))
        correct.append(out.argmax(1) == target)
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


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
