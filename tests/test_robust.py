"""Robust aggregation (--aggregate) and attacks (--malicious-fraction, --attack): the aggregators on hand-made
client models, the attacks' changes, a short run under a sign-flip attack, bad input, both executors, resume."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import fedsim
from fedsim.cli import app
from fedsim.core.channel import MODEL, Channel, Mean, Message, stack_updates, summed
from fedsim.core.hooks import ServerState
from fedsim.metrics import TIME_COLUMNS
from fedsim.robust.aggregators import Krum, TrimmedMean, krum_scores
from fedsim.robust.attacks import ModelAttack, flip_labels, malicious_clients

runner = CliRunner()
SENDS = {MODEL: summed("the model", centered=True)}
GLOBAL = {"w": torch.tensor([0.0]), "b": torch.tensor([0.0]), "count": torch.tensor(0)}


def sent_by(values, samples=None, b=None):
    """One Message per value: a scalar parameter w, a parameter b (default 0, the same for all) and an integer
    buffer `count` (the value rounded)."""
    samples = samples or [1] * len(values)
    b = b or [0.0] * len(values)
    return [Message(i, n, {MODEL: {"w": torch.tensor([float(v)]), "b": torch.tensor([bi]),
                                   "count": torch.tensor(round(v))}})
            for i, (v, n, bi) in enumerate(zip(values, samples, b, strict=True))]


def reduced(reducer, sent, server=None):
    """The model the channel with `reducer` gives the server."""
    return Channel((), reducer).reduce(SENDS, sent, server or ServerState(GLOBAL), 1).means[MODEL]


def median():
    return TrimmedMean(None)


def value(state, key="w"):
    return state[key].item() if state[key].numel() == 1 else state[key].tolist()


# --- the reducers, no attackers: only what their definitions say --------------------------------------------------
def test_median_is_the_middle_value_per_coordinate_and_the_mean_of_the_two_middle_ones_for_an_even_count():
    assert value(reduced(median(), sent_by([1, 5, 2]))) == 2
    out = reduced(median(), sent_by([1, 5, 2, 10], b=[4.0, -1.0, 0.0, 7.0]))
    assert value(out) == 3.5 and value(out, "b") == 2.0  # each coordinate apart: b's middle values are 0 and 4
    assert out["count"].dtype == torch.int64 and value(out, "count") == 4  # (2 + 5) / 2 = 3.5, rounded to even


def test_trimmed_mean_drops_the_extremes_of_each_coordinate_and_counts_every_client_once():
    values = [0, 1, 2, 3, 100]
    assert value(reduced(TrimmedMean(0.2), sent_by(values))) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert value(reduced(TrimmedMean(0.19), sent_by(values))) == pytest.approx(21.2)  # floor(0.95) = 0
    # beta = 0 is the plain mean: FedAvg's sample-weighted mean where the sizes are equal, not where they differ
    equal, unequal = sent_by([1, 2, 6]), sent_by([1, 2, 6], samples=[1, 1, 2])
    assert value(reduced(TrimmedMean(0.0), equal)) == pytest.approx(value(reduced(Mean(), equal)))
    assert value(reduced(TrimmedMean(0.0), unequal)) == pytest.approx(3.0)
    assert value(reduced(Mean(), unequal)) == pytest.approx(3.75)


def rows_of(sent):
    return stack_updates(SENDS, sent, GLOBAL, centered=False)[0]


def test_krum_picks_the_model_closest_to_its_n_minus_f_minus_2_neighbours():
    # f = 1 of n = 5: 2 neighbours. Squared distances give the scores 0: 1+4, 1: 1+1, 2: 1+4, 10: 1+64, 11: 1+81
    sent = sent_by([0, 1, 2, 10, 11])
    assert krum_scores(rows_of(sent), 1).tolist() == [5, 2, 5, 65, 82]
    assert value(reduced(Krum(1, 1), sent)) == 1
    assert value(reduced(Krum(None, 1), sent)) == 1  # default f = (5 - 3) // 2 = 1
    assert value(reduced(Krum(1, 2), sent)) == 0.5  # multi-Krum: 1 and 0 (the tie 0/2 goes to the lower id)
    assert value(reduced(Krum(1, None), sent)) == pytest.approx(13 / 4)  # m = n - f = 4: 0, 1, 2, 10
    # the distances sum over every parameter: client 1's b 30 away adds 900 to its pairs; then 10 (neighbours 11
    # and 2: 1 + 64) beats 2 (0 and 10: 4 + 64) and 0 (2 and 10: 4 + 100)
    far_b = sent_by([0, 1, 2, 10, 11], b=[0.0, 30.0, 0.0, 0.0, 0.0])
    assert krum_scores(rows_of(far_b), 1).tolist() == [104, 1802, 68, 65, 82]


def test_krum_caps_f_to_the_round_s_senders_and_keeps_the_model_below_three():
    """Dropout can leave fewer senders than the cohort Krum's f was set for: f is capped per round to
    (n − 3) // 2 and recorded; with fewer than 3 senders no outlier can be told apart and the model stays."""
    channel = Channel((), Krum(2, None))  # set for a cohort of at least 7
    out = channel.reduce(SENDS, sent_by([0, 1, 2, 10]), ServerState(GLOBAL), 1)  # 4 senders: f = 0
    assert out.info == {"krum_f": 0, "krum_m": 4}
    three = channel.reduce(SENDS, sent_by([0, 1, 50]), ServerState(GLOBAL), 1)
    assert three.info == {"krum_f": 0, "krum_m": 3}
    two = channel.reduce(SENDS, sent_by([100, 1]), ServerState(GLOBAL), 1)  # the outlier is not picked
    assert two.info == {"krum_f": None, "krum_m": 0} and value(two.means[MODEL]) == value(GLOBAL)
    krum = Channel((), Krum(None, 1)).reduce(SENDS, sent_by([0, 1, 2, 10, 11, 12, 13]), ServerState(GLOBAL), 1)
    assert krum.info == {"krum_f": 2, "krum_m": 1}
    capped_m = Channel((), Krum(1, 9)).reduce(SENDS, sent_by([0, 1, 2, 10, 11]), ServerState(GLOBAL), 1)
    assert capped_m.info == {"krum_f": 1, "krum_m": 4}  # multi-Krum's m at most n - f


def test_every_reducer_returns_the_model_all_clients_agree_on():
    same = sent_by([3, 3, 3, 3, 3], samples=[1, 2, 3, 4, 5])
    for reducer in (median(), TrimmedMean(0.2), Krum(1, 1), Krum(None, None), Mean()):
        out = reduced(reducer, same)
        assert value(out) == 3 and value(out, "count") == 3 and out["count"].dtype == torch.int64


# --- the attacks --------------------------------------------------------------------------------------------------
def test_model_attacks_change_only_the_malicious_clients_floating_values_but_buffers():
    server = ServerState(model={"w": torch.tensor([1.0]), "b": torch.tensor([1.0]), "count": torch.tensor(0)})
    sent = sent_by([1.5, 1.5, 1.5])
    expected = {"sign-flip": 1 - 4 * 0.5, "scale": 1 + 4 * 0.5}
    for attack, w in expected.items():
        out = ModelAttack(attack, None, [1], seed=0, buffers=["b"])(SENDS, sent, server, 3)
        assert [value(m.fields[MODEL]) for m in out] == [1.5, w, 1.5]
        assert out[0] is sent[0] and value(out[1].fields[MODEL], "b") == 0
        assert value(out[1].fields[MODEL], "count") == 2
    out = ModelAttack("sign-flip", 2.0, [1], seed=0, buffers=["b"])(SENDS, sent, server, 3)
    assert value(out[1].fields[MODEL]) == 0.0
    # another summed field (SCAFFOLD's Δc_i) is the client's value, not an update: flipped as it is
    sends = {**SENDS, "dc": summed("a control variate's change")}
    with_dc = [Message(m.client, 1, {**m.fields, "dc": {"w": torch.tensor([0.5])}}) for m in sent]
    out = ModelAttack("sign-flip", None, [1], seed=0, buffers=["b"])(sends, with_dc, server, 3)
    assert value(out[1].fields["dc"]) == -2.0 and value(out[0].fields["dc"]) == 0.5


def test_gaussian_noise_is_keyed_by_seed_round_and_client():
    server = ServerState(model={"w": torch.zeros(1000), "b": torch.zeros(1), "count": torch.tensor(0)})
    sent = [Message(c, 1, {MODEL: {"w": torch.ones(1000), "b": torch.zeros(1), "count": torch.tensor(0)}})
            for c in range(3)]

    def noise(seed, round, scale=None):
        out = ModelAttack("gaussian", scale, [1, 2], seed=seed, buffers=["b"])(SENDS, sent, server, round)
        assert torch.equal(out[0].fields[MODEL]["w"], torch.ones(1000))
        return out[1].fields[MODEL]["w"], out[2].fields[MODEL]["w"]

    a1, a2 = noise(0, 1)
    assert torch.equal(a1, noise(0, 1)[0]) and not torch.equal(a1, a2)
    assert not torch.equal(a1, noise(0, 2)[0]) and not torch.equal(a1, noise(1, 1)[0])
    assert a1.std().item() == pytest.approx(4.0, rel=0.1) and abs(a1.mean().item()) < 0.5  # w + 4 N(0, 1)
    assert noise(0, 1, 0.5)[0].std().item() == pytest.approx(0.5, rel=0.1)


def test_the_malicious_clients_are_a_fixed_keyed_subset_of_the_clients_with_data():
    eligible = np.array([0, 2, 3, 5, 7, 8, 9, 11, 12, 14])
    chosen = malicious_clients(0, eligible, 0.3)
    assert len(chosen) == 3 and set(chosen) <= set(eligible) and list(chosen) == sorted(chosen)
    assert np.array_equal(chosen, malicious_clients(0, eligible, 0.3))
    assert any(not np.array_equal(chosen, malicious_clients(s, eligible, 0.3)) for s in (1, 2, 3))
    assert len(malicious_clients(0, eligible, 0.25)) == 3  # 2.5 rounds half up
    assert set(malicious_clients(0, eligible, 0.1)) < set(chosen) < set(malicious_clients(0, eligible, 0.5))


def test_label_flip_flips_only_the_malicious_clients_rows():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    out = flip_labels(labels, [np.array([1, 4]), np.array([9])], 10)
    assert out.tolist() == [0, 8, 2, 3, 5, 5, 6, 7, 8, 0] and labels[1] == 1  # the original stays


# --- end to end ---------------------------------------------------------------------------------------------------
def digits(tmp_path, **kw):
    base = dict(rounds=5, clients=10, out_dir=str(tmp_path), quiet=True, threads=1)
    return fedsim.Config(**{**base, **kw})


def test_under_a_sign_flip_attack_the_mean_stands_still_while_median_and_krum_learn(tmp_path):
    # 2 of 10 equal-sized clients send -4 x their update: the mean of the updates is about 0
    final = {}
    for aggregate in ("mean", "median", "krum"):
        df = fedsim.run(digits(tmp_path, name=aggregate, aggregate=aggregate, malicious_fraction=0.2,
                               attack="sign-flip", attack_scale=4.0))
        assert df["malicious"].tolist() == [2] * 5  # every client trains every round
        final[aggregate] = df["test_accuracy"].iloc[-1]
    assert final["mean"] < 0.2  # ten classes: chance is 0.1
    assert final["median"] > final["mean"] + 0.3 and final["krum"] > final["mean"] + 0.3
    record = json.loads((tmp_path / "krum.json").read_text())
    assert len(record["malicious_clients"]) == 2 and record["config"]["aggregate"] == "krum"


def test_label_flip_trains_on_flipped_labels_under_both_executors(tmp_path):
    runs = {}
    for executor in ("sequential", "vmap"):
        runs[executor] = fedsim.run(digits(tmp_path, name=executor, executor=executor, rounds=2, local_steps=5,
                                           fraction=0.5, malicious_fraction=0.3, attack="label-flip"))
    clean = fedsim.run(digits(tmp_path, name="clean", rounds=2, local_steps=5, fraction=0.5))
    numbers = [df.drop(columns=list(TIME_COLUMNS)) for df in runs.values()]
    pd.testing.assert_frame_equal(*numbers, atol=1e-5, rtol=1e-4)
    assert runs["vmap"]["malicious"].tolist() != [0, 0]  # attackers trained, so the numbers show the flip:
    assert not np.allclose(runs["vmap"]["train_loss"], clean["train_loss"])
    assert "malicious" not in clean.columns and "malicious" not in (tmp_path / "clean.csv").read_text()


def test_a_run_with_attackers_resumed_equals_the_uninterrupted_one(tmp_path):
    options = dict(rounds=6, local_steps=5, fraction=0.6, executor="sequential", aggregate="multi-krum",
                   malicious_fraction=0.3, attack="gaussian", attack_scale=0.5)
    fedsim.run(digits(tmp_path, name="full", **options))
    fedsim.run(digits(tmp_path, name="part", **{**options, "rounds": 3}))
    fedsim.run(resume=tmp_path / "part.csv", rounds=6)
    full, part = (pd.read_csv(tmp_path / f"{n}.csv").drop(columns=list(TIME_COLUMNS)) for n in ("full", "part"))
    pd.testing.assert_frame_equal(full, part)
    assert full["malicious"].sum() > 0
    records = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "part")]
    assert records[0]["malicious_clients"] == records[1]["malicious_clients"]


BAD = [
    (["--aggregate", "average"], "--aggregate"),
    (["--attack", "poison", "--malicious-fraction", "0.2"], "--attack"),
    (["--aggregate", "trimmed-mean", "--trim-fraction", "0.5"], "--trim-fraction"),
    (["--trim-fraction", "0.1"], "--trim-fraction is for --aggregate trimmed-mean"),
    (["--aggregate", "krum", "--krum-m", "3"], "--krum-m is for --aggregate multi-krum"),
    (["--malicious-fraction", "0.2"], "needs an --attack"),
    (["--attack", "sign-flip"], "needs --malicious-fraction"),
    (["--malicious-fraction", "1.5", "--attack", "scale"], "--malicious-fraction"),
    (["--malicious-fraction", "0.2", "--attack", "label-flip", "--attack-scale", "2"], "--attack-scale is for"),
    (["--malicious-fraction", "0.2", "--attack", "scale", "--attack-scale", "0"], "--attack-scale"),
    (["--malicious-fraction", "0.01", "--attack", "scale"], "makes none malicious"),
    (["--aggregate", "krum", "--krum-f", "4"], "at least 11 clients per round for --krum-f 4"),
    (["--aggregate", "krum", "--fraction", "0.2"], "at least 3 clients per round"),
    (["--aggregate", "multi-krum", "--krum-m", "11"], "--krum-m 11 is more than the 10 clients per round"),
    (["--aggregate", "median", "--algo", "fednova"], "--aggregate median cannot take fednova"),
    (["--aggregate", "krum", "--algo", "fedas"], "'fisher'"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_robustness_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--rounds", "1", "--clients", "10", "--out-dir", str(tmp_path / "out"),
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_robust_imports_only_the_core():
    import ast
    from pathlib import Path

    allowed = ("fedsim.core", "fedsim.errors", "fedsim.robust")
    for path in (Path(fedsim.__file__).parent / "robust").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedsim"):
                assert node.module.startswith(allowed), f"{path.name} imports {node.module}"
