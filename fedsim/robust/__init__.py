"""Robust aggregation (--aggregate) and attacks by malicious clients (--malicious-fraction, --attack).

Both sit beside the algorithms and import only fedsim.core: an aggregator is the channel's reducer in place of
the weighted mean (aggregators.py); an attack poisons a malicious client's labels before training, or is the
channel's stage that changes what it sends (attacks.py); see fedsim.core.channel.
experiment.py installs them. This file holds the names and the checks of the options; like config.py, which
calls `check_options`, it loads neither torch nor numpy.
"""

from __future__ import annotations

from fedsim.errors import FedsimError

AGGREGATES = ("mean", "median", "trimmed-mean", "krum", "multi-krum")
ATTACKS = ("label-flip", "sign-flip", "gaussian", "scale")
MODEL_ATTACKS = ("sign-flip", "gaussian", "scale")  # change the sent model; label-flip poisons the training data
DEFAULT_TRIM_FRACTION = 0.1
DEFAULT_ATTACK_SCALE = 4.0  # sign-flip by 4: 20% attackers cancel the others' mean update


def check_options(config) -> None:
    """The robustness options' choices and combinations, before anything is loaded: one line naming the option.
    (Ranges are in config.RANGES; what needs the cohort size or the algorithm is checked by `check_setup`.)"""
    if config.aggregate not in AGGREGATES:
        raise FedsimError(f"unknown --aggregate {config.aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    if config.attack is not None and config.attack not in ATTACKS:
        raise FedsimError(f"unknown --attack {config.attack!r}: choose one of {', '.join(ATTACKS)}")
    for name, value, users in (("trim_fraction", config.trim_fraction, ("trimmed-mean",)),
                               ("krum_f", config.krum_f, ("krum", "multi-krum")),
                               ("krum_m", config.krum_m, ("multi-krum",))):
        if value is not None and config.aggregate not in users:
            raise FedsimError(f"--{name.replace('_', '-')} is for --aggregate {' or '.join(users)} "
                              f"(not {config.aggregate})")
    if config.malicious_fraction > 0 and config.attack is None:
        raise FedsimError(f"--malicious-fraction {config.malicious_fraction:g} needs an --attack: "
                          f"{', '.join(ATTACKS)}")
    if config.attack is not None and config.malicious_fraction == 0:
        raise FedsimError(f"--attack {config.attack} needs --malicious-fraction above 0")
    if config.attack_scale is not None and config.attack not in MODEL_ATTACKS:
        raise FedsimError(f"--attack-scale is for --attack {', '.join(MODEL_ATTACKS)} "
                          f"(not {config.attack or 'none'})")


def krum_f(f: int | None, n: int) -> int:
    """The f Krum assumes among n clients: the one given, else the most Krum tolerates (n >= 2f + 3)."""
    return (n - 3) // 2 if f is None else f


def check_setup(config, cohort_size: int, eligible: int) -> None:
    """What needs the cohort size: one line naming the option and what to change. (Which algorithms a reducer
    takes follows from their messages: fedsim.core.channel.)"""
    n = cohort_size
    if config.aggregate != "mean":
        if config.aggregate in ("krum", "multi-krum"):
            f = krum_f(config.krum_f, n)
            if n < 2 * f + 3 or f < 0:
                needs = f"at least {2 * f + 3} clients per round for --krum-f {f}" if config.krum_f is not None \
                    else "at least 3 clients per round"
                raise FedsimError(f"--aggregate {config.aggregate} needs {needs} (Blanchard et al.: n >= 2f + 3); "
                                  f"this run has {n}: raise --fraction or --min-clients, or lower --krum-f")
            if config.krum_m is not None and config.krum_m > n:
                raise FedsimError(f"--krum-m {config.krum_m} is more than the {n} clients per round")
    if config.malicious_fraction > 0 and malicious_count(config.malicious_fraction, eligible) == 0:
        raise FedsimError(f"--malicious-fraction {config.malicious_fraction:g} of {eligible} clients makes none "
                          "malicious: raise it")


def malicious_count(fraction: float, clients: int) -> int:
    """fraction x clients, rounded half up."""
    return int(fraction * clients + 0.5)
