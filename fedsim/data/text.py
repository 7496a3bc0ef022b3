"""Text classification data: a tokenizer, a vocabulary built from the training split, and texts as token ids.

    tokenize(text) -> list[str]                        lowercased words and the punctuation . , ! ? ;
    build_vocabulary(token_lists, size) -> Vocabulary  the `size` most frequent training tokens (ties by the token)
    text_dataset(name, train, test, ...) -> Dataset    texts as int64 (N, seq_len) token ids, padded or cut

The tokenizer is LEAF's `split_line` (models/utils/language_utils.py: words, apostrophes kept, and the
punctuation . , ! ? ;), lowercased as torchtext's `basic_english` that PFLlib's AG News uses. The vocabulary is
a function of the training split alone: id 0 is the padding token, id 1 every token outside the vocabulary, then
the `size - 2` most frequent training tokens, most frequent first, ties broken by the token itself, so the same
training texts always give the same ids (its sha256 names it in the run record, and the run writes it beside its
CSV as `<name>.vocab.txt`, one token a line, line k = id k). A text longer than `seq_len` tokens is cut to its
first `seq_len`; a shorter one is padded with id 0 at the end (LEAF pads Sent140 at the end too).

`embeddings=PATH` reads word vectors in GloVe's text format (a word, then its numbers, one word a line) for the
vocabulary's tokens: the models that have an embedding table (sent140-lstm) start from them, and the run
record says how many tokens the file held; tokens it lacks get random vectors of the file's spread.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsim.errors import FedsimError

PAD, UNKNOWN = "<pad>", "<unk>"
DEFAULT_VOCAB_SIZE = 20_000
DEFAULT_SEQ_LEN = 200  # PFLlib's AG News max_len

_TOKENS = re.compile(r"[\w']+|[.,!?;]")


def tokenize(text: str | None) -> list[str]:
    """Lowercased words (apostrophes kept) and the punctuation . , ! ? ; of `text` (a missing text: none)."""
    return _TOKENS.findall(text.lower()) if text else []


@dataclass
class Vocabulary:
    """Token ids: `tokens[k]` is id k (0 padding, 1 unknown). `vectors`: (len, dim) float32 word vectors read from
    an embeddings file (None: the model's embedding starts random); `embeddings`: what the record says of them."""

    tokens: list[str]
    vectors: object = None  # torch.Tensor | None
    embeddings: dict | None = None
    _ids: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self) -> dict[str, int]:
        if not self._ids:
            self._ids = {t: i for i, t in enumerate(self.tokens)}
        return self._ids

    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()

    def encode(self, token_lists: list[list[str]], seq_len: int) -> np.ndarray:
        """int64 (N, seq_len): each text's first seq_len token ids, padded with 0."""
        ids, unknown = self.ids(), 1
        out = np.zeros((len(token_lists), seq_len), dtype=np.int64)
        for row, tokens in zip(out, token_lists, strict=True):
            taken = [ids.get(t, unknown) for t in tokens[:seq_len]]
            row[: len(taken)] = taken
        return out

    def record(self) -> dict:
        return {"size": len(self), "sha256": self.sha256(), "embeddings": self.embeddings or "random (trained)"}

    def write(self, path: Path) -> None:
        from fedsim.files import write_atomically

        text = "\n".join(self.tokens) + "\n"
        write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), "vocabulary", "; choose --out-dir")


def build_vocabulary(token_lists, size: int) -> Vocabulary:
    """The padding and unknown tokens, then the `size - 2` most frequent tokens (ties by the token)."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    counts.pop(PAD, None)
    counts.pop(UNKNOWN, None)
    kept = sorted(counts, key=lambda t: (-counts[t], t))[: max(size - 2, 0)]
    return Vocabulary([PAD, UNKNOWN, *kept])


def read_embeddings(path: str | Path, vocabulary: Vocabulary, seed: int = 0) -> Vocabulary:
    """`vocabulary` with vectors from a GloVe-format text file: its rows for the vocabulary's tokens; the tokens it
    lacks get N(0, the file's std) vectors (keyed by `seed`), padding a zero vector."""
    import torch

    path = Path(path).expanduser()
    ids = vocabulary.ids()
    found: dict[int, np.ndarray] = {}
    dim, total, square, count = None, 0.0, 0.0, 0
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                digest.update(raw)
                word, _, rest = raw.decode("utf-8", errors="replace").rstrip("\r\n").partition(" ")
                if not rest:
                    continue
                try:
                    values = np.array(rest.split(), dtype=np.float32)
                except ValueError:
                    raise FedsimError(f"embeddings file {path}, line {number}: expected a word and numbers (GloVe's "
                                      f"text format)") from None
                if dim is None:
                    dim = len(values)
                elif len(values) != dim:
                    raise FedsimError(f"embeddings file {path}, line {number}: {len(values)} numbers, the first line "
                                      f"has {dim}")
                total, square, count = total + float(values.sum()), square + float((values ** 2).sum()), count + dim
                if word in ids:
                    found[ids[word]] = values
    except OSError as e:
        raise FedsimError(f"cannot read embeddings file {path}: {e.strerror or e}") from None
    if dim is None:
        raise FedsimError(f"embeddings file {path} holds no vectors (expected GloVe's text format: a word and its "
                          f"numbers a line)")
    mean = total / count
    std = float(np.sqrt(max(square / count - mean**2, 1e-12)))
    vectors = np.random.default_rng(seed).normal(0.0, std, (len(vocabulary), dim)).astype(np.float32)
    vectors[0] = 0.0
    for i, v in found.items():
        vectors[i] = v
    vocabulary.vectors = torch.from_numpy(vectors)
    vocabulary.embeddings = {"file": str(path.resolve()), "sha256": digest.hexdigest(), "dim": dim,
                             "found": len(found), "of": len(vocabulary) - 2}
    return vocabulary


def text_dataset(name: str, train_texts: list[str], y_train, test_texts: list[str], y_test, *, num_classes: int,
                 seq_len: int | None = None, vocab_size: int | None = None, embeddings: str | None = None,
                 client_train=None, client_test=None, info: dict | None = None, default_seq_len: int = DEFAULT_SEQ_LEN):
    """The Dataset of tokenized texts and int labels: the vocabulary from the training texts, ids (N, seq_len).
    `client_train`/`client_test`: a client id per text (the natural split, as `Dataset.from_tensors`)."""
    import torch

    from fedsim.data.datasets import Dataset
    from fedsim.data.user import _natural_split

    seq_len = default_seq_len if seq_len is None else seq_len
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    for option, value, low in (("--seq-len", seq_len, 1), ("--vocab-size", vocab_size, 3)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FedsimError(f"{option} must be a whole number >= {low}, got {value!r}")
    if not len(train_texts) or not len(test_texts):
        raise FedsimError(f"dataset {name}: the {'train' if not len(train_texts) else 'test'} split is empty")
    train_tokens = [tokenize(t) for t in train_texts]
    vocabulary = build_vocabulary(train_tokens, vocab_size)
    if embeddings is not None:
        read_embeddings(embeddings, vocabulary)
    x_train = torch.from_numpy(vocabulary.encode(train_tokens, seq_len))
    x_test = torch.from_numpy(vocabulary.encode([tokenize(t) for t in test_texts], seq_len))
    ys = [torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in (y_train, y_test)]
    natural_train = natural_test = None
    info = dict(info or {})
    if client_train is not None:
        natural_train, natural_test, info["client_ids"] = _natural_split(
            name, np.asarray(client_train), None if client_test is None else np.asarray(client_test))
    info.update(seq_len=seq_len, vocabulary=vocabulary.record(),
                truncated=float(np.mean([len(t) > seq_len for t in train_tokens])))
    dataset = Dataset(name, x_train, ys[0], x_test, ys[1], num_classes=num_classes, natural_train=natural_train,
                      natural_test=natural_test, info=info)
    dataset.vocabulary = vocabulary
    return dataset
