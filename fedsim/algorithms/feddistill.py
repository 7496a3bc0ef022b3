"""FedDistill (federated distillation): Jeong, Oh, Kim, Park, Bennis, Kim, "Communication-Efficient On-Device
Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data", NeurIPS 2018 workshop
(arXiv:1811.11479); Seo, Park, Oh, Bennis, Kim, "Federated Knowledge Distillation", 2020 (arXiv:2011.02367);
code followed: PFLlib's `clientfd.py` and `serverfd.py` (TsingZ0/PFLlib, `FD`; `clientdistill.py` before 2025-03).

Differs from FedAvg in what is exchanged: per-class mean logits, no model weights. Each client keeps its whole
model and trains it on cross-entropy + λ·D (`--distill-lam`), D a distillation term between the sample's logits o
and the global logit vector t of its class. `--distill-target` picks D as one of PFLlib's versions did:
    softmax  −Σ_c softmax(t)_c·log softmax(o)_c, the mean over the batch (PFLlib 2024-04 to 2025-11, when its
             benchmark page was last changed; the default);
    logits   the same with t itself as the soft target, no softmax (PFLlib's latest, d832e76, 2025-11): unbounded
             below, it diverged here in round 2 with PFLlib's benchmark setting (MNIST, Dir(0.1), 20 clients,
             fedavgcnn, batch 10, lr 0.005; last finite loss −2e34);
    mse      the mean of (t − o)² over the batch and classes (PFLlib 2023-03 to 2024-04).
A sample whose class has no global logits takes its own logits (detached) as t, as PFLlib (which leaves such rows
of its target as the output): no gradient under softmax and mse, one under logits. Before any global logits exist
(round 1) D is left out, as PFLlib's `global_logits is None`. After training the client sends its mean logits per
class it holds; the server's logit vector of a class is the plain mean of those the cohort sent, and replaces the
last round's (a class no client of the round holds has none). The channel carries that mean as FedProto's
prototypes, two uniform means (of l_i·[i holds c] and of [i holds c]), so DP and the robust reducers cover the
logits like any summed field. Up: classes floats and a label (int64) per class the client holds; down: the same per
global logit vector (none in round 1). A client is evaluated with its own model; the global model column stays at
the initial model: no global model exists.
Deviations: a client's mean logits are computed after its training, in eval mode, over all its training samples
(PFLlib averages the logits of every training step's batch, in train mode, before each step, over all epochs).
The reported train loss includes the λ term (as PFLlib's). --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms import classwise
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option

TARGETS = ("softmax", "logits", "mse")  # the distillation term of PFLlib's versions: see the module docstring


@dataclass(frozen=True)
class FedDistillParams(Params):
    distill_lam: float = option(1.0, "weight λ of the distillation term toward the global logits of the sample's "
                                "class (PFLlib's lamda: 1; 0 trains each client alone)", low=0, per_client=True)
    distill_target: str = option("softmax", "the distillation term: softmax (cross-entropy to the softmax of the "
                                 "global logits, PFLlib 2024-2025), logits (to the raw logits, PFLlib's latest: it "
                                 "diverges), mse (PFLlib 2023)", choices=TARGETS)


class FedDistill(classwise.ClasswiseExchange):
    name = "feddistill"
    no_freeze_base = "trains its whole model"
    Params = FedDistillParams
    vector = "logits"
    # the server's logits of a class are Σ l_i·[holds] / Σ [holds] over the cohort: two uniform means
    sends = classwise.sends("logits", "mean logits")

    def outputs(self, state, x):
        """(the logits, the logits) of x: the vectors sent are the logits themselves."""
        from torch.func import functional_call

        logits = functional_call(self.model, state, (x,))
        return logits, logits

    def phases(self):
        return [Phase(loss=distill_loss(self.params.distill_target))]

    def client_context(self, server, store, client):
        has = server.extra["has"]
        # λ, or 0 before any global logits exist (PFLlib's first round)
        lam = server.extra["logits"].new_tensor(self.params.distill_lam if bool(has.any()) else 0.0)
        return {"logits": server.extra["logits"], "has": has, "distill_lam": lam}


def distill_loss(target: str):
    """Cross-entropy + λ·D as PFLlib's versions compute it. A row's target t is the global logit vector of its
    class, or, where the class has none, the row's own logits (detached): D is then 0 for softmax and mse (its
    gradient vanishes) but not for logits. `target`: softmax, D = mean over rows of −Σ_c softmax(t)_c·log
    softmax(o)_c; logits, the same with t itself in place of softmax(t); mse, D = the mean of (t − o)² over rows
    and classes."""

    def loss(model, state, x, y, ctx):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        logits = functional_call(model, state, (x,))
        t = torch.where(ctx["has"][y][:, None], ctx["logits"][y], logits.detach())
        if target == "mse":
            distill = F.mse_loss(logits, t)
        else:
            distill = -((t.softmax(-1) if target == "softmax" else t) * F.log_softmax(logits, -1)).sum(-1).mean()
        return F.cross_entropy(logits, y) + ctx["distill_lam"] * distill

    return loss
