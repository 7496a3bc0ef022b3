"""Systems heterogeneity: stragglers that do less local work, and clients that fail mid-round.

As FedProx's experiments (Li et al., MLSys 2020, §5.2; the authors' `flearn/trainers`): after the cohort is
chosen, a fraction of it straggles. Under the `drop` policy (FedAvg's in the paper) the stragglers are left
out of the round; under `partial` (FedProx's) each straggler trains a number of local epochs drawn uniformly
from 1..E−1 (steps 1..S−1 under --local-steps; at one local epoch, steps 1..S−1 of the epoch's S batches, so
partial work is part of the epoch as FedProx's code draws it; a client whose epoch is one batch trains it whole)
and is averaged in with its partial work. The paper picks the
active clients as round(cohort · (1 − P)), so the stragglers are the rest. Every draw is keyed: who straggles
by (seed, round), a straggler's work by (seed, round, client).

A failing client (--client-dropout Q) fails with probability Q, independently of the others, after it received
the model: it sends nothing, so the server averages the others (and a round where every client failed leaves
the global model as it was).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from fedsim.core import rng
from fedsim.engine.local import epoch_cuts
from fedsim.errors import FedsimError

POLICIES = ("drop", "partial")
COLUMNS = ["stragglers", "dropped"]


@dataclass(frozen=True)
class RoundPlan:
    cohort: list[int]  # the clients sampled (each received the global model)
    train: list[int]  # those that train and send their update
    work: dict[int, dict] = field(default_factory=dict)  # a straggler's ClientJob override: {"epochs": e} or steps
    stragglers: int = 0  # stragglers in the cohort
    dropped: int = 0  # clients that sent nothing: failed ones, and stragglers under the drop policy


@dataclass(frozen=True)
class Stragglers:
    """Which clients of a round's cohort straggle or fail, and what a straggler does (see the module docstring)."""

    fraction: float = 0.0  # of each round's cohort
    policy: str = "drop"
    dropout: float = 0.0  # probability that a client fails mid-round
    epochs: int = 1  # --local-epochs
    steps: int | None = None  # --local-steps
    seed: int = 0
    sizes: object = None  # each client's training samples (the batches of its one epoch)
    batch_size: int = 1

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise FedsimError(f"unknown --straggler-policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.fraction > 0 and self.policy == "partial" and self.steps == 1:
            raise FedsimError("--straggler-policy partial gives a straggler 1..S-1 of its S local steps: it needs "
                              "--local-steps >= 2 (got 1); or use --straggler-policy drop")

    @property
    def active(self) -> bool:
        return self.fraction > 0 or self.dropout > 0

    @property
    def columns(self) -> list[str]:
        """The CSV columns these features add (none when they are off)."""
        return list(COLUMNS) if self.active else []

    def plan(self, cohort, round: int) -> RoundPlan:
        cohort = [int(c) for c in cohort]
        if not self.active:
            return RoundPlan(cohort, cohort)
        n = len(cohort)
        draw = rng.keyed_rng(rng.STRAGGLERS, self.seed, round)
        stragglers = {cohort[i] for i in draw.choice(n, n - builtins.round(n * (1 - self.fraction)), replace=False)}
        failed = {c for c, u in zip(cohort, rng.keyed_rng(rng.DROPOUT, self.seed, round).random(n), strict=True)
                  if u < self.dropout}
        left_out = failed | (stragglers if self.policy == "drop" else set())
        train = [c for c in cohort if c not in left_out]
        work = {c: self.partial_work(c, round) for c in train if c in stragglers}
        return RoundPlan(cohort, train, {c: w for c, w in work.items() if w}, len(stragglers), len(left_out))

    def partial_work(self, client: int, round: int) -> dict:
        """A straggler's local work: epochs 1..E−1, or steps 1..S−1 (S: --local-steps, else its epoch's batches);
        {} (all of it) when its work is one step."""
        if self.steps or self.epochs > 1:
            key, full = ("steps", self.steps) if self.steps else ("epochs", self.epochs)
        else:
            key, full = "steps", len(epoch_cuts(int(self.sizes[client]), self.batch_size)) - 1
        if full < 2:
            return {}
        return {key: int(rng.keyed_rng(rng.STRAGGLERS, self.seed, round, client).integers(1, full))}
