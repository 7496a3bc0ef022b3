"""Robust replacements for the server's mean of the clients' models (`FedAvg.averaging`).

- Coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018 (arXiv:1803.01498). Per coordinate, over the n
  clients: the median (of an even n, the mean of the two middle values), or the mean after dropping the
  floor(beta·n) largest and the floor(beta·n) smallest values (`--trim-fraction` beta, in [0, 0.5)).
- Krum and multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017. Each client's score is the sum of the squared distances
  from its model to its n − f − 2 nearest others' (`--krum-f` f, needs n >= 2f + 3; default the largest f
  that allows, (n − 3) // 2); Krum takes the model of the lowest score, multi-Krum the mean of the m lowest
  (`--krum-m`, default n − f, as the paper's experiments).

As in the papers, every client counts once: the sample counts a client reports are not trusted, so with no
attackers these differ from FedAvg's sample-weighted mean by that too (the trimmed mean with beta = 0 is the
plain mean). Both papers aggregate gradients; fedsim's clients send models, all from the same global model,
so the median, the trimmed mean and the distances of the models are those of the updates shifted by it.
Ties in Krum's scores go to the client with the lower id. Integer buffers (BN's num_batches_tracked) are
aggregated the same way and rounded, as FedAvg's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedsim.core.hooks import ClientResult
from fedsim.core.state import State
from fedsim.robust import DEFAULT_TRIM_FRACTION, krum_f

Averaging = Callable[[State, list[ClientResult], list[str]], State]


def averaging_for(config) -> Averaging | None:
    """The averaging function `--aggregate` names; None for `mean` (the algorithm keeps its own)."""
    if config.aggregate == "median":
        return median
    if config.aggregate == "trimmed-mean":
        return trimmed_mean(DEFAULT_TRIM_FRACTION if config.trim_fraction is None else config.trim_fraction)
    if config.aggregate == "krum":
        return krum(config.krum_f, 1)
    if config.aggregate == "multi-krum":
        return krum(config.krum_f, config.krum_m)
    return None


def _sorted_trimmed_mean(models: list[State], keys, trim: int) -> State:
    """Per coordinate, the mean of the values left after dropping the `trim` smallest and `trim` largest."""
    import torch

    out = {}
    for k in keys:
        first = models[0][k]
        values = torch.stack([m[k] for m in models]).to(torch.float64 if first.dtype == torch.float64
                                                         else torch.float32)
        kept = values.sort(dim=0).values[trim: len(models) - trim].mean(dim=0)
        out[k] = kept.to(first.dtype) if first.is_floating_point() else kept.round().to(first.dtype)
    return out


def median(global_model: State, sent: list[ClientResult], keys) -> State:
    """The coordinate-wise median (Yin et al. 2018): the trimmed mean that keeps only the middle value(s)."""
    return _sorted_trimmed_mean([r.states[-1] for r in sent], keys, (len(sent) - 1) // 2)


def trimmed_mean(fraction: float) -> Averaging:
    """The coordinate-wise trimmed mean (Yin et al. 2018) dropping floor(fraction·n) values at each end."""
    def trimmed(global_model: State, sent: list[ClientResult], keys) -> State:
        return _sorted_trimmed_mean([r.states[-1] for r in sent], keys, math.floor(fraction * len(sent)))

    return trimmed


def krum_scores(models: list[State], keys, f: int):
    """Each model's Krum score: the sum of its squared distances to its n − f − 2 nearest other models."""
    import torch

    n = len(models)
    squared = torch.zeros(n, n, dtype=torch.float64)
    for k in keys:
        if not models[0][k].is_floating_point():
            continue
        x = torch.stack([m[k].reshape(-1) for m in models])
        squared += torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").cpu().double() ** 2
    squared.fill_diagonal_(float("inf"))  # a model is not its own neighbour
    return squared.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum(f: int | None, m: int | None) -> Averaging:
    """Krum (m = 1) or multi-Krum (m models averaged; None: n − f) with f assumed attackers (None: (n − 3) // 2)."""
    def select(global_model: State, sent: list[ClientResult], keys) -> State:
        import torch

        n = len(sent)
        assumed = krum_f(f, n)
        models = [r.states[-1] for r in sent]
        scores = krum_scores(models, keys, assumed)
        # a stable sort: equal scores keep the lower position, i.e. the lower client id (cohorts are sorted)
        chosen = torch.sort(scores, stable=True).indices[: n - assumed if m is None else m].tolist()
        return _sorted_trimmed_mean([models[i] for i in chosen], keys, 0)

    return select
