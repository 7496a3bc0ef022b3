"""Summaries of a partition: per-client label counts and the numbers `fedsim partition` prints."""

from __future__ import annotations

import numpy as np

from fedsim.data.partition import Partition


def label_counts(partition: Partition, dataset, split: str = "train") -> np.ndarray:
    """(clients x classes) label counts of a partition's train or test slices on `dataset`."""
    source = dataset.y_train if split == "train" or partition.meta.get("client_test_source") == "train" \
        else dataset.y_test
    return partition.label_counts(source, dataset.num_classes, split)


def partition_stats(counts: np.ndarray) -> dict:
    """Summary of a (clients x classes) count matrix.

    Sizes (min / median / max / mean, number of empty clients), labels per client (distinct labels
    with at least one sample: mean / min / max), and the mean over non-empty clients of the total
    variation distance between the client's label mix and the global one (0 = identical mixes, i.e.
    IID; 1 = disjoint).
    """
    counts = np.asarray(counts)
    sizes = counts.sum(axis=1)
    held = (counts > 0).sum(axis=1)
    total = counts.sum(axis=0)
    nonempty = sizes > 0
    if nonempty.any() and total.sum() > 0:
        mix = counts[nonempty] / sizes[nonempty, None]
        tv = 0.5 * np.abs(mix - total / total.sum()).sum(axis=1)
        mean_tv = float(tv.mean())
    else:
        mean_tv = 0.0
    return {
        "clients": int(len(sizes)),
        "samples": int(sizes.sum()),
        "min_size": int(sizes.min()) if len(sizes) else 0,
        "median_size": float(np.median(sizes)) if len(sizes) else 0.0,
        "max_size": int(sizes.max(initial=0)),
        "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
        "empty_clients": int((~nonempty).sum()),
        "mean_labels": float(held.mean()) if len(held) else 0.0,
        "min_labels": int(held.min()) if len(held) else 0,
        "max_labels": int(held.max(initial=0)),
        "mean_tv": mean_tv,
    }
