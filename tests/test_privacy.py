"""Differential privacy (fedsim.privacy): clipping, noise, the accountant, the budget search, resume, bad input."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core.channel import MODEL, Channel, Message, summed
from fedsim.metrics import TIME_COLUMNS
from fedsim.privacy.accountant import Accountant, Accounting, dp_accounting, noise_for_budget
from fedsim.privacy.aggregation import DPReducer, LocalNoise, clip_rows

dp = dp_accounting()
runner = CliRunner()
SENDS = {MODEL: summed("the model", centered=True)}


def sent_of(global_model, updates, round=1):
    """Messages whose model is the global model plus each update (all equal sample counts)."""
    return [Message(i, 10, {MODEL: {k: global_model[k] + u[k] for k in global_model}}, 0.0, round)
            for i, u in enumerate(updates)]


def server_of(model):
    return SimpleNamespace(model=model)


def reduce(reducer, model, sent, stages=(), round=1, sends=SENDS):
    return Channel(stages, reducer).reduce(sends, sent, server_of(model), round).means[MODEL]


def model_and_updates(clients=6, size=1000, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = {"w": torch.randn(size // 2, generator=g), "b": torch.randn(size // 2, generator=g),
             "steps": torch.tensor(7)}
    updates = [{"w": scale * (i + 1) * torch.randn(size // 2, generator=g),
                "b": scale * torch.randn(size // 2, generator=g), "steps": torch.tensor(i + 1)}
               for i in range(clients)]
    return model, updates


def test_every_clipped_update_has_norm_at_most_c():
    updates = torch.randn(50, 2000) * torch.logspace(-3, 2, 50).unsqueeze(1)
    clipped, norms = clip_rows(updates, 0.7)
    assert (clipped.norm(dim=1) <= 0.7 * (1 + 1e-6)).all()
    small = norms <= 0.7  # updates inside the ball are left alone
    assert small.any() and torch.equal(clipped[small], updates[small])


def test_local_noise_clips_each_client_before_it_sends():
    model, updates = model_and_updates()
    noised = LocalNoise(clip=0.5, noise=0.0, key=0)(SENDS, sent_of(model, updates), server_of(model), 1)
    for m in noised:
        norm = torch.cat([(m.fields[MODEL][k] - model[k]).reshape(-1) for k in ("w", "b")]).norm()
        assert norm <= 0.5 * (1 + 1e-6)


def test_every_summed_field_is_clipped_together():
    """A second summed field (SCAFFOLD's Δc_i) is inside the clip: the joint vector's norm is at most C."""
    model, updates = model_and_updates()
    sends = {**SENDS, "dc": summed("a control variate's change")}
    sent = [Message(m.client, 10, {**m.fields, "dc": {"w": 100 * torch.ones(3)}}) for m in sent_of(model, updates)]
    noised = LocalNoise(clip=0.5, noise=0.0, key=0)(sends, sent, server_of(model), 1)
    for m in noised:
        joint = torch.cat([(m.fields[MODEL][k] - model[k]).reshape(-1) for k in ("w", "b")] + [m.fields["dc"]["w"]])
        assert joint.norm() <= 0.5 * (1 + 1e-6)
    means = Channel((), DPReducer("central", 0.5, 0.0, len(sent), 0)).reduce(sends, sent, server_of(model), 1).means
    assert means["dc"]["w"].norm() <= 0.5 * (1 + 1e-6)  # each client's Δc was clipped before the mean


def test_no_noise_and_a_large_clip_is_fedavg_with_the_fixed_denominator():
    model, updates = model_and_updates()
    sent = sent_of(model, updates)
    averaged = reduce(DPReducer("central", clip=1e9, noise=0.0, cohort=len(sent), key=0), model, sent)
    fedavg = reduce(None, model, sent)  # equal sample counts: the plain mean
    for k in ("w", "b"):
        torch.testing.assert_close(averaged[k], fedavg[k], rtol=1e-5, atol=1e-5)
    assert averaged["steps"] == model["steps"]  # an integer buffer keeps the global value
    # a fixed denominator larger than the clients who sent (dropouts) shrinks the step, it is not renormalized
    half = reduce(DPReducer("central", clip=1e9, noise=0.0, cohort=2 * len(sent), key=0), model, sent)
    torch.testing.assert_close(half["w"] - model["w"], (fedavg["w"] - model["w"]) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_noise_std_is_z_c_over_the_denominator(mode):
    size, clients, clip, z = 400_000, 5, 0.3, 1.7
    model = {"w": torch.zeros(size)}
    sent = sent_of(model, [{"w": torch.zeros(size)} for _ in range(clients)], round=3)
    stages = (LocalNoise(clip, z, key=1),) if mode == "local" else ()
    reducer = DPReducer(mode, clip=clip, noise=z, cohort=clients, key=1)
    out = reduce(reducer, model, sent, stages, round=3)["w"]
    expected = z * clip / clients * (math.sqrt(clients) if mode == "local" else 1)  # local: m draws summed
    assert abs(float(out.std()) / expected - 1) < 0.02
    again = reduce(DPReducer(mode, clip=clip, noise=z, cohort=clients, key=1), model, sent, stages, round=3)["w"]
    assert torch.equal(again, out)  # keyed by (key, round): reproducible
    other = reduce(DPReducer(mode, clip=clip, noise=z, cohort=clients, key=2), model, sent,
                   (LocalNoise(clip, z, key=2),) if mode == "local" else (), round=3)["w"]
    assert float((other - out).norm()) > 0.5 * float(out.norm())  # another run's key: independent noise


def test_adaptive_clip_moves_toward_the_quantile():
    model, updates = model_and_updates(clients=40, scale=0.01)  # norms around 0.3-10: above C0 = 0.1
    reducer = DPReducer("central", clip=None, noise=0.5, cohort=40, key=0, quantile=0.5)
    clips = []
    for r in range(1, 6):
        reduce(reducer, model, sent_of(model, updates, round=r), round=r)
        clips.append(reducer.used_clip)
    assert clips[0] == 0.1 and all(b > a for a, b in zip(clips, clips[1:], strict=False))
    # the paper's split: z_update^-2 + (2 sigma_b)^-2 = z^-2, sigma_b = m/20
    assert reducer.count_std == 2.0
    assert math.isclose(reducer.update_noise**-2 + (2 * reducer.count_std) ** -2, 0.5**-2)


def test_epsilon_equals_dp_accounting_computed_directly():
    accounting = Accounting("central", population=100, cohort=10, noise=1.1, delta=1e-2)
    direct = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    direct.compose(dp.SampledWithoutReplacementDpEvent(100, 10, dp.GaussianDpEvent(1.1 / 2)), 37)
    assert Accountant(accounting).epsilon(37) == pytest.approx(direct.get_epsilon(1e-2), rel=1e-12)
    local = dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)
    local.compose(dp.GaussianDpEvent(1.1 / 2), 37)
    assert Accountant(Accounting("local", 100, 10, 1.1, 1e-2)).epsilon(37) == pytest.approx(local.get_epsilon(1e-2))
    assert Accountant(Accounting("central", 100, 10, 0.0, 1e-2)).epsilon(5) == math.inf


def test_the_accountant_reproduces_abadi_et_al():
    """Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, section 3.1: q = 0.01, sigma = 4,
    delta = 1e-5, T = 10,000 steps give epsilon ~ 1.26 with the moments accountant (integer orders up to 32 and
    the classic conversion eps = min (RDP(a) + log(1/delta)/(a-1))). dp-accounting's RDP for the same event,
    converted the same way, gives the published figure to its two decimals; its tighter conversion gives less."""
    event = dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(0.01, dp.GaussianDpEvent(4.0)), 10_000)
    orders = list(range(2, 33))
    accountant = dp.rdp.RdpAccountant(orders)
    accountant.compose(event)
    classic = min(r + math.log(1e5) / (a - 1) for r, a in zip(accountant._rdp, orders, strict=True))
    assert round(classic, 2) == 1.26
    assert accountant.get_epsilon(1e-5) <= classic


def test_budget_in_noise_out_then_training_spends_at_most_the_budget(tmp_path):
    df = fedsim.run(Config(rounds=4, clients=8, fraction=0.5, local_steps=2, dp_epsilon=3.0, dp_clip="1.0",
                           out_dir=str(tmp_path), quiet=True))
    assert list(df["round"]) == [1, 2, 3, 4] and (df["dp_clip"] == 1.0).all()
    assert df["epsilon"].is_monotonic_increasing
    final = df["epsilon"].iloc[-1]
    assert 0.99 * 3.0 <= final <= 3.0
    z = noise_for_budget(3.0, 4, "central", 8, 4, 1e-5)  # delta defaults to min(N^-1.1, 1e-5)
    assert final == pytest.approx(Accountant(Accounting("central", 8, 4, z, 1e-5)).epsilon(4), rel=1e-6)
    record = pd.read_json(tmp_path / "digits-fedavg-mlp-seed0.json", typ="series")
    assert record["privacy"]["noise_multiplier"] == pytest.approx(z)
    assert "SampledWithoutReplacementDpEvent" in record["privacy"]["event_per_round"]


@pytest.mark.parametrize("dp_options", [dict(dp_noise=0.3, dp_clip="adaptive"),
                                        dict(dp_noise=0.5, dp_clip="0.5", dp_mode="local", algo="fedavgm")])
def test_a_resumed_dp_run_equals_the_uninterrupted_one(tmp_path, dp_options):
    base = dict(rounds=6, clients=10, fraction=0.5, local_steps=3, quiet=True, checkpoint_every=3, **dp_options)
    full = fedsim.run(Config(out_dir=str(tmp_path / "full"), **base)).drop(columns=list(TIME_COLUMNS))
    fedsim.run(Config(out_dir=str(tmp_path / "cut"), **{**base, "rounds": 3}))
    resumed = fedsim.run(resume=str(tmp_path / "cut" / "digits-{}-mlp-seed0.csv".format(base.get("algo", "fedavg"))),
                         rounds=6).drop(columns=list(TIME_COLUMNS))
    pd.testing.assert_frame_equal(full, resumed)
    if dp_options["dp_clip"] == "adaptive":
        assert full["dp_clip"].nunique() == 6  # the clip norm moved every round, and resumed where it was


@pytest.mark.parametrize("args, needle", [
    (["--dp-noise", "1", "--dp-clip", "0"], "--dp-clip must be a positive number"),
    (["--dp-noise", "1", "--dp-clip", "-1"], "--dp-clip must be a positive number"),
    (["--dp-noise", "1", "--dp-clip", "big"], "--dp-clip must be a positive number"),
    (["--dp-noise", "-0.5", "--dp-clip", "1"], "--dp-noise"),
    (["--dp-noise", "1", "--dp-clip", "1", "--dp-delta", "1"], "--dp-delta"),
    (["--dp-epsilon", "0", "--dp-clip", "1"], "--dp-epsilon"),
    (["--dp-epsilon", "-1", "--dp-clip", "1"], "--dp-epsilon"),
    (["--dp-noise", "1"], "needs --dp-clip"),
    (["--dp-clip", "1"], "need --dp-noise Z or --dp-epsilon E"),
    (["--dp-noise", "1", "--dp-epsilon", "1", "--dp-clip", "1"], "not both"),
    (["--dp-noise", "1", "--dp-clip", "adaptive", "--dp-mode", "local"], "--dp-mode central"),
    (["--dp-noise", "1", "--dp-clip", "1", "--dp-mode", "shuffle"], "unknown --dp-mode"),
    (["--dp-noise", "1", "--dp-clip", "1", "--algo", "fednova"], "differential privacy cannot take fednova"),
    (["--dp-noise", "1", "--dp-clip", "1", "--algo", "fedas"], "'fisher'"),
    (["--dp-noise", "1", "--dp-clip", "1", "--aggregate", "median"], "use one of them"),
    (["--dp-noise-seed", "3"], "need --dp-noise Z or --dp-epsilon E"),
    (["--dp-noise", "3", "--dp-clip", "adaptive", "--fraction", "0.5"], "--dp-clip adaptive with 5 clients"),
])
def test_bad_dp_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", "--rounds", "1", "--out-dir", str(out), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not any(out.glob("*.csv"))


def test_dp_runs_are_reproducible_and_both_executors_agree(tmp_path):
    base = dict(rounds=2, clients=6, fraction=0.5, local_steps=2, quiet=True, dp_noise=1.0, dp_clip="0.5")
    runs = [fedsim.run(Config(out_dir=str(tmp_path / name), executor=executor, **base))
            .drop(columns=list(TIME_COLUMNS)) for name, executor in (("a", "vmap"), ("b", "vmap"), ("c", "sequential"))]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0]["test_loss"], runs[2]["test_loss"], rtol=1e-4)


def test_compare_shows_the_final_epsilon_beside_accuracy(tmp_path):
    from fedsim.compare import compare_runs
    from fedsim.compare.table import display_rows

    base = dict(rounds=2, clients=6, fraction=0.5, local_steps=1, quiet=True, out_dir=str(tmp_path))
    fedsim.run(Config(name="plain", **base))
    dp_run = fedsim.run(Config(name="dp", dp_noise=1.0, dp_clip="1", **base))
    summary = compare_runs([tmp_path / "plain.csv", tmp_path / "dp.csv"])
    cols, rows, _ = display_rows(summary)
    at = [c.label for c in cols].index("final ε")
    assert [c.key for c in cols][at - 1] == "final"
    cells = sorted(row[at] for row in rows)  # the plain run has none
    assert cells[1] == "–" and float(cells[0]) == pytest.approx(dp_run["epsilon"].iloc[-1], rel=1e-2)
