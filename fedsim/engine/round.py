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


@dataclass
class RunRound:
    """One run's part of a round where several runs (a sweep's) train together in one executor: its algorithm,
    server state, client store and cohort, where its clients' rows start in the executor's data, its seed."""

    algorithm: object
    server: ServerState
    store: ClientStore
    cohort: object  # client ids
    rows: int = 0
    seed: int | None = None
    transforms: Sequence[Callable] = ()  # f(sent, server, round) -> sent, in order, after client_finish
    work: dict | None = None  # client -> its ClientJob's local-work override (a straggler's {"epochs": e})
    ranks: object = None  # under torchrun: the processes sharing this run's cohort (engine.distributed.Ranks)


def run_round(algorithm, executor, server: ServerState, store: ClientStore, cohort, round: int,
              lr: float, transforms: Sequence[Callable] = (), work: dict | None = None, ranks=None) -> RoundResult:
    """Train `cohort` (client ids) from `server` and aggregate; `store` gets the clients' kept state.
    `transforms`, each `f(sent, server, round) -> sent`, change what the clients send, in order, after
    `client_finish` (a malicious client's attack, local differential privacy's noise). `work`: per client, a
    ClientJob override of its local work (fedsim.engine.stragglers). A round where no client sends leaves
    the server as it was. `ranks` (fedsim.engine.distributed.Ranks, under torchrun): this process trains its
    share of the cohort, then every process gathers what the whole cohort sent and keeps, so that all of them
    aggregate the same inputs into the same server state.

    Raises DivergenceError naming the round and the client when a loss or a weight becomes NaN/inf.
    """
    (outcome,) = run_stacked_round(executor, [RunRound(algorithm, server, store, cohort, transforms=transforms,
                                                       work=work, ranks=ranks)], round, lr)
    if isinstance(outcome, DivergenceError):
        raise outcome
    return outcome


def run_stacked_round(executor, runs: list[RunRound], round: int, lr: float) -> list[RoundResult | DivergenceError]:
    """One round of each of `runs`, their cohorts trained in one `executor.train` call (the runs share the
    algorithm's phases and the local work; see fedsim/sweep.py). Each run's outcome, in order: its RoundResult,
    or the DivergenceError that stops that run alone."""
    jobs, owner = [], []
    for i, run in enumerate(runs):
        for c in run.cohort if run.ranks is None else run.ranks.share(run.cohort, run.work):
            job = run.algorithm.client_job(run.server, run.store, int(c))
            if len(runs) > 1:
                job.rows, job.seed = run.rows + int(c), run.seed
            for key, value in (run.work or {}).get(int(c), {}).items():
                setattr(job, key, value)
            jobs.append(job)
            owner.append(i)
    results = executor.train(runs[0].algorithm.phases(), jobs, round, lr)
    outcomes = []
    for i, run in enumerate(runs):
        mine = [res for res, o in zip(results, owner, strict=True) if o == i]
        try:
            outcomes.append(_finish(run, mine, round, lr))
        except DivergenceError as e:
            outcomes.append(e)
    return outcomes


def _finish(run: RunRound, results: list[ClientResult], round: int, lr: float) -> RoundResult:
    bad = next((res for res in results if not math.isfinite(res.loss) or not is_finite(res.states[-1], res.states[-1])),
               None)
    sent = [] if bad is not None else [run.algorithm.client_finish(run.server, run.store, res) for res in results]
    if run.ranks is not None:  # the whole cohort's, on every process (the first diverged client of the cohort)
        device = next(iter(run.server.model.values())).device
        bad, sent = run.ranks.gather(run.cohort, bad, sent, run.store, round, device)
    if bad is not None:
        diverged(round, bad.client, bad.last_finite_loss, lr)
    for transform in run.transforms:
        sent = transform(sent, run.server, round)
    if not sent:  # every client failed or was dropped: nothing to aggregate
        return RoundResult(run.server, sent)
    server = run.algorithm.aggregate(run.server, sent)
    if not is_finite(server.model, server.model):
        diverged(round, None, float("nan"), lr)
    return RoundResult(server, sent)


def diverged(round: int, client: int | None, last_finite: float, lr: float):
    where = f"client {client}" if client is not None else "the aggregated global model"
    last = f"last finite loss {last_finite:.4g}" if math.isfinite(last_finite) else "no finite loss seen"
    raise DivergenceError(
        f"training diverged in round {round} ({where}: loss or weights became NaN/inf; {last}); "
        f"lower --lr (now {lr:g}) or add --clip 1.0", round, client)
