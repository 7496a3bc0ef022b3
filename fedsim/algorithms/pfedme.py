"""pFedMe: T. Dinh, Tran, Nguyen, "Personalized Federated Learning with Moreau Envelopes", NeurIPS 2020
(arXiv:2006.08848); code followed: PFLlib's `clientpFedMe.py` and `serverpFedMe.py` (TsingZ0/PFLlib), which
follow the authors' CharlieDinh/pFedMe.

Differs from FedAvg in the local step and the server mix. Each local step on a batch D first solves the
personal problem θ ≈ argmin_θ f(θ; D) + (λ/2)·‖θ − w‖² by K steps θ ← θ − η_p·(∇f(θ; D) + λ·(θ − w))
(`--inner-steps`, `--inner-lr`, `--moreau-lam`), then moves the local model w ← w − η·λ·(w − θ) (η = --lr, the
client optimizer's step on the gradient λ·(w − θ)). The server mixes w ← (1 − β)·w + β·mean of the clients' w
(`--server-lr` β; buffers are averaged as FedAvg). A client keeps its local w; its personalized model is θ
solved from it before each evaluation (K steps of that proximal SGD, not kept). With K = 1, λ·η_p = 1 and
β = 1 each local step is FedAvg's SGD step.
Deviations from the code: θ starts from w at every batch (PFLlib warm-starts it from the previous batch's θ,
from the received global model at the round's start; the paper leaves the solver's start open): `--pfedme-theta
warm` does as PFLlib (θ then trains beside w in the client's state, moved to each batch's last inner iterate by
one client-optimizer step: exact for plain SGD, without --momentum or --weight-decay). PFLlib's extra 0.001·θ term
in the inner step is left out. The personalized θ for evaluation takes its K steps on K batches of the client's
training data from its last w, its step η_p from scaling that objective by η_p/--lr (exact for SGD with or
without momentum, without --lr-decay or --weight-decay); PFLlib's "personalized" accuracy is in fact the global
model's (its `personalized_params` are the model's own parameters, which `send_models` has just set to the
global model when `evaluate_personalized` runs): `--pfedme-eval global` reports that. Measured (personalized
accuracy at round 30, digits Dir(0.1), 20 clients, mlp, batch 10, lr 0.05, seeds 0-2), by
    fedsim sweep --algo pfedme --pfedme-theta fresh,warm --dataset digits --clients 20 --dirichlet 0.1 \
        --client-test-fraction 0.25 --model mlp --batch-size 10 --lr 0.05 --rounds 30 --seed 0-2
(and --pfedme-eval theta,global in its place): fresh 91.6 ± 1.8, warm 92.0 ± 1.9, warm − fresh +0.3 / +0.4 / +0.5
per seed (within the spread); theta 91.6 ± 1.8, global 70.4 ± 10.2, global − theta −30.5 / −13.9 / −19.3 per seed.
The reported train loss is the cross-entropy at the last inner iterate. --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.peravg import batch_gradient
from fedsim.core.channel import MODEL
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone

THETA = "pfedme.theta:"  # θ's entries in the training state under --pfedme-theta warm (Phase.extra)


@dataclass(frozen=True)
class PFedMeParams(Params):
    moreau_lam: float = option(15.0, "λ of the Moreau envelope: pull of the personal θ to the local w (PFLlib: 15)",
                               low=0, low_open=True)
    inner_lr: float = option(0.01, "step η_p of the K personal steps (PFLlib's p_learning_rate: 0.01)",
                             low=0, low_open=True)
    inner_steps: int = option(5, "K, the personal steps per local step (PFLlib: 5)", low=1)
    server_lr: float = option(1.0, "β: the server mixes w ← (1 − β)·w + β·mean (1 = the plain mean)",
                              low=0, low_open=True)
    pfedme_theta: str = option("fresh", "where each batch's K personal steps start: fresh (from w) or warm (from the "
                               "previous batch's θ, PFLlib's)", choices=("fresh", "warm"))
    pfedme_eval: str = option("theta", "what the personalized accuracy evaluates: theta (θ solved from the client's w) "
                              "or global (the global model, what PFLlib reports as pFedMe's personalized accuracy)",
                              choices=("theta", "global"))


class PFedMe(FedAvg):
    name = "pfedme"
    no_freeze_base = "trains the whole model"
    phases_read = frozenset({"lr"})  # its local loss scales by --lr
    personalized = True
    Params = PFedMeParams

    def personal_initial(self, initial):
        return clone(initial)  # the client's local model w

    def phases(self):
        if self.params.pfedme_theta == "warm":
            return [Phase(loss=self.moreau_loss, extra=frozenset(THETA + k for k in self.keys.params))]
        return [Phase(loss=self.moreau_loss)]

    def client_job(self, server, store, client):
        job = super().client_job(server, store, client)
        if self.params.pfedme_theta == "warm":  # θ starts the round at the received model, as PFLlib's
            lr = self.config.lr * self.config.lr_decay ** server.round
            job.start.update({THETA + k: server.model[k].clone() for k in self.keys.params})
            job.ctx["lr"] = server.model[self.keys.params[0]].new_tensor(lr)
        return job

    def moreau_loss(self, model, state, x, y, ctx):
        """A loss whose gradient in w is λ·(w − θ), θ from K proximal steps on the batch (from w, or from the last
        batch's θ under --pfedme-theta warm: θ then trains beside w, with the gradient (θ − θ_K)/lr that moves it
        to θ_K in one step of plain SGD); its value is the batch's cross-entropy at the last inner iterate."""
        lam, eta, names = self.params.moreau_lam, self.params.inner_lr, self.keys.params
        warm = self.params.pfedme_theta == "warm"
        model_state = {k: v for k, v in state.items() if not k.startswith(THETA)}
        w = {k: state[k].detach() for k in names}
        theta = {k: state[THETA + k].detach() for k in names} if warm else w
        for _ in range(self.params.inner_steps):
            g, ce = batch_gradient(model, model_state, theta, x, y)
            theta = {k: theta[k] - eta * (g[k] + lam * (theta[k] - w[k])) for k in names}
        pull = 0.5 * lam * sum(((state[k] - theta[k].detach()) ** 2).sum() for k in names)
        if warm:
            pull = pull + sum(((state[THETA + k] - theta[k].detach()) ** 2).sum() for k in names) / (2 * ctx["lr"])
        return ce.detach() + pull - pull.detach()

    def client_finish(self, server, store, result):
        store.put(result.client, {k: v for k, v in result.states[-1].items() if not k.startswith(THETA)})
        return self.message(result)

    def server_update(self, server, aggregate):
        beta, mean = self.params.server_lr, dict(aggregate.means[MODEL])
        if beta != 1:
            mean.update({k: server.model[k] + beta * (mean[k] - server.model[k]) for k in self.shared_params})
        return replace(server, model={**server.model, **mean})

    def personal_model(self, server, store, client):
        if self.params.pfedme_eval == "global":
            return None
        return store.get(client)  # w; evaluation personalizes θ from it (below)

    # --- the personal θ before evaluation (run by the engine for every client) ---------------------------------
    def personalization_phases(self):
        return [Phase(loss=self.personal_loss)] if self.params.pfedme_eval == "theta" else []

    def personalization_job(self, server, store, job):
        return replace(job, ctx={"w": store.get(job.client)}, steps=self.params.inner_steps)

    def personal_loss(self, model, state, x, y, ctx):
        """(η_p/--lr)·(f(θ; D) + (λ/2)·‖θ − w‖²): the optimizer's step of --lr on it is a step of η_p."""
        import torch.nn.functional as F
        from torch.func import functional_call

        lam = self.params.moreau_lam
        pull = 0.5 * lam * sum(((state[k] - ctx["w"][k]) ** 2).sum() for k in self.keys.params)
        ce = F.cross_entropy(functional_call(model, state, (x,)), y)
        return (self.params.inner_lr / self.config.lr) * (ce + pull)
