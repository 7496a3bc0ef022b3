"""The algorithm shelf: name -> class, imported on use. Each file states only how it differs from FedAvg."""

from __future__ import annotations

import importlib

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
}


def algorithm_class(name: str):
    if name not in ALGORITHMS:
        raise FedsimError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
