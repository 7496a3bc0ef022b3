"""The types the engine and the algorithms exchange; neither side imports the other, both import these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fedsim.core.state import State


@dataclass(frozen=True)
class LinearTerm:
    """A gradient term linear in the weights, weight·(w − center) + shift, added to each trained parameter's
    gradient at every local step: the gradient of (weight/2)·‖w − center‖² + ⟨shift, w⟩ (FedProx's proximal
    term; SCAFFOLD's correction c − c_i is a shift). Declared rather than written as a penalty, the executors add
    it inside the optimizer's update where that is exact (plain SGD), so no gradient tensor is formed for it,
    and a Linear layer's data gradient can stay an outer product (fedsim/engine/outer.py).

    Each field names a ctx entry (`weight` may also be a number): `weight` a scalar tensor, `center` and `shift`
    dicts of tensors keyed like the parameters; a parameter missing from a dict gets no such part."""

    weight: str | float | None = None
    center: str | None = None
    shift: str | None = None


@dataclass(frozen=True)
class Phase:
    """One stretch of local training that the executor runs for every client of the cohort.

    `linear_term` adds a LinearTerm to the gradient; `penalty(params, ctx)` is added to the data loss;
    `correction(grads, ctx)` changes the gradient (the linear term included) before clipping and the optimizer
    step; both are pure functions of one client's tensors so that an executor may vectorize them over the
    cohort. `loss(model, state, x, y, ctx)` replaces the data loss
    (default: cross-entropy of `functional_call(model, state, x)`). `start` names a ctx entry to train
    from instead of the previous phase's output (Ditto trains the client's personal model too). `extra` names
    entries of the client's state that are not the model's and train with its parameters (FedDBE's personal
    representation bias, APPLE's relationship vector): the phase's `loss` reads them from `state` (the default
    cross-entropy cannot), and every phase after it carries them on.
    """

    trainable: frozenset[str] | None = None  # None: every parameter
    epochs: int | None = None  # None: --local-epochs (or --local-steps)
    linear_term: LinearTerm | None = None
    penalty: Callable | None = None
    correction: Callable | None = None
    loss: Callable | None = None
    start: str | None = None
    extra: frozenset[str] = frozenset()


@dataclass
class ServerState:
    model: State
    extra: dict = field(default_factory=dict)  # e.g. SCAFFOLD's c, a server optimizer's moments
    round: int = 0  # rounds completed: the model's version (a round where no client sent counts too)


@dataclass
class ClientJob:
    client: int
    start: State
    ctx: dict
    # Where runs of a sweep train together in one executor: the client's rows in the executor's data (its id
    # offset past the other runs' clients), and its run's seed for the keyed draws. None: `client`, the spec's.
    rows: int | None = None
    seed: int | None = None
    # A straggler's local work (--stragglers, partial policy): epochs, or steps under --local-steps, in place of
    # the spec's; a phase with its own epochs (FedRep's head) keeps them. None: the spec's.
    epochs: int | None = None
    steps: int | None = None
    # Its run's client-optimizer numbers ("lr" this round, "momentum", "weight_decay"), where runs of a sweep
    # with other values train together. None (or a number left out): the executor's.
    optimizer: dict | None = None
    # An asynchronous client's keys (fedsim.engine.asynchronous), so that clients from several model versions train
    # in one executor call: the round its draws are keyed by (the version it received + 1) in place of the call's,
    # and how many times it trained from that version before (a key of its draws when above 0). None, 0: the call's.
    round: int | None = None
    repeat: int = 0

    @property
    def data_rows(self) -> int:
        return self.client if self.rows is None else self.rows

    def draw_keys(self, round: int) -> tuple[int, ...]:
        """(round, client[, repeat]): what its keyed draws (batch order, torch's seed) take after the seed, `round`
        being the executor call's."""
        own = round if self.round is None else self.round
        return (own, self.client) if not self.repeat else (own, self.client, self.repeat)


@dataclass(frozen=True)
class ClientResult:
    """A client's round as the executor returns it. It stays on the client: `client_finish` keeps what the
    client keeps and returns the Message it sends (fedsim.core.channel)."""

    client: int
    num_samples: int
    states: list[State]  # the state after each phase
    steps: list[int]  # local steps taken in each phase
    loss: float  # mean data loss over the client's local steps
    last_finite_loss: float = float("nan")  # the last finite batch loss (for divergence messages)
    lr: float = 0.0  # the client learning rate used this round
    round: int = 0  # the round it trained in


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
