"""What every algorithm shares with FedAvg: the hooks the engine calls, with FedAvg's defaults.

The engine owns the round loop and the local training loop. An algorithm says only how it differs:

    personal_keys()   which state stays with each client (FedBN: BN layers; FedPer/FedRep: the head)
    phases()          the stretches of local training and their loss/gradient changes (FedProx, SCAFFOLD,
                      FedRep's head-then-base, Ditto's personal model)
    client_context()  per-client tensors the phases read (the global weights, control variates)
    client_finish()   what a client keeps after training (its personal part, SCAFFOLD's c_i)
    aggregate()       the server update (weighted mean, FedNova, server optimizers)
    personal_model()  the model a client would use itself, for personalized accuracy
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from fedsim.engine.state import State, clone, num_bytes, weighted_mean


@dataclass(frozen=True)
class Phase:
    """One stretch of local training that the executor runs for every client of the cohort.

    `penalty(params, ctx)` is added to the data loss; `correction(grads, ctx)` changes the gradient
    before the optimizer step; both are pure functions of one client's tensors so that an executor
    may vectorize them over the cohort. `loss(model, state, x, y, ctx)` replaces the data loss
    (default: cross-entropy of `functional_call(model, state, x)`). `start` names a ctx entry to train
    from instead of the previous phase's output (Ditto trains the client's personal model too).
    """

    trainable: frozenset[str] | None = None  # None: every parameter
    epochs: int | None = None  # None: --local-epochs (or --local-steps)
    penalty: Callable | None = None
    correction: Callable | None = None
    loss: Callable | None = None
    start: str | None = None


@dataclass
class ServerState:
    model: State
    extra: dict = field(default_factory=dict)  # e.g. SCAFFOLD's c, a server optimizer's moments


@dataclass
class ClientJob:
    client: int
    start: State
    ctx: dict


@dataclass
class ClientResult:
    client: int
    num_samples: int
    states: list[State]  # the state after each phase
    steps: list[int]  # local steps taken in each phase
    loss: float  # mean data loss over the client's local steps
    last_finite_loss: float = float("nan")  # the last finite batch loss (for divergence messages)
    lr: float = 0.0  # the client learning rate used this round
    extra: dict = field(default_factory=dict)  # what an algorithm sends beside the model (SCAFFOLD's dc_i)


@dataclass
class ModelKeys:
    """The names of a model's state: trainable parameters, buffers, and the BN and head parts."""

    params: list[str]
    buffers: list[str]
    bn: list[str]
    head: list[str] | None = None  # None: no base/head split asked for

    @property
    def all(self) -> list[str]:
        return self.params + self.buffers


class ClientStore:
    """Per-client state, kept only for clients that have some; the rest read the initial values."""

    def __init__(self, initial: State, states: dict[int, State] | None = None):
        self.initial = initial
        self._states: dict[int, State] = dict(states or {})

    def get(self, client: int) -> State:
        return self._states.get(client, self.initial)

    def put(self, client: int, state: State) -> None:
        self._states[client] = state

    def __len__(self) -> int:
        return len(self._states)

    def states(self) -> dict[int, State]:
        """The clients' states as they are now (a new dict; `put` replaces entries, never changes them)."""
        return dict(self._states)


class FedAvg:
    """FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (arXiv:1602.05629). Clients run local SGD from the global model; the server
    takes the sample-weighted mean of their models (parameters and floating BN buffers; integer
    buffers stay integer). With `--bn local`, BN layers stay with each client (FedBN's behaviour).
    """

    name = "fedavg"
    needs_head = False  # personalized algorithms set this: the engine then finds the model's head
    personalized = False  # keeps a personal model part per client (and honours --freeze-base)
    vmap_ok = True  # False: the algorithm needs per-client Python work the vmap executor cannot batch

    def __init__(self, config, keys: ModelKeys, num_clients: int = 1):
        self.config = config
        self.keys = keys
        self.num_clients = num_clients
        self.model = self.data = None
        personal = self.personal_keys()
        self.personal = [k for k in keys.all if k in personal]
        self.shared = [k for k in keys.all if k not in personal]
        self.shared_params = [k for k in keys.params if k not in personal]

    def attach(self, model, data) -> None:
        """The engine hands over the template model and the clients' data (for FedAS-like hooks)."""
        self.model, self.data = model, data

    # --- what is whose ---------------------------------------------------------------------------
    def personal_keys(self) -> set[str]:
        return set(self.keys.bn) if self.config.bn == "local" else set()

    def personal_initial(self, initial: State) -> State:
        """Per-client state a client starts with (its personal part of the initial model)."""
        return clone(initial, self.personal)

    # --- server ------------------------------------------------------------------------------------
    def init_server(self, initial: State) -> ServerState:
        return ServerState(model=clone(initial))

    # --- client ------------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase()]

    def client_context(self, server: ServerState, store: ClientStore, client: int) -> dict:
        return {}

    def client_job(self, server: ServerState, store: ClientStore, client: int) -> ClientJob:
        start = clone(server.model, self.shared)
        start.update(clone(store.get(client), self.personal))
        return ClientJob(client, start, self.client_context(server, store, client))

    def client_finish(self, server: ServerState, store: ClientStore, result: ClientResult) -> None:
        if self.personal:
            store.put(result.client, {k: result.states[-1][k] for k in self.personal})

    def aggregate(self, server: ServerState, results: list[ClientResult]) -> ServerState:
        mean = weighted_mean([r.states[-1] for r in results], [r.num_samples for r in results], self.shared)
        return replace(server, model={**server.model, **mean})

    # --- evaluation and accounting -----------------------------------------------------------------
    def personal_model(self, server: ServerState, store: ClientStore, client: int) -> State | None:
        """The model client `client` uses itself; None when that is the global model."""
        if not self.personal:
            return None
        return {**server.model, **store.get(client)}

    def bytes_down(self, server: ServerState) -> int:
        """Bytes the server sends one client per round."""
        return num_bytes(server.model, self.shared)

    def bytes_up(self, server: ServerState) -> int:
        """Bytes one client sends the server per round."""
        return num_bytes(server.model, self.shared)


def proximal_penalty(weight: float, keys) -> Callable:
    """(weight/2)·||w − w_global||² over `keys`, reading the global weights from ctx["global"]."""
    keys = tuple(keys)

    def penalty(params: State, ctx: dict) -> torch.Tensor:
        return 0.5 * weight * sum(((params[k] - ctx["global"][k]) ** 2).sum() for k in keys if k in params)

    return penalty
