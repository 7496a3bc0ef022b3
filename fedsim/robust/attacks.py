"""Malicious clients: a fixed subset, drawn once from the seed, that attacks in every round it is sampled.

With w the global model a client received and w_i the model it trained (honestly, on its own data):

    label-flip   trains on labels y -> C − 1 − y (C classes), then sends as any client (Fang, Cao, Jia, Gong,
                 "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020)
    sign-flip    sends w − s·(w_i − w): its update reversed and scaled by s (s = 4 with 20% attackers makes the
                 sample-weighted mean of equal updates stand still)
    scale        sends w + s·(w_i − w): its update boosted (model replacement, Bagdasaryan et al., AISTATS 2020)
    gaussian     sends w + s·N(0, I): noise in place of its update (Blanchard et al., NeurIPS 2017's Gaussian
                 Byzantine workers)

s is `--attack-scale` (default 4). A model attack is the channel's first stage (fedsim.core.channel): it changes
every summed field the client sends, a model as its update (above) and any other field as its value (SCAFFOLD's
Δc_i reversed or scaled too; noise in its place), except BN's running statistics, which go up as trained since
a reversed variance would be negative. Per-client fields (FedNova's step count) stay honest. A malicious client
keeps its honest personal state; its reported sample count is its own. The subset is drawn from the clients with
data, keyed by the seed (fedsim.core.rng.MALICIOUS), and grows with the fraction (10% of the clients are among
30%'s); the Gaussian noise is keyed by (seed, round, client) (rng.ATTACK), so runs and resumes repeat it.
"""

from __future__ import annotations

from fedsim.core import rng
from fedsim.core.channel import SUMMED, with_fields
from fedsim.robust import DEFAULT_ATTACK_SCALE, malicious_count


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


class ModelAttack:
    """The channel stage by which the malicious clients change what they send (sign-flip, scale or gaussian, on
    every summed field but `buffers`, the model's BN statistics); the others' messages pass."""

    name = "a model attack"
    needs_summed_only = None  # per-client fields pass as sent

    def __init__(self, attack: str, scale: float | None, malicious, seed: int, buffers):
        self.attack, self.seed, self.buffers = attack, seed, frozenset(buffers)
        self.bad = frozenset(int(c) for c in malicious)
        self.scale = DEFAULT_ATTACK_SCALE if scale is None else scale

    def __call__(self, sends, messages, server, round: int):
        return [self.poisoned(sends, m, server.model, round) if m.client in self.bad else m for m in messages]

    def poisoned(self, sends, message, w, round: int):
        import torch

        generator = None
        if self.attack == "gaussian":
            generator = torch.Generator().manual_seed(
                int(rng.keyed_rng(rng.ATTACK, self.seed, round, message.client).integers(2**62)))
        factor = -self.scale if self.attack == "sign-flip" else self.scale
        fields = {}
        for name, spec in sends.items():
            if spec.kind != SUMMED:
                continue
            values, new = message.fields[name], {}
            for k, v in values.items():
                center = w[k] if spec.centered else 0
                if not v.is_floating_point() or k in self.buffers:
                    new[k] = v
                elif generator is not None:
                    new[k] = center + self.scale * torch.randn(v.shape, generator=generator).to(v)
                else:
                    new[k] = center + factor * (v - center)
            fields[name] = new
        return with_fields(message, **fields)
