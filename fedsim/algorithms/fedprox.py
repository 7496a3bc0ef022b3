"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020 (arXiv:1812.06127).

Differs from FedAvg only in the local objective: loss + (mu/2)·||w − w_global||² over the shared
parameters, applied at every local step (the authors' PGD solver). mu = 0 is exactly FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.base import FedAvg, Phase, proximal_penalty
from fedsim.errors import FedsimError


@dataclass(frozen=True)
class FedProxParams:
    mu: float = 0.01  # proximal weight, >= 0; 0 reduces to FedAvg. The paper tunes it in {0.001, ..., 1}.

    def __post_init__(self):
        if self.mu < 0:
            raise FedsimError(f"--mu must be >= 0 (got {self.mu})")


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, config, keys, num_clients=1):
        super().__init__(config, keys, num_clients)
        self.params = FedProxParams(mu=config.mu)

    def phases(self):
        return [Phase(penalty=proximal_penalty(self.params.mu, self.shared_params))]

    def client_context(self, server, store, client):
        return {"global": {k: server.model[k] for k in self.shared_params}}
