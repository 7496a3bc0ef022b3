"""Ditto: Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through Personalization",
ICML 2021 (arXiv:2012.04221).

Differs from FedAvg by a personal model v per client, trained beside the FedAvg global model: each sampled
client runs its local epochs on v with the proximal pull (λ/2)·||v − w_global||² to the received global
model (`--lam`), and its local epochs of plain local training from w_global, which the server averages as
FedAvg. Personalized accuracy uses v. The paper's Algorithm 1 trains the global copy first; fedsim runs the
personal phase first, as PFLlib does (the two are independent; only the batch order differs), so the last
phase, the one FedAvg aggregates, is the global one. v is stored only for clients that were sampled;
others read the initial model. --freeze-base trains only the head in both phases (needs a head: --head).
v holds the whole model, BN layers included, so --bn local (a local BN for the global copy) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import local_trainable
from fedsim.core.hooks import LinearTerm, Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone


@dataclass(frozen=True)
class DittoParams(Params):
    # the global model is FedAvg for every λ; λ → ∞ makes v the global model
    lam: float = option(0.1, "pull λ of each personal model toward the global one (0 trains it alone)", low=0,
                        per_client=True)


class Ditto(FedAvg):
    name = "ditto"
    no_bn_local = "keeps a whole personal model (BN layers included)"
    personalized = True
    Params = DittoParams

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        self.trainable = local_trainable(keys, config.freeze_base, self.name)

    def personal_initial(self, initial):
        return clone(initial)  # v starts as the initial model

    def phases(self):
        prox = LinearTerm(weight="lam", center="global")  # (λ/2)·‖v − w_global‖², λ a tensor per client
        return [Phase(trainable=self.trainable, linear_term=prox, start="v"),
                Phase(trainable=self.trainable, start="global")]

    def client_context(self, server, store, client):
        return {"v": store.get(client), "global": server.model,
                "lam": next(iter(server.model.values())).new_tensor(self.params.lam)}

    def client_finish(self, server, store, result):
        store.put(result.client, result.states[0])
        return self.message(result)

    def personal_model(self, server, store, client):
        return store.get(client)
