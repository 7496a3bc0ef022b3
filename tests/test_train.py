"""`fedsim.run` and `fedsim train` end to end on the embedded digits dataset."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import Config
from fedsim.errors import DivergenceError, FedsimError
from fedsim.metrics import CSV_COLUMNS, TIME_COLUMNS

runner = CliRunner()


def small(tmp_path, **kw):
    base = dict(rounds=2, clients=5, fraction=0.6, out_dir=str(tmp_path), quiet=True, executor="sequential")
    return Config(**{**base, **kw})


def test_run_writes_csv_schema_and_record(tmp_path):
    df = fedsim.run(small(tmp_path, name="a", eval_every=2, rounds=3))
    csv = pd.read_csv(tmp_path / "a.csv")
    assert list(csv.columns) == CSV_COLUMNS
    assert csv["round"].tolist() == [2, 3]  # every 2nd round, and always the last
    assert (csv["clients"] == 3).all()
    assert csv["test_accuracy"].between(0, 1).all()
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["status"] == "finished"
    assert record["config"]["rounds"] == 3 and record["partition"]["hash"]
    assert record["summary"]["rounds_completed"] == 3
    assert len(df) == 2
    # exact model bytes: the mlp on 8x8 digits has 64*200+200 + 200*200+200 + 200*10+10 float32 params
    params = 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert csv["bytes_up"].tolist() == [2 * 3 * 4 * params, 3 * 4 * params]  # rounds 1-2, then round 3
    assert (csv["bytes_down"] == csv["bytes_up"]).all()


def test_same_seed_gives_identical_csv_apart_from_time(tmp_path):
    fedsim.run(small(tmp_path, name="a", momentum=0.9))
    fedsim.run(small(tmp_path, name="b", momentum=0.9))
    fedsim.run(small(tmp_path, name="c", momentum=0.9, seed=1))
    a, b, c = (pd.read_csv(tmp_path / f"{n}.csv").drop(columns=list(TIME_COLUMNS)) for n in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_fedprox_mu_zero_gives_fedavg_numbers(tmp_path):
    a = fedsim.run(small(tmp_path, name="avg", algo="fedavg"))
    b = fedsim.run(small(tmp_path, name="prox", algo="fedprox", mu=0.0))
    cols = [c for c in CSV_COLUMNS if c not in TIME_COLUMNS]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_fedavg_personal_accuracy_is_the_global_model_on_each_slice(tmp_path):
    df = fedsim.run(small(tmp_path, name="p", rounds=1))
    # pooled over all clients' test slices = the whole test split, which the global model is scored on
    assert df["personal_accuracy_pooled"].iloc[0] == pytest.approx(df["test_accuracy"].iloc[0])


def test_zero_sample_clients_are_never_sampled(tmp_path, monkeypatch):
    from fedsim.experiment import Experiment

    seen = []
    original = Experiment.cohort

    def spy(self, round, eligible, size):
        cohort = original(self, round, eligible, size)
        seen.extend(cohort.tolist())
        return cohort

    monkeypatch.setattr(Experiment, "cohort", spy)
    fedsim.run(small(tmp_path, name="q", clients=40, quantity_skew=0.05, min_size=0, fraction=1.0, rounds=2))
    part = fedsim.build_partition(fedsim.load_dataset("digits"), "quantity_skew", 40, seed=0, param=0.05,
                                  min_size=0)
    empty = set(np.flatnonzero(part.train_sizes == 0).tolist())
    assert empty, "the test needs a partition with empty clients"
    assert seen and not (set(seen) & empty)


def test_divergence_stops_with_round_and_client_and_keeps_rows(tmp_path, monkeypatch):
    import fedsim.engine.local as local

    original = local.train_client

    def poisoned(model, data, spec, phases, job, round, lr):
        result = original(model, data, spec, phases, job, round, lr)
        return dataclasses.replace(result, loss=float("nan")) if round == 3 else result

    monkeypatch.setattr(local, "train_client", poisoned)
    with pytest.raises(DivergenceError) as err:
        fedsim.run(small(tmp_path, name="d", rounds=5))
    assert err.value.round == 3 and err.value.client is not None
    assert "round 3" in str(err.value) and "--lr" in str(err.value) and "--clip" in str(err.value)
    csv = pd.read_csv(tmp_path / "d.csv")
    assert csv["round"].tolist() == [1, 2]
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["status"] == "diverged" and "round 3" in record["status_detail"]


def test_cli_divergence_exit_code_3_without_traceback(tmp_path):
    result = runner.invoke(app, ["train", "--lr", "1e4", "--rounds", "3", "--out-dir", str(tmp_path),
                                 "--executor", "sequential", "--quiet"])
    assert result.exit_code == 3, result.output
    assert "diverged in round" in result.output and "Traceback" not in result.output
    assert (tmp_path / "digits-fedavg-mlp-seed0.csv").exists()


def test_cli_train_and_toml_with_flag_override(tmp_path):
    toml = tmp_path / "exp.toml"
    toml.write_text('algo = "fedprox"\nmu = 0.5\nrounds = 1\nclients = 4\nlocal-epochs = 1\nname = "t"\n')
    result = runner.invoke(app, ["train", "--config", str(toml), "--mu", "0.25", "--out-dir", str(tmp_path),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "t.json").read_text())["config"]
    assert config["algo"] == "fedprox" and config["mu"] == 0.25 and config["clients"] == 4


@pytest.mark.parametrize("args,needle", [
    (["--algo", "fedfoo"], "unknown algorithm"),
    (["--model", "nosuchnet"], "unknown model"),
    (["--optimizer", "rmsprop"], "rmsprop"),
    (["--fraction", "0"], "--fraction"),
    (["--fraction", "1.5"], "--fraction"),
    (["--min-clients", "11"], "--min-clients"),
    (["--lr", "-1"], "--lr"),
    (["--algo", "fedprox", "--mu", "-0.1"], "--mu"),
    (["--local-epochs", "0"], "--local-epochs"),
    (["--dirichlet", "0.5", "--shards", "2"], "one partition scheme"),
    (["--dirichlet", "0"], "--dirichlet must be > 0"),
    (["--clients", "5000"], "clients"),
    (["--freeze-base"], "personalized algorithms"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--rounds", "1", "--out-dir", str(tmp_path), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle.lower() in result.output.lower()
    assert "Traceback" not in result.output


def test_toml_unknown_key_is_named(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("rounds = 1\nlearning_rate = 0.1\n")
    result = runner.invoke(app, ["train", "--config", str(toml), "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "learning_rate" in result.output


def test_existing_run_is_refused_unless_overwrite(tmp_path):
    fedsim.run(small(tmp_path, name="x", rounds=1))
    before = (tmp_path / "x.csv").read_text()
    with pytest.raises(FedsimError, match="--overwrite"):
        fedsim.run(small(tmp_path, name="x", rounds=1))
    assert (tmp_path / "x.csv").read_text() == before
    fedsim.run(small(tmp_path, name="x", rounds=1, overwrite=True))


def test_partition_file_for_another_dataset_is_refused(tmp_path):
    part = fedsim.build_partition(fedsim.load_dataset("synthetic"), "natural", 30, seed=0)
    path = tmp_path / "synthetic.fsp"
    part.save(path)
    with pytest.raises(FedsimError, match="synthetic"):
        fedsim.run(small(tmp_path, partition=str(path)))


def test_bn_model_trains_and_buffers_stay_finite(tmp_path):
    df = fedsim.run(small(tmp_path, name="bn", model="cnn-bn", rounds=2, batch_size=16))
    assert df["test_accuracy"].iloc[-1] > 0.3
    assert torch.isfinite(torch.tensor(df["test_loss"].to_numpy())).all()


def test_sigterm_stops_the_run_with_whole_rows_and_a_stopped_record(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "train", "--rounds", "100000", "--name", "k",
                             "--out-dir", str(tmp_path), "--quiet", "--executor", "sequential"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    csv = tmp_path / "k.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not csv.exists() or len(csv.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = pd.read_csv(csv)
    assert len(rows) >= 2 and not rows.isna().any().any()
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["status"] == "stopped" and record["summary"]["rounds_completed"] == rows["round"].iloc[-1]


def test_cli_warnings_are_one_plain_line(tmp_path):
    import subprocess
    import sys

    # a real process: pytest records warnings itself, so only there do they reach stderr as users see them
    proc = subprocess.run([sys.executable, "-m", "fedsim", "train", "--algo", "fedbn", "--rounds", "1", "--clients",
                           "3", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warning: fedbn: the model has no BatchNorm layers, so FedBN is FedAvg\n" in proc.stderr
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr
