"""APFL: Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", 2020 (arXiv:2003.13461); code followed:
the authors' (MLOPTPSU/FedTorch, `comms/trainings/federated/apfl.py`, `alpha_update`) and PFLlib (`clientapfl.py`).

Differs from FedAvg by a personal model per client: client i keeps v_i and a mixing weight α_i (starting at
`--apfl-alpha`), and uses the mixture v̄_i = α_i·v_i + (1 − α_i)·w of v_i and the global model w. Each sampled
client trains v_i for its local epochs on the loss of v̄_i, whose gradient in v_i is α_i·∇f_i(v̄_i), and the
global copy from w as FedAvg, which the server averages; then α_i ← clip(α_i − lr·⟨v_i − w, ∇f_i(v̄_i)⟩, 0, 1),
the gradient in α of the client's loss at the start of the round. Personalized accuracy uses v̄_i with the current
global model. α_i and v_i never travel: bytes are FedAvg's, and so is the global model (for any α).
Deviations: while v_i trains, v̄_i mixes it with the received global model, not with the client's own global copy
as that trains (the paper's Algorithm 1 steps both in lockstep; the engine trains one model per phase), and v_i's
phase runs first, as Ditto's; α_i takes one step a round (as the authors' code, which updates it at the round's
first step only; the paper, at every step), with the gradient over all the client's training data (eval mode),
without the code's extra 0.02·α term; the models are mixed by their parameters, as the paper's v̄ (the authors'
code mixes the two models' outputs). BN running statistics of v̄_i are v_i's own (updated while v_i trains in v̄_i).
--freeze-base trains only the head in both phases (needs a head: --head). --bn local is refused (v_i holds the
whole model).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import local_trainable
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone

CHUNK = 4096  # samples per forward pass when computing α's gradient


@dataclass(frozen=True)
class APFLParams(Params):
    apfl_alpha: float = option(0.5, "initial mixing weight α of each client's personal model, then learned per client "
                               "(the paper tries 0.25, 0.5, 0.75)", low=0, high=1)


class APFL(FedAvg):
    name = "apfl"
    no_bn_local = "keeps a whole personal model (BN layers included)"
    personalized = True
    Params = APFLParams

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        self.trainable = local_trainable(keys, config.freeze_base, self.name)

    def personal_initial(self, initial):
        import torch

        return {"v": clone(initial), "alpha": torch.tensor(self.params.apfl_alpha)}

    def phases(self):
        return [Phase(trainable=self.trainable, loss=self.mixed_loss, start="v"),
                Phase(trainable=self.trainable, start="global")]

    def client_context(self, server, store, client):
        entry = store.get(client)
        return {"v": entry["v"], "alpha": entry["alpha"], "global": server.model}

    def client_finish(self, server, store, result):
        entry = store.get(result.client)
        alpha = entry["alpha"] - result.lr * self.alpha_gradient(entry["v"], entry["alpha"], server.model,
                                                                 result.client)
        store.put(result.client, {"v": result.states[0], "alpha": alpha.clamp(0.0, 1.0)})
        return self.message(result)

    def personal_model(self, server, store, client):
        entry = store.get(client)
        return self.mixed(entry["v"], entry["alpha"], server.model)

    def mixed(self, v, alpha, w):
        """v̄ = α·v + (1 − α)·w over the parameters; the buffers (BN statistics) are v's."""
        return {**v, **{k: alpha * v[k] + (1 - alpha) * w[k] for k in self.keys.params}}

    def mixed_loss(self, model, state, x, y, ctx):
        import torch.nn.functional as F
        from torch.func import functional_call

        return F.cross_entropy(functional_call(model, self.mixed(state, ctx["alpha"], ctx["global"]), (x,)), y)

    def alpha_gradient(self, v, alpha, w, client: int):
        """∂/∂α of the client's mean training loss at v̄ = α·v + (1 − α)·w: ⟨v − w, ∇f(v̄)⟩ (eval mode)."""
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        idx = self.data.of(client)
        mixed = {k: t.detach().requires_grad_() if k in self.keys.params else t
                 for k, t in self.mixed(v, alpha, w).items()}
        params = [mixed[k] for k in self.keys.params]
        grads = [torch.zeros_like(p) for p in params]
        self.model.eval()
        for start in range(0, len(idx), CHUNK):
            batch = idx[start : start + CHUNK]
            loss = F.cross_entropy(functional_call(self.model, mixed, (self.data.x[batch],)), self.data.y[batch],
                                   reduction="sum") / len(idx)
            for g, part in zip(grads, torch.autograd.grad(loss, params), strict=True):
                g.add_(part)
        return sum(((v[k] - w[k]) * g).sum() for k, g in zip(self.keys.params, grads, strict=True))
