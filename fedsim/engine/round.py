"""One round of federated training: the one function the loop, the benchmark and the tests all call.

    jobs      = algorithm.client_job(...) for each client of the cohort   (what each client starts from)
    results   = executor.train(phases, jobs)                             (local training, any executor)
    messages  = algorithm.client_finish(...) for each result              (what the client keeps and sends,
                                                                          its size as the algorithm counts it)
    messages  = ranks.gather(...)    under torchrun: each process trained a share; all get the whole cohort's
    aggregate = channel.reduce(algorithm.sends, messages, server, round)  (stages, then the reducer)
    server    = algorithm.server_update(server, aggregate)                (sees the aggregate only)

The algorithm is duck-typed (the hooks of fedsim.algorithms.fedavg.FedAvg): the engine never imports one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fedsim.core.channel import Aggregate, Channel, Message
from fedsim.core.hooks import ClientResult, ClientStore, ServerState
from fedsim.core.state import is_finite
from fedsim.errors import DivergenceError


@dataclass(frozen=True)
class RoundResult:
    server: ServerState  # the server state after the round
    sent: list[Message]  # what the cohort's clients sent and the round counts, before the channel's stages (`size`:
    #                      the algorithm's count of its bytes)
    aggregate: Aggregate | None  # what the server update received; None when no client sent
    trained: list[ClientResult]  # the clients' trained states (this process's share under torchrun): never sent
    late: list[Message] = field(default_factory=list)  # sent, but after the round closed (`deliver`): not counted


def run_round(algorithm, executor, server: ServerState, store: ClientStore, cohort, round: int,
              lr: float, channel: Channel | None = None, work: dict | None = None, ranks=None,
              deliver=None) -> RoundResult:
    """Train `cohort` (client ids) from `server` and update it; `store` gets the clients' kept state. What the
    clients send passes through `channel` (default: the plain weighted mean), whose Aggregate is all the
    algorithm's server update sees. `work`: per client, a ClientJob override of its local work
    (fedsim.engine.stragglers). A round where no client sends leaves the model as it was (its round still
    counts). `ranks` (fedsim.engine.distributed.Ranks, under torchrun): this process trains its share of the
    cohort, then every process gathers what the whole cohort sent and keeps, so that all of them reduce the same
    messages, in cohort order, into the same server state. (A sweep's runs train together through their
    executor: fedsim/sweep.py.) `deliver(messages) -> (counted, late)`: which of them reach the server before
    the round closes (the simulated clock's deadline and over-selection: fedsim.engine.clock); default all.

    Raises DivergenceError naming the round and the client when a loss or a weight becomes NaN/inf.
    """
    jobs = []
    for c in cohort if ranks is None else ranks.share(cohort, work):
        job = algorithm.client_job(server, store, int(c))
        for key, value in (work or {}).get(int(c), {}).items():
            setattr(job, key, value)
        jobs.append(job)
    results = executor.train(algorithm.phases(), jobs, round, lr)
    bad = first_diverged(results)
    sent = [] if bad is not None else [sized(algorithm, server, algorithm.client_finish(server, store, res))
                                       for res in results]
    if ranks is not None:  # the whole cohort's, on every process (the first diverged client of the cohort)
        device = next(iter(server.model.values())).device
        bad, sent = ranks.gather(cohort, bad, sent, store, round, device)
    if bad is not None:
        diverged(round, bad.client, bad.last_finite_loss, lr)
    sent, late = deliver(sent) if deliver is not None else (sent, [])
    server, aggregate = update_server(algorithm, server, sent, round, channel)
    if not is_finite(server.model, server.model):
        diverged(round, None, float("nan"), lr)
    return RoundResult(server, sent, aggregate, results, late)


def first_diverged(results: list[ClientResult]) -> ClientResult | None:
    """The first client whose loss or trained weights are NaN/inf, if any."""
    return next((res for res in results if not math.isfinite(res.loss) or not is_finite(res.states[-1],
                                                                                          res.states[-1])), None)


def update_server(algorithm, server: ServerState, messages: list[Message], round: int,
                  channel: Channel | None = None) -> tuple[ServerState, Aggregate | None]:
    """The server's side of round `round`: `messages` through `channel` (default: the weighted mean), then the
    algorithm's server update on the Aggregate; with no message the model stays as it was (the round counts)."""
    if not messages:  # every client failed or was dropped: nothing to aggregate
        return replace(server, round=round), None
    aggregate = (channel or Channel()).reduce(algorithm.sends, messages, server, round)
    if aggregate.failed:  # the protocol delivered nothing (secure aggregation below its threshold)
        return replace(server, round=round), aggregate
    return replace(algorithm.server_update(server, aggregate), round=round), aggregate


def sized(algorithm, server: ServerState, message: Message) -> Message:
    """`message` with its size on the wire as the algorithm counts it (`bytes_up_of`: its fields' tensors; FedProto's
    prototypes, as many as the client's classes); the channel's stages may change it (a codec's encoding)."""
    return message if message.size is not None else replace(message, size=algorithm.bytes_up_of(server, message))


def diverged(round: int, client: int | None, last_finite: float, lr: float):
    where = f"client {client}" if client is not None else "the aggregated global model"
    last = f"last finite loss {last_finite:.4g}" if math.isfinite(last_finite) else "no finite loss seen"
    raise DivergenceError(
        f"training diverged in round {round} ({where}: loss or weights became NaN/inf; {last}); "
        f"lower --lr (now {lr:g}) or add --clip 1.0", round, client)
