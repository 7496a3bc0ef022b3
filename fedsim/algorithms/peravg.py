"""Per-FedAvg: Fallah, Mokhtari, Ozdaglar, "Personalized Federated Learning with Theoretical Guarantees: A
Model-Agnostic Meta-Learning Approach", NeurIPS 2020 (arXiv:2002.07948); code followed: PFLlib's
`clientperavg.py` (TsingZ0/PFLlib).

Differs from FedAvg in the local step and in evaluation. The first-order variant (Per-FedAvg (FO)): each local
step takes a batch D, D' and moves w by the gradient at the one-step-adapted model,
    w ← w − β·∇f(w − α·∇f(w; D); D'),
the inner gradient held constant (no Hessian term; the HF variant's Hessian-vector product is not implemented).
The server averages as FedAvg. A client's personalized model is one SGD step of size α on one batch of its
training data from the global model, taken before each evaluation and not kept.
As PFLlib: α = β = --lr (the outer step is the client optimizer's). Deviations: PFLlib draws 2·B samples a step
(D and D' of B each); fedsim splits each --batch-size batch in two halves (D the first, D' the rest; a batch of
one sample serves as both), so --batch-size 20 gives PFLlib's B = 10. PFLlib's server calls each client's
`train()` twice a round, so its clients take two passes of --local-epochs over their data per round (fedsim: one;
--local-epochs 2 gives PFLlib's work). Its personalization step takes the first batch of B samples (10 under its
defaults), fedsim's one batch of --batch-size (20 for PFLlib's B = 10). With --lr-decay the inner step stays at
--lr.
"""

from __future__ import annotations

from dataclasses import replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.hooks import Phase


def batch_gradient(model, state, params, x, y):
    """(∇ of the batch's cross-entropy at `params`, its value), the rest of the model from `state`; by torch.func, so
    that it runs inside the vmap executor's vmapped loss too. BatchNorm buffers in `state` update as in a forward
    pass in train mode (they go in as inputs: a transform may not mutate a captured tensor)."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad_and_value

    def loss(p, rest):
        return F.cross_entropy(functional_call(model, {**rest, **p}, (x,)), y)

    rest = {k: v for k, v in state.items() if k not in params}
    return grad_and_value(loss)({k: v.detach() for k, v in params.items()}, rest)


def first_order_maml_loss(alpha: float):
    """The loss of one Per-FedAvg (FO) step: cross-entropy on D' at w − α·∇f(w; D), the inner gradient detached,
    so that its gradient in w is ∇f(w − α·∇f(w; D); D')."""
    import torch.nn.functional as F
    from torch.func import functional_call

    def loss(model, state, x, y, ctx):
        names = [k for k, _ in model.named_parameters()]
        half = max(len(y) // 2, 1)
        outer_x, outer_y = (x[half:], y[half:]) if len(y) > 1 else (x, y)
        g, _ = batch_gradient(model, state, {k: state[k] for k in names}, x[:half], y[:half])
        adapted = {**state, **{k: state[k] - alpha * g[k].detach() for k in names}}
        return F.cross_entropy(functional_call(model, adapted, (outer_x,)), outer_y)

    return loss


class PerFedAvg(FedAvg):
    name = "peravg"
    phases_read = frozenset({"lr"})  # its local loss scales by --lr

    def phases(self):
        return [Phase(loss=first_order_maml_loss(self.config.lr))]

    def personalization_phases(self):
        return [Phase()]  # one plain SGD step of size α = the round's --lr

    def personalization_job(self, server, store, job):
        return replace(job, steps=1)
