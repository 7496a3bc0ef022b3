"""FedFomo, FedAMP, APPLE and FedDBE, and the PFLlib-behaviour options of FedRoD, FedProto, SCAFFOLD, FedALA and
pFedMe: each against a hand-written reference on tiny models (full-batch steps), the reductions their options
allow, the bytes they exchange, both executors and resume end to end, a stacked sweep, and the CLI. The helpers are
test_algorithms.py's."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_algorithms import HEAD, PARAMS, Net, Sim, client_xy, close, features, forward, mean_of, sgd_step, tiny_data
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms.fedavg import FedAvg
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS
from fedsim.sweep import expand, run_sweep, stack_key

NEW = ["fedfomo", "fedamp", "apple", "feddbe"]


def grads_of(p: dict, loss) -> dict:
    return dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True))


def leaves(state, keys=PARAMS):
    return {k: state[k].clone().requires_grad_() for k in keys}


# --- FedDBE -----------------------------------------------------------------------------------------------------
def test_feddbe_first_round_is_fedavg_and_gives_the_global_mean_representation():
    from fedsim.algorithms.feddbe import BIAS, FedDBE

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(4, 7, 5))
    a, b = Sim(FedAvg, model, data, lr=0.2), Sim(FedDBE, model, data, lr=0.2)
    a.step([0, 1, 2])
    _, results = b.step([0, 1, 2])
    close(a.server.model, b.server.model, rtol=0, atol=0)
    means = [features(r.states[-1], client_xy(data, r.client)[0]).mean(0) for r in results]
    torch.testing.assert_close(b.server.extra["mean"], sum(m * n for m, n in zip(means, (4, 7, 5), strict=True)) / 16)
    assert bool(b.server.extra["has_mean"])
    for r in results:  # the bias did not move: it enters only once the global mean exists
        assert torch.equal(r.states[-1][BIAS], torch.zeros(5)) and torch.equal(b.store.get(r.client)["bias"],
                                                                                torch.zeros(5))
    assert b.bytes_up() == a.bytes_up() + 5 * 4  # the mean travels once
    assert b.algo.bytes_down(b.server) == a.algo.bytes_down(a.server) + 5 * 4


def test_feddbe_step_trains_the_bias_in_the_head_input_and_pulls_the_batch_mean_to_the_global_one():
    from fedsim.algorithms.feddbe import FedDBE

    torch.manual_seed(0)
    data, lr, kappa = tiny_data(sizes=(4, 7, 5)), 0.3, 2.0
    sim = Sim(FedDBE, Net(), data, lr=lr, dbe_mr=kappa)
    sim.step([0, 1, 2])
    server, g = sim.server, sim.server.extra["mean"]
    sim.store.put(1, {**sim.store.get(1), "bias": torch.full((5,), 0.1)})  # a bias that has trained before
    _, (result,) = sim.step([1])
    x, y = client_xy(data, 1)
    p = leaves(server.model)
    bias = torch.full((5,), 0.1, requires_grad=True)
    z = features(p, x)
    logits = F.linear(z + bias, p["fc.weight"], p["fc.bias"])
    loss = F.cross_entropy(logits, y) + kappa * 0.5 * ((z.mean(0) - g) ** 2).mean()
    grads = grads_of({**p, "b": bias}, loss)
    close(result.states[-1], {k: (p[k] - lr * grads[k]).detach() for k in PARAMS}, PARAMS)
    new_bias = (bias - lr * grads["b"]).detach()
    torch.testing.assert_close(sim.store.get(1)["bias"], new_bias)
    assert sim.sent[1].fields["mean"]["mean"].numel() == 0 and sim.bytes_up() == sim.algo.bytes_down(server) - 5 * 4
    own = sim.algo.personal_model(sim.server, sim.store, 1)  # head(z + b) as the head's bias moved by W·b
    torch.testing.assert_close(forward(own, x), F.linear(features(sim.server.model, x) + new_bias,
                                                          sim.server.model["fc.weight"], sim.server.model["fc.bias"]))


# --- FedAMP -----------------------------------------------------------------------------------------------------
def test_fedamp_builds_each_cloud_model_by_attention_and_pulls_the_clients_model_to_it():
    from fedsim.algorithms.fedamp import FedAMP

    torch.manual_seed(0)
    data, lr, alpha, lam, sigma = tiny_data(sizes=(5, 6, 7)), 0.2, 0.2, 0.5, 2.0
    sim = Sim(FedAMP, Net(), data, lr=lr, amp_alpha=alpha, amp_lam=lam, amp_sigma=sigma)
    assert sim.algo.bytes_down(sim.server) == 0  # round 1: no peers, u_i = w_i
    _, results = sim.step([0, 1, 2])
    for r in results:  # the pull to u_i = w_i vanishes at the first step: plain SGD from the client's own model
        close(r.states[-1], sgd_step(sim.initial, *client_xy(data, r.client), lr), PARAMS)
    w = {c: sim.store.get(c) for c in range(3)}
    xi = {j: alpha * math.exp(-sum(float(((w[0][k] - w[j][k]) ** 2).sum()) for k in PARAMS) / sigma) / sigma
          for j in (1, 2)}
    cloud = {k: (1 - xi[1] - xi[2]) * w[0][k] + xi[1] * w[1][k] + xi[2] * w[2][k] for k in PARAMS}
    jobs, (result,) = sim.step([0])
    close(jobs[0].ctx["cloud"], cloud)
    close(jobs[0].start, w[0])  # the client trains its own model, not u_i
    pull = {k: (lam / alpha) * (w[0][k] - cloud[k]) for k in PARAMS}
    close(result.states[-1], sgd_step(w[0], *client_xy(data, 0), lr, correction=pull), PARAMS)
    assert sim.algo.bytes_down(sim.server) == sum(v.numel() * 4 for v in w[0].values())
    assert sim.server.extra["models"][0] is result.states[-1]  # the server keeps what was sent, no copy
    assert torch.equal(sim.server.model["fc.weight"], sim.initial["fc.weight"])  # no global model


def test_fedamp_without_the_pull_trains_each_client_alone_as_pfllib():
    from fedsim.algorithms.fedamp import FedAMP

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(5, 6, 7))
    amp = Sim(FedAMP, model, data, amp_lam=0.0, amp_alpha=0.5)
    for _ in range(2):
        amp.step([0, 1, 2], batch_size=2)
    for c in range(3):  # FedAvg with the client alone in every round: its own local SGD, the same batches
        alone = Sim(FedAvg, model, data)
        for _ in range(2):
            alone.step([c], batch_size=2)
        close(amp.algo.personal_model(amp.server, amp.store, c), alone.server.model, atol=1e-6, rtol=1e-5)


# --- FedFomo ----------------------------------------------------------------------------------------------------
def test_fedfomo_weighs_the_downloaded_models_by_their_validation_improvement():
    from fedsim.algorithms.fedfomo import FedFomo

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(10, 10, 10)), 0.3
    sim = Sim(FedFomo, Net(), data, lr=lr, fomo_m=2, fomo_val=0.2)
    trained = sim.algo.training_data(data)
    assert [trained.size(c) for c in range(3)] == [8, 8, 8] and torch.equal(trained.of(1), data.of(1)[:8])
    assert sim.algo.bytes_down(sim.server) == 0  # round 1: nobody has sent yet
    _, results = sim.step([0, 1, 2])
    for r in results:  # no download: each trains its own (initial) model on its first 8 samples
        idx = data.of(r.client)[:8]
        close(r.states[-1], sgd_step(sim.initial, data.x[idx], data.y[idx], lr), PARAMS)
    models = {c: sim.store.get(c)["model"] for c in range(3)}
    val = data.of(0)[8:]

    def val_loss(state):
        return float(F.cross_entropy(forward(state, data.x[val]), data.y[val]))

    base = val_loss(sim.initial)  # θ_old: client 0's start of round 1
    ids = [0, 1]  # its affinity row is e_0: itself first, then the tie broken to the lower id
    weights = torch.tensor([(base - val_loss(models[j])) / (sum(float(((models[j][k] - sim.initial[k]) ** 2).sum())
                                                                  for k in PARAMS) ** 0.5 + 1e-5) for j in ids])
    positive = weights.clamp(min=0)
    assert positive.sum() > 0
    share = positive / positive.sum()
    start = {k: sum(s * models[j][k] for s, j in zip(share.tolist(), ids, strict=True)) for k in PARAMS}
    size = sum(v.numel() * 4 for v in models[0].values())
    assert sim.algo.bytes_down(sim.server) == 2 * size  # M = 2 of the 3 that sent
    jobs, _ = sim.step([0])
    close(jobs[0].start, start)
    torch.testing.assert_close(sim.sent[0].fields["weights"], weights)
    torch.testing.assert_close(sim.server.extra["affinity"][0], torch.tensor([1.0, 0.0, 0.0]).index_add(
        0, torch.tensor(ids), weights))
    assert sim.algo.bytes_down(sim.server) == size  # only one sent in round 2
    assert sim.bytes_up() == size + 2 * 4


def test_fedfomo_without_downloads_trains_each_client_alone():
    from fedsim.algorithms.fedfomo import FedFomo

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(5, 6, 7))
    fomo = Sim(FedFomo, model, data, fomo_m=0, fomo_val=0.0)
    for _ in range(2):
        fomo.step([0, 1, 2], batch_size=2)
    for c in range(3):
        alone = Sim(FedAvg, model, data)
        for _ in range(2):
            alone.step([c], batch_size=2)
        close(fomo.algo.personal_model(fomo.server, fomo.store, c), alone.server.model, atol=1e-6, rtol=1e-5)


# --- APPLE ------------------------------------------------------------------------------------------------------
def test_apple_step_moves_the_core_and_the_relationship_vector_as_pfllib():
    from fedsim.algorithms.apple import APPLE, DR

    torch.manual_seed(0)
    data, lr, eta, mu = tiny_data(sizes=(4, 6, 5)), 0.1, 0.5, 0.3
    sim = Sim(APPLE, Net(), data, lr=lr, apple_dr_lr=eta, apple_mu=mu)
    sim.step([0, 1, 2])
    cores = {c: {k: sim.server.extra["cores"][k][c].clone() for k in PARAMS} for c in range(3)}
    p = sim.store.get(0)["p"].clone()
    p0 = torch.tensor([4, 6, 5]) / 15
    _, (result,) = sim.step([0])
    x, y = client_xy(data, 0)
    mixed = leaves({k: sum(p[j] * cores[j][k] for j in range(3)) for k in PARAMS})
    g = grads_of(mixed, F.cross_entropy(forward(mixed, x), y))
    s = torch.stack([sum((g[k] * cores[j][k]).mean() for k in PARAMS) / 4 for j in range(3)])
    lam = sim.algo.lam(2)
    new_core = {k: cores[0][k] - lr * 3 * p[0] * g[k] for k in PARAMS}
    new_p = p - eta * (s + lam * mu * (p - p0))
    close(result.states[-1], new_core, PARAMS)
    torch.testing.assert_close(result.states[-1][DR], new_p)
    close({k: sim.server.extra["cores"][k][0] for k in PARAMS}, new_core)
    for c in (1, 2):  # the others' cores are as they were
        close({k: sim.server.extra["cores"][k][c] for k in PARAMS}, cores[c])
    own = sim.algo.personal_model(sim.server, sim.store, 0)
    close(own, {k: new_p[0] * new_core[k] + new_p[1] * cores[1][k] + new_p[2] * cores[2][k] for k in PARAMS})
    assert sim.algo.bytes_down(sim.server) == 2 * sum(v.numel() * 4 for v in new_core.values())


def test_apple_with_one_client_and_a_fixed_relationship_is_fedavg():
    from fedsim.algorithms.apple import APPLE

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(9,))
    a, b = Sim(FedAvg, model, data), Sim(APPLE, model, data)
    for _ in range(2):
        a.step([0], batch_size=3)
        b.step([0], batch_size=3)
    close(b.algo.personal_model(b.server, b.store, 0), a.server.model, atol=1e-6, rtol=1e-5)


def test_apple_lambda_anneals_by_a_half_cosine_over_its_rounds():
    from fedsim.algorithms.apple import APPLE

    sim = Sim(APPLE, Net(), tiny_data(), apple_rounds=4)
    assert [round(sim.algo.lam(r), 6) for r in range(1, 8)] == [1.0, 1.0, round((math.cos(math.pi / 4) + 1) / 2, 6),
                                                                 0.5, round((math.cos(3 * math.pi / 4) + 1) / 2, 6),
                                                                 0.0, 0.0]


# --- the PFLlib-behaviour options of the existing algorithms -------------------------------------------------
def test_fedrod_batch_schedule_trains_the_personal_head_on_each_batchs_representation_before_its_step():
    from fedsim.algorithms.fedrod import FedRoD

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(7, 5)), 0.2
    sim = Sim(FedRoD, Net(), data, lr=lr, rod_schedule="batch")
    sim.step([0, 1])
    generic = []
    for c in (0, 1):
        x, y = client_xy(data, c)
        prior = torch.bincount(y, minlength=3).float().log()
        p = leaves(sim.initial)
        g = grads_of(p, F.cross_entropy(forward(p, x) + prior, y))
        generic.append({k: (p[k] - lr * g[k]).detach() for k in PARAMS})
        head = leaves(sim.initial, HEAD)  # h_p starts as the initial head
        out = forward(sim.initial, x) + F.linear(features(sim.initial, x), head["fc.weight"], head["fc.bias"])
        gh = grads_of(head, F.cross_entropy(out, y))
        close(sim.store.get(c)["head"], {k: (head[k] - lr * gh[k]).detach() for k in HEAD})
    close(sim.server.model, mean_of(generic, [7, 5], PARAMS))


def test_fedproto_prototype_rule_predicts_the_nearest_global_prototype():
    from fedsim.algorithms.fedproto import FedProto

    torch.manual_seed(0)
    data = tiny_data(sizes=(5, 8, 2))
    sim = Sim(FedProto, Net(), data, lr=0.2, proto_predict="prototype")
    sim.step([0, 1, 2])
    sim.server.extra["has"][2] = False  # a class no client holds never wins
    protos, has = sim.server.extra["prototypes"], sim.server.extra["has"]
    x = torch.randn(50, 4)
    z = features(sim.store.get(0), x)
    distance = ((z[:, None, :] - protos[None]) ** 2).sum(-1).masked_fill(~has, math.inf)
    predicted = forward(sim.algo.personal_model(sim.server, sim.store, 0), x).argmax(1)
    assert torch.equal(predicted, distance.argmin(1)) and len(set(predicted.tolist())) == 2
    with pytest.raises(FedsimError, match="--proto-predict must be one of head, prototype"):
        Config(algo="fedproto", proto_predict="nearest").validate()


def test_scaffold_uniform_weights_take_the_plain_mean_of_the_models():
    from fedsim.algorithms.scaffold import Scaffold

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(3, 5, 8)), 0.2
    sim = Sim(Scaffold, Net(), data, lr=lr, scaffold_weights="uniform")
    sim.step([0, 1, 2])
    trained = [sgd_step(sim.initial, *client_xy(data, c), lr) for c in range(3)]
    close(sim.server.model, mean_of(trained, [1, 1, 1], PARAMS))
    assert Config(algo="scaffold").validate() is None


def test_fedala_start_evaluation_is_the_next_rounds_start():
    from fedsim.algorithms.fedala import FedALA

    torch.manual_seed(0)
    sim = Sim(FedALA, Net(), tiny_data(sizes=(9, 6)), ala_percent=100, batch_size=3, ala_eval="start")
    sim.step([0, 1])
    sim.step([0, 1])
    own = sim.algo.personal_model(sim.server, sim.store, 0)
    assert not torch.equal(own["fc.weight"], sim.store.get(0)["model"]["fc.weight"])
    close(own, sim.algo.client_job(sim.server, sim.store, 0).start)


def test_pfedme_warm_theta_carries_over_batches_and_global_evaluation_reports_the_global_model():
    from fedsim.algorithms.pfedme import PFedMe

    torch.manual_seed(0)
    data, lr, lam, eta = tiny_data(), 0.05, 3.0, 0.1
    sim = Sim(PFedMe, Net(), data, lr=lr, moreau_lam=lam, inner_lr=eta, inner_steps=2, pfedme_theta="warm")
    _, results = sim.step([0, 2], epochs=2)
    for r in results:
        x, y = client_xy(data, r.client)
        w = theta = sim.initial
        for _ in range(2):  # two full-batch local steps, θ going on from the last batch's
            for _ in range(2):
                p = leaves(theta)
                g = grads_of(p, F.cross_entropy(forward(p, x), y))
                theta = {**theta, **{k: theta[k] - eta * (g[k] + lam * (theta[k] - w[k])) for k in PARAMS}}
            w = {**w, **{k: w[k] - lr * lam * (w[k] - theta[k]) for k in PARAMS}}
        close(r.states[-1], w, PARAMS)
        close(sim.store.get(r.client), w, PARAMS)
    assert sim.algo.personalization_phases()  # θ from w for evaluation, unless --pfedme-eval global
    plain = Sim(PFedMe, Net(), data, pfedme_eval="global")
    assert plain.algo.personalization_phases() == [] and plain.algo.personal_model(plain.server, plain.store, 0) is None


# --- the channel's view: what each sends, and who refuses it ---------------------------------------------------
@pytest.mark.parametrize("algo", NEW)
def test_dp_and_robust_aggregation_refuse_the_methods_whose_server_keeps_each_clients_model(algo):
    for options in (dict(dp_noise=1.0, dp_clip="1"), dict(aggregate="median")):
        if algo == "feddbe":  # all summed: accepted
            Config(algo=algo, **options).validate()
        else:
            with pytest.raises(FedsimError, match=f"cannot take {algo}: .*per-client"):
                Config(algo=algo, **options).validate()


# --- end to end: both executors, resume, a stack, the CLI --------------------------------------------------------
def small(out_dir, **kw):
    base = dict(rounds=4, clients=4, fraction=0.75, local_steps=3, batch_size=16, out_dir=str(out_dir), quiet=True,
                executor="sequential")
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.mark.parametrize("algo,extra", [("fedfomo", {}), ("fedamp", {}), ("apple", {"apple_dr_lr": 0.05,
                                                                                     "apple_mu": 0.1}),
                                        ("feddbe", {}), ("fedrod", {"rod_schedule": "batch"}),
                                        ("pfedme", {"pfedme_theta": "warm", "pfedme_eval": "global"})])
def test_runs_equal_under_both_executors_and_resume_to_the_uninterrupted_numbers(tmp_path, algo, extra):
    fedsim.run(small(tmp_path, algo=algo, name="seq", **extra))
    fedsim.run(small(tmp_path, algo=algo, name="vmap", executor="vmap", **extra))
    pd.testing.assert_frame_equal(numbers(tmp_path / "vmap.csv"), numbers(tmp_path / "seq.csv"), atol=1e-5, rtol=1e-4)
    fedsim.run(small(tmp_path, algo=algo, name="r", rounds=2, **extra))
    progress = load_checkpoint(tmp_path / "r.csv").progress
    assert progress.clients and progress.server.round == 2  # APPLE's λ and FedALA's keyed slice read the round
    fedsim.run(resume=tmp_path / "r.csv", rounds=4)
    pd.testing.assert_frame_equal(numbers(tmp_path / "r.csv"), numbers(tmp_path / "seq.csv"))


def test_fedrod_executors_agree_where_clients_lack_classes(tmp_path):
    """The test that would have told whether FedRoD's executors differ: a Dirichlet split whose clients lack
    classes (their balanced-softmax priors hold -inf), several epochs, the trained states compared entry by
    entry, not only the CSV's rounded accuracies."""
    base = dict(algo="fedrod", dirichlet=0.1, clients=6, rounds=3, local_epochs=2, batch_size=8, fraction=1.0)
    for executor in ("sequential", "vmap"):
        fedsim.run(small(tmp_path, name=executor, executor=executor, **base))
    seq, vmap = (load_checkpoint(tmp_path / f"{name}.csv").progress for name in ("sequential", "vmap"))
    from fedsim.experiment import setup

    exp = setup(small(tmp_path, **base))
    lacking = [c for c in range(6) if (torch.bincount(exp.dataset.y_train[list(exp.partition.train_indices(c))],
                                                      minlength=10) == 0).any()]
    assert lacking
    close(seq.server.model, vmap.server.model, atol=1e-5, rtol=1e-4)
    for c, entry in seq.clients.items():
        close(entry["head"], vmap.clients[c]["head"], atol=1e-5, rtol=1e-4)
    a, b = numbers(tmp_path / "sequential.csv"), numbers(tmp_path / "vmap.csv")
    assert a["personal_accuracy_mean"].tolist() == b["personal_accuracy_mean"].tolist()


def test_a_sweep_trains_runs_differing_in_the_message_passing_options_together_as_alone(tmp_path):
    runs = expand({"rounds": 2, "clients": 4, "local_steps": 2, "batch_size": 16, "quiet": True, "algo": "fedamp",
                   "out_dir": str(tmp_path / "sweep")}, {"amp_lam": [0.0, 1.0]}, "g")
    assert len(runs) == 2 and len({stack_key(r.config) for r in runs}) == 1
    run_sweep(runs, "g", str(tmp_path / "sweep"))
    for run in runs:
        fedsim.run(run.config, out_dir=str(tmp_path / "alone"))
        swept, alone = (numbers(tmp_path / where / f"{run.name}.csv") for where in ("sweep", "alone"))
        pd.testing.assert_frame_equal(swept, alone, atol=1e-7, rtol=1e-5)


def cli(tmp_path, algo, model, *extra):
    return CliRunner().invoke(app, ["train", "--algo", algo, "--model", model, "--rounds", "2", "--clients", "3",
                                    "--local-steps", "2", "--out-dir", str(tmp_path), "--quiet", *extra])


@pytest.mark.parametrize("algo", NEW)
def test_cli_trains_each_method_on_the_mlp(tmp_path, algo):
    result = cli(tmp_path, algo, "mlp")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn-bn", "fedavgcnn", "resnet18"])
@pytest.mark.parametrize("algo", NEW)
def test_cli_trains_each_method_on_the_image_models(tmp_path, algo, model):
    result = cli(tmp_path, algo, model, "--batch-size", "10", "--lr", "0.005", "--client-test-fraction", "0.25",
                 "--normalize", "symmetric")
    assert result.exit_code == 0, result.output


def test_cli_checks_the_new_options(tmp_path):
    for algo, option in (("fedfomo", "--fomo-val"), ("fedamp", "--amp-sigma"), ("apple", "--apple-dr-lr"),
                         ("feddbe", "--dbe-mr")):
        result = CliRunner().invoke(app, ["train", "--algo", algo, option, "-1", "--out-dir", str(tmp_path)])
        assert result.exit_code == 2 and option in result.output, result.output
    result = CliRunner().invoke(app, ["train", "--algo", "fedrod", "--rod-schedule", "epoch", "--out-dir",
                                      str(tmp_path)])
    assert result.exit_code == 2 and "--rod-schedule must be one of phase, batch" in result.output


def test_apple_personalized_upload_sends_the_clients_mixture_as_its_core_as_pfllib():
    from fedsim.algorithms.apple import APPLE, DR

    torch.manual_seed(0)
    data = tiny_data(sizes=(4, 6, 5))
    sim = Sim(APPLE, Net(), data, lr=0.1, apple_dr_lr=0.5, apple_upload="personalized")
    sim.step([0, 1, 2])
    before = {c: {k: sim.server.extra["cores"][k][c].clone() for k in PARAMS} for c in range(3)}
    _, (result,) = sim.step([0])
    p, trained = result.states[-1][DR], result.states[-1]
    mixed = {k: p[0] * trained[k] + p[1] * before[1][k] + p[2] * before[2][k] for k in PARAMS}
    close({k: sim.server.extra["cores"][k][0] for k in PARAMS}, mixed)
    for c in (1, 2):
        close({k: sim.server.extra["cores"][k][c] for k in PARAMS}, before[c])
