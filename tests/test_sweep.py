"""`fedsim sweep`: the grid, runs trained together giving each run's CSV as alone, skip/resume, bad input."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim import compare
from fedsim.cli import app
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS
from fedsim.sweep import expand, parse_values, run_sweep, stack_key

runner = CliRunner()
SMALL = {"rounds": 2, "clients": 4, "local_steps": 2, "batch_size": 16, "quiet": True}


def test_values_ranges_and_commas_inside_parentheses():
    assert parse_values("seed", "0-3,7") == [0, 1, 2, 3, 7]
    assert parse_values("mu", "0.01,1e-3") == [0.01, 0.001]
    assert parse_values("dataset", "digits,synthetic(0.5,0.5)") == ["digits", "synthetic(0.5,0.5)"]
    for name, text in (("seed", "3-1"), ("seed", "x"), ("mu", "0.1,,1")):
        with pytest.raises(FedsimError):
            parse_values(name, text)


def test_an_algorithms_own_option_multiplies_only_its_runs(tmp_path):
    runs = expand({**SMALL, "out_dir": str(tmp_path)},
                  {"algo": ["fedavg", "fedprox", "scaffold"], "mu": [0.01, 0.1], "seed": [0, 1, 2]}, "s")
    assert len(runs) == 3 + 6 + 3 and len({r.name for r in runs}) == len(runs)
    fedavg = [r for r in runs if r.config.algo == "fedavg"]
    assert all("mu" not in r.varying and "mu" not in r.name for r in fedavg)
    assert {(r.config.mu, r.config.seed) for r in runs if r.config.algo == "fedprox"} == \
        {(m, s) for m in (0.01, 0.1) for s in (0, 1, 2)}
    assert len({stack_key(r.config) for r in runs}) == 3  # seeds and FedProx's mu train together, algorithms not


@pytest.mark.parametrize("grid,needle", [
    ({"out_dir": ["a", "b"]}, "--out-dir cannot vary"),
    ({"seed": []}, "empty list"),
    ({"mu": [0.1, 1.0]}, "no algorithm of the sweep reads it"),
    ({"seed": list(range(20))}, "more than --max-runs 10"),
    ({"lr": [0.1, -1.0]}, "run s_lr=-1: --lr must be > 0"),
    ({"algo": ["fedavg", "nope"]}, "unknown algorithm"),
    ({"momentum": [0.0, 0.9], "nesterov": [True]}, "run s_momentum=0: --nesterov needs --momentum > 0"),
    ({"algo": ["fedper", "fedavg"], "freeze_base": [True]}, "run s_algo=fedavg: --freeze-base is for personalized"),
    ({"algo": ["fedavg", "ditto"], "bn": ["local"]}, "run s_algo=ditto: ditto keeps a whole personal model"),
    ({"seed": [0, 1, 0]}, "--seed: 0 is given twice"),
    ({"model": ["mlp", "nope"]}, "run s_model=nope: unknown model 'nope'"),
    ({"partition": ["a.fsp", "b.fsp"]}, "run s_partition=a.fsp: partition file a.fsp does not exist"),
    ({"algo": ["fedprox"], "mu": [0.1, 0.1000001]}, "two runs would both be named s_mu=0.1"),
    ({"dataset": ["a/imgs", "b/imgs"]}, "two runs would both be named s_dataset=imgs"),
    ({"algo": ["fednova"], "optimizer": ["sgd", "adam"]}, "run s_optimizer=adam: fednova normalizes SGD steps"),
])
def test_bad_grids_are_one_line_before_anything_trains(tmp_path, grid, needle):
    with pytest.raises(FedsimError, match=needle):
        expand({"out_dir": str(tmp_path)}, grid, "s", max_runs=10)
    assert not any(tmp_path.iterdir())


def rows(path):
    df = pd.read_csv(path)
    return df[[c for c in df.columns if c not in TIME_COLUMNS]]


def test_each_runs_csv_equals_the_same_run_started_alone(tmp_path):
    """Two seeds x two mu x two Dirichlet alphas: all eight train together, one vmapped step a round."""
    runs = expand({**SMALL, "algo": "fedprox", "out_dir": str(tmp_path / "sweep")},
                  {"seed": [0, 1], "mu": [0.01, 0.1], "dirichlet": [0.5, 5.0]}, "g")
    assert len(runs) == 8 and len({stack_key(r.config) for r in runs}) == 1
    run_sweep(runs, "g", str(tmp_path / "sweep"))
    assert all(r.status == "finished" for r in runs)
    for run in runs:
        fedsim.run(run.config, out_dir=str(tmp_path / "alone"))
        swept, alone = (rows(tmp_path / where / f"{run.name}.csv") for where in ("sweep", "alone"))
        assert swept.equals(alone), run.name  # bit for bit: each client's arithmetic is the same in a stack
        record = json.loads((tmp_path / "sweep" / f"{run.name}.json").read_text())
        assert record["status"] == "finished" and "trained together" in record["executor"]["reason"]
    sweep_file = json.loads((tmp_path / "sweep" / "g.sweep.json").read_text())
    assert [r["status"] for r in sweep_file["runs"]] == ["finished"] * 8
    for where, shared in (("sweep", True), ("alone", False)):  # compare says whose times are a stack's
        summary = compare.compare_runs(sorted((tmp_path / where).glob("*.csv")))
        assert ("share their stack's" in compare.to_markdown(summary)) == shared
    assert sweep_file["grid"]["seed"] == [0, 1]


@pytest.mark.parametrize("algo,grid", [
    ("fedavg", {"lr": [0.05, 0.2], "lr_decay": [1.0, 0.5]}),
    ("fedprox", {"momentum": [0.5, 0.9], "weight_decay": [0.001, 0.01]}),
    ("ditto", {"lam": [0.1, 1.0], "lr": [0.05, 0.1]}),
    ("feddyn", {"alpha": [0.01, 0.1], "seed": [0, 1]}),
    ("fedbabu", {"eval_every": [1, 2], "seed": [0, 1]}),  # one run's evaluation (fine-tuning) beside another's round
])
def test_runs_with_other_optimizer_numbers_and_pulls_train_together_as_alone(tmp_path, algo, grid):
    """Each job carries its run's learning rate, momentum and weight decay, and Ditto's λ and FedDyn's α reach the
    step as per-client tensors: all four runs form one stack, and each CSV is the run's alone, bit for bit."""
    runs = expand({**SMALL, "algo": algo, "out_dir": str(tmp_path / "sweep")}, grid, "g")
    assert len(runs) == 4 and len({stack_key(r.config) for r in runs}) == 1
    run_sweep(runs, "g", str(tmp_path / "sweep"), stack="always")
    assert all(r.status == "finished" for r in runs)
    for run in runs:
        fedsim.run(run.config, out_dir=str(tmp_path / "alone"))
        swept, alone = (rows(tmp_path / where / f"{run.name}.csv") for where in ("sweep", "alone"))
        assert swept.equals(alone), run.name
    first, last = (rows(tmp_path / "sweep" / f"{r.name}.csv") for r in (runs[0], runs[-1]))
    assert not first["train_loss"].equals(last["train_loss"])  # the varied option reached the step


def test_the_phases_that_read_the_learning_rate_keep_their_runs_apart():
    runs = expand(SMALL, {"algo": ["peravg", "fedavg"], "lr": [0.05, 0.1]}, "p")
    keys = {(r.config.algo, stack_key(r.config)) for r in runs}
    assert len([k for k in keys if k[0] == "peravg"]) == 2 and len([k for k in keys if k[0] == "fedavg"]) == 1


def test_momentum_and_weight_decay_of_zero_stack_apart_from_other_values():
    """0 takes plain SGD's path; beside clients with momentum a client would take theirs (equal only to rounding)."""
    runs = expand(SMALL, {"momentum": [0.0, 0.5, 0.9], "weight_decay": [0.0, 0.01, 0.1]}, "z")
    assert len({stack_key(r.config) for r in runs}) == 4


def test_the_same_sweep_started_twice_is_refused_before_it_writes(tmp_path):
    from fedsim.metrics import RunLock

    out = tmp_path / "out"
    held = RunLock(out, "s", kind="sweep")  # as a first `fedsim sweep --name s` holds it while it runs
    try:
        with pytest.raises(FedsimError, match=r"sweep 's' in .* is in use by another fedsim process"):
            run_sweep(expand({**SMALL, "out_dir": str(out)}, {"seed": [0, 1]}, "s"), "s", str(out))
        assert not any(p.name.endswith((".json", ".csv")) for p in out.iterdir())
    finally:
        held.release()
    (alone,) = expand({**SMALL, "out_dir": str(out)}, {}, "s")  # one run, named as its sweep: no clash
    assert alone.name == "s" and run_sweep([alone], "s", str(out))[0].status == "finished"


def test_a_stopped_sweep_resumes_to_the_same_csvs_and_skips_finished_runs(tmp_path):
    fixed = {**SMALL, "rounds": 4, "checkpoint_every": 1}
    grid = {"seed": [0, 1], "algo": ["fedavg", "scaffold"]}
    full = expand({**fixed, "out_dir": str(tmp_path / "full")}, grid, "r")
    run_sweep(full, "r", str(tmp_path / "full"))

    cut = expand({**fixed, "out_dir": str(tmp_path / "cut")}, grid, "r")

    def stop_after_round_2(runs):
        if any(r.round >= 2 for r in runs if r.status == "running"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(cut, "r", str(tmp_path / "cut"), on_change=stop_after_round_2)
    assert {r.status for r in cut} <= {"stopped", "pending", "finished"} and "stopped" in {r.status for r in cut}
    again = expand({**fixed, "out_dir": str(tmp_path / "cut")}, grid, "r")
    run_sweep(again, "r", str(tmp_path / "cut"))
    assert all(r.status == "finished" for r in again)
    for run in full:
        assert rows(tmp_path / "cut" / f"{run.name}.csv").equals(rows(tmp_path / "full" / f"{run.name}.csv"))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut").glob("*.csv")}
    run_sweep(expand({**fixed, "out_dir": str(tmp_path / "cut")}, grid, "r"), "r", str(tmp_path / "cut"))
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut").glob("*.csv")}  # all skipped


def test_cli_dry_run_toml_and_a_diverging_run_that_leaves_the_others_going(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text("rounds = 2\nclients = 4\nlocal_steps = 2\n[sweep]\nseed = [0, 1]\n"
                                     "lr = [0.05, 1e4]\n")
    result = runner.invoke(app, ["sweep", "--config", "s.toml", "--dry-run", "--name", "t"])
    assert result.exit_code == 0 and "4 runs in 1 stack(s)" in result.output, result.output  # lr stacks too
    assert not (tmp_path / "results").exists()
    result = runner.invoke(app, ["sweep", "--config", "s.toml", "--name", "t"])  # diverging inside the stack
    assert result.exit_code == 3, result.output
    sweep_file = json.loads((tmp_path / "results" / "t.sweep.json").read_text())
    statuses = {r["name"]: r["status"] for r in sweep_file["runs"]}
    assert sorted(statuses.values()) == ["diverged", "diverged", "finished", "finished"]
    assert all(s == "diverged" for n, s in statuses.items() if "lr=10000" in n)
    result = runner.invoke(app, ["sweep", "--seed", "0,1", "--out-dir", "a,b", "--rounds", "1"])
    assert result.exit_code == 2 and "cannot vary" in result.output and not (tmp_path / "a,b").exists()


def test_stacking_is_chosen_by_timing_recorded_and_never_changes_the_numbers(tmp_path):
    """--stack never (one whole run after another), always (one executor call a round for all) and auto (each
    round either way, as timing chose) give the same CSVs, and the sweep file says how each stack trained."""
    grid = {"seed": [0, 1], "lr": [0.05, 0.1]}
    fixed = {**SMALL, "rounds": 4}
    csvs = {}
    for way in ("never", "always", "auto"):
        out = tmp_path / way
        runs = run_sweep(expand({**fixed, "out_dir": str(out)}, grid, "w"), "w", str(out), stack=way)
        assert all(r.status == "finished" for r in runs)
        csvs[way] = {r.name: rows(out / f"{r.name}.csv") for r in runs}
        (stack,) = json.loads((out / "w.sweep.json").read_text())["stacks"]
        assert stack["runs"] == [r.name for r in runs] and stack["stack"] == way
        assert stack["trains"] == {"never": "one after another", "always": "together"}.get(way, stack["trains"])
        reason = json.loads((out / f"{runs[0].name}.json").read_text())["executor"]["reason"]
        assert ("trained together" in reason) == (way != "never")
    for name, never in csvs["never"].items():
        assert csvs["always"][name].equals(never) and csvs["auto"][name].equals(never), name
    (probe,) = stack["probes"]  # auto: a warm-up round, then three timed (two if clear), split: one run alone, three
    assert probe["round"] in (3, 4) and stack["trains"] == probe["chosen"]  # together
    timings = probe["seconds_per_client_step"]
    assert set(timings) == {"together", "one after another"} and all(t > 0 for t in timings.values())
    assert probe["chosen"] == min(timings, key=timings.get)


def test_the_stack_chooser_keeps_the_faster_way_and_checks_again_now_and_then():
    from fedsim.stacking import APART, SPLIT, TOGETHER, StackChooser

    def run(chooser, cost, calls, runs=4):
        ways = []
        for _ in range(calls):
            way = chooser.next_way(runs)
            chooser.done({w: (cost[w] * 100, 100) for w in ((TOGETHER, APART) if way == SPLIT else (way,))}, 1)
            ways.append(way)
        return ways

    chooser = StackChooser(warmup=1, probe_calls=3, recheck_every=4, max_recheck=64)
    ways = run(chooser, {TOGETHER: 1.0, APART: 0.7}, 10)  # one after another is faster: chosen after the probe
    assert ways == [SPLIT] * 4 + [APART] * 4 + [SPLIT, APART]  # a split warm-up; checked again after 4 calls
    assert [p["chosen"] for p in chooser.probes] == [APART, APART]
    assert chooser.probes[0]["seconds_per_client_step"] == {TOGETHER: 1.0, APART: 0.7}
    run(chooser, {TOGETHER: 0.6, APART: 1.0}, 9)  # the load changed: together takes over at the next check
    assert chooser.current == TOGETHER and chooser.probes[-1]["chosen"] == TOGETHER

    pair = StackChooser(warmup=1, recheck_every=2)  # two runs: probe calls alternate the ways
    ways = run(pair, {TOGETHER: 0.8, APART: 1.0}, 9, runs=2)
    assert ways == [SPLIT, TOGETHER, APART, TOGETHER, APART, TOGETHER, TOGETHER, APART, TOGETHER]
    clear = StackChooser(warmup=1)  # 2x slower: the probe ends after two calls each way, not three
    assert run(clear, {TOGETHER: 0.5, APART: 1.0}, 5) == [SPLIT] * 3 + [TOGETHER] * 2
    slight = StackChooser(warmup=0, probe_calls=1, recheck_every=1)  # 5% faster is within the margin: it stays
    run(slight, {TOGETHER: 1.0, APART: 1.05}, 1)
    run(slight, {TOGETHER: 1.0, APART: 0.95}, 6)
    assert slight.current == TOGETHER and len(slight.probes) >= 3
    decisive = StackChooser(warmup=0, probe_calls=1, recheck_every=2, max_recheck=50)  # 3x slower: checked rarely
    assert run(decisive, {TOGETHER: 1.0, APART: 3.0}, 40) == [SPLIT] + [TOGETHER] * 39
    assert run(StackChooser(TOGETHER), {TOGETHER: 9, APART: 1}, 5) == [TOGETHER] * 5


@pytest.mark.parametrize("when", [0, 2])
def test_ctrl_c_to_the_process_group_stops_a_sweep_with_every_running_run_checkpointed(tmp_path, when):
    """SIGINT to the process group, as a terminal's Ctrl-C, while a stack starts (its runs' threads, their setup)
    or trains: exit 130, each run of the stack stopped with a checkpoint at its last round, none left running (a
    run's thread once went on past the sweep's end, or the process hung waiting for it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fedsim.checkpoint import load_checkpoint

    proc = subprocess.Popen([sys.executable, "-m", "fedsim", "sweep", "--seed", "0-2", "--rounds", "100000",
                             "--clients", "4", "--local-steps", "1", "--out-dir", str(tmp_path), "--name", "c"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def runs():
        try:
            return json.loads((tmp_path / "c.sweep.json").read_text())["runs"]
        except (OSError, ValueError):
            return []

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and \
            not any(r["status"] == "running" and r["round"] >= when for r in runs()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err
    assert "run the same command again" in err and "Traceback" not in err
    assert runs() and all(run["status"] == "stopped" for run in runs()), runs()
    for run in runs():
        if run["round"]:
            assert load_checkpoint(tmp_path / f"{run['name']}.ckpt", str(tmp_path)).round == run["round"]
    assert when == 0 or any(run["round"] for run in runs())
