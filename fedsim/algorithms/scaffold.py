"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML 2020 (arXiv:1910.06378).

Differs from FedAvg by control variates: every local step uses the gradient g − c_i + c, where c (server)
and c_i (client) estimate the global and the client's update directions, so client drift cancels out.

What this file follows (the paper's Algorithm 1, option II):
- local step on the corrected gradient g + (c − c_i), handed to the client optimizer. With --momentum the
  correction therefore goes through the momentum buffer; NIID-Bench instead takes a momentum step on g and
  then w −= lr·(c − c_i). The two agree for plain SGD.
- c_i⁺ = c_i − c + (w_global − w_i)/(K·lr), K the local steps the client took, lr the round's client lr
  (exact for plain SGD; with momentum or Adam it is the paper's approximation all the same).
- server: c += (1/N)·Σ_{i∈S} Δc_i with N the clients with data; w += η_g·(mean of the clients' w_i − w).
  Both come from the channel's aggregate: the model's mean and Δc's uniform mean times the senders, so
  differential privacy and robust aggregation cover Δc_i as they cover the model.
Deviation: the model mean is sample-weighted, as FedAvg and NIID-Bench weight it (the paper writes
1/|S|, i.e. equal client sizes), so η_g = 1 with zero control variates is exactly FedAvg. `--scaffold-weights
uniform` takes the plain mean, as the paper and PFLlib (`serverscaffold.py`: Δy_i / num_join_clients).
Measured (personalized accuracy, here the global model's on each client's test slice, at round 30, digits Dir(0.1),
20 clients, mlp, batch 10, lr 0.05, seeds 0-2), by
    fedsim sweep --algo scaffold --scaffold-weights samples,uniform --dataset digits --clients 20 --dirichlet 0.1 \
        --client-test-fraction 0.25 --model mlp --batch-size 10 --lr 0.05 --rounds 30 --seed 0-2
samples 90.0 ± 1.7, uniform 86.0 ± 3.7, uniform − samples −6.7 / −2.9 / −2.3 per seed.
Control variates cover the shared parameters (not buffers; not BN layers kept local by --bn local);
c_i is stored only for clients that trained, and counted in the bytes sent both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import MODEL, UNIFORM, summed
from fedsim.core.hooks import ClientJob, LinearTerm, Phase
from fedsim.core.params import Params, option
from fedsim.core.state import clone, num_bytes


@dataclass(frozen=True)
class ScaffoldParams(Params):
    # SCAFFOLD has no FedAvg value: with η_g = 1 it equals FedAvg only while c = c_i = 0 (the first round)
    server_lr: float = option(1.0, "global step size η_g (the paper uses 1)", low=0, low_open=True)
    scaffold_weights: str = option("samples", "how the model mean weighs the clients: samples (NIID-Bench, FedAvg's) "
                                   "or uniform (the paper's 1/|S|, PFLlib's)", choices=("samples", "uniform"))


class Scaffold(FedAvg):
    name = "scaffold"
    Params = ScaffoldParams
    sends = {**FedAvg.sends, "dc": summed("Δc_i, the change of the client's control variate", weight=UNIFORM)}

    def __init__(self, config, keys, population: int = 1):
        super().__init__(config, keys, population)
        if self.params.scaffold_weights == "uniform":
            self.sends = {**self.sends, MODEL: summed(FedAvg.sends[MODEL].what, weight=UNIFORM, centered=True)}

    def _zeros(self, state):
        return {k: state[k].new_zeros(state[k].shape) for k in self.shared_params}

    def init_server(self, initial):
        server = super().init_server(initial)
        server.extra["c"] = self._zeros(initial)
        return server

    def personal_initial(self, initial):
        # a client's entry: its personal model part (--bn local) and its control variate c_i
        return {"model": super().personal_initial(initial), "c": self._zeros(initial)}

    def phases(self):
        return [Phase(linear_term=LinearTerm(shift="c_diff"))]  # g + (c − c_i)

    def client_job(self, server, store, client):
        entry, c = store.get(client), server.extra["c"]
        start = {**clone(server.model, self.shared), **clone(entry["model"])}
        return ClientJob(client, start, {"c_diff": {k: c[k] - entry["c"][k] for k in c}})

    def client_finish(self, server, store, result):
        c, c_i, w = server.extra["c"], store.get(result.client)["c"], result.states[-1]
        scale = 1.0 / (sum(result.steps) * result.lr)
        new = {k: c_i[k] - c[k] + (server.model[k] - w[k]) * scale for k in c}
        store.put(result.client, {"model": {k: w[k] for k in self.personal}, "c": new})
        return self.message(result, dc={k: new[k] - c_i[k] for k in c})

    def server_update(self, server, aggregate):
        eta, mean = self.params.server_lr, dict(aggregate.means[MODEL])
        if eta != 1:
            mean.update({k: server.model[k] + eta * (mean[k] - server.model[k]) for k in self.shared_params})
        dc = aggregate.sum("dc")
        c = {k: v + dc[k] / self.population for k, v in server.extra["c"].items()}
        return replace(server, model={**server.model, **mean}, extra={**server.extra, "c": c})

    def personal_model(self, server, store, client):
        return {**server.model, **store.get(client)["model"]} if self.personal else None

    def bytes_down(self, server):  # the model and c
        return super().bytes_down(server) + num_bytes(server.extra["c"], server.extra["c"])
