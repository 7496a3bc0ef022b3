"""`--dataset hf:NAME[:CONFIG]`: a Hugging Face dataset through the `datasets` library (the optional extra `hf`).

NAME is a Hub name (`hf:uoft-cs/cifar10`, `hf:fancyzhx/ag_news`; CONFIG picks a configuration), or a local path:
a folder written by `save_to_disk` (a DatasetDict, or one Dataset taken as the train split), or parquet, arrow,
csv or json files (a file, or a folder of them whose names say their split: train*.parquet, test*.parquet, as
`datasets` infers it).

Splits: `train_split` (default "train"); `test_split` (default "test", else "validation"), or, when the dataset
has only the one split, `test_fraction` (default 0.2) of each class held out (stratified, seed 0, as a folder of
images). Columns, each found from the features when not named: the label (`label_column`: the one `ClassLabel`,
else a column named label or labels; it must hold integer classes), the input (`image_column`: the one `Image`
feature; else `text_column`: the one string column, or one named text, sentence or content), and a client column
(`client_column`, never guessed: one client per distinct value, writer, user or speaker, the natural split).

Images are decoded once (Pillow, in a thread pool, a progress bar on a terminal) into uint8 tensors cached in
`<data_dir>/.fedsim-cache/` (keyed by the splits' fingerprints and files, the column and `image_size`), then
scaled as a folder of images (`normalize`: the train split's mean and std by default). Texts become token ids
over a vocabulary of the training split (fedsim/data/text.py: `seq_len`, `vocab_size`, `embeddings`).
`info["hf"]` (copied into the run record) holds the name, configuration, revision where the Hub gives one, each
split's fingerprint and the columns used; the run record also holds the tensors' sha256, which a partition file
made for this dataset checks.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

PREFIX = "hf:"
INSTALL = "pip install -e '.[hf]'"
DATA_FILES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
TEXT_NAMES = ("text", "sentence", "content", "review", "document")
DEFAULT_TEST_FRACTION = 0.2
_CACHE_VERSION = 1


def is_hf(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise FedsimError(f"--dataset hf:... reads Hugging Face datasets through the `datasets` library, which is "
                          f"not installed: {INSTALL}") from None
    import sys

    if not sys.stderr.isatty():  # a Hub download shows its progress on a terminal only
        datasets.disable_progress_bars()
    # the Hub client's retries and warnings are log lines; a failure becomes fedsim's one line
    datasets.logging.set_verbosity_error()
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass
    return datasets


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_splits(datasets, spec: str) -> tuple[dict, dict]:
    """({split: datasets.Dataset}, what identifies the source) for the text after `hf:`."""
    path = Path(spec).expanduser()
    if path.exists():
        source = {"path": str(path.resolve())}
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as e:  # a damaged folder: FileNotFoundError, ArrowInvalid, JSON errors, ...
                raise FedsimError(f"dataset hf:{spec}: cannot read the save_to_disk folder ({_one_line(e)})") from None
            return (dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}), source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in DATA_FILES)
        kinds = {DATA_FILES.get(p.suffix.lower()) for p in files}
        if not files or None in kinds or len(kinds) != 1:
            found = ", ".join(sorted(p.name for p in files[:3])) or "none"
            raise FedsimError(f"dataset hf:{spec}: expected a folder written by save_to_disk, or parquet, arrow, csv "
                              f"or json files of one kind (found {found})")
        builder = kinds.pop()
        try:
            if path.is_file():
                loaded = datasets.load_dataset(builder, data_files={"train": str(path)})
            else:
                loaded = datasets.load_dataset(builder, data_dir=str(path))
        except Exception as e:
            raise FedsimError(f"dataset hf:{spec}: cannot read its {builder} files ({_one_line(e)})") from None
        return dict(loaded), source
    name, _, config = spec.partition(":")
    if not name:
        raise FedsimError("--dataset hf:NAME[:CONFIG] needs a name: a Hub dataset or a local folder or file")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as e:  # not found, offline, a configuration to choose, a gated dataset, ...
        raise FedsimError(f"dataset hf:{spec}: no such local folder or file, and the Hugging Face Hub could not "
                          f"give it ({_one_line(e)})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return dict(loaded), {"name": name, "config": config or None}


def _revision(split) -> str | None:
    """The Hub commit the files came from, where the download records it (hf://datasets/NAME@REVISION/...)."""
    for url in (split.info.download_checksums or {}):
        match = re.search(r"@([0-9a-f]{40})", str(url))
        if match:
            return match.group(1)
    return None


def _split_names(splits: dict, train_split, test_split, test_fraction) -> tuple[str, str | None]:
    names = ", ".join(splits)
    train = train_split or "train"
    if train not in splits:
        raise FedsimError(f"the dataset has no split {train!r} (its splits: {names}): pass --hf-train-split")
    if test_split is not None:
        if test_split not in splits:
            raise FedsimError(f"the dataset has no split {test_split!r} (its splits: {names}): pass --hf-test-split")
        if test_fraction is not None:
            raise FedsimError(f"--test-fraction holds out part of {train!r}, but --hf-test-split {test_split!r} "
                              f"was given too: give one")
        if test_split == train:
            raise FedsimError(f"--hf-test-split {test_split!r} is the train split: choose another, or --test-fraction")
        return train, test_split
    if test_fraction is not None:
        return train, None
    return train, next((s for s in ("test", "validation") if s in splits and s != train), None)


def _columns_error(what: str, option: str, features) -> FedsimError:
    shown = ", ".join(f"{k} ({_kind(v)})" for k, v in features.items())
    return FedsimError(f"{what}: pass {option} (the columns: {shown})")


def _kind(feature) -> str:
    name = type(feature).__name__
    dtype = getattr(feature, "dtype", None)
    return f"{name} {dtype}" if name == "Value" else name


def _label_column(datasets, features, given, client) -> str:
    if given is not None:
        if given not in features:
            raise _columns_error(f"no column {given!r}", "--hf-label-column", features)
        feature = features[given]
        integer = isinstance(feature, datasets.Value) and re.fullmatch(r"u?int(8|16|32|64)", feature.dtype)
        if not (isinstance(feature, datasets.ClassLabel) or integer):
            raise FedsimError(f"label column {given!r} holds {_kind(feature)} values: the label must be a ClassLabel "
                              f"or integer classes 0, 1, ... (map it to integers, or choose another with "
                              f"--hf-label-column)")
        return given
    labels = [k for k, v in features.items() if isinstance(v, datasets.ClassLabel) and k != client]
    if len(labels) == 1:
        return labels[0]
    named = [k for k in ("label", "labels") if k in features and k != client]
    if not labels and named:
        return _label_column(datasets, features, named[0], client)
    raise _columns_error("cannot tell which column is the label", "--hf-label-column", features)


def _input_column(datasets, features, image, text, taken) -> tuple[str, str]:
    """("image" or "text", the column)."""
    if image is not None and text is not None:
        raise FedsimError("--hf-image-column and --hf-text-column were both given: a model takes one input; give one")
    for given, kind, option in ((image, datasets.Image, "--hf-image-column"), (text, None, "--hf-text-column")):
        if given is None:
            continue
        if given not in features:
            raise _columns_error(f"no column {given!r}", option, features)
        feature = features[given]
        ok = isinstance(feature, kind) if kind is not None else (
            isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"))
        if not ok:
            raise FedsimError(f"column {given!r} holds {_kind(feature)} values, not "
                              f"{'images' if kind is not None else 'text'}: choose another with {option}")
        return ("image" if kind is not None else "text"), given
    images = [k for k, v in features.items() if isinstance(v, datasets.Image) and k not in taken]
    if len(images) == 1:
        return "image", images[0]
    strings = [k for k, v in features.items() if k not in taken and isinstance(v, datasets.Value)
               and v.dtype in ("string", "large_string")]
    named = [k for k in TEXT_NAMES if k in strings]
    if not images and (len(strings) == 1 or named):
        return "text", (strings[0] if len(strings) == 1 else named[0])
    raise _columns_error("cannot tell which column is the input", "--hf-image-column or --hf-text-column", features)


def _labels(split, column: str, where: str) -> np.ndarray:
    labels = np.asarray(split[column])
    if labels.dtype.kind not in "iu":
        raise FedsimError(f"label column {column!r} of split {where!r} holds {labels.dtype} values: the label must be "
                          f"integer classes 0, 1, ...")
    if len(labels) and labels.min() < 0:
        raise FedsimError(f"label column {column!r} of split {where!r} holds {labels.min()} (an unlabeled split?): "
                          f"labels must be 0, 1, ...; choose another split with --hf-test-split or --test-fraction")
    return labels.astype(np.int64)


def _decode_images(splits: list, column: str, size, data_dir: Path, key: str):
    """uint8 (N, C, H, W) of every row of `splits` in order, from the cache or decoded once."""
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from fedsim.data.folder import CACHE_FOLDER, _decode_all, _read_cache, _write_cache

    total = sum(len(s) for s in splits)
    candidates = [data_dir / CACHE_FOLDER / f"hf-{key}.pt"]
    images, cache_file = _read_cache(candidates, total)
    if images is not None:
        return images.numpy(), cache_file, True
    import datasets

    sources, names = [], []
    for split in splits:
        for i, item in enumerate(split.cast_column(column, datasets.Image(decode=False))[column]):
            data, path = (item or {}).get("bytes"), (item or {}).get("path")
            if data is None and path is None:
                raise FedsimError(f"image column {column!r}: row {i} of split {split.split} holds no image")
            sources.append(io.BytesIO(data) if data is not None else path)
            names.append(path or f"row {i} of split {split.split}")
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("decoding images", total=total)
        decoded = _decode_all(sources, size, names, on_decoded=lambda: progress.advance(task))
    cache_file = _write_cache(candidates, {"images": torch.from_numpy(decoded)})
    return decoded, cache_file, False


def _cache_key(spec: str, parts: list, column: str, size) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION} {spec} column={column} size={size}".encode())
    for split in parts:
        digest.update(f"\0{split._fingerprint}\0{len(split)}".encode())
        for f in split.cache_files:
            path = Path(f["filename"])
            stat = path.stat() if path.exists() else None
            digest.update(f"\0{path}\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}".encode())
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-")[-40:] + "-" + digest.hexdigest()[:24]


def load_hf(spec: str, data_dir: Path, *, hf_image_column=None, hf_label_column=None, hf_text_column=None,
            hf_client_column=None, hf_train_split=None, hf_test_split=None, test_fraction=None, image_size=None,
            normalize=None, seq_len=None, vocab_size=None, embeddings=None, seed=None):
    """The Dataset of `hf:` + `spec` (see the module docstring); every problem is one line naming the dataset."""
    name = PREFIX + spec
    datasets = _datasets()
    try:
        return _build(datasets, spec, Path(data_dir), hf_image_column, hf_label_column, hf_text_column,
                      hf_client_column, hf_train_split, hf_test_split, test_fraction, image_size, normalize, seq_len,
                      vocab_size, embeddings, seed)
    except FedsimError as e:
        message = str(e)
        raise FedsimError(message if message.startswith(f"dataset {name}") else f"dataset {name}: {message}") from None


def _build(datasets, spec, data_dir, image_column, label_column, text_column, client_column, train_split,
           test_split, test_fraction, image_size, normalize, seq_len, vocab_size, embeddings, seed):
    import torch

    from fedsim.data.datasets import Dataset, _normalize, _scaling
    from fedsim.data.folder import _image_size, _stratified_test, channel_stats

    name = PREFIX + spec
    splits, source = _load_splits(datasets, spec)
    train_name, test_name = _split_names(splits, train_split, test_split, test_fraction)
    train = splits[train_name]
    features = train.features
    if client_column is not None and client_column not in features:
        raise _columns_error(f"no column {client_column!r}", "--hf-client-column", features)
    label = _label_column(datasets, features, label_column, client_column)
    kind, column = _input_column(datasets, features, image_column, text_column, {label, client_column})
    if kind == "text" and (image_size is not None or normalize is not None):
        raise FedsimError(f"--{'image-size' if image_size is not None else 'normalize'} applies to images; the input "
                          f"column {column!r} holds text")
    if kind == "image" and (seq_len is not None or vocab_size is not None or embeddings is not None):
        raise FedsimError(f"--seq-len, --vocab-size and --embeddings apply to text; the input column {column!r} holds "
                          f"images")
    if test_name is not None:
        test = splits[test_name]
        missing = [c for c in (label, column) if c not in test.features]
        if missing:
            raise FedsimError(f"split {test_name!r} has no column {missing[0]!r}: choose the test split with "
                              f"--hf-test-split, or --test-fraction")
    y_all = _labels(train, label, train_name)
    if test_name is None:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        if not (isinstance(fraction, int | float) and 0 < fraction < 1):
            raise FedsimError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction!r}")
        is_test = _stratified_test(y_all, fraction, 0 if seed is None else seed)
        if not is_test.any() or is_test.all():
            raise FedsimError(f"split {train_name!r} has {len(y_all)} rows: too few to hold out --test-fraction "
                              f"{fraction:g} as the test split")
        parts = [train.select(np.flatnonzero(~is_test)), train.select(np.flatnonzero(is_test))]
        y_train, y_test = y_all[~is_test], y_all[is_test]
    else:
        parts, y_train, y_test = [train, test], y_all, _labels(test, label, test_name)
    if not len(y_train) or not len(y_test):
        raise FedsimError(f"the {'train' if not len(y_train) else 'test'} split is empty")
    feature = features[label]
    classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(max(y_train.max(),
                                                                                          y_test.max())) + 1
    if max(y_train.max(), y_test.max()) >= classes:
        raise FedsimError(f"label column {label!r} holds {max(y_train.max(), y_test.max())}, but its ClassLabel has "
                          f"{classes} classes")
    clients = [None, None]
    if client_column is not None:
        clients = [np.asarray(p[client_column]) if client_column in p.features else None for p in parts]
        for ids, part in zip(clients, ("train", "test"), strict=True):
            if ids is not None and ids.dtype.kind not in "iuUS":
                raise FedsimError(f"client column {client_column!r} holds {ids.dtype} values in the {part} split: "
                                  f"client ids must be integers or strings")
    record = {**source, "revision": _revision(train), "train_split": train_name,
              "test_split": test_name or f"{test_fraction or DEFAULT_TEST_FRACTION:g} of {train_name} (stratified)",
              "fingerprints": [p._fingerprint for p in parts], "label_column": label, f"{kind}_column": column,
              "client_column": client_column, "classes": getattr(feature, "names", None)}
    if kind == "text":
        from fedsim.data.text import text_dataset

        return text_dataset(name, list(parts[0][column]), y_train, list(parts[1][column]), y_test,
                            num_classes=classes, seq_len=seq_len, vocab_size=vocab_size, embeddings=embeddings,
                            client_train=clients[0], client_test=clients[1], info={"hf": record})
    size = _image_size(image_size)
    pixels, cache_file, hit = _decode_images(parts, column, size, data_dir, _cache_key(spec, parts, column, size))
    n_train = len(y_train)
    mean, std = _scaling(normalize, *channel_stats(pixels[:n_train]))
    data = Dataset.from_tensors(_normalize(pixels[:n_train], mean, std), torch.from_numpy(y_train),
                                _normalize(pixels[n_train:], mean, std), torch.from_numpy(y_test), name=name,
                                client_train=clients[0], client_test=clients[1], num_classes=classes)
    data.info.update(hf=record, image_size=list(pixels.shape[2:]), mode="RGB" if pixels.shape[1] == 3 else "L",
                     normalize=normalize or "standard", mean=list(mean), std=list(std),
                     cache=str(cache_file) if cache_file else None, cache_hit=hit)
    return data
