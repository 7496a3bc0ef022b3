"""FedAMP: Huang, Chu, Zhou, Wang, Liu, Pei, Zhang, "Personalized Cross-Silo Federated Learning on Non-IID Data",
AAAI 2021 (arXiv:2007.03797); code followed: PFLlib's `clientamp.py` and `serveramp.py` (TsingZ0/PFLlib).

Differs from FedAvg in that there is no global model: each client keeps its own model w_i, and the server
builds each sampled client a personalized cloud model by attentive message passing over the models the last
round's cohort sent,
    u_i = (1 − Σ_j ξ_ij)·w_i + Σ_j ξ_ij·w_j,   ξ_ij = α_K·A'(‖w_i − w_j‖²) = α_K·exp(−‖w_i − w_j‖²/σ)/σ  (j ≠ i),
the gradient step on the attention-inducing regularizer Σ A(‖w_i − w_j‖²), A(x) = 1 − exp(−x/σ) (`--amp-alpha`,
`--amp-sigma`; the distances over the parameters). The client then trains its own w_i (from where it left it) on
its loss plus the proximal pull (λ/(2α_K))·‖w − u_i‖² (`--amp-lam`), and sends the trained model, which it keeps
and is evaluated with. The server keeps each client's last upload (w_i for a client that has not trained yet is
the initial model) and reads the models it needs by client id, no copy; the global model columns stay at the
initial model. A round without peers (the first) gives u_i = w_i and sends nothing down. Up: the model; down:
u_i's parameters.
The server needs each client's own model, not a mean: the model is a per-client field, so differential privacy
and robust aggregation refuse FedAMP by construction.
Deviations from PFLlib: its proximal term reads `p.data` (no gradient reaches the model) and is the norm, not its
square, so its clients train on the cross-entropy alone, each from its own model: `--amp-lam 0` trains as PFLlib
does. That matters: with PFLlib's α_K = σ = 1 nothing keeps Σ_j ξ_ij below 1 (in the run below, client 0's
19 weights sum to about 8.5 at round 30, each ‖w_i − w_j‖² between 0.3 and 2.1), so u_i extrapolates away from
the peers and the pull hurts. Measured (personalized accuracy at round 30, digits Dir(0.1), 20 clients, mlp,
batch 10, lr 0.05, seeds 0-2), by
    fedsim sweep --algo fedamp --amp-lam 1,0 --dataset digits --clients 20 --dirichlet 0.1 \
        --client-test-fraction 0.25 --model mlp --batch-size 10 --lr 0.05 --rounds 30 --seed 0-2
λ = 1: 77.7 ± 3.7, λ = 0 (PFLlib's): 92.4 ± 1.6, +11.5 / +17.4 / +15.0 per seed. ξ and u_i use the cohort of
the last round in which some client sent (PFLlib: of the last round), and u_i's buffers are not used (the pull
covers the parameters). --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import MODEL, Message, per_client
from fedsim.core.hooks import ClientJob, LinearTerm, Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone, num_bytes


@dataclass(frozen=True)
class FedAMPParams(Params):
    amp_alpha: float = option(1.0, "α_K, the step of the message passing that builds each cloud model (PFLlib: 1)",
                              low=0, per_client=True)
    amp_lam: float = option(1.0, "λ: the pull λ/(2α_K)·‖w − u_i‖² of a client's model to its cloud model (PFLlib: 1, "
                            "without effect there; 0 trains as PFLlib)", low=0, per_client=True)
    amp_sigma: float = option(1.0, "σ of the attention function 1 − exp(−‖w_i − w_j‖²/σ) (PFLlib: 1)", low=0,
                              low_open=True, per_client=True)


class FedAMP(FedAvg):
    name = "fedamp"
    no_freeze_base = "trains the whole model"
    personalized = True
    Params = FedAMPParams
    sends = {MODEL: per_client("its trained model, which the server keeps to build the others' cloud models")}

    def personal_keys(self):
        return set(self.keys.all)  # the whole model stays with the client

    def personal_initial(self, initial):
        return clone(initial)

    def init_server(self, initial):
        import torch

        server = super().init_server(initial)
        server.extra = {"models": {}, "peers": torch.zeros(0, dtype=torch.long)}
        return server

    def phases(self):
        return [Phase(linear_term=LinearTerm(weight="amp_weight", center="cloud"))]

    def client_job(self, server, store, client):
        own = store.get(client)
        weight = 0.0 if self.params.amp_alpha == 0 else self.params.amp_lam / self.params.amp_alpha
        return ClientJob(client, clone(own), {"cloud": self.cloud_model(server, client),
                                              "amp_weight": own[self.keys.params[0]].new_tensor(weight)})

    def cloud_model(self, server, client: int):
        """u_i over the parameters, from the server's copies of the last round's senders' models."""
        models, initial = server.extra["models"], server.model
        w_i = models.get(client, initial)
        coefficients = self.coefficients(server, client)
        if not coefficients:
            return {k: w_i[k] for k in self.keys.params}
        keep = 1.0 - sum(xi for _, xi in coefficients)
        return {k: keep * w_i[k] + sum(xi * models[j][k] for j, xi in coefficients) for k in self.keys.params}

    def coefficients(self, server, client: int) -> list[tuple[int, float]]:
        """(j, ξ_ij) for the last round's senders j ≠ i."""
        import math

        models, names = server.extra["models"], self.keys.params
        w_i = models.get(client, server.model)
        out = []
        for j in server.extra["peers"].tolist():
            if j != client:
                distance = float(sum(((w_i[k] - models[j][k]).double() ** 2).sum() for k in names))
                sigma = self.params.amp_sigma
                out.append((j, self.params.amp_alpha * math.exp(-distance / sigma) / sigma))
        return out

    def client_finish(self, server, store, result):
        model = result.states[-1]
        store.put(result.client, model)
        return Message(result.client, result.num_samples, {MODEL: model}, result.loss, result.round)

    def server_update(self, server, aggregate):
        import torch

        models = {**server.extra["models"], **dict(zip(aggregate.clients, aggregate.per_client[MODEL], strict=True))}
        peers = torch.tensor(aggregate.clients, dtype=torch.long)
        return replace(server, extra={"models": models, "peers": peers})

    def personal_model(self, server, store, client):
        return store.get(client)

    def bytes_down(self, server):
        """u_i's parameters, once there are peers to build it from."""
        return num_bytes(server.model, self.keys.params) if len(server.extra["peers"]) else 0
