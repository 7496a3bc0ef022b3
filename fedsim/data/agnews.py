"""AG News (Zhang, Zhao, LeCun, "Character-level Convolutional Networks for Text Classification", NeurIPS 2015), the
text column of PFLlib's benchmark, from its original CSV files:

    <data-dir>/ag_news_csv/train.csv, test.csv     (ag_news_csv.tgz, as torchtext and PFLlib download it)

Each row is "class index","title","description" without a header, class 1..4 (World, Sports, Business, Sci/Tech);
fedsim's label is class - 1 and the text is the title and the description joined by a space (PFLlib and
torchtext do the same), tokenized over a vocabulary of the training split (fedsim/data/text.py). 120,000 train /
7,600 test rows. The Hub's copy is `--dataset hf:fancyzhx/ag_news` (the same rows).
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedsim.errors import FedsimError

FOLDERS = ("ag_news_csv", "AG_NEWS")
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


def _read(name: str, path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if len(row) < 2 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= len(CLASSES):
                    raise FedsimError(f"dataset {name}: {path}, line {number} is not \"class 1-4\",\"title\","
                                      f"\"description\" (AG News' CSV layout)")
                labels.append(int(row[0]) - 1)
                texts.append(" ".join(part.replace("\\", " ") for part in row[1:]))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FedsimError(f"dataset {name}: cannot read {path} ({' '.join(str(e).split())[:200]})") from None
    return texts, labels


def load_agnews(root: Path, seq_len: int | None = None, vocab_size: int | None = None, embeddings=None):
    from fedsim.data.text import text_dataset

    folder = next((root / f for f in FOLDERS if (root / f / "train.csv").is_file()), None)
    if folder is None:
        raise FedsimError(f"dataset agnews: no {root / FOLDERS[0]}/train.csv and test.csv; unpack ag_news_csv.tgz in "
                          f"the --data-dir folder (or use --dataset hf:fancyzhx/ag_news)")
    (train_texts, y_train), (test_texts, y_test) = (_read("agnews", folder / f"{s}.csv") for s in ("train", "test"))
    return text_dataset("agnews", train_texts, y_train, test_texts, y_test, num_classes=len(CLASSES),
                        seq_len=seq_len, vocab_size=vocab_size, embeddings=embeddings,
                        info={"folder": str(folder), "classes": list(CLASSES)})
