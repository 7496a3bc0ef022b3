"""Quantity skew q ~ Dir(beta): NIID-Bench's `iid-diff-quantity` (Li et al., ICDE 2022)."""

from __future__ import annotations

import numpy as np

from fedsim.data.partitioners.base import (
    MAX_TRIES,
    Partitioner,
    check_min_size_possible,
    check_positive,
    check_whole,
    cut_counts,
    dirichlet_proportions,
)
from fedsim.errors import FedsimError


class QuantitySkewPartitioner(Partitioner):
    """Quantity skew q ~ Dir(beta), NIID-Bench's `iid-diff-quantity`: unequal sizes, IID labels.

    A random permutation of the samples is cut by proportions ~ Dir(beta), redrawn (at most
    `max_tries` times) until every client holds at least `min_size` samples.
    """

    name = "quantity_skew"

    def __init__(self, num_clients: int, beta: float, seed: int = 0, min_size: int = 10,
                 max_tries: int = MAX_TRIES):
        super().__init__(num_clients, seed)
        self.beta = check_positive("quantity-skew beta (--quantity-skew)", beta,
                                   "use e.g. --quantity-skew 0.5 (smaller = more unequal sizes)")
        self.min_size = check_whole("minimum client size (--min-size)", min_size, 0, "use --min-size 0 or more")
        self.max_tries = check_whole("max_tries", max_tries, 1, "use 1 or more")

    def params(self):
        return {"beta": self.beta, "min_size": self.min_size}

    def _assign(self, labels, rng):
        n, size = self.num_clients, len(labels)
        check_min_size_possible(size, n, self.min_size, f"--quantity-skew {self.beta:g}")
        perm = rng.permutation(size)
        smallest = -1
        for _ in range(self.max_tries):
            p = dirichlet_proportions(rng, self.beta, n)
            if p.sum() <= 0:
                continue
            counts = cut_counts(p / p.sum(), size)
            if counts.min() >= self.min_size:
                owner = np.empty(size, dtype=np.int64)
                owner[perm] = np.repeat(np.arange(n), counts)
                return owner
            smallest = max(smallest, int(counts.min()))
        raise FedsimError(
            f"quantity-skew split with beta={self.beta:g} over {n} clients: no draw in {self.max_tries} tries "
            f"gave every client >= {self.min_size} samples (the smallest client reached {smallest}); "
            f"use a larger --quantity-skew beta, fewer --clients or a lower --min-size")
