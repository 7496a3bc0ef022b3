"""How many CPU threads torch uses: chosen by timing local steps, because the best count depends on the load.

A stacked cohort's step is big enough to split over every core of an idle machine (W-small: 0.15 s a round on
2 threads against 0.30 s on 1), but when another process holds a core, torch's threads wait on each other at
every operation: the default digits run took 55.8 s on 2 threads and 10.2 s on 1 beside one busy process.
So the chooser times a few steps on one thread and on every core, alternating (later steps train fewer
clients: alternation keeps the comparison fair), keeps the faster, and probes again now and then in case
the load changed, less often while the answer stays the same. A probe costs a few steps, not a round.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadChooser:
    """Sets torch's thread count step by step (`with chooser.step(): ...` around each local step).

    `fixed`: always that many (--threads; 1 for the sequential executor, whose one-client steps are too small
    to split). Otherwise the first `warmup` steps (one-off costs) run on one thread, then `probe_steps` steps on
    each count alternate, and the faster count stays; it is probed again after `recheck_every` steps, an
    interval that doubles (up to `max_recheck`) each time the answer stays. After the first probe, the other
    count takes over only when more than `margin` faster (timings on a shared machine are noisy).
    """

    def __init__(self, fixed: int | None = None, cores: int | None = None, warmup: int = 2, probe_steps: int = 3,
                 recheck_every: int = 100, max_recheck: int = 1600, margin: float = 0.1, clock=time.perf_counter):
        self.fixed = fixed
        self.counts = (1, cores or cpu_count())
        self.current = fixed or 1
        self.probe_steps, self.margin, self.clock = probe_steps, margin, clock
        self.first_recheck, self.max_recheck = recheck_every, max_recheck
        self.interval = recheck_every
        self.next_probe = warmup
        self.steps = 0
        self.queue: list[int] = []  # the thread counts of the running probe's remaining steps
        self.seconds: dict[int, list[float]] = {}
        self.decisions: list[tuple[int, int]] = []  # (step, count) each time a probe changes the count

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and self.counts[1] > 1

    def describe(self) -> str | int:
        return f"chosen by timing steps: 1 or {self.counts[1]}" if self.adaptive else self.current

    def apply(self) -> None:
        import torch

        torch.set_num_threads(self.current)

    @contextmanager
    def step(self):
        if not self.adaptive:
            yield
            return
        import torch

        if not self.queue and self.steps == self.next_probe:
            self.queue = list(self.counts) * self.probe_steps
            self.seconds = {n: [] for n in self.counts}
        count = self.queue[0] if self.queue else self.current
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        start = self.clock()
        yield
        self.steps += 1
        if not self.queue:
            return
        self.seconds[self.queue.pop(0)].append(self.clock() - start)
        if not self.queue:
            self._decide()

    def _decide(self) -> None:
        mean = {n: sum(t) / len(t) for n, t in self.seconds.items()}
        faster = min(self.counts, key=mean.__getitem__)
        if not self.decisions or mean[faster] < (1 - self.margin) * mean[self.current]:
            changed = faster != self.current or not self.decisions
            self.current = faster
        else:
            changed = False
        if changed:
            self.decisions.append((self.steps, self.current))
            self.interval = self.first_recheck
        else:
            self.interval = min(2 * self.interval, self.max_recheck)
        self.next_probe = self.steps + self.interval
        self.apply()
