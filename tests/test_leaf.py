"""LEAF's natural splits from its own JSON layout (femnist, celeba, sent140), on small files written here, with
LEAF's models; files not in LEAF's layout are one line, exit 2."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.data.datasets import load_dataset
from fedsim.errors import FedsimError

runner = CliRunner()


def write_leaf(root, name, users_by_file, split):
    """users_by_file: [{user: (x, y)}] -> <root>/<name>/data/<split>/all_data_<i>.json in LEAF's layout."""
    folder = root / name / "data" / split
    folder.mkdir(parents=True, exist_ok=True)
    for i, users in enumerate(users_by_file):
        content = {"users": list(users), "num_samples": [len(y) for _, y in users.values()],
                   "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}
        (folder / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(content))


def femnist(root, sizes=((6, 2), (4, 2), (5, 1)), seed=0):
    rng = np.random.default_rng(seed)
    users = {}
    for i, (n_train, n_test) in enumerate(sizes):
        pixels = rng.random((n_train + n_test, 784)).round(3).tolist()
        labels = rng.integers(0, 3, n_train + n_test).tolist()  # few classes: every test class also trains
        users[f"f{i:04d}_{i}"] = (pixels, labels)
    cut = {u: sizes[i][0] for i, u in enumerate(users)}
    write_leaf(root, "femnist", [{u: (x[:cut[u]], y[:cut[u]]) for u, (x, y) in list(users.items())[:2]},
                                 {u: (x[:cut[u]], y[:cut[u]]) for u, (x, y) in list(users.items())[2:]}], "train")
    write_leaf(root, "femnist", [{u: (x[cut[u]:], y[cut[u]:]) for u, (x, y) in users.items()}], "test")
    return root


def test_femnist_gives_a_client_per_writer(tmp_path):
    data = load_dataset("femnist", femnist(tmp_path))
    assert data.x_train.shape == (15, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.num_classes == 62
    assert data.info["client_ids"] == ["f0000_0", "f0001_1", "f0002_2"]
    assert [len(ix) for ix in data.natural_train] == [6, 4, 5] and [len(ix) for ix in data.natural_test] == [2, 2, 1]
    unit = load_dataset("femnist", tmp_path, normalize="unit")  # LEAF's own [0, 1] pixels
    first = json.loads(next((tmp_path / "femnist/data/train").glob("*0_niid*")).read_text())
    assert np.allclose(unit.x_train[0].flatten().numpy(), first["user_data"]["f0000_0"]["x"][0], atol=1e-6)


def test_cli_trains_femnist_with_leafs_cnn_on_the_natural_split(tmp_path):
    femnist(tmp_path / "leaf")
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--dataset", "femnist", "--data-dir", str(tmp_path / "leaf"), "--natural",
                                 "--model", "femnist-cnn", "--rounds", "1", "--local-steps", "1",
                                 "--out-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "femnist-fedavg-femnist-cnn-seed0.json").read_text())
    assert record["partition"]["num_clients"] == 3 and record["model"]["parameters"] == 6_603_710  # LEAF's 6.6 M


def test_celeba_reads_the_images_named_in_the_json(tmp_path):
    images = tmp_path / "celeba" / "data" / "raw" / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, 9)]
    for name in names:
        Image.fromarray((rng.random((20, 16, 3)) * 255).astype(np.uint8)).save(images / name)
    write_leaf(tmp_path, "celeba", [{"7": (names[:3], [1.0, 0.0, 1.0]), "12": (names[3:6], [0, 0, 1])}], "train")
    write_leaf(tmp_path, "celeba", [{"7": (names[6:7], [1]), "12": (names[7:], [0])}], "test")
    data = load_dataset("celeba", tmp_path, image_size=(12, 12))
    assert data.x_train.shape == (6, 3, 12, 12) and data.num_classes == 2
    assert data.info["client_ids"] == ["12", "7"] and data.y_train.tolist() == [1, 0, 1, 0, 0, 1]
    assert load_dataset("celeba", tmp_path).x_train.shape[2:] == (84, 84)  # LEAF's size
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--dataset", "celeba", "--data-dir", str(tmp_path), "--natural", "--model",
                                 "celeba-cnn", "--rounds", "1", "--out-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output


def test_sent140_trains_leafs_lstm_and_the_record_says_sequential(tmp_path):
    tweets = ["i love this so much", "worst day ever", "happy happy joy", "so sad and tired", "great news today"]
    rng = np.random.default_rng(0)

    def rows(n):
        picks = rng.integers(0, len(tweets), n)
        return [["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "u", tweets[p]] for p in picks], \
            [int(p in (0, 2, 4)) for p in picks]

    write_leaf(tmp_path, "sent140", [{"alice": rows(6), "bob": rows(5)}], "train")
    write_leaf(tmp_path, "sent140", [{"alice": rows(2), "bob": rows(2)}], "test")
    data = load_dataset("sent140", tmp_path)
    assert data.x_train.shape == (11, 25) and data.info["seq_len"] == 25  # LEAF's 25 words
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--dataset", "sent140", "--data-dir", str(tmp_path), "--natural", "--model",
                                 "sent140-lstm", "--rounds", "1", "--out-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sent140-fedavg-sent140-lstm-seed0.json").read_text())
    assert record["executor"]["name"] == "sequential" and "recurrent layer" in record["executor"]["reason"]
    assert record["dataset"]["vocabulary"]["embeddings"] == "random (trained)"


@pytest.mark.parametrize("content,needle", [
    ({"users": ["a"], "num_samples": [1]}, "not in LEAF's layout (it holds num_samples, users)"),
    ([1, 2], "not in LEAF's layout (it holds list)"),
    ({"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": [[0.0] * 784], "y": [1]}}}, "must agree"),
    ({"users": ["a"], "num_samples": [0], "user_data": {"a": {"x": [], "y": []}}}, "an empty client"),
    ({"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.0] * 10], "y": [1]}}}, "784 pixel values"),
    ({"users": ["a"], "num_samples": [1], "user_data": {"a": {"x": [[0.0] * 784], "y": ["x"]}}}, "class numbers"),
])
def test_files_not_in_leafs_layout_are_one_line(tmp_path, content, needle):
    femnist(tmp_path)
    bad = tmp_path / "femnist" / "data" / "train" / "zz_bad.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(FedsimError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("femnist", tmp_path)
    result = runner.invoke(app, ["train", "--dataset", "femnist", "--data-dir", str(tmp_path), "--natural",
                                 "--rounds", "1", "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_missing_files_say_which_leaf_command_makes_them(tmp_path):
    with pytest.raises(FedsimError, match=r"leaf/data/sent140: ./preprocess.sh -s niid --sf 0.05 -k 64 -t sample"):
        load_dataset("sent140", tmp_path)
    (tmp_path / "femnist" / "data" / "train").mkdir(parents=True)
    (tmp_path / "femnist" / "data" / "train" / "x.json").write_text("{not json")
    with pytest.raises(FedsimError, match="cannot read .* as JSON"):
        load_dataset("femnist", tmp_path)


def test_a_test_user_must_be_a_train_user(tmp_path):
    femnist(tmp_path)
    write_leaf(tmp_path, "femnist", [{"stranger": ([[0.5] * 784], [0])}], "test")
    with pytest.raises(FedsimError, match="every test client must also be a train client"):
        load_dataset("femnist", tmp_path)
