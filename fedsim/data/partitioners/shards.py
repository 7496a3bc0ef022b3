"""Pathological non-IID shards (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

import numpy as np

from fedsim.data.partitioners.base import Partitioner, check_whole
from fedsim.errors import FedsimError


class ShardPartitioner(Partitioner):
    """McMahan et al. 2017's pathological non-IID split: sort by label, cut into shards, deal them out.

    Samples are sorted by label (stable: ties keep index order) and cut into num_clients * S
    contiguous shards whose sizes differ by at most one, so the remainder N mod (clients * S) is spread
    over the first shards instead of dropped. Each client gets S shards chosen at random, so its size
    is N / clients give or take S. With MNIST, 100 clients and S=2: 200 shards of 300, two per client.
    """

    name = "shards"

    def __init__(self, num_clients: int, shards_per_client: int, seed: int = 0):
        super().__init__(num_clients, seed)
        self.shards_per_client = check_whole("shards per client (--shards)", shards_per_client, 1,
                                             "use e.g. --shards 2")

    def params(self):
        return {"shards": self.shards_per_client}

    def _assign(self, labels, rng):
        n, s, size = self.num_clients, self.shards_per_client, len(labels)
        num_shards = n * s
        if size < num_shards:
            raise FedsimError(f"{n} clients x {s} shards = {num_shards} shards, but only {size} samples: "
                              f"use fewer --shards or fewer --clients")
        shard_sizes = size // num_shards + (np.arange(num_shards) < size % num_shards)
        shard_owner = np.empty(num_shards, dtype=np.int64)
        shard_owner[rng.permutation(num_shards)] = np.repeat(np.arange(n), s)
        owner = np.empty(size, dtype=np.int64)
        owner[np.argsort(labels, kind="stable")] = np.repeat(shard_owner, shard_sizes)
        return owner
