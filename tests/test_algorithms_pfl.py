"""Per-FedAvg, pFedMe, FedALA, FedProto and FedRoD: each against a hand-written reference on tiny models (full-batch
steps unless a test needs the batch order, which it then takes from the engine's keyed schedule), the reductions
their options allow, the bytes they exchange, both executors and resume end to end, and the CLI.
The helpers are test_algorithms.py's."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_algorithms import (
    BASE,
    HEAD,
    PARAMS,
    Net,
    Sim,
    client_xy,
    close,
    features,
    forward,
    mean_of,
    sgd_step,
    tiny_data,
)
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms.fedavg import FedAvg
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core import rng
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor, batch_schedule
from fedsim.engine.optim import OptimizerSpec
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS

NEW = ["peravg", "pfedme", "fedala", "fedproto", "fedrod"]


def grad_of(state, x, y, keys=PARAMS):
    p = {k: state[k].clone().requires_grad_() for k in keys}
    return dict(zip(p, torch.autograd.grad(F.cross_entropy(forward({**state, **p}, x), y), list(p.values())),
                    strict=True))


def batch_order(data, client, round, batch_size, key_round=None):
    """The client's samples in the order of its first local epoch's batches (the engine's keyed schedule)."""
    generator = rng.keyed_rng(rng.BATCHES, 0, round if key_round is None else key_round, client)
    schedule = batch_schedule(generator, data.size(client), batch_size, 1, None)
    return [data.of(client)[torch.as_tensor(b)] for b in schedule]


# --- Per-FedAvg -----------------------------------------------------------------------------------------------
def test_peravg_step_is_first_order_maml_on_the_batch_halves():
    from fedsim.algorithms.peravg import PerFedAvg

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(7, 4)), 0.2
    sim = Sim(PerFedAvg, Net(), data, lr=lr)
    _, results = sim.step([0, 1], batch_size=8)  # one batch: the whole client, in the keyed order
    trained = []
    for r in results:
        (idx,) = batch_order(data, r.client, 1, 8)
        x, y, half = data.x[idx], data.y[idx], len(idx) // 2
        w = sim.initial
        g = grad_of(w, x[:half], y[:half])
        adapted = {**w, **{k: w[k] - lr * g[k] for k in PARAMS}}
        g2 = grad_of(adapted, x[half:], y[half:])
        ref = {k: w[k] - lr * g2[k] for k in PARAMS}
        close(r.states[-1], ref, PARAMS)
        trained.append(ref)
    close(sim.server.model, mean_of(trained, [7, 4], PARAMS))
    assert sim.algo.personal_model(sim.server, sim.store, 0) is None


def test_peravg_personalizes_by_one_sgd_step_from_the_global_model():
    from fedsim.algorithms.peravg import PerFedAvg
    from fedsim.core.hooks import ClientJob

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(7, 4)), 0.3
    sim = Sim(PerFedAvg, Net(), data, lr=lr)
    sim.step([0, 1])
    job = sim.algo.personalization_job(sim.server, sim.store, ClientJob(0, dict(sim.server.model), {}))
    assert job.steps == 1
    spec = LocalSpec(OptimizerSpec("sgd", lr), batch_size=3, epochs=1, seed=0)
    (res,) = SequentialExecutor(sim.model, data, spec).train(sim.algo.personalization_phases(), [job], 99, lr)
    assert res.steps == [1]
    idx = batch_order(data, 0, 99, 3)[0]
    close(res.states[-1], sgd_step(sim.server.model, data.x[idx], data.y[idx], lr), PARAMS)


# --- pFedMe -----------------------------------------------------------------------------------------------------
def test_pfedme_local_step_solves_the_personal_problem_then_moves_w_and_the_server_mixes_by_beta():
    from fedsim.algorithms.pfedme import PFedMe

    torch.manual_seed(0)
    data, lr, lam, eta, beta = tiny_data(), 0.05, 3.0, 0.1, 0.5
    sim = Sim(PFedMe, Net(), data, lr=lr, moreau_lam=lam, inner_lr=eta, inner_steps=3, server_lr=beta)
    _, results = sim.step([0, 2], epochs=2)
    trained = []
    for r in results:
        x, y = client_xy(data, r.client)
        w = sim.initial
        for _ in range(2):  # two full-batch local steps
            theta = w
            for _ in range(3):
                g = grad_of(theta, x, y)
                theta = {**theta, **{k: theta[k] - eta * (g[k] + lam * (theta[k] - w[k])) for k in PARAMS}}
            w = {**w, **{k: w[k] - lr * lam * (w[k] - theta[k]) for k in PARAMS}}
        close(r.states[-1], w, PARAMS)
        close(sim.store.get(r.client), w, PARAMS)  # the client keeps its w
        trained.append(w)
    mean = mean_of(trained, [3, 8], PARAMS)
    close(sim.server.model, {k: sim.initial[k] + beta * (mean[k] - sim.initial[k]) for k in PARAMS})


def test_pfedme_with_one_inner_step_and_lam_times_inner_lr_one_is_fedavg():
    from fedsim.algorithms.pfedme import PFedMe

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(4, 7, 5))
    a = Sim(FedAvg, model, data, lr=0.1)
    b = Sim(PFedMe, model, data, lr=0.1, moreau_lam=2.0, inner_lr=0.5, inner_steps=1, server_lr=1.0)
    for _ in range(2):
        a.step([0, 1, 2], batch_size=2)
        b.step([0, 1, 2], batch_size=2)
    close(a.server.model, b.server.model, atol=1e-6, rtol=1e-5)


def test_pfedme_personal_model_is_proximal_sgd_from_the_clients_w():
    from fedsim.algorithms.pfedme import PFedMe
    from fedsim.core.hooks import ClientJob

    torch.manual_seed(0)
    data, lr, lam, eta = tiny_data(sizes=(9, 4)), 0.05, 2.0, 0.2
    sim = Sim(PFedMe, Net(), data, lr=lr, moreau_lam=lam, inner_lr=eta, inner_steps=2)
    sim.step([0, 1])
    w = sim.algo.personal_model(sim.server, sim.store, 0)
    job = sim.algo.personalization_job(sim.server, sim.store, ClientJob(0, dict(w), {}))
    assert job.steps == 2 and job.ctx["w"] is sim.store.get(0)
    spec = LocalSpec(OptimizerSpec("sgd", lr), batch_size=4, epochs=1, seed=0)
    (res,) = SequentialExecutor(sim.model, data, spec).train(sim.algo.personalization_phases(), [job], 7, lr)
    theta = w
    for idx in batch_order(data, 0, 7, 4)[:2]:  # K steps of size η_p on the next K batches
        g = grad_of(theta, data.x[idx], data.y[idx])
        theta = {**theta, **{k: theta[k] - eta * (g[k] + lam * (theta[k] - w[k])) for k in PARAMS}}
    close(res.states[-1], theta, PARAMS)


# --- FedALA -----------------------------------------------------------------------------------------------------
def test_fedala_first_round_is_fedavg():
    from fedsim.algorithms.fedala import FedALA

    torch.manual_seed(0)
    model, data = Net(), tiny_data()
    a, b = Sim(FedAvg, model, data), Sim(FedALA, model, data)
    a.step([0, 1, 2], batch_size=2)
    _, results = b.step([0, 1, 2], batch_size=2)
    close(a.server.model, b.server.model, rtol=0, atol=0)
    for r in results:  # each client keeps its trained model, and is evaluated with it
        close(b.algo.personal_model(b.server, b.store, r.client), r.states[-1])


def test_fedala_learns_elementwise_weights_on_the_top_layer_and_takes_the_rest_from_the_global_model():
    from fedsim.algorithms.fedala import FedALA

    torch.manual_seed(0)
    data, eta = tiny_data(sizes=(9, 6)), 0.5
    sim = Sim(FedALA, Net(), data, ala_eta=eta, ala_percent=100, ala_top=2, batch_size=3)
    glob = sim.server.model
    local = {k: v + 0.5 * torch.randn_like(v) for k, v in glob.items()}
    weights = {k: torch.full_like(glob[k], 0.7) for k in HEAD}
    sim.store.put(0, {"model": local, "weights": weights, "learned": True})
    job = sim.algo.client_job(sim.server, sim.store, 0)
    gap = {k: glob[k] - local[k] for k in HEAD}
    w = dict(weights)
    idx = data.of(0)
    for s in (0, 3, 6):  # one epoch over all 9 samples (ala_percent 100: the offset is 0) in batches of 3
        top = {k: local[k] + gap[k] * w[k] for k in HEAD}
        g = grad_of({**glob, **top}, data.x[idx[s : s + 3]], data.y[idx[s : s + 3]], HEAD)
        w = {k: (w[k] - eta * g[k] * gap[k]).clamp(0, 1) for k in HEAD}
    close(job.start, {k: local[k] + gap[k] * w[k] for k in HEAD}, HEAD)
    close(job.start, glob, BASE, rtol=0, atol=0)
    close(sim.store.get(0)["weights"], w)
    assert any(bool(((v > 0) & (v < 1)).any()) for v in w.values())


def test_fedala_first_learning_runs_until_the_losses_settle_and_is_kept():
    from fedsim.algorithms.fedala import FedALA

    torch.manual_seed(0)
    sim = Sim(FedALA, Net(), tiny_data(sizes=(9, 6)), ala_percent=50, batch_size=2)
    sim.step([0, 1])
    sim.step([0])  # the global model moved: ALA learns client 0's weights, until its losses settle
    assert sim.store.get(0)["learned"] and not sim.store.get(1)["learned"]
    with pytest.raises(FedsimError, match="--ala-top"):
        FedALA(Config(ala_top=5), sim.algo.keys)


# --- FedProto ---------------------------------------------------------------------------------------------------
def class_means(state, x, y, classes=3):
    f = features(state, x)
    return {c: f[y == c].mean(0) for c in range(classes) if (y == c).any()}


def test_fedproto_exchanges_only_prototypes_and_pulls_features_to_them():
    from fedsim.algorithms.fedproto import FedProto

    torch.manual_seed(0)
    data, lr, lam = tiny_data(sizes=(5, 8, 2)), 0.2, 0.7
    sim = Sim(FedProto, Net(), data, lr=lr, proto_lam=lam)
    assert sim.algo.shared == [] and sim.algo.bytes_down(sim.server) == 0  # round 1 sends nothing down
    _, results = sim.step([0, 1, 2])
    means = {}
    for r in results:  # round 1: no global prototype yet, so plain cross-entropy
        x, y = client_xy(data, r.client)
        close(r.states[-1], sgd_step(sim.initial, x, y, lr), PARAMS)
        close(sim.store.get(r.client), r.states[-1])
        means[r.client] = class_means(r.states[-1], x, y)
        assert sim.algo.bytes_up_of(sim.server, sim.sent[r.client]) == len(means[r.client]) * (5 * 4 + 8)
    for c in range(3):  # the plain mean over the clients that hold the class
        held = [m[c] for m in means.values() if c in m]
        assert bool(sim.server.extra["has"][c]) == bool(held)
        if held:
            torch.testing.assert_close(sim.server.extra["prototypes"][c], sum(held) / len(held))
    assert torch.equal(sim.server.model["fc.weight"], sim.initial["fc.weight"])  # no model goes up
    protos, has = sim.server.extra["prototypes"], sim.server.extra["has"]
    assert sim.algo.bytes_down(sim.server) == int(has.sum()) * 28
    before = {c: sim.store.get(c) for c in range(3)}
    _, results = sim.step([1])
    x, y = client_xy(data, 1)
    p = {k: before[1][k].clone().requires_grad_() for k in PARAMS}
    f = features(p, x)
    target = torch.where(has[y][:, None], protos[y], f.detach())
    loss = F.cross_entropy(forward(p, x), y) + lam * F.mse_loss(f, target)
    grads = torch.autograd.grad(loss, list(p.values()))
    close(results[0].states[-1], {k: (p[k] - lr * g).detach() for (k, _), g in zip(p.items(), grads, strict=True)})
    close(sim.algo.personal_model(sim.server, sim.store, 0), before[0])  # client 0 did not train


# --- FedRoD -----------------------------------------------------------------------------------------------------
def balanced_data(sizes=(6, 9), dim=4, classes=3):
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    y = torch.cat([torch.arange(s) % classes for s in sizes])
    return ClientData(torch.randn(n, dim, generator=g), y, torch.arange(n), torch.tensor([0, *torch.tensor(sizes)
                                                                                            .cumsum(0).tolist()]))


def test_fedrod_generic_model_is_fedavg_when_every_class_is_equally_represented():
    from fedsim.algorithms.fedrod import FedRoD

    torch.manual_seed(0)
    model, data = Net(), balanced_data()
    a, b = Sim(FedAvg, model, data), Sim(FedRoD, model, data)
    for _ in range(2):
        a.step([0, 1], batch_size=3)
        b.step([0, 1], batch_size=3)
    close(a.server.model, b.server.model, atol=1e-6, rtol=1e-5)


def test_fedrod_trains_the_generic_model_on_balanced_softmax_and_a_personal_head_on_the_summed_logits():
    from fedsim.algorithms.fedrod import FedRoD

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(7, 5)), 0.2
    sim = Sim(FedRoD, Net(), data, lr=lr)
    _, results = sim.step([0, 1])
    generic = []
    for r in results:
        x, y = client_xy(data, r.client)
        prior = torch.bincount(y, minlength=3).float().log()
        p = {k: sim.initial[k].clone().requires_grad_() for k in PARAMS}
        grads = torch.autograd.grad(F.cross_entropy(forward(p, x) + prior, y), list(p.values()))
        g_model = {k: (p[k] - lr * g).detach() for (k, _), g in zip(p.items(), grads, strict=True)}
        generic.append(g_model)
        summed = {**g_model, **{k: g_model[k] + sim.initial[k] for k in HEAD}}  # h_p starts as the initial head
        personal = {k: sim.initial[k] + sgd_step(summed, x, y, lr, HEAD)[k] - summed[k] for k in HEAD}
        close(sim.store.get(r.client)["head"], personal)
    close(sim.server.model, mean_of(generic, [7, 5], PARAMS))
    own = sim.algo.personal_model(sim.server, sim.store, 0)
    close(own, {**sim.server.model, **{k: sim.server.model[k] + sim.store.get(0)["head"][k] for k in HEAD}})


def test_fedrod_needs_one_linear_head():
    from fedsim.algorithms.fedrod import FedRoD
    from fedsim.core.hooks import ModelKeys

    keys = ModelKeys(list(PARAMS), [], [], head=list(PARAMS))  # a head of two Linear layers
    algo = FedRoD(Config(), keys)
    with pytest.raises(FedsimError, match="one Linear layer"):
        algo.attach(Net(), tiny_data())


# --- end to end: both executors, resume, bytes, CLI ---------------------------------------------------------------
def small(out_dir, **kw):
    base = dict(rounds=4, clients=4, fraction=0.75, local_steps=3, batch_size=16, out_dir=str(out_dir), quiet=True,
                executor="sequential", ala_percent=30)
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.mark.parametrize("algo", NEW)
def test_runs_equal_under_both_executors_and_resume_to_the_uninterrupted_numbers(tmp_path, algo):
    fedsim.run(small(tmp_path, algo=algo, name="seq"))
    fedsim.run(small(tmp_path, algo=algo, name="vmap", executor="vmap"))
    pd.testing.assert_frame_equal(numbers(tmp_path / "vmap.csv"), numbers(tmp_path / "seq.csv"), atol=1e-5, rtol=1e-4)
    fedsim.run(small(tmp_path, algo=algo, name="r", rounds=2))
    checkpoint = load_checkpoint(tmp_path / "r.csv")
    if algo != "peravg":  # the clients' own state is in the checkpoint
        assert checkpoint.progress.clients
    if algo == "fedproto":
        assert bool(checkpoint.progress.server.extra["has"].any())
    fedsim.run(resume=tmp_path / "r.csv", rounds=4)
    pd.testing.assert_frame_equal(numbers(tmp_path / "r.csv"), numbers(tmp_path / "seq.csv"))


def test_fedproto_bytes_columns_count_each_clients_prototypes(tmp_path):
    from fedsim.experiment import setup

    config = small(tmp_path, algo="fedproto", rounds=2, fraction=1.0)
    df = fedsim.run(config)
    exp = setup(config)
    d = exp.algorithm.init_server(dict(exp.model.state_dict())).extra["prototypes"].shape[1]
    held = sum(int((torch.bincount(exp.dataset.y_train[torch.tensor(list(exp.partition.train_indices(c)))],
                                   minlength=10) > 0).sum()) for c in range(4))
    per_prototype = d * 4 + 8
    assert df["bytes_up"].tolist() == [held * per_prototype] * 2
    assert df["bytes_down"].iloc[0] == 0 and df["bytes_down"].iloc[1] == 4 * 10 * per_prototype


def test_cli_trains_each_new_algorithm_and_checks_its_options(tmp_path):
    runner = CliRunner()
    for algo, extra in (("pfedme", ["--inner-steps", "2", "--moreau-lam", "5"]), ("fedala", ["--ala-percent", "50"]),
                        ("fedproto", ["--proto-lam", "0.5"]), ("peravg", []), ("fedrod", [])):
        result = runner.invoke(app, ["train", "--algo", algo, "--rounds", "1", "--clients", "3", "--local-steps", "2",
                                     "--out-dir", str(tmp_path), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--algo", "pfedme", "--moreau-lam", "0", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--moreau-lam" in result.output
    result = runner.invoke(app, ["train", "--algo", "fedrod", "--freeze-base", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2
