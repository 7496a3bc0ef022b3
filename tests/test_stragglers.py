"""Systems heterogeneity: --stragglers (drop or partial work), --client-dropout, both executors alike."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_vmap import MLP, BNNet, assert_same, keys_of, run_both, spec_of, tiny_data
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedprox import FedProx
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core.hooks import ClientJob, ClientStore
from fedsim.core.state import model_state
from fedsim.engine.stragglers import Stragglers
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS

runner = CliRunner()
COHORT = list(range(10))


def test_the_paper_counts_active_clients_as_round_of_the_rest():
    for fraction, stragglers in ((0.0, 0), (0.5, 5), (0.9, 9), (1.0, 10)):
        assert Stragglers(fraction, epochs=20).plan(COHORT, 1).stragglers == stragglers


def test_drop_leaves_stragglers_out_and_partial_gives_them_1_to_e_minus_1_epochs():
    drop = Stragglers(0.5, "drop", epochs=20, seed=4).plan(COHORT, 7)
    partial = Stragglers(0.5, "partial", epochs=20, seed=4).plan(COHORT, 7)
    assert len(drop.train) == 5 and drop.dropped == 5 and not drop.work
    assert partial.train == COHORT and partial.dropped == 0
    assert sorted(partial.work) == sorted(set(COHORT) - set(drop.train))  # the same stragglers, keyed by round
    assert all(1 <= w["epochs"] <= 19 for w in partial.work.values())
    many = [w["epochs"] for r in range(1, 200) for w in Stragglers(0.9, "partial", epochs=4).plan(COHORT, r)
            .work.values()]
    assert set(many) == {1, 2, 3}  # uniform over 1..E-1, never E
    steps = Stragglers(0.5, "partial", steps=6).plan(COHORT, 1)
    assert all(set(w) == {"steps"} and 1 <= w["steps"] <= 5 for w in steps.work.values())


def test_plans_are_keyed_by_seed_and_round_not_by_call_order():
    s = Stragglers(0.5, "partial", dropout=0.3, epochs=5, seed=1)
    assert s.plan(COHORT, 3) == s.plan(COHORT, 3) and s.plan(COHORT, 3) != s.plan(COHORT, 4)
    assert s.plan(COHORT, 3) != dataclasses.replace(s, seed=2).plan(COHORT, 3)


def test_dropout_fails_clients_with_its_probability():
    failed = [Stragglers(dropout=0.3).plan(COHORT, r).dropped for r in range(1, 401)]
    assert abs(np.mean(failed) / 10 - 0.3) < 0.03
    assert Stragglers().plan(COHORT, 1).train == COHORT and Stragglers().columns == []


def test_partial_at_one_epoch_trains_1_to_s_minus_1_of_the_epoch_s_steps():
    """FedProx's partial work at the default single local epoch: a uniform part of that epoch's S batches."""
    sizes = np.array([25, 10, 11, 3, 40, 20, 21, 30, 9, 50])  # S = ceil(n/10), a lone last sample joined: 3,1,1,1,4..
    s = Stragglers(0.9, "partial", epochs=1, sizes=sizes, batch_size=10)
    seen: dict[int, set] = {}
    for r in range(1, 300):
        plan = s.plan(COHORT, r)
        assert plan.train == COHORT and plan.dropped == 0
        for c, w in plan.work.items():
            seen.setdefault(c, set()).update(w.values())
            assert set(w) == {"steps"}
    assert seen[0] == {1, 2} and seen[4] == {1, 2, 3} and seen[9] == {1, 2, 3, 4}  # 1..S-1, never S
    assert 1 not in seen and 2 not in seen and 3 not in seen  # one batch (11 = 10 + a lone sample): all of it
    with pytest.raises(FedsimError, match="needs --local-steps >= 2"):
        Stragglers(0.5, "partial", steps=1)
    Stragglers(0.5, "drop", steps=1)  # drop needs no partial work


def test_a_job_override_takes_fewer_steps_on_both_executors_with_equal_numbers():
    """Stragglers break the chunk's size order (a big client with 1 epoch): vmap reorders by steps."""
    torch.manual_seed(0)
    for model, spec in ((MLP(), spec_of(momentum=0.9, epochs=3)), (BNNet(), spec_of(epochs=3)),
                        (MLP(), spec_of(steps=5, clip=0.5))):
        start = model_state(model)
        key = "steps" if spec.steps else "epochs"
        work = {3: {key: 1}, 1: {key: 2}}  # client 3 is the biggest (12 samples)

        def jobs(start=start, work=work):
            return [ClientJob(c, {k: v.clone() for k, v in start.items()}, {}, **work.get(c, {})) for c in range(5)]

        seq, vec = run_both(model, [FedAvg.phases(None)[0]], jobs, spec)
        assert_same(seq, vec)
        full = run_both(model, [FedAvg.phases(None)[0]], lambda s=start: [ClientJob(3, s, {})], spec)[0][0]
        assert seq[3].steps[0] < full.steps[0]


def test_fedprox_round_with_partial_stragglers_matches_sequential():
    torch.manual_seed(0)
    model = MLP()
    algo = FedProx(Config(mu=0.5), keys_of(model))
    server = algo.init_server(model_state(model))
    store = ClientStore(algo.personal_initial(model_state(model)))
    plan = Stragglers(0.6, "partial", epochs=3, seed=2).plan(range(5), 1)

    def jobs():
        return [dataclasses.replace(algo.client_job(server, store, c), **plan.work.get(c, {})) for c in plan.train]

    seq, vec = run_both(model, algo.phases(), jobs, spec_of(epochs=3), data=tiny_data())
    assert_same(seq, vec)
    assert sum(r.steps[0] for r in seq) < sum(
        r.steps[0] for r in run_both(model, algo.phases(), lambda: [algo.client_job(server, store, c)
                                                                    for c in range(5)], spec_of(epochs=3))[0])


def small(out_dir, **kw):
    base = dict(rounds=4, clients=6, fraction=0.5, local_epochs=2, batch_size=50, out_dir=str(out_dir), quiet=True)
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.mark.parametrize("algo, policy", [("fedprox", None), ("fedavg", "partial")])
def test_runs_on_both_executors_give_the_same_rows(tmp_path, algo, policy):
    rows = {}
    for ex in ("sequential", "vmap"):
        fedsim.run(small(tmp_path, name=ex, executor=ex, algo=algo, stragglers=0.7, straggler_policy=policy,
                         client_dropout=0.2))
        rows[ex] = numbers(tmp_path / f"{ex}.csv")
    pd.testing.assert_frame_equal(rows["sequential"], rows["vmap"], rtol=1e-4)
    assert rows["vmap"]["stragglers"].tolist() == [2, 2, 2, 2]  # 3 clients a round: 3 - round(0.9)


def test_csv_columns_bytes_and_the_algorithm_default_policy(tmp_path):
    plain = fedsim.run(small(tmp_path, name="plain"))
    assert "stragglers" not in pd.read_csv(tmp_path / "plain.csv").columns
    drop = fedsim.run(small(tmp_path, name="drop", stragglers=0.7))  # FedAvg: drop
    assert (drop["clients"] == 1).all() and (drop["dropped"] == 2).all()
    assert (drop["bytes_down"] == plain["bytes_down"]).all()  # the stragglers received the model
    assert (drop["bytes_up"] * 3 == plain["bytes_up"]).all()  # only one sent back
    prox = fedsim.run(small(tmp_path, name="prox", algo="fedprox", stragglers=0.7))  # FedProx: partial
    assert (prox["clients"] == 3).all() and (prox["dropped"] == 0).all()
    assert json.loads((tmp_path / "prox.json").read_text())["config"]["straggler_policy"] is None


def test_a_round_where_everyone_fails_keeps_the_model(tmp_path):
    # (--stragglers 1 with the drop policy, which would do this every round, is refused: nothing would train)
    df = fedsim.run(small(tmp_path, name="gone", client_dropout=0.999))
    assert (df["clients"] == 0).all() and df["train_loss"].isna().all() and (df["bytes_up"] == 0).all()
    assert df["test_loss"].nunique() == 1  # the initial model, every round


def test_resume_equals_an_uninterrupted_run_and_refuses_another_fraction(tmp_path):
    fedsim.run(small(tmp_path, name="full", stragglers=0.5, client_dropout=0.3, algo="fedprox"))
    fedsim.run(small(tmp_path, name="cut", stragglers=0.5, client_dropout=0.3, algo="fedprox", rounds=2,
                     checkpoint_every=1))
    fedsim.run(resume=tmp_path / "cut.csv", rounds=4)
    pd.testing.assert_frame_equal(numbers(tmp_path / "cut.csv"), numbers(tmp_path / "full.csv"))
    with pytest.raises(FedsimError, match="stragglers"):
        fedsim.run(resume=tmp_path / "cut.csv", rounds=5, stragglers=0.9)


@pytest.mark.parametrize("args, message", [
    (["--stragglers", "1.5"], "--stragglers"),
    (["--client-dropout", "1"], "--client-dropout"),
    (["--straggler-policy", "wait"], "unknown --straggler-policy 'wait'"),
    (["--stragglers", "0.5", "--straggler-policy", "partial", "--local-steps", "1"], "needs --local-steps >= 2"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["train", "--rounds", "1", "--out-dir", str(tmp_path), "--quiet", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(tmp_path.iterdir())  # nothing written
