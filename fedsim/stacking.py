"""A sweep's stack: runs that train through one executor, each round either together (one call for all their
cohorts) or one after another (one call per run), whichever timing shows is faster.

Each run of a stack is `fedsim.run` in a thread of its own whose executor is the stack's member for that run
(`Stack.factory`). Only one thread computes at a time: a run holds the turn, and gives it up only while it waits
for the others in `Stack.train`, so the runs' setup happen one after another, as in a loop. When every running
run has handed in its cohort for the round, the stack trains them all, each job keyed by its own run's seed and
reading its own run's rows of the shared data.

Every training call and every evaluation (`Stack.compute`) runs on the sweep's main thread (`Stack.serve`), and
the runs' own threads keep torch at one thread: torch's CPU threads are OpenMP teams, one per calling thread, and
a second team, even idle, slowed the first by 1.4-2.4x on a 2-core machine (the same W-small run took 1.6x as
long in a thread of its own as on the main thread once the main thread had used torch; measured with
scripts/profile_stack.py). With one computing thread a stack's call one run after another costs what the runs
alone cost. Whether one call or one per run, each client's
arithmetic is the same (the vmap executor takes every client's optimizer numbers as per-client tensors), so each
run's numbers are those of the run alone.

Why not always together: on a GPU one call for many runs' clients costs little more than one run's, but on a
CPU a W-small step is bound by memory traffic, not arithmetic (each client's 784x200 first-layer weights are read
three times a step for only ten rows each): the work of k runs costs k times one run's whichever way it is cut,
and a stack whose clients' weights outgrow the cache costs more together than apart. `StackChooser` times both,
as `engine/threads.py` times thread counts.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOGETHER, APART = "together", "one after another"
SPLIT = "split"  # a probe: the first run's cohort alone, then the others' together, both timed
MODES = ("auto", "always", "never")  # --stack: auto times both ways; always: together; never: one run after another


class StackChooser:
    """Whether the next call of a stack trains together or one run after another: `next_way(runs)`, then
    `done({way: (seconds, client steps)}, round)`.

    `fixed`: always that way (--stack always). Otherwise the first `warmup` calls are split (below), untimed: each
    way's one-off costs, its thread choice's first probe among them (`Stack.threads`). Then a probe times both
    ways, per client step (rounds differ in how many local steps their clients take), and the faster stays. A
    probe call of three runs or more is split: the first run's cohort alone, then the others'
    together, so that both ways are timed in the same round, under the same load (and a probe round costs about
    two runs' rounds, not k, on a GPU where together wins by far); the first probe is `probe_calls` such calls.
    With two runs, probe calls alternate the two ways (two each). The choice is checked again after
    `recheck_every` calls, by one split call (two runs: the other way once, beside the chosen way's calls just
    before and after it); the other way takes over only when more than `margin` faster. A probe ends early once
    one way is more than `clear` times slower over two calls each (on a GPU, one call per run is). The interval
    doubles (up
    to `max_recheck`) each time the choice stays, and is the longest at once when one way was more than twice as
    slow (the load of a shared machine does not turn that around).
    """

    def __init__(self, fixed: str | None = None, warmup: int = 1, probe_calls: int = 3, recheck_every: int = 8,
                 max_recheck: int = 128, margin: float = 0.1, clear: float = 1.5):
        self.fixed = fixed
        self.clear = clear  # a probe ends early once one way is this many times slower
        self.current = fixed or TOGETHER
        self.probe_calls, self.margin = probe_calls, margin
        self.first_recheck, self.max_recheck = recheck_every, max_recheck
        self.interval = recheck_every
        self.next_probe = warmup
        self.calls = 0
        self.left = 0  # calls left in the running probe
        self.alternation: list[str] = []  # a probe's ways, call by call, where a call cannot be split (two runs)
        self.seconds: dict[str, list[float]] = {}  # seconds per client step, each way, in the running probe
        self.last: float | None = None  # seconds per client step of the last call the chosen way, outside probes
        self.probes: list[dict] = []  # each probe: its last round, seconds per client step each way, the choice

    def next_way(self, runs: int) -> str:
        """The way to train the next call, of `runs` runs (TOGETHER, APART, or SPLIT in a probe)."""
        if self.fixed is not None:
            return self.fixed
        if not self.left and self.calls >= self.next_probe:
            first = not self.probes
            self.seconds = {TOGETHER: [], APART: []}
            self.alternation = [TOGETHER, APART] * 2 if first else [self._other(), self.current]
            self.left = (self.probe_calls if first else 1) if runs >= 3 else len(self.alternation)
            if runs < 3 and not first and self.last is not None:  # the chosen way's call before the check
                self.seconds[self.current].append(self.last)
        if self.calls < self.next_probe and not self.probes:  # warming up: each way's one-off costs, untimed
            return SPLIT
        if not self.left:
            return self.current
        if runs >= 3:
            return SPLIT
        return self.alternation[-self.left % len(self.alternation)]

    def done(self, timings: dict[str, tuple[float, int]], round: int) -> None:
        """A call of round `round` took `timings[way] = (seconds, client steps)` each way it trained."""
        per_step = {way: s / n for way, (s, n) in timings.items() if n > 0}
        if self.fixed is not None or not per_step:
            return
        self.calls += 1
        if not self.left:
            if self.current in per_step:
                self.last = per_step[self.current]
            return
        self.left -= 1
        for way, s in per_step.items():
            self.seconds[way].append(s)
        if self.left and min(map(len, self.seconds.values())) >= 2 and self._ratio() > self.clear:
            self.left = 0  # already clear: no need to pay for the slower way again
        if not self.left:
            self._decide(round)

    def _ratio(self) -> float:
        """The slower way's mean time per client step over the faster's, in the running probe."""
        mean = [sum(t) / len(t) for t in self.seconds.values()]
        return max(mean) / max(min(mean), 1e-12)

    def _other(self) -> str:
        return APART if self.current == TOGETHER else TOGETHER

    def _decide(self, round: int) -> None:
        mean = {way: sum(t) / len(t) for way, t in self.seconds.items() if t}
        first = not self.probes
        changed = False
        if len(mean) == 2:
            other = self._other()
            faster = min(mean, key=mean.__getitem__)
            if first or (faster == other and mean[other] < (1 - self.margin) * mean[self.current]):
                changed, self.current = faster != self.current, faster
            self.probes.append({"round": round, "seconds_per_client_step": {w: round_sig(s) for w, s in
                                                                            mean.items()}, "chosen": self.current})
        if len(mean) == 2 and self._ratio() > 2:
            self.interval = self.max_recheck
        elif changed or first:
            self.interval = self.first_recheck
        else:
            self.interval = min(2 * self.interval, self.max_recheck)
        self.next_probe = self.calls + self.interval
        self.last = None

    def record(self) -> dict:
        """For the sweep file: how the stack trains now, and every probe's timings."""
        return {"trains": self.current, **({"probes": self.probes} if self.fixed is None else {})}


def round_sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


class Stack:
    """Trains the cohorts of several runs through one executor, together or one run after another each round
    (`chooser`). See the module's docstring."""

    def __init__(self, size: int, chooser: StackChooser, clock: Callable[[], float] = time.perf_counter):
        self.turn = threading.Condition()
        self.members: list[_Member] = []
        self.running = set(range(size))
        self.pending: dict[int, tuple] = {}
        self.results: dict[int, object] = {}
        self.data = None  # the runs' client data, one CSR over all of them
        self.executor = None  # the real executor, built by the first run's setup
        self.threads: dict[str, object] = {}  # each way's ThreadChooser: one call per run has fewer clients
        self.chooser, self.clock = chooser, clock
        self.ways: set[str] = set()  # the ways it has trained
        self.stopping = False
        self.due: list[Callable[[], None]] = []  # work the runs handed to the main thread (`serve`)

    def factory(self, index: int, seed: int) -> Callable:
        """An `executor_factory` for run `index` (see fedsim.experiment.setup)."""
        def make(name, model, data, spec, algorithm, chunk, compile, threads):
            import numpy as np
            import torch

            from fedsim.engine.executors import make_executor
            from fedsim.engine.local import ClientData

            if self.data is None:
                self.data = ClientData(data.x, data.y, data.indices, np.asarray(data.offsets))
                self.executor = make_executor(name, model, self.data, spec, algorithm, chunk, compile, threads)
                self.threads = {TOGETHER: self.executor.threads, APART: copy.deepcopy(self.executor.threads)}
                rows = 0
            elif data.x is not self.data.x or data.y is not self.data.y:  # stack_key keeps such runs apart
                raise RuntimeError("runs of one stack must train on the same data tensors")
            else:
                rows = len(self.data.offsets) - 1
                self.data.indices = torch.cat([self.data.indices, data.indices])
                self.data.offsets = np.concatenate([self.data.offsets, self.data.offsets[-1] + data.offsets[1:]])
            member = _Member(self, index, rows, seed, {"momentum": spec.optimizer.momentum,
                                                       "weight_decay": spec.optimizer.weight_decay})
            self.members.append(member)
            return member

        return make

    def train(self, member: _Member, phases, jobs, round: int, lr: float):
        if self.stopping:
            raise KeyboardInterrupt
        for job in jobs:
            job.rows, job.seed, job.optimizer = member.rows + job.client, member.seed, {**member.optimizer, "lr": lr}
        if threading.current_thread() is threading.main_thread():  # inside `compute` (an evaluation's fine-tuning)
            self.executor.threads = self.threads[APART]
            return self.executor.train(phases, jobs, round, lr)
        self.pending[member.index] = (phases, jobs, round, lr)
        self._train_if_all_in()
        while member.index not in self.results:
            if self.stopping:
                raise KeyboardInterrupt
            self.turn.wait()
        result = self.results.pop(member.index)
        if isinstance(result, BaseException):
            raise result
        return result

    def compute(self, fn: Callable[[], object]):
        """`fn()` run on the main thread (see the module docstring), from a run's thread holding the turn."""
        box: list = []

        def job():
            try:
                box.append((True, fn()))
            except BaseException as e:  # noqa: BLE001  (raised in the run's thread)
                box.append((False, e))

        self.due.append(job)
        self.turn.notify_all()
        while not box:
            self.turn.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def serve(self, timeout: float) -> None:
        """On the main thread, holding the turn: the work the runs handed over, or a wait of up to `timeout`."""
        if not self.due:
            self.turn.wait(timeout)
        while self.due:
            self.due.pop(0)()
            self.turn.notify_all()

    def leave(self, index: int) -> None:
        """Run `index` has ended (finished, stopped or diverged): the others no longer wait for it."""
        self.running.discard(index)
        self.pending.pop(index, None)
        self._train_if_all_in()

    def stop(self) -> None:
        """Ctrl-C: every run stops at its next call (each checkpoints as `fedsim.run` does on Ctrl-C)."""
        self.stopping = True  # read without the turn too: set first, so that a run about to wait sees it
        with self.turn:
            self.turn.notify_all()

    def _train_if_all_in(self) -> None:
        if not self.pending or set(self.pending) != self.running:
            return
        batches, self.pending = dict(self.pending), {}
        by_round: dict[int, dict[int, tuple]] = {}  # a run evaluating (personalization's key) beside one training
        for index, args in batches.items():
            by_round.setdefault(args[2], {})[index] = args

        def train_all():
            for group in by_round.values():
                try:
                    self._train(group)
                except BaseException as e:  # noqa: BLE001  (every run of the call gets it; one line if FedsimError)
                    self.results.update(dict.fromkeys(group, e))

        self.due.append(train_all)
        self.turn.notify_all()

    def _train(self, batches: dict[int, tuple]) -> None:
        """One round of the runs in `batches` (run -> (phases, jobs, round, lr)): together, one run after another, or
        split (a probe); each job carries its run's learning rate."""
        round = next(iter(batches.values()))[2]
        way = self.chooser.next_way(len(batches)) if len(batches) > 1 else APART
        if way == SPLIT:
            first = dict([next(iter(batches.items()))])
            timings = {APART: self._call(APART, first),
                       TOGETHER: self._call(TOGETHER, {i: args for i, args in batches.items() if i not in first})}
        else:
            timings = {way: self._call(way, batches)}
        if len(batches) > 1:
            self.chooser.done(timings, round)

    def _call(self, way: str, batches: dict[int, tuple]) -> tuple[float, int]:
        """Train `batches` in one executor call (TOGETHER) or one per run (APART), each way on its own thread choice;
        the results go to `self.results`. Returns (seconds, client steps)."""
        self.executor.threads = self.threads[way]
        start = self.clock()
        if way == TOGETHER:
            phases, _, round, lr = next(iter(batches.values()))
            trained = iter(self.executor.train(phases, [job for args in batches.values() for job in args[1]],
                                               round, lr))
            results = {index: [next(trained) for _ in args[1]] for index, args in batches.items()}
        else:
            results = {index: self.executor.train(*args) for index, args in batches.items()}
        seconds = self.clock() - start
        self.results.update(results)
        self.ways.add(way)
        return seconds, sum(sum(r.steps) for rs in results.values() for r in rs)

    def record(self) -> dict:
        """For the sweep file: how the stack trains and why, and each way's thread count."""
        threads = {way: t.current for way, t in self.threads.items() if way in self.ways and t.adaptive}
        return {**self.chooser.record(), **({"threads": threads} if threads else {})}


@dataclass
class _Member:
    """What one run of a stack sees as its executor."""

    stack: Stack
    index: int
    rows: int  # where this run's clients start in the stack's data
    seed: int
    optimizer: dict  # its client optimizer's momentum and weight decay
    name: str = field(init=False)
    reason: str = field(init=False)
    threads: object = field(init=False)

    def __post_init__(self):
        real, chooser = self.stack.executor, self.stack.chooser
        self.name, self.threads = real.name, _OneThreadHere(real.threads)
        how = "trained together with the other runs of its sweep stack" if chooser.fixed == TOGETHER else \
            "trained together with the other runs of its sweep stack or one run after another, as timing chose " \
            "(the sweep file's stacks)"
        self.reason = f"{real.reason}; {how}"

    def train(self, phases, jobs, round, lr):
        return self.stack.train(self, phases, jobs, round, lr)

    def compute(self, fn):
        return self.stack.compute(fn)


class _OneThreadHere:
    """The executor's ThreadChooser as a run's thread sees it: its count applies where the stack computes (the main
    thread); `apply` in the run's own thread keeps torch there at one thread (no second OpenMP team)."""

    def __init__(self, chooser):
        self.chooser = chooser

    def __getattr__(self, name):
        return getattr(self.chooser, name)

    def apply(self) -> None:
        import torch

        torch.set_num_threads(1)
