"""FedGen, FedDistill, FedCP and GPFL (the rest of PFLlib's table): each against a hand-written reference on tiny
models (full-batch steps; the batch order, where a step depends on it, from the engine's keyed schedule), the
reductions their options allow, what they send and its bytes, both executors, stacked sweeps and resume end to
end, and the CLI on the built-in and torchvision models. The helpers are test_algorithms.py's."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_algorithms import BASE, HEAD, PARAMS, Net, Sim, client_xy, close, features, forward, mean_of, tiny_data
from test_algorithms_pfl import batch_order
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms.fedavg import FedAvg
from fedsim.checkpoint import load_checkpoint
from fedsim.cli import app
from fedsim.config import Config
from fedsim.core import rng
from fedsim.core.hooks import ModelKeys
from fedsim.engine.local import ClientData
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS
from fedsim.sweep import expand, run_sweep, stack_key

NEW = ["fedgen", "feddistill", "fedcp", "gpfl"]
SMALL_GENERATOR = dict(gen_steps=5, gen_noise_dim=3, gen_hidden=4)


def sgd(state, loss_fn, lr, keys):
    """One SGD step of `loss_fn(state)` on `keys`."""
    p = {k: state[k].clone().requires_grad_() for k in keys}
    grads = torch.autograd.grad(loss_fn({**state, **p}), list(p.values()))
    return {**state, **{k: (p[k] - lr * g).detach() for k, g in zip(keys, grads, strict=True)}}


def labelled(labels, sizes, dim=4, seed=0):
    """ClientData with these labels, clients cut by `sizes`."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    return ClientData(torch.randn(len(y), dim, generator=g), y, torch.arange(len(y)),
                      torch.tensor([0, *sizes]).cumsum(0).numpy())


# --- FedGen ---------------------------------------------------------------------------------------------------
def generate(g, labels, noise, classes=3):
    h = F.linear(torch.cat([noise, F.one_hot(labels, classes).float()], 1), g["0.weight"], g["0.bias"])
    h = F.batch_norm(h, None, None, g["1.weight"], g["1.bias"], training=True)
    return F.linear(F.relu(h), g["3.weight"], g["3.bias"])


def test_fedgen_with_zero_weight_is_fedavg():
    from fedsim.algorithms.fedgen import FedGen

    torch.manual_seed(0)
    model, data = Net(), tiny_data()
    a, b = Sim(FedAvg, model, data, lr=0.1), Sim(FedGen, model, data, lr=0.1, gen_lam=0.0, **SMALL_GENERATOR)
    for cohort in ([0, 1, 2], [1, 2]):
        a.step(cohort, batch_size=4)
        b.step(cohort, batch_size=4)
    for k in a.server.model:
        assert torch.equal(a.server.model[k], b.server.model[k])
    assert b.server.extra["adam"]["step"] == 10  # the generator trained all the same


def test_fedgen_client_step_adds_the_generated_features_cross_entropy():
    from fedsim.algorithms.fedgen import FedGen

    torch.manual_seed(0)
    data, lr, lam = tiny_data(sizes=(3, 5, 8)), 0.1, 0.7
    sim = Sim(FedGen, Net(), data, lr=lr, gen_lam=lam, batch_size=8, **SMALL_GENERATOR)
    g0, probs = sim.server.extra["generator"], sim.server.extra["label_probs"]
    torch.testing.assert_close(probs, torch.bincount(data.y, minlength=3).float() / len(data.y))
    assert g0["0.weight"].shape == (4, 3 + 3) and g0["3.weight"].shape == (5, 4)  # noise + classes -> d
    _, results = sim.step([0, 1, 2], batch_size=8)
    for r in results:
        x, y = client_xy(data, r.client)
        torch.manual_seed(rng.keyed_torch_seed(0, 1, r.client))  # the client's draws, as the engine seeds them
        labels = torch.multinomial(probs, 8, replacement=True)
        z = generate(g0, labels, torch.rand(8, 3))

        def loss(s, x=x, y=y, z=z, labels=labels):
            return F.cross_entropy(forward(s, x), y) + lam * F.cross_entropy(F.linear(z, s["fc.weight"],
                                                                                      s["fc.bias"]), labels)

        close(r.states[-1], sgd(sim.initial, loss, lr, PARAMS), PARAMS)
    close(sim.server.model, mean_of([r.states[-1] for r in results], [3, 5, 8], PARAMS))


def test_fedgen_server_trains_its_generator_with_adam_on_the_averaged_head():
    from fedsim.algorithms.fedgen import FedGen

    torch.manual_seed(0)
    data = tiny_data(sizes=(4, 6))
    sim = Sim(FedGen, Net(), data, lr=0.1, batch_size=6, gen_lr=0.01, **SMALL_GENERATOR)
    g0 = sim.server.extra["generator"]
    _, results = sim.step([0, 1], batch_size=6)
    head = {k: sim.server.model[k] for k in HEAD}
    # PFLlib's target, Σ_k w_k h_k(z), is the averaged head's logits for a Linear head: the aggregate suffices
    z = torch.randn(7, 5)
    weighted = sum(w * F.linear(z, r.states[-1]["fc.weight"], r.states[-1]["fc.bias"])
                   for w, r in zip((0.4, 0.6), results, strict=True))
    torch.testing.assert_close(weighted, F.linear(z, head["fc.weight"], head["fc.bias"]))
    # the reference: torch.optim.Adam on G, the server's draws keyed by (seed, round)
    g = {k: v.clone().requires_grad_() for k, v in g0.items()}
    adam = torch.optim.Adam(list(g.values()), lr=0.01)
    draws = torch.Generator().manual_seed(int(rng.keyed_rng(rng.GENERATOR, 0, 1).integers(2**62)))
    for _ in range(5):
        labels = torch.multinomial(sim.server.extra["label_probs"], 6, replacement=True, generator=draws)
        noise = torch.rand(6, 3, generator=draws)
        adam.zero_grad()
        F.cross_entropy(F.linear(generate(g, labels, noise), head["fc.weight"], head["fc.bias"]), labels).backward()
        adam.step()
    close(sim.server.extra["generator"], {k: v.detach() for k, v in g.items()})
    for k, p in g.items():
        torch.testing.assert_close(sim.server.extra["adam"]["m"][k], adam.state[p]["exp_avg"])
        torch.testing.assert_close(sim.server.extra["adam"]["v"][k], adam.state[p]["exp_avg_sq"])
    generator_bytes = sum(v.numel() * 4 for v in g0.values())
    assert sim.algo.bytes_down(sim.server) == sum(v.numel() * 4 for v in sim.initial.values()) + generator_bytes


def test_fedgen_refuses_a_batch_of_one_and_a_head_of_two_modules():
    from fedsim.algorithms.fedgen import FedGen

    with pytest.raises(FedsimError, match="--batch-size 2"):
        Config(algo="fedgen", batch_size=1).validate()
    algo = FedGen(Config(), ModelKeys(list(PARAMS), [], [], head=list(PARAMS)))  # body and fc: two modules
    with pytest.raises(FedsimError, match="fedgen needs the head to be one module"):
        algo.attach(Net(), tiny_data())


# --- FedDistill -----------------------------------------------------------------------------------------------
def class_means(state, x, y, classes=3):
    logits = forward(state, x)
    return torch.stack([logits[y == c].mean(0) if (y == c).any() else torch.zeros(classes) for c in range(classes)])


def test_feddistill_at_zero_trains_each_client_alone_as_fedproto_at_zero():
    from fedsim.algorithms.feddistill import FedDistill
    from fedsim.algorithms.fedproto import FedProto

    torch.manual_seed(0)
    model, data = Net(), tiny_data()
    a, b = Sim(FedDistill, model, data, lr=0.1, distill_lam=0.0), Sim(FedProto, model, data, lr=0.1, proto_lam=0.0)
    for cohort in ([0, 1, 2], [0, 2]):
        a.step(cohort, batch_size=4)
        b.step(cohort, batch_size=4)
    for c in range(3):
        close(a.algo.personal_model(a.server, a.store, c), b.algo.personal_model(b.server, b.store, c),
              rtol=0, atol=0)


def test_feddistill_exchanges_class_mean_logits_and_distills_toward_them():
    from fedsim.algorithms.feddistill import FedDistill

    torch.manual_seed(0)
    # client 0 holds classes 0 and 1, client 1 all three
    data, lr, lam = labelled([0, 1, 0, 1, 0, 0, 1, 2, 2, 2, 1], (5, 6)), 0.1, 0.5
    sim = Sim(FedDistill, Net(), data, lr=lr, distill_lam=lam)
    _, (r0,) = sim.step([0], batch_size=8)  # round 1: no global logits yet, plain cross-entropy
    x0, y0 = client_xy(data, 0)
    close(r0.states[-1], sgd(sim.initial, lambda s: F.cross_entropy(forward(s, x0), y0), lr, PARAMS), PARAMS)
    means = class_means(r0.states[-1], x0, y0)
    torch.testing.assert_close(sim.sent[0].fields["logits"]["logits"], means * torch.tensor([1.0, 1.0, 0.0])[:, None])
    assert sim.server.extra["has"].tolist() == [True, True, False]
    torch.testing.assert_close(sim.server.extra["logits"][:2], means[:2])
    assert sim.bytes_up() == sim.algo.bytes_down(sim.server) == 2 * (3 * 4 + 8)  # two held classes
    # round 2, client 1: cross-entropy to the softmax of its class's global logits; class 2 has none, so its rows
    # distill toward their own (detached) logits: no gradient
    _, (r1,) = sim.step([1], batch_size=8)
    x1, y1 = client_xy(data, 1)
    held = y1 < 2

    def loss(s):
        o = forward(s, x1)
        distill = -(means[y1[held]].softmax(1) * F.log_softmax(o[held], 1)).sum(1).sum() / len(y1)
        return F.cross_entropy(o, y1) + lam * distill

    close(r1.states[-1], sgd(sim.initial, loss, lr, PARAMS), PARAMS)
    close(sim.algo.personal_model(sim.server, sim.store, 1), r1.states[-1])
    torch.testing.assert_close(sim.server.extra["logits"], class_means(r1.states[-1], x1, y1))  # this cohort's
    assert sim.server.extra["has"].all()


def test_feddistill_targets_are_pfllibs_three_versions():
    from fedsim.algorithms.feddistill import distill_loss

    torch.manual_seed(0)
    model, (x, y) = Net(), client_xy(tiny_data(sizes=(9,)), 0)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    table, has = torch.randn(3, 3), torch.tensor([True, False, True])
    ctx = {"logits": table, "has": has, "distill_lam": torch.tensor(0.5)}
    o = forward(state, x)
    t = torch.where(has[y][:, None], table[y], o)
    ce = F.cross_entropy(o, y)
    expected = {"softmax": -(t.softmax(1) * F.log_softmax(o, 1)).sum(1).mean(),
                "logits": -(t * F.log_softmax(o, 1)).sum(1).mean(),  # PFLlib's latest: raw logits as the target
                "mse": ((t - o) ** 2).mean()}
    for target, d in expected.items():
        torch.testing.assert_close(distill_loss(target)(model, state, x, y, ctx), ce + 0.5 * d)
    with pytest.raises(FedsimError, match="--distill-target"):
        Config(algo="feddistill", distill_target="kl").validate()


# --- FedCP ----------------------------------------------------------------------------------------------------
CP = "fc.fedcp."


def cp_output(s, x, noisy=True):
    """FedCP's forward on Net: h_p(z ⊙ p) + h_g(z ⊙ g), (p, g) from the policy network (Gumbel noise drawn from
    torch's generator when `noisy`); also z."""
    z = features(s, x)
    context = F.normalize(s[CP + "context"], dim=-1)
    scores = F.relu(F.layer_norm(F.linear(z * context, s[CP + "policy.0.weight"], s[CP + "policy.0.bias"]), (10,),
                                 s[CP + "policy.1.weight"], s[CP + "policy.1.bias"])).unflatten(-1, (2, 5))
    gates = F.gumbel_softmax(scores, tau=1.0, dim=-2) if noisy else F.softmax(scores, dim=-2)
    return (F.linear(z * gates[:, 0], s["fc.weight"], s["fc.bias"])
            + F.linear(z * gates[:, 1], s[CP + "global_head.weight"], s[CP + "global_head.bias"])), z


def mmd_by_the_definition(x, y):
    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (2 * w)) for w in (10, 15, 20, 50))

    n = len(x)
    return sum(k(x[i], x[j]) + k(y[i], y[j]) - 2 * k(x[i], y[j]) for i in range(n) for j in range(n)) / n**2


def test_fedcp_mmd_is_pfllibs_rbf_mmd():
    from fedsim.algorithms.fedcp import mmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 2
    torch.testing.assert_close(mmd(x, y), mmd_by_the_definition(x, y))
    assert abs(float(mmd(x, x))) < 1e-6


def test_fedcp_step_splits_features_between_the_two_heads_and_pulls_them_to_the_global_bases():
    from fedsim.algorithms.fedcp import FedCP

    torch.manual_seed(0)
    data, lr, lam = tiny_data(sizes=(6, 5)), 0.1, 2.0
    sim = Sim(FedCP, Net(), data, lr=lr, cp_lam=lam)
    w0 = sim.initial
    assert set(w0) - set(PARAMS) == {CP + k for k in ("policy.0.weight", "policy.0.bias", "policy.1.weight",
                                                       "policy.1.bias", "global_head.weight", "global_head.bias",
                                                       "context")}
    close({k: w0[CP + "global_head." + k.split(".")[1]] for k in HEAD}, w0, HEAD)  # h_g starts as the head
    trainable = [k for k in w0 if k not in (CP + "global_head.weight", CP + "global_head.bias", CP + "context")]
    _, results = sim.step([0, 1], batch_size=8)
    for r in results:
        (idx,) = batch_order(data, r.client, 1, 8)
        x, y = data.x[idx], data.y[idx]
        torch.manual_seed(rng.keyed_torch_seed(0, 1, r.client))

        def loss(s, x=x, y=y):
            out, z = cp_output(s, x)
            return F.cross_entropy(out, y) + lam * mmd_by_the_definition(z, features(w0, x))

        ref = sgd(w0, loss, lr, trainable)
        close(r.states[-1], ref, trainable)
        # h_g = h_p at the start, so h_p(z ⊙ p) + h_g(z ⊙ g) = h_p(z) + b: the policy gets no gradient (nor in PFLlib)
        assert torch.equal(ref[CP + "policy.0.weight"], w0[CP + "policy.0.weight"])
        stored = sim.store.get(r.client)
        close(stored, {**{k: ref[k] for k in HEAD}, CP + "context": ref["fc.weight"].sum(0)})
        sent = sim.sent[r.client].fields["model"]
        assert not set(sent) & {*HEAD, CP + "context"}
        close(sent, {CP + "global_head.weight": 0.5 * (ref["fc.weight"] + w0["fc.weight"]),
                     CP + "global_head.bias": 0.5 * (ref["fc.bias"] + w0["fc.bias"])},
              [CP + "global_head.weight", CP + "global_head.bias"])
    shared = [k for k in sim.server.model if k not in (*HEAD, CP + "context")]
    close(sim.server.model, mean_of([m.fields["model"] for m in sim.sent.values()], [6, 5], shared), shared)
    # a client is evaluated with the global base, policy and h_g, its own head and context, without noise
    own = sim.algo.personal_model(sim.server, sim.store, 0)
    close(own, {**sim.server.model, **sim.store.get(0)})
    sim.model.eval()
    x, _ = client_xy(data, 0)
    torch.testing.assert_close(torch.func.functional_call(sim.model, own, (x,)), cp_output(own, x, noisy=False)[0])
    sim.step([0], batch_size=8)  # now h_p and h_g differ: the policy learns
    assert not torch.allclose(sim.server.model[CP + "policy.0.weight"], w0[CP + "policy.0.weight"])


def test_fedcp_and_gpfl_need_one_linear_head():
    from fedsim.algorithms.fedcp import FedCP
    from fedsim.algorithms.gpfl import GPFL

    for cls in (FedCP, GPFL):
        with pytest.raises(FedsimError, match=f"{cls.name} needs the head to be one Linear layer"):
            cls.extend_model(Net(), list(PARAMS))


# --- GPFL -----------------------------------------------------------------------------------------------------
GP = "fc.gpfl."


def valve(s, f, context):
    def branch(name):
        h = F.relu(F.linear(context, s[GP + name + ".0.weight"], s[GP + name + ".0.bias"]))
        return F.layer_norm(h, (5,), s[GP + name + ".2.weight"], s[GP + name + ".2.bias"])

    return F.relu(f * (branch("gamma") + 1) + branch("beta"))


def test_gpfl_step_trains_valves_and_embeddings_and_sets_the_clients_inputs():
    from fedsim.algorithms.gpfl import GPFL

    torch.manual_seed(0)
    data, lr, lam, mu = tiny_data(sizes=(6, 9)), 0.1, 0.3, 0.2
    sim = Sim(GPFL, Net(), data, lr=lr, gpfl_lam=lam, gpfl_mu=mu)
    w0 = sim.initial
    decayed = [k for k in sim.algo.keys.params if k.startswith(GP)]
    assert sorted(decayed) == sorted(GP + k for k in ("embedding.weight", "gamma.0.weight", "gamma.0.bias",
                                                       "gamma.2.weight", "gamma.2.bias", "beta.0.weight",
                                                       "beta.0.bias", "beta.2.weight", "beta.2.bias"))
    assert float(w0[GP + "personal_input"].abs().sum()) == float(w0[GP + "generic_input"].abs().sum()) == 0
    _, results = sim.step([0, 1], batch_size=16)
    for r in results:
        x, y = client_xy(data, r.client)

        def loss(s, x=x, y=y):
            f, e = features(s, x), s[GP + "embedding.weight"]
            out = F.linear(valve(s, f, s[GP + "personal_input"]), s["fc.weight"], s["fc.bias"])
            f_g = valve(s, f, s[GP + "generic_input"])
            cosine = F.normalize(f_g, dim=1) @ F.normalize(e, dim=1).T
            return (F.cross_entropy(out, y) + F.cross_entropy(cosine, y)
                    + lam * torch.norm(f_g - w0[GP + "embedding.weight"][y], 2)
                    + mu / 2 * sum((s[k] ** 2).sum() for k in decayed))

        ref = sgd(w0, loss, lr, sim.algo.keys.params)
        close(r.states[-1], ref, sim.algo.keys.params)
        e = ref[GP + "embedding.weight"]
        share = torch.bincount(y, minlength=3).float() / len(y)
        close(sim.store.get(r.client), {**{k: ref[k] for k in HEAD}, GP + "personal_input": share @ e,
                                        GP + "generic_input": e.mean(0)})
    shared = [k for k in w0 if k not in (*HEAD, GP + "personal_input", GP + "generic_input")]
    close(sim.server.model, mean_of([r.states[-1] for r in results], [6, 9], shared), shared)
    # a client is evaluated with the global base and valves, its own head and inputs: head(CoV(f, c_p))
    own = sim.algo.personal_model(sim.server, sim.store, 1)
    x, _ = client_xy(data, 1)
    sim.model.eval()
    torch.testing.assert_close(torch.func.functional_call(sim.model, own, (x,)),
                               F.linear(valve(own, features(own, x), own[GP + "personal_input"]), own["fc.weight"],
                                        own["fc.bias"]))
    assert set(sim.sent[0].fields["model"]) == set(shared) and set(BASE) <= set(shared)


# --- end to end: both executors, stacks, resume, bytes, CLI ---------------------------------------------------
def small(out_dir, **kw):
    base = dict(rounds=4, clients=4, fraction=0.75, local_steps=3, batch_size=16, out_dir=str(out_dir), quiet=True,
                executor="sequential", **SMALL_GENERATOR)
    return Config(**{**base, **kw})


def numbers(csv) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=list(TIME_COLUMNS))


@pytest.mark.parametrize("algo", NEW)
def test_runs_resume_to_the_uninterrupted_numbers_and_vmap_gives_the_sequential_ones(tmp_path, algo):
    fedsim.run(small(tmp_path, algo=algo, name="seq"))
    if algo in ("feddistill", "gpfl"):
        fedsim.run(small(tmp_path, algo=algo, name="vmap", executor="vmap"))
        pd.testing.assert_frame_equal(numbers(tmp_path / "vmap.csv"), numbers(tmp_path / "seq.csv"), atol=1e-5,
                                      rtol=1e-4)
    fedsim.run(small(tmp_path, algo=algo, name="r", rounds=2))
    checkpoint = load_checkpoint(tmp_path / "r.csv")
    assert checkpoint.progress.clients or algo == "fedgen"
    if algo == "fedgen":
        assert checkpoint.progress.server.extra["adam"]["step"] == 2 * 5
    fedsim.run(resume=tmp_path / "r.csv", rounds=4)
    pd.testing.assert_frame_equal(numbers(tmp_path / "r.csv"), numbers(tmp_path / "seq.csv"))


@pytest.mark.parametrize("algo,grid", [("gpfl", {"gpfl_lam": [0.0, 0.5], "gpfl_mu": [0.0, 0.1]}),
                                       ("feddistill", {"distill_lam": [0.2, 2.0]}),
                                       ("fedcp", {"cp_lam": [0.0, 5.0]}), ("fedgen", {"gen_lam": [0.0, 1.0]})])
def test_runs_differing_in_their_pulls_train_together_as_alone(tmp_path, algo, grid):
    runs = expand({"rounds": 2, "clients": 4, "local_steps": 2, "batch_size": 16, "quiet": True, "algo": algo,
                   "out_dir": str(tmp_path / "sweep"), **SMALL_GENERATOR}, grid, "g")
    assert len({stack_key(r.config) for r in runs}) == 1
    run_sweep(runs, "g", str(tmp_path / "sweep"))
    for run in runs:
        fedsim.run(run.config, out_dir=str(tmp_path / "alone"))
        swept, alone = (numbers(tmp_path / where / f"{run.name}.csv") for where in ("sweep", "alone"))
        for c in swept.columns:
            assert swept[c].to_numpy() == pytest.approx(alone[c].to_numpy(), rel=1e-5, abs=1e-7), (run.name, c)
    first, last = (numbers(tmp_path / "sweep" / f"{r.name}.csv") for r in (runs[0], runs[-1]))
    assert not first["train_loss"].equals(last["train_loss"])  # the varied option reached the step


runner = CliRunner()


def train(tmp_path, *args):
    return runner.invoke(app, ["train", "--rounds", "1", "--clients", "3", "--local-steps", "2", "--out-dir",
                               str(tmp_path), "--quiet", "--overwrite", *args])


def test_cli_trains_each_algorithm_with_its_options_and_refuses_what_it_cannot_take(tmp_path):
    for algo, extra in (("fedgen", ["--gen-steps", "3", "--gen-lam", "0.5", "--gen-noise-dim", "8"]),
                        ("feddistill", ["--distill-lam", "0.5", "--distill-target", "mse"]),
                        ("fedcp", ["--cp-lam", "1"]),
                        ("gpfl", ["--gpfl-lam", "0.1", "--gpfl-mu", "0"])):
        result = train(tmp_path, "--algo", algo, *extra)
        assert result.exit_code == 0, result.output
    for args, needle in ((["--algo", "fedgen", "--gen-steps", "-1"], "--gen-steps"),
                         (["--algo", "fedcp", "--freeze-base"], "trains its base"),
                         (["--algo", "gpfl", "--head", "fc1,fc"], "one Linear layer"),
                         (["--algo", "feddistill", "--freeze-base"], "trains its whole model"),
                         (["--algo", "fedcp", "--dp-noise", "1", "--dp-clip", "1"], None)):
        result = train(tmp_path, *args)
        if needle is None:  # FedCP sends only summed fields: DP takes it
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 2 and needle in result.output, result.output


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn-bn", "fedavgcnn", "resnet18"])
@pytest.mark.parametrize("algo", NEW)
def test_each_trains_the_built_in_and_torchvision_models(tmp_path, algo, model):
    result = train(tmp_path, "--algo", algo, "--model", model, "--gen-steps", "3", "--batch-size", "8")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("algo", NEW)
def test_each_takes_the_pfllib_leaderboard_options_on_one_channel_28x28_images(tmp_path, algo):
    """The FMNIST Dir(0.1) column's command (PFLlib's CNN, normalization, 75/25 split, batch 10, lr 0.005)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(400, 1, 28, 28, generator=g), torch.arange(400) % 10
    dataset = fedsim.Dataset.from_tensors(x[:300], y[:300], x[300:], y[300:], name="fmnist-like")
    df = fedsim.run(Config(algo=algo, model="fedavgcnn", normalize="symmetric", client_test_fraction=0.25,
                           batch_size=10, lr=0.005, clients=4, dirichlet=0.1, rounds=2, gen_steps=3,
                           out_dir=str(tmp_path), quiet=True), dataset=dataset)
    assert df["personal_accuracy_mean"].notna().all()
