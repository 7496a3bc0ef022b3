"""Checkpoints and `fedsim train --resume`: a resumed run writes exactly the rows of an uninterrupted one."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS

runner = CliRunner()


def small(out_dir, **kw):
    base = dict(rounds=6, clients=5, fraction=0.6, local_steps=5, out_dir=str(out_dir), quiet=True,
                executor="sequential")
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(algo, **options)`: the numbers of a 6-round run never stopped (each computed once)."""
    cache = {}

    def numbers_of(algo="fedavg", **options):
        key = (algo, *sorted(options.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("uninterrupted")
            fedsim.run(small(out, name="full", algo=algo, **options))
            cache[key] = numbers(out / "full.csv")
        return cache[key]

    return numbers_of


@pytest.mark.parametrize("algo", ["fedavg", "scaffold", "ditto"])
def test_a_run_extended_from_3_to_6_rounds_equals_a_6_round_run(tmp_path, uninterrupted, algo):
    fedsim.run(small(tmp_path, name="r", algo=algo, rounds=3))
    checkpoint = load_checkpoint(tmp_path / "r.csv")
    assert checkpoint.round == 3
    if algo == "scaffold":  # the server's c and the clients' c_i are in it
        assert checkpoint.progress.server.extra["c"] and checkpoint.progress.clients
    if algo == "ditto":  # the personal models of the clients sampled so far
        assert checkpoint.progress.clients

    df = fedsim.run(resume=tmp_path / "r.csv", rounds=6)
    pd.testing.assert_frame_equal(numbers(tmp_path / "r.csv"), uninterrupted(algo))
    assert df["round"].tolist() == [1, 2, 3, 4, 5, 6]  # all the run's rows, the kept ones included
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "finished" and record["config"]["rounds"] == 6
    assert [r["from_round"] for r in record["resumes"]] == [3]
    assert record["summary"]["rounds_completed"] == 6
    assert load_checkpoint(tmp_path / "r.ckpt").round == 6


def test_ctrl_c_checkpoints_the_last_completed_round_and_the_run_resumes(tmp_path, uninterrupted):
    def ctrl_c_after_round_4(row, total):
        if row["round"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedsim.run(small(tmp_path, name="k", algo="scaffold", checkpoint_every=3), on_round=ctrl_c_after_round_4)
    assert load_checkpoint(tmp_path / "k.csv").round == 4  # written on the interrupt, not the periodic one (3)
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["status"] == "stopped" and "checkpoint at round 4" in record["status_detail"]

    fedsim.run(resume=tmp_path / "k.csv")  # the checkpoint's 6 rounds
    pd.testing.assert_frame_equal(numbers(tmp_path / "k.csv"), uninterrupted("scaffold"))


@pytest.mark.parametrize("checkpoint_every,eval_every,crash_at_row", [(2, 1, 5), (3, 2, 4)])
def test_rows_after_the_checkpoint_are_dropped_and_computed_again(tmp_path, uninterrupted, checkpoint_every,
                                                                  eval_every, crash_at_row):
    # a crash (not Ctrl-C) writes no checkpoint: the CSV has rows past the last periodic one
    def crash(row, total):
        if row["round"] == crash_at_row:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        fedsim.run(small(tmp_path, name="c", checkpoint_every=checkpoint_every, eval_every=eval_every),
                   on_round=crash)
    assert load_checkpoint(tmp_path / "c.csv").round == crash_at_row - 1
    csv = pd.read_csv(tmp_path / "c.csv")
    assert csv["round"].iloc[-1] == crash_at_row
    csv.loc[csv.index[-1], "train_loss"] = 99.0  # were that row kept, this would show
    csv.to_csv(tmp_path / "c.csv", index=False)

    fedsim.run(resume=tmp_path / "c.csv")
    # with --eval-every 2 the checkpoint (round 3) also holds round 3's bytes, which row 4 must count
    pd.testing.assert_frame_equal(numbers(tmp_path / "c.csv"), uninterrupted("fedavg", eval_every=eval_every))


def test_checkpoint_every_0_writes_none_and_overwrite_removes_an_old_one(tmp_path):
    fedsim.run(small(tmp_path, name="o", rounds=1))
    assert (tmp_path / "o.ckpt").exists()
    fedsim.run(small(tmp_path, name="o", rounds=1, overwrite=True, checkpoint_every=0))
    assert not (tmp_path / "o.ckpt").exists()
    with pytest.raises(FedsimError, match="no checkpoint for run 'o'.*--checkpoint-every 0"):
        fedsim.run(resume="o", out_dir=str(tmp_path), rounds=2)


def test_cli_resume_extends_a_run_and_a_finished_run_is_left_alone(tmp_path, uninterrupted):
    options = ["--clients", "5", "--fraction", "0.6", "--local-steps", "5", "--executor", "sequential",
               "--out-dir", str(tmp_path), "--name", "cli", "--quiet"]
    result = runner.invoke(app, ["train", "--rounds", "3", *options])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "cli.csv"), "--rounds", "6", "--quiet"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(numbers(tmp_path / "cli.csv"), uninterrupted("fedavg"))

    before = (tmp_path / "cli.csv").read_text()
    result = runner.invoke(app, ["train", "--resume", "cli", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        "run 'cli' already completed 6 rounds (--rounds 6): nothing to resume; pass a larger --rounds to extend it"]
    assert (tmp_path / "cli.csv").read_text() == before


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A 3-round run of 6 on a partition file, as a stopped run leaves it."""
    out = tmp_path_factory.mktemp("stopped")
    digits = fedsim.load_dataset("digits")
    fedsim.build_partition(digits, "iid", 5, seed=0).save(out / "split.fsp")
    fedsim.build_partition(digits, "iid", 5, seed=1).save(out / "other.fsp")
    fedsim.run(small(out, name="s", rounds=3, partition=str(out / "split.fsp")))
    return out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("args,damage,needle", [
    (["--lr", "0.1"], None, "--lr cannot change when resuming"),
    (["--algo", "fedprox"], None, "--algo cannot change when resuming"),
    ([], lambda d: _truncate(d / "s.ckpt"), "s.ckpt is damaged"),
    ([], lambda d: (d / "s.ckpt").unlink(), "no checkpoint for run 's'"),
    ([], lambda d: (d / "s.csv").unlink(), "s.csv is missing"),
    (["--partition", "{dir}/other.fsp"], None, "the partition (sha256 of its split) is"),  # a copy may, not this
])
def test_cli_resume_refusals_are_one_line_exit_2_and_touch_nothing(tmp_path, stopped_run, args, damage, needle):
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    if damage is not None:
        damage(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = [a.format(dir=tmp_path) for a in args]
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "s.csv"), "--rounds", "6", "--quiet", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
