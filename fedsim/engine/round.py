"""One round of federated training: the one function the loop, the benchmark and the tests all call.

    jobs     = algorithm.client_job(...) for each client of the cohort   (what each client starts from)
    results  = executor.train(phases, jobs)                             (local training, any executor)
    sent     = algorithm.client_finish(...) for each result              (what the client keeps and sends)
    sent     = ranks.gather(...)     under torchrun: each process trained a share; all get the whole cohort's
    sent     = transform(sent, server, round) for each of `transforms`   (attacks, local DP: what goes up)
    server   = algorithm.aggregate(server, sent)                         (the server update)

The algorithm is duck-typed (the hooks of fedsim.algorithms.fedavg.FedAvg): the engine never imports one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedsim.core.hooks import ClientResult, ClientStore, ServerState
from fedsim.core.state import is_finite
from fedsim.errors import DivergenceError


@dataclass(frozen=True)
class RoundResult:
    server: ServerState  # the server state after aggregation
    sent: list[ClientResult]  # what each client of the cohort sent the server


def run_round(algorithm, executor, server: ServerState, store: ClientStore, cohort, round: int,
              lr: float, transforms: Sequence[Callable] = (), work: dict | None = None, ranks=None) -> RoundResult:
    """Train `cohort` (client ids) from `server` and aggregate; `store` gets the clients' kept state.
    `transforms`, each `f(sent, server, round) -> sent`, change what the clients send, in order, after
    `client_finish` (a malicious client's attack, local differential privacy's noise). `work`: per client, a
    ClientJob override of its local work (fedsim.engine.stragglers). A round where no client sends leaves
    the server as it was. `ranks` (fedsim.engine.distributed.Ranks, under torchrun): this process trains its
    share of the cohort, then every process gathers what the whole cohort sent and keeps, so that all of them
    aggregate the same inputs into the same server state. (A sweep's runs train together through their
    executor: fedsim/sweep.py.)

    Raises DivergenceError naming the round and the client when a loss or a weight becomes NaN/inf.
    """
    jobs = []
    for c in cohort if ranks is None else ranks.share(cohort, work):
        job = algorithm.client_job(server, store, int(c))
        for key, value in (work or {}).get(int(c), {}).items():
            setattr(job, key, value)
        jobs.append(job)
    results = executor.train(algorithm.phases(), jobs, round, lr)
    bad = next((res for res in results if not math.isfinite(res.loss) or not is_finite(res.states[-1], res.states[-1])),
               None)
    sent = [] if bad is not None else [algorithm.client_finish(server, store, res) for res in results]
    if ranks is not None:  # the whole cohort's, on every process (the first diverged client of the cohort)
        device = next(iter(server.model.values())).device
        bad, sent = ranks.gather(cohort, bad, sent, store, round, device)
    if bad is not None:
        diverged(round, bad.client, bad.last_finite_loss, lr)
    for transform in transforms:
        sent = transform(sent, server, round)
    if not sent:  # every client failed or was dropped: nothing to aggregate
        return RoundResult(server, sent)
    server = algorithm.aggregate(server, sent)
    if not is_finite(server.model, server.model):
        diverged(round, None, float("nan"), lr)
    return RoundResult(server, sent)


def diverged(round: int, client: int | None, last_finite: float, lr: float):
    where = f"client {client}" if client is not None else "the aggregated global model"
    last = f"last finite loss {last_finite:.4g}" if math.isfinite(last_finite) else "no finite loss seen"
    raise DivergenceError(
        f"training diverged in round {round} ({where}: loss or weights became NaN/inf; {last}); "
        f"lower --lr (now {lr:g}) or add --clip 1.0", round, client)
