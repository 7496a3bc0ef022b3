"""FedAsync: Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020 (arXiv:1903.03934), Algorithm 1.

Differs from FedAvg in running asynchronously (fedsim.engine.asynchronous): `--concurrency` clients train at once
and the server mixes each model into the global one as it arrives, x ← (1 − α_t)·x + α_t·x_new with
α_t = α·s(τ) (`--mixing` α, `--staleness` s, τ the versions since the client's model). The channel's staleness
stage hands the server x + s(τ)·(x_new − x), so its step is (1 − α)·x + α·that. Each update is applied alone, a
cohort of one: central DP (which hides a client in a cohort's noised sum) and the robust reducers (which compare a
cohort's updates) refuse it. With α = 1 and one client in flight it is sequential training over the clients.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.asynchronous import Asynchronous, AsyncParams
from fedsim.core.channel import MODEL
from fedsim.core.params import option


@dataclass(frozen=True)
class FedAsyncParams(AsyncParams):
    mixing: float = option(0.6, "α: the weight of an arriving model, α·s(τ) (the paper tries 0.5 to 0.9)", low=0,
                           high=1, low_open=True)


class FedAsync(Asynchronous):
    name = "fedasync"
    Params = FedAsyncParams
    buffer_size = 1
    single_update = "applies each client's update alone, as it arrives"

    def server_update(self, server, aggregate):
        a = self.params.mixing
        mixed = {k: (1 - a) * server.model[k] + a * v if v.is_floating_point() else v
                 for k, v in aggregate.means[MODEL].items()}
        return replace(server, model={**server.model, **mixed})
