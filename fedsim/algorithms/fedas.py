"""FedAS: Yang, Huang, Ye, "FedAS: Bridging Inconsistency in Personalized Federated Learning", CVPR 2024
(pp. 11986-11995); code: xiyuanyang45/FedAS, built on PFLlib (`clientas.py`, `serveras.py`).

Differs from FedPer (head personal, base shared) in two places: before local training the received global
base is aligned to the client's data (parameter alignment), and the server weighs clients by the trace of
their Fisher information instead of their sample counts (client synchronization).

What this file follows from the code, per sampled client and round:
1. prototypes: per-class means of the head's input features, computed over the client's training data with
   its current local model (its base from the last time it trained; never sampled: the initial model);
2. alignment: `align_epochs` (1) epoch of SGD with step 0.01 on the global base only, minimising
   Σ_c MSE(base(x_c), prototype_c) over the classes c of each batch; the client's own head is kept;
3. local training of the whole model (cross-entropy) from (aligned base, own head);
4. FIM_k = Σ_batches Σ_params ‖∇ mean-batch NLL‖² at the trained model (eval mode, every parameter);
5. server: the shared part is Σ_k FIM_k·w_k / Σ_j FIM_j over the cohort (buffers weighted the same way).
A client keeps its whole trained model, which is also what it is evaluated with (PFLlib evaluates each
client's own model before sending the new global one).
Deviations: prototypes are computed in eval mode over every sample (the code: batches of 16 with
drop_last, in whatever mode the model was left, eval after the first round); alignment uses --batch-size and
the client optimizer with the step 0.01 obtained by scaling the alignment loss by 0.01/--lr (exact for plain
SGD without --lr-decay; with decay the alignment step decays too); the FIM pass takes the client's samples
in stored order in --batch-size batches, the last one partial (the code: shuffled, drop_last); FIM is not
computed for clients outside the cohort (the code does, for logging only); a cohort whose FIM traces sum
to 0 falls back to sample weights. The train loss reported for alignment steps is the batch's
cross-entropy (the alignment MSE only drives the gradient). The official repository's variant mutates the
shared global model while aligning clients one after another; PFLlib (and fedsim) align a copy per client.
--freeze-base trains only the head and skips the alignment (which would train the base).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms import classwise
from fedsim.algorithms.fedper import FedPer
from fedsim.core.channel import MODEL, per_client, summed
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone


@dataclass(frozen=True)
class FedASParams(Params):
    align_lr: float = option(0.01, "parameter-alignment step size (the authors' code: 0.01)", low=0, low_open=True)
    align_epochs: int = option(1, "parameter-alignment epochs per round (the code: 1; 0 skips the alignment)",
                               low=0)


def features_and_logits(model, state, x, head_modules):
    """The head's input (the base's output) and the logits, from one forward through `functional_call`."""
    from torch.func import functional_call

    seen = []
    hooks = [model.get_submodule(name).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
             for name in head_modules]
    try:
        logits = functional_call(model, state, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return seen[0].flatten(1), logits


class FedAS(FedPer):
    name = "fedas"
    phases_read = frozenset({"lr"})  # its local loss scales by --lr
    vmap_ok = False  # prototypes and the Fisher trace are per-client Python work
    Params = FedASParams
    sends = {MODEL: summed("the trained model's shared part (the base)", weight="fisher", centered=True),
             "fisher": per_client("the trace of the client's Fisher information, its weight in the mean")}

    def __init__(self, config, keys, population: int = 1):
        super().__init__(config, keys, population)
        self.head_modules = sorted({k.rpartition(".")[0] for k in self.head_params})

    def personal_initial(self, initial):
        return clone(initial)  # a client's whole local model: its head, and its base for the prototypes

    def phases(self):
        if self.config.freeze_base:
            return [Phase(trainable=self.head_params)]
        align = Phase(trainable=self.base_params, epochs=self.params.align_epochs, loss=self.alignment_loss)
        return ([align] if self.params.align_epochs else []) + [Phase()]

    def client_context(self, server, store, client):
        return {} if self.config.freeze_base else {"prototypes": self.prototypes(store.get(client), client)}

    def client_finish(self, server, store, result):
        store.put(result.client, result.states[-1])
        return self.message(result, fisher=self.fisher_trace(result.states[-1], result.client))

    # --- the client-side computations (torch loads here: the algorithm's declarations stay light) ---------
    def prototypes(self, state, client: int):
        """(classes, features): per-class mean features of the client's data under `state` (eval mode)."""
        return classwise.class_means(self.model, self.data, client, lambda x: features_and_logits(
            self.model, state, x, self.head_modules))[0]

    def alignment_loss(self, model, state, x, y, ctx):
        """Σ over the batch's classes of MSE(features of the class's samples, its prototype), scaled to the
        alignment step; its reported value is the batch's cross-entropy."""
        import torch
        import torch.nn.functional as F

        feats, logits = features_and_logits(model, state, x, self.head_modules)
        per_sample = ((feats - ctx["prototypes"][y]) ** 2).mean(1)
        mse = (per_sample / torch.bincount(y)[y]).sum() * (self.params.align_lr / self.config.lr)
        return F.cross_entropy(logits, y).detach() + mse - mse.detach()

    def fisher_trace(self, state, client: int) -> float:
        """Σ over batches of the squared norm of the batch-mean NLL gradient (every parameter, eval mode)."""
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        idx, total = self.data.of(client), 0.0
        params = [k for k in self.keys.params if k in state]
        self.model.eval()
        for start in range(0, len(idx), self.config.batch_size):
            batch = idx[start : start + self.config.batch_size]
            p = {k: state[k].detach().requires_grad_() for k in params}
            logits = functional_call(self.model, {**state, **p}, (self.data.x[batch],))
            grads = torch.autograd.grad(F.cross_entropy(logits, self.data.y[batch]), list(p.values()))
            total += float(sum((g**2).sum() for g in grads))
        return total
