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

from fedsim.algorithms.base import FedAvg, Phase, proximal_penalty
from fedsim.algorithms.fedper import local_trainable
from fedsim.engine.state import clone
from fedsim.errors import FedsimError


@dataclass(frozen=True)
class DittoParams:
    lam: float = 0.1  # λ (--lam), >= 0: pull of v toward w_global; 0 trains v alone. The global model is
    #                  FedAvg for every λ; λ → ∞ makes v the global model
    freeze_base: bool = False  # --freeze-base: train only the head (of v and of the global copy)

    def __post_init__(self):
        if self.lam < 0:
            raise FedsimError(f"--lam must be >= 0 (got {self.lam})")


class Ditto(FedAvg):
    name = "ditto"
    personalized = True

    def __init__(self, config, keys, num_clients: int = 1):
        if config.bn == "local":
            raise FedsimError("ditto keeps a whole personal model (BN layers included); drop --bn local")
        super().__init__(config, keys, num_clients)
        self.params = DittoParams(lam=config.lam, freeze_base=config.freeze_base)
        self.trainable = local_trainable(keys, self.params.freeze_base, self.name)

    def personal_initial(self, initial):
        return clone(initial)  # v starts as the initial model

    def phases(self):
        prox = proximal_penalty(self.params.lam, self.keys.params)
        return [Phase(trainable=self.trainable, penalty=prox, start="v"),
                Phase(trainable=self.trainable, start="global")]

    def client_context(self, server, store, client):
        return {"v": store.get(client), "global": server.model}

    def client_finish(self, server, store, result):
        store.put(result.client, result.states[0])

    def personal_model(self, server, store, client):
        return store.get(client)
