"""The simulated clock of synchronous rounds: profiles, availability, round times, --deadline, --over-select."""

import io
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import Config
from fedsim.engine.availability import Availability
from fedsim.engine.clock import samples_of
from fedsim.engine.profiles import Profiles
from fedsim.errors import FedsimError
from fedsim.sweep import expand, stack_key

runner = CliRunner()
MODEL_BYTES = 220840  # the mlp on digits: 55,210 float32 numbers, sent each way
ONE_SECOND = 8 * MODEL_BYTES  # bits per second that move the model in one second


def write_profiles(path, speeds, bps=ONE_SECOND):
    path.write_text("client,samples_per_s,up_bps,down_bps\n"
                    + "".join(f"{c},{s},{bps},{bps}\n" for c, s in enumerate(speeds)))
    return str(path)


def toy(tmp_path, name, speeds=(40, 20, 10), **options) -> pd.DataFrame:
    """3 clients on digits, 4 local steps of 10 samples (40 samples of work each round): with `speeds` 40, 20, 10
    samples/s their work takes 1, 2 and 4 s, and the model takes 1 s each way, so their rounds take 3, 4, 6 s."""
    base = dict(dataset="digits", clients=3, rounds=3, local_steps=4, batch_size=10, quiet=True,
                out_dir=str(tmp_path), executor="sequential", name=name,
                profiles=write_profiles(tmp_path / f"{name}.profiles.csv", speeds))
    return fedsim.run(Config(**{**base, **options}))


def test_hand_computed_round_times_of_a_three_client_toy(tmp_path):
    df = toy(tmp_path, "plain")
    assert (df["bytes_down"] == 3 * MODEL_BYTES).all()  # the bytes the times are computed from
    assert df["sim_seconds"].tolist() == [6.0, 12.0, 18.0]  # the slowest client's 1 + 4 + 1 s, each round
    assert df["late"].tolist() == [0, 0, 0] and df["clients"].tolist() == [3, 3, 3]


def test_a_deadline_drops_the_late_client_and_the_round_ends_at_the_deadline(tmp_path):
    df = toy(tmp_path, "deadline", deadline=4.5)
    assert df["sim_seconds"].tolist() == [4.5, 9.0, 13.5]  # client 2 (6 s) is still out: the server waits
    assert df["clients"].tolist() == [2, 2, 2] and df["late"].tolist() == [1, 1, 1]
    assert (df["bytes_up"] == 2 * MODEL_BYTES).all()  # client 2 could not make it: it was not trained
    assert (df["bytes_down"] == 3 * MODEL_BYTES).all()  # it received the model all the same


def test_over_selection_keeps_the_first_m_to_report(tmp_path):
    df = toy(tmp_path, "over", fraction=0.67, over_select=1.5)  # m = 2 of 3, ceil(1.5 x 2) = 3 sampled
    assert df["sim_seconds"].tolist() == [4.0, 8.0, 12.0]  # the second report, client 1's at 1 + 2 + 1 s
    assert df["clients"].tolist() == [2, 2, 2] and df["late"].tolist() == [1, 1, 1]
    assert (df["bytes_up"] == 3 * MODEL_BYTES).all()  # the third trained and sent, after the round closed


def test_partial_work_under_a_deadline_trains_the_steps_that_fit(tmp_path):
    # FedProx keeps partial work: client 2 has 5 - 1 - 1 = 3 s of work at 10 samples/s, 3 steps of 10 samples
    df = toy(tmp_path, "partial", algo="fedprox", deadline=5.0)
    assert df["sim_seconds"].tolist() == [5.0, 10.0, 15.0] and df["late"].tolist() == [0, 0, 0]
    assert df["clients"].tolist() == [3, 3, 3]
    fedavg = toy(tmp_path, "drop", deadline=5.0)  # FedAvg's drop policy: client 2 does not count
    assert fedavg["clients"].tolist() == [2, 2, 2] and fedavg["sim_seconds"].tolist() == [5.0, 10.0, 15.0]


def test_availability_windows_are_respected(tmp_path):
    # nobody before t = 10; client 2 only until 13, before its 6 s round could end (at 16)
    trace = tmp_path / "windows.txt"
    trace.write_text("client,start,end\n0,10,100\n1,10,100\n2,10,13\n")
    df = toy(tmp_path, "trace", availability=str(trace))
    # round 1 waits for t = 10; client 2 goes offline at 13 (never trained); then only clients 0 and 1 are sampled
    assert df["sim_seconds"].tolist() == [14.0, 18.0, 22.0]
    assert df["clients"].tolist() == [2, 2, 2] and df["late"].tolist() == [1, 0, 0]
    assert df["bytes_down"].tolist() == [3 * MODEL_BYTES, 2 * MODEL_BYTES, 2 * MODEL_BYTES]


def test_a_run_on_the_clock_trains_as_one_without_it_when_everyone_counts(tmp_path):
    clocked = toy(tmp_path, "clocked")
    plain = fedsim.run(Config(dataset="digits", clients=3, rounds=3, local_steps=4, batch_size=10, quiet=True,
                              out_dir=str(tmp_path), executor="sequential", name="unclocked"))
    same = [c for c in plain.columns if c not in ("round_seconds", "elapsed_seconds")]
    pd.testing.assert_frame_equal(clocked[same], plain[same])


def test_profiles_are_drawn_from_the_seed():
    a = Profiles.from_options("lognormal:3,1", "uniform:1e6,2e6", None, seed=0, clients=1000)
    b = Profiles.from_options("lognormal(3,1)", "uniform(1e6,2e6)", None, seed=0, clients=1000)
    other = Profiles.from_options("lognormal:3,1", "uniform:1e6,2e6", None, seed=1, clients=1000)
    assert np.array_equal(a.speed, b.speed) and np.array_equal(a.up, b.up) and np.array_equal(a.up, a.down)
    assert not np.array_equal(a.speed, other.speed)
    assert abs(np.log(np.median(a.speed)) - 3) < 0.1 and abs(np.log(a.speed).std() - 1) < 0.1
    assert 1e6 <= a.up.min() and a.up.max() <= 2e6
    first = Profiles.from_options("lognormal:3,1", None, None, seed=0, clients=10)
    assert np.array_equal(first.speed, a.speed[:10]) and np.isinf(first.up).all()  # no bandwidth: no time


def test_availability_modes():
    clients = np.arange(100)
    bern = Availability("bernoulli:0.3", 100, seed=0)
    drawn = bern.available(clients, 0.0, (1,))
    assert np.array_equal(drawn, Availability("bernoulli:0.3", 100, seed=0).available(clients, 5.0, (1,)))
    assert 15 < len(drawn) < 45 and not np.array_equal(drawn, bern.available(clients, 0.0, (2,)))
    day = Availability("diurnal:100,0.25", 100, seed=0)
    for t in (0.0, 37.0, 260.0):
        on = day.available(clients, t, (1,))
        assert 10 < len(on) < 40  # a quarter of the clients at any time
        for c in on:
            assert t < day.until(int(c), t) <= t + 25  # on for at most a quarter period
        later = day.next_start(t)
        assert t < later <= t + 100
    assert math.isinf(Availability("always", 3, 0).until(0, 5.0))


def test_samples_of_local_work():
    assert samples_of(25, 10, 2, None) == 50
    assert samples_of(25, 10, 1, 2) == 20 and samples_of(25, 10, 1, 4) == 35  # 10, 10, 5, then 10 again
    assert samples_of(21, 10, 1, 2) == 21  # the lone last sample joins the second batch


BAD = [
    (["--deadline", "10"], "--deadline runs on the simulated clock"),
    (["--over-select", "1.3"], "--over-select runs on the simulated clock"),
    (["--availability", "bernoulli:0.5"], "--availability runs on the simulated clock"),
    (["--speed", "lognormal:0"], "--speed 'lognormal:0': write lognormal:MU,SIGMA"),
    (["--speed", "uniform:2,1"], "uniform needs 0 < A <= B"),
    (["--speed", "gamma:1,2"], "write one of lognormal"),
    (["--speed", "constant:1", "--availability", "bernoulli:2"], "P must be in (0, 1]"),
    (["--speed", "constant:1", "--over-select", "0.5"], "--over-select must be >= 1"),
    (["--speed", "constant:1", "--deadline", "0"], "--deadline must be > 0"),
    (["--speed", "constant:1", "--concurrency", "2"], "--concurrency is for the asynchronous algorithms"),
    (["--speed", "constant:1", "--availability", "missing.csv"], "--availability missing.csv: cannot read it"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_clock_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--rounds", "1", "--clients", "3", "--out-dir", str(tmp_path / "out"),
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows,needle", [
    ("0,40,1e6,1e6\n1,40,1e6,1e6\n", "has no row for client 2"),
    ("0,40,1e6,1e6\n1,-40,1e6,1e6\n2,40,1e6,1e6\n", "line 3: samples_per_s must be positive"),
    ("0,40,1e6,1e6\n0,40,1e6,1e6\n1,40,1e6,1e6\n2,40,1e6,1e6\n", "client 0 has a second row"),
    ("0,40,1e6,1e6\n1,40,1e6,1e6\n2,40,1e6,1e6\n7,40,1e6,1e6\n", "client 7 is not a client of this run"),
    ("0,40,1e6\n", "line 2: 3 values, the header has 4"),
])
def test_a_bad_profiles_file_is_one_line_and_nothing_written(tmp_path, rows, needle):
    path = tmp_path / "p.csv"
    path.write_text("client,samples_per_s,up_bps,down_bps\n" + rows)
    result = runner.invoke(app, ["train", "--rounds", "1", "--clients", "3", "--profiles", str(path),
                                 "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows,needle", [
    ("0,0,10\n0,5,20\n", "client 0's windows overlap (line 2: [0, 10), line 3 starts at 5)"),
    ("0,10,10\n", "a window needs 0 <= start < end"),
])
def test_a_bad_trace_is_one_line_and_nothing_written(tmp_path, rows, needle):
    path = tmp_path / "t.csv"
    path.write_text("client,start,end\n" + rows)
    result = runner.invoke(app, ["train", "--rounds", "1", "--clients", "3", "--speed", "constant:10",
                                 "--availability", str(path), "--out-dir", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_the_record_holds_the_profiles_and_a_resume_refuses_changed_ones(tmp_path):
    import json

    toy(tmp_path, "r", rounds=2)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["clock"]["source"] == "--profiles r.profiles.csv"
    assert record["clock"]["samples_per_s"] == {"min": 10.0, "median": 20.0, "max": 40.0}
    assert len(record["clock"]["sha256"]) == 64
    write_profiles(tmp_path / "r.profiles.csv", (40, 20, 11))  # the same file name, other speeds
    with pytest.raises(FedsimError, match=r"the client profiles and availability \(sha256\) is"):
        fedsim.run(resume=tmp_path / "r.csv", rounds=3)
    write_profiles(tmp_path / "r.profiles.csv", (40, 20, 10))
    df = fedsim.run(resume=tmp_path / "r.csv", rounds=3)
    assert df["sim_seconds"].tolist() == [6.0, 12.0, 18.0]  # the clock goes on from the checkpoint


def test_clock_options_sweep_and_stack(tmp_path):
    runs = expand({"out_dir": str(tmp_path), "clients": 3, "rounds": 1},
                  {"speed": ["lognormal(3,1)", "constant(5)"], "seed": [0, 1]}, "s")
    assert {r.config.speed for r in runs} == {"lognormal(3,1)", "constant(5)"} and len(runs) == 4
    assert len({stack_key(r.config) for r in runs}) == 1  # profiles change who trains, not a local step
    fedbuff = expand({"out_dir": str(tmp_path), "clients": 3, "speed": "constant:5", "algo": "fedbuff"},
                     {"seed": [0, 1]}, "b")
    assert len({stack_key(r.config) for r in fedbuff}) == 2  # asynchronous runs follow their own events


def test_compare_gives_the_simulated_time_to_target_and_plots_against_it(tmp_path):
    toy(tmp_path, "fast", speeds=(40, 40, 40))
    toy(tmp_path, "slow")
    result = runner.invoke(app, ["compare", str(tmp_path / "fast.csv"), str(tmp_path / "slow.csv"), "--target",
                                 "0.1", "--format", "csv", "--x", "sim_seconds", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout)).set_index("runs")
    assert table.loc[["fast", "slow"], "sim_time_to_target_seconds_mean"].tolist() == [3.0, 6.0]  # round 1, both
    assert table.loc[["fast", "slow"], "total_sim_seconds_mean"].tolist() == [9.0, 18.0]
    assert (tmp_path / "p.png").stat().st_size > 0
