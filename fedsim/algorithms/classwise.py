"""Per-class statistics a client sends in place of a model (FedProto's prototypes, FedDistill's logits), and the
class means FedAS aligns to.

`ClasswiseExchange` is what FedProto and FedDistill share: each client keeps its whole model and sends its mean
vector for each class it holds; the server's vector of a class is the plain mean of those the cohort sent. Through
the channel that mean is two uniform means, of v_i·[i holds c] and of [i holds c], so differential privacy and the
robust reducers cover the vectors like any summed field. Up: d floats and a label (an int64) per class the client
holds; down: the same per class the server has a vector for.
"""

from __future__ import annotations

from dataclasses import replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.channel import UNIFORM, Message, summed
from fedsim.core.hooks import ServerState
from fedsim.core.state import clone

CHUNK = 4096  # samples per forward pass
LABEL_BYTES = 8  # each vector travels with its class label, an int64
HOLDS = "holds"


def sends(name: str, what: str) -> dict:
    """The message of per-class vectors `name` and the mask of the classes held."""
    return {name: summed(f"its per-class {what} (zero rows for classes it lacks)", weight=UNIFORM),
            HOLDS: summed("which classes it holds (1 or 0 per class)", weight=UNIFORM)}


def class_means(model, data, client: int, outputs):
    """(classes x d means of the vectors over the client's training samples, which classes it holds), in eval mode
    without gradients; `outputs(x)` gives (the vectors, the logits) of x, the logits' width the classes."""
    import torch
    import torch.nn.functional as F

    idx, sums, counts = data.of(client), 0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(idx), CHUNK):
            batch = idx[start : start + CHUNK]
            out, logits = outputs(data.x[batch])
            onehot = F.one_hot(data.y[batch], logits.shape[1]).to(out.dtype)
            sums, counts = sums + onehot.T @ out, counts + onehot.sum(0)
    return sums / counts.clamp(min=1)[:, None], counts > 0


def message(result, name: str, means, held) -> Message:
    """The client's Message: its means of the classes it holds (zero rows elsewhere) and the mask."""
    holds = held.to(means.dtype)
    return Message(result.client, result.num_samples, {name: {name: means * holds[:, None]}, HOLDS: {HOLDS: holds}},
                   result.loss, result.round)


def holders_mean(aggregate, name: str):
    """(the server's vector of each class: the mean over the clients holding it, which classes it has). A class is
    held where at least half a client holds it: exactly the classes some client holds, unless DP's noise moved the
    count (then it keeps tiny noised counts from dividing the vectors up)."""
    sums, holders = aggregate.means[name][name], aggregate.means[HOLDS][HOLDS]
    has = holders * aggregate.count >= 0.5
    means = sums / holders.clamp(min=0.5 / aggregate.count)[:, None]
    return means * has[:, None], has


def vector_bytes(has, vectors) -> int:
    """Bytes of the vectors of the classes in `has`, each with its label."""
    return int(has.sum()) * (vectors.shape[1] * vectors.element_size() + LABEL_BYTES)


def message_bytes(message, name: str) -> int:
    """Bytes a client sent: one vector (and its label) per class it holds."""
    return vector_bytes(message.fields[HOLDS][HOLDS] > 0, message.fields[name][name])


class ClasswiseExchange(FedAvg):
    """Clients keep their whole model and send their per-class mean `vector`s (`outputs`: the vectors and logits of
    a model state on some rows); the server keeps, per class, the mean over the clients holding it, and which
    classes have one ("has")."""

    personalized = True
    vector: str  # the message field and the server's entry

    def __init__(self, config, keys, population: int = 1):
        super().__init__(config, keys, population)
        self.sent = []  # no model travels

    def outputs(self, state, x):
        raise NotImplementedError

    def personal_keys(self):
        return set(self.keys.all)  # the whole model stays with the client

    def personal_initial(self, initial):
        return clone(initial)

    def init_server(self, initial):
        import torch

        self.model.eval()
        with torch.no_grad():
            out, logits = self.outputs(initial, self.data.x[:1])
        vectors = out.new_zeros(logits.shape[1], out.shape[1])
        has = torch.zeros(logits.shape[1], dtype=torch.bool, device=out.device)
        return ServerState(model=clone(initial), extra={self.vector: vectors, "has": has})

    def client_finish(self, server, store, result):
        state = result.states[-1]
        store.put(result.client, state)
        means, held = class_means(self.model, self.data, result.client, lambda x: self.outputs(state, x))
        return message(result, self.vector, means, held)

    def server_update(self, server, aggregate):
        vectors, has = holders_mean(aggregate, self.vector)
        return replace(server, extra={**server.extra, self.vector: vectors, "has": has})

    def personal_model(self, server, store, client):
        return store.get(client)

    def bytes_up_of(self, server, message) -> int:
        """A client sends one vector (and its label) per class it holds."""
        return message_bytes(message, self.vector)

    def bytes_down(self, server):
        return vector_bytes(server.extra["has"], server.extra[self.vector])
