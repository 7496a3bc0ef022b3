"""--normalize: the pixel scaling papers used (standard mean/std, symmetric [-1, 1], unit [0, 1])."""

import json

import numpy as np
import pytest
import torch
from test_datasets import write_idx_dataset
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import NORMALIZATIONS, Config
from fedsim.data import datasets
from fedsim.data.datasets import load_dataset
from fedsim.errors import FedsimError

runner = CliRunner()


def test_config_and_loader_name_the_same_modes():
    assert NORMALIZATIONS == datasets.NORMALIZATIONS


@pytest.mark.parametrize("mode, low, high", [("symmetric", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_mnist_layout_pixels_map_to_the_mode_range(tmp_path, mode, low, high):
    written = write_idx_dataset(tmp_path, "mnist", gz=True)
    ds = load_dataset("mnist", data_dir=tmp_path, normalize=mode)
    images = written["train"][0]
    expected = low + (high - low) * images.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), expected, atol=1e-6)
    assert ds.info["normalize"] == mode


def test_standard_is_the_default_and_unchanged(tmp_path):
    write_idx_dataset(tmp_path, "mnist", gz=True)
    default = load_dataset("mnist", data_dir=tmp_path)
    standard = load_dataset("mnist", data_dir=tmp_path, normalize="standard")
    assert torch.equal(default.x_train, standard.x_train) and default.fingerprint() == standard.fingerprint()
    assert default.info["mean"] == [0.1307]
    unit = load_dataset("mnist", data_dir=tmp_path, normalize="unit")
    assert unit.fingerprint() != standard.fingerprint()  # the run record's dataset sha256 tells them apart


def test_digits_default_is_its_old_scaling_and_standard_is_zero_mean():
    raw = load_dataset("digits")
    symmetric = load_dataset("digits", normalize="symmetric")
    assert torch.equal(raw.x_train, symmetric.x_train) and float(raw.x_train.min()) == -1.0
    unit = load_dataset("digits", normalize="unit")
    torch.testing.assert_close(unit.x_train, (symmetric.x_train + 1) / 2)
    standard = load_dataset("digits", normalize="standard").x_train.double()
    assert abs(float(standard.mean())) < 1e-6 and abs(float(standard.std()) - 1) < 1e-3


@pytest.mark.parametrize("name, options, message", [
    ("synthetic", {"normalize": "unit"}, "not pixels"),
    ("digits", {"normalize": "zscore"}, "unknown --normalize"),
])
def test_wrong_dataset_or_mode_is_one_line(name, options, message):
    with pytest.raises(FedsimError, match=message):
        load_dataset(name, **options)


def test_cli_records_it_and_resume_refuses_another(tmp_path):
    args = ["train", "--rounds", "2", "--clients", "3", "--local-steps", "2", "--out-dir", str(tmp_path),
            "--name", "n", "--quiet", "--normalize", "unit"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((tmp_path / "n.json").read_text())["config"]["normalize"] == "unit"
    with pytest.raises(FedsimError, match="normalize"):
        fedsim.run(resume=tmp_path / "n.csv", rounds=3, normalize="standard")
    bad = runner.invoke(app, [*args[:-1], "minmax"])
    assert bad.exit_code == 2 and "unknown --normalize 'minmax'" in bad.output


def test_unit_changes_the_numbers_of_a_run(tmp_path):
    base = dict(rounds=1, clients=3, local_steps=3, out_dir=str(tmp_path), quiet=True)
    a = fedsim.run(Config(name="a", **base))
    b = fedsim.run(Config(name="b", normalize="unit", **base))
    assert a["test_loss"][0] != b["test_loss"][0]
