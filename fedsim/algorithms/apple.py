"""APPLE: Luo, Wu, "Adapt to Adaptation: Learning Personalization for Cross-Silo Federated Learning", IJCAI 2022
(arXiv:2110.08394); code followed: PFLlib's `clientapple.py` and `serverapple.py` (TsingZ0/PFLlib).

Differs from FedAvg in that there is no global model: each client i has a core model c_i, which it shares, and a
directed relationship (DR) vector p_i over the N clients with data (starting at 1/N), and uses the personalized
model ŵ_i = Σ_j p_ij·c_j built from every client's core. Each local step on a batch, with g the gradient of the
batch's cross-entropy at ŵ_i,
    c_i ← c_i − (N·lr)·p_ii·g                                   (PFLlib's learning rate × num_clients)
    p_ij ← p_ij − η₂·(s_j + λ(r)·μ·(p_ij − p0_j)),  s_j = mean over parameter tensors t of mean(g_t ⊙ c_j,t),
p0_j = n_j/n the clients' sample shares (`--apple-dr-lr` η₂, `--apple-mu` μ), and λ(r) anneals from 1 to 0 by a
half cosine over the first L rounds (`--apple-rounds`), 0 after. The client then sends its core, which the server
keeps stacked with the others', one row per client (a client that has not trained yet holds the initial model),
and each sampled client reads the other cores from that stack by index (no copy per client); its DR vector and
its BN statistics never travel. The personalized model a client is evaluated with is Σ_j p_ij·c_j over the cores
as they are after the round; the global model columns stay at the initial model. Up: the core's parameters; down:
the other N − 1 cores'.
The server needs each client's own core, not a mean: the core is a per-client field, so differential privacy and
robust aggregation refuse APPLE by construction.
Defaults are PFLlib's main.py: η₂ = 0 and μ = 0, which keep p_i at 1/N (give --apple-dr-lr to learn it).
Deviations from PFLlib: a client sends its trained core (the paper's c_i; PFLlib uploads its personalized model
ŵ_i as its next core, and, because later clients of a round read the same core objects, they see the cores
the earlier ones trained that round); s_i uses c_i before that step's update (PFLlib: after); only the round's
cohort trains (PFLlib trains every client every round); λ follows the round number, and L = 0 means --rounds
(PFLlib's -L 1: a run extended with --resume then anneals over its new length); the core and p_i take the client
optimizer's step (with --momentum or --weight-decay those apply to them too). --freeze-base and --bn local are
refused.
`--apple-upload personalized` sends ŵ_i (over the round's cores, its own as trained) as PFLlib does. Its size
(personalized accuracy at round 30, digits Dir(0.1), 20 clients, mlp, batch 10, lr 0.05, seeds 0-2, by
    fedsim sweep --algo apple --apple-upload core,personalized --dataset digits --clients 20 --dirichlet 0.1 \
        --client-test-fraction 0.25 --model mlp --batch-size 10 --lr 0.05 --rounds 30 --seed 0-2
): core 76.4 / 90.7 / 83.4, personalized 31.7 / 9.2 / 31.2, −44.7 / −81.5 / −52.2 per seed: with p_i at 1/N
(η₂ = 0, PFLlib's default) the personalized model moves lr/N a step and PFLlib's upload keeps that pace, where the
paper's core moves lr a step. That pace also cuts the other way: with PFLlib's N·lr core step and many local steps
a round, the paper's upload sums a round of steps taken at one point, ŵ_i barely moving under them; on
Fashion-MNIST Dir(0.1) (fedavgcnn, 225 steps a round, lr 0.005) the core upload did not learn: train loss 2.1,
0.9, 4.0, 2.1, 2.0, personalized accuracy from 19.7% down to 10.5% in 5 rounds (README's PFLlib column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.peravg import batch_gradient
from fedsim.core.channel import Message, per_client
from fedsim.core.hooks import ClientJob, Phase
from fedsim.core.params import Params, option
from fedsim.core.state import num_bytes

DR = "apple.p"  # p_i in the client's training state: not a model entry, it trains beside the core (Phase.extra)
CORE = "core"


@dataclass(frozen=True)
class APPLEParams(Params):
    apple_dr_lr: float = option(0.0, "η₂, the step of each client's directed relationship vector (PFLlib's -dlr: 0, "
                                "which keeps it at 1/N)", low=0, per_client=True)
    apple_mu: float = option(0.0, "μ: pull of the relationship vector toward the clients' sample shares, annealed "
                             "by λ (PFLlib: 0)", low=0, per_client=True)
    apple_rounds: int = option(0, "L: rounds over which λ anneals from 1 to 0 (0: --rounds, PFLlib's -L 1)", low=0,
                               per_client=True)
    apple_upload: str = option("core", "what a client sends as its core: core (the paper's: its trained core) or "
                               "personalized (PFLlib's: its personalized model Σ_j p_ij·c_j)",
                               choices=("core", "personalized"))


class APPLE(FedAvg):
    name = "apple"
    no_freeze_base = "trains the whole core"
    no_bn_local = "mixes every parameter through the cores (its BN statistics stay local already)"
    personalized = True
    Params = APPLEParams
    sends = {CORE: per_client("its trained core model (parameters), which the server keeps for the others")}

    def personal_keys(self):
        return set(self.keys.all)  # nothing is averaged

    def attach(self, model, data):
        import numpy as np

        super().attach(model, data)
        sizes = np.diff(np.asarray(data.offsets))
        self.clients = len(sizes)
        self.holders = int((sizes > 0).sum())  # N: the clients with data
        self.shares = sizes / max(sizes.sum(), 1)  # p0

    def personal_initial(self, initial):
        import torch

        like = initial[self.keys.params[0]]
        p = torch.as_tensor((self.shares > 0) / self.holders, dtype=like.dtype, device=like.device)
        return {"buffers": {k: initial[k].clone() for k in self.keys.buffers}, "p": p}

    def init_server(self, initial):
        server = super().init_server(initial)
        server.extra = {"cores": {k: initial[k].expand(self.clients, *initial[k].shape).clone()
                                  for k in self.keys.params}}
        return server

    def phases(self):
        return [Phase(loss=self.apple_loss, extra=frozenset({DR}))]

    def lam(self, round: int) -> float:
        """λ in round `round` (1-based): 1, then (cos((r − 2)π/L) + 1)/2 while r − 2 < L, then 0 (PFLlib's
        schedule, set after each round for the next)."""
        length = self.params.apple_rounds or self.config.rounds
        if round == 1:
            return 1.0
        return (math.cos((round - 2) * math.pi / length) + 1) / 2 if round - 2 < length else 0.0

    def client_job(self, server, store, client):
        import torch

        entry, cores, round = store.get(client), server.extra["cores"], server.round + 1
        start = {**{k: v[client] for k, v in cores.items()}, **{k: v.clone() for k, v in entry["buffers"].items()},
                 DR: entry["p"].clone()}
        p = entry["p"]
        me = torch.zeros_like(p)
        me[client] = 1.0
        lr = self.config.lr * self.config.lr_decay ** (round - 1)
        return ClientJob(client, start, {"cores": cores, "me": me, "p0": p.new_tensor(self.shares),
                                         "dr_scale": p.new_tensor(self.params.apple_dr_lr / lr),
                                         "prox": p.new_tensor(self.lam(round) * self.params.apple_mu)})

    def apple_loss(self, model, state, x, y, ctx):
        """A loss whose gradient in the core is N·p_ii·g and in p_i is (η₂/lr)·(s + λμ·(p_i − p0)), so that the
        client optimizer's step of lr is APPLE's; its value is the batch's cross-entropy at ŵ_i."""
        names, cores, me = self.keys.params, ctx["cores"], ctx["me"]
        p = state[DR]
        own = (p * me).sum()
        others = (p - own * me).detach()
        mixed = {k: others @ cores[k].flatten(1) + own.detach() * state[k].detach().flatten() for k in names}
        g, ce = batch_gradient(model, {k: v for k, v in state.items() if k != DR},
                               {k: mixed[k].view_as(state[k]) for k in names}, x, y)
        flat = {k: g[k].flatten().detach() for k in names}
        s = sum(cores[k].flatten(1) @ flat[k] / flat[k].numel() for k in names) / len(names)
        s_own = sum((state[k].detach().flatten() * flat[k]).mean() for k in names) / len(names)
        s = s + me * (s_own - (s * me).sum())
        core = self.holders * own.detach() * sum((state[k].flatten() * flat[k]).sum() for k in names)
        dr = (p * s).sum() + 0.5 * ctx["prox"] * ((p - ctx["p0"]) ** 2).sum()
        surrogate = core + ctx["dr_scale"] * dr
        return ce.detach() + surrogate - surrogate.detach()

    def client_finish(self, server, store, result):
        state, i = result.states[-1], result.client
        p = state[DR]
        store.put(i, {"buffers": {k: state[k] for k in self.keys.buffers}, "p": p})
        core = {k: state[k] for k in self.keys.params}
        if self.params.apple_upload == "personalized":  # ŵ_i over the round's cores, its own as trained
            cores = server.extra["cores"]
            core = {k: (p @ cores[k].flatten(1) + p[i] * (v - cores[k][i]).flatten()).view_as(v)
                    for k, v in core.items()}
        return Message(i, result.num_samples, {CORE: core}, result.loss, result.round)

    def server_update(self, server, aggregate):
        import torch

        ids = torch.tensor(aggregate.clients, device=next(iter(server.model.values())).device)
        sent = aggregate.per_client[CORE]
        cores = {k: v.index_copy(0, ids, torch.stack([c[k] for c in sent])) for k, v in server.extra["cores"].items()}
        return replace(server, extra={**server.extra, "cores": cores})

    def personal_model(self, server, store, client):
        entry, cores = store.get(client), server.extra["cores"]
        return {**server.model, **entry["buffers"],
                **{k: (entry["p"] @ v.flatten(1)).view_as(v[0]) for k, v in cores.items()}}

    def bytes_down(self, server):
        """The other clients' cores (parameters)."""
        return (self.holders - 1) * num_bytes(server.model, self.keys.params)
