"""One round of federated training: the one function the loop, the benchmark and the tests all call.

    jobs     = algorithm.client_job(...) for each client of the cohort   (what each client starts from)
    results  = executor.train(phases, jobs)                             (local training, any executor)
    sent     = algorithm.client_finish(...) for each result              (what the client keeps and sends)
    server   = algorithm.aggregate(server, sent)                         (the server update)

The algorithm is duck-typed (the hooks of fedsim.algorithms.fedavg.FedAvg): the engine never imports one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsim.core.hooks import ClientResult, ClientStore, ServerState
from fedsim.core.state import is_finite
from fedsim.errors import DivergenceError


@dataclass(frozen=True)
class RoundResult:
    server: ServerState  # the server state after aggregation
    sent: list[ClientResult]  # what each client of the cohort sent the server


def run_round(algorithm, executor, server: ServerState, store: ClientStore, cohort, round: int,
              lr: float) -> RoundResult:
    """Train `cohort` (client ids) from `server` and aggregate; `store` gets the clients' kept state.

    Raises DivergenceError naming the round and the client when a loss or a weight becomes NaN/inf.
    """
    jobs = [algorithm.client_job(server, store, int(c)) for c in cohort]
    results = executor.train(algorithm.phases(), jobs, round, lr)
    for res in results:
        if not math.isfinite(res.loss) or not is_finite(res.states[-1], res.states[-1]):
            diverged(round, res.client, res.last_finite_loss, lr)
    sent = [algorithm.client_finish(server, store, res) for res in results]
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
