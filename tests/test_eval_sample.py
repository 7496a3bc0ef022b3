"""--eval-sample and --eval-clients: a fixed keyed sample, the same every round, after a resume and in a sweep's
stack; the row and the record say what was measured; compare warns when runs sampled differently; evaluation is
not held to the training's thread count."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import fedsim
from fedsim.config import Config
from fedsim.engine.evaluate import eval_plan, sample_size, stratified_sample
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS


def small(tmp_path, **kw):
    base = dict(dataset="digits", clients=6, dirichlet=0.5, rounds=3, out_dir=str(tmp_path), quiet=True, lr=0.1)
    return Config(**{**base, **kw})


def plan_of(offsets, index, total, sample=None, clients=None, seed=0, in_test=True):
    return eval_plan(np.asarray(offsets), np.asarray(index), in_test, total, sample, clients, seed)


def test_sizes_counts_and_fractions():
    assert sample_size(None, 50) == 50 and sample_size(10, 50) == 10 and sample_size(0.1, 50) == 5
    assert sample_size(500, 50) == 50 and sample_size(0.001, 50) == 1


def test_the_sample_is_stratified_by_client_and_keyed_by_the_seed():
    owner = np.repeat([0, 1, 2, -1], [60, 30, 9, 1])
    rows = stratified_sample(owner, 10, np.random.default_rng(0))
    assert len(rows) == 10 and len(set(rows)) == 10 and (np.diff(rows) > 0).all()
    assert np.bincount(owner[rows] + 1, minlength=4)[1:3].tolist() == [6, 3]  # 60% and 30% of the rows
    rows = np.random.default_rng(1).permutation(100)
    index, offsets = rows[:99], [0, 60, 90, 99, 99]  # client 3 holds nothing; test row rows[99] belongs to nobody
    one, two = plan_of(offsets, index, 100, sample=20), plan_of(offsets, index, 100, sample=20)
    assert np.array_equal(one.test_rows, two.test_rows)  # the same every time: keyed by the seed alone
    assert not np.array_equal(one.test_rows, plan_of(offsets, index, 100, sample=20, seed=1).test_rows)
    assert sorted(one.clients) == [0, 1, 2] and one.clients_total == 3
    assert all(np.isin(rows, one.test_rows).all() for rows in one.clients.values())  # slices within the sample
    assert sum(len(r) for r in one.clients.values()) <= 20
    assert plan_of(offsets, index, 100).test_rows is None and not plan_of(offsets, index, 100).sampled
    chosen = plan_of(offsets, index, 100, clients=2)
    assert len(chosen.clients) == 2 and chosen.test_rows is None and chosen.sampled


def test_eval_sample_every_row_gives_the_unsampled_numbers(tmp_path):
    full = fedsim.run(small(tmp_path, name="full"))
    everything = fedsim.run(small(tmp_path, name="all", eval_sample=355, eval_clients=6))  # digits' 355 test rows
    cols = [c for c in full.columns if c not in TIME_COLUMNS]
    pd.testing.assert_frame_equal(full[cols], everything[cols])
    assert (everything["test_samples"] == 355).all() and (everything["personal_clients"] == 6).all()


def test_rows_and_record_say_what_was_sampled_and_resume_equals_a_whole_run(tmp_path):
    config = small(tmp_path, name="whole", eval_sample=100.0, eval_clients=0.5, rounds=4, algo="ditto")
    whole = fedsim.run(config)
    assert (whole["test_samples"] == 100).all() and (whole["personal_clients"] == 3).all()
    record = json.loads((tmp_path / "whole.json").read_text())
    assert record["evaluation"]["test_samples"] == 100 and record["evaluation"]["clients"] == 3
    assert record["evaluation"]["test_split"] == 355
    fedsim.run(small(tmp_path, name="cut", eval_sample=100.0, eval_clients=0.5, rounds=2, algo="ditto",
                     checkpoint_every=1))
    resumed = fedsim.run(resume=str(tmp_path / "cut.csv"), rounds=4)
    cols = [c for c in whole.columns if c not in TIME_COLUMNS]
    pd.testing.assert_frame_equal(whole[cols], resumed[cols])


def test_fedbabu_fine_tunes_only_the_sampled_clients(tmp_path, monkeypatch):
    from fedsim import experiment

    tuned = []
    original = experiment.personalized_models

    def spy(exp, server, store, round, lr, clients=None):
        tuned.append(list(clients))
        return original(exp, server, store, round, lr, clients)

    monkeypatch.setattr(experiment, "personalized_models", spy)
    fedsim.run(small(tmp_path, algo="fedbabu", finetune_epochs=1, rounds=2, eval_clients=2))
    assert len(tuned) == 2 and tuned[0] == tuned[1] and len(tuned[0]) == 2


def test_bad_values_are_refused():
    for value in (0, -1, 2.5):
        with pytest.raises(FedsimError, match="--eval-sample"):
            Config(eval_sample=value).validate()
    Config(eval_sample=0.25, eval_clients=10).validate()


def test_eval_options_stack_in_a_sweep(tmp_path):
    from fedsim import sweep

    runs = sweep.expand({"dataset": "digits", "clients": 4, "rounds": 2, "out_dir": str(tmp_path), "quiet": True},
                        {"eval_sample": [50.0, 0.5], "seed": [0, 1]}, "s")
    assert len({sweep.stack_key(r.config) for r in runs}) == 1  # one stack: evaluation leaves a step alone
    sweep.run_sweep(runs, "s", str(tmp_path))
    alone = fedsim.run(small(tmp_path / "alone", clients=4, dirichlet=None, rounds=2, seed=1, eval_sample=0.5,
                             lr=0.05))
    stacked = pd.read_csv(tmp_path / "s_eval_sample=0.5_seed=1.csv")
    cols = [c for c in alone.columns if c not in TIME_COLUMNS]
    pd.testing.assert_frame_equal(alone[cols], stacked[cols], check_dtype=False, rtol=1e-5)


def test_compare_warns_when_runs_sampled_differently(tmp_path):
    from fedsim.compare import compare_runs

    fedsim.run(small(tmp_path, name="a", rounds=1))
    fedsim.run(small(tmp_path, name="b", rounds=1, eval_sample=0.5))
    warnings = []
    compare_runs([tmp_path / "a.csv", tmp_path / "b.csv"], on_warning=warnings.append)
    assert any("evaluated on different samples" in w and "--eval-sample 0.5" in w for w in warnings), warnings
    warnings.clear()
    compare_runs([tmp_path / "a.csv"], on_warning=warnings.append)
    assert not any("different samples" in w for w in warnings)


def test_evaluation_chooses_its_own_threads_and_gives_training_its_count_back(tmp_path, monkeypatch):
    from fedsim import experiment
    from fedsim.engine.threads import cpu_count

    seen = []
    original = experiment.predict

    def spy(*args, **kw):
        seen.append((kw["threads"], torch.get_num_threads()))
        return original(*args, **kw)

    monkeypatch.setattr(experiment, "predict", spy)
    torch.set_num_threads(1)
    fedsim.run(small(tmp_path, rounds=1, executor="sequential"))  # training on one thread
    chooser = seen[0][0]
    assert chooser.fixed is None and chooser.counts == (1, cpu_count())  # not the training's fixed 1
    assert torch.get_num_threads() == 1
    record = json.loads((tmp_path / "digits-fedavg-mlp-seed0.json").read_text())
    assert record["executor"]["threads"] == 1 and record["executor"]["evaluation_threads"] == chooser.describe()
    seen.clear()
    fedsim.run(small(tmp_path, name="pinned", rounds=1, executor="sequential", threads=1))
    assert {n for _, n in seen} == {1} and seen[0][0].fixed == 1  # --threads pins evaluation too


def test_predict_steps_the_chooser_through_one_thread_and_every_core():
    from fedsim.engine.evaluate import evaluating_on, evaluation_threads, predict

    chooser = evaluation_threads()
    if not chooser.adaptive:
        pytest.skip("one core: nothing to choose")
    model = torch.nn.Linear(4, 3)
    state = dict(model.named_parameters())
    counts = []
    model.register_forward_pre_hook(lambda *_: counts.append(torch.get_num_threads()))
    with evaluating_on(chooser):
        predict(model, state, torch.randn(40, 4), torch.randint(0, 3, (40,)), batch=4, threads=chooser)
    assert set(counts) == {1, chooser.counts[1]} and chooser.decisions  # probed both, then chose
