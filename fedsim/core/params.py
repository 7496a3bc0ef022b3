"""How an algorithm declares its options once: a frozen `Params` dataclass whose fields are `option(...)`s.

A field's name is the option's name everywhere: `mu` is `--mu`, the Config field `mu` and the TOML key `mu`.
Its default, help and range live in the declaration only; `fedsim.algorithms.algorithm_options()` collects
them, and the Config fields, the CLI options and their help, validation, and which options `compare` and a
sweep consider an algorithm's own all derive from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fedsim.errors import FedsimError


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; None leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"


def option(default, help: str, *, low=None, high=None, low_open=False, high_open=False, per_client=False,
           choices: tuple[str, ...] = ()):
    """A Params field: its default, its --help text, and the range its values must lie in, or for a text option
    its `choices` (checked on use). `per_client`: the algorithm hands the value to its phases in each client's ctx
    (a tensor), not in the phase functions, so a sweep trains runs that differ only in it together
    (fedsim.sweep)."""
    return dataclasses.field(default=default, metadata={"help": help, "per_client": per_client, "choices": choices,
                                                        "range": Range(low, high, low_open, high_open)})


def check_value(name: str, value, allowed: Range) -> None:
    """A number that is not finite or lies outside `allowed`: one line naming the option (`--name`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value) or value not in allowed:
        raise FedsimError(f"--{name.replace('_', '-')} must be {allowed} (got {value})")


@dataclass(frozen=True)
class Params:
    """The base of every algorithm's options: values are checked against their declared ranges."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            check_value(f.name, value, f.metadata["range"])
            if choices and value not in choices:
                raise FedsimError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)} (got {value!r})")

    @classmethod
    def from_config(cls, config) -> Params:
        """The algorithm's options from a Config; a value left at None there means the declared default."""
        given = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in given.items() if v is not None})
