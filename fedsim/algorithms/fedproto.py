"""FedProto: Tan, Long, Liu, Zhou, Lu, Jiang, Zhang, "FedProto: Federated Prototype Learning across Heterogeneous
Clients", AAAI 2022 (arXiv:2105.00243); code followed: PFLlib's `clientproto.py` and `serverproto.py`
(TsingZ0/PFLlib), which follow the authors' yuetan031/fedproto.

Differs from FedAvg in what is exchanged: no model weights at all. Each client keeps its whole model and trains
it on cross-entropy + λ·MSE(z, p_y) (`--proto-lam`), z the head's input (the base's output) and p_y the
global prototype of the sample's class (a class without one adds nothing). It then sends its class
prototypes, the mean z of each class it holds; the server's prototype of a class is the plain mean of the
prototypes the cohort sent for it, and replaces the last round's. Up: d floats and a label (int64) per class
the client holds; down: the same for each global prototype (none in round 1). A client is evaluated with its
own model's classifier (the paper's local model); the global model column stays at the initial model: no global
model exists.
Deviations: a client's prototypes are computed after its training, in eval mode, over all its training samples
(PFLlib averages the features seen during training, in train mode, over every epoch; its unused
`collect_protos` does as fedsim); PFLlib predicts by the nearest global prototype instead of the classifier.
The reported train loss includes the λ term (as PFLlib's). --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedas import features_and_logits
from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import head_params
from fedsim.core.hooks import Phase, ServerState
from fedsim.core.params import Params, option
from fedsim.core.state import clone

CHUNK = 4096  # samples per forward pass when computing prototypes
LABEL_BYTES = 8  # each prototype travels with its class label, an int64


@dataclass(frozen=True)
class FedProtoParams(Params):
    proto_lam: float = option(1.0, "weight λ of the features' distance to their class's global prototype "
                              "(PFLlib: 1; 0 trains each client alone)", low=0)


class FedProto(FedAvg):
    name = "fedproto"
    no_freeze_base = "trains its base"
    needs_head = True
    personalized = True
    plain_average = False  # no model is averaged: robust aggregation and DP do not apply
    Params = FedProtoParams

    def __init__(self, config, keys, num_clients: int = 1):
        self.head_modules = sorted({k.rpartition(".")[0] for k in head_params(keys, self.name)})
        super().__init__(config, keys, num_clients)

    def personal_keys(self):
        return set(self.keys.all)  # the whole model stays with the client

    def personal_initial(self, initial):
        return clone(initial)

    def init_server(self, initial):
        import torch

        self.model.eval()
        with torch.no_grad():
            feats, logits = features_and_logits(self.model, initial, self.data.x[:1], self.head_modules)
        prototypes = feats.new_zeros(logits.shape[1], feats.shape[1])
        has = torch.zeros(logits.shape[1], dtype=torch.bool, device=feats.device)
        return ServerState(model=clone(initial), extra={"prototypes": prototypes, "has": has})

    def phases(self):
        return [Phase(loss=self.prototype_loss)]

    def client_context(self, server, store, client):
        return {"prototypes": server.extra["prototypes"], "has": server.extra["has"]}

    def prototype_loss(self, model, state, x, y, ctx):
        import torch
        import torch.nn.functional as F

        feats, logits = features_and_logits(model, state, x, self.head_modules)
        target = torch.where(ctx["has"][y][:, None], ctx["prototypes"][y], feats.detach())
        return F.cross_entropy(logits, y) + self.params.proto_lam * F.mse_loss(feats, target)

    def client_finish(self, server, store, result):
        store.put(result.client, result.states[-1])
        prototypes, has = self.prototypes(result.states[-1], result.client, server.extra["has"].shape[0])
        return replace(result, extra={**result.extra, "prototypes": prototypes, "has": has})

    def aggregate(self, server, results):
        import torch

        counts = torch.stack([r.extra["has"] for r in results]).sum(0)
        sums = sum(r.extra["prototypes"] * r.extra["has"][:, None] for r in results)
        prototypes = sums / counts.clamp(min=1)[:, None]
        return replace(server, extra={**server.extra, "prototypes": prototypes, "has": counts > 0})

    def prototypes(self, state, client: int, classes: int):
        """(classes x d prototypes, which classes the client holds): its mean features per class, eval mode."""
        import torch
        import torch.nn.functional as F

        idx, sums, counts = self.data.of(client), 0, 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(idx), CHUNK):
                batch = idx[start : start + CHUNK]
                feats, _ = features_and_logits(self.model, state, self.data.x[batch], self.head_modules)
                onehot = F.one_hot(self.data.y[batch], classes).to(feats.dtype)
                sums, counts = sums + onehot.T @ feats, counts + onehot.sum(0)
        return sums / counts.clamp(min=1)[:, None], counts > 0

    def personal_model(self, server, store, client):
        return store.get(client)

    def prototype_bytes(self, has, prototypes) -> int:
        return int(has.sum()) * (prototypes.shape[1] * prototypes.element_size() + LABEL_BYTES)

    def bytes_up_of(self, server, result) -> int:
        """A client sends one prototype (and its label) per class it holds."""
        return self.prototype_bytes(result.extra["has"], result.extra["prototypes"])

    def bytes_up(self, server):
        """The most one client sends: a prototype for every class (the run counts each client's, bytes_up_of)."""
        return self.prototype_bytes(server.extra["has"].new_ones(server.extra["has"].shape), server.extra["prototypes"])

    def bytes_down(self, server):
        return self.prototype_bytes(server.extra["has"], server.extra["prototypes"])
