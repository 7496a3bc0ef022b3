"""Robust reducers: the channel's replacements for the weighted mean of what clients send (fedsim.core.channel).

- Coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed
  Learning: Towards Optimal Statistical Rates", ICML 2018 (arXiv:1803.01498). Per coordinate, over the n
  clients: the median (of an even n, the mean of the two middle values), or the mean after dropping the
  floor(beta·n) largest and the floor(beta·n) smallest values (`--trim-fraction` beta, in [0, 0.5)).
- Krum and multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017. Each client's score is the sum of the squared distances
  from its model to its n − f − 2 nearest others' (`--krum-f` f, needs n >= 2f + 3; default the largest f
  that allows, (n − 3) // 2); Krum takes the model of the lowest score, multi-Krum the mean of the m lowest
  (`--krum-m`, default n − f, as the paper's experiments).

Each applies to every summed field of the algorithm's message (the model, SCAFFOLD's Δc_i, ...): the median
and trimmed mean per coordinate, Krum's distances over all of them at once, and the clients Krum selects give
every field. A per-client field (FedNova's step count) would reach the server unfiltered, so the channel refuses
such an algorithm. Krum's f is capped in each round to what the round's senders allow, (n − 3) // 2, so
dropout or stragglers cannot make it compare fewer neighbours than it needs; with fewer than 3 senders no
client can be told from an outlier, and the round keeps the global model. The CSV's krum_f and krum_m columns
say what each round used.

As in the papers, every client counts once: the sample counts a client reports are not trusted, so with no
attackers these differ from FedAvg's sample-weighted mean by that too (the trimmed mean with beta = 0 is the
plain mean). Both papers aggregate gradients; fedsim's clients send models, all from the same global model,
so the median, the trimmed mean and the distances of the models are those of the updates shifted by it.
Ties in Krum's scores go to the client with the lower id. Integer buffers (BN's num_batches_tracked) are
aggregated the same way and rounded, as FedAvg's.
"""

from __future__ import annotations

import math

from fedsim.core.channel import SUMMED
from fedsim.robust import DEFAULT_TRIM_FRACTION, krum_f

SUMMED_ONLY = "it must filter every value a client sends"
NEEDS_COHORT = "it tells an outlier by comparing a cohort's updates"


def reducer_for(config):
    """The reducer `--aggregate` names; None for `mean` (the channel's weighted mean)."""
    if config.aggregate == "median":
        return TrimmedMean(None)
    if config.aggregate == "trimmed-mean":
        return TrimmedMean(DEFAULT_TRIM_FRACTION if config.trim_fraction is None else config.trim_fraction)
    if config.aggregate in ("krum", "multi-krum"):
        return Krum(config.krum_f, 1 if config.aggregate == "krum" else config.krum_m)
    return None


def _sorted_trimmed_mean(states: list, keys, trim: int) -> dict:
    """Per coordinate, the mean of the values left after dropping the `trim` smallest and `trim` largest."""
    import torch

    out = {}
    for k in keys:
        first = states[0][k]
        values = torch.stack([m[k] for m in states]).to(torch.float64 if first.dtype == torch.float64
                                                        else torch.float32)
        kept = values.sort(dim=0).values[trim: len(states) - trim].mean(dim=0)
        out[k] = kept.to(first.dtype) if first.is_floating_point() else kept.round().to(first.dtype)
    return out


def _each_field(sends, messages, trim: int) -> dict:
    return {name: _sorted_trimmed_mean([m.fields[name] for m in messages], list(messages[0].fields[name]), trim)
            for name, spec in sends.items() if spec.kind == SUMMED}


class TrimmedMean:
    """The coordinate-wise trimmed mean (Yin et al. 2018) dropping floor(fraction·n) values at each end; the
    median (fraction None) keeps only the middle value(s)."""

    needs_summed_only = SUMMED_ONLY
    uses_samples = False
    columns = ()

    def __init__(self, fraction: float | None):
        self.fraction = fraction
        self.name = "--aggregate median" if fraction is None else "--aggregate trimmed-mean"

    def __call__(self, sends, messages, server, round: int):
        n = len(messages)
        trim = (n - 1) // 2 if self.fraction is None else math.floor(self.fraction * n)
        return _each_field(sends, messages, trim), n, {}


def krum_scores(rows, f: int):
    """Each row's Krum score: the sum of its squared distances to its n − f − 2 nearest other rows."""
    import torch

    n = rows.shape[0]
    rows = rows.double()  # exact enough that equal scores tie (ties go to the lower client id)
    squared = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist").cpu() ** 2
    squared.fill_diagonal_(float("inf"))  # a model is not its own neighbour
    return squared.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


class Krum:
    """Krum (m = 1) or multi-Krum (m messages averaged; None: n − f) with f assumed attackers (None: (n − 3) // 2),
    each capped per round to what the round's n senders allow."""

    needs_summed_only = SUMMED_ONLY
    uses_samples = False
    columns = ("krum_f", "krum_m")

    def __init__(self, f: int | None, m: int | None):
        self.f, self.m = f, m
        self.name = "--aggregate krum" if m == 1 else "--aggregate multi-krum"

    def __call__(self, sends, messages, server, round: int):
        import torch

        from fedsim.core.channel import stack_updates

        n = len(messages)
        if n < 3:  # n >= 2f + 3 fails even for f = 0: keep the global model rather than trust one sender
            return _unchanged(sends, messages[0], server), n, {"krum_f": None, "krum_m": 0}
        f = min(krum_f(self.f, n), (n - 3) // 2)
        rows, _ = stack_updates(sends, messages, server.model, centered=False)
        scores = krum_scores(rows, f)
        m = n - f if self.m is None else min(self.m, n - f)
        # a stable sort: equal scores keep the lower position, i.e. the lower client id (cohorts are sorted)
        chosen = torch.sort(scores, stable=True).indices[:m].tolist()
        return _each_field(sends, [messages[i] for i in chosen], 0), n, {"krum_f": f, "krum_m": m}


def _unchanged(sends, template, server) -> dict:
    """Means that change nothing: a centered field's the global model, another's zeros."""
    return {name: {k: server.model[k].clone() if spec.centered else v.new_zeros(v.shape)
                   for k, v in template.fields[name].items()}
            for name, spec in sends.items() if spec.kind == SUMMED}
