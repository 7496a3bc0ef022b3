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

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import MODEL
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class FedAvgMParams(Params):
    server_lr: float = option(1.0, "server step size η (η = 1 with momentum 0 is FedAvg)", low=0, low_open=True)
    server_momentum: float = option(0.9, "server momentum β (0 is FedAvg)", low=0, high=1, high_open=True)


@dataclass(frozen=True)
class AdaptiveParams(Params):
    # |m|/√v is about 1 once |Δ| ≫ τ, so a step moves each coordinate by up to about η: keep η well below 1
    server_lr: float = option(0.01, "server step size η (the paper tunes it on a log grid)", low=0, low_open=True)
    server_beta1: float = option(0.9, "first-moment decay β1 (0 uses Δ itself)", low=0, high=1, high_open=True)
    server_tau: float = option(1e-3, "adaptivity τ (large τ makes the step SGD-like, ≈ η·m/τ)", low=0,
                               low_open=True)


@dataclass(frozen=True)
class AdamParams(AdaptiveParams):
    server_beta2: float = option(0.99, "second-moment decay β2", low=0, high=1, high_open=True)


class ServerOpt(FedAvg):
    """What the four share: Δ, the averaged buffers, moments in ServerState.extra. Subclasses: `step`."""

    moments: tuple[str, ...] = ()

    def initial_moment(self, name: str, param):
        return param.new_zeros(param.shape)

    def init_server(self, initial):
        server = super().init_server(initial)
        for name in self.moments:
            server.extra[name] = {k: self.initial_moment(name, initial[k]) for k in self.shared_params}
        return server

    def step(self, delta, state: dict) -> tuple:
        """One parameter's server step: (the change to w, the new moments)."""
        raise NotImplementedError

    def server_update(self, server, aggregate):
        mean = dict(aggregate.means[MODEL])
        extra = {**server.extra, **{name: {} for name in self.moments}}
        for k in self.shared_params:
            change, new = self.step(mean[k] - server.model[k], {n: server.extra[n][k] for n in self.moments})
            mean[k] = server.model[k] + change
            for name in self.moments:
                extra[name][k] = new[name]
        return replace(server, model={**server.model, **mean}, extra=extra)


class FedAvgM(ServerOpt):
    name = "fedavgm"
    Params = FedAvgMParams
    moments = ("momentum",)

    def step(self, delta, state):
        v = self.params.server_momentum * state["momentum"] + delta
        return self.params.server_lr * v, {"momentum": v}


class _Adaptive(ServerOpt):
    Params = AdaptiveParams
    moments = ("m", "v")

    def initial_moment(self, name, param):
        return param.new_full(param.shape, self.params.server_tau**2) if name == "v" else param.new_zeros(param.shape)

    def second_moment(self, v, sq):
        raise NotImplementedError

    def step(self, delta, state):
        p = self.params
        m = p.server_beta1 * state["m"] + (1 - p.server_beta1) * delta
        v = self.second_moment(state["v"], delta * delta)
        return p.server_lr * m / (v.sqrt() + p.server_tau), {"m": m, "v": v}


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def second_moment(self, v, sq):
        return v + sq


class FedYogi(_Adaptive):
    name = "fedyogi"
    Params = AdamParams

    def second_moment(self, v, sq):
        return v - (1 - self.params.server_beta2) * sq * (v - sq).sign()


class FedAdam(_Adaptive):
    name = "fedadam"
    Params = AdamParams

    def second_moment(self, v, sq):
        return self.params.server_beta2 * v + (1 - self.params.server_beta2) * sq
