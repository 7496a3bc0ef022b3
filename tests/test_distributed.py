"""One run over several processes (torchrun, gloo on the CPU): the CSV equals the one-process run's, a killed rank
stops every rank with one line and whole rows, a run resumes in another number of processes, bad input is one
line. The processes are spawned by the tests (2 ranks), each launch bounded by a timeout."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.engine import distributed
from fedsim.engine.distributed import Ranks, split_work
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS

LAUNCH_TIMEOUT = 240  # seconds for one launch: start-up of three Python processes with torch on a busy 2-core VM
# digits over 6 Dirichlet clients: unequal sizes, so the split by work and the vmap stack's padding both matter
SMALL = dict(dataset="digits", clients=6, dirichlet=0.5, rounds=2, quiet=True)
ALGORITHMS = {"fedavg": {}, "fedprox": {"mu": 0.1}, "scaffold": {}, "fednova": {"momentum": 0.5},
              "fedadam": {}, "ditto": {}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra) -> dict:
    return {**os.environ, distributed.TIMEOUT_ENV: "60", **extra}


def torchrun(*args, env=None, timeout=LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), *args], env=env or environment(), capture_output=True, text=True,
                          timeout=timeout)


def rows(csv: Path) -> list[list[str]]:
    """The CSV's cells but the time columns'."""
    lines = [line.split(",") for line in csv.read_text().splitlines()]
    keep = [i for i, c in enumerate(lines[0]) if c not in TIME_COLUMNS]
    return [[line[i] for i in keep] for line in lines]


# --- the pieces --------------------------------------------------------------------------------------------------

def test_split_work_is_balanced_deterministic_and_covers_every_position():
    work = [600, 50, 300, 300, 120, 600, 10]
    shares = split_work(work, 3)
    assert sorted(i for s in shares for i in s) == list(range(7)) and all(s == sorted(s) for s in shares)
    assert shares == [[0, 4], [1, 5], [2, 3, 6]]  # greedy, largest first: loads 720, 650, 610
    assert split_work(work, 3) == shares
    assert split_work([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]  # ties: earlier position to the lower rank


def test_each_rank_gets_a_disjoint_share_of_the_cohort_balanced_by_samples_times_epochs():
    sizes = [100, 10, 10, 10, 90, 5]
    shares = [Ranks(r, 2, r, 2, 60.0).for_run(sizes, 2, None, 10, cohort_size=6).share([0, 1, 2, 3, 4, 5])
              for r in range(2)]
    assert shares == [[0, 2, 5], [1, 3, 4]]  # 230 sample-epochs against 220
    ranks = Ranks(1, 2, 1, 2, 60.0).for_run(sizes, 2, None, 10, cohort_size=6)
    assert ranks.share([0, 4], {4: {"epochs": 1}}) == [4]  # a straggler's own epochs count
    with pytest.raises(FedsimError, match="3 processes, but each round trains 2 clients"):
        Ranks(0, 3, 0, 3, 60.0).for_run(sizes, 1, None, 10, cohort_size=2)


# --- equal to one process ----------------------------------------------------------------------------------------

def test_two_processes_give_the_one_process_csv_and_resume_in_one_process(tmp_path):
    """Every algorithm in one launch (the Python API under torchrun), each CSV against the same run in this one
    process; then SCAFFOLD's 2-process run (server c, clients' c_i) extended by 2 rounds in one process."""
    script = tmp_path / "runs.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import fedsim
        for algo, options in {ALGORITHMS!r}.items():
            fedsim.run(fedsim.Config(algo=algo, out_dir=sys.argv[1], **{SMALL!r}, **options))
    """))
    done = torchrun(str(script), str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    for algo, options in ALGORITHMS.items():
        fedsim.run(fedsim.Config(algo=algo, out_dir=str(tmp_path / "one"), **SMALL, **options))
        name = f"digits-{algo}-mlp-seed0"
        assert rows(tmp_path / "two" / f"{name}.csv") == rows(tmp_path / "one" / f"{name}.csv"), algo
    record = (tmp_path / "two" / "digits-fedavg-mlp-seed0.json").read_text()
    assert '"processes": 2' in record

    fedsim.run(resume=str(tmp_path / "two" / "digits-scaffold-mlp-seed0.csv"), rounds=4)
    fedsim.run(fedsim.Config(algo="scaffold", out_dir=str(tmp_path / "four"), **{**SMALL, "rounds": 4}))
    name = "digits-scaffold-mlp-seed0.csv"
    assert rows(tmp_path / "two" / name) == rows(tmp_path / "four" / name)


# --- faults ------------------------------------------------------------------------------------------------------

def _pid_of_rank(mark: str, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` among the processes whose environment holds `mark` (Linux /proc)."""
    want = {f"FEDSIM_TEST_MARK={mark}".encode(), f"RANK={rank}".encode(), f"LOCAL_RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and want <= set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_stops_every_rank_with_one_line_whole_rows_and_a_resumable_checkpoint(tmp_path):
    mark = uuid.uuid4().hex
    out, name = tmp_path / "out", "killed"
    csv = out / f"{name}.csv"
    launcher = subprocess.Popen([sys.executable, "-m", "fedsim", "train", "--nproc", "2", "--clients", "6",
                                 "--dirichlet", "0.5", "--rounds", "500", "--checkpoint-every", "1", "--quiet",
                                 "--out-dir", str(out), "--name", name],
                                env=environment(FEDSIM_TEST_MARK=mark), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not (csv.exists() and len(csv.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
            assert launcher.poll() is None, launcher.communicate()[1]
            time.sleep(0.1)
        os.kill(_pid_of_rank(mark, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert time.monotonic() - killed < 60
    assert launcher.returncode == 2, stderr
    # one line: the launcher's, naming the killed rank, or rank 0's, if its next gather found rank 1 gone first
    assert stderr.count("\n") == 1 and "--resume" in stderr, stderr
    assert "rank 1 (pid" in stderr and "SIGKILL" in stderr or "lost contact" in stderr, stderr
    kept = rows(csv)
    assert all(len(row) == len(kept[0]) for row in kept)  # whole rows
    assert '"status": "stopped"' in (out / f"{name}.json").read_text()

    # resumed in one process: the rows of an uninterrupted one-process run
    stopped_at = int(kept[-1][0])
    fedsim.run(resume=str(csv), rounds=stopped_at + 2)
    fedsim.run(fedsim.Config(clients=6, dirichlet=0.5, rounds=stopped_at + 2, quiet=True,
                             out_dir=str(tmp_path / "one"), name=name))
    assert rows(csv) == rows(tmp_path / "one" / f"{name}.csv")


# --- bad input ---------------------------------------------------------------------------------------------------

def test_more_processes_than_clients_a_round_is_one_line_exit_2_nothing_written(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedsim", "train", "--nproc", "2", "--clients", "4",
                           "--fraction", "0.25", "--out-dir", str(tmp_path / "out")], env=environment(),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "2 processes, but each round trains 1 clients" in done.stderr
    assert not (tmp_path / "out").exists()


def test_ranks_that_disagree_on_the_config_are_one_line_on_rank_0_nothing_written(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from fedsim.cli import main
        sys.argv = ["fedsim", "train", "--rounds", "1", "--out-dir", sys.argv[1],
                    "--lr", "0.05" if os.environ["RANK"] == "0" else "0.1"]
        main()
    """))
    done = torchrun(str(script), str(tmp_path / "out"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0
    assert len(errors) == 1 and "rank 1's config differ(s) from rank 0's" in errors[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_nproc_without_torchrun_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "torchrun_available", lambda: False)
    args = ["train", "--nproc", "2", "--out-dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["fedsim", *args])  # the command line the launcher would pass on
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--nproc needs torchrun" in result.output, result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["train", "--nproc", "0", "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--nproc must be >= 1" in result.output, result.output


def test_a_sweep_over_two_processes_gives_each_run_the_one_process_csv(tmp_path):
    """Each rank trains its share of the sweep's stacks (whole runs); rank 0's sweep file has every run's status."""
    options = ["--seed", "0-1", "--algo", "fedavg,fedprox", "--rounds", "2", "--clients", "4", "--local-steps", "2",
               "--quiet", "--name", "d"]
    alone = subprocess.run([sys.executable, "-m", "fedsim", "sweep", *options, "--out-dir", str(tmp_path / "one")],
                           env=environment(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert alone.returncode == 0, alone.stderr
    result = torchrun("-m", "fedsim", "sweep", *options, "--out-dir", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr
    csvs = sorted(p.name for p in (tmp_path / "one").glob("d_*.csv"))
    assert len(csvs) == 4 and csvs == sorted(p.name for p in (tmp_path / "two").glob("d_*.csv"))
    for name in csvs:
        assert rows(tmp_path / "one" / name) == rows(tmp_path / "two" / name), name
    sweep_file = json.loads((tmp_path / "two" / "d.sweep.json").read_text())
    assert [r["status"] for r in sweep_file["runs"]] == ["finished"] * 4
    assert sorted(len(s["runs"]) for s in sweep_file["stacks"]) == [2, 2]  # each rank's stack, gathered by rank 0
