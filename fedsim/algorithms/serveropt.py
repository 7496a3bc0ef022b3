"""Server optimizers: the server treats the mean client update as a pseudo-gradient.

- FedAvgM: Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
  Classification", 2019 (arXiv:1909.06335): server momentum.
- FedAdagrad, FedYogi, FedAdam: Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive
  Federated Optimization", ICLR 2021 (arXiv:2003.00295), Algorithm 2.

Differs from FedAvg only in the server update: with Δ the sample-weighted mean of (w_i − w) over the
cohort (FedAvg's new model is w + Δ),

    FedAvgM:   v ← β·v + Δ;                      w ← w + η·v
    adaptive:  m ← β1·m + (1 − β1)·Δ
               FedAdagrad  v ← v + Δ²
               FedYogi     v ← v − (1 − β2)·Δ²·sign(v − Δ²)
               FedAdam     v ← β2·v + (1 − β2)·Δ²
               w ← w + η·m/(√v + τ)

as Algorithm 2: m starts at 0 and v at τ² (the paper asks v_{-1} ≥ τ²), with no bias correction.
Deviation: Δ is sample-weighted as FedAvg in fedsim (Algorithm 2 writes the plain mean over S; the two
agree for equal client sizes). Only the shared parameters go through the optimizer; buffers (BN running
statistics) are FedAvg's weighted mean. The moments live in ServerState.extra, so a checkpoint holds them.
The paper tunes η and τ on log grids per task. Since |m|/√v is about 1 once |Δ| ≫ τ, an adaptive step
moves every coordinate by up to about η per round: adaptive runs want --server-lr well below 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedsim.algorithms.base import FedAvg
from fedsim.engine.state import weighted_mean
from fedsim.errors import FedsimError


@dataclass(frozen=True)
class ServerOptParams:
    lr: float = 1.0  # η (--server-lr), > 0; FedAvgM with η = 1 and β = 0 is FedAvg
    momentum: float = 0.9  # FedAvgM's β (--server-momentum), in [0, 1); 0 is FedAvg
    beta1: float = 0.9  # first-moment decay (--server-beta1), in [0, 1); 0 uses Δ itself
    beta2: float = 0.99  # second-moment decay of FedAdam/FedYogi (--server-beta2), in [0, 1)
    tau: float = 1e-3  # adaptivity (--server-tau), > 0; large τ makes the step ≈ η·m/τ (SGD-like)

    def __post_init__(self):
        for name, value, ok in (("--server-lr", self.lr, self.lr > 0), ("--server-tau", self.tau, self.tau > 0),
                                ("--server-momentum", self.momentum, 0 <= self.momentum < 1),
                                ("--server-beta1", self.beta1, 0 <= self.beta1 < 1),
                                ("--server-beta2", self.beta2, 0 <= self.beta2 < 1)):
            if not ok:
                raise FedsimError(f"{name} out of range (got {value}): lr and tau > 0, betas and momentum in [0, 1)")

    @classmethod
    def from_config(cls, config, default_lr: float) -> ServerOptParams:
        lr = default_lr if config.server_lr is None else config.server_lr
        return cls(lr, config.server_momentum, config.server_beta1, config.server_beta2, config.server_tau)


class ServerOpt(FedAvg):
    """What the four share: Δ, the averaged buffers, moments in ServerState.extra. Subclasses: `step`."""

    moments: tuple[str, ...] = ()
    default_server_lr = 1.0  # --server-lr when not given

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        self.params = ServerOptParams.from_config(config, self.default_server_lr)

    def initial_moment(self, name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(param)

    def init_server(self, initial):
        server = super().init_server(initial)
        for name in self.moments:
            server.extra[name] = {k: self.initial_moment(name, initial[k]) for k in self.shared_params}
        return server

    def step(self, delta: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """One parameter's server step: (the change to w, the new moments)."""
        raise NotImplementedError

    def aggregate(self, server, results):
        mean = weighted_mean([r.states[-1] for r in results], [r.num_samples for r in results], self.shared)
        extra = {**server.extra, **{name: {} for name in self.moments}}
        for k in self.shared_params:
            change, new = self.step(mean[k] - server.model[k], {n: server.extra[n][k] for n in self.moments})
            mean[k] = server.model[k] + change
            for name in self.moments:
                extra[name][k] = new[name]
        return replace(server, model={**server.model, **mean}, extra=extra)


class FedAvgM(ServerOpt):
    name = "fedavgm"
    moments = ("momentum",)

    def step(self, delta, state):
        v = self.params.momentum * state["momentum"] + delta
        return self.params.lr * v, {"momentum": v}


class _Adaptive(ServerOpt):
    moments = ("m", "v")
    default_server_lr = 0.01

    def initial_moment(self, name, param):
        return torch.full_like(param, self.params.tau**2) if name == "v" else torch.zeros_like(param)

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, delta, state):
        p = self.params
        m = p.beta1 * state["m"] + (1 - p.beta1) * delta
        v = self.second_moment(state["v"], delta * delta)
        return p.lr * m / (v.sqrt() + p.tau), {"m": m, "v": v}


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def second_moment(self, v, sq):
        return v + sq


class FedYogi(_Adaptive):
    name = "fedyogi"

    def second_moment(self, v, sq):
        return v - (1 - self.params.beta2) * sq * torch.sign(v - sq)


class FedAdam(_Adaptive):
    name = "fedadam"

    def second_moment(self, v, sq):
        return self.params.beta2 * v + (1 - self.params.beta2) * sq
