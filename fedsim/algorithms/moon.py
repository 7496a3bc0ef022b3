"""MOON: Li, He, Song, "Model-Contrastive Federated Learning", CVPR 2021 (arXiv:2103.16257); code followed: the
authors' (QinbinLi/MOON) and PFLlib (`clientmoon.py`).

Differs from FedAvg only in the local loss: cross-entropy + μ·ℓ_con at every step (`--moon-mu`), where
ℓ_con = −log(e^{sim(z, z_glob)/τ} / (e^{sim(z, z_glob)/τ} + e^{sim(z, z_prev)/τ})), averaged over the batch, pulls the
representation z of the model being trained toward the received global model's, z_glob, and away from the
client's previous local model's, z_prev (sim: cosine similarity; τ: `--temperature`). The representation is the
head's input (the base's output), and z_glob and z_prev carry no gradient. Each client keeps its last trained model
(its base, what z_prev depends on); a client never sampled uses the initial model, so in the first round
z_glob = z_prev and ℓ_con has no gradient. μ = 0 is FedAvg exactly (the term is skipped). Bytes: FedAvg's.
Deviations: no projection head (the paper adds a 2-layer MLP on top of the base and takes its output; PFLlib, and
fedsim, take the base's output itself: the model is not changed); the global and previous models run in train mode
(as in both codes) on copies of their BN statistics, which are dropped. The reported train loss is the
cross-entropy alone (ℓ_con only drives the gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedas import features_and_logits
from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import head_params
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone


@dataclass(frozen=True)
class MOONParams(Params):
    # its own name: FedProx's --mu weighs a proximal term, with values a hundred times smaller
    moon_mu: float = option(1.0, "weight μ of the model-contrastive loss (0 = FedAvg; the paper: 5 on CIFAR-10, "
                            "1 on CIFAR-100 and Tiny-ImageNet)", low=0)
    temperature: float = option(0.5, "temperature τ of the model-contrastive loss (the paper: 0.5)", low=0,
                                low_open=True)


class MOON(FedAvg):
    name = "moon"
    needs_head = True  # the representation is the head's input
    Params = MOONParams

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        self.head_modules = sorted({k.rpartition(".")[0] for k in head_params(keys, self.name)})
        self.base = [k for k in keys.all if k not in set(keys.head)]  # what z depends on

    def personal_initial(self, initial):
        return clone(initial, self.base)  # the client's previous model: its base (with any --bn local part)

    def phases(self):
        return [Phase(loss=self.loss)] if self.params.moon_mu else [Phase()]

    def client_context(self, server, store, client):
        def copies(state):  # BatchNorm in train mode updates its running statistics in place: on copies
            return {**state, **{k: state[k].clone() for k in self.keys.buffers}}

        return {"global": copies(server.model), "previous": copies({**server.model, **store.get(client)})}

    def client_finish(self, server, store, result):
        store.put(result.client, {k: result.states[-1][k] for k in self.base})
        return self.message(result)

    def personal_model(self, server, store, client):
        return {**server.model, **{k: store.get(client)[k] for k in self.personal}} if self.personal else None

    def loss(self, model, state, x, y, ctx):
        """Cross-entropy + μ·ℓ_con; its value is the cross-entropy alone."""
        import torch
        import torch.nn.functional as F

        z, logits = features_and_logits(model, state, x, self.head_modules)
        with torch.no_grad():
            z_glob = features_and_logits(model, ctx["global"], x, self.head_modules)[0]
            z_prev = features_and_logits(model, ctx["previous"], x, self.head_modules)[0]
        sims = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, dim=-1)], -1)
        sims = sims / self.params.temperature
        contrastive = self.params.moon_mu * (torch.logsumexp(sims, -1) - sims[..., 0]).mean()
        return F.cross_entropy(logits, y) + contrastive - contrastive.detach()
