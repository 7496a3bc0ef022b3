"""The partition: which training (and test) samples each client holds, and the `.fsp` file that stores it.

A `Partition` holds CSR-style arrays (one int64 index array plus offsets per split), so 10,000 clients
cost kilobytes beyond the indices themselves. `fedsim.data.partition_build.build_partition` makes one
from a dataset; `load_partition` reads one back.

File format (extension `.fsp`, version 2; all integers little-endian; no timestamps, so the same
arguments and seed give a byte-identical file)::

    b"FEDSIM-PARTITION 2\\n"                 magic line (format name, version)
    uint64  H                                length of the header
    H bytes JSON header, UTF-8, sorted keys, no spaces:
            {"lengths": {"test_index": T, "train_index": L}, "meta": {...}, "num_clients": n}
    int64[n+1]  train_offsets                client c's train samples are
    int64[L]    train_index                  train_index[train_offsets[c]:train_offsets[c+1]]
    int64[n+1]  test_offsets
    int64[T]    test_index                   (indices into the test split, or into the train split
                                             when meta["client_test_source"] == "train")
    32 bytes    sha256 of everything above   (catches truncation and any changed byte)

Version 1 has the same layout; version 2 marks files made since the Dirichlet and quantity-skew cut
gives nothing to a client whose proportion is 0 (`partitioners.base.cut_counts`), so the same
arguments may give a different split than a version-1 file holds. Both are read; a loaded file is
written back with its own version.

`meta["sha256"]` is the sha256 of the four arrays' bytes (in the order above): it names the split
itself, whatever the file's other metadata. `load_partition` checks the magic, the lengths, both
hashes and the array bounds, and refuses anything else with one FedsimError line.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from fedsim.data.partitioners.base import as_labels
from fedsim.errors import FedsimError
from fedsim.files import write_atomically

EXTENSION = ".fsp"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # same layout; see the module docstring
_MAGIC_NAME = b"FEDSIM-PARTITION "


def _magic(version: int) -> bytes:
    return _MAGIC_NAME + b"%d\n" % version


MAGIC = _magic(FORMAT_VERSION)
_VERSION_OF_MAGIC = {_magic(v): v for v in READABLE_VERSIONS}


class Partition:
    """Per-client train and test indices, CSR-style, with the metadata that produced them.

    `train_index[train_offsets[c]:train_offsets[c + 1]]` are client c's train samples (indices into
    the dataset's train split, sorted); likewise for test, whose indices point into the test split,
    or into the train split when `meta["client_test_source"] == "train"`.
    """

    def __init__(self, train_index, train_offsets, test_index, test_offsets, meta: dict,
                 path: str | Path | None = None, format_version: int = FORMAT_VERSION):
        arrays = [np.array(a, dtype=np.int64) for a in (train_index, train_offsets, test_index, test_offsets)]
        for a in arrays:
            a.flags.writeable = False  # train_indices(c) hands out views: nobody edits the split by accident
        self.train_index, self.train_offsets, self.test_index, self.test_offsets = arrays
        for name, index, offsets in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
            if (offsets.ndim != 1 or len(offsets) != len(arrays[1]) or offsets[0] != 0
                    or offsets[-1] != len(index) or (np.diff(offsets) < 0).any() or index.ndim != 1):
                raise FedsimError(f"inconsistent {name} index arrays for a partition")
        self.meta = {**meta, "num_clients": len(self.train_offsets) - 1, "sha256": self.content_sha256()}
        self.path = Path(path) if path is not None else None
        self.format_version = format_version

    @property
    def num_clients(self) -> int:
        return len(self.train_offsets) - 1

    def train_indices(self, client: int) -> np.ndarray:
        """Client `client`'s train samples (a read-only view); FedsimError for an id out of range."""
        self._check_client(client)
        return self.train_index[self.train_offsets[client]:self.train_offsets[client + 1]]

    def test_indices(self, client: int) -> np.ndarray:
        """Client `client`'s test samples (a read-only view); FedsimError for an id out of range."""
        self._check_client(client)
        return self.test_index[self.test_offsets[client]:self.test_offsets[client + 1]]

    def _check_client(self, client) -> None:
        # Without this, -1 gives an empty slice, -2 the last client's samples, n a numpy IndexError.
        n = self.num_clients
        if isinstance(client, bool) or not isinstance(client, int | np.integer) or not 0 <= client < n:
            shown = client if isinstance(client, int | np.integer) else repr(client)
            valid = f"0 to {n - 1}" if n else "none, it has no clients"
            raise FedsimError(f"client id {shown} is out of range: the partition's clients are {valid}")

    @property
    def train_sizes(self) -> np.ndarray:
        return np.diff(self.train_offsets)

    @property
    def test_sizes(self) -> np.ndarray:
        return np.diff(self.test_offsets)

    def _arrays_bytes(self) -> list[bytes]:
        return [a.astype("<i8", copy=False).tobytes()
                for a in (self.train_offsets, self.train_index, self.test_offsets, self.test_index)]

    def content_sha256(self) -> str:
        """sha256 of the index content (offsets and indices of both splits)."""
        h = hashlib.sha256()
        for b in self._arrays_bytes():
            h.update(b)
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        header = {"lengths": {"train_index": len(self.train_index), "test_index": len(self.test_index)},
                  "meta": self.meta, "num_clients": self.num_clients}
        head = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        body = b"".join([_magic(self.format_version), struct.pack("<Q", len(head)), head, *self._arrays_bytes()])
        return body + hashlib.sha256(body).digest()

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (temp file + rename); refuses to replace a non-partition file."""
        path = Path(path)
        data = self.to_bytes()
        if path.is_dir():
            raise FedsimError(f"cannot write partition file {path}: it is a directory; give a file path")
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    start = f.read(len(_MAGIC_NAME))
            except OSError as e:
                raise FedsimError(f"cannot write partition file {path}: {e.strerror}") from None
            if start != _MAGIC_NAME:
                raise FedsimError(f"{path} exists and is not a fedsim partition file: not replacing it; "
                                  f"choose another --out or remove it")
        make_parent_folder(path, "partition file")
        write_atomically(path, lambda tmp: tmp.write_bytes(data), "partition file", "; choose another --out")
        self.path = path
        return path

    def check_matches(self, dataset) -> None:
        """FedsimError if this partition was made for another dataset or other split sizes."""
        name = getattr(dataset, "name", "?")
        n_train, n_test = len(dataset.y_train), len(dataset.y_test)
        m = self.meta
        where = f"partition file {self.path}" if self.path else "the partition"
        if m.get("dataset") != name or m.get("num_train") != n_train:
            raise FedsimError(f"{where} was made for {m.get('dataset')} ({m.get('num_train')} train samples), "
                              f"not {name} ({n_train}); make one with fedsim partition --dataset {name}")
        if m.get("num_test") != n_test:
            raise FedsimError(f"{where} was made for {m.get('dataset')} with {m.get('num_test')} test samples, "
                              f"not {n_test}; make it again with fedsim partition")
        classes = getattr(dataset, "num_classes", None)
        if classes is not None and m.get("num_classes") is not None and m.get("num_classes") != classes:
            raise FedsimError(f"{where} says {m.get('num_classes')} classes, but {name} has {classes}; make it again "
                              "with fedsim partition")
        made_for = m.get("dataset_sha256")  # absent in files written before fedsim recorded it
        if made_for is not None and hasattr(dataset, "fingerprint") and made_for != dataset.fingerprint():
            raise FedsimError(f"{where} was made for other contents of {name} (data sha256 {made_for[:12]}..., now "
                              f"{dataset.fingerprint()[:12]}...): the files or --normalize changed; make it again "
                              "with fedsim partition")

    def label_counts(self, labels, num_classes: int | None = None, split: str = "train") -> np.ndarray:
        """(clients x classes) sample counts; `labels` is the label array the split's indices point into."""
        labels = as_labels(labels)
        index, offsets = ((self.train_index, self.train_offsets) if split == "train"
                          else (self.test_index, self.test_offsets))
        c = num_classes if num_classes is not None else self.meta.get("num_classes")
        c = int(c if c is not None else labels.max(initial=-1) + 1)
        owner = np.repeat(np.arange(self.num_clients), np.diff(offsets))
        flat = np.bincount(owner * c + labels[index], minlength=self.num_clients * c)
        return flat.reshape(self.num_clients, c)

    def __repr__(self) -> str:
        m = self.meta
        return (f"Partition({m.get('dataset')}, {m.get('scheme')} {m.get('params')}, "
                f"{self.num_clients} clients, seed {m.get('seed')})")


def make_parent_folder(path: Path, what: str) -> None:
    """Create `path`'s folder, or a FedsimError naming the part of the path that is in the way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists()), None)
        why = f"{blocker} is not a folder" if blocker is not None and not blocker.is_dir() else e.strerror
        raise FedsimError(f"cannot write {what} {path}: {why}; choose another path") from None


def save_partition(partition: Partition, path: str | Path) -> Path:
    return partition.save(path)


def load_partition(path: str | Path) -> Partition:
    """Read a `.fsp` file, verifying magic, lengths, hashes and bounds (FedsimError if anything is off)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FedsimError(f"partition file {path} does not exist; make one with fedsim partition") from None
    except IsADirectoryError:
        raise FedsimError(f"partition file {path} is a directory, not a file") from None
    except OSError as e:
        raise FedsimError(f"cannot read partition file {path}: {e.strerror}") from None

    def damaged(why: str) -> FedsimError:
        return FedsimError(f"partition file {path} is damaged ({why}); make it again with fedsim partition")

    if not data.startswith(_MAGIC_NAME):
        raise FedsimError(f"{path} is not a fedsim partition file (it does not start with "
                          f"{MAGIC.decode().strip()!r})")
    line_end = data.find(b"\n", 0, 64)
    version = _VERSION_OF_MAGIC.get(data[:line_end + 1]) if line_end >= 0 else None
    if version is None:
        line = data[:line_end if line_end >= 0 else 64].decode("ascii", "replace")
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise FedsimError(f"partition file {path} has format {line!r}, which this fedsim cannot read "
                          f"(it reads versions {readable}); make it again with this fedsim")
    pos = line_end + 1
    if len(data) < pos + 8 + 32:
        raise damaged("truncated")
    (head_len,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    if pos + head_len + 32 > len(data):
        raise damaged("truncated")
    try:
        header = json.loads(data[pos:pos + head_len].decode())
        n = int(header["num_clients"])
        n_train, n_test = int(header["lengths"]["train_index"]), int(header["lengths"]["test_index"])
        meta = dict(header["meta"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise damaged("unreadable header") from None
    pos += head_len
    if n < 0 or n_train < 0 or n_test < 0:
        raise damaged("negative lengths")
    expected = pos + 8 * (2 * (n + 1) + n_train + n_test) + 32
    if len(data) != expected:
        raise damaged(f"{'truncated' if len(data) < expected else 'extra bytes'}: {len(data)} bytes, "
                      f"expected {expected}")
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise damaged("checksum mismatch: the file was modified")
    arrays = []
    for count in (n + 1, n_train, n + 1, n_test):
        arrays.append(np.frombuffer(data, dtype="<i8", count=count, offset=pos).astype(np.int64))
        pos += 8 * count
    train_offsets, train_index, test_offsets, test_index = arrays
    try:
        part = Partition(train_index, train_offsets, test_index, test_offsets, meta, path=path,
                         format_version=version)
    except FedsimError:
        raise damaged("inconsistent offsets") from None
    if part.meta["sha256"] != meta.get("sha256"):
        raise damaged("index hash mismatch")
    bounds = {"train": meta.get("num_train"),
              "test": meta.get("num_train") if meta.get("client_test_source") == "train" else meta.get("num_test")}
    for name, index in (("train", train_index), ("test", test_index)):
        limit = bounds[name]
        if not isinstance(limit, int) or (len(index) and (index.min() < 0 or index.max() >= limit)):
            raise damaged(f"{name} indices out of range")
    _check_each_sample_once(part, path)
    return part


def _check_each_sample_once(part: Partition, path: Path) -> None:
    """FedsimError unless every sample is at one client at most: a train sample in one client's train set, a test
    sample in one client's test slice; held-out test slices (client_test_source "train") drawn from no client's
    training samples. A hand-made file with its hashes recomputed passes every other check."""
    held_out = part.meta.get("client_test_source") == "train"
    groups = [("train", part.train_index, part.train_offsets), ("test", part.test_index, part.test_offsets)]
    if held_out:  # both index the train split: together, a sample at most once
        groups = [("train or held-out test", np.concatenate([part.train_index, part.test_index]),
                   np.concatenate([part.train_offsets, part.train_offsets[-1] + part.test_offsets[1:]]))]
    for what, index, offsets in groups:
        order = np.argsort(index, kind="stable")
        repeated = np.flatnonzero(index[order][1:] == index[order][:-1])
        if len(repeated):
            first, second = order[repeated[0]], order[repeated[0] + 1]
            owners = np.searchsorted(offsets, [first, second], side="right") - 1
            n = part.num_clients
            who = [f"client {o}" if o < n else f"client {o - n}'s test slice" for o in owners]
            raise FedsimError(f"partition file {path} puts {what} sample {index[first]} at two places ({who[0]} and "
                              f"{who[1]}): a partition gives each sample to one client; make it again with fedsim "
                              "partition")
