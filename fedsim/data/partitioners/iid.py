"""IID: shuffle, then equal sizes (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

import numpy as np

from fedsim.data.partitioners.base import Partitioner


class IidPartitioner(Partitioner):
    """Shuffle, then split as equally as possible: client sizes differ by at most one."""

    name = "iid"

    def _assign(self, labels, rng):
        n, size = self.num_clients, len(labels)
        owner = np.empty(size, dtype=np.int64)
        owner[rng.permutation(size)] = np.repeat(np.arange(n), size // n + (np.arange(n) < size % n))
        return owner
