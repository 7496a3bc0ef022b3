"""Asynchronous training on the simulated clock: clients train at their own pace and the server steps as their
updates arrive. The second loop beside `run_round`, reusing its parts: the executor trains, the algorithm's
`client_job`/`client_finish` start and end a client, and `update_server` (the channel, then the algorithm's server
update) applies a buffer of updates.

    Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", OPT 2020 (arXiv:1903.03934): FedAsync
    Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022
    (arXiv:2106.06639): FedBuff

`--concurrency K` clients train at once. Events are processed in simulated-time order (ties by client id): a
client finishes, its update goes to the server's buffer, and when the buffer holds the algorithm's
`buffer_size` updates (FedBuff's K, FedAsync's 1) the channel reduces them and the server steps (a model
version; `--rounds` counts them). Once every event of a moment is processed the freed slots are refilled, at that
moment, from the available clients not training, with the current model. A client's staleness τ is the versions
the server made since the model it received; the channel's `Staleness` stage weighs its update by the
algorithm's s(τ) before the reducer (so DP clips what enters the sum).

Keys: the k-th dispatch moment at model version v draws its clients (and Bernoulli availability) from the
generator keyed by (seed, v + 1, k), the first (k = 0) by (seed, v + 1) as synchronous round v + 1 does; a
client's training is keyed by (v + 1, client), and by its repeat count too when it trains from v again. So with
every client taking the same time, FedBuff with K = concurrency = m samples and trains what synchronous FedAvg
with m clients a round does.

Fast: the loop knows when each client in flight will have trained (its download and local work), but its report
time needs what it sends. Whenever the next event may be a client not yet trained, every such client in flight is
trained, in one executor call (each from its own model version), so clients that finish in the same stretch
train together; the event order depends on the times alone, never on how many trained together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedsim.core import rng
from fedsim.core.channel import SUMMED, Message, with_fields
from fedsim.core.hooks import ServerState
from fedsim.engine.round import diverged, first_diverged, update_server
from fedsim.errors import FedsimError

COLUMNS = ["sim_seconds", "updates", "staleness_mean", "staleness_max"]


def staleness(message: Message, server: ServerState) -> int:
    """The versions the server made since the model `message`'s client trained from (its round is that + 1)."""
    return server.round + 1 - message.round


class Staleness:
    """A channel stage: each update weighed by s(τ), the algorithm's staleness function. A summed model field
    (centered) becomes the model plus s times its update, another summed field s times itself; s = 1 leaves the
    message as it is."""

    name = "staleness weighting"
    needs_summed_only = None

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, sends, messages, server, round: int):
        out = []
        for m in messages:
            s = self.weight(staleness(m, server))
            if s == 1:
                out.append(m)
                continue
            scaled = {}
            for name, spec in sends.items():
                if spec.kind == SUMMED:
                    center = server.model if spec.centered else None
                    scaled[name] = {k: v if not v.is_floating_point() else
                                    (v * s if center is None else center[k] + (v - center[k]) * s)
                                    for k, v in m.fields[name].items()}
            out.append(with_fields(m, **scaled))
        return out


@dataclass
class Flight:
    """A client training: from which model version, since when, and, once trained, what it sends and when."""

    client: int
    version: int  # the model version it received (ServerState.round then)
    repeat: int  # how many times it trained from that version before (a key of its draws)
    start: float  # simulated time it received the model
    ready: float  # seconds from then to having trained (download and local work)
    until: float  # simulated time it goes offline (availability, --deadline): it reports by then or never
    message: Message | None = None
    arrival: float = math.inf  # its report time, once trained

    @property
    def known(self) -> bool:
        """Whether its event's time is known: it trained, or it goes offline before it could have."""
        return self.message is not None or self.start + self.ready > self.until

    @property
    def event(self) -> float:
        return self.arrival if self.arrival <= self.until else self.until


@dataclass
class Stream:
    """What the asynchronous loop carries from one server update to the next (checkpointed: `state`)."""

    time: float = 0.0
    flights: list[Flight] = field(default_factory=list)
    models: dict[int, ServerState] = field(default_factory=dict)  # the model versions clients in flight received
    buffer: list[Message] = field(default_factory=list)  # updates received, not yet applied
    moments: int = 0  # dispatch moments at the current version
    repeats: dict[int, int] = field(default_factory=dict)  # per client: trainings from the current version
    row: dict = field(default_factory=dict)  # updates received since the last row: count, loss, staleness

    def received(self, message: Message, tau: int) -> None:
        r = self.row
        r["updates"] = r.get("updates", 0) + 1
        r["loss"] = r.get("loss", 0.0) + message.loss * message.num_samples
        r["samples"] = r.get("samples", 0) + message.num_samples
        r["staleness"] = r.get("staleness", 0) + tau
        r["staleness_max"] = max(r.get("staleness_max", 0), tau)

    def row_columns(self) -> dict:
        """The CSV columns of the updates received since the last row (and starts the next row's count)."""
        r, self.row = self.row, {}
        n = r.get("updates", 0)
        return {"sim_seconds": self.time, "updates": n, "staleness_mean": r["staleness"] / n if n else float("nan"),
                "staleness_max": r.get("staleness_max", 0),
                "train_loss": r["loss"] / r["samples"] if n else float("nan")}

    def state(self) -> dict:
        """Plain values and tensors, for the checkpoint."""
        return {"time": self.time, "moments": self.moments, "repeats": dict(self.repeats), "row": dict(self.row),
                "flights": [{**vars(f), "message": None if f.message is None else vars(f.message)}
                            for f in self.flights],
                "models": {v: {"model": s.model, "extra": s.extra, "round": s.round} for v, s in self.models.items()},
                "buffer": [vars(m) for m in self.buffer]}

    @classmethod
    def from_state(cls, state: dict | None) -> Stream:
        if not state:
            return cls()
        flights = [Flight(**{**f, "message": None if f["message"] is None else Message(**f["message"])})
                   for f in state["flights"]]
        return cls(float(state["time"]), flights,
                   {int(v): ServerState(s["model"], s["extra"], int(s["round"])) for v, s in state["models"].items()},
                   [Message(**m) for m in state["buffer"]], int(state["moments"]),
                   {int(c): int(n) for c, n in state["repeats"].items()}, dict(state["row"]))


@dataclass(frozen=True)
class Update:
    """One server update: the new state, what it applied, and the bytes moved since the previous update."""

    server: ServerState
    aggregate: object
    applied: list[Message]
    bytes_up: int
    bytes_down: int


@dataclass
class AsyncLoop:
    """Runs the stream from one server update to the next (see the module docstring)."""

    algorithm: object  # the hooks of fedsim.algorithms.fedavg.FedAvg, and `buffer_size`
    executor: object
    channel: object
    clock: object  # fedsim.engine.clock.Clock
    eligible: np.ndarray  # the clients with data
    concurrency: int
    seed: int
    lr: object  # lr(version): the client learning rate of a client that received that version
    down_bytes: object  # down_bytes(server): what a client receives
    up_bytes: object  # up_bytes(server, message): what a message takes (the CSV's bytes_up)

    def next_update(self, server: ServerState, store, stream: Stream) -> Update:
        up = down = 0
        while True:
            event = self.next_event(store, stream)
            if event is None or event.event > stream.time:  # every event of this moment is in: refill the slots
                dispatched, moved = self.dispatch(server, stream)
                down += moved
                if dispatched:
                    continue
                if event is None:
                    self.wait(stream)
                    continue
            stream.flights.remove(event)
            stream.time = event.event
            if event.arrival > event.until:  # offline before it reported: nothing sent
                continue
            up += self.up_bytes(stream.models[event.version], event.message)
            stream.received(event.message, server.round - event.version)
            stream.buffer.append(event.message)
            if len(stream.buffer) >= self.algorithm.buffer_size:
                applied, stream.buffer = stream.buffer, []
                server, aggregate = update_server(self.algorithm, server, applied, server.round + 1, self.channel)
                stream.moments, stream.repeats = 0, {}
                stream.models = {v: s for v, s in stream.models.items() if any(f.version == v for f in stream.flights)}
                return Update(server, aggregate, applied, up, down)

    def dispatch(self, server: ServerState, stream: Stream) -> tuple[int, int]:
        """Fill the free slots at `stream.time` with the current model: (clients dispatched, bytes sent them)."""
        free = self.concurrency - len(stream.flights)
        if free <= 0:
            return 0, 0
        version = server.round
        key = (version + 1,) if stream.moments == 0 else (version + 1, stream.moments)
        stream.moments += 1
        busy = [f.client for f in stream.flights]
        idle = self.eligible[~np.isin(self.eligible, busy)]
        available = self.clock.availability.available(idle, stream.time, key)
        chosen = np.sort(rng.keyed_rng(rng.COHORT, self.seed, *key).choice(available, min(free, len(available)),
                                                                          replace=False))
        if not len(chosen):
            return 0, 0
        down = self.down_bytes(server)
        deadline = math.inf if self.clock.deadline is None else stream.time + self.clock.deadline
        for c in (int(c) for c in chosen):
            repeat = stream.repeats.get(c, 0)
            stream.repeats[c] = repeat + 1
            ready = self.clock.ready(c, down, self.clock.work(c))
            until = min(self.clock.availability.until(c, stream.time), deadline)
            stream.flights.append(Flight(c, version, repeat, stream.time, ready, until))
        stream.models[version] = server
        return len(chosen), down * len(chosen)

    def wait(self, stream: Stream) -> None:
        """Nobody trains and nobody was available: on to when someone comes online (Bernoulli: the next draw)."""
        if self.clock.availability.mode == "bernoulli":
            return
        later = self.clock.availability.next_start(stream.time)
        if later is None:
            raise FedsimError(f"no client is available after simulated second {stream.time:g} (--availability "
                              f"{self.clock.availability.text}): the run cannot make its --rounds server updates")
        stream.time = max(later, math.nextafter(stream.time, math.inf))

    def next_event(self, store, stream: Stream) -> Flight | None:
        """The flight whose event comes first (time, then client), training the untrained ones when one of them
        may be it."""
        while True:
            first = min((f for f in stream.flights if f.known), key=lambda f: (f.event, f.client), default=None)
            untrained = [f for f in stream.flights if not f.known]
            if untrained and (first is None or min(f.start + f.ready for f in untrained) <= first.event):
                self.train(untrained, store, stream)
                continue
            return first

    def train(self, flights: list[Flight], store, stream: Stream) -> None:
        """Train `flights` together (one executor call per client learning rate), each from its own version."""
        algo = self.algorithm
        for lr in sorted({self.lr(f.version) for f in flights}):
            group = [f for f in flights if self.lr(f.version) == lr]
            jobs = []
            for f in group:
                job = algo.client_job(stream.models[f.version], store, f.client)
                job.round, job.repeat = f.version + 1, f.repeat
                jobs.append(job)
            results = self.executor.train(algo.phases(), jobs, max(job.round for job in jobs), lr)
            bad = first_diverged(results)
            if bad is not None:
                diverged(stream.models[next(f.version for f in group if f.client == bad.client)].round + 1,
                         bad.client, bad.last_finite_loss, lr)
            for f, result in zip(group, results, strict=True):
                model = stream.models[f.version]
                f.message = algo.client_finish(model, store, result)
                f.arrival = f.start + (f.ready + self.clock.upload(f.client, self.up_bytes(model, f.message)))
