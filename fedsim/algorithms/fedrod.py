"""FedRoD: Chen, Chao, "On Bridging Generic and Personalized Federated Learning for Image Classification",
ICLR 2022 (arXiv:2107.00778); code followed: PFLlib's `clientrod.py` (TsingZ0/PFLlib).

Differs from FedAvg in the local loss and a personal head. The shared model (base and generic head, averaged as
FedAvg) trains on the balanced softmax loss, the cross-entropy of logits + log(n_c), n_c the client's training
samples of class c (Ren et al. 2020), so the generic model is not pulled to the client's label mix. Each client
also keeps a personal head h_p, of the generic head's shape, trained on the cross-entropy of
g(z) + h_p(z), the generic head's output plus its own, with the base and generic head held; the client's
personalized model predicts with g + h_p. For a Linear head g(z) + h_p(z) is one Linear layer with the two
heads' weights summed, so the personal head trains as that sum in a second phase and h_p is what it moved
by; FedRoD therefore needs the head to be one Linear layer (the default head of the built-in models, as PFLlib's).
h_p starts as the initial head (PFLlib deep-copies it). With every client's classes equally represented the
shared model is FedAvg's.
Deviation: PFLlib interleaves the two updates batch by batch (the personal step on the representation before
that batch's generic step); fedsim trains the personal head in a phase after the generic epochs, on the trained
base and generic head, with its own batch order (so with BatchNorm the running statistics see the data twice).
--freeze-base is refused.
"""

from __future__ import annotations

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import head_params
from fedsim.core.hooks import ClientJob, Phase
from fedsim.core.state import clone
from fedsim.errors import FedsimError


class FedRoD(FedAvg):
    name = "fedrod"
    no_freeze_base = "trains its base"
    needs_head = True
    personalized = True

    def __init__(self, config, keys, num_clients: int = 1):
        self.head = sorted(head_params(keys, self.name))
        super().__init__(config, keys, num_clients)

    def attach(self, model, data):
        from torch import nn

        modules = {k.rpartition(".")[0] for k in self.head}
        if len(modules) != 1 or not isinstance(model.get_submodule(next(iter(modules))), nn.Linear):
            raise FedsimError(f"fedrod needs the head to be one Linear layer (now {', '.join(sorted(modules))}): "
                              "name it with --head")
        super().attach(model, data)

    def personal_initial(self, initial):
        return {"model": super().personal_initial(initial), "head": clone(initial, self.head)}

    def phases(self):
        return [Phase(loss=balanced_softmax_loss), Phase(trainable=frozenset(self.head), loss=summed_heads_loss)]

    def client_job(self, server, store, client):
        import torch

        entry = store.get(client)
        start = {**clone(server.model, self.shared), **clone(entry["model"])}
        classes = server.model[self.head[0]].shape[0]
        counts = torch.bincount(self.data.y[self.data.of(client)], minlength=classes)
        return ClientJob(client, start, {"log_prior": counts.to(start[self.head[0]].dtype).log(),
                                         "personal_head": entry["head"]})

    def client_finish(self, server, store, result):
        generic, summed = result.states
        old = store.get(result.client)["head"]
        store.put(result.client, {"model": {k: generic[k] for k in self.personal},
                                  "head": {k: old[k] + summed[k] - generic[k] for k in self.head}})
        return self.message(result, model=generic)  # the server averages the generic model

    def personal_model(self, server, store, client):
        entry = store.get(client)
        return {**server.model, **entry["model"], **{k: server.model[k] + entry["head"][k] for k in self.head}}


def balanced_softmax_loss(model, state, x, y, ctx):
    """Cross-entropy of logits + log(class counts) (classes the client lacks get -inf: probability 0)."""
    import torch.nn.functional as F
    from torch.func import functional_call

    return F.cross_entropy(functional_call(model, state, (x,)) + ctx["log_prior"], y)


def summed_heads_loss(model, state, x, y, ctx):
    """Cross-entropy with the head's parameters plus the personal head's: g(z) + h_p(z) for a Linear head."""
    import torch.nn.functional as F
    from torch.func import functional_call

    head = ctx["personal_head"]
    return F.cross_entropy(functional_call(model, {**state, **{k: state[k] + v for k, v in head.items()}}, (x,)), y)
