"""LEAF's Shakespeare next-character task (Caldas et al., "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097; McMahan et al., AISTATS 2017), built from tiny-shakespeare (karpathy/char-rnn's input.txt).

The file is "SPEAKER:\\n line\\n line\\n\\n" blocks. LEAF's client is a (play, role) pair, but tiny-shakespeare
has no play titles or act markers (its two triple blank lines are not play boundaries), so play boundaries
cannot be found cheaply and **a client is a speaker name over the whole text**: a role that appears in
several plays (GLOUCESTER in Richard III and Henry VI; generic ones such as Servant, Messenger, First
Citizen) is one client. A block whose first line does not end with ":" continues the previous speech.

As LEAF's preprocessing (gen_all_data.py, split_data.py):
  * a role's text is its lines in order, joined by spaces, runs of spaces collapsed to one;
  * samples are every 80-character window of it (stride 1), label = the next character;
  * characters are indices into LEAF's 80-character ALL_LETTERS; any other character (tiny-shakespeare has
    one, a "$") gets the extra index 80, so there are 81 classes;
  * a role's first int(0.8 n) windows are its train samples; its test samples start 79 windows later (so a
    test window shares no input characters with a train window) and run to the end;
  * a role is kept when it has a train and a test sample, i.e. n >= 396 windows (476 characters of text).
Inputs are int64 token ids of shape (N, 80); clients are the kept roles in sorted order (`info["roles"]`),
given as the natural split.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN = len(ALL_LETTERS)  # the index of every character outside ALL_LETTERS
NUM_CLASSES = len(ALL_LETTERS) + 1
SEQ_LENGTH = 80
TRAIN_FRACTION = 0.8
FILE = Path("tinyshakespeare") / "input.txt"

_CODES = np.full(256, UNKNOWN, dtype=np.int64)
_CODES[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))


def role_texts(text: str) -> dict[str, str]:
    """speaker name -> the role's text (its lines joined by spaces, runs of spaces collapsed), in file order."""
    lines: dict[str, list[str]] = {}
    speaker = None
    for block in re.split(r"\n\s*\n", text):
        rows = [row.strip() for row in block.strip().split("\n") if row.strip()]
        if not rows:
            continue
        if rows[0].endswith(":"):
            speaker, rows = rows[0][:-1].strip(), rows[1:]
        if speaker is not None:
            lines.setdefault(speaker, []).extend(rows)
    return {role: re.sub(" {2,}", " ", " ".join(rows)) for role, rows in lines.items()}


def encode(text: str) -> np.ndarray:
    """Indices into ALL_LETTERS (UNKNOWN for any other character), int64."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _CODES[np.minimum(codes, 255)] if len(codes) else np.zeros(0, dtype=np.int64)


def split_windows(n: int) -> tuple[range, range]:
    """LEAF's per-role split of n windows: (train window positions, test window positions)."""
    n_train = int(TRAIN_FRACTION * n)
    return range(n_train), range(n_train + SEQ_LENGTH - 1, n)


MIN_WINDOWS = next(n for n in range(1, 10_000) if all(len(part) for part in split_windows(n)))


def build(text: str, name: str = "shakespeare", source: str | None = None):
    """The Dataset of a text in tiny-shakespeare's format (see the module docstring)."""
    import torch

    from fedsim.data.datasets import Dataset

    texts = role_texts(text)
    kept = sorted(role for role, t in texts.items() if len(t) - SEQ_LENGTH >= MIN_WINDOWS)
    if not kept:
        raise FedsimError(f"dataset {name}: no role has {MIN_WINDOWS + SEQ_LENGTH} characters of text "
                          f"(LEAF's minimum for a train and a test window); is it 'SPEAKER:' blocks?")
    windows = {}
    for role in kept:
        codes = torch.from_numpy(encode(texts[role]))
        windows[role] = codes.unfold(0, SEQ_LENGTH + 1, 1)  # row i: characters i .. i+80, the last one the label
    parts = {role: split_windows(len(w)) for role, w in windows.items()}
    splits = []
    for which in (0, 1):
        sizes = [len(parts[role][which]) for role in kept]
        x = torch.empty((sum(sizes), SEQ_LENGTH), dtype=torch.int64)
        y = torch.empty(sum(sizes), dtype=torch.int64)
        start = 0
        for role, size in zip(kept, sizes, strict=True):
            span = parts[role][which]
            x[start : start + size] = windows[role][span.start : span.stop, :SEQ_LENGTH]
            y[start : start + size] = windows[role][span.start : span.stop, SEQ_LENGTH]
            start += size
        ends = np.cumsum(sizes)
        splits.append((x, y, [np.arange(e - s, e, dtype=np.int64) for s, e in zip(sizes, ends, strict=True)]))
    (x_train, y_train, natural_train), (x_test, y_test, natural_test) = splits
    info = {"source": source, "roles": kept, "roles_dropped": len(texts) - len(kept), "min_windows": MIN_WINDOWS,
            "seq_length": SEQ_LENGTH, "vocabulary": ALL_LETTERS, "unknown_index": UNKNOWN,
            "train_fraction": TRAIN_FRACTION}
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=NUM_CLASSES, natural_train=natural_train,
                   natural_test=natural_test, info=info)


def load_shakespeare(data_dir: Path):
    """`shakespeare`: tiny-shakespeare's `tinyshakespeare/input.txt` under `data_dir`."""
    path = Path(data_dir) / FILE
    if not path.is_file():
        hint = (f"{Path(data_dir) / FILE.name} is there: put it in {Path(data_dir) / FILE.parent}/"
                if (Path(data_dir) / FILE.name).is_file() else
                "get it from karpathy/char-rnn (data/tinyshakespeare/input.txt)")
        raise FedsimError(f"dataset shakespeare: no {path}; {hint} and pass --data-dir to the folder that "
                          f"holds {FILE.parent}/")
    return build(path.read_text(encoding="utf-8"), source=str(path.resolve()))
