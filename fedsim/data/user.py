"""The user's own data as a fedsim Dataset: tensors or arrays, any map-style torch Dataset, and a content hash.

    Dataset.from_tensors(x_train, y_train, x_test, y_test, name=..., client_train=None, client_test=None,
                         num_classes=None)
    Dataset.from_torch(train_ds, test_ds, name=..., batch_size=256)
    Dataset.fingerprint() -> sha256 hex of the tensors and the natural split (computed once)

Inputs become float32 as they are (no scaling: normalize them first if they are raw pixels); labels int64.
Client ids (one per sample, any integers or strings) become the dataset's natural split: the clients are the
distinct train ids in sorted order, client k = the k-th id (`info["client_ids"]`). With only train ids, the
natural scheme shares the test split out to the clients like the other schemes do (each client's test labels
follow its train labels); test ids must all appear among the train ids.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from fedsim.errors import FedsimError


def _as_tensor(name: str, what: str, value, dtype: torch.dtype) -> torch.Tensor:
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as e:
        raise FedsimError(f"dataset {name}: {what} must be a tensor or array, got {type(value).__name__} ({e})") \
            from None
    if dtype == torch.int64 and (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool):
        raise FedsimError(f"dataset {name}: {what} must hold integer class labels, got dtype {tensor.dtype}")
    if tensor.is_complex():  # converting would drop the imaginary parts without a word
        raise FedsimError(f"dataset {name}: {what} must hold real numbers, got dtype {tensor.dtype}: give the "
                          "real and imaginary parts as two features (torch.view_as_real)")
    tensor = tensor.detach().to("cpu", dtype)
    if tensor.is_floating_point() and tensor.dim() >= 1 and len(tensor):
        bad = ~torch.isfinite(tensor.reshape(len(tensor), -1)).all(dim=1)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise FedsimError(f"dataset {name}: {what} holds NaN or inf in {int(bad.sum())} sample(s), the first "
                              f"{what}[{first}]: remove or repair them")
    return tensor


def _client_ids(name: str, what: str, ids, n: int) -> np.ndarray:
    ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if ids.shape != (n,):
        raise FedsimError(f"dataset {name}: {what} must give one client id per sample, shape ({n},), got "
                          f"{ids.shape}")
    if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype.kind in "US"):
        raise FedsimError(f"dataset {name}: {what} must hold integers or strings, got dtype {ids.dtype}")
    return ids


def _natural_split(name: str, train_ids: np.ndarray, test_ids: np.ndarray | None):
    """(per-client train indices, per-client test indices or None, the ids in client order)."""
    clients, train_owner = np.unique(train_ids, return_inverse=True)
    # a stable sort keeps each client's samples in their original order
    order = np.argsort(train_owner, kind="stable")
    natural_train = np.split(order.astype(np.int64), np.cumsum(np.bincount(train_owner, minlength=len(clients)))[:-1])
    natural_test = None
    if test_ids is not None:
        if (test_ids.dtype.kind in "US") != (train_ids.dtype.kind in "US") and len(test_ids):
            raise FedsimError(f"dataset {name}: client_train holds {train_ids.dtype} ids but client_test "
                              f"{test_ids.dtype}: use the same kind of id")
        position = np.searchsorted(clients, test_ids)
        unknown = (position >= len(clients)) | (clients[np.minimum(position, len(clients) - 1)] != test_ids)
        if unknown.any():
            shown = ", ".join(map(str, np.unique(test_ids[unknown])[:3]))
            raise FedsimError(f"dataset {name}: client_test has ids no training sample has ({shown}): every "
                              f"test client must also be a train client")
        test_order = np.argsort(position, kind="stable")
        natural_test = np.split(test_order.astype(np.int64),
                                np.cumsum(np.bincount(position, minlength=len(clients)))[:-1])
    return natural_train, natural_test, [c.item() for c in clients]


def from_tensors(cls, x_train, y_train, x_test, y_test, *, name: str, client_train=None, client_test=None,
                 num_classes: int | None = None):
    """The Dataset for `Dataset.from_tensors` (see the module docstring); every problem is one FedsimError line."""
    if not isinstance(name, str) or not name.strip():
        raise FedsimError(f"a dataset needs a name (a non-empty string), got {name!r}")
    xs = [_as_tensor(name, w, v, torch.float32) for w, v in (("x_train", x_train), ("x_test", x_test))]
    ys = [_as_tensor(name, w, v, torch.int64) for w, v in (("y_train", y_train), ("y_test", y_test))]
    for split, x, y in (("train", xs[0], ys[0]), ("test", xs[1], ys[1])):
        if x.dim() < 2:
            raise FedsimError(f"dataset {name}: x_{split} must be (samples, ...features), got shape {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise FedsimError(f"dataset {name}: y_{split} must be ({len(x)},), one label per row of x_{split}, got "
                              f"shape {tuple(y.shape)}")
        if len(x) == 0:
            raise FedsimError(f"dataset {name}: the {split} split is empty")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise FedsimError(f"dataset {name}: train samples have shape {tuple(xs[0].shape[1:])} but test samples "
                          f"{tuple(xs[1].shape[1:])}")
    low = min(int(y.min()) for y in ys)
    high = max(int(y.max()) for y in ys)
    if num_classes is None:
        num_classes = high + 1
    elif not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise FedsimError(f"dataset {name}: num_classes must be a positive whole number, got {num_classes!r}")
    if low < 0 or high >= num_classes:
        raise FedsimError(f"dataset {name}: labels span {low}..{high}, expected 0..{num_classes - 1}")
    _check_classes(name, ys[0], ys[1])
    if client_train is None and client_test is not None:
        raise FedsimError(f"dataset {name}: client_test was given without client_train: give train ids too")
    natural_train = natural_test = None
    info = {}
    if client_train is not None:
        train_ids = _client_ids(name, "client_train", client_train, len(ys[0]))
        test_ids = None if client_test is None else _client_ids(name, "client_test", client_test, len(ys[1]))
        natural_train, natural_test, info["client_ids"] = _natural_split(name, train_ids, test_ids)
    return cls(name, xs[0], ys[0], xs[1], ys[1], num_classes=int(num_classes), natural_train=natural_train,
               natural_test=natural_test, info=info)


def _check_classes(name: str, y_train: torch.Tensor, y_test: torch.Tensor) -> None:
    """One training class is no classification task (FedsimError); a test class that no training sample has is
    allowed, but said (a warning line): the model can never predict it."""
    import warnings

    trained = torch.unique(y_train)
    if len(trained) < 2:
        raise FedsimError(f"dataset {name}: every training label is {int(trained[0])}: a classifier needs at least two "
                          "classes")
    unseen = sorted(set(torch.unique(y_test).tolist()) - set(trained.tolist()))
    if unseen:
        shown = ", ".join(map(str, unseen[:5])) + (", ..." if len(unseen) > 5 else "")
        warnings.warn(f"dataset {name}: test class(es) {shown} appear in no training sample: the model cannot "
                      "learn them", stacklevel=3)


# ------------------------------------------------------------------------------------- torch datasets


def available_memory() -> int:
    """Bytes of memory available now: psutil's estimate when installed, else the free physical pages."""
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return psutil.virtual_memory().available


def _first_sample(name: str, split: str, ds) -> tuple[torch.Tensor, int]:
    try:
        n = len(ds)
    except TypeError:
        raise FedsimError(f"dataset {name}: the {split} dataset has no len(): pass a map-style "
                          f"torch.utils.data.Dataset (not an IterableDataset)") from None
    if n == 0:
        raise FedsimError(f"dataset {name}: the {split} dataset is empty")
    sample = ds[0]
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise FedsimError(f"dataset {name}: {split} samples must be (input, label) pairs, got "
                          f"{type(sample).__name__}")
    x = sample[0]
    if type(x).__module__.startswith("PIL."):
        raise FedsimError(f"dataset {name}: {split} samples are PIL images: give the dataset "
                          f"transform=torchvision.transforms.ToTensor() (and a Normalize) so they are tensors")
    try:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise FedsimError(f"dataset {name}: {split} inputs must be tensors or arrays, got "
                          f"{type(sample[0]).__name__}") from None
    return x, n


def _materialize(name: str, split: str, ds, shape: torch.Size, n: int, batch_size: int, progress, task):
    """All of `ds` as (float32 inputs, int64 labels), read in batches into tensors allocated once."""
    from torch.utils.data import DataLoader

    x = torch.empty((n, *shape), dtype=torch.float32)
    y = torch.empty(n, dtype=torch.int64)
    start = 0
    try:
        for xb, yb in DataLoader(ds, batch_size=batch_size, shuffle=False):
            xb = torch.as_tensor(xb)
            if xb.shape[1:] != shape:
                raise FedsimError(f"dataset {name}: {split} inputs differ in shape ({tuple(shape)} and "
                                  f"{tuple(xb.shape[1:])}): make them one shape in the dataset's transform")
            x[start : start + len(xb)] = xb
            y[start : start + len(xb)] = torch.as_tensor(yb).reshape(-1)
            start += len(xb)
            if progress is not None:
                progress.advance(task, len(xb))
    except RuntimeError as e:  # default_collate stacking samples of different shapes
        raise FedsimError(f"dataset {name}: cannot batch the {split} samples ({' '.join(str(e).split())[:200]}); "
                          f"make every input one shape and every label an integer") from None
    return x, y


def from_torch(cls, train_ds, test_ds, *, name: str, batch_size: int = 256):
    """The Dataset for `Dataset.from_torch`: both map-style datasets read once, in order, into tensors.

    Refuses (FedsimError) when the first sample's float32 size times the number of samples exceeds the memory
    available; shows a progress bar on stderr when it is a terminal. `num_classes` is `len(train_ds.classes)`
    when the dataset has `classes` (torchvision's do), else the largest label + 1.
    """
    from rich.console import Console
    from rich.progress import Progress

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise FedsimError(f"dataset {name}: batch_size must be a positive whole number, got {batch_size!r}")
    (x0, n_train), (_, n_test) = _first_sample(name, "train", train_ds), _first_sample(name, "test", test_ds)
    need = x0.nbytes * (n_train + n_test)
    free = available_memory()
    if need > free:
        raise FedsimError(f"dataset {name}: {n_train + n_test:,} samples of {x0.nbytes:,} bytes need about "
                          f"{need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB of memory is available: use a "
                          f"smaller dataset or image size")
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"reading {name}", total=n_train + n_test)
        train = _materialize(name, "train", train_ds, x0.shape, n_train, batch_size, progress, task)
        test = _materialize(name, "test", test_ds, x0.shape, n_test, batch_size, progress, task)
    classes = getattr(train_ds, "classes", None)
    return from_tensors(cls, *train, *test, name=name, num_classes=len(classes) if classes else None)


# ------------------------------------------------------------------------------------------- the hash


def fingerprint(dataset) -> str:
    """sha256 (hex) of the four tensors (dtype, shape, bytes), num_classes and the natural split."""
    digest = hashlib.sha256()

    def add(array: np.ndarray) -> None:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)

    for key in ("x_train", "y_train", "x_test", "y_test"):
        add(getattr(dataset, key).detach().cpu().numpy())
    digest.update(f"classes={int(dataset.num_classes)}".encode())
    for key in ("natural_train", "natural_test"):
        split = getattr(dataset, key)
        digest.update(f"{key}={'none' if split is None else len(split)}".encode())
        for ix in split or ():
            add(np.asarray(ix, dtype=np.int64))
    return digest.hexdigest()
