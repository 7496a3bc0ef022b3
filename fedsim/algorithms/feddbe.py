"""FedDBE: Zhang, Hua, Cao, Wang, Song, Xue, Ma, Guan, "Eliminating Domain Bias for Federated Learning in
Representation Space", NeurIPS 2023 (arXiv:2311.14975); code followed: the authors' TsingZ0/DBE (`clientDBE.py`,
`serverDBE.py`, `run_me.sh`) and PFLlib's `clientdbe.py`/`serverdbe.py`, the same code.

Differs from FedAvg (FedAvg+DBE) in two local changes. Each client keeps a personalized representation bias
memory (PRBM), a vector b_i of the head's input size starting at 0: its model predicts head(z + b_i), z the
base's output, and b_i trains with the model at the client's learning rate, never sent. The mean regularizer
(MR) adds κ·mean_d(½(z̄ − z_g)²) to the loss (`--dbe-mr`), z̄ the mean of the batch's representations (without
b_i) and z_g the global mean representation, the sample-weighted mean of the clients' mean representations,
computed once, in the initialization round, and then fixed. The server averages the model as FedAvg; the global
model is evaluated without any b_i, a client's personalized model with its own. For a Linear head
head(z + b) = W·z + (c + W·b), so the personalized model is the global model with its head's bias moved by W·b_i;
FedDBE therefore needs the head to be one Linear layer (the default head of the built-in models, as PFLlib's).

The initialization round is round 1: its cohort trains as FedAvg (no b_i, no MR) and also sends its mean
representation over its training samples, as a summed field (sample-weighted), so differential privacy and
robust aggregation cover it as they cover the model; every later message carries an empty mean. Down: the model,
and from round 2 the global mean (d floats) with it.
κ = 50 is the authors' FMNIST Dir(0.1) setting (`run_me.sh`: `-mo 1 -klw 50`); PFLlib's main.py defaults to
-klw 0, which turns MR off (`--dbe-mr 0`).
Deviations: MR regularizes each batch's own mean (the authors' `-mo 1`; the code's exponential average over
batches, -mo < 1, is not implemented); the initialization period is the first training round, its training
kept (the code trains every client one epoch, keeps only the means and restarts from the initial model), and it
covers that round's cohort rather than every client; a client's mean representation is taken after its
training, in eval mode, over all its training samples (the code: its running average over the epoch's
batches, in train mode); b_i trains with the client optimizer (with --momentum or --weight-decay, those apply
to it too). --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedas import features_and_logits
from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import head_params, linear_head
from fedsim.core.channel import MODEL, Message, summed
from fedsim.core.hooks import ClientJob, Phase, ServerState
from fedsim.core.params import Params, option
from fedsim.core.state import clone, num_bytes

BIAS = "dbe.bias"  # b_i in the client's training state: not a model entry, it trains beside the model (Phase.extra)
CHUNK = 4096  # samples per forward pass when computing a client's mean representation


@dataclass(frozen=True)
class FedDBEParams(Params):
    dbe_mr: float = option(50.0, "weight κ of the mean regularizer, the batch's mean representation pulled to the "
                           "global mean (the authors' FMNIST script: 50; PFLlib's default 0 turns it off)", low=0,
                           per_client=True)


class FedDBE(FedAvg):
    name = "feddbe"
    no_freeze_base = "trains its base"
    needs_head = True
    personalized = True
    Params = FedDBEParams
    sends = {**FedAvg.sends, "mean": summed("its mean representation (the head's input) over its training samples, "
                                            "in the initialization round only (empty later)")}

    def __init__(self, config, keys, population: int = 1):
        self.head_keys = sorted(head_params(keys, self.name))
        super().__init__(config, keys, population)

    def attach(self, model, data):
        self.head = linear_head(model, self.keys, self.name, "its representation bias is folded into the head's bias",
                                bias=True)
        super().attach(model, data)

    def _head_tensors(self):
        return f"{self.head}.weight", f"{self.head}.bias"

    def personal_initial(self, initial):
        weight, _ = self._head_tensors()
        return {"model": super().personal_initial(initial), "bias": initial[weight].new_zeros(initial[weight].shape[1])}

    def init_server(self, initial):
        weight, _ = self._head_tensors()
        mean = initial[weight].new_zeros(initial[weight].shape[1])
        return ServerState(model=clone(initial), extra={"mean": mean, "has_mean": mean.new_zeros(())})

    def phases(self):
        return [Phase(loss=self.dbe_loss, extra=frozenset({BIAS}))]

    def client_job(self, server, store, client):
        entry = store.get(client)
        start = {**clone(server.model, self.shared), **clone(entry["model"]), BIAS: entry["bias"].clone()}
        kappa = server.extra["mean"].new_tensor(self.params.dbe_mr)
        return ClientJob(client, start, {"global_mean": server.extra["mean"], "has_mean": server.extra["has_mean"],
                                         "kappa": kappa})

    def dbe_loss(self, model, state, x, y, ctx):
        """Cross-entropy of head(z + b) (b only once the global mean exists) + κ·MR; its value includes κ·MR,
        as the code's."""
        import torch.nn.functional as F

        weight, bias = self._head_tensors()
        has = ctx["has_mean"]
        b = state[BIAS] * has
        model_state = {k: v for k, v in state.items() if k != BIAS}
        model_state[bias] = state[bias] + state[weight] @ b
        feats, logits = features_and_logits(model, model_state, x, [self.head])
        mr = 0.5 * ((feats.mean(0) - ctx["global_mean"]) ** 2).mean()
        return F.cross_entropy(logits, y) + ctx["kappa"] * has * mr

    def client_finish(self, server, store, result):
        state = result.states[-1]
        store.put(result.client, {"model": {k: state[k] for k in self.personal}, "bias": state[BIAS]})
        mean = state[BIAS].new_zeros(0) if bool(server.extra["has_mean"]) else self.mean_representation(state,
                                                                                                      result.client)
        model = {k: state[k] for k in self.sent}
        return Message(result.client, result.num_samples, {MODEL: model, "mean": {"mean": mean}}, result.loss,
                       result.round)

    def server_update(self, server, aggregate):
        server = super().server_update(server, aggregate)
        if bool(server.extra["has_mean"]):
            return server
        return replace(server, extra={"mean": aggregate.means["mean"]["mean"],
                                      "has_mean": server.extra["has_mean"].new_ones(())})

    def mean_representation(self, state, client: int):
        """The mean of the head's input over the client's training samples (eval mode)."""
        import torch

        model_state = {k: v for k, v in state.items() if k != BIAS}
        idx, total = self.data.of(client), 0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(idx), CHUNK):
                feats, _ = features_and_logits(self.model, model_state, self.data.x[idx[start : start + CHUNK]],
                                               [self.head])
                total = total + feats.sum(0)
        return total / max(len(idx), 1)

    def personal_model(self, server, store, client):
        """The global model (with the client's --bn local part) whose head's bias is moved by W·b_i."""
        entry = store.get(client)
        weight, bias = self._head_tensors()
        own = {**server.model, **entry["model"]}
        return {**own, bias: own[bias] + own[weight] @ entry["bias"]}

    def bytes_down(self, server):
        """The model, and the global mean once it exists."""
        mean = server.extra["mean"]
        return super().bytes_down(server) + (num_bytes({"m": mean}, ["m"]) if bool(server.extra["has_mean"]) else 0)
