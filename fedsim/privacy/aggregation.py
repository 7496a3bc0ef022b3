"""Clipping and noise on the stacked client updates.

DP-FedAvg: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR
2018 (arXiv:1710.06963). Each client's update Δ_i (its model minus the global model over what the server
averages) is clipped to L2 norm C; the server adds N(0, (z·C)²) per coordinate to their sum and divides by a
fixed denominator, the cohort size m (fedsim's cohorts have a fixed size). Every client counts once: sample
counts are not used, as they would change the sum's sensitivity.

Adaptive clipping: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021 (arXiv:1905.03871). Each round the server also sums b_i = [‖Δ_i‖ ≤ C], adds N(0, σ_b²)
with σ_b = m/20 (the paper's choice), and moves C geometrically toward the γ-quantile of the update norms:
C ← C·exp(−η_C·(b̄ − γ)), b̄ the noised fraction, η_C = 0.2, C starting at 0.1 (the paper's defaults). The
two Gaussian sums together are one Gaussian mechanism of multiplier z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2) (the paper's
Theorem 1; replace-one moves the count by 1 and the sum by 2C alike), so the update's noise multiplier is
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), and only z < 2σ_b = m/10 can be protected this way.

The update covers the floating tensors the server averages (parameters and BN running statistics). Deviation:
integer buffers (BN's num_batches_tracked counts a client's steps, so its data size) are not averaged but keep
the global model's value.
"""

from __future__ import annotations

import math
from dataclasses import replace

from fedsim.core import rng
from fedsim.core.hooks import ClientResult
from fedsim.core.state import State

ADAPTIVE_INITIAL_CLIP = 0.1  # Andrew et al.'s C_0
ADAPTIVE_CLIP_LR = 0.2  # η_C


def _float_keys(state: State, keys) -> list[str]:
    return [k for k in keys if state[k].is_floating_point()]


def stacked_updates(global_model: State, states: list[State], keys: list[str]):
    """(clients, coordinates): each client's state minus the global model, flattened over `keys`."""
    import torch

    return torch.stack([torch.cat([(s[k] - global_model[k]).reshape(-1).float() for k in keys]) for s in states])


def clip_rows(updates, clip: float):
    """Each row scaled to L2 norm at most `clip`; also the rows' norms before clipping."""
    norms = updates.norm(dim=1)
    return updates * (clip / norms.clamp_min(clip)).unsqueeze(1), norms


def gaussian(size: int, std: float, device, purpose: int, seed: int, *key: int):
    """N(0, std²) of `size` coordinates from the generator keyed by (purpose, seed, key): the same numbers on
    every device and executor, and after a resume."""
    import torch

    generator = torch.Generator().manual_seed(int(rng.keyed_rng(purpose, seed, *key).integers(2**62)))
    return (torch.randn(size, generator=generator) * std).to(device)


def _unflattened(global_model: State, keys: list[str], flat_keys: list[str], mean) -> State:
    out, start = {}, 0
    for k in flat_keys:
        n = global_model[k].numel()
        out[k] = global_model[k] + mean[start:start + n].reshape(global_model[k].shape).to(global_model[k].dtype)
        start += n
    return {k: out[k] if k in out else global_model[k].clone() for k in keys}


class DPAveraging:
    """`FedAvg.averaging` under DP: f(global model, sent, keys) -> the new state over keys.

    Central mode clips each update, noises the sum and divides by m. Local mode receives updates the clients
    already clipped and noised (`LocalNoise`) and divides their sum by m. `clip` is None for adaptive
    clipping; `state()`/`load()` carry its clip norm through the checkpoint (ServerState.extra).
    """

    def __init__(self, mode: str, clip: float | None, noise: float, cohort: int, seed: int, quantile: float = 0.5):
        self.mode, self.noise, self.cohort, self.seed, self.quantile = mode, noise, cohort, seed, quantile
        self.adaptive = clip is None
        self.clip = ADAPTIVE_INITIAL_CLIP if self.adaptive else clip
        self.used_clip = self.clip  # the clip norm of the last round averaged
        self.count_std = cohort / 20 if self.adaptive and noise > 0 else 0.0
        self.update_noise = noise if not self.count_std else (noise**-2 - (2 * self.count_std) ** -2) ** -0.5

    def __call__(self, global_model: State, sent: list[ClientResult], keys) -> State:
        if not sent:  # every client of the cohort dropped out: nothing of anyone's data to release
            return {k: global_model[k].clone() for k in keys}
        flat_keys = _float_keys(global_model, keys)
        updates = stacked_updates(global_model, [r.states[-1] for r in sent], flat_keys)
        round, clip = sent[0].round, self.clip
        if self.mode == "local":  # clipped and noised by each client before sending
            total = updates.sum(0)
        else:
            clipped, norms = clip_rows(updates, clip)
            total = clipped.sum(0) + gaussian(updates.shape[1], self.update_noise * clip, updates.device,
                                              rng.DP_NOISE, self.seed, round)
            if self.adaptive:
                unclipped = float((norms <= clip).sum()) + float(
                    gaussian(1, self.count_std, "cpu", rng.DP_COUNT, self.seed, round)[0])
                self.clip = clip * math.exp(-ADAPTIVE_CLIP_LR * (unclipped / self.cohort - self.quantile))
        self.used_clip = clip
        return _unflattened(global_model, list(keys), flat_keys, total / self.cohort)

    def state(self) -> dict:
        return {"clip": self.clip}

    def load(self, state: dict | None) -> None:
        if state is not None:
            self.clip = float(state["clip"])


class LocalNoise:
    """Local DP, a `run_round` transform: each client clips its update over `keys` to C and adds N(0, (z·C)²)
    per coordinate before it leaves the client (keyed by (seed, round, client))."""

    def __init__(self, clip: float, noise: float, seed: int, keys: list[str]):
        self.clip, self.noise, self.seed, self.keys = clip, noise, seed, keys

    def __call__(self, sent: list[ClientResult], server, round: int) -> list[ClientResult]:
        if not sent:
            return sent
        model = server.model
        flat_keys = _float_keys(model, self.keys)
        clipped, _ = clip_rows(stacked_updates(model, [r.states[-1] for r in sent], flat_keys), self.clip)
        out = []
        for r, update in zip(sent, clipped, strict=True):
            noisy = update + gaussian(update.numel(), self.noise * self.clip, update.device, rng.DP_LOCAL_NOISE,
                                      self.seed, round, r.client)
            state = {**r.states[-1], **_unflattened(model, flat_keys, flat_keys, noisy)}
            out.append(replace(r, states=[*r.states[:-1], state]))
        return out
