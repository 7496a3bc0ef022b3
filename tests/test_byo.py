"""Bring your own model and data, end to end: `fedsim.run(config, model=..., dataset=...)` and the CLI's
`--model package.module:attr`, `--dataset FOLDER|FILE.npz`, as a user runs them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.errors import FedsimError

runner = CliRunner()


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(self.body(x.flatten(1)))


def tensors(seed=0, n=120, clients=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 40, 8, 8, generator=g)
    y = torch.arange(n + 40) % 10
    ids = None if clients is None else np.arange(n) % clients
    test_ids = None if clients is None else np.arange(40) % clients
    return fedsim.Dataset.from_tensors(x[:n], y[:n], x[n:], y[n:], name="mine", client_train=ids,
                                       client_test=test_ids)


def test_own_model_and_data_from_python_record_what_identifies_them(tmp_path):
    model = BNNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = fedsim.Config(algo="fedprox", rounds=2, clients=4, out_dir=str(tmp_path), name="own", quiet=True)
    df = fedsim.run(config, model=model, dataset=tensors())
    assert len(df) == 2 and df["test_accuracy"].notna().all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's model untouched
    record = json.loads((tmp_path / "own.json").read_text())
    assert record["model"]["class"] == "BNNet" and record["model"]["parameters"] == 64 * 16 + 16 + 32 + 170
    assert len(record["model"]["initial_sha256"]) == 64 and record["dataset"]["name"] == "mine"
    assert record["dataset"]["sha256"] == tensors().fingerprint() != tensors(seed=1).fingerprint()
    # the same weights give the same hash; other weights another
    again = fedsim.run(config, model=model, dataset=tensors(), name="again")
    assert json.loads((tmp_path / "again.json").read_text())["model"]["initial_sha256"] == \
        record["model"]["initial_sha256"]
    assert again["test_accuracy"].tolist() == df["test_accuracy"].tolist()


def test_client_ids_are_the_natural_split_and_personalized_algorithms_find_the_head(tmp_path):
    config = fedsim.Config(algo="fedper", natural=True, rounds=1, out_dir=str(tmp_path), quiet=True, name="n")
    fedsim.run(config, model=BNNet, dataset=tensors(clients=3))  # a class: built for the data's shape
    record = json.loads((tmp_path / "n.json").read_text())
    assert record["partition"]["num_clients"] == 3 and record["partition"]["scheme"] == "natural"


def test_a_partition_of_other_data_is_refused(tmp_path):
    part = fedsim.build_partition(tensors(), num_clients=4)
    path = part.save(tmp_path / "p.fsp")
    with pytest.raises(FedsimError, match="other contents"):
        fedsim.run(fedsim.Config(partition=str(path), rounds=1, out_dir=str(tmp_path), quiet=True),
                   model=BNNet(), dataset=tensors(seed=1))


MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def test_cli_model_by_import_path_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('my bug')\n")
    result = runner.invoke(app, ["train", "--model", "mymodels:Net", "--rounds", "1", "--quiet", "--name", "m"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results" / "m.json").read_text())["model"]["class"] == "Net"
    for spec, needle in (("mymodels:Nope", "Nope"), ("nosuch:Net", "nosuch"), ("broken:Net", "my bug")):
        result = runner.invoke(app, ["train", "--model", spec, "--rounds", "1", "--quiet", "--name", "x"])
        assert result.exit_code == 2 and needle in result.output and result.output.count("\n") == 1, result.output
    result = runner.invoke(app, ["train", "--model", "broken:Net", "--debug", "--quiet", "--name", "x"])
    assert result.exit_code == 2 and "Traceback" in result.output and "broken.py" in result.output


def test_cli_image_folder_with_image_size_and_an_npz_with_client_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("cat", "dog"):
            (tmp_path / "pics" / split / label).mkdir(parents=True)
            for i in range(count):
                size = 10 + i % 3  # sizes differ: --image-size is needed
                mode = "RGB" if i % 2 else "L"
                Image.fromarray(rng.integers(0, 255, (size, size, 3) if mode == "RGB" else (size, size),
                                             dtype=np.uint8), mode).save(tmp_path / "pics" / split / label / f"{i}.png")
    result = runner.invoke(app, ["train", "--dataset", "pics", "--rounds", "1", "--quiet", "--clients", "3"])
    assert result.exit_code == 2 and "--image-size" in result.output, result.output
    result = runner.invoke(app, ["train", "--dataset", "pics/", "--image-size", "8", "--rounds", "1", "--quiet",
                                 "--clients", "3", "--model", "cnn"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "results" / "pics-fedavg-cnn-seed0.json").read_text())
    assert record["dataset"]["train"] == 24 and record["dataset"]["classes"] == 2
    x = rng.normal(size=(30, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:24], y_train=np.arange(24) % 3, x_test=x[24:], y_test=np.arange(6) % 3,
             client_train=np.arange(24) % 4, client_test=np.arange(6) % 4)
    result = runner.invoke(app, ["train", "--dataset", "d.npz", "--natural", "--rounds", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results" / "d-fedavg-mlp-seed0.json").read_text())["partition"]["num_clients"] == 4


def test_recurrent_models_train_on_the_sequential_executor_with_the_reason_recorded(tmp_path):
    from fedsim.models import build_model

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 81, (60, 80), generator=g)
    y = torch.randint(0, 81, (60,), generator=g)
    data = fedsim.Dataset(name="text", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:], num_classes=81)
    model = build_model("char-lstm", (80,), 81)
    fedsim.run(fedsim.Config(rounds=1, clients=2, local_steps=1, out_dir=str(tmp_path), name="lstm", quiet=True),
               model=model, dataset=data)
    executor = json.loads((tmp_path / "lstm.json").read_text())["executor"]
    assert executor["name"] == "sequential" and "recurrent" in executor["reason"]
