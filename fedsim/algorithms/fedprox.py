"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (arXiv:1812.06127).

Differs from FedAvg only in the local objective: loss + (mu/2)·||w − w_global||² over the shared
parameters, applied at every local step (the authors' PGD solver). mu = 0 is exactly FedAvg.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class FedProxParams(Params):
    mu: float = option(0.01, "proximal weight (0 = FedAvg; the paper tunes it in {0.001, 0.01, 0.1, 1})", low=0,
                       per_client=True)


def proximal_penalty(weight: float | str, keys) -> Callable:
    """(weight/2)·||w − w_global||² over `keys`, reading the global weights from ctx["global"]; a `weight` that
    is a name is read from ctx too (a per-client tensor, so runs of a sweep with other weights train together)."""
    keys = tuple(keys)

    def penalty(params, ctx: dict):
        w = ctx[weight] if isinstance(weight, str) else weight
        return 0.5 * w * sum(((params[k] - ctx["global"][k]) ** 2).sum() for k in keys if k in params)

    return penalty


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams
    straggler_policy = "partial"  # the paper's systems heterogeneity: stragglers' partial work is averaged in

    def phases(self):
        return [Phase(penalty=proximal_penalty("mu", self.shared_params))]

    def client_context(self, server, store, client):
        shared = {k: server.model[k] for k in self.shared_params}
        return {"global": shared, "mu": next(iter(shared.values())).new_tensor(self.params.mu)}
