"""A run is one identity: its record, checkpoint and CSV prove they belong together, and a resume, an extension or a
sweep's reuse of a finished run refuses files of another run in one line, changing nothing."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fedsim
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.data.partition import Partition, load_partition
from fedsim.errors import FedsimError
from fedsim.identity import run_identity
from fedsim.sweep import expand, run_sweep

runner = CliRunner()
OPTIONS = dict(clients=5, fraction=0.6, local_steps=5, executor="sequential", quiet=True)


def snapshot(directory) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def one_line_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


# the identity itself


def test_the_identity_names_the_first_option_that_differs_and_ignores_the_resumable_ones():
    base = run_identity(Config(), "d" * 64, "p" * 64, "m.MLP", "w" * 64)
    assert base == run_identity(Config(rounds=99, executor="vmap", out_dir="x", name="y"), "d" * 64, "p" * 64,
                                "m.MLP", "w" * 64)
    assert base.sha256 == run_identity(Config(lr=0.05), "d" * 64, "p" * 64, "m.MLP", "w" * 64).sha256
    other = run_identity(Config(lr=0.5, seed=3), "d" * 64, "p" * 64, "m.MLP", "w" * 64)
    assert other.sha256 != base.sha256
    assert base.difference(other, "A", "B") == "--lr is 0.05 in A, 0.5 in B"  # lr comes before seed
    data = run_identity(Config(), "e" * 64, "p" * 64, "m.MLP", "w" * 64)
    assert base.difference(data, "A", "B") == "the dataset's content (sha256) is dddddddddddd... in A, " \
                                              "eeeeeeeeeeee... in B"
    assert base.difference(base) is None


def test_a_run_writes_one_identity_in_its_record_and_checkpoint_and_the_csvs_hash(tmp_path):
    df = fedsim.run(Config(rounds=2, out_dir=str(tmp_path), name="r", **OPTIONS))
    assert len(df) == 2
    record = json.loads((tmp_path / "r.json").read_text())
    checkpoint = load_checkpoint(tmp_path / "r.csv")
    assert record["identity"] == checkpoint.identity.to_dict() and len(record["identity"]["sha256"]) == 64
    facts = record["identity"]["facts"]
    assert facts["options"]["lr"] == 0.05 and "rounds" not in facts["options"]
    assert facts["dataset_sha256"] == record["dataset"]["sha256"]
    assert facts["partition_sha256"] == record["partition"]["hash"]
    assert facts["initial_sha256"] == record["model"]["initial_sha256"]
    import hashlib

    assert record["csv_sha256"] == hashlib.sha256((tmp_path / "r.csv").read_bytes()).hexdigest()
    assert checkpoint.csv.rows == 2 and checkpoint.csv.last_round == 2


def test_the_experiment_exposes_its_identity_before_training():
    from fedsim.experiment import setup

    exp = setup(Config(**OPTIONS))
    again = setup(Config(**{**OPTIONS, "rounds": 3}))
    assert exp.identity == again.identity and len(exp.identity.sha256) == 64
    assert setup(Config(**{**OPTIONS, "seed": 1})).identity.sha256 != exp.identity.sha256


# resume and extension


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-round FedAvg run 'a', and runs of other options whose checkpoints replace its own in the tests."""
    out = tmp_path_factory.mktemp("runs")
    for name, changes in (("a", {}), ("scaffold", {"algo": "scaffold"}), ("seed1", {"seed": 1}),
                          ("logreg", {"model": "logreg"})):
        fedsim.run(Config(rounds=4, out_dir=str(out), name=name, **{**OPTIONS, **changes}))
    return out


@pytest.mark.parametrize("other,needle", [("scaffold", "--algo is fedavg in the run's record, scaffold in its "
                                                       "checkpoint"),
                                          ("seed1", "--seed is 0 in the run's record, 1 in its checkpoint"),
                                          ("logreg", "--model is mlp in the run's record, logreg in its checkpoint")])
def test_a_resume_refuses_the_checkpoint_of_another_run_naming_the_option(tmp_path, runs, other, needle):
    for suffix in (".csv", ".json"):
        shutil.copy(runs / f"a{suffix}", tmp_path / f"a{suffix}")
    shutil.copy(runs / f"{other}.ckpt", tmp_path / "a.ckpt")
    before = snapshot(tmp_path)
    one_line_exit_2(["train", "--resume", str(tmp_path / "a.csv"), "--rounds", "6"], needle)
    assert snapshot(tmp_path) == before


def test_without_its_record_the_csv_still_tells_another_runs_checkpoint(tmp_path, runs):
    shutil.copy(runs / "a.csv", tmp_path / "a.csv")
    shutil.copy(runs / "scaffold.ckpt", tmp_path / "a.ckpt")
    before = snapshot(tmp_path)
    one_line_exit_2(["train", "--resume", str(tmp_path / "a.csv"), "--rounds", "6"],
                    "a.csv is not the CSV its checkpoint (round 4) was written with")
    assert snapshot(tmp_path) == before


def test_a_csv_cut_back_before_its_checkpoints_round_is_refused_not_resumed_with_a_gap(tmp_path, runs):
    for suffix in (".csv", ".json", ".ckpt"):
        shutil.copy(runs / f"a{suffix}", tmp_path / f"a{suffix}")
    lines = (tmp_path / "a.csv").read_text().splitlines(keepends=True)
    (tmp_path / "a.csv").write_text("".join(lines[:2]))  # the header and round 1
    before = snapshot(tmp_path)
    one_line_exit_2(["train", "--resume", str(tmp_path / "a.csv"), "--rounds", "6"],
                    "a.csv ends at round 1, but its checkpoint was written after its row of round 4: rows are missing")
    assert snapshot(tmp_path) == before
    with pytest.raises(FedsimError, match="rows are missing"):  # from Python too, and on a finished run's files
        fedsim.run(resume=tmp_path / "a.csv")


def test_a_checkpoint_with_changed_bytes_that_still_loads_is_refused(tmp_path, runs):
    for suffix in (".csv", ".json", ".ckpt"):
        shutil.copy(runs / f"a{suffix}", tmp_path / f"a{suffix}")
    raw = torch.load(tmp_path / "a.ckpt", weights_only=True)
    weights = raw["server"]["model"]
    first = next(iter(weights))
    weights[first].view(-1)[0] += 1e-3  # a small change in the middle: it would alter the numbers silently
    torch.save(raw, tmp_path / "a.ckpt")
    before = snapshot(tmp_path)
    one_line_exit_2(["train", "--resume", str(tmp_path / "a.csv"), "--rounds", "6"],
                    "a.ckpt is damaged or not a fedsim checkpoint (its checksum does not match its contents)")
    assert snapshot(tmp_path) == before


def test_a_checkpoint_written_before_run_identities_is_refused(tmp_path, runs):
    for suffix in (".csv", ".json", ".ckpt"):
        shutil.copy(runs / f"a{suffix}", tmp_path / f"a{suffix}")
    raw = torch.load(tmp_path / "a.ckpt", weights_only=True)
    for key in ("identity", "csv", "checksum"):
        del raw[key]
    raw["format"] = 1
    torch.save(raw, tmp_path / "a.ckpt")
    one_line_exit_2(["train", "--resume", str(tmp_path / "a.csv"), "--rounds", "6"],
                    "was written by an earlier fedsim, which recorded no run identity")


# a sweep's reuse of finished runs


SWEEP = dict(rounds=2, clients=4, local_steps=2, batch_size=16, quiet=True)


def test_a_sweep_run_again_with_a_changed_option_refuses_its_old_runs_and_changes_nothing(tmp_path):
    run_sweep(expand({**SWEEP, "out_dir": str(tmp_path), "lr": 0.05}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    before = snapshot(tmp_path)
    with pytest.raises(FedsimError, match=r"run sw_seed=0 in .* is another run: --lr is 0.05 in its record, 0.5 in "
                                          "this sweep; nothing was changed; pass --overwrite"):
        run_sweep(expand({**SWEEP, "out_dir": str(tmp_path), "lr": 0.5}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    assert snapshot(tmp_path) == before
    again = run_sweep(expand({**SWEEP, "out_dir": str(tmp_path), "lr": 0.5}, {"seed": [0, 1]}, "sw"), "sw",
                      str(tmp_path), overwrite=True)
    assert all(r.status == "finished" for r in again)
    assert all(json.loads((tmp_path / f"{r.name}.json").read_text())["config"]["lr"] == 0.5 for r in again)


def test_a_sweep_adopts_a_finished_run_of_its_own_identity_and_refuses_one_of_another(tmp_path):
    fedsim.run(Config(**{**SWEEP, "out_dir": str(tmp_path), "name": "sw_seed=0", "lr": 0.5}))
    before = snapshot(tmp_path)
    with pytest.raises(FedsimError, match="run sw_seed=0 .* --lr is 0.5 in its record, 0.05 in this sweep"):
        run_sweep(expand({**SWEEP, "out_dir": str(tmp_path)}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    assert snapshot(tmp_path) == before

    runs = run_sweep(expand({**SWEEP, "out_dir": str(tmp_path), "lr": 0.5}, {"seed": [0, 1]}, "sw"), "sw",
                     str(tmp_path))
    assert [r.status for r in runs] == ["finished", "finished"]
    assert (tmp_path / "sw_seed=0.csv").read_bytes() == before["sw_seed=0.csv"]  # adopted as it was


def test_a_finished_sweep_run_whose_csv_was_edited_is_refused(tmp_path):
    run_sweep(expand({**SWEEP, "out_dir": str(tmp_path)}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    csv = tmp_path / "sw_seed=1.csv"
    csv.write_text(csv.read_text() + "3,4,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,1,1,1,1\n")
    before = snapshot(tmp_path)
    with pytest.raises(FedsimError, match="run sw_seed=1 .* is finished, but its CSV is not the one its record was "
                                          "written with"):
        run_sweep(expand({**SWEEP, "out_dir": str(tmp_path)}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    assert snapshot(tmp_path) == before


def test_a_stopped_sweep_run_whose_checkpoint_is_another_runs_is_refused(tmp_path):
    fixed = {**SWEEP, "out_dir": str(tmp_path), "rounds": 4, "checkpoint_every": 1}
    other = tmp_path / "other"
    fedsim.run(Config(**{**fixed, "out_dir": str(other), "name": "x", "rounds": 2, "algo": "scaffold"}))
    run_sweep(expand({**fixed, "rounds": 2}, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))
    shutil.copy(other / "x.ckpt", tmp_path / "sw_seed=0.ckpt")
    with pytest.raises(FedsimError, match="run sw_seed=0: checkpoint .* is not of the run its record describes "
                                          r"\(--algo is fedavg in the run's record, scaffold in its checkpoint\)"):
        run_sweep(expand(fixed, {"seed": [0, 1]}, "sw"), "sw", str(tmp_path))  # extended to 4 rounds


# partition files


def test_a_hand_made_partition_file_with_a_sample_at_two_clients_is_refused(tmp_path):
    part = fedsim.build_partition(fedsim.load_dataset("digits"), "iid", 5, seed=0)
    index = part.train_index.copy()
    start = part.train_offsets[1]
    index[start] = index[0]  # client 1's first sample is client 0's first one too; the hashes are recomputed
    Partition(index, part.train_offsets, part.test_index, part.test_offsets, part.meta).save(tmp_path / "x.fsp")
    with pytest.raises(FedsimError, match=rf"x.fsp puts train sample {index[0]} at two places \(client 0 and "
                                          r"client 1\)"):
        load_partition(tmp_path / "x.fsp")


def test_a_held_out_test_sample_that_is_also_trained_on_is_refused(tmp_path):
    part = fedsim.build_partition(fedsim.load_dataset("digits"), "iid", 5, seed=0, client_test_fraction=0.2)
    test = part.test_index.copy()
    test[0] = part.train_index[0]
    Partition(part.train_index, part.train_offsets, test, part.test_offsets, part.meta).save(tmp_path / "x.fsp")
    with pytest.raises(FedsimError, match="train or held-out test sample .* at two places"):
        load_partition(tmp_path / "x.fsp")


def test_a_partition_file_that_says_other_classes_than_the_datas_is_refused(tmp_path):
    part = fedsim.build_partition(fedsim.load_dataset("digits"), "iid", 5, seed=0)
    Partition(part.train_index, part.train_offsets, part.test_index, part.test_offsets,
              {**part.meta, "num_classes": 3}).save(tmp_path / "x.fsp")
    one_line_exit_2(["train", "--partition", str(tmp_path / "x.fsp"), "--out-dir", str(tmp_path), "--quiet"],
                    "x.fsp says 3 classes, but digits has 10")
    assert not (tmp_path / "digits-fedavg-mlp-seed0.csv").exists()
    assert np.array_equal(load_partition(tmp_path / "x.fsp").train_index, part.train_index)


# the console script, as a user runs it (slow: each starts a Python)


def fedsim_cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


@pytest.mark.slow
def test_cli_a_sweep_with_a_changed_fixed_option_and_a_resume_onto_another_checkpoint_are_refused(tmp_path):
    sweep = ["sweep", "--dataset", "digits", "--rounds", "3", "--seed", "0-1", "--out-dir", "D", "--name", "sw",
             "--quiet"]
    assert fedsim_cli(*sweep, "--lr", "0.05", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "D")
    done = fedsim_cli(*sweep, "--lr", "0.5", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--lr is 0.05 in its record, 0.5 in this sweep" in done.stderr and not done.stdout
    assert snapshot(tmp_path / "D") == before

    train = ["train", "--rounds", "4", "--clients", "5", "--out-dir", "R", "--quiet"]
    assert fedsim_cli(*train, "--name", "a", cwd=tmp_path).returncode == 0
    assert fedsim_cli(*train, "--name", "b", "--algo", "scaffold", cwd=tmp_path).returncode == 0
    shutil.copy(tmp_path / "R" / "b.ckpt", tmp_path / "R" / "a.ckpt")
    before = snapshot(tmp_path / "R")
    done = fedsim_cli("train", "--resume", "R/a.csv", "--rounds", "6", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--algo is fedavg in the run's record, scaffold in its checkpoint" in done.stderr
    assert snapshot(tmp_path / "R") == before


# the same numbers whatever the CPU threads


def test_a_runs_numbers_do_not_depend_on_how_many_cpu_threads_compute_them(tmp_path):
    """MKL's matrix products differ with the thread count unless fedsim's import put MKL in its strict reproducible
    mode; the thread count is chosen by timing, and torchrun's ranks share the cores out, so without it the same run
    (resumed, or run again) differed in the 6th digit (test_distributed's killed-rank resume, now and then)."""
    import pandas as pd

    from fedsim.metrics import TIME_COLUMNS

    csvs = []
    try:
        for threads in (1, 2):
            fedsim.run(Config(clients=6, dirichlet=0.5, rounds=8, quiet=True, executor="vmap", threads=threads,
                              out_dir=str(tmp_path), name=f"t{threads}"))
            csvs.append(pd.read_csv(tmp_path / f"t{threads}.csv").drop(columns=list(TIME_COLUMNS)))
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest.py)
    pd.testing.assert_frame_equal(csvs[0], csvs[1], check_exact=True)
