"""`--dataset hf:NAME`: Hugging Face datasets that the tests write with `datasets` (offline): images with labels,
text with labels, a client column for the natural split; from the CLI and from Python; bad input is one line."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import Config
from fedsim.data.datasets import load_dataset
from fedsim.errors import FedsimError

runner = CliRunner()


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # parquet's arrow copies
    return datasets


def image_dataset(hf, path, n_train=40, n_test=12, size=(8, 8), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    features = hf.Features({"img": hf.Image(), "digit": hf.ClassLabel(names=["zero", "one", "two"]),
                            "writer": hf.Value("string")})

    def split(n, offset):
        return hf.Dataset.from_dict({
            "img": [Image.fromarray((rng.random(size) * 255).astype(np.uint8)) for _ in range(n)],
            "digit": [int(v) for v in rng.integers(0, 3, n)],
            "writer": [f"w{(i + offset) % 4}" for i in range(n)]}, features=features)

    hf.DatasetDict(train=split(n_train, 0), test=split(n_test, 1)).save_to_disk(str(path))
    return path


def text_dataset(hf, path, n=50, seed=0):
    rng = np.random.default_rng(seed)
    words = ["good", "great", "fine", "bad", "awful", "poor", "plot", "film"]
    labels = rng.integers(0, 2, n)
    texts = [" ".join(rng.choice(words[:3] if y else words[3:6], 4)) + " film" for y in labels]
    hf.Dataset.from_dict({"review": texts, "stars": labels.tolist(), "user": rng.integers(0, 5, n).tolist()}) \
        .save_to_disk(str(path))
    return path


def test_an_image_dataset_with_a_client_column(hf, tmp_path):
    path = image_dataset(hf, tmp_path / "digits-hf")
    data = load_dataset(f"hf:{path}", tmp_path, hf_client_column="writer")
    assert data.x_train.shape == (40, 1, 8, 8) and data.x_test.shape == (12, 1, 8, 8)
    assert data.num_classes == 3 and data.info["client_ids"] == ["w0", "w1", "w2", "w3"]
    assert [len(ix) for ix in data.natural_train] == [10] * 4
    record = data.info["hf"]
    assert record["image_column"] == "img" and record["label_column"] == "digit"  # found from the features
    assert record["classes"] == ["zero", "one", "two"] and not data.info["cache_hit"]
    again = load_dataset(f"hf:{path}", tmp_path, hf_client_column="writer")
    assert again.info["cache_hit"] and again.fingerprint() == data.fingerprint()  # decoded once


def test_cli_trains_and_partitions_the_natural_split_by_a_column(hf, tmp_path):
    path = image_dataset(hf, tmp_path / "ds")
    out = tmp_path / "out"
    common = ["--dataset", f"hf:{path}", "--data-dir", str(tmp_path), "--hf-client-column", "writer"]
    result = runner.invoke(app, ["partition", *common, "--natural", "--out", str(tmp_path / "split.fsp")])
    assert result.exit_code == 0, result.output
    assert "natural, 4 clients" in result.output
    result = runner.invoke(app, ["train", *common, "--partition", str(tmp_path / "split.fsp"), "--rounds", "2",
                                 "--out-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "ds-fedavg-mlp-seed0.json").read_text())
    assert record["dataset"]["name"] == f"hf:{path}" and record["dataset"]["hf"]["client_column"] == "writer"
    assert record["dataset"]["hf"]["fingerprints"] and len(record["dataset"]["sha256"]) == 64
    assert record["partition"]["num_clients"] == 4


def test_a_partition_refuses_other_contents_under_the_same_name(hf, tmp_path):
    path = image_dataset(hf, tmp_path / "ds")
    part = tmp_path / "split.fsp"
    assert runner.invoke(app, ["partition", "--dataset", f"hf:{path}", "--data-dir", str(tmp_path), "--out",
                               str(part)]).exit_code == 0
    image_dataset(hf, tmp_path / "ds", seed=1)  # the same name and sizes, other pixels
    result = runner.invoke(app, ["train", "--dataset", f"hf:{path}", "--data-dir", str(tmp_path), "--partition",
                                 str(part), "--rounds", "1", "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "made for other contents" in result.output


def test_from_python_a_text_dataset_with_one_split(hf, tmp_path):
    path = text_dataset(hf, tmp_path / "reviews")
    config = Config(dataset=f"hf:{path}", data_dir=str(tmp_path), hf_label_column="stars",
                    hf_client_column="user", natural=True, model="fasttext", lr=0.5, rounds=2, seq_len=6,
                    out_dir=str(tmp_path / "out"), quiet=True)
    df = fedsim.run(config)
    assert len(df) == 2
    record = json.loads((tmp_path / "out" / "reviews-fedavg-fasttext-seed0.json").read_text())
    source = record["dataset"]["hf"]
    assert source["text_column"] == "review" and source["test_split"] == "0.2 of train (stratified)"
    assert record["dataset"]["train"] + record["dataset"]["test"] == 50 and record["dataset"]["seq_len"] == 6


def test_parquet_files_split_by_their_names(hf, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        hf.Dataset.from_dict({"text": ["a b c"] * n, "label": rng.integers(0, 3, n).tolist()}).to_parquet(
            str(folder / f"{split}-00000.parquet"))
    data = load_dataset(f"hf:{folder}", tmp_path, seq_len=4)
    assert (len(data.y_train), len(data.y_test)) == (30, 10) and data.x_train.shape == (30, 4)


@pytest.mark.parametrize("args,needle", [
    (["--hf-label-column", "nope"], "no column 'nope': pass --hf-label-column (the columns: img (Image), digit "
                                    "(ClassLabel), writer (Value string))"),
    (["--hf-test-split", "validation"], "no split 'validation' (its splits: train, test)"),
    (["--hf-label-column", "writer"], "label column 'writer' holds Value string values"),
    (["--hf-client-column", "author"], "no column 'author'"),
    (["--hf-text-column", "img"], "column 'img' holds Image values, not text"),
    (["--seq-len", "5"], "--seq-len, --vocab-size and --embeddings apply to text"),
])
def test_bad_columns_and_splits_are_one_line(hf, tmp_path, args, needle):
    path = image_dataset(hf, tmp_path / "ds", n_train=6, n_test=3)
    result = runner.invoke(app, ["train", "--dataset", f"hf:{path}", "--data-dir", str(tmp_path), *args,
                                 "--rounds", "1", "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split()) and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_an_unlabeled_or_empty_client_is_refused(hf, tmp_path):
    path = tmp_path / "t"
    hf.DatasetDict(train=hf.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}),
                   test=hf.Dataset.from_dict({"text": ["c"], "label": [-1]})).save_to_disk(str(path))
    with pytest.raises(FedsimError, match="holds -1 .an unlabeled split"):
        load_dataset(f"hf:{path}", tmp_path)
    with pytest.raises(FedsimError, match="no such local folder or file"):
        load_dataset(f"hf:{tmp_path / 'missing'}", tmp_path)


def test_hf_options_need_an_hf_dataset(tmp_path):
    result = runner.invoke(app, ["train", "--hf-client-column", "writer", "--rounds", "1", "--out-dir",
                                 str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and "--hf-client-column applies to --dataset hf:NAME" in result.output


def test_without_the_extra_it_says_which_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    result = runner.invoke(app, ["train", "--dataset", "hf:mnist", "--rounds", "1", "--out-dir", str(tmp_path),
                                 "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "pip install -e '.[hf]'" in result.output  # the markup keeps [hf]
