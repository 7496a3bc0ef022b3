"""Runs logged where researchers look: TensorBoard (`--log tensorboard`) and MLflow (`--log mlflow`).

A tracker is a callback of the round loop: `on_row(row)` for each CSV row, `on_end(status, files)` once, after the
run's files are closed. Both use the libraries' own writers:

- TensorBoard: `torch.utils.tensorboard.SummaryWriter` in `<out-dir>/tb/<name>`; every CSV column of a row is a
  scalar at step = round, and the config is the run's hparams. A resumed run writes to the same folder with
  `purge_step` = the first round it computes again, so TensorBoard drops the rows it recomputes: no duplicate steps.
- MLflow: `mlflow.MlflowClient` on `--mlflow-uri` (default: the file store `./mlruns`), experiment "fedsim", one
  MLflow run per fedsim run (tagged with the CSV's absolute path); the config as params, every CSV column per
  round as a metric at step = round, the CSV and JSON as artifacts at the end, and the status. A resumed run finds
  its MLflow run by that tag and logs only rounds after the last one logged.

Both are optional extras (`pip install 'fedsim[tensorboard]'`, `'fedsim[mlflow]'`); without them `--log` is one
line saying which to install, before anything is written, and so is a tracking URI MLflow cannot use
(`check_tracking`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from fedsim.errors import FedsimError

TRACKERS = ("tensorboard", "mlflow")
_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
_MLFLOW_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "diverged": "FAILED", "running": "KILLED"}


def requested(log: str | None) -> list[str]:
    """The trackers `--log` names (comma-separated), checked."""
    names = [n.strip() for n in (log or "").split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise FedsimError(f"unknown --log {name!r}: choose tensorboard, mlflow or both (tensorboard,mlflow)")
    return names


def check_options(log: str | None, mlflow_uri: str | None) -> None:
    """The --log names known, and --mlflow-uri given only with --log mlflow (it would be ignored)."""
    if mlflow_uri is not None and "mlflow" not in requested(log):
        raise FedsimError("--mlflow-uri is where --log mlflow logs: add --log mlflow, or leave --mlflow-uri out")


def check_installed(log: str | None) -> None:
    """One line naming the extra to install when a requested tracker's library is missing."""
    import importlib.util

    for name in requested(log):
        if importlib.util.find_spec(name) is None:
            raise FedsimError(f"--log {name} needs the {name} package: pip install 'fedsim[{_EXTRAS[name]}]'")


def check_tracking(config) -> None:
    """Before a run writes anything: its trackers' libraries are installed and MLflow's tracking URI is one MLflow
    can use (an unknown scheme, a server that does not answer): one FedsimError line otherwise."""
    check_installed(config.log)
    if "mlflow" in requested(config.log):
        uri = _mlflow_uri(config)
        try:
            _mlflow_client(uri).get_experiment_by_name("fedsim")
        except Exception as e:  # MlflowException, a refused connection, ...: each means the URI cannot be used
            reason = " ".join(str(e).split())[:200]
            raise FedsimError(f"--mlflow-uri {uri}: MLflow cannot log there ({type(e).__name__}: {reason})") from None


def _mlflow_uri(config) -> str:
    return config.mlflow_uri or Path("mlruns").resolve().as_uri()


def _mlflow_client(uri: str):
    from mlflow import MlflowClient

    if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this opt-out (it suggests sqlite)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


class Trackers:
    """The run's trackers as one callback: `on_row(row)`, `on_end(status, csv, json)`."""

    def __init__(self, config, out_dir: Path, name: str, resume_round: int | None):
        self.trackers = []
        for kind in requested(config.log):
            if kind == "tensorboard":
                self.trackers.append(TensorBoardTracker(config, Path(out_dir) / "tb" / name, resume_round))
            else:
                self.trackers.append(MlflowTracker(config, Path(out_dir) / f"{name}.csv", name, resume_round))

    def on_row(self, row: dict) -> None:
        for tracker in self.trackers:
            tracker.on_row(row)

    def on_end(self, status: str, files: list[Path]) -> None:
        for tracker in self.trackers:
            tracker.on_end(status, files)


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "round" and isinstance(v, int | float)}


def _params(config) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(config.to_dict().items())}


class TensorBoardTracker:
    def __init__(self, config, log_dir: Path, resume_round: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=None if resume_round is None else resume_round + 1)
        if resume_round is None:
            from torch.utils.tensorboard.summary import hparams

            # the hparams in this run's own folder (SummaryWriter.add_hparams would open a sub-run for them)
            for summary in hparams({k: v for k, v in _params(config).items()}, {"test_accuracy": float("nan")}):
                self.writer.file_writer.add_summary(summary)

    def on_row(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["round"]))
        self.writer.flush()

    def on_end(self, status: str, files) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, config, csv_path: Path, name: str, resume_round: int | None):
        self.client = _mlflow_client(_mlflow_uri(config))
        experiment = self.client.get_experiment_by_name("fedsim")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("fedsim")
        key = str(csv_path.resolve())
        found = self.client.search_runs([experiment_id], filter_string=f"tags.fedsim_csv = '{key}'",
                                        max_results=1) if resume_round is not None else []
        self.last_step = 0
        if found:
            self.run_id = found[0].info.run_id
            history = self.client.get_metric_history(self.run_id, "test_accuracy")
            self.last_step = max((m.step for m in history), default=0)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            from mlflow.entities import Param

            self.run_id = self.client.create_run(experiment_id, run_name=name, tags={"fedsim_csv": key}).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in _params(config).items()])

    def on_row(self, row: dict) -> None:
        from mlflow.entities import Metric

        step = int(row["round"])
        if step <= self.last_step:  # logged before the run was resumed: the same numbers
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _scalars(row).items() if not math.isnan(v)]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.last_step = step

    def on_end(self, status: str, files) -> None:
        for path in files:
            if Path(path).exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_tag(self.run_id, "fedsim_status", status)
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(status, "FINISHED"))
