"""The channel (fedsim.core.channel): the server update sees only the aggregate, compatibility follows from the
declarations, and the combination defects an outside review found (DP through FedDyn, ε after a resume with
more rounds, shared noise across runs, BN variances under noise, Krum with few senders, δ's default)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_algorithms import Net, Sim, tiny_data

import fedsim
from fedsim.algorithms import ALGORITHMS, algorithm_class, message_table
from fedsim.checkpoint import load_checkpoint
from fedsim.config import Config
from fedsim.core.channel import PER_CLIENT, Channel
from fedsim.engine.local import LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round
from fedsim.errors import DivergenceError, FedsimError
from fedsim.metrics import TIME_COLUMNS
from fedsim.privacy.accountant import Accountant, Accounting, noise_for_budget

ROOT = Path(__file__).resolve().parents[1]
# an asynchronous algorithm runs on the simulated clock: profiles, and a buffer of the clients in flight
CLOCK = dict(speed="constant:100", concurrency=5, buffer_size=5)


def dp_run_options(algo: str) -> dict:
    from fedsim.algorithms.asynchronous import Asynchronous

    return {"algo": algo, **(CLOCK if issubclass(algorithm_class(algo), Asynchronous) else {})}


def accepted(options: dict) -> bool:
    try:
        Config(**options).validate()
    except FedsimError:
        return False
    return True


# derived from what each algorithm sends (and FedAsync's cohort of one), not listed by hand
DP_ACCEPTS = [a for a in ALGORITHMS if accepted({**dp_run_options(a), "dp_noise": 0.5, "dp_clip": "1e-5"})]


class ReadAfterReduce(Channel):
    """The default channel, which then overwrites every tensor of the clients' summed fields with NaN: a server
    update that read a client's message (rather than the aggregate's means) would make the server state NaN. (A
    per-client field is in the aggregate as sent: FedFomo's models.)"""

    def reduce(self, sends, messages, server, round):
        aggregate = super().reduce(sends, messages, server, round)
        for m in messages:
            for value in (m.fields[name] for name, spec in sends.items() if spec.kind != PER_CLIENT):
                for tensor in value.values() if isinstance(value, dict) else [value]:
                    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                        tensor.fill_(math.nan)
        return aggregate


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_the_server_update_depends_on_the_clients_only_through_the_aggregate(name):
    servers = []
    for channel in (Channel(), ReadAfterReduce()):
        torch.manual_seed(0)
        sim = Sim(algorithm_class(name), Net(), tiny_data(sizes=(6, 9, 7)), lr=0.1, batch_size=3, gen_steps=20)
        spec = LocalSpec(OptimizerSpec("sgd", 0.1), 3, 1, None, seed=0)
        result = run_round(sim.algo, SequentialExecutor(sim.model, sim.data, spec), sim.server, sim.store,
                           [0, 1, 2], 1, 0.1, channel)
        servers.append(result.server)
    assert same(servers[0].model, servers[1].model) and same(servers[0].extra, servers[1].extra)


def test_the_table_of_what_algorithms_send_is_generated_and_in_the_docs():
    table = message_table()
    refused = {line.split(" | ")[0].strip("| ") for line in table.splitlines() if line.endswith("| refused |")}
    assert "| fednova |" in table and "`steps`" in table
    assert {"fednova", "fedas", "fedfomo", "fedamp", "apple"} <= refused and "feddbe" not in refused
    for doc in ("docs/architecture.md", "README.md"):
        assert table in (ROOT / doc).read_text(), f"{doc}: paste `python scripts/channel_table.py`"


@pytest.mark.parametrize("name", ["fednova", "fedas"])
def test_an_algorithm_sending_a_per_client_field_is_refused_by_dp_and_robust_reducers(name):
    field = next(n for n, s in algorithm_class(name).sends.items() if s.kind == PER_CLIENT)
    for options in (dict(dp_noise=1.0, dp_clip="1"), dict(aggregate="krum")):
        with pytest.raises(FedsimError, match=f"cannot take {name}: .*'{field}'"):
            Config(algo=name, **options).validate()
    Config(algo=name, attack="scale", malicious_fraction=0.2).validate()  # an attack leaves per-client fields be


def run(tmp_path, name="run", **options):
    base = dict(rounds=3, clients=10, fraction=0.5, out_dir=str(tmp_path), quiet=True, threads=1, name=name)
    return fedsim.run(Config(**{**base, **options}))


@pytest.mark.parametrize("algo", ["feddyn", "scaffold", pytest.param("fedavgm", marks=pytest.mark.slow),
                                  *[pytest.param(a, marks=pytest.mark.slow) for a in DP_ACCEPTS
                                    if a not in ("feddyn", "scaffold", "fedavgm")]])
def test_an_algorithm_dp_accepts_does_not_learn_when_every_update_is_clipped_to_nothing(tmp_path, algo):
    """FedDyn learned to 0.48 here while FedAvg stayed near chance: h summed the raw models past the clip."""
    options = dp_run_options(algo)
    dp = run(tmp_path, dp_clip="1e-5", dp_noise=0.5, **options)
    initial = run(tmp_path, name="initial", rounds=1, lr=1e-12, **options)["test_accuracy"].iloc[0]
    assert abs(dp["test_accuracy"].iloc[-1] - initial) < 0.05
    if algo == "feddyn":
        assert run(tmp_path, name="plain", algo=algo)["test_accuracy"].iloc[-1] > initial + 0.2  # it learns without DP


def test_feddyn_s_h_comes_from_the_aggregate_under_robust_reducers_too(tmp_path):
    """Under attack FedDyn's h used to take the attackers' raw updates past the median; now the median's output."""
    attacked = dict(algo="feddyn", malicious_fraction=0.2, attack="sign-flip", attack_scale=50.0, fraction=1.0)
    robust = run(tmp_path, name="median", aggregate="median", **attacked)
    plain = run(tmp_path, name="mean", **attacked)
    assert robust["test_accuracy"].iloc[-1] > plain["test_accuracy"].iloc[-1] + 0.2


def epsilon_as_run(noise: float, rounds: int, population=10, cohort=5, delta=1e-5) -> float:
    return Accountant(Accounting("central", population, cohort, noise, delta)).epsilon(rounds)


def test_a_resume_that_extends_an_epsilon_run_keeps_its_noise_and_reports_what_it_spends(tmp_path, capsys):
    options = dict(dp_epsilon=2.0, dp_clip="1", local_steps=1, checkpoint_every=1)
    run(tmp_path, rounds=2, quiet=False, **options)
    capsys.readouterr()
    df = fedsim.run(resume=str(tmp_path / "run.csv"), rounds=4, quiet=False)
    err = capsys.readouterr().err
    z = noise_for_budget(2.0, 2, "central", 10, 5, 1e-5)
    assert re.search(rf"resuming with the run's noise multiplier {z:.4f}; 4 rounds spend epsilon [\d.]+, above the "
                     r"target 2", err), err
    eps = df["epsilon"].tolist()
    assert eps == sorted(eps) and eps[-1] > 2.0  # never decreases (it went 1.07, 2.00, 1.55, 2.00)
    for r, e in zip(df["round"], eps, strict=True):
        assert e == pytest.approx(epsilon_as_run(z, r), rel=1e-5)  # dp-accounting's composition as run
    record = json.loads((tmp_path / "run.json").read_text())["privacy"]
    assert record["noise_multiplier"] == pytest.approx(z) and record["epsilon_after_rounds"] == pytest.approx(eps[-1])
    assert load_checkpoint(tmp_path / "run.ckpt").progress.server.extra["dp"]["noise"] == pytest.approx(z)


def released(tmp_path, name, **options):
    run(tmp_path, name=name, rounds=1, dp_noise=100.0, dp_clip="1", **options)
    return torch.cat([v.reshape(-1) for v in load_checkpoint(tmp_path / f"{name}.ckpt").progress.server.model.values()
                      if v.is_floating_point()])


def test_runs_that_differ_draw_independent_central_noise_unless_they_share_a_noise_seed(tmp_path):
    a, b = released(tmp_path, "a", lr=0.05), released(tmp_path, "b", lr=0.1)
    noise = float(a.norm())  # z = 100: the released model is almost all noise
    assert float((a - b).norm()) > 0.5 * noise  # the difference is noise, not the clipped sums' difference
    assert torch.equal(a, released(tmp_path, "a-again", lr=0.05))  # the same run draws the same noise
    shared_a = released(tmp_path, "sa", lr=0.05, dp_noise_seed=7)
    shared_b = released(tmp_path, "sb", lr=0.1, dp_noise_seed=7)
    assert float((shared_a - shared_b).norm()) < 1e-3 * float(shared_a.norm())  # common random numbers


def test_dp_noise_on_batchnorm_keeps_variances_nonnegative_and_evaluation_finite(tmp_path):
    df = run(tmp_path, model="cnn-bn", dp_noise=5.0, dp_clip="1", local_steps=1, rounds=2)
    assert df["test_loss"].notna().all()
    state = load_checkpoint(tmp_path / "run.ckpt").progress.server.model
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert variances and all(bool((v >= 0).all()) for v in variances)


class NaNOnEvaluation(torch.nn.Module):
    """Trains normally; in eval mode its outputs are NaN (a model whose evaluation diverged)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if self.training else out * math.nan


def test_a_nan_evaluation_metric_is_a_divergence_naming_the_round_and_metric(tmp_path):
    with pytest.raises(DivergenceError, match=r"round 1: test_loss is nan"):
        fedsim.run(Config(rounds=2, clients=4, out_dir=str(tmp_path), quiet=True, name="nan"), model=NaNOnEvaluation)
    assert json.loads((tmp_path / "nan.json").read_text())["status"] == "diverged"


def test_krum_under_dropout_records_the_f_each_round_used(tmp_path):
    df = run(tmp_path, aggregate="krum", client_dropout=0.5, fraction=1.0, rounds=4)
    for senders, f, m in zip(df["clients"], df["krum_f"], df["krum_m"], strict=True):
        if senders >= 3:
            assert f == (senders - 3) // 2 and m == 1
        else:
            assert pd.isna(f) and m == 0


def test_delta_defaults_well_below_one_over_n_and_a_weak_delta_is_warned(tmp_path, capsys):
    run(tmp_path, dp_noise=1.0, dp_clip="1", rounds=1)
    assert json.loads((tmp_path / "run.json").read_text())["privacy"]["delta"] == 1e-5  # min(10^-1.1, 1e-5)
    run(tmp_path, name="weak", dp_noise=1.0, dp_clip="1", rounds=1, dp_delta=0.2, quiet=False)
    assert "--dp-delta 0.2 is at least 1/N = 1/10" in capsys.readouterr().err


def test_a_round_where_no_client_sends_still_advances_the_server_s_round():
    """FedALA keys its slices by the round: a round where every client dropped must not repeat the next offset."""
    sim = Sim(algorithm_class("fedala"), Net(), tiny_data(sizes=(6, 9, 7)), lr=0.1)
    spec = LocalSpec(OptimizerSpec("sgd", 0.1), 3, 1, None, seed=0)
    result = run_round(sim.algo, SequentialExecutor(sim.model, sim.data, spec), sim.server, sim.store, [], 4, 0.1)
    assert result.server.round == 4 and result.aggregate is None and same(result.server.model, sim.server.model)


def test_feddyn_and_scaffold_count_only_clients_with_data(tmp_path):
    from fedsim.experiment import setup

    exp = setup(Config(algo="feddyn", clients=40, dirichlet=0.01, min_size=0, out_dir=str(tmp_path), quiet=True))
    with_data = int((exp.partition.train_sizes > 0).sum())
    assert with_data < 40 and exp.algorithm.population == with_data  # N in h's 1/N: the clients a round may sample


def test_the_console_script_refuses_a_per_client_algorithm_under_dp_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsim", "train", "--algo", "fednova", "--dp-noise", "1",
                          "--dp-clip", "1", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "'steps'" in out.stderr and not list(tmp_path.iterdir())


def test_sequential_and_vmap_agree_through_the_channel_under_dp(tmp_path):
    runs = [run(tmp_path, name=e, executor=e, algo="scaffold", dp_noise=1.0, dp_clip="0.5", local_steps=2)
            .drop(columns=list(TIME_COLUMNS)) for e in ("sequential", "vmap")]
    pd.testing.assert_frame_equal(runs[0], runs[1], rtol=1e-4)
