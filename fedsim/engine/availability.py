"""When each client can train: --availability on the simulated clock.

    always              every client, at any time
    bernoulli:P         at each sampling moment (a synchronous round; an asynchronous dispatch) each client is
                        available with probability P, independently (keyed by (seed, round); FLGo's simplest
                        availability mode)
    diurnal:PERIOD,DUTY each client is available DUTY of every PERIOD seconds, at a phase drawn once per client
                        (keyed by (seed)): the day/night cycle of devices in many time zones (FedScale's traces
                        show it; Bonawitz et al. 2019, Fig. 4)
    FILE                a trace CSV `client,start,end`: each row a window [start, end) of simulated seconds in which
                        that client is available (FedScale's availability traces); a client without rows never is

The server samples only among the clients available when it samples, and a client that is not available until it
reports (its window or on-phase ends first) goes offline then and sends nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedsim.core import rng
from fedsim.engine.profiles import csv_client, csv_number, parse_spec, read_csv
from fedsim.errors import FedsimError

MODES = {"always": (), "bernoulli": ("P",), "diurnal": ("PERIOD", "DUTY")}
TRACE_COLUMNS = ["client", "start", "end"]


def parse_availability(text: str) -> tuple[str, tuple]:
    """(mode, its numbers) or ("trace", (path,)); the numbers checked. A trace file is read by `read_trace`."""
    if text.split(":")[0].split("(")[0].strip() not in MODES:
        return "trace", (text,)
    mode, v = parse_spec("availability", text, MODES)
    if mode == "bernoulli" and not 0 < v[0] <= 1:
        raise FedsimError(f"--availability {text!r}: P must be in (0, 1]")
    if mode == "diurnal" and not (v[0] > 0 and 0 < v[1] <= 1):
        raise FedsimError(f"--availability {text!r}: needs PERIOD > 0 seconds and DUTY in (0, 1]")
    return mode, v


def read_trace(path: str) -> dict[int, list[tuple[float, float]]]:
    """A trace CSV: client -> its windows, sorted; one line for a window that is empty or overlaps another."""
    windows: dict[int, list[tuple[float, float, int]]] = {}
    for line, (client, start, end) in read_csv(path, "--availability", TRACE_COLUMNS):
        client = csv_client(path, "--availability", line, client)
        start = csv_number(path, "--availability", line, "start", start)
        end = csv_number(path, "--availability", line, "end", end)
        if not 0 <= start < end:
            raise FedsimError(f"--availability {path} line {line}: a window needs 0 <= start < end (got {start:g}, "
                              f"{end:g})")
        windows.setdefault(client, []).append((start, end, line))
    for client, spans in windows.items():
        spans.sort()
        for (a, b, first), (c, _, second) in zip(spans, spans[1:], strict=False):
            if c < b:
                raise FedsimError(f"--availability {path}: client {client}'s windows overlap (line {first}: "
                                  f"[{a:g}, {b:g}), line {second} starts at {c:g}); merge them")
    return {c: [(a, b) for a, b, _ in spans] for c, spans in windows.items()}


@dataclass
class Availability:
    """Which clients are available at a simulated time (see the module docstring)."""

    text: str
    clients: int
    seed: int
    mode: str = field(init=False)
    numbers: tuple = field(init=False)
    phase: object = field(init=False, default=None)  # diurnal: each client's offset into the period
    windows: dict = field(init=False, default_factory=dict)  # trace: client -> sorted [(start, end)]

    def __post_init__(self):
        import numpy as np

        self.mode, self.numbers = parse_availability(self.text)
        if self.mode == "diurnal":
            self.phase = rng.keyed_rng(rng.AVAILABILITY, self.seed).uniform(0, self.numbers[0], self.clients)
        if self.mode == "trace":
            self.windows = read_trace(self.text)
            unknown = sorted(c for c in self.windows if c >= self.clients)
            if unknown:
                raise FedsimError(f"--availability {self.text}: client {unknown[0]} is not a client of this run "
                                  f"(0..{self.clients - 1})")
            self._starts = np.array(sorted(a for spans in self.windows.values() for a, _ in spans))

    @property
    def timed(self) -> bool:
        """Whether availability changes with time (and a client may go offline before it reports)."""
        return self.mode in ("diurnal", "trace")

    def available(self, clients, t: float, key: tuple[int, ...]):
        """The clients of `clients` (an int array) available at time `t`; `key` keys a Bernoulli draw (the
        round, and a dispatch moment's number)."""
        import numpy as np

        if self.mode == "always":
            return clients
        if self.mode == "bernoulli":  # one draw per client of the run, so a client's does not depend on who is asked
            return clients[rng.keyed_rng(rng.AVAILABILITY, self.seed, *key).random(self.clients)[clients]
                           < self.numbers[0]]
        if self.mode == "diurnal":
            period, duty = self.numbers
            return clients[(t + self.phase[clients]) % period < duty * period]
        return clients[np.array([self.until(int(c), t) > t for c in clients], dtype=bool)]

    def until(self, client: int, t: float) -> float:
        """When `client`, available at `t`, goes offline (inf: never); `t` itself where it is not available."""
        if self.mode == "diurnal":
            period, duty = self.numbers
            left = float(duty * period - (t + self.phase[client]) % period)
            return t + left if left > 0 else t
        if self.mode == "trace":
            for start, end in self.windows.get(client, ()):
                if start <= t < end:
                    return end
            return t
        return math.inf

    def next_start(self, t: float) -> float | None:
        """The first time after `t` at which some client comes online; None if none ever does (or the mode does not
        change with time)."""
        import numpy as np

        if self.mode == "diurnal":
            period = self.numbers[0]
            return float(t + (period - (t + self.phase) % period).min())
        if self.mode == "trace":
            later = self._starts[np.searchsorted(self._starts, t, side="right"):]
            return float(later[0]) if len(later) else None
        return None

    def wait(self, clients, t: float, key: tuple[int, ...]):
        """(the first time from `t` on at which some client of `clients` is available, those clients); at `t`, none,
        when none ever is again."""
        while True:
            available = self.available(clients, t, key)
            if len(available) or not self.timed:
                return t, available
            later = self.next_start(t)
            if later is None:
                return t, available
            t = max(later, math.nextafter(t, math.inf))  # rounding at a phase's edge must not stall the clock

    def record(self) -> dict:
        out = {"mode": self.mode, "value": self.text}
        if self.mode == "trace":
            out.update(clients_with_windows=len(self.windows), windows=sum(len(w) for w in self.windows.values()))
        return out

    def digest(self, hasher) -> None:
        hasher.update(f"{self.mode}:{self.numbers if self.mode != 'trace' else ''};".encode())
        for client in sorted(self.windows):
            hasher.update(f"{client}:{self.windows[client]};".encode())
