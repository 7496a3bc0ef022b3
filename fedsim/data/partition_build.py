"""Building a dataset's partition: run a scheme on the train labels, give each client a test slice.

`build_partition` is what `fedsim partition` and a run without `--partition` use; `partition_for_config`
chooses between a saved file and a built partition for a run. Test slices: the test split shared out
so each client's test labels follow its train labels (`split_test_like`), or a fraction of each
client's own samples held out (`hold_out`, PFLlib style).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.data.partition import EXTENSION, Partition, load_partition
from fedsim.data.partitioners import make_partitioner
from fedsim.data.partitioners.base import as_labels, owners_to_csr, partition_rng
from fedsim.data.schemes import SCHEME_DEFAULTS
from fedsim.errors import FedsimError

DEFAULT_CLIENTS = 10


# --- client test slices ------------------------------------------------------------------------

def _test_owner_like(train_owner: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray,
                     n: int, seed: int) -> np.ndarray:
    rng = partition_rng(seed, "partition/test-slices")
    num_classes = int(max(train_labels.max(initial=-1), test_labels.max(initial=-1))) + 1
    keep = train_owner >= 0
    counts = np.bincount(train_owner[keep] * num_classes + train_labels[keep],
                         minlength=n * num_classes).reshape(n, num_classes)
    owner = np.empty(len(test_labels), dtype=np.int64)
    order = np.argsort(test_labels, kind="stable")
    bounds = np.searchsorted(test_labels[order], np.arange(num_classes + 1))
    clients = np.arange(n)
    for k in range(num_classes):
        members = rng.permutation(order[bounds[k]:bounds[k + 1]])
        total = len(members)
        if total == 0:
            continue
        weight = counts[:, k]
        whole = int(weight.sum())
        if whole == 0:  # no client trains on this class: spread it uniformly
            share = np.full(n, total // n, dtype=np.int64)
            share[rng.permutation(n)[: total % n]] += 1
        else:  # proportional to train counts, largest remainder (exact integers; ties at random)
            numer = weight * total
            share, rest = numer // whole, numer % whole
            left = total - int(share.sum())
            if left:
                share[np.lexsort((rng.random(n), -rest))[:left]] += 1
        owner[members] = np.repeat(clients, share)
    return owner


def split_test_like(train_parts: Sequence[np.ndarray], train_labels, test_labels,
                    seed: int = 0) -> list[np.ndarray]:
    """Split the test split among clients so each client's test labels follow its train labels.

    Per class c, the test samples of c are shuffled and split among clients in proportion to their
    train counts of c (largest-remainder rounding), so every test sample goes to exactly one client
    and a client with no train samples of c gets no test samples of c. A test class no client trains
    on is spread uniformly over all clients.
    """
    train_labels, test_labels = as_labels(train_labels), as_labels(test_labels)
    n = len(train_parts)
    owner = np.full(len(train_labels), -1, dtype=np.int64)
    for c, ix in enumerate(train_parts):
        owner[np.asarray(ix, dtype=np.int64)] = c
    index, offsets = owners_to_csr(_test_owner_like(owner, train_labels, test_labels, n, seed), n)
    return np.split(index, offsets[1:-1])


def _hold_out_owner(train_owner: np.ndarray, fraction: float, n: int, seed: int):
    rng = partition_rng(seed, "partition/hold-out")
    sizes = np.bincount(train_owner, minlength=n)
    n_test = np.floor(fraction * sizes + 0.5).astype(np.int64)
    n_test = np.minimum(n_test, np.maximum(sizes - 1, 0))  # every non-empty client keeps a train sample
    order = np.lexsort((rng.random(len(train_owner)), train_owner))  # grouped by client, random inside
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.empty(len(train_owner), dtype=np.int64)
    rank[order] = np.arange(len(train_owner)) - starts[train_owner[order]]
    held = rank < n_test[train_owner]
    return np.where(held, -1, train_owner), np.where(held, train_owner, -1)


def hold_out(train_parts: Sequence[np.ndarray], fraction: float,
             seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out `fraction` of each client's own samples as its test slice (PFLlib style).

    Each client's test size is round(fraction * size), at most size - 1, drawn at random; returns
    (train parts, test parts), both indexing the same (train) split.
    """
    fraction = check_client_test_fraction(fraction)
    n = len(train_parts)
    size = sum(len(ix) for ix in train_parts)
    owner = np.full(size, -1, dtype=np.int64)
    for c, ix in enumerate(train_parts):
        owner[np.asarray(ix, dtype=np.int64)] = c
    train_owner, test_owner = _hold_out_owner(owner, fraction, n, seed)
    (a, ao), (b, bo) = owners_to_csr(train_owner, n), owners_to_csr(test_owner, n)
    return np.split(a, ao[1:-1]), np.split(b, bo[1:-1])


def check_client_test_fraction(fraction) -> float:
    """The fraction as a float, or a FedsimError unless 0 < fraction < 1."""
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise FedsimError(f"--client-test-fraction must be a number, got {fraction!r}") from None
    if not 0 < fraction < 1:
        raise FedsimError(f"--client-test-fraction must be between 0 and 1 (exclusive), got {fraction:g}; "
                          f"use e.g. 0.25")
    return fraction


# --- building a partition of a dataset ---------------------------------------------------------

def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_partition_path(dataset: str, scheme: str = "iid", num_clients: int = 10, seed: int = 0,
                           param=None, min_size: int = 10, client_test_fraction: float | None = None,
                           out_dir: str | Path = "results") -> Path:
    """`<out_dir>/partitions/<dataset>-<scheme><param>-<clients>c-seed<seed>.fsp`.

    e.g. `results/partitions/mnist-dirichlet0.5-100c-seed0.fsp`; a non-default --min-size (schemes that
    use it) adds `-min<m>` and --client-test-fraction adds `-ctf<F>`, so different splits never share
    a name.
    """
    if param is None:
        param = SCHEME_DEFAULTS.get(scheme)
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset).strip("_")  # synthetic(0.5,0.5) -> synthetic_0.5_0.5
    name = f"{dataset}-{scheme}{_fmt(param) if param is not None else ''}-{num_clients}c-seed{seed}"
    if scheme in ("dirichlet", "quantity_skew") and min_size != 10:
        name += f"-min{min_size}"
    if client_test_fraction is not None:
        name += f"-ctf{_fmt(float(client_test_fraction))}"
    return Path(out_dir) / "partitions" / (name + EXTENSION)


def default_num_clients(dataset) -> int:
    """The number of clients when none is given: the dataset's devices if it has them, else 10."""
    natural = getattr(dataset, "natural_train", None)
    return len(natural) if natural is not None else DEFAULT_CLIENTS


def build_partition(dataset, scheme: str = "iid", num_clients: int | None = None, seed: int = 0, param=None,
                    min_size: int = 10, client_test_fraction: float | None = None) -> Partition:
    """Partition `dataset`'s train split with `scheme` and give each client a test slice.

    `param` is the scheme's parameter (dirichlet alpha, shards S, labels K, quantity_skew beta; None:
    SCHEME_DEFAULTS). Test slices: the test split shared out so each client's test labels follow its
    train labels (`split_test_like`), or, with `client_test_fraction` F, F of each client's own
    train samples held out (`hold_out`; then `meta["client_test_source"] == "train"`). For
    `natural`, the clients are the dataset's devices and the test slices its `natural_test` (when it has
    one). `num_clients` None: `default_num_clients(dataset)`.
    """
    from fedsim.version import __version__

    natural_train = getattr(dataset, "natural_train", None)
    if num_clients is None:
        num_clients = default_num_clients(dataset)
    elif scheme == "natural" and natural_train is not None and num_clients != len(natural_train):
        raise FedsimError(f"--natural uses the dataset's own {len(natural_train)} devices as clients, not "
                          f"--clients {num_clients}: leave --clients out")
    partitioner = make_partitioner(scheme, num_clients, seed, param, min_size, natural_train=natural_train)
    fraction = check_client_test_fraction(client_test_fraction) if client_test_fraction is not None else None
    y_train, y_test = as_labels(dataset.y_train), as_labels(dataset.y_test)
    n = partitioner.num_clients
    owner = partitioner.assign(y_train)
    natural_test = getattr(dataset, "natural_test", None)
    if fraction is not None:
        train_owner, test_owner = _hold_out_owner(owner, fraction, n, seed)
        (tr, tro), (te, teo) = owners_to_csr(train_owner, n), owners_to_csr(test_owner, n)
    elif scheme == "natural" and natural_test is not None:
        tr, tro = owners_to_csr(owner, n)
        if len(natural_test) != n:
            raise FedsimError(f"the dataset's natural split has {n} train devices but {len(natural_test)} "
                              f"test devices")
        parts = [np.asarray(ix, dtype=np.int64) for ix in natural_test]
        te = np.concatenate([np.sort(ix) for ix in parts]) if parts else np.zeros(0, np.int64)
        teo = np.concatenate(([0], np.cumsum([len(ix) for ix in parts]))).astype(np.int64)
    else:
        tr, tro = owners_to_csr(owner, n)
        te, teo = owners_to_csr(_test_owner_like(owner, y_train, y_test, n, seed), n)
    meta = {
        "dataset": dataset.name,
        # the data's content, where the dataset can hash it (a fedsim Dataset): a partition of other data is refused
        "dataset_sha256": dataset.fingerprint() if hasattr(dataset, "fingerprint") else None,
        "num_train": len(y_train),
        "num_test": len(y_test),
        "num_classes": int(dataset.num_classes),
        "scheme": scheme,
        "params": partitioner.params(),
        "seed": partitioner.seed,
        "client_test_source": "train" if fraction is not None else "test",
        "client_test_fraction": fraction,
        "fedsim_version": __version__,
    }
    return Partition(tr, tro, te, teo, meta)


def scheme_for(config, dataset) -> tuple[str, float | int | None]:
    """`config.scheme`, except that a dataset with its own devices defaults to `natural`, not `iid`."""
    scheme, param = config.scheme
    if scheme == "iid" and not config.iid and getattr(dataset, "natural_train", None) is not None:
        return "natural", None
    return scheme, param


def partition_for_config(config, dataset) -> Partition:
    """The partition a run uses: `config.partition`'s file (checked against `dataset`), else one built
    from the scheme options (`scheme_for`, `clients`, `min_size`, `client_test_fraction`,
    `partition_seed`, which defaults to `seed`)."""
    scheme, param = config.scheme
    if config.partition:
        if (scheme, param) != ("iid", None) or config.iid:
            raise FedsimError(f"give --partition or a partition scheme (--{scheme.replace('_', '-')}), "
                              f"not both")
        part = load_partition(config.partition)
        part.check_matches(dataset)
        if config.clients is not None and config.clients != part.num_clients:
            raise FedsimError(f"partition file {config.partition} has {part.num_clients} clients, not "
                              f"--clients {config.clients}: leave --clients out or make another partition")
        return part
    scheme, param = scheme_for(config, dataset)
    seed = config.partition_seed if config.partition_seed is not None else config.seed
    return build_partition(dataset, scheme, config.clients, seed, param, config.min_size,
                           config.client_test_fraction)
