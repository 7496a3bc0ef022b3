"""Client profiles for the simulated clock: each client's compute speed and bandwidth.

As FedScale's device profiles (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated
Learning at Scale", ICML 2022, arXiv:2105.11367), each client gets, once for the run,

    speed       samples per second of local training (--speed DIST)
    up, down    bits per second it sends and receives at (--bandwidth DIST: one draw for both directions)

or all three from a CSV (--profiles FILE, header `client,samples_per_s,up_bps,down_bps`, one row per client of
the partition). DIST is `lognormal:MU,SIGMA` (exp of N(MU, SIGMA²): MU = ln of the median), `uniform:A,B` or
`constant:V`; `lognormal(MU,SIGMA)` is the same (a sweep's comma-separated values keep it whole). A part not
given costs no time (no --bandwidth: transfers are instant). Draws are keyed by (seed): client c gets the c-th
value of its generator, so the profiles are the seed's whatever else changes.

The option checks here (Config.validate calls them) load neither numpy nor torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from fedsim.core import rng
from fedsim.errors import FedsimError

DISTRIBUTIONS = {"lognormal": ("MU", "SIGMA"), "uniform": ("A", "B"), "constant": ("V",)}
PROFILE_COLUMNS = ["client", "samples_per_s", "up_bps", "down_bps"]


def parse_spec(option: str, text: str, kinds: dict[str, tuple[str, ...]]) -> tuple[str, tuple[float, ...]]:
    """`NAME:X,Y` or `NAME(X,Y)` -> (NAME, (X, Y)), NAME one of `kinds` with as many numbers as it names."""
    match = re.fullmatch(r"\s*([a-z]+)\s*(?::(.*)|\((.*)\))?\s*", text)
    name = match.group(1) if match else None
    if name not in kinds:
        forms = ", ".join(f"{k}:{','.join(v)}" if v else k for k, v in kinds.items())
        raise FedsimError(f"--{option} {text!r}: write one of {forms}")
    body = match.group(2) if match.group(2) is not None else match.group(3)
    try:
        numbers = tuple(float(v) for v in body.split(",")) if body else ()
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != len(kinds[name]) or not all(math.isfinite(v) for v in numbers):
        form = f"{name}:{','.join(kinds[name])}" if kinds[name] else name
        hint = f" (in a sweep, where commas separate values, {name}({','.join(kinds[name])}))" if \
            len(kinds[name]) > 1 else ""
        raise FedsimError(f"--{option} {text!r}: write {form} with finite numbers{hint}")
    return name, numbers


def parse_distribution(option: str, text: str) -> tuple[str, tuple[float, ...]]:
    """A DIST value, checked: every value it can draw is a positive rate."""
    name, v = parse_spec(option, text, DISTRIBUTIONS)
    if (name == "lognormal" and v[1] < 0) or (name == "uniform" and not 0 < v[0] <= v[1]) or \
            (name == "constant" and v[0] <= 0):
        need = {"lognormal": "SIGMA >= 0", "uniform": "0 < A <= B", "constant": "V > 0"}[name]
        raise FedsimError(f"--{option} {text!r}: {name} needs {need} (a rate must be positive)")
    return name, v


def draw(text: str, option: str, purpose: int, seed: int, clients: int):
    """`clients` values of distribution `text`, keyed by (purpose, seed)."""
    import numpy as np

    name, v = parse_distribution(option, text)
    generator = rng.keyed_rng(purpose, seed)
    if name == "lognormal":
        return generator.lognormal(v[0], v[1], clients)
    if name == "uniform":
        return generator.uniform(v[0], v[1], clients)
    return np.full(clients, v[0])


def read_profiles(path: str) -> dict[int, tuple[float, float, float]]:
    """A profiles CSV: client -> (samples_per_s, up_bps, down_bps), every value a positive number."""
    rows = read_csv(path, "--profiles", PROFILE_COLUMNS)
    out: dict[int, tuple[float, float, float]] = {}
    for line, (client, *values) in rows:
        client = csv_client(path, "--profiles", line, client)
        numbers = []
        for column, value in zip(PROFILE_COLUMNS[1:], values, strict=True):
            number = csv_number(path, "--profiles", line, column, value)
            if number <= 0:
                raise FedsimError(f"--profiles {path} line {line}: {column} must be positive (got {value})")
            numbers.append(number)
        if client in out:
            raise FedsimError(f"--profiles {path} line {line}: client {client} has a second row")
        out[client] = tuple(numbers)
    return out


def read_csv(path: str, option: str, header: list[str]) -> list[tuple[int, list[str]]]:
    """The rows of a small CSV with exactly `header`, with their line numbers."""
    import csv

    try:
        with open(path, newline="") as f:
            lines = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if row]
    except (OSError, UnicodeDecodeError) as e:
        raise FedsimError(f"{option} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not lines or [c.strip() for c in lines[0][1]] != header:
        raise FedsimError(f"{option} {path}: the first line must be the header {','.join(header)}")
    for i, row in lines[1:]:
        if len(row) != len(header):
            raise FedsimError(f"{option} {path} line {i}: {len(row)} values, the header has {len(header)}")
    return lines[1:]


def csv_client(path: str, option: str, line: int, text: str) -> int:
    try:
        client = int(text)
    except ValueError:
        client = -1
    if client < 0:
        raise FedsimError(f"{option} {path} line {line}: client must be a client id >= 0 (got {text!r})")
    return client


def csv_number(path: str, option: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FedsimError(f"{option} {path} line {line}: {column} must be a finite number (got {text!r})")
    return value


@dataclass(frozen=True)
class Profiles:
    """Each client's rates (arrays indexed by client; inf where the run gives none: that part takes no time)."""

    speed: object  # samples per second
    up: object  # bits per second
    down: object
    source: str  # where they come from, for the run record

    @classmethod
    def from_options(cls, speed: str | None, bandwidth: str | None, profiles: str | None, seed: int,
                     clients: int) -> Profiles:
        import numpy as np

        if profiles is not None:
            table = read_profiles(profiles)
            unknown = sorted(c for c in table if c >= clients)
            if unknown:
                raise FedsimError(f"--profiles {profiles}: client {unknown[0]} is not a client of this run "
                                  f"(0..{clients - 1})")
            missing = [c for c in range(clients) if c not in table]
            if missing:
                raise FedsimError(f"--profiles {profiles} has no row for client {missing[0]} ({len(missing)} "
                                  f"missing): it needs one row per client, 0..{clients - 1}")
            values = np.array([table[c] for c in range(clients)], dtype=np.float64)
            return cls(values[:, 0], values[:, 1], values[:, 2], f"--profiles {Path(profiles).name}")
        none = np.full(clients, np.inf)
        rate = draw(speed, "speed", rng.SPEED, seed, clients) if speed else none
        bits = draw(bandwidth, "bandwidth", rng.BANDWIDTH, seed, clients) if bandwidth else none
        given = [f"--{k} {v}" for k, v in (("speed", speed), ("bandwidth", bandwidth)) if v]
        return cls(rate, bits, bits, " ".join(given) + f" (seed {seed})")

    def record(self) -> dict:
        """Their source and, per rate, min / median / max over the clients (inf: not simulated)."""
        import numpy as np

        def summary(values):
            return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}

        return {"source": self.source, "samples_per_s": summary(self.speed), "up_bps": summary(self.up),
                "down_bps": summary(self.down)}

    def digest(self, hasher) -> None:
        for values in (self.speed, self.up, self.down):
            hasher.update(values.astype("<f8").tobytes())
