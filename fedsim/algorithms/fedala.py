"""FedALA: Zhang, Hua, Wang, Shen, Guan, Ma, "FedALA: Adaptive Local Aggregation for Personalized Federated
Learning", AAAI 2023 (arXiv:2212.01197); code followed: PFLlib's `clientala.py` and `utils/ALA.py`
(TsingZ0/PFLlib), the authors' own.

Differs from FedAvg in how a client starts its round: not from the received global model θ but from an adaptive
local aggregation (ALA) of θ with its own last model θ_i. Below the top the global model is taken; on the top
`--ala-top` parameter tensors (in the model's order; 2 = the last Linear's weight and bias) the start is
θ_i + (θ − θ_i) ⊙ W with element-wise weights W in [0, 1], learned per client by projected SGD
W ← clip(W − η·∇_top f ⊙ (θ − θ_i), 0, 1) (`--ala-eta`) on a contiguous slice of `--ala-percent` % of its
training samples (at a keyed random offset) in --batch-size batches without the last partial one. A client's
first ALA trains W until the standard deviation of the last 10 epoch losses is below 0.1, later ones for one
epoch; W (starting at 1) is kept between rounds. ALA is skipped while the client's model equals the global one
(its first round). Training and the server are FedAvg's; the client keeps its trained model, which is what it
is evaluated with.
Deviations: the first ALA stops after at most 50 epochs (the code has no bound) and is skipped where the slice
holds no whole batch (the code fails); buffers (BatchNorm statistics) come from the global model as FedAvg's
(PFLlib keeps the client's); PFLlib evaluates each client's ALA start of the next round rather than its trained
model: `--ala-eval start` does so (ALA is learned for the evaluation, for every client as PFLlib, without keeping
its weights; the next round learns the same again).
Measured (personalized accuracy at round 30, digits Dir(0.1), 20 clients, mlp, batch 10, lr 0.05, seeds 0-2), by
    fedsim sweep --algo fedala --ala-eval trained,start --dataset digits --clients 20 --dirichlet 0.1 \
        --client-test-fraction 0.25 --model mlp --batch-size 10 --lr 0.05 --rounds 30 --seed 0-2
trained 90.0 ± 3.6, start 93.5 ± 3.6, start − trained +1.6 / +4.2 / +4.3 per seed.
--freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core import rng
from fedsim.core.hooks import ClientJob
from fedsim.core.params import Params, option
from fedsim.core.state import clone
from fedsim.errors import FedsimError

THRESHOLD, NUM_PRE_LOSS = 0.1, 10  # the code's: the first ALA stops once std(last 10 epoch losses) < 0.1
MAX_FIRST_EPOCHS = 50
ALA_DRAW = 1  # keys the slice's offset apart from the executor's batch order (same purpose, seed, round, client)


@dataclass(frozen=True)
class FedALAParams(Params):
    ala_eta: float = option(1.0, "step size η of the aggregation weights (the paper: 1)", low=0, low_open=True)
    ala_percent: int = option(80, "percent s of a client's training samples ALA learns on (the paper: 80)",
                              low=1, high=100)
    ala_top: int = option(2, "the model's last P parameter tensors ALA aggregates (PFLlib's layer_idx: 2, the "
                          "last Linear layer); the rest is the global model's", low=1)
    ala_eval: str = option("trained", "the model a client is evaluated with: trained (its model after local training) "
                           "or start (the start ALA gives it for the next round, PFLlib's)",
                           choices=("trained", "start"))


class FedALA(FedAvg):
    name = "fedala"
    no_freeze_base = "trains the whole model"
    personalized = True
    Params = FedALAParams

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        if self.params.ala_top > len(keys.params):
            raise FedsimError(f"--ala-top {self.params.ala_top} is more than the model's {len(keys.params)} "
                              "parameter tensors")
        self.top = keys.params[-self.params.ala_top :]

    def personal_initial(self, initial):
        import torch

        return {"model": clone(initial), "weights": {k: torch.ones_like(initial[k]) for k in self.top},
                "learned": False}

    def client_job(self, server, store, client):
        start, entry = self.ala_start(server, store.get(client), client)
        store.put(client, entry)
        return ClientJob(client, start, {})

    def ala_start(self, server, entry, client: int):
        """(The client's start of the next round, its entry with the ALA weights learned for it)."""
        import torch

        global_model = server.model
        start = {**clone(global_model), **clone(entry["model"], self.personal)}
        first = self.keys.params[0]
        if not torch.equal(entry["model"][first], global_model[first]):  # the code's test: not in its first round
            weights, learned = self.learn_weights(entry, global_model, client, server.round + 1)
            entry = {**entry, "weights": weights, "learned": learned}
            start.update(merged(entry["model"], global_model, weights))
        return start, entry

    def client_finish(self, server, store, result):
        store.put(result.client, {**store.get(result.client), "model": result.states[-1]})
        return self.message(result)

    def personal_model(self, server, store, client):
        """The client's trained model; under --ala-eval start, the start ALA gives it for the next round (learned
        again when that round comes: the same numbers, since the slice is keyed by the round)."""
        if self.params.ala_eval == "trained":
            return store.get(client)["model"]
        return self.ala_start(server, store.get(client), client)[0]

    def learn_weights(self, entry, global_model, client: int, round: int):
        """ALA's weights W for the top tensors, learned on a slice of the client's data; (W, whether learned)."""
        import numpy as np
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        idx, batch_size = self.data.of(client), self.config.batch_size
        num = int(self.params.ala_percent / 100 * len(idx))
        offset = int(rng.keyed_rng(rng.BATCHES, self.config.seed, round, client, ALA_DRAW).integers(len(idx) - num + 1))
        batches = [idx[offset + s : offset + s + batch_size] for s in range(0, num - batch_size + 1, batch_size)]
        weights, learned = entry["weights"], entry["learned"]
        if not batches:
            return weights, learned
        local = entry["model"]
        gap = {k: global_model[k] - local[k] for k in self.top}
        fixed = {k: v.clone() for k, v in global_model.items() if k not in gap}  # BN buffers update in train mode
        weights, losses = dict(weights), []
        self.model.train()
        for _ in range(1 if learned else MAX_FIRST_EPOCHS):
            for batch in batches:
                top = {k: v.requires_grad_() for k, v in merged(local, global_model, weights).items()}
                loss = F.cross_entropy(functional_call(self.model, {**fixed, **top}, (self.data.x[batch],)),
                                       self.data.y[batch])
                grads = torch.autograd.grad(loss, list(top.values()))
                weights = {k: (weights[k] - self.params.ala_eta * g * gap[k]).clamp(0, 1)
                           for k, g in zip(top, grads, strict=True)}
            losses.append(float(loss.detach()))
            if len(losses) > NUM_PRE_LOSS and np.std(losses[-NUM_PRE_LOSS:]) < THRESHOLD:
                break
        return weights, True


def merged(local, global_model, weights):
    """θ_i + (θ − θ_i) ⊙ W on the top tensors."""
    return {k: local[k] + (global_model[k] - local[k]) * w for k, w in weights.items()}
