"""FedFomo: Zhang, Sapra, Fidler, Yeung, Alvarez, "Personalized Federated Learning with First Order Model
Optimization", ICLR 2021 (arXiv:2012.08565); code followed: PFLlib's `clientfomo.py` and `serverfomo.py`
(TsingZ0/PFLlib).

Differs from FedAvg in that there is no global model: each client keeps its own model and, at the start of its
round, replaces it by a weighted sum of the models it downloads. The server keeps every client's last upload
and an affinity matrix P (rows start as the identity) and sends each sampled client the M models with the
highest affinity in its row (`--fomo-m`; M is at most the number of clients that sent in the last round, so
nothing is sent in round 1; ties go to the lower client id). The client weighs downloaded model n by its first
order improvement on the client's validation split,
    w_n = (L(θ_old) − L(θ_n)) / (‖θ_n − θ_old‖ + 1e-5),
θ_old its previous round's start (the initial model at first), and starts from Σ max(w_n, 0)·θ_n / Σ max(w, 0)
over the parameters (its buffers its own), or from its own model where no w_n is positive. It trains on the rest
of its training data and sends the trained model and its w_n; the server keeps the model and adds the w_n to the
client's row of P. The validation split is the last `--fomo-val` of each client's training samples in stored
order (PFLlib: the last 20%); the client's model, evaluated as its personalized model, is its trained one; the
global model columns stay at the initial model. Up: the model and M numbers; down: M whole models.
The server needs each client's own model and weights, not a mean: both are per-client fields, so differential
privacy and robust aggregation refuse FedFomo by construction. The downloads are read from the server's copies
by client id (no copy per client).
Deviations from PFLlib: losses are per-sample means over the validation split in eval mode (PFLlib: the mean of
its batch means in train mode); training batches are shuffled as everywhere in fedsim (PFLlib's FedFomo loader
does not shuffle, and drops the last partial batch); a client whose validation split is empty keeps its own
model; clients without training data are never downloaded. --freeze-base is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import MODEL, Message, per_client
from fedsim.core.hooks import ClientJob
from fedsim.core.params import Params, option
from fedsim.core.state import clone, num_bytes

CHUNK = 4096  # samples per forward pass on the validation split
EPS = 1e-5  # the code's: keeps the weight finite when a downloaded model is the client's own start


@dataclass(frozen=True)
class FedFomoParams(Params):
    fomo_m: int = option(5, "M, the models each client downloads a round (PFLlib: 5; 0 trains each client alone)",
                         low=0, per_client=True)
    fomo_val: float = option(0.2, "fraction of each client's training samples held out to weigh the downloaded "
                             "models (PFLlib: 0.2)", low=0, high=1, high_open=True, per_client=True)


class FedFomo(FedAvg):
    name = "fedfomo"
    no_freeze_base = "trains the whole model"
    personalized = True
    Params = FedFomoParams
    sends = {MODEL: per_client("its trained model, which the server keeps for the others to download"),
             "weights": per_client("w_n of the models it downloaded, which the server adds to its affinity row")}

    def personal_keys(self):
        return set(self.keys.all)  # the whole model stays with the client

    def personal_initial(self, initial):
        import torch

        # its model, its last round's start θ_old, and this round's start and weights (set by client_job)
        model = clone(initial)
        return {"model": model, "old": model, "start": model, "weights": torch.zeros(0)}

    def init_server(self, initial):
        server = super().init_server(initial)
        server.extra = {"models": {}, "affinity": {}, "senders": 0}
        return server

    # --- the validation split ----------------------------------------------------------------------------------
    def split(self, client: int) -> int:
        """How many of the client's samples (the first ones) it trains on; the rest validate."""
        n = self.data.size(client)
        return n - int(self.params.fomo_val * n)

    def training_data(self, data):
        """Each client's first samples only: the executor never sees the validation split."""
        import numpy as np
        import torch

        keep = [self.split(c) for c in range(len(data.offsets) - 1)]
        indices = torch.cat([data.of(c)[:k] for c, k in enumerate(keep)]) if keep else data.indices
        return dataclasses.replace(data, indices=indices, offsets=np.concatenate([[0], np.cumsum(keep)]))

    def validation_loss(self, state, client: int) -> float:
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        idx = self.data.of(client)[self.split(client):]
        total = 0.0
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(idx), CHUNK):
                batch = idx[start : start + CHUNK]
                logits = functional_call(self.model, state, (self.data.x[batch],))
                total += float(F.cross_entropy(logits, self.data.y[batch], reduction="sum"))
        return total / len(idx)

    # --- the downloads -----------------------------------------------------------------------------------------
    def downloads(self, server, client: int) -> list[int]:
        """The clients whose models `client` receives: the top M of its affinity row, ties to the lower id."""
        import torch

        m = min(self.params.fomo_m, server.extra["senders"])
        if m == 0:
            return []
        row = self.affinity_row(server, client)
        empty = torch.as_tensor(self.data.offsets[1:] == self.data.offsets[:-1], device=row.device)
        order = torch.sort(row.masked_fill(empty, float("-inf")), descending=True, stable=True).indices
        return order[:m].tolist()  # clients without data sort last, and m <= the senders, who have data

    def affinity_row(self, server, client: int):
        import torch

        row = server.extra["affinity"].get(client)
        if row is None:
            row = torch.zeros(len(self.data.offsets) - 1, device=self.data.x.device)
            row[client] = 1.0
        return row

    def client_job(self, server, store, client):
        import torch

        entry, models = store.get(client), server.extra["models"]
        ids = self.downloads(server, client)
        start, weights = entry["model"], torch.zeros(len(ids))
        if ids and self.split(client) < self.data.size(client):
            old, names = entry["old"], self.keys.params
            base = self.validation_loss(old, client)
            for n, j in enumerate(ids):
                theta = models.get(j, server.model)
                distance = float(sum(((theta[k] - old[k]) ** 2).sum() for k in names)) ** 0.5
                weights[n] = (base - self.validation_loss(theta, client)) / (distance + EPS)
            positive = weights.clamp(min=0)
            if positive.sum() > 0:
                share = (positive / positive.sum()).tolist()
                start = {**entry["model"], **{k: sum(s * models.get(j, server.model)[k] for s, j in
                                                     zip(share, ids, strict=True)) for k in names}}
        store.put(client, {**entry, "start": start, "weights": weights})  # θ_old stays until the round ends
        return ClientJob(client, clone(start), {})

    def client_finish(self, server, store, result):
        model, entry = result.states[-1], store.get(result.client)
        store.put(result.client, {**entry, "model": model, "old": entry["start"]})
        weights = entry["weights"].to(model[self.keys.params[0]].device)
        return Message(result.client, result.num_samples, {MODEL: model, "weights": weights}, result.loss,
                       result.round)

    def server_update(self, server, aggregate):
        import torch

        models, affinity = dict(server.extra["models"]), dict(server.extra["affinity"])
        for c, model, weights in zip(aggregate.clients, aggregate.per_client[MODEL], aggregate.per_client["weights"],
                                     strict=True):
            models[c] = model
            ids = self.downloads(server, c)  # what the server sent c this round (the row has not changed since)
            row = self.affinity_row(server, c)
            affinity[c] = row.index_add(0, torch.tensor(ids, device=row.device), weights.to(row)) if ids else row
        return replace(server, extra={"models": models, "affinity": affinity, "senders": len(aggregate.clients)})

    def personal_model(self, server, store, client):
        return store.get(client)["model"]

    def bytes_down(self, server):
        """M whole models."""
        return min(self.params.fomo_m, server.extra["senders"]) * num_bytes(server.model, self.keys.all)

