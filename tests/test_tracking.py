"""--log tensorboard / mlflow: every CSV column per round, read back through the tools' own readers."""

import importlib.util

import pandas as pd
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import Config
from fedsim.errors import FedsimError

runner = CliRunner()


def small(tmp_path, **kw):
    base = dict(rounds=3, clients=4, local_steps=3, out_dir=str(tmp_path / "runs"), quiet=True, name="t")
    if "mlflow" in (kw.get("log") or ""):  # --mlflow-uri goes with --log mlflow only
        base["mlflow_uri"] = (tmp_path / "mlruns").as_uri()
    return Config(**{**base, **kw})


def tb_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_the_csv_and_resume_adds_no_duplicate_steps(tmp_path):
    pytest.importorskip("tensorboard")
    fedsim.run(small(tmp_path, log="tensorboard", rounds=2, checkpoint_every=1))
    fedsim.run(resume=tmp_path / "runs" / "t.csv", rounds=4, out_dir=str(tmp_path / "runs"))
    csv = pd.read_csv(tmp_path / "runs" / "t.csv")
    scalars = tb_scalars(tmp_path / "runs" / "tb" / "t")
    assert set(csv.columns) - {"round"} <= set(scalars)
    for column in ("test_accuracy", "train_loss", "bytes_up", "personal_accuracy_p10"):
        assert [s for s, _ in scalars[column]] == [1, 2, 3, 4]
        assert [v for _, v in scalars[column]] == pytest.approx(csv[column].tolist(), rel=1e-5)


def test_mlflow_run_holds_params_metrics_and_files_and_resume_continues_it(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    fedsim.run(small(tmp_path, log="mlflow", rounds=2, checkpoint_every=1, lr=0.07))
    fedsim.run(resume=tmp_path / "runs" / "t.csv", rounds=4, out_dir=str(tmp_path / "runs"))
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    runs = mlflow.search_runs(experiment_names=["fedsim"])
    assert len(runs) == 1 and runs["status"][0] == "FINISHED" and runs["params.lr"][0] == "0.07"
    csv = pd.read_csv(tmp_path / "runs" / "t.csv")
    assert runs["metrics.test_accuracy"][0] == pytest.approx(csv["test_accuracy"].iloc[-1])
    client = mlflow.MlflowClient()
    run_id = runs["run_id"][0]
    history = client.get_metric_history(run_id, "test_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx(csv["test_loss"].tolist(), rel=1e-5)
    assert {a.path for a in client.list_artifacts(run_id)} == {"t.csv", "t.json"}


def test_a_missing_extra_or_unknown_tracker_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(FedsimError, match=r"pip install 'fedsim\[mlflow\]'"):
        fedsim.run(small(tmp_path, log="mlflow"))
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["train", "--rounds", "1", "--out-dir", str(tmp_path / "cli"), "--log", "wandb"])
    assert result.exit_code == 2 and "unknown --log 'wandb'" in result.output
    assert not (tmp_path / "cli").exists()
