"""FedNova: Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020 (arXiv:2007.07481).

Differs from FedAvg only in the server average: each client's update is divided by its number of
(momentum-weighted) local steps before averaging, so clients that take more steps do not pull the global
model toward their own objective; the mean is then rescaled by the effective number of steps.

    a_i = τ_i (plain SGD);  a_i = [τ_i − ρ(1 − ρ^τ_i)/(1 − ρ)]/(1 − ρ) with momentum ρ (--momentum)
    d_i = (w_global − w_i)/a_i,   τ_eff = Σ p_i a_i,   w ← w_global − τ_eff · Σ p_i d_i

with τ_i the local steps client i took and p_i its share of the cohort's samples, as NIID-Bench's
`train_net_fednova`/aggregation computes it. The momentum a_i is the sum of the coefficients torch's SGD
momentum buffer puts on each gradient. Weight decay and Nesterov are not in a_i (as in NIID-Bench).
Buffers (BN running statistics) are sample-weighted means, as FedAvg (NIID-Bench normalizes them too).
With equal steps for every client FedNova is FedAvg.
"""

from __future__ import annotations

from dataclasses import replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.state import weighted_mean
from fedsim.errors import FedsimError


def steps_weight(tau: int, rho: float) -> float:
    """a_i: the total weight local SGD with momentum ρ put on a client's gradients over τ steps, in units of lr."""
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


class FedNova(FedAvg):
    name = "fednova"
    plain_average = False  # each update divided by its a_i

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.optimizer != "sgd":
            raise FedsimError(f"fednova normalizes SGD steps; use --optimizer sgd (got {config.optimizer!r})")
        if not 0 <= config.momentum < 1:
            raise FedsimError(f"fednova needs --momentum in [0, 1) (got {config.momentum})")

    def aggregate(self, server, results):
        sizes = [r.num_samples for r in results]
        p = [n / sum(sizes) for n in sizes]
        a = [steps_weight(sum(r.steps), self.config.momentum) for r in results]
        tau_eff = sum(pi * ai for pi, ai in zip(p, a, strict=True))
        w = server.model
        d = weighted_mean([{k: (w[k] - r.states[-1][k]) / ai for k in self.shared_params}
                           for r, ai in zip(results, a, strict=True)], sizes, self.shared_params)
        mean = weighted_mean([r.states[-1] for r in results], sizes, self.shared)  # the buffers
        mean.update({k: w[k] - tau_eff * d[k] for k in self.shared_params})
        return replace(server, model={**w, **mean})
