"""LEAF's natural splits (Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097), read from
the JSON files LEAF's own preprocessing writes (github.com/TalwalkarLab/leaf, data/<name>/preprocess.sh):

    <data-dir>/femnist/data/train/*.json, <data-dir>/femnist/data/test/*.json     FEMNIST: a client per writer
    <data-dir>/celeba/data/{train,test}/*.json  + <data-dir>/celeba/data/raw/img_align_celeba/*.jpg
                                                                                   CelebA: a client per celebrity
    <data-dir>/sent140/data/{train,test}/*.json                                    Sent140: a client per user

(`--data-dir` is LEAF's `data/` folder). Each file is {"users": [...], "num_samples": [...], "user_data": {user:
{"x": [...], "y": [...]}}}; LEAF's `-t sample` split puts each user's samples in both train and test. The clients
are the train files' users, in sorted order (`info["client_ids"]`), given as the natural split (`--natural`);
a test user must be a train user.

  * femnist: x is 784 pixel values in [0, 1] per sample (28x28, LEAF's data_to_json.py), y 0..61 (digits, upper,
    lower case letters): inputs (N, 1, 28, 28), scaled by `normalize` as the image datasets (default: the train
    split's mean and std; "unit" keeps LEAF's [0, 1]).
  * celeba: x is an image file name in raw/img_align_celeba/, y whether the celebrity smiles (0/1): each image
    resized to 84x84 (LEAF's IMAGE_SIZE; bilinear, `image_size` for another) and RGB, decoded once in parallel and
    cached as image folders are (fedsim/data/folder.py), scaled by `normalize`.
  * sent140: x is [tweet id, date, query, user, text] (LEAF's data/sent140/README.md), y the sentiment 0/1: the
    text tokenized and cut or padded to `seq_len` (default 25, LEAF's) over a vocabulary of the training split's
    `vocab_size` most frequent tokens (fedsim/data/text.py; LEAF uses GloVe's whole vocabulary instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

LEAF_DATASETS = ("femnist", "celeba", "sent140")
# the "small-sized dataset" commands of LEAF's data/<name>/README.md (run in leaf/data/<name>; -t sample gives each
# user's samples a train and a test part, which fedsim reads)
LEAF_COMMANDS = {"femnist": "./preprocess.sh -s niid --sf 0.05 -k 0 -t sample",
                 "celeba": "./preprocess.sh -s niid --sf 0.05 -k 5 -t sample",
                 "sent140": "./preprocess.sh -s niid --sf 0.05 -k 64 -t sample"}
FEMNIST_CLASSES = 62
CELEBA_SIZE = 84
SENT140_SEQ_LEN = 25


def _split_files(root: Path, name: str, split: str) -> list[Path]:
    folder = root / name / "data" / split
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise FedsimError(f"dataset {name}: no {folder}/*.json; make them with LEAF's preprocessing (in "
                          f"leaf/data/{name}: {LEAF_COMMANDS[name]}) and pass --data-dir to the folder that holds "
                          f"{name}/ (LEAF's data/)")
    return files


def _read_file(name: str, path: Path) -> dict[str, tuple[list, list]]:
    """user -> (x, y) of one LEAF JSON file, its layout checked."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedsimError(f"dataset {name}: cannot read {path} as JSON ({' '.join(str(e).split())[:200]})") from None
    layout = "LEAF's layout is an object with users, num_samples and user_data ({user: {x: [...], y: [...]}})"
    if not isinstance(content, dict) or not {"users", "num_samples", "user_data"} <= set(content):
        found = ", ".join(sorted(content)) if isinstance(content, dict) else type(content).__name__
        raise FedsimError(f"dataset {name}: {path} is not in LEAF's layout (it holds {found or 'nothing'}): {layout}")
    users, sizes, data = content["users"], content["num_samples"], content["user_data"]
    if not (isinstance(users, list) and isinstance(sizes, list) and isinstance(data, dict)) or len(users) != len(sizes):
        raise FedsimError(f"dataset {name}: {path} is not in LEAF's layout: users and num_samples must be lists of "
                          f"one length and user_data an object; {layout}")
    out = {}
    for user, size in zip(users, sizes, strict=True):
        entry = data.get(user)
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) or not isinstance(entry.get("y"), list):
            raise FedsimError(f"dataset {name}: {path}: user {user!r} has no x and y lists in user_data; {layout}")
        x, y = entry["x"], entry["y"]
        if len(x) != len(y) or len(x) != size:
            raise FedsimError(f"dataset {name}: {path}: user {user!r} has {len(x)} x, {len(y)} y and num_samples "
                              f"{size}: they must agree")
        if not x:
            raise FedsimError(f"dataset {name}: {path}: user {user!r} has no samples (an empty client): remove it, "
                              f"or make the files with LEAF's -k option")
        if str(user) in out:
            raise FedsimError(f"dataset {name}: {path}: user {user!r} appears twice")
        out[str(user)] = (x, y)
    return out


def _read_split(root: Path, name: str, split: str, convert) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(converted x per user, int labels, the user of each sample) over the split's files, file by file (a file's
    Python lists are freed before the next is read)."""
    xs, ys, owners, seen = [], [], [], set()
    for path in _split_files(root, name, split):
        for user, (x, y) in _read_file(name, path).items():
            if user in seen:
                raise FedsimError(f"dataset {name}: user {user!r} appears in two {split} files ({path.name} and "
                                  f"another)")
            seen.add(user)
            xs.append(convert(path, user, x))
            ys.append(_labels(name, path, user, y))
            owners.append(np.full(len(y), user, dtype=object))
    return xs, np.concatenate(ys), np.concatenate(owners).astype(str)


def _labels(name: str, path: Path, user: str, y: list) -> np.ndarray:
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.ndim != 1 or not np.isfinite(values).all() or (values != np.round(values)).any() or (values < 0).any():
        raise FedsimError(f"dataset {name}: {path}: user {user!r}'s y must be class numbers 0, 1, ... (LEAF's layout)")
    return values.astype(np.int64)


def load_femnist(root: Path, normalize: str | None = None):
    import torch

    from fedsim.data.datasets import Dataset, _scaling

    def convert(path, user, x):
        try:
            pixels = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            pixels = np.zeros(0, dtype=np.float32)
        if pixels.ndim != 2 or pixels.shape[1] != 28 * 28:
            raise FedsimError(f"dataset femnist: {path}: user {user!r}'s x must be 784 pixel values (28x28) per "
                              f"sample, LEAF's layout")
        return pixels.reshape(-1, 1, 28, 28)

    splits = (_read_split(root, "femnist", split, convert) for split in ("train", "test"))
    (x_train, y_train, c_train), (x_test, y_test, c_test) = ((np.concatenate(xs), y, c) for xs, y, c in splits)
    _check_classes("femnist", y_train, y_test, FEMNIST_CLASSES)
    own = (float(x_train.mean()),), (float(x_train.std()),)
    (mean,), (std,) = _scaling(normalize, *own)
    scale = [torch.from_numpy((x - np.float32(mean)) / np.float32(std)) for x in (x_train, x_test)]
    data = Dataset.from_tensors(scale[0], y_train, scale[1], y_test, name="femnist", client_train=c_train,
                                client_test=c_test, num_classes=FEMNIST_CLASSES)
    data.info.update(folder=str(root / "femnist" / "data"), normalize=normalize or "standard", mean=[mean], std=[std])
    return data


def load_celeba(root: Path, data_dir: Path, image_size=None, normalize: str | None = None):
    import torch

    from fedsim.data.datasets import Dataset, _normalize, _scaling
    from fedsim.data.folder import (
        _cache_key,
        _cache_paths,
        _decode_all,
        _image_size,
        _read_cache,
        _write_cache,
        channel_stats,
    )

    images = root / "celeba" / "data" / "raw" / "img_align_celeba"
    if not images.is_dir():
        raise FedsimError(f"dataset celeba: no image folder {images}: LEAF's celeba/preprocess.sh reads the images "
                          f"from there (img_align_celeba.zip, unzipped)")

    def convert(path, user, x):
        if not all(isinstance(f, str) for f in x):
            raise FedsimError(f"dataset celeba: {path}: user {user!r}'s x must be image file names, LEAF's layout")
        return [images / f for f in x]

    splits = [_read_split(root, "celeba", s, convert) for s in ("train", "test")]
    files = [f for xs, _, _ in splits for user_files in xs for f in user_files]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise FedsimError(f"dataset celeba: image {missing.name} (listed in the JSON files) is not in {images}")
    size = _image_size(image_size) or (CELEBA_SIZE, CELEBA_SIZE)
    candidates = _cache_paths(images, data_dir, _cache_key(images, files, size))
    pixels, cache_file = _read_cache(candidates, len(files))
    if pixels is None:
        pixels = torch.from_numpy(_decode_all(files, size))
        cache_file = _write_cache(candidates, {"images": pixels})
    pixels = pixels.numpy()
    n_train = len(splits[0][1])
    (y_train, c_train), (y_test, c_test) = ((y, c) for _, y, c in splits)
    _check_classes("celeba", y_train, y_test, 2)
    mean, std = _scaling(normalize, *channel_stats(pixels[:n_train]))
    data = Dataset.from_tensors(_normalize(pixels[:n_train], mean, std), y_train, _normalize(pixels[n_train:], mean,
                                std), y_test, name="celeba", client_train=c_train, client_test=c_test, num_classes=2)
    data.info.update(folder=str(root / "celeba" / "data"), image_size=list(size), normalize=normalize or "standard",
                     mean=list(mean), std=list(std), cache=str(cache_file) if cache_file else None)
    return data


def load_sent140(root: Path, seq_len: int | None = None, vocab_size: int | None = None, embeddings=None):
    from fedsim.data.text import text_dataset

    def convert(path, user, x):
        if not all(isinstance(e, list) and len(e) >= 5 and isinstance(e[4], str) for e in x):
            raise FedsimError(f"dataset sent140: {path}: user {user!r}'s x must be [id, date, query, user, text] "
                              f"lists, LEAF's layout")
        return [e[4] for e in x]

    (x_train, y_train, c_train), (x_test, y_test, c_test) = (_read_split(root, "sent140", s, convert)
                                                             for s in ("train", "test"))
    _check_classes("sent140", y_train, y_test, 2)
    return text_dataset("sent140", [t for texts in x_train for t in texts], y_train,
                        [t for texts in x_test for t in texts], y_test, num_classes=2, seq_len=seq_len,
                        vocab_size=vocab_size, embeddings=embeddings, client_train=c_train, client_test=c_test,
                        info={"folder": str(root / "sent140" / "data")}, default_seq_len=SENT140_SEQ_LEN)


def _check_classes(name: str, y_train: np.ndarray, y_test: np.ndarray, classes: int) -> None:
    high = int(max(y_train.max(), y_test.max()))
    if high >= classes:
        raise FedsimError(f"dataset {name}: a label is {high}, but {name} has {classes} classes (0..{classes - 1})")
