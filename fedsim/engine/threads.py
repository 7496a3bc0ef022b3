"""How many CPU threads torch uses: chosen by timing rounds, because the best count depends on the machine's load.

A stacked cohort's step is big enough to split over every core of an idle machine (W-small: 0.15 s a round on
2 threads against 0.30 s on 1), but when another process holds a core, torch's threads wait on each other at
every operation: the default digits run took 55.8 s on 2 threads and 10.2 s on 1 beside one busy process.
So the chooser trains a round on each count, keeps the faster, and tries the other again now and then, in
case the load changed. Only the training part of a round is timed (evaluation does not depend on the count).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadChooser:
    """Sets torch's thread count round by round. `fixed`: always that many (--threads, or 1 for the sequential
    executor, whose one-client steps are too small to split). Otherwise: round 1 warms up on one thread (the
    first round pays one-off costs, which would bias its timing), rounds 2 and 3 time one thread and every
    core, then the faster count stays, and every `recheck_every` rounds one round tries the other again; it
    takes over only when more than `margin` faster (timings on a shared machine are noisy)."""

    def __init__(self, fixed: int | None = None, cores: int | None = None, recheck_every: int = 20,
                 margin: float = 0.1):
        self.fixed = fixed
        self.counts = (1, cores or cpu_count())
        self.recheck_every, self.margin = recheck_every, margin
        self.seconds: dict[int, float] = {}  # thread count -> its latest timed round
        self.current = fixed or 1
        self.decided = False  # the first comparison decides without a margin
        self.history: list[tuple[int, int]] = []  # (round, thread count) whenever the count changes

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and self.counts[1] > 1

    def _count_for(self, round: int) -> int:
        if not self.adaptive:
            return self.current
        missing = [n for n in self.counts if n not in self.seconds]
        if round > 1 and missing:
            return missing[0]
        if round > 1 and round % self.recheck_every == 0:
            return self.counts[1] if self.current == self.counts[0] else self.counts[0]
        return self.current

    @contextmanager
    def round(self, round: int):
        """Run one round's training inside this: the thread count is set before and the time taken after."""
        import torch

        count = self._count_for(round)
        if not self.history or self.history[-1][1] != count:
            self.history.append((round, count))
        torch.set_num_threads(count)
        start = time.perf_counter()
        yield
        if not self.adaptive or round == 1:
            return
        self.seconds[count] = time.perf_counter() - start
        other = self.counts[1] if count == self.counts[0] else self.counts[0]
        if other not in self.seconds:
            return
        faster = min(self.counts, key=lambda n: self.seconds[n])
        if not self.decided or self.seconds[faster] < (1 - self.margin) * self.seconds[self.current]:
            self.current = faster
        self.decided = True
