"""Datasets by name, loaded once into tensors (inputs float32 normalized, labels int64) on a device.

No DataLoader and no per-sample objects: a client is an index set into these tensors and a batch is
an index gather on the device.

Datasets: `digits` (embedded, needs no files); `mnist`, `fashion-mnist`, `emnist` (balanced split,
47 classes), `cifar10`, `cifar100` read from torchvision's layout under the data folder, `.gz` idx files
included, never writing there (`download=True` fetches missing files with torchvision); `synthetic`,
`synthetic(ALPHA,BETA)`, `synthetic-iid`: FedProx's generator, with its own per-device split; `shakespeare`,
`femnist`, `celeba`, `sent140`: LEAF's tasks with their natural splits (shakespeare.py, leaf.py); `agnews`: text
classification (agnews.py, text.py); `hf:NAME[:CONFIG]`: a Hugging Face dataset (hf.py).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
import zlib
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
    # A text dataset's token ids (fedsim/data/text.py's Vocabulary): the text models size their embedding by it.
    vocabulary: object = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @classmethod
    def from_tensors(cls, x_train, y_train, x_test, y_test, *, name: str, client_train=None, client_test=None,
                     num_classes: int | None = None) -> Dataset:
        """A dataset from tensors or arrays; per-sample client ids (any integers or strings) give its natural
        split, clients in sorted id order (`info["client_ids"]`). See fedsim/data/user.py."""
        from fedsim.data.user import from_tensors

        return from_tensors(cls, x_train, y_train, x_test, y_test, name=name, client_train=client_train,
                            client_test=client_test, num_classes=num_classes)

    @classmethod
    def from_torch(cls, train_ds, test_ds, *, name: str, batch_size: int = 256) -> Dataset:
        """A dataset from two map-style torch Datasets of (input, label), read into tensors once."""
        from fedsim.data.user import from_torch

        return from_torch(cls, train_ds, test_ds, name=name, batch_size=batch_size)

    def fingerprint(self) -> str:
        """sha256 (hex) of the tensors, num_classes and natural split: names the data in run records."""
        if self._fingerprint is None:
            from fedsim.data.user import fingerprint

            self._fingerprint = fingerprint(self)
        return self._fingerprint

    def to(self, device) -> Dataset:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def default_data_dir() -> Path:
    return Path(os.environ.get("FEDSIM_DATA", "./data"))


def _load_digits(data_dir: Path, download: bool, normalize: str | None = None, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): needs no files.

    Read as `sklearn.datasets.load_digits` reads it (`datasets/data/digits.csv.gz`: 64 pixel columns,
    then the label), without importing sklearn: `sklearn.datasets` alone takes over a second to import.
    A fixed stratified split (every 5th sample of each class to test: 1,442 train / 355 test) keeps it
    reproducible. Pixels (0..16) are scaled to [-1, 1] unless `normalize` says otherwise ("standard": the
    train pixels' mean and std, "unit": [0, 1]).
    """
    import importlib.util

    import torch

    sklearn = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if sklearn is None:
        raise FedsimError("the digits dataset is the one bundled with scikit-learn: pip install scikit-learn")
    path = Path(sklearn.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
    except OSError as e:
        raise FedsimError(f"cannot read scikit-learn's digits file {path}: {e.strerror or e}") from None
    pixels = table[:, :-1].reshape(-1, 8, 8) / 16.0
    y = table[:, -1].astype(np.int64)
    rank_in_class = np.zeros(len(y), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % 5 == 4
    own = (pixels[~is_test].mean(),), (pixels[~is_test].std(),)
    (mean,), (std,) = _scaling(normalize or "symmetric", *own)
    x = ((pixels - mean) / std).astype(np.float32)
    x = torch.from_numpy(x).unsqueeze(1)
    y = torch.from_numpy(y)
    return Dataset("digits", x[~is_test], y[~is_test], x[is_test], y[is_test], num_classes=10)


# --------------------------------------------------------------------------------------------------
# Image datasets in torchvision's on-disk layout, read without torchvision's loaders
# --------------------------------------------------------------------------------------------------
#
# The files are read here, not through torchvision's dataset classes, because those classes
#   * want the decompressed idx files (download=False) or write them next to the `.gz` files
#     (download=True), so a read-only folder holding only `raw/*.gz` cannot be used, and
#   * check the MD5 of every CIFAR batch, so a small or re-packed copy cannot be used.
# The layout (folder and file names) is exactly torchvision's, and `download=True` calls torchvision's
# own class to fetch whatever is missing. tests/test_datasets.py checks these names against torchvision.
#
# Normalization: x = (pixel / 255 - mean) / std per channel, the usual per-dataset constants
# (mean and std over all training pixels):
#   MNIST          mean 0.1307                    std 0.3081
#   Fashion-MNIST  mean 0.2860                    std 0.3530
#   EMNIST bal.    mean 0.1751                    std 0.3332
#   CIFAR-10       mean (0.4914, 0.4822, 0.4465)  std (0.2470, 0.2435, 0.2616)
#   CIFAR-100      mean (0.5071, 0.4865, 0.4409)  std (0.2673, 0.2564, 0.2762)
# (CIFAR stds are the std over all pixels, not the often-copied (0.2023, 0.1994, 0.2010), which is the
# mean of per-image stds.) That is `normalize="standard"`, the default; papers often feed other ranges:
# "symmetric" is [-1, 1] (pixel / 127.5 - 1, PFLlib's MNIST), "unit" is [0, 1] (pixel / 255, McMahan et al.).
NORMALIZATIONS = ("standard", "symmetric", "unit")


def _scaling(mode: str | None, mean: tuple[float, ...], std: tuple[float, ...]):
    """The (mean, std) that `_normalize` uses for `mode` (None: "standard", the dataset's own mean and std)."""
    channels = len(mean)
    return {None: (mean, std), "standard": (mean, std), "symmetric": ((0.5,) * channels, (0.5,) * channels),
            "unit": ((0.0,) * channels, (1.0,) * channels)}[mode]


@dataclass(frozen=True)
class _ImageSpec:
    name: str                       # fedsim's name
    tv_class: str                   # torchvision.datasets class used for --download
    folder: str                     # under data_dir, as torchvision lays it out
    train: tuple[str, ...]          # idx: (images, labels); cifar: batch files
    test: tuple[str, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str = "idx"               # "idx" (MNIST family) or "cifar" (python pickles)
    label_key: str = "labels"       # cifar: key of the labels in each batch
    tv_kwargs: tuple = ()           # extra arguments of the torchvision class, as (key, value) pairs
    also_in: tuple[str, ...] = ()   # sub-folders of `folder` searched as well

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test


# torchvision.datasets.MNIST.resources (minus .gz), and its `<root>/<ClassName>/raw/` folder.
_MNIST_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
# torchvision.datasets.EMNIST: EMNIST/raw/emnist-{split}-{train,test}-{images-idx3,labels-idx1}-ubyte
# (split "balanced" here). Its download unzips NIST's gzip.zip into raw/gzip/ and extracts every .gz
# into raw/, so a hand-unzipped copy (raw/gzip/*.gz) is searched too.
_EMNIST_FILES = tuple((f"emnist-balanced-{s}-images-idx3-ubyte", f"emnist-balanced-{s}-labels-idx1-ubyte")
                      for s in ("train", "test"))

_IMAGE_SPECS = {
    spec.name: spec for spec in (
        _ImageSpec("mnist", "MNIST", "MNIST/raw", *_MNIST_FILES, 10, (0.1307,), (0.3081,)),
        _ImageSpec("fashion-mnist", "FashionMNIST", "FashionMNIST/raw", *_MNIST_FILES, 10,
                   (0.2860,), (0.3530,)),
        _ImageSpec("emnist", "EMNIST", "EMNIST/raw", *_EMNIST_FILES, 47, (0.1751,), (0.3332,),
                   tv_kwargs=(("split", "balanced"),), also_in=("gzip",)),
        # torchvision.datasets.CIFAR10/CIFAR100: base_folder, train_list, test_list
        _ImageSpec("cifar10", "CIFAR10", "cifar-10-batches-py",
                   tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), 10,
                   (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), kind="cifar"),
        _ImageSpec("cifar100", "CIFAR100", "cifar-100-python", ("train",), ("test",), 100,
                   (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), kind="cifar",
                   label_key="fine_labels"),
    )
}


def _find(spec: _ImageSpec, folder: Path, filename: str) -> Path | None:
    """The file itself, else its `.gz` (idx files only), in `folder` or its `also_in` sub-folders."""
    for where in (folder, *(folder / sub for sub in spec.also_in)):
        for candidate in (filename, filename + ".gz") if spec.kind == "idx" else (filename,):
            if (where / candidate).is_file():
                return where / candidate
    return None


def _missing_error(spec: _ImageSpec, root: Path, folder: Path, missing: list[str]) -> FedsimError:
    gz = "[.gz]" if spec.kind == "idx" else ""
    top = spec.folder.split("/")[0]
    if len(missing) == len(spec.files):
        shown = ", ".join(f + gz for f in missing[:2]) + (", ..." if len(missing) > 2 else "")
        what = f"no files found in {folder} (expected {shown})"
    else:
        what = f"missing {', '.join(f + gz for f in missing)} in {folder}"
    # A common slip: --data-dir pointing at MNIST/ or MNIST/raw/ instead of the folder that holds MNIST/.
    parts = Path(spec.folder).parts
    for depth in range(1, len(parts) + 1):
        inside = root.joinpath(*parts[depth:])
        if _find(spec, inside, spec.files[0]) is not None:
            if Path(*root.parts[-depth:]) == Path(*parts[:depth]):
                fix = (f"{inside} holds them: pass --data-dir {root.parents[depth - 1]} "
                       f"(the folder that holds {top}/)")
            else:
                fix = (f"{inside} holds them: move them to <folder>/{spec.folder}/ and pass --data-dir "
                       f"<folder>")
            return FedsimError(f"dataset {spec.name}: {what}; {fix}")
    return FedsimError(f"dataset {spec.name}: {what}; pass --data-dir to the folder that holds "
                       f"{top}/ (torchvision's layout), or --download to fetch it")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _corrupt(spec: _ImageSpec, path: Path, detail: str) -> FedsimError:
    return FedsimError(f"dataset {spec.name}: {path} is corrupt or truncated ({detail}); replace it with a "
                       f"good copy, or delete it and pass --download")


def _tv_download(spec: _ImageSpec, root: Path) -> None:
    """Fetch the missing files with torchvision's own class (it writes under `root`)."""
    try:
        import torchvision.datasets as tvd

        getattr(tvd, spec.tv_class)(str(root), train=True, download=True, **dict(spec.tv_kwargs))
    except Exception as e:  # URLError, RuntimeError (no mirror answered, bad MD5), OSError (read-only)...
        raise FedsimError(f"dataset {spec.name}: download into {root} failed ({_one_line(e)}); check the "
                          f"network, or put the files in {root / spec.folder} yourself and pass --data-dir "
                          f"{root}") from e


def _read_idx(spec: _ImageSpec, path: Path, ndim: int) -> np.ndarray:
    """An idx file (raw or .gz) of unsigned bytes with `ndim` dimensions, as a read-only uint8 array."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(spec, path, _one_line(e)) from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise _corrupt(spec, path, "not an idx file: bad magic number")
    if data[2] != 0x08 or data[3] != ndim:
        raise _corrupt(spec, path, f"expected unsigned bytes in {ndim} dimension(s), header says type "
                                   f"0x{data[2]:02x} in {data[3]} dimension(s)")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise _corrupt(spec, path, "header cut short")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - start != math.prod(shape):
        raise _corrupt(spec, path, f"header says {'x'.join(map(str, shape))} = {math.prod(shape)} bytes, "
                                   f"file holds {len(data) - start}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: dicts, lists, strings and numpy arrays, nothing that runs code."""

    _ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a data file")
        if module.startswith("numpy.core."):  # pickles made by numpy 1.x
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_cifar_batch(spec: _ImageSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: (images uint8 (n, 3, 32, 32), labels int64 (n,))."""
    try:
        with open(path, "rb") as f:
            # latin1 as torchvision does, for the python-2 pickles of the original files
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... all mean a damaged file
        raise _corrupt(spec, path, f"cannot unpickle: {_one_line(e, 120)}") from e
    if not isinstance(entry, dict):
        raise _corrupt(spec, path, f"expected a dict, found {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or spec.label_key not in entry:
        raise _corrupt(spec, path, f"expected keys 'data' and {spec.label_key!r}, found "
                                   f"{', '.join(map(repr, entry)) or 'none'}")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[spec.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(spec, path, f"'data' should be uint8 of shape (n, 3072), found {data.dtype} "
                                   f"{data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(spec, path, f"{len(data)} images but labels of shape {labels.shape}")
    # rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32: reshape gives (N, C, H, W)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]):
    """uint8 (N, C, H, W) -> float32 tensor (pixel / 255 - mean) / std, by a 256-entry lookup per channel."""
    import torch

    lut = ((np.arange(256, dtype=np.float64)[None, :] / 255.0 - np.asarray(mean)[:, None])
           / np.asarray(std)[:, None]).astype(np.float32)
    if images.shape[1] == 1:
        return torch.from_numpy(lut[0][images])
    out = np.empty(images.shape, dtype=np.float32)
    for c in range(images.shape[1]):
        out[:, c] = lut[c][images[:, c]]
    return torch.from_numpy(out)


def _load_image_dataset(spec: _ImageSpec, data_dir: Path, download: bool, normalize: str | None = None) -> Dataset:
    import torch

    folder = data_dir / spec.folder
    paths = {f: _find(spec, folder, f) for f in spec.files}
    if download and None in paths.values():
        _tv_download(spec, data_dir)
        paths = {f: _find(spec, folder, f) for f in spec.files}
    missing = [f for f, p in paths.items() if p is None]
    if missing:
        raise _missing_error(spec, data_dir, folder, missing)

    splits = []
    for files in (spec.train, spec.test):
        if spec.kind == "idx":
            images_file, labels_file = files
            # (N, 1, 28, 28) in the file's row-major order, as torchvision gives it (EMNIST included:
            # torchvision does not transpose EMNIST, so its images are stored transposed)
            images = _read_idx(spec, paths[images_file], 3)[:, None]
            labels = _read_idx(spec, paths[labels_file], 1).astype(np.int64)
            if len(images) != len(labels):
                raise _corrupt(spec, paths[labels_file], f"{len(labels)} labels for {len(images)} images in "
                                                         f"{paths[images_file].name}")
            where = paths[labels_file]
        else:
            batches = [_read_cifar_batch(spec, paths[f]) for f in files]
            images = np.concatenate([b[0] for b in batches])
            labels = np.concatenate([b[1] for b in batches])
            where = paths[files[0]].parent
        if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise _corrupt(spec, where, f"labels span {labels.min()}..{labels.max()}, expected "
                                        f"0..{spec.num_classes - 1}")
        splits += [_normalize(images, *_scaling(normalize, spec.mean, spec.std)), torch.from_numpy(labels)]
    mean, std = _scaling(normalize, spec.mean, spec.std)
    info = {"folder": str(folder), "files": [str(paths[f]) for f in spec.files],
            "normalize": normalize or "standard", "mean": list(mean), "std": list(std)}
    if spec.tv_kwargs:
        info.update(dict(spec.tv_kwargs))
    return Dataset(spec.name, *splits, num_classes=spec.num_classes, info=info)


def _image_loader(name: str):
    def load(data_dir: Path, download: bool, normalize: str | None = None, **_) -> Dataset:
        return _load_image_dataset(_IMAGE_SPECS[name], data_dir, download, normalize)

    load.__name__ = load.__qualname__ = f"_load_{name.replace('-', '_')}"
    load.__doc__ = f"{name} from torchvision's layout under data_dir ({_IMAGE_SPECS[name].folder}/)."
    return load


# --------------------------------------------------------------------------------------------------
# FedProx's Synthetic(alpha, beta)
# --------------------------------------------------------------------------------------------------

SYNTHETIC_DIM = 60
SYNTHETIC_CLASSES = 10


def _load_synthetic(data_dir: Path, download: bool, alpha: float = 1.0, beta: float = 1.0,
                    iid: bool = False, devices: int = 30, seed: int | None = 0, **_) -> Dataset:
    """Synthetic(alpha, beta) of Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020),
    as generated by litian96/FedProx data/synthetic_*/generate_synthetic.py, drawn from
    `np.random.default_rng(seed)` (so not the same numbers as the original's global `np.random`).

    Device k has int(lognormal(4, 2)) + 50 samples; u_k ~ N(0, alpha), B_k ~ N(0, beta),
    v_k ~ N(B_k, 1)^60, W_k ~ N(u_k, 1)^(60x10), b_k ~ N(u_k, 1)^10, x ~ N(v_k, Sigma) with
    Sigma = diag((j+1)^-1.2), y = argmax(x W_k + b_k) (= argmax of the softmax). IID: one W, b ~ N(0, 1)
    for all devices and x ~ N(0, Sigma) (the original's synthetic_iid, alpha = beta = 0).
    Each device's samples are shuffled and its first int(0.9 n_k) go to train, the rest to test;
    `natural_train`/`natural_test` give each device's indices into the train/test splits.
    """
    import torch

    for key, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                math.isfinite(value) and value >= 0):
            raise FedsimError(f"dataset synthetic: {key} must be a finite number >= 0, got {value!r}")
    if not isinstance(devices, (int, np.integer)) or isinstance(devices, bool) or devices < 1:
        raise FedsimError(f"dataset synthetic: devices must be a whole number >= 1, got {devices!r}")
    seed = 0 if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise FedsimError(f"dataset synthetic: seed must be a whole number >= 0, got {seed!r}")
    devices, seed = int(devices), int(seed)
    if iid:
        alpha = beta = 0.0

    rng = np.random.default_rng(seed)
    d, c = SYNTHETIC_DIM, SYNTHETIC_CLASSES
    sizes = rng.lognormal(4, 2, devices).astype(np.int64) + 50
    u = rng.normal(0, alpha, devices)                    # mean of W_k and b_k
    big_b = rng.normal(0, beta, devices)                 # mean of v_k
    sigma_sqrt = np.sqrt(np.arange(1, d + 1, dtype=np.float64) ** -1.2)
    if iid:
        v = np.zeros((devices, d))
        w_shared = rng.normal(0, 1, (d, c))
        b_shared = rng.normal(0, 1, c)
    else:
        v = rng.normal(big_b[:, None], 1, (devices, d))  # mean of x on device k

    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for k in range(devices):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(u[k], 1, (d, c))
            b = rng.normal(u[k], 1, c)
        n = int(sizes[k])
        x = v[k] + sigma_sqrt * rng.standard_normal((n, d))
        y = np.argmax(x @ w + b, axis=1)
        order = rng.permutation(n)
        cut = int(0.9 * n)
        xs_train.append(x[order[:cut]])
        ys_train.append(y[order[:cut]])
        xs_test.append(x[order[cut:]])
        ys_test.append(y[order[cut:]])

    def offsets(parts):
        ends = np.cumsum([len(p) for p in parts])
        return [np.arange(end - len(p), end, dtype=np.int64) for p, end in zip(parts, ends, strict=True)]

    def tensors(xs, ys):
        return (torch.from_numpy(np.concatenate(xs).astype(np.float32)),
                torch.from_numpy(np.concatenate(ys).astype(np.int64)))

    if iid:
        name = "synthetic-iid"
    elif (alpha, beta) == (1, 1):
        name = "synthetic"
    else:
        name = f"synthetic({alpha:g},{beta:g})"
    return Dataset(name, *tensors(xs_train, ys_train), *tensors(xs_test, ys_test), num_classes=c,
                   natural_train=offsets(xs_train), natural_test=offsets(xs_test),
                   info={"alpha": float(alpha), "beta": float(beta), "iid": bool(iid), "devices": devices,
                         "seed": seed, "samples_per_device": sizes.tolist()})


def _load_synthetic_iid(data_dir: Path, download: bool, iid: bool = True, **options) -> Dataset:
    if not iid:
        raise FedsimError("dataset synthetic-iid: iid=False contradicts the name; use synthetic")
    if options.get("alpha") or options.get("beta"):
        raise FedsimError("dataset synthetic-iid takes no alpha/beta (it is Synthetic-IID); "
                          "use synthetic(ALPHA,BETA)")
    options.pop("alpha", None)
    options.pop("beta", None)
    return _load_synthetic(data_dir, download, iid=True, **options)


def _load_shakespeare(data_dir: Path, download: bool, **_) -> Dataset:
    """LEAF's next-character task from tinyshakespeare/input.txt under data_dir (see fedsim/data/shakespeare.py)."""
    from fedsim.data.shakespeare import load_shakespeare

    return load_shakespeare(data_dir)


def _load_femnist(data_dir: Path, download: bool, normalize: str | None = None, **_) -> Dataset:
    """LEAF's FEMNIST, a client per writer, from LEAF's JSON files under data_dir (see fedsim/data/leaf.py)."""
    from fedsim.data.leaf import load_femnist

    return load_femnist(data_dir, normalize)


def _load_celeba(data_dir: Path, download: bool, image_size=None, normalize: str | None = None, **_) -> Dataset:
    """LEAF's CelebA (smiling or not), a client per celebrity, from LEAF's JSON files and images (leaf.py)."""
    from fedsim.data.leaf import load_celeba

    return load_celeba(data_dir, data_dir, image_size, normalize)


def _load_sent140(data_dir: Path, download: bool, seq_len=None, vocab_size=None, embeddings=None, **_) -> Dataset:
    """LEAF's Sent140 (tweet sentiment), a client per user, from LEAF's JSON files (fedsim/data/leaf.py)."""
    from fedsim.data.leaf import load_sent140

    return load_sent140(data_dir, seq_len, vocab_size, embeddings)


def _load_agnews(data_dir: Path, download: bool, seq_len=None, vocab_size=None, embeddings=None, **_) -> Dataset:
    """AG News from its original CSV files under data_dir (see fedsim/data/agnews.py)."""
    from fedsim.data.agnews import load_agnews

    return load_agnews(data_dir, seq_len, vocab_size, embeddings)


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

# name -> loader(data_dir, download, **options) -> Dataset (on the CPU)
LOADERS = {
    "digits": _load_digits,
    **{name: _image_loader(name) for name in _IMAGE_SPECS},
    "synthetic": _load_synthetic,
    "synthetic-iid": _load_synthetic_iid,
    "shakespeare": _load_shakespeare,
    "femnist": _load_femnist,
    "celeba": _load_celeba,
    "sent140": _load_sent140,
    "agnews": _load_agnews,
}

# Options load_dataset passes on. `seed` and `devices` are generic (a caller may pass them for any
# dataset; those that draw nothing ignore them); alpha, beta, iid are the synthetic generator's only;
# image_size, test_fraction, normalize a folder of images' only (fedsim/data/paths.py).
_GENERIC_OPTIONS = {"seed", "devices"}
_SYNTHETIC_OPTIONS = {"alpha", "beta", "iid"}
_FOLDER_OPTIONS = {"image_size", "test_fraction", "normalize"}
# text datasets' (fedsim/data/text.py) and `hf:NAME` datasets' own (fedsim/data/hf.py)
_TEXT_OPTIONS = {"seq_len", "vocab_size", "embeddings"}
_HF_OPTIONS = {"hf_image_column", "hf_label_column", "hf_text_column", "hf_client_column", "hf_train_split",
               "hf_test_split"}
# registered datasets that take options of the groups above
_TAKES = {"femnist": {"normalize"}, "celeba": {"normalize", "image_size"}, "sent140": _TEXT_OPTIONS,
          "agnews": _TEXT_OPTIONS}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "emnist-balanced": "emnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
            "synthetic_iid": "synthetic-iid", "ag_news": "agnews", "ag-news": "agnews"}

_SYNTHETIC_NAME = re.compile(r"synthetic\((.*)\)")


def dataset_names() -> list[str]:
    return list(LOADERS)


def _resolve(name: str, options: dict) -> tuple[str, dict]:
    """Canonical registry name and options, with synthetic(ALPHA,BETA) parsed into alpha/beta."""
    if not isinstance(name, str):
        raise FedsimError(f"dataset name must be a string, got {name!r}")
    key = "".join(name.split()).lower()
    key = _ALIASES.get(key, key)
    match = _SYNTHETIC_NAME.fullmatch(key)
    if match:
        try:
            alpha, beta = (float(v) for v in match.group(1).split(","))
        except ValueError:
            raise FedsimError(f"dataset {name!r}: write synthetic(ALPHA,BETA) with two numbers, "
                              f"e.g. synthetic(0.5,0.5)") from None
        for k, v in (("alpha", alpha), ("beta", beta)):
            if k in options and options[k] != v:
                raise FedsimError(f"dataset {name!r} says {k}={v:g} but the option {k}={options[k]!r} "
                                  f"was given too: give it once")
        return "synthetic", {**options, "alpha": alpha, "beta": beta}
    if key not in LOADERS:
        raise FedsimError(f"unknown dataset {name!r}: choose one of {', '.join(LOADERS)} "
                          f"(or synthetic(ALPHA,BETA)), hf:NAME for a Hugging Face dataset, or give a folder of "
                          f"images or an .npz file")
    return key, options


def load_dataset(name: str = "digits", data_dir: str | Path | None = None, device="cpu",
                 download: bool = False, **options) -> Dataset:
    """Load dataset `name` from `data_dir` (default `$FEDSIM_DATA` or `./data`) onto `device`.

    Names: digits (embedded), mnist, fashion-mnist, emnist (balanced split), cifar10, cifar100 (files in
    torchvision's layout under `data_dir`; `download=True` fetches missing ones with torchvision), and
    synthetic (= synthetic(1,1)), synthetic(ALPHA,BETA), synthetic-iid (FedProx's generator), shakespeare
    (LEAF's next-character task from tinyshakespeare/input.txt), femnist, celeba, sent140 (LEAF's JSON files,
    fedsim/data/leaf.py), agnews (its CSV files); `hf:NAME[:CONFIG]` a Hugging Face dataset (fedsim/data/hf.py).
    A name that is no registered name but a folder of images or an .npz file loads that (fedsim/data/paths.py).
    Options (None means not given): `seed`, `devices` (used by the synthetic datasets, `seed` also by an
    image folder's test split; ignored by the others), `alpha`, `beta`, `iid` (synthetic only),
    `image_size`, `test_fraction` (a folder of images only), `normalize` (digits, the image datasets and a folder
    of images: one of NORMALIZATIONS, None for their usual scaling); `seq_len`, `vocab_size`, `embeddings` (text
    datasets: fedsim/data/text.py); `hf_*` (the columns and splits of an hf: dataset).
    """
    from fedsim.data.hf import is_hf, load_hf
    from fedsim.data.paths import dataset_path, load_path

    options = {k: v for k, v in options.items() if v is not None}
    known = _GENERIC_OPTIONS | _SYNTHETIC_OPTIONS | _FOLDER_OPTIONS | _TEXT_OPTIONS | _HF_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise FedsimError(f"unknown dataset option(s) {', '.join(unknown)}: known ones are "
                          f"{', '.join(sorted(known))}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    mode = options.get("normalize")
    if mode is not None and mode not in NORMALIZATIONS:
        raise FedsimError(f"unknown --normalize {mode!r}: choose one of {', '.join(NORMALIZATIONS)}")
    if is_hf(name):
        misplaced = sorted(set(options) & _SYNTHETIC_OPTIONS)
        if misplaced:
            raise FedsimError(f"dataset {name}: option(s) {', '.join(misplaced)} apply only to the synthetic datasets")
        options.pop("devices", None)
        return load_hf(name[len("hf:"):], root, **options).to(device)
    misplaced = sorted(set(options) & _HF_OPTIONS)
    if misplaced:
        raise FedsimError(f"dataset {name}: option(s) {', '.join('--' + m.replace('_', '-') for m in misplaced)} "
                          f"apply only to --dataset hf:NAME")
    key = "".join(name.split()).lower() if isinstance(name, str) else None
    path = None if key is None or _ALIASES.get(key, key) in LOADERS or _SYNTHETIC_NAME.fullmatch(key) \
        else dataset_path(name)
    if path is not None:
        for group, owner in ((_SYNTHETIC_OPTIONS, "the synthetic datasets"),
                             (_TEXT_OPTIONS, "text datasets (sent140, agnews, a text hf:NAME)")):
            misplaced = sorted(set(options) & group)
            if misplaced:
                raise FedsimError(f"dataset {name}: option(s) {', '.join(misplaced)} apply only to {owner}")
        return load_path(path, root, **options).to(device)
    key, options = _resolve(name, options)
    own = (_SYNTHETIC_OPTIONS if key.startswith("synthetic") else set()) | _TAKES.get(key, set())
    if "normalize" in options:
        if key != "digits" and key not in _IMAGE_SPECS and "normalize" not in own:
            raise FedsimError(f"--normalize applies to digits, the image datasets ({', '.join(_IMAGE_SPECS)}, "
                              f"femnist, celeba) and folders of images, not to {key}: its inputs are not pixels")
        own = own | {"normalize"}
    for group, owner in ((_SYNTHETIC_OPTIONS, "the synthetic datasets"), (_FOLDER_OPTIONS, "a folder of images"),
                         (_TEXT_OPTIONS, "text datasets (sent140, agnews, a text hf:NAME)")):
        misplaced = sorted(set(options) & group - own)
        if misplaced:
            raise FedsimError(f"dataset {key}: option(s) {', '.join(misplaced)} apply only to {owner}")
    return LOADERS[key](root, download, **options).to(device)
