"""MOON, FedDyn, LG-FedAvg, FedBABU and APFL: each against a hand-written reference on tiny models (full-batch steps,
so the engine's batch order does not matter), both executors, the bytes they exchange, resume, and the CLI.
The helpers are test_algorithms.py's."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_algorithms import (
    BASE,
    HEAD,
    PARAMS,
    BNNet,
    Net,
    Sim,
    client_xy,
    close,
    features,
    forward,
    keys_of,
    mean_of,
    sgd_step,
    tiny_data,
)
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms import algorithm_class
from fedsim.algorithms.fedavg import FedAvg
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core.state import num_bytes
from fedsim.engine.local import LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round
from fedsim.engine.vmap import VmapExecutor
from fedsim.errors import FedsimError
from fedsim.experiment import PERSONALIZATION_KEY, personalized_models
from fedsim.metrics import TIME_COLUMNS

NEW = ("moon", "feddyn", "lgfedavg", "fedbabu", "apfl")


def grad_step(state, loss_fn, lr, keys=PARAMS):
    """One SGD step of `loss_fn(state)` on `keys`."""
    p = {k: state[k].clone().requires_grad_() for k in keys}
    grads = torch.autograd.grad(loss_fn({**state, **p}), list(p.values()))
    return {**state, **{k: (p[k] - lr * g).detach() for (k, _), g in zip(p.items(), grads, strict=True)}}


# --- MOON --------------------------------------------------------------------------------------------------
def test_moon_first_round_is_fedavg_then_the_contrastive_term_follows_the_paper():
    from fedsim.algorithms.moon import MOON

    torch.manual_seed(0)
    data, lr, mu, tau = tiny_data(), 0.2, 2.0, 0.5
    model = Net()
    a, b = Sim(FedAvg, model, data, lr=lr), Sim(MOON, model, data, lr=lr, moon_mu=mu, temperature=tau)
    # round 1: global = previous = initial, so ℓ_con has no gradient
    _, sent_a = a.step([0, 1, 2])
    _, sent_b = b.step([0, 1, 2])
    close(a.server.model, b.server.model, atol=1e-7, rtol=1e-6)
    for r in sent_b:  # each client keeps its trained base, the previous model of its next round
        close(b.store.get(r.client), r.states[-1], BASE, rtol=0, atol=0)
        assert set(b.store.get(r.client)) == set(BASE)
    # round 2, client 0: CE + μ·ℓ_con against the received global model and its round-1 model (PFLlib's formula)
    w, prev = b.server.model, {**b.server.model, **b.store.get(0)}
    x, y = client_xy(data, 0)

    def objective(s):
        z, zg, zp = features(s, x), features(w, x), features(prev, x)
        pos, neg = (torch.exp(F.cosine_similarity(z, other, dim=-1) / tau) for other in (zg, zp))
        return F.cross_entropy(forward(s, x), y) + mu * (-torch.log(pos / (pos + neg))).mean()

    _, sent = b.step([0])
    close(sent[0].states[-1], grad_step(w, objective, lr), PARAMS)
    assert sent[0].loss == pytest.approx(float(F.cross_entropy(forward(w, x), y)), rel=1e-6)  # CE alone reported


def test_moon_with_batchnorm_leaves_the_global_model_alone_and_runs_under_vmap():
    torch.manual_seed(0)
    model, data = BNNet(), tiny_data(sizes=(4, 6, 8))
    sims = []
    for executor in (SequentialExecutor, VmapExecutor):
        sim = Sim(algorithm_class("moon"), model, data, lr=0.1)
        spec = LocalSpec(OptimizerSpec("sgd", 0.1, 0.5), batch_size=3, epochs=2, seed=0)
        for r in (1, 2):
            before = {k: v.clone() for k, v in sim.server.model.items()}
            result = run_round(sim.algo, executor(model, data, spec), sim.server, sim.store, (0, 1, 2), r, 0.1)
            close(sim.server.model, before, rtol=0, atol=0)  # the global forward ran on copies of its BN statistics
            sim.server = result.server
        sims.append(sim)
    close(sims[0].server.model, sims[1].server.model, atol=1e-6, rtol=1e-5)
    for c in range(3):
        close(sims[0].store.get(c), sims[1].store.get(c), atol=1e-6, rtol=1e-5)


# --- FedDyn ------------------------------------------------------------------------------------------------
def test_feddyn_follows_the_paper_and_its_first_round_is_fedprox():
    from fedsim.algorithms.feddyn import FedDyn
    from fedsim.algorithms.fedprox import FedProx

    torch.manual_seed(0)
    data, lr, alpha, n_clients = tiny_data(sizes=(3, 5, 8, 4)), 0.2, 0.3, 4
    sim = Sim(FedDyn, Net(), data, lr=lr, alpha=alpha)
    prox = Sim(FedProx, sim.model, data, lr=lr, mu=alpha)
    w, h = sim.initial, {k: torch.zeros_like(sim.initial[k]) for k in PARAMS}
    g = {c: {k: torch.zeros_like(w[k]) for k in PARAMS} for c in range(n_clients)}
    for rnd, cohort in enumerate(([0, 1, 2], [0, 3])):
        _, sent = sim.step(cohort, epochs=2)
        if rnd == 0:
            _, sent_prox = prox.step(cohort, epochs=2)
            for r, q in zip(sent, sent_prox, strict=True):
                close(r.states[-1], q.states[-1], PARAMS)
        trained = []
        for c, r in zip(cohort, sent, strict=True):
            x, y = client_xy(data, c)

            def objective(s, c=c, w=w, x=x, y=y):
                return F.cross_entropy(forward(s, x), y) - sum((s[k] * g[c][k]).sum() for k in PARAMS) + \
                    0.5 * alpha * sum(((s[k] - w[k]) ** 2).sum() for k in PARAMS)

            theta = grad_step(grad_step(w, objective, lr), objective, lr)
            close(r.states[-1], theta, PARAMS)
            g[c] = {k: g[c][k] - alpha * (theta[k] - w[k]) for k in PARAMS}
            close(sim.store.get(c)["grad"], g[c], atol=1e-6, rtol=1e-5)
            trained.append(theta)
        h = {k: h[k] - alpha / n_clients * sum(t[k] - w[k] for t in trained) for k in PARAMS}
        mean = mean_of(trained, [1] * len(cohort), PARAMS)  # the plain mean over the cohort (Algorithm 1)
        w = {k: mean[k] - h[k] / alpha for k in PARAMS}
        close(sim.server.extra["h"], h, atol=1e-6, rtol=1e-5)
        close(sim.server.model, w, atol=1e-6, rtol=1e-5)
    assert sim.algo.personal_model(sim.server, sim.store, 0) is None


# --- LG-FedAvg ---------------------------------------------------------------------------------------------
def test_lgfedavg_keeps_bases_per_client_and_averages_the_heads():
    from fedsim.algorithms.lgfedavg import LGFedAvg

    torch.manual_seed(0)
    data, lr = tiny_data(), 0.2
    sim = Sim(LGFedAvg, Net(), data, lr=lr)
    assert set(sim.algo.personal) == set(BASE) and sim.algo.shared == list(HEAD)
    head = {k: sim.initial[k] for k in HEAD}
    bases = {c: {k: sim.initial[k] for k in BASE} for c in range(3)}
    for cohort in ([0, 1, 2], [0, 1]):
        sim.step(cohort)
        trained = []
        for c in cohort:
            out = sgd_step({**bases[c], **head}, *client_xy(data, c), lr)
            bases[c] = {k: out[k] for k in BASE}
            trained.append(out)
        head = mean_of(trained, [data.size(c) for c in cohort], HEAD)
        close(sim.server.model, head, HEAD)
        for c in range(3):
            close(sim.algo.personal_model(sim.server, sim.store, c), {**bases[c], **head})
    assert torch.equal(sim.server.model["body.weight"], sim.initial["body.weight"])  # the server's base is unused
    assert sim.bytes_up() == sim.algo.bytes_down(sim.server) == num_bytes(sim.initial, HEAD)


# --- FedBABU -----------------------------------------------------------------------------------------------
def fake_experiment(sim, executor_cls, batch_size=64, epochs=1):
    """What `personalized_models` reads of an Experiment: the algorithm, the partition's sizes, the executor."""
    sizes = np.diff(sim.data.offsets)
    partition = SimpleNamespace(num_clients=len(sizes), train_sizes=sizes, test_indices=lambda c: [0])
    spec = LocalSpec(OptimizerSpec("sgd", sim.config.lr), batch_size, epochs, seed=0)
    return SimpleNamespace(algorithm=sim.algo, partition=partition,
                           executor=executor_cls(sim.model, sim.data, spec))


def test_fedbabu_trains_and_sends_only_the_body_and_fine_tunes_the_whole_model_for_evaluation():
    from fedsim.algorithms.fedbabu import FedBABU

    torch.manual_seed(0)
    data, lr = tiny_data(), 0.2
    sim = Sim(FedBABU, Net(), data, lr=lr, finetune_epochs=2)
    _, sent = sim.step([0, 1, 2])
    trained = [sgd_step(sim.initial, *client_xy(data, c), lr, trainable=BASE) for c in range(3)]
    for r, t in zip(sent, trained, strict=True):
        close(r.states[-1], t, PARAMS)
    close(sim.server.model, mean_of(trained, [3, 5, 8], BASE), BASE)
    close(sim.server.model, sim.initial, HEAD, rtol=0, atol=0)  # the head stays at its initialization, exactly
    assert sim.bytes_up() == sim.algo.bytes_down(sim.server) == num_bytes(sim.initial, BASE)
    assert sim.algo.personal_model(sim.server, sim.store, 0) is None and len(sim.store) == 0

    # before personalized evaluation: 2 full-batch epochs of the whole model from the global one, kept nowhere
    server_before = {k: v.clone() for k, v in sim.server.model.items()}
    tuned = [personalized_models(fake_experiment(sim, cls), sim.server, sim.store, 1, lr)
             for cls in (SequentialExecutor, VmapExecutor)]
    for c in range(3):
        x, y = client_xy(data, c)
        close(tuned[0][c], sgd_step(sgd_step(sim.server.model, x, y, lr), x, y, lr), PARAMS)
        close(tuned[1][c], tuned[0][c], atol=1e-6, rtol=1e-5)
    close(sim.server.model, server_before, rtol=0, atol=0)
    assert len(sim.store) == 0


def test_personalization_batches_are_keyed_apart_from_training():
    from fedsim.algorithms.fedbabu import FedBABU

    torch.manual_seed(0)
    sim = Sim(FedBABU, Net(), tiny_data(sizes=(6, 9)), lr=0.1, finetune_epochs=1)
    exp = fake_experiment(sim, SequentialExecutor, batch_size=2)
    tuned = personalized_models(exp, sim.server, sim.store, 3, 0.1)
    jobs = [sim.algo.client_job(sim.server, sim.store, c) for c in (0, 1)]
    phases = sim.algo.personalization_phases()
    same_key = exp.executor.train(phases, jobs, PERSONALIZATION_KEY + 3, 0.1)
    training_key = exp.executor.train(phases, jobs, 3, 0.1)
    close(tuned[1], same_key[1].states[-1], rtol=0, atol=0)
    assert not torch.equal(tuned[1]["body.weight"], training_key[1].states[-1]["body.weight"])
    assert personalized_models(fake_experiment(Sim(FedBABU, Net(), sim.data, finetune_epochs=0), SequentialExecutor),
                               sim.server, sim.store, 3, 0.1) == {}


def test_fedbabu_refuses_freeze_base():
    from fedsim.algorithms.fedbabu import FedBABU

    with pytest.raises(FedsimError, match="--freeze-base"):
        FedBABU(Config(freeze_base=True), keys_of(Net(), head=True))


# --- APFL --------------------------------------------------------------------------------------------------
def test_apfl_trains_the_mixture_learns_alpha_and_leaves_the_global_model_fedavg():
    from fedsim.algorithms.apfl import APFL

    torch.manual_seed(0)
    data, lr, alpha0 = tiny_data(), 0.3, 0.4
    sim = Sim(APFL, Net(), data, lr=lr, apfl_alpha=alpha0)
    fedavg = Sim(FedAvg, sim.model, data, lr=lr)
    v = {c: dict(sim.initial) for c in range(3)}
    alpha = {c: torch.tensor(alpha0) for c in range(3)}
    w = sim.initial
    for cohort in ([0, 1], [0, 2]):
        _, sent = sim.step(cohort)
        fedavg.step(cohort)
        close(sim.server.model, fedavg.server.model)  # the global model is FedAvg's, whatever α does
        for c, r in zip(cohort, sent, strict=True):
            x, y = client_xy(data, c)
            a = alpha[c]

            def mixed(s, a=a, w=w):
                return {k: a * s[k] + (1 - a) * w[k] for k in PARAMS}

            new_v = grad_step(v[c], lambda s, x=x, y=y, mixed=mixed: F.cross_entropy(forward(mixed(s), x), y), lr)
            close(r.states[0], new_v, PARAMS)
            # ∂/∂α of the loss at the round's start: through the mixture's parameters
            a_var = a.clone().requires_grad_()
            start_mix = {k: a_var * v[c][k] + (1 - a_var) * w[k] for k in PARAMS}
            (g_alpha,) = torch.autograd.grad(F.cross_entropy(forward(start_mix, x), y), [a_var])
            alpha[c] = (a - lr * g_alpha).clamp(0, 1)
            v[c] = new_v
            close(sim.store.get(c)["v"], v[c], PARAMS)
            torch.testing.assert_close(sim.store.get(c)["alpha"], alpha[c])
        w = sim.server.model
        for c in range(3):
            close(sim.algo.personal_model(sim.server, sim.store, c),
                  {k: alpha[c] * v[c][k] + (1 - alpha[c]) * w[k] for k in PARAMS})
    assert not torch.equal(alpha[0], torch.tensor(alpha0))
    assert sim.bytes_up() == sim.algo.bytes_down(sim.server) == num_bytes(sim.initial, PARAMS)


def test_apfl_refuses_local_bn():
    from fedsim.algorithms.apfl import APFL

    with pytest.raises(FedsimError, match="--bn local"):
        APFL(Config(bn="local"), keys_of(BNNet()))


# --- both executors on a BatchNorm model, with personalization ------------------------------------------------
@pytest.mark.parametrize("name", ["apfl", "fedbabu", "lgfedavg", "feddyn"])
def test_vmap_gives_the_sequential_numbers_with_batchnorm(name):
    torch.manual_seed(0)
    model, data = BNNet(), tiny_data(sizes=(4, 6, 8))
    sims = []
    for executor in (SequentialExecutor, VmapExecutor):
        sim = Sim(algorithm_class(name), model, data, lr=0.1)
        spec = LocalSpec(OptimizerSpec("sgd", 0.1, 0.5), batch_size=3, epochs=2, seed=0)
        for r in (1, 2):
            sim.server = run_round(sim.algo, executor(model, data, spec), sim.server, sim.store, (0, 1, 2), r,
                                   0.1).server
        sims.append(sim)
    tol = dict(atol=1e-5, rtol=1e-4)  # BatchNorm's batch statistics round differently under vmap (README: 4.1e-6)
    close(sims[0].server.model, sims[1].server.model, **tol)
    for c in range(3):
        pa, pb = (s.algo.personal_model(s.server, s.store, c) for s in sims)
        assert (pa is None) == (pb is None)
        if pa is not None:
            close(pa, pb, **tol)


# --- bytes, resume, CLI -------------------------------------------------------------------------------------
def small(out_dir, **kw):
    base = dict(rounds=4, clients=5, fraction=0.6, local_steps=3, out_dir=str(out_dir), quiet=True,
                executor="sequential", batch_size=16)
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.mark.parametrize("algo", NEW)
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, algo):
    own = {"finetune_epochs": 1} if algo == "fedbabu" else {}
    fedsim.run(small(tmp_path, name="full", algo=algo, **own))
    fedsim.run(small(tmp_path, name="r", algo=algo, rounds=2, **own))
    checkpoint = load_checkpoint(tmp_path / "r.csv")
    state = {"feddyn": checkpoint.progress.server.extra.get("h"), "moon": checkpoint.progress.clients,
             "apfl": checkpoint.progress.clients, "lgfedavg": checkpoint.progress.clients}.get(algo, True)
    assert state  # the algorithm's own state is in the checkpoint
    fedsim.run(resume=tmp_path / "r.csv", rounds=4)
    pd.testing.assert_frame_equal(numbers(tmp_path / "r.csv"), numbers(tmp_path / "full.csv"))


def test_bytes_columns_count_what_each_algorithm_exchanges(tmp_path):
    model_bytes = {}
    for algo in NEW:
        df = fedsim.run(small(tmp_path, name=algo, algo=algo, rounds=1, model="mlp"))
        record = json.loads((tmp_path / f"{algo}.json").read_text())
        model_bytes[algo] = int(df["bytes_up"].iloc[0]) // 3  # 3 clients a round
        assert df["bytes_down"].iloc[0] == df["bytes_up"].iloc[0]
        assert record["status"] == "finished"
    whole = 4 * sum(p.numel() for p in fedsim.models.build_model("mlp", (1, 8, 8), 10).parameters())
    head = 4 * (200 * 10 + 10)  # mlp's head: fc, 200 -> 10
    assert model_bytes == {"moon": whole, "feddyn": whole, "apfl": whole, "lgfedavg": head, "fedbabu": whole - head}


@pytest.mark.parametrize("algo,options", [("moon", ["--moon-mu", "0.5", "--temperature", "0.2"]),
                                          ("feddyn", ["--alpha", "0.1"]), ("lgfedavg", []),
                                          ("fedbabu", ["--finetune-epochs", "1"]), ("apfl", ["--apfl-alpha", "0.7"])])
def test_cli_trains_each_algorithm(tmp_path, algo, options):
    result = CliRunner().invoke(app, ["train", "--algo", algo, *options, "--rounds", "1", "--clients", "3",
                                      "--local-steps", "2", "--out-dir", str(tmp_path), "--name", "cli"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cli.json").read_text())["config"]
    for name, value in zip(options[::2], options[1::2], strict=True):
        assert config[name[2:].replace("-", "_")] == pytest.approx(float(value))


@pytest.mark.parametrize("args,needle", [(["--algo", "moon", "--temperature", "0"], "--temperature"),
                                         (["--algo", "feddyn", "--alpha", "0"], "--alpha"),
                                         (["--algo", "apfl", "--apfl-alpha", "1.5"], "--apfl-alpha"),
                                         (["--algo", "fedbabu", "--finetune-epochs", "-1"], "--finetune-epochs")])
def test_bad_algorithm_options_are_one_line_and_exit_2(tmp_path, args, needle):
    result = CliRunner().invoke(app, ["train", *args, "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and needle in result.output
    assert not list(tmp_path.iterdir())
