"""FedNova: Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020 (arXiv:2007.07481).

Differs from FedAvg only in the server average: each client's update is divided by its number of
(momentum-weighted) local steps before averaging, so clients that take more steps do not pull the global
model toward their own objective; the mean is then rescaled by the effective number of steps.

    a_i = τ_i (plain SGD);  a_i = [τ_i − ρ(1 − ρ^τ_i)/(1 − ρ)]/(1 − ρ) with momentum ρ (--momentum)
    d_i = (w_global − w_i)/a_i,   τ_eff = Σ p_i a_i,   w ← w_global − τ_eff · Σ p_i d_i

with τ_i the local steps client i took and p_i its share of the cohort's samples, as NIID-Bench's
`train_net_fednova`/aggregation computes it. Each client sends d_i (summed, sample-weighted) and its a_i
(per-client: τ_eff needs each client's own), so the server never sees a client's model; the a_i make FedNova
incompatible with differential privacy and robust aggregation, which must see every value a client sends.
The momentum a_i is the sum of the coefficients torch's SGD
momentum buffer puts on each gradient. Weight decay and Nesterov are not in a_i (as in NIID-Bench).
Buffers (BN running statistics) are sample-weighted means, as FedAvg (NIID-Bench normalizes them too).
With equal steps for every client FedNova is FedAvg.
"""

from __future__ import annotations

from dataclasses import replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import MODEL, per_client, summed
from fedsim.core.state import num_bytes
from fedsim.errors import FedsimError


def steps_weight(tau: int, rho: float) -> float:
    """a_i: the total weight local SGD with momentum ρ put on a client's gradients over τ steps, in units of lr."""
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


class FedNova(FedAvg):
    name = "fednova"
    sends = {MODEL: summed("the trained model's BN statistics (buffers)", centered=True),
             "normalized": summed("d_i = (w − w_i)/a_i over the shared parameters"),
             "steps": per_client("a_i, the client's momentum-weighted local step count")}

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.optimizer != "sgd":
            raise FedsimError(f"fednova normalizes SGD steps; use --optimizer sgd (got {config.optimizer!r})")
        if not 0 <= config.momentum < 1:
            raise FedsimError(f"fednova needs --momentum in [0, 1) (got {config.momentum})")

    def __init__(self, config, keys, population: int = 1):
        super().__init__(config, keys, population)
        self.sent = [k for k in self.shared if k not in self.shared_params]  # the buffers travel as a model

    def client_finish(self, server, store, result):
        super().client_finish(server, store, result)
        a = steps_weight(sum(result.steps), self.config.momentum)
        w, trained = server.model, result.states[-1]
        return self.message(result, normalized={k: (w[k] - trained[k]) / a for k in self.shared_params}, steps=a)

    def server_update(self, server, aggregate):
        sizes = aggregate.samples
        p = [n / sum(sizes) for n in sizes]
        tau_eff = sum(pi * ai for pi, ai in zip(p, aggregate.per_client["steps"], strict=True))
        w, d = server.model, aggregate.means["normalized"]
        mean = {**aggregate.means[MODEL], **{k: w[k] - tau_eff * d[k] for k in self.shared_params}}
        return replace(server, model={**w, **mean})

    def bytes_down(self, server):
        return num_bytes(server.model, self.shared)
