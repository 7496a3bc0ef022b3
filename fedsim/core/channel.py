"""What a client sends and how it reaches the server: messages, the channel's stages, its reducer, the aggregate.

A client's round ends in a Message: named fields of tensors, each declared by its algorithm (`FedAvg.sends`) as

    summed      enters a mean over the cohort (the model, SCAFFOLD's Δc_i, FedProto's prototype sums); weighted by
                the sample counts, uniformly, or by a per-client field; `centered` when the value is a model, so
                that stages and DP work on its update, the value minus the global model the client started from
    per-client  the server needs each client's own value (FedNova's local step count, FedAS's Fisher trace)

The Channel passes the cohort's messages through its per-client stages in order (a malicious client's attack,
local DP's clip and noise, a codec, secure aggregation's masking) and then one reducer (the weighted mean; DP's
noised sum over the fixed cohort size; the median, trimmed mean, Krum; the secure sum of masked vectors), and
the algorithm's `server_update` receives the Aggregate only: each summed
field's mean and each per-client field's values. So whatever a stage or reducer guarantees (a DP bound, a robust
filter) holds for every algorithm whose message it accepts, and which it accepts follows from the declarations:
a stage or reducer that must see every value a client sends refuses a message with a per-client field.

Bytes: every message carries its size on the wire (`Message.size`, set from the algorithm's count before the
stages); a stage that changes how a message is encoded (a codec, masking) sets the size of what it sends, and
the Aggregate sums them (`bytes_up`), with what the stages' and reducer's own protocol messages add both ways
(secure aggregation's keys and shares: `bytes_down` beside the model the server broadcasts).

Anchors: TensorFlow Federated's `tff.aggregators` (aggregation factories any algorithm takes), pfl-research's
postprocessors (clipping, local and central DP on the user's statistics before the algorithm sees them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fedsim.core.state import State, weighted_mean
from fedsim.errors import FedsimError

SUMMED, PER_CLIENT = "summed", "per-client"
SAMPLES, UNIFORM = "samples", "uniform"


@dataclass(frozen=True)
class Field:
    """One field an algorithm's clients send: its kind, what it is (one line, for the docs and refusals), and,
    for a summed field, how the mean weighs the clients and whether the value is a model (`centered`)."""

    kind: str
    what: str
    weight: str = SAMPLES  # SAMPLES, UNIFORM, or the name of a per-client field holding each client's weight
    centered: bool = False


def summed(what: str, weight: str = SAMPLES, centered: bool = False) -> Field:
    return Field(SUMMED, what, weight, centered)


def per_client(what: str) -> Field:
    return Field(PER_CLIENT, what)


MODEL = "model"  # the field every model-averaging algorithm sends: its shared state as trained


@dataclass(frozen=True)
class Message:
    """What one client sends the server in a round: its declared fields (a summed field is a dict of tensors, a
    per-client one a number or tensor), its sample count, and its mean training loss (a metric for the row;
    no server update reads it)."""

    client: int
    num_samples: int
    fields: dict
    loss: float = float("nan")
    round: int = 0
    size: int | None = None  # bytes on the wire: the algorithm's count (run_round), a codec's after its stage


@dataclass(frozen=True)
class Aggregate:
    """What the server update of every algorithm receives: the channel's output, and nothing of a single
    client's but its per-client fields."""

    means: dict[str, State]  # each summed field's mean over the senders
    per_client: dict[str, list]  # each per-client field's values, in the senders' order
    clients: tuple[int, ...]  # the senders, in cohort order
    samples: tuple[int, ...] | None  # their sample counts; None where the reducer fixes the weights (DP, robust)
    count: int  # the denominator of a uniform mean: the senders, or DP's fixed cohort size
    round: int
    info: dict = field(default_factory=dict)  # what the reducer reports for the CSV row (Krum's f this round)
    bytes_up: int = 0  # what the cohort sent through the channel: the messages' sizes and protocol messages
    bytes_down: int = 0  # what the channel's protocol sent the clients besides the server's broadcast
    failed: str | None = None  # why nothing reached the server (secure aggregation below its threshold): the
    #                            server update does not run and the server keeps its state

    def sum(self, name: str) -> State:
        """Σ over the senders of a uniformly weighted field: its mean times the denominator."""
        return {k: v * self.count for k, v in self.means[name].items()}


class Mean:
    """The default reducer: each summed field's weighted mean, as its declaration weighs it. A weight field whose
    values sum to zero (FedAS: every Fisher trace 0) falls back to the sample counts."""

    name = "the weighted mean"
    needs_summed_only = None  # any message
    uses_samples = True

    def __call__(self, sends: dict[str, Field], messages: Sequence[Message], server, round: int):
        means = {name: weighted_mean([m.fields[name] for m in messages], self.weights(spec, messages),
                                     list(messages[0].fields[name]))
                 for name, spec in sends.items() if spec.kind == SUMMED}
        return means, len(messages), {}

    @staticmethod
    def weights(spec: Field, messages: Sequence[Message]) -> list[float]:
        samples = [m.num_samples for m in messages]
        if spec.weight == SAMPLES:
            return samples
        if spec.weight == UNIFORM:
            return [1.0] * len(messages)
        weights = [float(m.fields[spec.weight]) for m in messages]
        return weights if sum(weights) > 0 else samples


class Channel:
    """The cohort's messages -> the Aggregate: `stages` (each `f(sends, messages, server, round) -> messages`), in
    order, then `reducer` (`f(sends, messages, server, round) -> (means, count, info)`). A stage or reducer whose
    `needs_summed_only` is a reason (not None) refuses an algorithm that sends a per-client field. `nonnegative`:
    state keys (BN running variances) clamped at 0 in a centered mean, which noise may push below (a
    post-processing: it keeps any guarantee).

    A stage may declare `adds` (name -> Field: summed fields it adds to each message, which later stages and the
    reducer see: DP's clip indicator under secure aggregation). The reducer's `info` may hold `bytes_up` and
    `bytes_down`, what its protocol sent beyond the messages (taken out of `info` into the Aggregate's byte
    counts), and `failed`, why nothing reached the server this round."""

    def __init__(self, stages: Sequence = (), reducer=None, nonnegative: Sequence[str] = ()):
        self.stages = tuple(stages)
        self.reducer = reducer if reducer is not None else Mean()
        self.nonnegative = frozenset(nonnegative)
        self.columns = tuple(c for part in (*self.stages, self.reducer) for c in getattr(part, "columns", ()))

    def check(self, algorithm: str, sends: dict[str, Field]) -> None:
        """One line refusing what this channel cannot carry for `algorithm` (see `refusal`)."""
        problem = refusal(algorithm, sends, [(p.name, p.needs_summed_only) for p in (*self.stages, self.reducer)])
        if problem:
            raise FedsimError(problem)

    def encode(self, sends: dict[str, Field], messages: Sequence[Message], server, round: int):
        """The stages alone: (the fields the messages now carry, the messages as sent). Each message's `size` is
        then its size on the wire (what an event loop reads for a client's upload time)."""
        for stage in self.stages:
            messages = stage(sends, messages, server, round)
            sends = {**sends, **getattr(stage, "adds", {})}
        return sends, messages

    def reduce(self, sends: dict[str, Field], messages: Sequence[Message], server, round: int) -> Aggregate:
        sends, messages = self.encode(sends, messages, server, round)
        means, count, info = self.reducer(sends, messages, server, round)
        info = dict(info)
        extra_up, extra_down, failed = info.pop("bytes_up", 0), info.pop("bytes_down", 0), info.pop("failed", None)
        up = sum(m.size or 0 for m in messages) + extra_up
        for name, spec in sends.items():
            if spec.centered and self.nonnegative and name in means:
                means[name] = {k: v.clamp_min(0) if k in self.nonnegative else v for k, v in means[name].items()}
        per = {name: [m.fields[name] for m in messages] for name, spec in sends.items() if spec.kind == PER_CLIENT}
        samples = tuple(m.num_samples for m in messages) if self.reducer.uses_samples else None
        return Aggregate(means, per, tuple(m.client for m in messages), samples, count, round, info, up, extra_down,
                         failed)


def refusal(algorithm: str, sends: dict[str, Field], users: Sequence[tuple[str, str | None]]) -> str | None:
    """Why `algorithm`'s message cannot pass the channel stages and reducers `users` ((name, the reason it must
    see every value a client sends, or None)); None when it can. Derived from the declarations alone."""
    per = [(name, spec) for name, spec in sends.items() if spec.kind == PER_CLIENT]
    for user, reason in users:
        if reason and per:
            name, spec = per[0]
            return (f"{user} cannot take {algorithm}: {reason}, and {algorithm}'s clients send {name!r} "
                    f"({spec.what}), a per-client value the server needs as sent; choose another --algo")
    return None


def cohort_refusal(algorithm: str, alone: str | None, users: Sequence[tuple[str, str]]) -> str | None:
    """Why `algorithm`, whose server applies each update alone (`alone` says how; None: it reduces a cohort),
    cannot pass the channel stages and reducers `users` ((name, why it needs a cohort of updates)); None when it
    can. Derived from the declarations alone."""
    for user, reason in users:
        if alone and reason:
            return (f"{user} cannot take {algorithm}: {reason}, and {algorithm} {alone} (a cohort of one); choose "
                    "another --algo (fedbuff reduces a buffer of updates)")
    return None


def stack_updates(sends: dict[str, Field], messages: Sequence[Message], center: State, centered: bool = True):
    """(clients, coordinates): every floating tensor of every summed field, flattened in declaration order; a
    centered field's minus `center` (the global model) unless `centered` is False. Also the (field, key) of each
    flattened tensor, for `unstack`."""
    import torch

    parts = [(name, k) for name, spec in sends.items() if spec.kind == SUMMED
             for k, v in messages[0].fields[name].items() if v.is_floating_point()]

    def row(m: Message):
        return torch.cat([(m.fields[f][k] - center[k] if centered and sends[f].centered else m.fields[f][k])
                          .reshape(-1).float() for f, k in parts])

    return torch.stack([row(m) for m in messages]), parts


def unstack(sends: dict[str, Field], template: Message, parts, mean, center: State) -> dict[str, State]:
    """The summed fields' means from `mean`, a flat vector laid out as `stack_updates`' rows: a centered field's
    tensors are `center` plus their part. Tensors that are not floating (BN's num_batches_tracked) keep the
    center's value in a centered field, and are 0 in another."""
    out, start = {}, 0
    for f, k in parts:
        like = template.fields[f][k]
        n = like.numel()
        value = mean[start:start + n].reshape(like.shape).to(like.dtype)
        out.setdefault(f, {})[k] = center[k] + value if sends[f].centered else value
        start += n
    means = {}
    for f, spec in sends.items():
        if spec.kind == SUMMED:
            fixed = {k: center[k].clone() if spec.centered else v.new_zeros(v.shape)
                     for k, v in template.fields[f].items() if not v.is_floating_point()}
            means[f] = {k: out.get(f, {}).get(k, fixed.get(k)) for k in template.fields[f]}
    return means


def with_fields(message: Message, **fields) -> Message:
    """`message` with some fields replaced (a stage's output)."""
    return replace(message, fields={**message.fields, **fields})
