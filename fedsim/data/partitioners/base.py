"""The interface every partitioner shares, and the array helpers the schemes and test slices use."""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod

import numpy as np

from fedsim.errors import FedsimError

MAX_TRIES = 100  # resampling bound of the schemes with a minimum client size


def partition_rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator of its own for (seed, purpose): schemes and test slices never share a stream."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def check_whole(name: str, value, low: int, hint: str) -> int:
    """`value` as an int >= `low`, or a FedsimError naming the parameter and what to change."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FedsimError(f"{name} must be a whole number, got {value!r}; {hint}")
    if value < low:
        raise FedsimError(f"{name} must be at least {low}, got {value}; {hint}")
    return int(value)


def check_positive(name: str, value, hint: str) -> float:
    """`value` as a finite float > 0, or a FedsimError naming the parameter and what to change."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise FedsimError(f"{name} must be a number, got {value!r}; {hint}") from None
    if not (value > 0 and math.isfinite(value)):
        raise FedsimError(f"{name} must be a positive number, got {value:g}; {hint}")
    return value


def check_min_size_possible(size: int, n: int, min_size: int, option: str) -> None:
    if size < n * min_size:
        raise FedsimError(f"{option}: {n} clients x --min-size {min_size} needs {n * min_size} samples, but "
                          f"there are {size}; use fewer --clients or a lower --min-size")


def as_labels(labels) -> np.ndarray:
    """A 1-D int64 numpy array of labels >= 0 from an array or a tensor, or a FedsimError."""
    if hasattr(labels, "detach"):  # a torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FedsimError(f"labels must be a 1-D array, got shape {labels.shape}")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise FedsimError(f"labels must be integers, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise FedsimError(f"labels must be >= 0, got {labels.min()}")
    return labels.astype(np.int64, copy=False)


def owners_to_csr(owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR arrays (indices sorted within each client, offsets) from a client id per sample (-1: none)."""
    where = np.flatnonzero(owner >= 0)
    clients = owner[where]
    index = where[np.argsort(clients, kind="stable")].astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(clients, minlength=n), out=offsets[1:])
    return index, offsets


def cut_counts(proportions: np.ndarray, total: int) -> np.ndarray:
    """Counts per client from proportions summing to 1, cut as NIID-Bench does: int(cumsum * total).

    Unlike NIID-Bench, everything from the last client with a positive proportion on is cut at
    `total`: otherwise a cumsum that rounds to just under 1 hands the rest (a sample or so) to the
    last client even when its proportion is 0, as a Dirichlet client at its cap.
    """
    cuts = np.minimum((np.cumsum(proportions) * total).astype(np.int64)[:-1], total)
    cuts[np.flatnonzero(proportions)[-1]:] = total
    return np.diff(np.concatenate(([0], cuts, [total])))


def dirichlet_proportions(rng: np.random.Generator, concentration: float, n: int) -> np.ndarray:
    return np.nan_to_num(rng.dirichlet(np.full(n, concentration)))  # NaN: underflow at tiny alpha


class Partitioner(ABC):
    """Splits a label array among `num_clients` clients; subclasses implement `_assign`.

    `split(labels)` returns, per client, the sorted int64 indices into `labels` it holds; every
    sample is held by exactly one client. `assign(labels)` gives the same as one client id per sample.
    """

    name = "?"

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = check_whole("number of clients (--clients)", num_clients, 1, "use --clients 1 or more")
        self.seed = check_whole("seed (--seed)", seed, 0, "use a seed of 0 or more")

    def split(self, labels) -> list[np.ndarray]:
        index, offsets = owners_to_csr(self.assign(labels), self.num_clients)
        return np.split(index, offsets[1:-1])

    def assign(self, labels) -> np.ndarray:
        """The client id of each sample (int64 array as long as `labels`)."""
        labels = as_labels(labels)
        self._check_size(len(labels))
        owner = self._assign(labels, partition_rng(self.seed, "partition/" + self.name))
        assert owner.shape == labels.shape and owner.min(initial=0) >= 0
        return owner.astype(np.int64, copy=False)

    def _check_size(self, n_samples: int) -> None:
        if n_samples < self.num_clients:
            raise FedsimError(f"cannot split {n_samples} samples among {self.num_clients} clients: "
                              f"use --clients {n_samples} or fewer")

    @abstractmethod
    def _assign(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the client id of each sample."""

    def params(self) -> dict:
        """The scheme's parameters, as stored in the partition file's metadata."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(num_clients={self.num_clients}{', ' if args else ''}{args}, " \
               f"seed={self.seed})"
