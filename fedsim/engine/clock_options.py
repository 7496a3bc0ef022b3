"""The simulated clock's options, checked together (Config.validate calls this; it loads neither numpy nor torch).
What needs the clients (a profile per client, a trace's client ids, --concurrency against them) is checked when
the run is set up, before anything is written."""

from __future__ import annotations

from fedsim.engine.availability import parse_availability
from fedsim.engine.profiles import parse_distribution
from fedsim.errors import FedsimError

NEEDS_PROFILES = (("deadline", None), ("over_select", None), ("availability", "always"))


def clocked(config) -> bool:
    """A run is on the simulated clock when it gives client profiles."""
    return bool(config.speed or config.bandwidth or config.profiles)


def check_options(config, asynchronous: bool = False) -> None:
    """The clock's options together; `asynchronous`: the run's algorithm runs on the clock's event loop."""
    for name in ("speed", "bandwidth"):
        if getattr(config, name) is not None:
            parse_distribution(name, getattr(config, name))
    if config.profiles is not None and (config.speed or config.bandwidth):
        raise FedsimError("--profiles gives every client's speed and bandwidth: drop --speed and --bandwidth")
    parse_availability(config.availability)
    if not clocked(config):
        if asynchronous:
            raise FedsimError(f"{config.algo} runs on the simulated clock: give client profiles (--speed, "
                              "--bandwidth or --profiles)")
        for name, off in NEEDS_PROFILES:
            if getattr(config, name) != off:
                raise FedsimError(f"--{name.replace('_', '-')} runs on the simulated clock: give client profiles "
                                  "(--speed, --bandwidth or --profiles)")
