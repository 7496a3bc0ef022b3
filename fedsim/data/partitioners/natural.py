"""The dataset's own per-device split (FedProx's Synthetic)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.data.partitioners.base import Partitioner
from fedsim.errors import FedsimError


class NaturalPartitioner(Partitioner):
    """The dataset's own per-device split, given as one index array per device (num_clients = devices).

    Checked on use: indices in range and every sample held by exactly one device.
    """

    name = "natural"

    def __init__(self, client_indices: Sequence[np.ndarray], seed: int = 0):
        super().__init__(len(client_indices), seed)
        self.client_indices = [np.asarray(ix, dtype=np.int64) for ix in client_indices]

    def _check_size(self, n_samples):
        pass  # the devices are given, whatever their number

    def _assign(self, labels, rng):
        owner = np.full(len(labels), -1, dtype=np.int64)
        flat = np.concatenate(self.client_indices) if self.client_indices else np.zeros(0, np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= len(labels)):
            raise FedsimError(f"the dataset's natural split has indices outside 0..{len(labels) - 1}")
        if len(flat) != len(labels) or len(np.unique(flat)) != len(flat):
            raise FedsimError(f"the dataset's natural split does not hold each of the {len(labels)} train "
                              f"samples exactly once ({len(flat)} indices, {len(np.unique(flat))} distinct)")
        owner[flat] = np.repeat(np.arange(self.num_clients), [len(ix) for ix in self.client_indices])
        return owner
