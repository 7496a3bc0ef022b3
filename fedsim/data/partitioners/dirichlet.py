"""Label skew p_k ~ Dir(alpha): NIID-Bench's `noniid-labeldir` (Li et al., ICDE 2022), Flower's DirichletPartitioner."""

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


class DirichletPartitioner(Partitioner):
    """Label skew p_k ~ Dir(alpha), as NIID-Bench's `noniid-labeldir` and Flower's DirichletPartitioner.

    For each class, client proportions are drawn from Dir(alpha); clients already holding at least
    N/num_clients samples get a proportion of zero and so none of the class (NIID-Bench's "balance"
    trick; NIID-Bench's cut can still hand the last such client a sample from rounding, fedsim's
    does not); the class's shuffled samples are cut by the renormalised cumulative proportions. The
    whole draw is repeated, at most `max_tries` times, until every client holds at least `min_size`
    samples, then a FedsimError reports the smallest size reached. Small alpha: few labels per
    client; large alpha: close to IID. Vectorised per class: 10,000 clients on 60,000 samples take
    milliseconds per try.
    """

    name = "dirichlet"

    def __init__(self, num_clients: int, alpha: float, seed: int = 0, min_size: int = 10,
                 max_tries: int = MAX_TRIES):
        super().__init__(num_clients, seed)
        self.alpha = check_positive("Dirichlet alpha (--dirichlet)", alpha,
                                    "use e.g. --dirichlet 0.5 (smaller = more skewed)")
        self.min_size = check_whole("minimum client size (--min-size)", min_size, 0, "use --min-size 0 or more")
        self.max_tries = check_whole("max_tries", max_tries, 1, "use 1 or more")

    def params(self):
        return {"alpha": self.alpha, "min_size": self.min_size}

    def _assign(self, labels, rng):
        n, size = self.num_clients, len(labels)
        check_min_size_possible(size, n, self.min_size, f"--dirichlet {self.alpha:g}")
        order = np.argsort(labels, kind="stable")
        by_class = np.split(order, np.flatnonzero(np.diff(labels[order])) + 1)
        cap = size / n
        clients = np.arange(n)
        smallest = -1
        for _ in range(self.max_tries):
            owner = np.empty(size, dtype=np.int64)
            sizes = np.zeros(n, dtype=np.int64)
            left = size
            for members in by_class:
                members = rng.permutation(members)
                p = dirichlet_proportions(rng, self.alpha, n) * (sizes < cap)
                total = p.sum()
                if total > 0:
                    counts = cut_counts(p / total, len(members))
                else:  # every eligible proportion underflowed to 0 (tiny alpha): the limit is one-hot
                    counts = np.zeros(n, dtype=np.int64)
                    counts[rng.choice(np.flatnonzero(sizes < cap))] = len(members)
                owner[members] = np.repeat(clients, counts)
                sizes += counts
                left -= len(members)
                # Too few samples left to lift every small client to min_size: redraw now (after one
                # complete draw, whose smallest client the error message reports).
                if smallest >= 0 and np.maximum(self.min_size - sizes, 0).sum() > left:
                    break
            else:
                if sizes.min() >= self.min_size:
                    return owner
                smallest = max(smallest, int(sizes.min()))
        raise FedsimError(
            f"Dirichlet split with alpha={self.alpha:g} over {n} clients: no draw in {self.max_tries} tries "
            f"gave every client >= {self.min_size} samples (the smallest client reached {smallest}); "
            f"use a larger --dirichlet alpha, fewer --clients or a lower --min-size")
