"""The simulated clock: how long each client takes, and which clients a synchronous round keeps.

A client's time in a round is

    download  8 x (bytes it receives) / down_bps      the bytes of the CSV's bytes_down
    work      (samples its local training processes) / samples_per_s
    upload    8 x (bytes it sends) / up_bps           each message's bytes, counted as the CSV's bytes_up

from its profile (fedsim.engine.profiles), so it is arithmetic on counts the engine has anyway: the clock never
slows the simulation. A synchronous round samples among the clients available at its start
(fedsim.engine.availability) and lasts until its last counted client reports. As in Bonawitz et al., "Towards
Federated Learning at Scale: System Design", MLSys 2019 (arXiv:1902.01046), §2-3:

    --over-select F   the server samples ceil(F x m) clients and keeps the first m to report (m: the round's
                      cohort size); the round ends at the m-th report
    --deadline D      a client reporting more than D seconds after the round's start is not counted; the round
                      ends at its last counted report, or at the deadline when some sampled client is still out.
                      Under the partial straggler policy (FedProx's) a client that would miss it trains the local
                      steps that fit instead (its upload planned at the size of the model it received) and counts
                      if it then reports in time.

A client whose availability ends before it reports goes offline then: it sends nothing, and the server learns of
it at that moment. A client that cannot report in time whatever it sends (its download and work alone pass the
deadline, or its availability) is not trained at all; the others train, and the late ones' uploads, which reach
the server after the round closed, count in bytes_up but not in the model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from fedsim.core.hooks import ClientJob
from fedsim.engine.local import epoch_cuts, local_work


def transfer_seconds(num_bytes: float, bits_per_second: float) -> float:
    return 8.0 * num_bytes / bits_per_second


def samples_of(size: int, batch_size: int, epochs: int, steps: int | None) -> int:
    """Samples a client of `size` processes in `epochs`, or in `steps` local steps (epochs' batches in turn)."""
    if steps is None:
        return epochs * size
    cuts = epoch_cuts(size, batch_size)
    batches = len(cuts) - 1
    whole, part = divmod(steps, batches)
    return whole * size + cuts[part]


@dataclass
class Clock:
    """A run's clients on the simulated clock: their profiles and availability, --deadline and --over-select."""

    profiles: object  # fedsim.engine.profiles.Profiles
    availability: object  # fedsim.engine.availability.Availability
    deadline: float | None
    over_select: float | None
    spec: object  # the run's LocalSpec (batch size, epochs or steps)
    phases: list  # the algorithm's phases: a client's local work is theirs together
    sizes: object  # each client's training samples

    def sampled(self, size: int, available: int) -> int:
        """Clients a synchronous round samples: its cohort size m, ceil(F x m) with --over-select F, at most the
        available clients."""
        wanted = size if self.over_select is None else math.ceil(self.over_select * size)
        return min(wanted, available)

    def work(self, client: int, override: dict | None = None) -> int:
        """Samples `client`'s local training processes in a round (`override`: a straggler's epochs or steps)."""
        job = ClientJob(client, {}, {}, **(override or {}))
        return sum(samples_of(int(self.sizes[client]), self.spec.batch_size, *local_work(self.spec, phase, job))
                   for phase in self.phases)

    def ready(self, client: int, down_bytes: int, work: int) -> float:
        """Seconds from receiving the model to having trained: its download, then its local work."""
        return float(transfer_seconds(down_bytes, self.profiles.down[client]) + work / self.profiles.speed[client])

    def upload(self, client: int, up_bytes: int) -> float:
        return float(transfer_seconds(up_bytes, self.profiles.up[client]))

    def round(self, start: float, clients, work: dict, down_bytes: int, target: int | None,
              partial: bool) -> SyncRound:
        """A synchronous round from `start` for `clients` (those that train: --stragglers' plan), with their
        work overrides `work`: who trains and with what work, the rest's outcome; `deliver` then keeps who counts.
        `target`: m, the clients the server keeps (--over-select), None to keep all in time."""
        cutoff = math.inf if self.deadline is None else start + self.deadline
        plan = SyncRound(start, cutoff, target)
        for c in clients:
            override = dict(work.get(c, {}))
            until = self.availability.until(c, start)
            ready = self.ready(c, down_bytes, self.work(c, override))
            # would miss the deadline (its upload planned at the size of what it received): the steps that fit
            if partial and start + (ready + self.upload(c, down_bytes)) > cutoff:
                override = self.steps_that_fit(c, cutoff - start, down_bytes, override)
                ready = self.ready(c, down_bytes, self.work(c, override)) if override else math.inf
            if start + ready > min(until, cutoff):  # reports in time whatever it sends: no need to train it
                plan.outcomes.append(until if until < start + ready and until <= cutoff else cutoff)
                continue
            plan.train.append(c)
            plan.ready[c], plan.until[c] = ready, until
            if override:
                plan.work[c] = override
        return plan

    def steps_that_fit(self, client: int, seconds: float, down_bytes: int, override: dict) -> dict:
        """The most local steps (at least 1) whose download, work and upload (planned at `down_bytes`) fit in
        `seconds`, as a work override; {} when not even one step fits."""
        budget = seconds - transfer_seconds(down_bytes, self.profiles.down[client]) - self.upload(client, down_bytes)
        job = ClientJob(client, {}, {}, **override)
        steps = [local_work(self.spec, p, job) for p in self.phases]
        size = int(self.sizes[client])
        full = max(s if s is not None else e * (len(epoch_cuts(size, self.spec.batch_size)) - 1) for e, s in steps)
        low, high = 0, full - 1  # the work of `full` steps is late: the most that is not, by bisection
        while low < high:
            mid = (low + high + 1) // 2
            if self.work(client, {**override, "steps": mid}) / self.profiles.speed[client] <= budget:
                low = mid
            else:
                high = mid - 1
        return {**override, "steps": low} if low >= 1 else {}

    def digest(self) -> str:
        """A hash of the profiles and the availability: what the clock makes of the clients."""
        hasher = hashlib.sha256()
        self.profiles.digest(hasher)
        self.availability.digest(hasher)
        return hasher.hexdigest()

    def record(self) -> dict:
        return {**self.profiles.record(), "availability": self.availability.record(), "sha256": self.digest(),
                "deadline": self.deadline, "over_select": self.over_select}


@dataclass
class SyncRound:
    """One synchronous round on the clock: who trains (`train`, with `work` overrides), the time each is ready
    to upload and goes offline, and the outcome times of those that do not train; `deliver` sets `end`."""

    start: float
    cutoff: float  # the deadline's time (inf: none)
    target: int | None  # over-selection: the reports the server keeps
    train: list[int] = field(default_factory=list)
    work: dict[int, dict] = field(default_factory=dict)
    ready: dict[int, float] = field(default_factory=dict)  # seconds from the start to having trained
    until: dict[int, float] = field(default_factory=dict)  # when it goes offline
    outcomes: list[float] = field(default_factory=list)  # when the server learns that an untrained one is out
    end: float | None = None
    uncounted: int = 0  # sampled clients that trained but do not count, or did not train

    def deliver(self, messages, upload) -> tuple[list, list]:
        """(the messages that count, in their order; those that arrive after the round closed): each client's
        report time from `upload(message)`, the client's seconds to send it."""
        arrival = {m.client: self.start + (self.ready[m.client] + upload(m)) for m in messages}
        in_time, late, waits = [], [], list(self.outcomes)
        for m in messages:
            a, until = arrival[m.client], self.until[m.client]
            if a > until:  # offline before it reports: nothing sent
                waits.append(until if until <= self.cutoff else self.cutoff)
            elif a > self.cutoff:
                late.append(m)
                waits.append(self.cutoff)
            else:
                in_time.append(m)
        first = sorted(in_time, key=lambda m: (arrival[m.client], m.client))
        if self.target is not None and len(first) >= self.target:
            kept = {m.client for m in first[: self.target]}
            self.end = arrival[first[self.target - 1].client]
            late += [m for m in first[self.target:]]
        else:
            kept = {m.client for m in first}
            self.end = max([arrival[m.client] for m in first] + waits, default=self.start)
        counted = [m for m in messages if m.client in kept]
        self.uncounted = len(self.train) + len(self.outcomes) - len(counted)
        return counted, late
