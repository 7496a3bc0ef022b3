"""Clipping and noise: DP's reducer and local DP's stage in the channel (fedsim.core.channel).

DP-FedAvg: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR
2018 (arXiv:1710.06963). Each client's update Δ_i is clipped to L2 norm C; the server adds N(0, (z·C)²) per
coordinate to their sum and divides by a fixed denominator, the cohort size m (fedsim's cohorts have a fixed
size). Every client counts once: sample counts are not used, as they would change the sum's sensitivity.

Δ_i is everything client i sends, as one vector: every summed field of its message (fedsim.core.channel), a
model as its update (the model minus the global model it started from), other fields as they are (SCAFFOLD's
Δc_i). One clip norm bounds them together, so the sum's sensitivity, the noise and the accountant hold for any
algorithm whose message has only summed fields; a per-client field (FedNova's step count) cannot be clipped into
a sum, and the channel refuses such an algorithm. The server's update reads only the noised means, so whatever
it computes from them (FedDyn's h, a server optimizer's moments) is post-processing.

Adaptive clipping: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021 (arXiv:1905.03871). Each round the server also sums b_i = [‖Δ_i‖ ≤ C], adds N(0, σ_b²)
with σ_b = m/20 (the paper's choice), and moves C geometrically toward the γ-quantile of the update norms:
C ← C·exp(−η_C·(b̄ − γ)), b̄ the noised fraction, η_C = 0.2, C starting at 0.1 (the paper's defaults). The
two Gaussian sums together are one Gaussian mechanism of multiplier z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2) (the paper's
Theorem 1; replace-one moves the count by 1 and the sum by 2C alike), so the update's noise multiplier is
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), and only z < 2σ_b = m/10 can be protected this way.

The noise is keyed by (the run's noise key, round): the run's identity by default (fedsim/identity.py), so two
runs of a sweep that differ in anything (a learning rate) draw independent noise; `--dp-noise-seed` shares it on
purpose.
Deviation: integer tensors (BN's num_batches_tracked counts a client's steps, so its data size) are not sent
through the mechanism but keep the global model's value.
"""

from __future__ import annotations

import math

from fedsim.core import rng
from fedsim.core.channel import UNIFORM, stack_updates, summed, unstack, with_fields

ADAPTIVE_INITIAL_CLIP = 0.1  # Andrew et al.'s C_0
ADAPTIVE_CLIP_LR = 0.2  # η_C
SUMMED_ONLY = "it clips and noises everything a client sends as one vector"
NEEDS_COHORT = "it hides each client's update in the noised sum of a cohort's"  # central mode
UNCLIPPED = "dp_unclipped"  # under secure aggregation with adaptive clipping: 1 where a client's update was not clipped


def clip_rows(updates, clip: float):
    """Each row scaled to L2 norm at most `clip`; also the rows' norms before clipping."""
    norms = updates.norm(dim=1)
    return updates * (clip / norms.clamp_min(clip)).unsqueeze(1), norms


def gaussian(size: int, std: float, device, purpose: int, key: int, *more: int):
    """N(0, std²) of `size` coordinates from the generator keyed by (purpose, key, more): the same numbers on
    every device and executor, and after a resume."""
    import torch

    generator = torch.Generator().manual_seed(int(rng.keyed_rng(purpose, key, *more).integers(2**62)))
    return (torch.randn(size, generator=generator) * std).to(device)


class DPReducer:
    """The channel's reducer under DP: the means of the summed fields from the clipped (central) or already
    clipped and noised (local) updates, over the fixed denominator m.

    Central mode clips each update, noises the sum and divides by m. Local mode receives updates the clients
    already clipped and noised (`LocalNoise`) and divides their sum by m. `clip` is None for adaptive clipping;
    `state()`/`load()` carry the clip norm and the noise multiplier through the checkpoint (ServerState.extra)."""

    name = "differential privacy"
    needs_summed_only = SUMMED_ONLY
    uses_samples = False
    added = (UNCLIPPED,)  # the field ClientClip adds under secure aggregation (adaptive clipping)

    def __init__(self, mode: str, clip: float | None, noise: float, cohort: int, key: int, quantile: float = 0.5):
        self.mode, self.cohort, self.key, self.quantile = mode, cohort, key, quantile
        self.adaptive = clip is None
        self.clip = ADAPTIVE_INITIAL_CLIP if self.adaptive else clip
        self.used_clip = self.clip  # the clip norm of the last round reduced
        self.set_noise(noise)

    def set_noise(self, noise: float) -> None:
        self.noise = noise
        self.count_std = self.cohort / 20 if self.adaptive and noise > 0 else 0.0
        self.update_noise = noise if not self.count_std else (noise**-2 - (2 * self.count_std) ** -2) ** -0.5

    def __call__(self, sends, messages, server, round: int):
        updates, parts = stack_updates(sends, messages, server.model)
        if self.mode == "local":  # clipped and noised by each client before sending
            total = self.noised(updates.sum(0), None, round)
        else:
            clipped, norms = clip_rows(updates, self.clip)
            total = self.noised(clipped.sum(0), float((norms <= self.clip).sum()), round)
        return unstack(sends, messages[0], parts, total / self.cohort, server.model), self.cohort, {}

    def reduce_sum(self, sends, template, parts, total, added: dict, server, round: int):
        """The same from the sum of the updates the clients clipped themselves (`ClientClip`, or local DP's
        `LocalNoise`), unmasked by secure aggregation: `total` laid out as `parts`, `added` the sums of the fields
        `ClientClip` added (the count of unclipped updates, for adaptive clipping)."""
        unclipped = float(added[UNCLIPPED].sum()) if UNCLIPPED in added else None
        total = self.noised(total, unclipped, round)
        return unstack(sends, template, parts, total / self.cohort, server.model), self.cohort, {}

    def noised(self, total, unclipped: float | None, round: int):
        """The sum of the clipped updates with central DP's noise, and adaptive clipping's step from the number
        of updates that were not clipped (`unclipped`); local DP's sum as it is."""
        clip = self.clip
        if self.mode != "local":
            total = total + gaussian(total.shape[0], self.update_noise * clip, total.device, rng.DP_NOISE,
                                     self.key, round)
            if self.adaptive:
                unclipped += float(gaussian(1, self.count_std, "cpu", rng.DP_COUNT, self.key, round)[0])
                self.clip = clip * math.exp(-ADAPTIVE_CLIP_LR * (unclipped / self.cohort - self.quantile))
        self.used_clip = clip
        return total

    def state(self) -> dict:
        return {"clip": self.clip, "noise": self.noise}

    def load(self, state: dict | None) -> None:
        if state is not None:
            self.clip = float(state["clip"])


class LocalNoise:
    """Local DP, a channel stage: each client clips its update (every summed field, as `DPReducer`) to C and adds
    N(0, (z·C)²) per coordinate before it leaves the client (keyed by (the run's noise key, round, client))."""

    name = "differential privacy (--dp-mode local)"
    needs_summed_only = SUMMED_ONLY

    def __init__(self, clip: float, noise: float, key: int):
        self.clip, self.noise, self.key = clip, noise, key

    def __call__(self, sends, messages, server, round: int):
        updates, parts = stack_updates(sends, messages, server.model)
        clipped, _ = clip_rows(updates, self.clip)
        out = []
        for m, update in zip(messages, clipped, strict=True):
            noisy = update + gaussian(update.numel(), self.noise * self.clip, update.device, rng.DP_LOCAL_NOISE,
                                      self.key, round, m.client)
            out.append(with_fields(m, **unstack(sends, m, parts, noisy, server.model)))
        return out


class ClientClip:
    """Central DP under secure aggregation, a channel stage: the server cannot clip a masked vector, so each
    client clips its update (every summed field, as `DPReducer`) to the server's current C before masking, and
    the server noises the unmasked sum (`DPReducer.reduce_sum`). With adaptive clipping each client also sends
    whether its update was within C, a field the secure sum adds up like the others."""

    name = "differential privacy (clipped on the client under --secure-agg)"
    needs_summed_only = SUMMED_ONLY

    def __init__(self, reducer: DPReducer):
        self.reducer = reducer
        self.adds = {UNCLIPPED: summed("1 if the update was within the clip norm", weight=UNIFORM)} \
            if reducer.adaptive else {}

    def __call__(self, sends, messages, server, round: int):
        import torch

        updates, parts = stack_updates(sends, messages, server.model)
        clipped, norms = clip_rows(updates, self.reducer.clip)
        out = []
        for m, update, norm in zip(messages, clipped, norms, strict=True):
            fields = unstack(sends, m, parts, update, server.model)
            if self.adds:
                fields[UNCLIPPED] = {"count": torch.tensor([float(norm <= self.reducer.clip)], device=update.device)}
            out.append(with_fields(m, **fields))
        return out
