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
from fedsim.core.hooks import ClientResult, ServerState, sample_weighted_mean
from fedsim.metrics import TIME_COLUMNS
from fedsim.robust.aggregators import krum, krum_scores, median, trimmed_mean
from fedsim.robust.attacks import flip_labels, malicious_clients, model_attack

runner = CliRunner()
KEYS = ["w", "b", "count"]


def sent_by(values, samples=None, b=None):
    """One ClientResult per value: a scalar parameter w, a parameter b (default 0, the same for all) and an
    integer buffer `count` (the value rounded)."""
    samples = samples or [1] * len(values)
    b = b or [0.0] * len(values)
    return [ClientResult(client=i, num_samples=n, states=[{"w": torch.tensor([float(v)]), "b": torch.tensor([bi]),
                                                         "count": torch.tensor(round(v))}], steps=[1], loss=0.0)
            for i, (v, n, bi) in enumerate(zip(values, samples, b, strict=True))]


def value(state, key="w"):
    return state[key].item() if state[key].numel() == 1 else state[key].tolist()


GLOBAL = {"w": torch.tensor([0.0]), "b": torch.tensor([0.0]), "count": torch.tensor(0)}


# --- the aggregators, no attackers: only what their definitions say -----------------------------------------------
def test_median_is_the_middle_value_per_coordinate_and_the_mean_of_the_two_middle_ones_for_an_even_count():
    assert value(median(GLOBAL, sent_by([1, 5, 2]), KEYS)) == 2
    out = median(GLOBAL, sent_by([1, 5, 2, 10], b=[4.0, -1.0, 0.0, 7.0]), KEYS)
    assert value(out) == 3.5 and value(out, "b") == 2.0  # each coordinate apart: b's middle values are 0 and 4
    assert out["count"].dtype == torch.int64 and value(out, "count") == 4  # (2 + 5) / 2 = 3.5, rounded to even


def test_trimmed_mean_drops_the_extremes_of_each_coordinate_and_counts_every_client_once():
    values = [0, 1, 2, 3, 100]
    assert value(trimmed_mean(0.2)(GLOBAL, sent_by(values), KEYS)) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert value(trimmed_mean(0.19)(GLOBAL, sent_by(values), KEYS)) == pytest.approx(21.2)  # floor(0.95) = 0
    # beta = 0 is the plain mean: FedAvg's sample-weighted mean where the sizes are equal, not where they differ
    equal, unequal = sent_by([1, 2, 6]), sent_by([1, 2, 6], samples=[1, 1, 2])
    assert value(trimmed_mean(0.0)(GLOBAL, equal, KEYS)) == pytest.approx(value(sample_weighted_mean(GLOBAL, equal,
                                                                                                      KEYS)))
    assert value(trimmed_mean(0.0)(GLOBAL, unequal, KEYS)) == pytest.approx(3.0)
    assert value(sample_weighted_mean(GLOBAL, unequal, KEYS)) == pytest.approx(3.75)


def test_krum_picks_the_model_closest_to_its_n_minus_f_minus_2_neighbours():
    # f = 1 of n = 5: 2 neighbours. Squared distances give the scores 0: 1+4, 1: 1+1, 2: 1+4, 10: 1+64, 11: 1+81
    sent = sent_by([0, 1, 2, 10, 11])
    models = [r.states[-1] for r in sent]
    assert krum_scores(models, KEYS, 1).tolist() == [5, 2, 5, 65, 82]
    assert value(krum(1, 1)(GLOBAL, sent, KEYS)) == 1
    assert value(krum(None, 1)(GLOBAL, sent, KEYS)) == 1  # default f = (5 - 3) // 2 = 1
    assert value(krum(1, 2)(GLOBAL, sent, KEYS)) == 0.5  # multi-Krum: 1 and 0 (the tie 0/2 goes to the lower id)
    assert value(krum(1, None)(GLOBAL, sent, KEYS)) == pytest.approx(13 / 4)  # m = n - f = 4: 0, 1, 2, 10
    # the distances sum over every parameter: client 1's b 30 away adds 900 to its pairs; then 10 (neighbours 11
    # and 2: 1 + 64) beats 2 (0 and 10: 4 + 64) and 0 (2 and 10: 4 + 100)
    far_b = [r.states[-1] for r in sent_by([0, 1, 2, 10, 11], b=[0.0, 30.0, 0.0, 0.0, 0.0])]
    assert krum_scores(far_b, KEYS, 1).tolist() == [104, 1802, 68, 65, 82]


def test_every_aggregator_returns_the_model_all_clients_agree_on():
    same = sent_by([3, 3, 3, 3, 3], samples=[1, 2, 3, 4, 5])
    for aggregate in (median, trimmed_mean(0.2), krum(1, 1), krum(None, None), sample_weighted_mean):
        out = aggregate(GLOBAL, same, KEYS)
        assert value(out) == 3 and value(out, "count") == 3 and out["count"].dtype == torch.int64


# --- the attacks --------------------------------------------------------------------------------------------------
def test_model_attacks_change_only_the_malicious_clients_shared_parameters():
    server = ServerState(model={"w": torch.tensor([1.0]), "b": torch.tensor([1.0]), "count": torch.tensor(0)})
    sent = sent_by([1.5, 1.5, 1.5])
    expected = {"sign-flip": 1 - 4 * 0.5, "scale": 1 + 4 * 0.5}
    for attack, w in expected.items():
        out = model_attack(attack, None, [1], seed=0, keys=["w"])(sent, server, 3)
        assert [value(r.states[-1]) for r in out] == [1.5, w, 1.5]
        assert out[0] is sent[0] and value(out[1].states[-1], "b") == 0 and value(out[1].states[-1], "count") == 2
    out = model_attack("sign-flip", 2.0, [1], seed=0, keys=["w"])(sent, server, 3)
    assert value(out[1].states[-1]) == 0.0


def test_gaussian_noise_is_keyed_by_seed_round_and_client():
    server = ServerState(model={"w": torch.zeros(1000), "b": torch.zeros(1), "count": torch.tensor(0)})
    sent = [ClientResult(c, 1, [{"w": torch.ones(1000), "b": torch.zeros(1), "count": torch.tensor(0)}], [1], 0.0)
            for c in range(3)]

    def noise(seed, round, scale=None):
        out = model_attack("gaussian", scale, [1, 2], seed=seed, keys=["w"])(sent, server, round)
        assert torch.equal(out[0].states[-1]["w"], torch.ones(1000))
        return out[1].states[-1]["w"], out[2].states[-1]["w"]

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
    (["--aggregate", "median", "--algo", "fednova"], "fednova does not take"),
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
