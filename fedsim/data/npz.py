"""An `.npz` file as a Dataset: arrays `x_train`, `y_train`, `x_test`, `y_test`, and optionally `client_train`,
`client_test` (one client id per sample: the natural split) and `num_classes` (a scalar), given to
`Dataset.from_tensors`. The file is read without pickle, so object arrays are refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("client_train", "client_test", "num_classes")


def load_npz(path: str | Path):
    from fedsim.data.datasets import Dataset

    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise FedsimError(f"{path} holds a single array, not an .npz archive of named arrays (np.savez)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FedsimError(f"cannot read {path} as an .npz file ({' '.join(str(e).split())[:200]})") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise FedsimError(f"{path} lacks {', '.join(missing)}: an .npz dataset holds {', '.join(REQUIRED_KEYS)} "
                          f"(and optionally {', '.join(OPTIONAL_KEYS)}); it holds {', '.join(arrays) or 'nothing'}")
    unknown = sorted(set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise FedsimError(f"{path} holds unknown array(s) {', '.join(unknown)}: known ones are "
                          f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    num_classes = arrays.pop("num_classes", None)
    if num_classes is not None:
        if num_classes.shape != () or not np.issubdtype(num_classes.dtype, np.integer):
            raise FedsimError(f"{path}: num_classes must be one integer, got {num_classes.dtype} {num_classes.shape}")
        num_classes = int(num_classes)
    splits = [arrays.pop(k) for k in REQUIRED_KEYS]
    dataset = Dataset.from_tensors(*splits, name=path.stem, num_classes=num_classes, **arrays)
    dataset.info["file"] = str(path.resolve())
    return dataset
