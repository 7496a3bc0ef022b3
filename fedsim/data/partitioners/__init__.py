"""Partitioners: one small class per scheme, each turning a label array into one index array per client.

Every training sample goes to exactly one client, and all are called the same way::

    parts = DirichletPartitioner(num_clients=100, alpha=0.5, seed=0).split(labels)

Each `split` draws from its own `np.random.default_rng` keyed by (seed, scheme), never the global RNG,
so the same arguments always give the same split. Cheap argument checks happen in `__init__`,
data-dependent ones (more clients than samples, labels that cannot be satisfied) in `split`; both
raise a one-line `FedsimError` that names the parameter, its value and what to change.

Schemes (`--<scheme>` on the command line; names in `fedsim.data.schemes.SCHEMES`), one file each:

- `iid`: shuffle, then split as equally as possible (sizes differ by at most one).
- `dirichlet` ALPHA: label skew of NIID-Bench (Li et al., ICDE 2022, `noniid-labeldir`) and Flower's
  DirichletPartitioner: per class, client proportions ~ Dir(alpha), clients already holding
  >= N/num_clients samples get no more ("balance" trick), resampled (at most 100 times) until every
  client holds >= min_size samples.
- `shards` S: McMahan et al., AISTATS 2017: sort by label, cut into clients*S shards, each client
  gets S random shards.
- `labels` K: NIID-Bench `noniid-#labelK` (#C=K): client i holds label i mod C plus K-1 random labels;
  each label's samples are split equally among its holders.
- `quantity_skew` BETA: NIID-Bench `iid-diff-quantity`: client sizes ~ Dir(beta), labels IID.
- `natural`: the dataset's own per-device split (`Dataset.natural_train` / `natural_test`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.data.partitioners.base import Partitioner
from fedsim.data.partitioners.dirichlet import DirichletPartitioner
from fedsim.data.partitioners.iid import IidPartitioner
from fedsim.data.partitioners.labels import LabelPartitioner
from fedsim.data.partitioners.natural import NaturalPartitioner
from fedsim.data.partitioners.quantity_skew import QuantitySkewPartitioner
from fedsim.data.partitioners.shards import ShardPartitioner
from fedsim.data.schemes import SCHEME_DEFAULTS, SCHEMES
from fedsim.errors import FedsimError

__all__ = [
    "Partitioner", "IidPartitioner", "DirichletPartitioner", "ShardPartitioner", "LabelPartitioner",
    "QuantitySkewPartitioner", "NaturalPartitioner", "make_partitioner",
]


def make_partitioner(scheme: str = "iid", num_clients: int = 10, seed: int = 0, param=None,
                     min_size: int = 10, natural_train: Sequence[np.ndarray] | None = None) -> Partitioner:
    """The partitioner for a scheme name; `param` is alpha / S / K / beta (None: SCHEME_DEFAULTS)."""
    if scheme not in SCHEMES:
        raise FedsimError(f"unknown partition scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if param is None:
        param = SCHEME_DEFAULTS.get(scheme)
    elif scheme in ("iid", "natural"):
        raise FedsimError(f"the {scheme} scheme takes no parameter, got {param!r}")
    if scheme == "iid":
        return IidPartitioner(num_clients, seed)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_clients, param, seed, min_size)
    if scheme == "shards":
        return ShardPartitioner(num_clients, param, seed)
    if scheme == "labels":
        return LabelPartitioner(num_clients, param, seed)
    if scheme == "quantity_skew":
        return QuantitySkewPartitioner(num_clients, param, seed, min_size)
    if natural_train is None:
        raise FedsimError("this dataset has no natural per-device split: --natural works with the "
                          "synthetic dataset; choose another scheme")
    return NaturalPartitioner(natural_train, seed)
