"""Datasets by name, loaded once into tensors (inputs float32 normalized, labels int64) on a device.

No DataLoader and no per-sample objects: a client is an index set into these tensors and a batch is
an index gather on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError


@dataclass
class Dataset:
    """One dataset as tensors. `x_*` are float32 (N, C, H, W) for images or (N, D) for vectors."""

    name: str
    x_train: object  # torch.Tensor
    y_train: object  # torch.Tensor (int64)
    x_test: object
    y_test: object
    num_classes: int
    # A dataset with its own per-device split (FedProx's Synthetic) gives it here: per client,
    # indices into the train split and into the test split. Used by the `natural` partition scheme.
    natural_train: list[np.ndarray] | None = None
    natural_test: list[np.ndarray] | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device) -> Dataset:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def default_data_dir() -> Path:
    return Path(os.environ.get("FEDSIM_DATA", "./data"))


def _load_digits(data_dir: Path, download: bool, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): needs no files.

    A fixed stratified split (every 5th sample of each class to test) keeps it reproducible.
    """
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    y = bunch.target.astype(np.int64)
    rank_in_class = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % 5 == 4
    x = torch.from_numpy(x).unsqueeze(1)
    y = torch.from_numpy(y)
    return Dataset("digits", x[~is_test], y[~is_test], x[is_test], y[is_test], num_classes=10)


# name -> loader(data_dir, download, **options) -> Dataset (on the CPU)
LOADERS = {
    "digits": _load_digits,
}


def dataset_names() -> list[str]:
    return list(LOADERS)


def load_dataset(name: str = "digits", data_dir: str | Path | None = None, device="cpu",
                 download: bool = False, **options) -> Dataset:
    """Load dataset `name` from `data_dir` (default `$FEDSIM_DATA` or `./data`) onto `device`."""
    if name not in LOADERS:
        raise FedsimError(f"unknown dataset {name!r}: choose one of {', '.join(LOADERS)}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return LOADERS[name](root, download, **options).to(device)
