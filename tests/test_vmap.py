"""The vmap executor gives the sequential executor's numbers: unequal client sizes, every optimizer and hook."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedbn import FedBN
from fedsim.algorithms.fedprox import FedProx
from fedsim.config import Config
from fedsim.core.hooks import ClientJob, ClientStore, LinearTerm, ModelKeys, Phase
from fedsim.core.state import model_state
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.optim import GradientTerm, OptimizerSpec
from fedsim.engine.outer import OuterProduct
from fedsim.engine.round import run_round, update_server
from fedsim.engine.vmap import VmapExecutor, vmap_unsupported_reason
from fedsim.models import bn_state_keys, build_model

SIZES = (3, 7, 11, 12, 5)  # batch 5: [3], [5, 2], [5, 6] (a lone last sample joins), [5, 5, 2], [5]
TOL = 1e-5
IMAGE = (1, 4, 4)  # tiny images for the BatchNorm CNNs


def tiny_data(sizes=SIZES, shape=(6,), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    perm = torch.randperm(n, generator=g)  # clients own scattered samples, not ranges
    return ClientData(x, y, perm, np.concatenate([[0], np.cumsum(sizes)]))


class MLP(nn.Module):
    def __init__(self, dim=6, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(dim, 8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc1(x)))


def keys_of(model):
    return ModelKeys([k for k, _ in model.named_parameters()], [k for k, _ in model.named_buffers()],
                     bn_state_keys(model))


def cnn_bn():
    """The built-in cnn-bn (BatchNorm2d after each conv) on 1x4x4 images: 88k parameters."""
    return build_model("cnn-bn", IMAGE, 4)


class BNNet(nn.Module):
    def __init__(self, momentum=0.1):
        super().__init__()
        self.fc1, self.bn, self.fc = nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn(self.fc1(x)))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the tensor's scale."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def run_both(model, phases, jobs_fn, spec, lr=0.1, chunk=None, round=1, data=None):
    data = tiny_data() if data is None else data
    seq = SequentialExecutor(model, data, spec).train(phases, jobs_fn(), round, lr)
    vec = VmapExecutor(model, data, spec, chunk=chunk).train(phases, jobs_fn(), round, lr)
    return seq, vec


def assert_same(seq, vec, tol=TOL) -> float:
    worst = 0.0
    for a, b in zip(seq, vec, strict=True):
        assert (a.client, a.num_samples, a.steps, a.lr) == (b.client, b.num_samples, b.steps, b.lr)
        assert abs(a.loss - b.loss) <= tol * max(abs(a.loss), 1e-6)
        assert abs(a.last_finite_loss - b.last_finite_loss) <= tol * max(abs(a.last_finite_loss), 1e-6)
        assert len(a.states) == len(b.states)
        for sa, sb in zip(a.states, b.states, strict=True):
            assert sa.keys() == sb.keys()
            for k in sa:
                assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape
                worst = max(worst, rel_diff(sb[k], sa[k]))
    assert worst < tol, worst
    return worst


def algo_round(algo_cls, model, spec, config=None, cohort=(0, 1, 2, 3, 4), chunk=None, data=None):
    """One round through the algorithm's own jobs and aggregation, both executors; returns their results."""
    algo = algo_cls(config or Config(), keys_of(model))
    initial = model_state(model)
    server = algo.init_server(initial)
    store = ClientStore(algo.personal_initial(initial))
    seq, vec = run_both(model, algo.phases(), lambda: [algo.client_job(server, store, c) for c in cohort], spec,
                        chunk=chunk, data=data)
    worst = assert_same(seq, vec)
    a, b = (update_server(algo, server, [algo.client_finish(server, store, r) for r in res], 1)[0].model
            for res in (seq, vec))
    for k in a:
        worst = max(worst, rel_diff(b[k], a[k]))
    assert worst < TOL, worst
    return seq, vec


def spec_of(name="sgd", lr=0.1, batch=5, **kw):
    local = {k: kw.pop(k) for k in ("epochs", "steps", "clip") if k in kw}
    return LocalSpec(OptimizerSpec(name, lr, **kw), batch_size=batch, seed=3, **local)


@pytest.mark.parametrize("spec", [
    spec_of(),
    spec_of(momentum=0.9),
    spec_of(momentum=0.9, nesterov=True, weight_decay=0.01),
    spec_of("adam", lr=0.01, weight_decay=0.01),
    spec_of("adamw", lr=0.01, weight_decay=0.1),
    spec_of(clip=0.05),
    spec_of(momentum=0.5, clip=0.3, epochs=3),
    spec_of(steps=4),  # more steps than the 3-sample client has batches: epochs roll over
    spec_of(batch=100),  # one partial batch per client
], ids=["sgd", "momentum", "nesterov-wd", "adam", "adamw", "clip", "epochs3", "steps4", "big-batch"])
@pytest.mark.parametrize("model_fn", [lambda: nn.Linear(6, 4), MLP], ids=["linear", "mlp"])
def test_fedavg_round_matches_sequential(spec, model_fn):
    torch.manual_seed(0)
    algo_round(FedAvg, model_fn(), spec)


def test_fedprox_matches_sequential():
    torch.manual_seed(0)
    algo_round(FedProx, MLP(), spec_of(momentum=0.9, epochs=2), Config(mu=0.5))


@pytest.mark.parametrize("spec", [spec_of(), spec_of(weight_decay=0.05), spec_of(momentum=0.9), spec_of(clip=0.05),
                                  spec_of("adam", lr=0.01)], ids=["sgd", "sgd-wd", "momentum", "clip", "adam"])
def test_linear_term_matches_sequential(spec):
    """weight·(w − center) + shift with a weight and a shift per client and a center every job shares: plain SGD
    adds it inside its update (on the outer products of the Linear layers), the others form it."""
    torch.manual_seed(0)
    model = MLP()
    center = {k: v + 0.2 for k, v in model_state(model).items()}
    shift = {i: {k: torch.randn(v.shape) * 0.1 for k, v in center.items() if k != "fc.bias"} for i in range(5)}
    ctx = lambda i: {"w": torch.tensor(0.3 * i), "center": center, "shift": shift[i]}  # noqa: E731
    phases = [Phase(linear_term=LinearTerm(weight="w", center="center", shift="shift"))]
    seq, vec = run_both(model, phases, _jobs(model, ctx, shift=0.1), spec)
    assert_same(seq, vec)
    plain = SequentialExecutor(model, tiny_data(), spec).train([Phase()], _jobs(model, ctx, shift=0.1)(), 1, 0.1)
    assert rel_diff(seq[3].states[-1]["fc.weight"], plain[3].states[-1]["fc.weight"]) > 1e-3  # it did something


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_linear_term_inside_the_update_equals_the_formed_term(weight_decay):
    """SGD's in-place term (a lerp; with weight decay, one scaled pass) gives the step on the formed gradient."""
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 5, 4, generator=g), "b": torch.randn(3, 5, generator=g)}
    term = GradientTerm(torch.tensor([0.0, 0.5, 2.0]), {"w": torch.randn(5, 4, generator=g)},
                        {"w": torch.randn(3, 5, 4, generator=g), "b": torch.randn(3, 5, generator=g)})

    def grads():
        return {"w": OuterProduct(torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 4, generator=g)),
                "b": torch.randn(3, 5, generator=g)}

    spec = OptimizerSpec("sgd", 0.1, weight_decay=weight_decay)
    inside, formed = ({k: v.clone() for k, v in params.items()} for _ in range(2))
    g.manual_seed(1)
    spec.step_(inside, grads(), {"step": 0}, 0.1, term)
    g.manual_seed(1)
    spec.step_(formed, term.added_to(grads(), formed), {"step": 0}, 0.1)
    for k in params:
        torch.testing.assert_close(inside[k], formed[k], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(inside[k], params[k])


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunks_give_the_numbers_of_the_whole_cohort(chunk):
    torch.manual_seed(0)
    model, spec = MLP(), spec_of("adam", lr=0.01)
    algo = FedAvg(Config(), keys_of(model))
    server, store = algo.init_server(model_state(model)), ClientStore({})
    jobs = lambda: [algo.client_job(server, store, c) for c in (3, 0, 4, 2, 1)]  # noqa: E731
    data = tiny_data()
    whole = VmapExecutor(model, data, spec).train(algo.phases(), jobs(), 2, 0.01)
    part = VmapExecutor(model, data, spec, chunk=chunk).train(algo.phases(), jobs(), 2, 0.01)
    assert [r.client for r in part] == [3, 0, 4, 2, 1]
    assert_same(whole, part, tol=1e-6)


def _jobs(model, ctx_fn, cohort=(0, 1, 2, 3, 4), shift=0.0):
    start = {k: v + shift for k, v in model_state(model).items()}
    return lambda: [ClientJob(c, {k: v.clone() for k, v in start.items()}, ctx_fn(c)) for c in cohort]


def test_scaffold_like_correction_matches_sequential():
    """g - c_i + c with a per-client c_i (stacked) and a server c shared by every job (unbatched)."""
    torch.manual_seed(0)
    model = MLP()
    shapes = {k: v.shape for k, v in model.named_parameters()}
    c = {k: torch.randn(s) * 0.1 for k, s in shapes.items()}
    ci = {i: {k: torch.randn(s) * 0.1 for k, s in shapes.items()} for i in range(5)}

    def correction(grads, ctx):
        return {k: g - ctx["c_i"][k] + ctx["c"][k] for k, g in grads.items()}

    seq, vec = run_both(model, [Phase(correction=correction)], _jobs(model, lambda i: {"c": c, "c_i": ci[i]}),
                        spec_of(momentum=0.9))
    assert_same(seq, vec)
    plain = VmapExecutor(model, tiny_data(), spec_of(momentum=0.9)).train(
        [Phase()], _jobs(model, lambda i: {})(), 1, 0.1)
    assert rel_diff(vec[0].states[-1]["fc.weight"], plain[0].states[-1]["fc.weight"]) > 1e-3  # it did something


def test_frozen_parameters_stay_and_match_sequential():
    torch.manual_seed(0)
    model = MLP()
    head = frozenset({"fc.weight", "fc.bias"})
    seq, vec = run_both(model, [Phase(trainable=head)], _jobs(model, lambda i: {}), spec_of("adam", lr=0.01))
    assert_same(seq, vec)
    start = model_state(model)
    for r in vec:
        assert torch.equal(r.states[-1]["fc1.weight"], start["fc1.weight"])
        assert not torch.equal(r.states[-1]["fc.weight"], start["fc.weight"])


def test_two_phases_head_then_base_match_sequential():
    """FedRep-like: head epochs, then the base; different trainable sets and epoch counts per phase."""
    torch.manual_seed(0)
    model = MLP()
    phases = [Phase(trainable=frozenset({"fc.weight", "fc.bias"}), epochs=2),
              Phase(trainable=frozenset({"fc1.weight", "fc1.bias"}))]
    seq, vec = run_both(model, phases, _jobs(model, lambda i: {}), spec_of(momentum=0.9, clip=1.0))
    assert [r.steps for r in vec] == [[2, 1], [4, 2], [4, 2], [6, 3], [2, 1]]
    assert_same(seq, vec)


def test_personal_model_phase_from_ctx_matches_sequential():
    """Ditto-like: the global phase, then a phase that starts from a per-client personal model in ctx."""
    torch.manual_seed(0)
    model = MLP()
    glob = model_state(model)
    personal = {i: {k: v + 0.05 * (i + 1) for k, v in glob.items()} for i in range(5)}
    def prox(params, ctx):
        return 0.15 * sum(((p - ctx["global"][k]) ** 2).sum() for k, p in params.items())

    phases = [Phase(), Phase(start="personal", penalty=prox)]
    seq, vec = run_both(model, phases, _jobs(model, lambda i: {"personal": personal[i], "global": glob}),
                        spec_of(momentum=0.9))
    assert_same(seq, vec)


def test_custom_loss_sees_only_real_rows():
    """A phase's own loss gets no padding: steps with partial batches run per batch size."""
    torch.manual_seed(0)
    model = MLP()
    seen = set()

    def loss(model, state, x, y, ctx):
        seen.add(x.shape[-2])
        out = torch.func.functional_call(model, state, (x,))
        return nn.functional.cross_entropy(out, y, label_smoothing=0.1) + 0.01 * out.pow(2).mean()

    seq, vec = run_both(model, [Phase(loss=loss)], _jobs(model, lambda i: {}), spec_of(momentum=0.9, epochs=2))
    assert_same(seq, vec)
    assert {2, 3, 5, 6} <= seen


@pytest.mark.parametrize("model_fn", [
    cnn_bn,
    lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 4)),
], ids=["cnn-bn", "bn-no-running-stats"])
def test_batchnorm_round_matches_sequential_parameters_and_buffers(model_fn):
    """BatchNorm sees only real rows (the clients' last batches, 3, 2, 6, 2 and 5 rows, differ), and each
    client's running statistics and batch count come back as the sequential executor leaves them."""
    torch.manual_seed(0)
    model = model_fn()
    start = model_state(model)
    seq, vec = algo_round(FedAvg, model, spec_of(momentum=0.9), data=tiny_data(shape=IMAGE))
    for a, b in zip(seq, vec, strict=True):
        for k, v in b.states[-1].items():
            if k.endswith("num_batches_tracked"):
                assert v.dtype == torch.int64 and torch.equal(v, a.states[-1][k]) and int(v) == sum(b.steps)
            elif k.endswith(("running_mean", "running_var")):
                assert not torch.equal(v, start[k])


def test_fedbn_two_rounds_match_sequential():
    """FedBN keeps BN layers with each client: round 2 starts clients 0, 1, 3 from their round-1 BN state."""
    torch.manual_seed(0)
    model, data, spec = cnn_bn(), tiny_data(shape=IMAGE), spec_of(momentum=0.9)
    initial = model_state(model)
    finals = []
    for executor in (SequentialExecutor(model, data, spec), VmapExecutor(model, data, spec)):
        algo = FedBN(Config(), keys_of(model))
        server, store = algo.init_server(initial), ClientStore(algo.personal_initial(initial))
        for r, cohort in enumerate([(0, 1, 3), (0, 1, 2, 3, 4)], start=1):
            server = run_round(algo, executor, server, store, cohort, r, 0.1).server
        finals.append([server.model, *(store.get(c) for c in range(5))])
    assert {"bn1.running_mean", "bn2.num_batches_tracked"} <= set(algo.personal)
    for a, b in zip(*finals, strict=True):
        for k in a:
            assert a[k].dtype == b[k].dtype and rel_diff(b[k], a[k]) < TOL, k
    assert [int(s["bn1.num_batches_tracked"]) for s in finals[1][1:]] == [1 + 1, 2 + 2, 2, 3 + 3, 1]  # steps


def test_results_keep_the_jobs_order_and_do_not_alias():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    res = VmapExecutor(model, tiny_data(), spec_of()).train([Phase()], _jobs(model, lambda i: {}, (2, 0, 3))(), 1, 0.1)
    assert [r.client for r in res] == [2, 0, 3]
    w = res[0].states[-1]["weight"]
    assert w.storage_offset() == 0 and w.untyped_storage().nbytes() == w.numel() * w.element_size()


def test_unsupported_models_and_algorithms_have_a_reason():
    class NoVmap(FedAvg):
        name = "fedas-like"
        vmap_ok = False

    assert vmap_unsupported_reason(BNNet(), FedAvg(Config(), keys_of(BNNet()))) is None
    assert vmap_unsupported_reason(cnn_bn(), FedBN(Config(), keys_of(cnn_bn()))) is None
    assert "momentum=None" in vmap_unsupported_reason(BNNet(momentum=None))
    assert vmap_unsupported_reason(nn.BatchNorm1d(8, momentum=None, track_running_stats=False)) is None
    assert "dropout" in vmap_unsupported_reason(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5)))
    assert "dropout" in vmap_unsupported_reason(nn.Sequential(BNNet(), nn.Dropout(0.5)))
    assert vmap_unsupported_reason(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.0))) is None
    assert "vmap_ok" in vmap_unsupported_reason(MLP(), NoVmap(Config(), keys_of(MLP())))
    assert vmap_unsupported_reason(MLP(), FedProx(Config(), keys_of(MLP()))) is None


def test_run_end_to_end_vmap_matches_sequential(tmp_path):
    import fedsim

    curves = {}
    for ex in ("sequential", "vmap"):
        df = fedsim.run(fedsim.Config(dataset="digits", model="mlp", rounds=5, executor=ex, out_dir=str(tmp_path),
                                      name=ex, quiet=True, device="cpu"))
        curves[ex] = 100 * df["test_accuracy"].to_numpy()
    assert len(curves["vmap"]) == 5
    assert np.abs(curves["vmap"] - curves["sequential"]).max() <= 0.2, curves


def test_batchnorm_conv_model_end_to_end_vmap_matches_sequential(tmp_path):
    import json

    import fedsim

    losses = {}
    for ex in ("sequential", "vmap"):
        df = fedsim.run(fedsim.Config(dataset="digits", model="cnn-bn", rounds=1, fraction=0.3, local_steps=2,
                                      executor=ex, out_dir=str(tmp_path), name=ex, quiet=True, device="cpu"))
        losses[json.loads((tmp_path / f"{ex}.json").read_text())["executor"]["name"]] = df["test_loss"].iloc[-1]
    assert losses.keys() == {"sequential", "vmap"}
    assert abs(losses["vmap"] - losses["sequential"]) <= TOL * losses["sequential"], losses


@pytest.mark.parametrize("model,shape,executor", [
    ("mlp", (1, 8, 8), "vmap"), ("cnn", (1, 8, 8), "vmap"), ("cnn-bn", (1, 8, 8), "vmap"),  # Linear-heavy
    ("resnet18", (3, 8, 8), "sequential"),  # convolutions hold nearly all the weights
])
def test_auto_executor_on_cpu_keeps_convolution_heavy_models_sequential(model, shape, executor):
    from fedsim.engine.executors import make_executor

    net = build_model(model, shape, 4)
    data = tiny_data(shape=shape)
    spec = LocalSpec(OptimizerSpec("sgd", 0.1), batch_size=4)
    chosen = make_executor("auto", net, data, spec, FedAvg(Config(), keys_of(net)))
    assert chosen.name == executor
    if executor == "sequential":
        assert "convolutions hold most" in chosen.reason and "--executor vmap" in chosen.reason
    assert make_executor("vmap", net, data, spec, FedAvg(Config(), keys_of(net))).name == "vmap"


@pytest.mark.parametrize("name,kw", [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", {"weight_decay": 0.01}), ("adamw", {"weight_decay": 0.1}),
])
def test_in_place_optimizer_step_matches_torch_optim(name, kw):
    """The vmap executor's in-place (foreach) step: torch.optim's numbers, on a stack of clients."""
    torch.manual_seed(0)
    p = torch.randn(3, 5, requires_grad=True)  # 3 clients stacked: elementwise rules, so one tensor serves
    grads = [torch.randn(3, 5) for _ in range(4)]
    ref = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]([p], lr=0.1, **kw)
    spec = OptimizerSpec(name, 0.1, **kw)
    params = {"p": p.detach().clone()}
    state = spec.init(params)
    for g in grads:
        p.grad = g.clone()
        ref.step()
        state = spec.step_(params, {"p": g.clone()}, state, 0.1)
    torch.testing.assert_close(params["p"], p.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,kw,own", [
    ("sgd", {}, {}), ("sgd", {"weight_decay": 0.01}, {}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, {}),
    ("sgd", {}, {"weight_decay": [0.0, 0.01, 0.1]}),
    ("sgd", {}, {"momentum": [0.0, 0.5, 0.9], "weight_decay": [0.0, 0.01, 0.1]}),
    ("adam", {}, {"weight_decay": [0.0, 0.01, 0.1]}), ("adamw", {"weight_decay": 0.1}, {}),
], ids=["sgd", "sgd-wd", "nesterov-wd", "sgd-own-wd", "sgd-own-momentum-wd", "adam-own-wd", "adamw"])
def test_optimizer_numbers_per_stacked_client_give_each_clients_own_steps(name, kw, own):
    """Runs of a sweep with other learning rates (and momentum, weight decay): each as a (K,) tensor steps client
    k as its own numbers alone would."""
    g = torch.Generator().manual_seed(0)
    lrs = [0.05, 0.1, 0.3]
    w, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)
    steps = [(torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 4, generator=g), torch.randn(3, 5, generator=g))
             for _ in range(3)]
    term = GradientTerm(torch.tensor(0.2), {"w": torch.randn(5, 4, generator=g)}, {})
    spec = OptimizerSpec(name, 0.1, **kw)

    def train(params, clients, lr, numbers):
        state = spec.init(params, numbers.get("momentum"))
        for dy, x, gb in steps:
            grads = {"w": OuterProduct(dy[clients], x[clients]), "b": gb[clients]}
            state = spec.step_(params, grads, state, lr, term, **numbers)
        return params

    stacked = train({"w": w.clone(), "b": b.clone()}, slice(None), torch.tensor(lrs),
                    {key: torch.tensor(v) for key, v in own.items()})
    for k, lr in enumerate(lrs):
        alone = train({"w": w[k : k + 1].clone(), "b": b[k : k + 1].clone()}, slice(k, k + 1), lr,
                      {key: v[k] for key, v in own.items()})
        for key in alone:
            torch.testing.assert_close(stacked[key][k : k + 1], alone[key], rtol=1e-5, atol=1e-6)


def test_global_torch_generator_is_left_as_the_sequential_executor_leaves_it():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    states = []
    for executor in (SequentialExecutor, VmapExecutor):
        executor(model, tiny_data(), spec_of()).train([Phase()], _jobs(model, lambda i: {}, (2, 0, 3))(), 1, 0.1)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


@pytest.mark.skipif(not os.environ.get("FEDSIM_SLOW_TESTS"), reason="torch.compile takes minutes on a small CPU")
@pytest.mark.parametrize("model_fn,data_fn", [
    (MLP, tiny_data),
    # equal batch sizes until only client 4 is left: compiled steps update BN buffers of 5, 3 and 1 clients
    (cnn_bn, lambda: tiny_data(sizes=(10, 15, 15, 10, 17), shape=IMAGE)),
], ids=["mlp", "cnn-bn"])
def test_compiled_step_gives_the_same_numbers(model_fn, data_fn):
    torch.manual_seed(0)
    model = model_fn()
    data, spec = data_fn(), spec_of(momentum=0.9)
    jobs = _jobs(model, lambda i: {})
    seq = SequentialExecutor(model, data, spec).train([Phase()], jobs(), 1, 0.1)
    executor = VmapExecutor(model, data, spec, compile=True)
    for r in (1, 1):  # the second round reuses the compiled step
        assert_same(seq, executor.train([Phase()], jobs(), r, 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
@pytest.mark.parametrize("model_fn,shape,spec", [
    (MLP, (6,), spec_of(momentum=0.9)),  # Linear weights as outer products
    (MLP, (6,), spec_of("adam", lr=0.01, clip=0.3)),  # formed gradients, clipping
    (cnn_bn, IMAGE, spec_of(momentum=0.9)),  # grouped convolutions, BatchNorm once per batch size
], ids=["mlp-sgd", "mlp-adam-clip", "cnn-bn"])
def test_cuda_vmap_matches_sequential(model_fn, shape, spec, monkeypatch):
    # cuDNN's default TF32 convolutions keep 10 mantissa bits, and a grouped convolution may pick another
    # algorithm than a plain one: off, so that the CPU's tolerance applies
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = model_fn().cuda()
    cpu = tiny_data(shape=shape)
    data = ClientData(cpu.x.cuda(), cpu.y.cuda(), cpu.indices.cuda(), cpu.offsets)
    seq, vec = run_both(model, [Phase()], _jobs(model, lambda i: {}), spec, data=data)
    assert_same(seq, vec)


def test_compile_time_is_reported_apart(tmp_path):
    import json

    import fedsim

    for compiled in (True, False):
        fedsim.run(fedsim.Config(dataset="digits", rounds=1, fraction=0.3, local_steps=2, compile=compiled,
                                 out_dir=str(tmp_path), name=str(compiled), quiet=True, device="cpu"))
        summary = json.loads((tmp_path / f"{compiled}.json").read_text())["summary"]
        if compiled:
            assert 0 < summary["compile_seconds"] <= summary["elapsed_seconds"]
        else:
            assert "compile_seconds" not in summary
