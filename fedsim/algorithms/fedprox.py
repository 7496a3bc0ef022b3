"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (arXiv:1812.06127).

Differs from FedAvg only in the local objective: loss + (mu/2)·||w − w_global||² over the shared
parameters, applied at every local step (the authors' PGD solver). mu = 0 is exactly FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.hooks import LinearTerm, Phase
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class FedProxParams(Params):
    mu: float = option(0.01, "proximal weight (0 = FedAvg; the paper tunes it in {0.001, 0.01, 0.1, 1})", low=0,
                       per_client=True)


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams
    straggler_policy = "partial"  # the paper's systems heterogeneity: stragglers' partial work is averaged in

    def phases(self):
        # the proximal gradient mu·(w − w_global), a tensor per client: runs of a sweep with other mu train together
        return [Phase(linear_term=LinearTerm(weight="mu", center="global"))]

    def client_context(self, server, store, client):
        shared = {k: server.model[k] for k in self.shared_params}  # the term covers these alone
        return {"global": shared, "mu": next(iter(shared.values())).new_tensor(self.params.mu)}
