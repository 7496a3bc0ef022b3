"""Asynchronous FL on the simulated clock: FedBuff and FedAsync (fedsim.engine.asynchronous)."""

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms.asynchronous import staleness_weight
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core.channel import MODEL, Field, Message, summed
from fedsim.core.hooks import ServerState
from fedsim.engine.asynchronous import AsyncLoop, Staleness
from fedsim.metrics import TIME_COLUMNS

runner = CliRunner()
MODEL_BYTES = 220840  # the mlp on digits
CLOCK_COLUMNS = ["sim_seconds", "late", "updates", "staleness_mean", "staleness_max"]


def write_profiles(path, speeds, bps=8 * MODEL_BYTES):
    path.write_text("client,samples_per_s,up_bps,down_bps\n"
                    + "".join(f"{c},{s},{bps},{bps}\n" for c, s in enumerate(speeds)))
    return str(path)


def run(tmp_path, name, **options) -> pd.DataFrame:
    base = dict(dataset="digits", clients=5, rounds=6, local_steps=4, batch_size=10, quiet=True,
                out_dir=str(tmp_path), executor="sequential", name=name, speed="lognormal:3,1")
    return fedsim.run(Config(**{**base, **options}))


def numbers(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in [*TIME_COLUMNS, *CLOCK_COLUMNS] if c in df]).reset_index(drop=True)


def test_hand_computed_asynchronous_clock_with_a_deadline(tmp_path):
    # clients take 3, 4 and 6 s (1 s each way, 40 samples at 40, 20, 10 samples/s); --deadline 5 drops client 2
    # every time. FedAsync applies each arrival: c0 at 3, c1 at 4, c0 again at 6 (sent at 3), c1 at 8, c0 at 9,
    # c0 at 12 (c1's arrival at 12 comes after it: ties go by client id)
    df = run(tmp_path, "fa", algo="fedasync", clients=3, concurrency=3, deadline=5.0, speed=None,
             profiles=write_profiles(tmp_path / "p.csv", (40, 20, 10)))
    assert df["sim_seconds"].tolist() == [3.0, 4.0, 6.0, 8.0, 9.0, 12.0]
    assert df["staleness_max"].tolist() == [0, 1, 1, 1, 1, 0]
    assert df["updates"].tolist() == [1] * 6 and df["clients"].tolist() == [1] * 6
    assert (df["bytes_up"] == MODEL_BYTES).all()
    # the 3 first dispatches; then each arrival and each drop (at 5 and 10) refills its slot, counted in the next row
    assert df["bytes_down"].tolist() == [m * MODEL_BYTES for m in (3, 1, 2, 1, 1, 2)]


def test_fedbuff_with_equal_times_is_synchronous_fedavg(tmp_path):
    # every client takes the same time: K = concurrency = m and server lr 1 apply what a synchronous round does
    options = dict(clients=4, rounds=4, speed="constant:40", bandwidth="constant:1e6")
    fedbuff = run(tmp_path, "fb", algo="fedbuff", concurrency=2, buffer_size=2, server_lr=1.0, **options)
    fedavg = run(tmp_path, "fa", algo="fedavg", fraction=0.5, **options)
    assert fedbuff["sim_seconds"].tolist() == fedavg["sim_seconds"].tolist()
    assert (fedbuff["staleness_max"] == 0).all() and (fedbuff["updates"] == 2).all()
    # the same rows up to rounding: FedBuff adds the mean update to the model, FedAvg averages the models
    pd.testing.assert_frame_equal(numbers(fedbuff), numbers(fedavg), rtol=1e-4)


def test_fedasync_with_mixing_1_and_one_client_in_flight_is_sequential_training(tmp_path):
    # each client trains from the model the previous one sent: FedAvg with one client a round, exactly
    fedasync = run(tmp_path, "fx", algo="fedasync", concurrency=1, mixing=1.0)
    fedavg = run(tmp_path, "fa", algo="fedavg", fraction=0.2)
    assert fedasync["sim_seconds"].tolist() == fedavg["sim_seconds"].tolist()
    pd.testing.assert_frame_equal(numbers(fedasync), numbers(fedavg))


def test_the_same_csv_however_many_clients_train_together(tmp_path, monkeypatch):
    calls = []
    train = AsyncLoop.train

    def counting(self, flights, store, stream):
        calls.append(len(flights))
        return train(self, flights, store, stream)

    options = dict(algo="fedbuff", concurrency=4, buffer_size=2, rounds=8, availability="bernoulli:0.8")
    monkeypatch.setattr(AsyncLoop, "train", counting)
    together = run(tmp_path, "together", **options)
    assert max(calls) > 1  # some clients did train together
    monkeypatch.setattr(AsyncLoop, "train", lambda self, flights, store, stream:
                        [train(self, [f], store, stream) for f in flights])
    alone = run(tmp_path, "alone", **options)
    pd.testing.assert_frame_equal(together.drop(columns=list(TIME_COLUMNS)), alone.drop(columns=list(TIME_COLUMNS)))
    again = run(tmp_path, "again", **options)  # and the same seed and profiles give the same CSV
    pd.testing.assert_frame_equal(together.drop(columns=list(TIME_COLUMNS)), again.drop(columns=list(TIME_COLUMNS)))


def test_the_vmap_executor_gives_the_sequential_numbers(tmp_path):
    pytest.importorskip("fedsim.engine.vmap")
    options = dict(algo="fedasync", concurrency=3, rounds=5)
    sequential = run(tmp_path, "s", **options)
    vmap = run(tmp_path, "v", executor="vmap", **options)
    pd.testing.assert_frame_equal(sequential.drop(columns=list(TIME_COLUMNS)), vmap.drop(columns=list(TIME_COLUMNS)),
                                  rtol=1e-4)


@pytest.mark.parametrize("algo,options", [("fedbuff", dict(buffer_size=2, server_momentum=0.5)),
                                          ("fedasync", dict(mu=0.1, lr_decay=0.9, staleness="hinge"))])
def test_a_resume_mid_stream_equals_the_uninterrupted_run(tmp_path, algo, options):
    full = run(tmp_path, "full", algo=algo, concurrency=3, **options)
    run(tmp_path, "r", algo=algo, concurrency=3, rounds=3, **options)
    stream = load_checkpoint(tmp_path / "r.csv").progress.stream
    assert stream["flights"] and any(f["message"] is not None for f in stream["flights"])  # trained, in flight
    resumed = fedsim.run(resume=tmp_path / "r.csv", rounds=6)
    pd.testing.assert_frame_equal(resumed.drop(columns=list(TIME_COLUMNS)), full.drop(columns=list(TIME_COLUMNS)))


def test_staleness_functions_as_the_papers():
    assert staleness_weight("constant", 0.5, 4, 9) == 1.0
    assert staleness_weight("polynomial", 0.5, 4, 3) == 0.5  # FedBuff's 1/sqrt(1 + τ)
    assert staleness_weight("hinge", 10, 4, 4) == 1.0 and staleness_weight("hinge", 10, 4, 6) == 1 / 21


def test_the_staleness_stage_weighs_a_model_and_an_update():
    server = ServerState({"w": torch.tensor([1.0, 1.0])}, round=3)
    sends = {MODEL: summed("model", centered=True), "delta": summed("update"), "n": Field("per-client", "n")}
    message = Message(0, 5, {MODEL: {"w": torch.tensor([3.0, 5.0])}, "delta": {"w": torch.tensor([2.0, 4.0])},
                             "n": 7}, round=2)  # trained from version 1: two versions stale
    (out,) = Staleness(lambda tau: 1 / (1 + tau))(sends, [message], server, 4)
    assert torch.allclose(out.fields[MODEL]["w"], torch.tensor([1 + 2 / 3, 1 + 4 / 3]))
    assert torch.allclose(out.fields["delta"]["w"], torch.tensor([2 / 3, 4 / 3])) and out.fields["n"] == 7


def test_fedbuff_under_central_dp_clips_and_noises_the_buffer(tmp_path):
    df = run(tmp_path, "dp", algo="fedbuff", concurrency=3, buffer_size=2, rounds=3, dp_noise=0.5, dp_clip="1.0")
    assert df["epsilon"].is_monotonic_increasing and df["dp_clip"].tolist() == [1.0] * 3
    local = run(tmp_path, "ldp", algo="fedasync", concurrency=2, rounds=2, dp_noise=0.5, dp_clip="1.0",
                dp_mode="local")  # one update alone may be noised by its client
    assert len(local) == 2


BAD = [
    (["--algo", "fedbuff"], "fedbuff runs on the simulated clock: give client profiles"),
    (["--algo", "fedbuff", "--speed", "constant:5", "--buffer-size", "0"], "--buffer-size must be >= 1"),
    (["--algo", "fedbuff", "--speed", "constant:5", "--concurrency", "4"], "--concurrency 4 is more than the 3"),
    (["--algo", "fedbuff", "--speed", "constant:5", "--stragglers", "0.2"], "--stragglers assumes synchronous"),
    (["--algo", "fedasync", "--speed", "constant:5", "--over-select", "1.5"], "--over-select assumes synchronous"),
    (["--algo", "fedasync", "--speed", "constant:5", "--client-dropout", "0.1"], "--client-dropout assumes"),
    (["--algo", "fedasync", "--speed", "constant:5", "--dp-noise", "1", "--dp-clip", "1"],
     "differential privacy (--dp-mode central) cannot take fedasync: it hides each client's update in the noised "
     "sum of a cohort's, and fedasync applies each client's update alone"),
    (["--algo", "fedasync", "--speed", "constant:5", "--aggregate", "median"], "--aggregate median cannot take "
                                                                              "fedasync"),
    (["--algo", "fedbuff", "--speed", "constant:5", "--aggregate", "krum", "--buffer-size", "2"],
     "needs at least 3 clients per round"),  # the buffer is Krum's cohort
    (["--algo", "fedasync", "--speed", "constant:5", "--staleness", "linear"],
     "--staleness must be one of constant, polynomial, hinge (got 'linear')"),
    (["--algo", "fedasync", "--speed", "constant:5", "--mixing", "0"], "--mixing must be in (0, 1]"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_asynchronous_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--rounds", "1", "--clients", "3", "--out-dir", str(tmp_path / "out"),
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()
