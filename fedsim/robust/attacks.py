"""Malicious clients: a fixed subset, drawn once from the seed, that attacks in every round it is sampled.

With w the global model a client received and w_i the model it trained (honestly, on its own data):

    label-flip   trains on labels y -> C − 1 − y (C classes), then sends as any client (Fang, Cao, Jia, Gong,
                 "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020)
    sign-flip    sends w − s·(w_i − w): its update reversed and scaled by s (s = 4 with 20% attackers makes the
                 sample-weighted mean of equal updates stand still)
    scale        sends w + s·(w_i − w): its update boosted (model replacement, Bagdasaryan et al., AISTATS 2020)
    gaussian     sends w + s·N(0, I): noise in place of its update (Blanchard et al., NeurIPS 2017's Gaussian
                 Byzantine workers)

s is `--attack-scale` (default 4). The model attacks change the shared trainable parameters only: buffers (BN's
running statistics) go up as trained, since a reversed variance would be negative. Control variates and other
`extra` a client sends (SCAFFOLD's Δc_i) stay honest. A malicious client keeps its honest personal state; its
reported sample count is its own. The subset is drawn from the clients with data, keyed by the seed
(fedsim.core.rng.MALICIOUS), and grows with the fraction (10% of the clients are among 30%'s); the Gaussian
noise is keyed by (seed, round, client) (rng.ATTACK), so runs and resumes repeat it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fedsim.core import rng
from fedsim.core.hooks import ClientResult, ServerState
from fedsim.robust import DEFAULT_ATTACK_SCALE, malicious_count

Transform = Callable[[list[ClientResult], ServerState, int], list[ClientResult]]


def malicious_clients(seed: int, eligible, fraction: float):
    """The malicious clients: round-half-up(fraction x len(eligible)) of `eligible` (ids with data), sorted; the
    first of one keyed permutation, so a larger fraction adds attackers to a smaller one's."""
    import numpy as np

    count = malicious_count(fraction, len(eligible))
    return np.sort(rng.keyed_rng(rng.MALICIOUS, seed).permutation(np.asarray(eligible))[:count])


def flip_labels(labels, client_indices, num_classes: int):
    """A copy of the training labels in which the rows of `client_indices` (each a malicious client's train
    indices) are flipped y -> C − 1 − y. Every training sample belongs to one client, so the others keep theirs."""
    import numpy as np
    import torch

    flipped = labels.clone()
    rows = torch.as_tensor(np.concatenate([np.asarray(i, dtype=np.int64) for i in client_indices] or [[]]),
                           dtype=torch.long, device=labels.device)
    flipped[rows] = num_classes - 1 - labels[rows]
    return flipped


def model_attack(attack: str, scale: float | None, malicious, seed: int, keys: list[str]) -> Transform:
    """The transform `f(sent, server, round) -> sent` by which the malicious clients change what they send
    (sign-flip, scale or gaussian over `keys`, the shared trainable parameters); the others' results pass."""
    import torch

    bad = frozenset(int(c) for c in malicious)
    s = DEFAULT_ATTACK_SCALE if scale is None else scale

    def poisoned(result: ClientResult, w: dict, round: int) -> ClientResult:
        trained = result.states[-1]
        if attack == "gaussian":
            generator = torch.Generator().manual_seed(
                int(rng.keyed_rng(rng.ATTACK, seed, round, result.client).integers(2**62)))
            new = {k: w[k] + s * torch.randn(w[k].shape, generator=generator).to(w[k]) for k in keys}
        else:
            factor = -s if attack == "sign-flip" else s
            new = {k: w[k] + factor * (trained[k] - w[k]) for k in keys}
        return replace(result, states=[*result.states[:-1], {**trained, **new}])

    def attack_transform(sent: list[ClientResult], server: ServerState, round: int) -> list[ClientResult]:
        return [poisoned(r, server.model, round) if r.client in bad else r for r in sent]

    return attack_transform
