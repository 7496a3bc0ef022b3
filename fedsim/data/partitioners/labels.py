"""#C=K label skew: NIID-Bench's `noniid-#labelK` (Li et al., ICDE 2022)."""

from __future__ import annotations

import math

import numpy as np

from fedsim.data.partitioners.base import Partitioner, check_whole
from fedsim.errors import FedsimError


class LabelPartitioner(Partitioner):
    """#C=K label skew, NIID-Bench's `noniid-#labelK`: each client holds K distinct labels.

    Over the C labels present, client i holds label i mod C plus K-1 further distinct labels drawn
    at random. When fewer clients than labels leave a label unheld (possible only if clients < C), one
    random (client, label) pair whose label has another holder is switched to the unheld label, until
    every label is held; this keeps each client at exactly K labels. If clients * K < C some label
    cannot be held at all, and since every sample must go to one client that is a FedsimError (use
    more --labels or --clients). Each label's shuffled samples are split equally (array_split) among
    its holders, in random order. A client holding only labels with fewer samples than holders could
    end up empty: that is a FedsimError too. So a client has exactly K labels' samples whenever every
    label has at least as many samples as holders, and at most K always.
    """

    name = "labels"

    def __init__(self, num_clients: int, labels_per_client: int, seed: int = 0):
        super().__init__(num_clients, seed)
        self.labels_per_client = check_whole("labels per client (--labels)", labels_per_client, 1,
                                             "use e.g. --labels 2")

    def params(self):
        return {"labels": self.labels_per_client}

    def held_labels(self, num_classes: int, rng: np.random.Generator) -> np.ndarray:
        """A (clients x classes) boolean matrix: which label (rank among those present) each holds."""
        n, k, c = self.num_clients, self.labels_per_client, num_classes
        first = np.arange(n) % c
        keys = rng.random((n, c))
        keys[np.arange(n), first] = -1.0  # the client's own label comes first
        held = np.zeros((n, c), dtype=bool)
        np.put_along_axis(held, np.argsort(keys, axis=1)[:, :k], True, axis=1)
        holders = held.sum(axis=0)
        for unheld in np.flatnonzero(holders == 0):
            movable = held & (holders >= 2)
            movable[np.arange(n), first] = False
            pairs = np.argwhere(movable)  # never empty: see the class docstring
            client, label = pairs[rng.integers(len(pairs))]
            held[client, label], held[client, unheld] = False, True
            holders[label] -= 1
            holders[unheld] += 1
        return held

    def _assign(self, labels, rng):
        n, k = self.num_clients, self.labels_per_client
        classes, counts = np.unique(labels, return_counts=True)
        c = len(classes)
        if k > c:
            raise FedsimError(f"--labels {k} asks for more labels per client than the {c} classes present; "
                              f"use --labels {c} or fewer")
        if n * k < c:
            raise FedsimError(f"{n} clients x {k} labels cannot cover all {c} classes, and every sample must "
                              f"go to a client: use --labels {math.ceil(c / n)} or more, or more --clients")
        held = self.held_labels(c, rng)
        order = np.argsort(labels, kind="stable")
        owner = np.empty(len(labels), dtype=np.int64)
        for members, holders_ in zip(np.split(order, np.cumsum(counts)[:-1]), held.T, strict=True):
            holders_ = rng.permutation(np.flatnonzero(holders_))
            m = len(holders_)
            owner[rng.permutation(members)] = np.repeat(holders_, len(members) // m
                                                        + (np.arange(m) < len(members) % m))
        sizes = np.bincount(owner, minlength=n)
        if (sizes == 0).any():
            empty = int(np.flatnonzero(sizes == 0)[0])
            mine = ", ".join(str(classes[j]) for j in np.flatnonzero(held[empty]))
            raise FedsimError(f"--labels {k}: client {empty} gets no samples (its labels {mine} have fewer "
                              f"samples than clients holding them); use fewer --clients or more --labels")
        return owner
