"""Bad input found by an outside probe of the CLI (issue 26): each is one line and the right exit code, never a
traceback, and refused before anything is written (a sweep: before its first run trains)."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.errors import DivergenceError, FedsimError

runner = CliRunner()
FAST = ["--rounds", "1", "--clients", "3", "--quiet"]


def refused(args: list[str], needle: str, code: int = 2) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    return lines[0]


def nothing_in(path) -> bool:
    return not path.exists() or not any(path.iterdir())


def data(x_train, y_train=None, x_test=None, y_test=None):
    g = torch.Generator().manual_seed(0)
    y_train = torch.arange(len(x_train)) % 3 if y_train is None else y_train
    x_test = torch.randn(12, *x_train.shape[1:], generator=g) if x_test is None else x_test
    y_test = torch.arange(len(x_test)) % 3 if y_test is None else y_test
    return fedsim.Dataset.from_tensors(x_train, y_train, x_test, y_test, name="mine")


# 6, 8: the data


@pytest.mark.parametrize("where", ["x_train", "x_test"])
def test_nan_or_inf_in_the_data_is_refused_naming_the_first_sample(where):
    x = torch.randn(30, 4)
    bad = x.clone()
    bad[7, 2], bad[9, 0] = float("nan"), float("inf")
    with pytest.raises(FedsimError, match=rf"{where} holds NaN or inf in 2 sample\(s\), the first {where}\[7\]"):
        data(bad, x_test=None) if where == "x_train" else data(x, x_test=bad[:12])


def test_complex_inputs_one_class_and_test_classes_never_trained_on():
    x = torch.randn(30, 4)
    with pytest.raises(FedsimError, match="x_train must hold real numbers, got dtype torch.complex64"):
        data(torch.complex(x, x))
    with pytest.raises(FedsimError, match="every training label is 0: a classifier needs at least two classes"):
        data(x, y_train=torch.zeros(30, dtype=torch.long))
    with pytest.warns(UserWarning, match=r"test class\(es\) 2 appear in no training sample"):
        data(x, y_train=torch.arange(30) % 2)


def test_cli_an_npz_with_nan_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    x[3, 1] = np.nan
    np.savez(tmp_path / "d.npz", x_train=x[:24], y_train=np.arange(24) % 3, x_test=x[24:], y_test=np.arange(6) % 3)
    refused(["train", "--dataset", "d.npz", *FAST], "x_train holds NaN or inf in 1 sample(s), the first x_train[3]")
    assert nothing_in(tmp_path / "results")


# 8, 10, 13, 18: the user's model


MODELS = '''
import sys
import torch
from torch import nn


class Late(nn.Module):  # fails on its 40th forward, long after the start-up checks
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 40:
            raise ValueError("boom on call 40")
        return self.fc(x.flatten(1))


class Ints(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)).long()


class NoParams(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)).detach()


class Nan(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x.flatten(1))))
'''


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "probe_models.py").write_text(MODELS)
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("probe_models", "exits"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec,needle", [
    ("probe_models:Ints", "gives outputs of dtype int64"),
    ("probe_models:NoParams", "has no trainable parameters"),
    ("probe_models:NoGrad", "do not depend on its trainable parameters"),
    ("exits:Net", "--model exits:Net: importing exits failed with SystemExit: sys.exit(0) was called"),
])
def test_a_model_that_cannot_train_is_refused_at_start_up_in_one_line(models, spec, needle):
    refused(["train", "--model", spec, *FAST], needle)
    assert nothing_in(models / "results")


def test_an_error_in_the_users_forward_mid_run_names_its_file_and_line_and_the_record_says_so(models):
    line = refused(["train", "--model", "probe_models:Late", "--rounds", "5", "--clients", "3", "--quiet",
                    "--executor", "sequential", "--name", "late"],
                   "training the model failed with ValueError: boom on call 40 (at ")
    assert f"{models / 'probe_models.py'}:16)" in line  # the raise
    record = json.loads((models / "results" / "late.json").read_text())
    assert record["status"] == "stopped" and "boom on call 40" in record["status_detail"]


def test_nan_outputs_stop_the_run_as_diverged_not_in_the_vmap_checks(models):
    refused(["train", "--model", "probe_models:Nan", "--executor", "vmap", *FAST], "training diverged in round 1",
            code=3)


def test_a_callbacks_own_error_is_not_taken_for_the_models(tmp_path):
    def crash(row, total):
        raise RuntimeError("the caller's")

    with pytest.raises(RuntimeError, match="the caller's"):
        fedsim.run(fedsim.Config(rounds=2, clients=3, quiet=True, out_dir=str(tmp_path)), on_round=crash)


def test_show_split_resolves_the_users_model_as_training_does(models):
    result = runner.invoke(app, ["train", "--model", "probe_models:Net", "--show-split"])
    assert result.exit_code == 0, result.output
    assert "fc" in result.output and "body" in result.output


def test_the_folded_and_row_checks_take_nan_outputs_without_failing():
    from fedsim.engine.folded import folding_matches_vmap
    from fedsim.engine.vmap import _rows_interact

    model = nn.Linear(4, 3)
    x = torch.full((8, 4), float("nan"))
    assert folding_matches_vmap(model, x) is False and _rows_interact(model, x) is True


# 9, 19: image folders


def image_folder(root, size=10):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(root / label / f"{i}.png")


def test_an_image_size_whose_decoded_images_cannot_fit_in_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "pics")
    refused(["train", "--dataset", "pics", "--image-size", "100000", *FAST],
            "image folder pics: 12 images of 1x100000x100000 need about 558.8 GiB of memory decoded")
    assert not (tmp_path / "pics" / ".fedsim-cache").exists()


def test_an_image_folder_refusal_leaves_no_cache_in_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "pics")
    refused(["train", "--dataset", "pics", "--test-fraction", "0.01", *FAST], "the test split is empty")
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["cat", "dog"]


# 11, 12, 19: privacy, tracking and straggler options


def test_a_privacy_budget_no_noise_needs_is_one_line():
    pytest.importorskip("dp_accounting")
    refused(["train", "--dp-epsilon", "1e12", "--dp-clip", "1", "--rounds", "2", "--clients", "3", "--quiet"],
            "--dp-epsilon 1e+12 is more than even noise multiplier 0.01 spends in 2 rounds")


@pytest.mark.parametrize("args,needle", [
    (["--log", "mlflow", "--mlflow-uri", "nosuch-scheme://x"], "--mlflow-uri nosuch-scheme://x: MLflow cannot log"),
    (["--mlflow-uri", "sqlite:///m.db"], "--mlflow-uri is where --log mlflow logs: add --log mlflow"),
    (["--dp-noise", "1", "--dp-clip", "1", "--dp-clip-quantile", "0.9"], "--dp-clip-quantile is the quantile"),
    (["--stragglers", "1.0", "--straggler-policy", "drop"], "leaves every client out of every round"),
    (["--stragglers", "1.0"], "leaves every client out of every round"),  # FedAvg drops them by default
])
def test_options_that_would_be_ignored_or_fail_after_the_first_files_are_refused_first(tmp_path, monkeypatch, args,
                                                                                       needle):
    if "mlflow" in args:
        pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    refused(["train", *args, *FAST], needle)
    assert nothing_in(tmp_path / "results") and not (tmp_path / "mlruns").exists()


# 14-17, 19: a sweep refuses before anything trains


@pytest.mark.parametrize("args,needle", [
    (["--algo", "fedavg,fedas", "--executor", "vmap"], "run s_algo=fedas: --executor vmap cannot run"),
    (["--algo", "fedavg,fednova", "--aggregate", "median"], "run s_algo=fednova: --aggregate median"),
    (["--clients", "10,5000"], "run s_clients=5000: cannot split"),
    (["--dataset", "digits,nosuch"], "run s_dataset=nosuch: unknown dataset 'nosuch'"),
    (["--seed", "0-1000000"], "--seed: 0-1000000 gives 1,000,001 values or more"),
    (["--seed", "0-1", "--plot", "x.txt"], "cannot write x.txt: .txt is not an image format"),
    (["--seed", "0-1", "--name", "s1,s2"], "--name cannot vary in a sweep"),
])
def test_a_sweep_value_invalid_for_one_run_is_refused_before_any_run_trains(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    name = [] if "--name" in args else ["--name", "s"]
    refused(["sweep", *args, *name, "--rounds", "1", "--quiet", "--out-dir", "out"], needle)
    assert not (tmp_path / "out").exists()


def test_a_sweep_without_the_tensorboard_extra_is_one_line_with_the_hint_intact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    refused(["sweep", "--seed", "0,1", "--log", "tensorboard", "--rounds", "1", "--quiet", "--out-dir", "out"],
            "pip install 'fedsim[tensorboard]'")
    assert not (tmp_path / "out").exists()


def test_a_failed_runs_detail_is_printed_as_it_is_not_as_markup(tmp_path, monkeypatch):
    from fedsim import sweep

    monkeypatch.chdir(tmp_path)

    def fail(runs, *args, **kwargs):
        for run in runs:
            run.status, run.detail = "failed", "needs pip install 'fedsim[tensorboard]'"
        return runs

    monkeypatch.setattr(sweep, "run_sweep", fail)
    result = runner.invoke(app, ["sweep", "--seed", "0,1", "--rounds", "1", "--quiet", "--out-dir", "out"])
    assert result.exit_code == 3 and result.output.count("'fedsim[tensorboard]'") == 2, result.output


# 19: files a killed run leaves, and a second Ctrl-C


def test_the_temporary_files_of_a_killed_run_are_removed_by_its_next_run(tmp_path):
    for stale in (".r.ckpt.999999.tmp", ".r.json.999999.tmp", ".r.csv.1.tmp"):
        (tmp_path / stale).write_bytes(b"half")
    (tmp_path / ".other.ckpt.999999.tmp").write_bytes(b"another run's")
    fedsim.run(fedsim.Config(rounds=1, clients=3, quiet=True, out_dir=str(tmp_path), name="r"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.999999.tmp", "r.ckpt", "r.csv", "r.json"]


def test_a_ctrl_c_while_python_shuts_down_exits_with_the_commands_code_and_says_nothing(tmp_path):
    script = textwrap.dedent("""
        import atexit, os, signal, sys, time
        from fedsim.cli import _exit_at_once_on_ctrl_c
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(2)))
        _exit_at_once_on_ctrl_c(130)
        sys.exit(130)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and done.stderr == "", done.stderr


# the console script, as a user runs it (slow: each starts a Python)


@pytest.mark.slow
def test_cli_a_double_ctrl_c_ends_quietly(tmp_path):
    import signal
    import time

    csv = tmp_path / "k.csv"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "train", "--rounds", "100000", "--out-dir", str(tmp_path),
                             "--name", "k", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (csv.exists() and len(csv.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode in (130, -signal.SIGINT), stderr  # -2: ended by the second Ctrl-C itself
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.slow
def test_cli_the_probes_crashes_are_one_line_each(tmp_path):
    (tmp_path / "probe_models.py").write_text(MODELS)
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    x[3, 1] = np.inf
    np.savez(tmp_path / "d.npz", x_train=x[:24], y_train=np.arange(24) % 3, x_test=x[24:], y_test=np.arange(6) % 3)
    cases = [(["--model", "probe_models:Late", "--rounds", "5", "--executor", "sequential"], 2, "boom on call 40"),
             (["--model", "exits:Net"], 2, "sys.exit(0) was called"),
             (["--model", "probe_models:Nan"], 3, "diverged"),
             (["--dataset", "d.npz"], 2, "x_train[3]"),
             (["--dp-epsilon", "1e12", "--dp-clip", "1"], 2, "protects nothing"),
             (["--log", "mlflow", "--mlflow-uri", "nosuch-scheme://x"], 2, "MLflow cannot log")]
    for args, code, needle in cases:
        done = subprocess.run([sys.executable, "-m", "fedsim", "train", "--rounds", "2", "--clients", "3", "--quiet",
                               "--out-dir", "out", "--overwrite", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == code and done.stderr.count("\n") == 1 and needle in done.stderr, (args, done.stderr)
    assert not list((tmp_path / "out").glob(".*.lock"))


def test_a_diverging_user_model_is_a_divergence_error_from_python(tmp_path):
    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    with pytest.raises(DivergenceError):
        fedsim.run(fedsim.Config(rounds=1, clients=3, quiet=True, out_dir=str(tmp_path), executor="vmap"), model=Nan())
