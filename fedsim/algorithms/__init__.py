"""The algorithm shelf: name -> class, and every algorithm's options as each declares them (its `Params`).

Each file states only how it differs from FedAvg. Algorithm modules load torch only inside the functions that
compute, so `algorithm_options()` (the CLI's --help, Config's fields) reads every declaration quickly.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from dataclasses import dataclass

from fedsim.errors import FedsimError

ALGORITHMS = {
    "fedavg": "fedsim.algorithms.fedavg:FedAvg",
    "fedprox": "fedsim.algorithms.fedprox:FedProx",
    "scaffold": "fedsim.algorithms.scaffold:Scaffold",
    "fednova": "fedsim.algorithms.fednova:FedNova",
    "fedavgm": "fedsim.algorithms.serveropt:FedAvgM",
    "fedadagrad": "fedsim.algorithms.serveropt:FedAdagrad",
    "fedyogi": "fedsim.algorithms.serveropt:FedYogi",
    "fedadam": "fedsim.algorithms.serveropt:FedAdam",
    "fedbn": "fedsim.algorithms.fedbn:FedBN",
    "fedper": "fedsim.algorithms.fedper:FedPer",
    "fedrep": "fedsim.algorithms.fedrep:FedRep",
    "ditto": "fedsim.algorithms.ditto:Ditto",
    "fedas": "fedsim.algorithms.fedas:FedAS",
    "moon": "fedsim.algorithms.moon:MOON",
    "feddyn": "fedsim.algorithms.feddyn:FedDyn",
    "lgfedavg": "fedsim.algorithms.lgfedavg:LGFedAvg",
    "fedbabu": "fedsim.algorithms.fedbabu:FedBABU",
    "apfl": "fedsim.algorithms.apfl:APFL",
    "peravg": "fedsim.algorithms.peravg:PerFedAvg",
    "pfedme": "fedsim.algorithms.pfedme:PFedMe",
    "fedala": "fedsim.algorithms.fedala:FedALA",
    "fedproto": "fedsim.algorithms.fedproto:FedProto",
    "fedrod": "fedsim.algorithms.fedrod:FedRoD",
    "fedfomo": "fedsim.algorithms.fedfomo:FedFomo",
    "fedamp": "fedsim.algorithms.fedamp:FedAMP",
    "apple": "fedsim.algorithms.apple:APPLE",
    "feddbe": "fedsim.algorithms.feddbe:FedDBE",
    "fedbuff": "fedsim.algorithms.fedbuff:FedBuff",
    "fedasync": "fedsim.algorithms.fedasync:FedAsync",
    "fedgen": "fedsim.algorithms.fedgen:FedGen",
    "feddistill": "fedsim.algorithms.feddistill:FedDistill",
    "fedcp": "fedsim.algorithms.fedcp:FedCP",
    "gpfl": "fedsim.algorithms.gpfl:GPFL",
}


def algorithm_class(name: str):
    if name not in ALGORITHMS:
        raise FedsimError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class AlgorithmOption:
    """One algorithm option as its algorithms declare it (several may share it, e.g. --server-lr)."""

    name: str  # the Config field; the CLI option is --name with dashes
    type: type
    defaults: dict[str, object]  # algorithm -> its default
    helps: dict[str, str]  # algorithm -> its help text
    ranges: dict[str, object]  # algorithm -> its Range

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def default(self):
        """The Config default: the declared one where every algorithm agrees, else None (each its own)."""
        values = set(self.defaults.values())
        return values.pop() if len(values) == 1 else None

    @property
    def help(self) -> str:
        """`algos: help (default d)` for each distinct help text, joined by '; '."""
        by_text: dict[tuple[str, object], list[str]] = {}
        for algo, text in self.helps.items():
            by_text.setdefault((text, self.defaults[algo]), []).append(algo)
        return "; ".join(f"{', '.join(algos)}: {text} (default {default:g})" if isinstance(default, float)
                         else f"{', '.join(algos)}: {text} (default {default})"
                         for (text, default), algos in by_text.items())


@functools.cache
def algorithm_options() -> dict[str, AlgorithmOption]:
    """Every algorithm option, by name, collected from the algorithms' `Params` declarations."""
    found: dict[str, AlgorithmOption] = {}
    for algo in ALGORITHMS:
        params = algorithm_class(algo).Params
        hints = typing.get_type_hints(params)
        for f in dataclasses.fields(params):
            option = found.setdefault(f.name, AlgorithmOption(f.name, hints[f.name], {}, {}, {}))
            if option.type is not hints[f.name]:
                raise TypeError(f"{algo} declares option {f.name} as {hints[f.name]}, others as {option.type}")
            option.defaults[algo] = f.default
            option.helps[algo] = f.metadata["help"]
            option.ranges[algo] = f.metadata["range"]
    return found


def options_of(algo: str) -> frozenset[str]:
    """The names of the options algorithm `algo` reads beyond the general ones (FedProx: mu)."""
    return frozenset(f.name for f in dataclasses.fields(algorithm_class(algo).Params))


def per_client_options(algo: str) -> frozenset[str]:
    """The options `algo` hands its phases in each client's ctx (declared `per_client`): runs of a sweep that
    differ only in them train together."""
    return frozenset(f.name for f in dataclasses.fields(algorithm_class(algo).Params) if f.metadata["per_client"])


def algorithms_help() -> str:
    """One line naming every algorithm with its own options, the personalized ones apart."""
    def entry(algo: str) -> str:
        own = sorted(options_of(algo))
        return algo + (f" ({', '.join('--' + o.replace('_', '-') for o in own)})" if own else "")

    personalized = [a for a in ALGORITHMS if algorithm_class(a).personalized]
    shared = [a for a in ALGORITHMS if a not in personalized]
    return (" | ".join(entry(a) for a in shared) + " | personalized, on a base/head split (--head, --freeze-base): "
            + " | ".join(entry(a) for a in personalized) + ".")


def message_table() -> str:
    """A markdown table of what each algorithm's clients send (its `sends` declarations) and so which channel
    stages take it: differential privacy and robust reducers need every field summed, central DP and robust
    reducers a cohort of updates (fedsim.core.channel). The
    docs hold this table as generated (scripts/channel_table.py prints it; a test compares)."""
    from fedsim.core.channel import PER_CLIENT, SAMPLES, UNIFORM

    def summed(name, spec) -> str:
        weight = {SAMPLES: "by samples", UNIFORM: "uniform"}.get(spec.weight, f"by `{spec.weight}`")
        return f"`{name}` ({weight}{', an update' if spec.centered else ''})"

    lines = ["| `--algo` | summed fields (mean weighting) | per-client fields | DP, robust `--aggregate` |",
             "|---|---|---|---|"]
    for algo in ALGORITHMS:
        sends = algorithm_class(algo).sends
        per = [f"`{name}`" for name, spec in sends.items() if spec.kind == PER_CLIENT]
        total = ", ".join(summed(name, spec) for name, spec in sends.items() if spec.kind != PER_CLIENT)
        cls = algorithm_class(algo)  # one that applies each update alone has no cohort to hide it or compare
        channel = "refused" if per else "local DP only" if cls.single_update else "yes"
        lines.append(f"| {algo} | {total or '–'} | {', '.join(per) or '–'} | {channel} |")
    return "\n".join(lines)
