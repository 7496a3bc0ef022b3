"""Each algorithm against a plain reference loop on tiny models (tensors + autograd, no engine), then a
two-round run of every registered algorithm through `fedsim.run`.

The reference loops use full-batch steps (batch size >= client size), so the engine's batch order does
not matter; one epoch is then one step.
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms import ALGORITHMS, algorithm_class
from fedsim.algorithms.fedavg import FedAvg
from fedsim.config import Config
from fedsim.core.hooks import ClientResult, ClientStore, ModelKeys
from fedsim.core.state import model_state
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round, update_server
from fedsim.errors import FedsimError


# --- tiny models, data and a one-round driver ------------------------------------------------------------
class Net(nn.Module):
    """body -> ReLU -> fc; the head is `fc` (the last Linear)."""

    def __init__(self, dim=4, hidden=5, classes=3):
        super().__init__()
        self.body = nn.Linear(dim, hidden)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))


class BNNet(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.body = nn.Linear(dim, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.body(x))))


def features(state, x):
    return torch.relu(F.linear(x, state["body.weight"], state["body.bias"]))


def forward(state, x):
    """Net's forward on a dict of plain tensors."""
    return F.linear(features(state, x), state["fc.weight"], state["fc.bias"])


def bn_forward(state, x):
    """BNNet's forward in train mode; updates state's running statistics in place, as BatchNorm does."""
    h = F.linear(x, state["body.weight"], state["body.bias"])
    h = F.batch_norm(h, state["bn.running_mean"], state["bn.running_var"], state["bn.weight"], state["bn.bias"],
                     training=True, momentum=0.1)
    return F.linear(torch.relu(h), state["fc.weight"], state["fc.bias"])


def tiny_data(sizes=(3, 5, 8), dim=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, dim, generator=g)
    y = torch.arange(n) % classes  # every client holds several classes
    y = y[torch.randperm(n, generator=g)]
    return ClientData(x, y, torch.arange(n), np.concatenate([[0], np.cumsum(sizes)]))


def client_xy(data, c):
    idx = data.of(c)
    return data.x[idx], data.y[idx]


def keys_of(model, head=False):
    from fedsim.models import bn_state_keys, find_head, split_state_keys

    return ModelKeys([k for k, _ in model.named_parameters()], [k for k, _ in model.named_buffers()],
                     list(bn_state_keys(model)), split_state_keys(model, find_head(model))[1] if head else None)


class Sim:
    """An algorithm with its server state and store, driven one round at a time as the engine does."""

    def __init__(self, cls, model, data, num_clients=None, head=False, **config):
        self.config = Config(**config)
        self.model, self.data = model, data
        cls.extend_model(model, keys_of(model, True).head if cls.needs_head else None)  # as setup does (GPFL's)
        self.algo = cls(self.config, keys_of(model, head or cls.needs_head), num_clients or len(data.offsets) - 1)
        self.algo.attach(model, data)
        self.initial = model_state(model)
        self.server = self.algo.init_server(self.initial)
        self.store = ClientStore(self.algo.personal_initial(self.initial))
        self.round = 0

    def step(self, cohort, batch_size=64, epochs=1, steps=None, momentum=0.0):
        self.round += 1
        lr = self.config.lr
        spec = LocalSpec(OptimizerSpec("sgd", lr, momentum), batch_size, epochs, steps, seed=0)
        jobs = [self.algo.client_job(self.server, self.store, c) for c in cohort]
        result = run_round(self.algo, SequentialExecutor(self.model, self.algo.training_data(self.data), spec),
                           self.server, self.store, cohort, self.round, lr)
        self.server, self.sent = result.server, {m.client: m for m in result.sent}
        return jobs, result.trained

    def bytes_up(self) -> int:
        """Bytes the first client of the last round sent."""
        return self.algo.bytes_up_of(self.server, next(iter(self.sent.values())))


def sgd_step(state, x, y, lr, trainable=None, penalty=None, correction=None):
    """One full-batch SGD step of CE (+ penalty(params)) (+ correction on the gradient) on `trainable`."""
    trainable = [k for k in ("body.weight", "body.bias", "fc.weight", "fc.bias") if trainable is None or k in trainable]
    p = {k: state[k].clone().requires_grad_() for k in trainable}
    loss = F.cross_entropy(forward({**state, **p}, x), y)
    if penalty is not None:
        loss = loss + penalty(p)
    grads = dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True))
    return {**state, **{k: (p[k] - lr * (grads[k] + (correction[k] if correction else 0))).detach() for k in p}}


def mean_of(states, weights, keys):
    total = sum(weights)
    return {k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True)) for k in keys}


def close(a, b, keys=None, **kw):
    for k in keys or a:
        torch.testing.assert_close(a[k], b[k], **kw)


PARAMS = ("body.weight", "body.bias", "fc.weight", "fc.bias")
BASE, HEAD = ("body.weight", "body.bias"), ("fc.weight", "fc.bias")


# --- SCAFFOLD ----------------------------------------------------------------------------------------------
def test_scaffold_with_zero_control_variates_and_one_step_is_fedavg():
    from fedsim.algorithms.scaffold import Scaffold

    torch.manual_seed(0)
    model, data = Net(), tiny_data()
    a, b = Sim(FedAvg, model, data), Sim(Scaffold, model, data)
    a.step([0, 1, 2], batch_size=2, steps=1)
    b.step([0, 1, 2], batch_size=2, steps=1)
    for k in a.server.model:
        assert torch.equal(a.server.model[k], b.server.model[k])


def test_scaffold_control_variates_and_corrected_steps_follow_the_paper():
    from fedsim.algorithms.scaffold import Scaffold

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(3, 5, 8, 4))
    lr, eta, n_clients = 0.1, 0.5, 4
    sim = Sim(Scaffold, model, data, lr=lr, server_lr=eta)
    w0 = sim.initial
    # round 1: c = c_i = 0, clients 0..2 of 4, epochs=2 of full-batch steps (K = 2)
    _, results = sim.step([0, 1, 2], epochs=2)
    ci = {}
    for r in results:
        x, y = client_xy(data, r.client)
        ref = sgd_step(sgd_step(w0, x, y, lr), x, y, lr)
        close(r.states[-1], ref, PARAMS)
        assert r.steps == [2]
        ci[r.client] = {k: (w0[k] - r.states[-1][k]) / (2 * lr) for k in PARAMS}  # option II with c = c_i = 0
        close(sim.store.get(r.client)["c"], ci[r.client])
        close(sim.sent[r.client].fields["dc"], ci[r.client])
    c1 = {k: sum(ci[i][k] for i in ci) / n_clients for k in PARAMS}
    close(sim.server.extra["c"], c1)
    assert all(float(v.abs().sum()) == 0 for v in sim.store.get(3)["c"].values()) and len(sim.store) == 3
    mean = mean_of([r.states[-1] for r in results], [3, 5, 8], PARAMS)
    w1 = {k: w0[k] + eta * (mean[k] - w0[k]) for k in PARAMS}
    close(sim.server.model, w1)
    # round 2: steps use g + c − c_i; client 3 has c_3 = 0
    _, results = sim.step([0, 3], epochs=2)
    dcs = []
    for r in results:
        x, y = client_xy(data, r.client)
        old = ci.get(r.client, {k: torch.zeros_like(w0[k]) for k in PARAMS})
        corr = {k: c1[k] - old[k] for k in PARAMS}
        ref = sgd_step(sgd_step(w1, x, y, lr, correction=corr), x, y, lr, correction=corr)
        close(r.states[-1], ref, PARAMS)
        new = {k: old[k] - c1[k] + (w1[k] - ref[k]) / (2 * lr) for k in PARAMS}
        close(sim.store.get(r.client)["c"], new, atol=1e-4, rtol=1e-4)
        dcs.append({k: new[k] - old[k] for k in PARAMS})
    close(sim.server.extra["c"], {k: c1[k] + sum(d[k] for d in dcs) / n_clients for k in PARAMS},
          atol=1e-4, rtol=1e-4)
    # the control variates travel both ways
    model_bytes = sum(v.numel() * 4 for v in w0.values())
    assert sim.bytes_up() == sim.algo.bytes_down(sim.server) == 2 * model_bytes
    assert sim.algo.personal_model(sim.server, sim.store, 0) is None


def test_scaffold_with_local_bn_keeps_bn_and_control_variates_per_client():
    from fedsim.algorithms.scaffold import Scaffold

    torch.manual_seed(0)
    sim = Sim(Scaffold, BNNet(), tiny_data(), bn="local")
    _, results = sim.step([0, 1], batch_size=3)
    assert "bn.weight" not in sim.server.extra["c"] and "fc.weight" in sim.server.extra["c"]
    for r in results:
        own = sim.algo.personal_model(sim.server, sim.store, r.client)
        assert torch.equal(own["bn.running_mean"], r.states[-1]["bn.running_mean"])
        assert torch.equal(own["fc.weight"], sim.server.model["fc.weight"])


# --- FedNova -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fednova_with_equal_steps_is_fedavg(momentum):
    from fedsim.algorithms.fednova import FedNova

    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(4, 5, 4))
    a, b = Sim(FedAvg, model, data, momentum=momentum), Sim(FedNova, model, data, momentum=momentum)
    a.step([0, 1, 2], batch_size=2, momentum=momentum)  # 2 steps each (5 = 2 + 3: a lone sample joins)
    _, results = b.step([0, 1, 2], batch_size=2, momentum=momentum)
    assert [r.steps for r in results] == [[2], [2], [2]]
    close(a.server.model, b.server.model, atol=1e-6, rtol=1e-5)


def momentum_weight(tau, rho):
    """Total lr-units torch's momentum SGD moves along a constant unit gradient in tau steps."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0, momentum=rho)
    for _ in range(tau):
        p.grad = torch.ones(1)
        opt.step()
    return -float(p.detach())


def test_fednova_with_unequal_steps_normalizes_by_momentum_weighted_steps():
    from fedsim.algorithms.fednova import FedNova, steps_weight

    torch.manual_seed(0)
    rho = 0.9
    for tau in (1, 2, 5):
        assert math.isclose(steps_weight(tau, rho), momentum_weight(tau, rho), rel_tol=1e-6)
        assert steps_weight(tau, 0.0) == tau
    model, data = Net(), tiny_data()
    sim = Sim(FedNova, model, data, momentum=rho)
    _, results = sim.step([0, 1, 2], batch_size=2, momentum=rho)
    assert [r.steps for r in results] == [[1], [2], [4]]
    w, p = sim.initial, [3 / 16, 5 / 16, 8 / 16]
    a = [momentum_weight(1, rho), momentum_weight(2, rho), momentum_weight(4, rho)]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a, strict=True))
    d = {k: sum(pi * (w[k] - r.states[-1][k]) / ai for pi, ai, r in zip(p, a, results, strict=True)) for k in PARAMS}
    close(sim.server.model, {k: w[k] - tau_eff * d[k] for k in PARAMS})
    fedavg = mean_of([r.states[-1] for r in results], [3, 5, 8], PARAMS)
    assert not torch.allclose(sim.server.model["fc.weight"], fedavg["fc.weight"])


def test_fednova_refuses_adam():
    from fedsim.algorithms.fednova import FedNova

    with pytest.raises(FedsimError, match="sgd"):
        FedNova(Config(optimizer="adam"), keys_of(Net()))


# --- server optimizers (hand-built client results) ----------------------------------------------------------
SRV_KEYS = ModelKeys(params=["w"], buffers=["bn.running_mean"], bn=[])
W0 = {"w": torch.tensor([1.0, -2.0, 0.5, 0.0]), "bn.running_mean": torch.tensor([0.0, 1.0])}


def results_from(w, deltas, sizes=(1, 3)):
    """Clients that moved w by `deltas`; their buffers are (i, 2i)."""
    return [ClientResult(i, n, [{"w": w["w"] + d, "bn.running_mean": torch.tensor([float(i), 2.0 * i])}], [1], 0.0)
            for i, (d, n) in enumerate(zip(deltas, sizes, strict=True))]


def server_sim(name, **config):
    algo = algorithm_class(name)(Config(**config), SRV_KEYS, 2)
    return algo, algo.init_server({k: v.clone() for k, v in W0.items()})


def aggregated(algo, server, results):
    """The server state after the clients of `results` send through the default channel."""
    store = ClientStore({})
    return update_server(algo, server, [algo.client_finish(server, store, r) for r in results], 1)[0]


D1 = [torch.tensor([0.4, -0.1, 0.0, 2e-4]), torch.tensor([-0.4, 0.3, 0.1, 2e-4])]
D2 = [torch.tensor([0.1, 0.1, -0.2, 0.0]), torch.tensor([0.2, -0.3, 0.1, 1.0])]


def mean_delta(deltas, sizes=(1, 3)):
    return sum(d * n for d, n in zip(deltas, sizes, strict=True)) / sum(sizes)


def test_fedadam_with_zero_betas_takes_normalized_steps():
    eta, tau = 0.3, 1e-3
    algo, server = server_sim("fedadam", server_lr=eta, server_beta1=0.0, server_beta2=0.0, server_tau=tau)
    server = aggregated(algo, server, results_from(W0, D1))
    delta = mean_delta(D1)
    torch.testing.assert_close(server.model["w"], W0["w"] + eta * delta / (delta.abs() + tau))
    torch.testing.assert_close(server.model["bn.running_mean"], torch.tensor([0.75, 1.5]))  # FedAvg's mean


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_follow_algorithm_2(name):
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-2
    algo, server = server_sim(name, server_lr=eta, server_beta1=b1, server_beta2=b2, server_tau=tau)
    w, m, v = W0["w"].clone(), torch.zeros(4), torch.full((4,), tau**2)
    for deltas in (D1, D2):
        server = aggregated(algo, server, results_from(server.model, deltas))
        delta = mean_delta(deltas)
        m = b1 * m + (1 - b1) * delta
        v = {"fedadam": b2 * v + (1 - b2) * delta**2, "fedadagrad": v + delta**2,
             "fedyogi": v - (1 - b2) * delta**2 * torch.sign(v - delta**2)}[name]
        w = w + eta * m / (v.sqrt() + tau)
        torch.testing.assert_close(server.model["w"], w)
        torch.testing.assert_close(server.extra["v"]["w"], v)
    assert set(server.extra) == {"m", "v"}
    assert algo.personal_model(server, ClientStore({}), 0) is None


def test_fedyogi_and_fedadagrad_first_step():
    eta, b1, b2, tau = 1.0, 0.5, 0.9, 1e-3
    delta = mean_delta(D1)
    m = (1 - b1) * delta
    for name, v in (("fedyogi", tau**2 - (1 - b2) * delta**2 * torch.sign(tau**2 - delta**2)),
                    ("fedadagrad", tau**2 + delta**2)):
        algo, server = server_sim(name, server_lr=eta, server_beta1=b1, server_beta2=b2, server_tau=tau)
        server = aggregated(algo, server, results_from(W0, D1))
        torch.testing.assert_close(server.model["w"], W0["w"] + eta * m / (v.sqrt() + tau))


def test_fedavgm_accumulates_server_momentum_and_reduces_to_fedavg():
    eta, beta = 0.7, 0.9
    algo, server = server_sim("fedavgm", server_lr=eta, server_momentum=beta)
    v, w = torch.zeros(4), W0["w"].clone()
    for deltas in (D1, D2):
        server = aggregated(algo, server, results_from(server.model, deltas))
        v = beta * v + mean_delta(deltas)
        w = w + eta * v
        torch.testing.assert_close(server.model["w"], w)
    algo, server = server_sim("fedavgm", server_lr=1.0, server_momentum=0.0)
    fedavg = aggregated(FedAvg(Config(), SRV_KEYS), server, results_from(W0, D1))
    close(aggregated(algo, server, results_from(W0, D1)).model, fedavg.model)


# --- FedBN -------------------------------------------------------------------------------------------------
def test_fedbn_keeps_bn_per_client_and_averages_the_rest():
    from fedsim.algorithms.fedbn import FedBN

    torch.manual_seed(0)
    data, lr = tiny_data(), 0.1
    sim = Sim(FedBN, BNNet(), data, lr=lr)
    bn = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert set(sim.algo.personal) == bn
    w0 = sim.initial
    _, results = sim.step([0, 1])
    refs = []
    for r in results:
        x, y = client_xy(data, r.client)
        s = {k: v.clone() for k, v in w0.items()}
        p = {k: s[k].requires_grad_() for k in ("body.weight", "body.bias", "bn.weight", "bn.bias", "fc.weight",
                                                 "fc.bias")}
        grads = torch.autograd.grad(F.cross_entropy(bn_forward(s, x), y), list(p.values()))
        ref = {**s, **{k: (p[k] - lr * g).detach() for (k, _), g in zip(p.items(), grads, strict=True)}}
        refs.append(ref)
        own = sim.store.get(r.client)
        close(own, ref, ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"])
        assert int(own["bn.num_batches_tracked"]) == 1
        personal = sim.algo.personal_model(sim.server, sim.store, r.client)
        assert torch.equal(personal["bn.running_var"], own["bn.running_var"])
    shared = ["body.weight", "body.bias", "fc.weight", "fc.bias"]
    close(sim.server.model, mean_of(refs, [3, 5], shared), shared)
    for k in bn:  # the server's BN is never averaged; a client never sampled keeps the initial BN
        assert torch.equal(sim.server.model[k], w0[k]) and torch.equal(sim.store.get(2)[k], w0[k])


def test_fedbn_without_bn_warns_and_is_fedavg():
    from fedsim.algorithms.fedbn import FedBN

    with pytest.warns(UserWarning, match="no BatchNorm"):
        algo = FedBN(Config(), keys_of(Net()))
    assert algo.personal == []


# --- FedPer / FedRep -----------------------------------------------------------------------------------------
def test_fedper_shares_the_base_and_keeps_heads_per_client():
    from fedsim.algorithms.fedper import FedPer

    torch.manual_seed(0)
    data, lr = tiny_data(), 0.2
    sim = Sim(FedPer, Net(), data, lr=lr)
    assert sim.algo.keys.head == list(HEAD) and set(sim.algo.personal) == set(HEAD)
    base = {k: sim.initial[k] for k in BASE}
    heads = {c: {k: sim.initial[k] for k in HEAD} for c in range(3)}
    for cohort in ([0, 1, 2], [0, 1]):
        sim.step(cohort)
        trained = []
        for c in cohort:
            x, y = client_xy(data, c)
            out = sgd_step({**base, **heads[c]}, x, y, lr)
            heads[c] = {k: out[k] for k in HEAD}
            trained.append(out)
        base = mean_of(trained, [data.size(c) for c in cohort], BASE)
        close(sim.server.model, base, BASE)
        for c in range(3):
            close(sim.store.get(c), heads[c])
            close(sim.algo.personal_model(sim.server, sim.store, c), {**base, **heads[c]})
    assert torch.equal(sim.server.model["fc.weight"], sim.initial["fc.weight"])  # the server's head is unused
    assert sim.bytes_up() == sum(sim.initial[k].numel() * 4 for k in BASE)


def test_fedper_freeze_base_trains_only_the_head():
    from fedsim.algorithms.fedper import FedPer

    torch.manual_seed(0)
    sim = Sim(FedPer, Net(), tiny_data(), freeze_base=True)
    jobs, results = sim.step([0, 1])
    for job, r in zip(jobs, results, strict=True):
        close(r.states[-1], job.start, BASE, rtol=0, atol=0)
        assert not torch.equal(r.states[-1]["fc.weight"], job.start["fc.weight"])
    close(sim.server.model, sim.initial, BASE)


def test_fedrep_trains_the_head_with_the_base_frozen_then_the_base_with_the_head_frozen():
    from fedsim.algorithms.fedrep import FedRep

    torch.manual_seed(0)
    data, lr = tiny_data(), 0.2
    sim = Sim(FedRep, Net(), data, lr=lr, head_epochs=2)
    jobs, results = sim.step([0, 2])
    trained = []
    for job, r in zip(jobs, results, strict=True):
        assert r.steps == [2, 1]
        head_phase, base_phase = r.states
        close(head_phase, job.start, BASE, rtol=0, atol=0)  # phase 1: base frozen
        assert not torch.equal(head_phase["fc.weight"], job.start["fc.weight"])
        close(base_phase, head_phase, HEAD, rtol=0, atol=0)  # phase 2: head frozen
        assert not torch.equal(base_phase["body.weight"], head_phase["body.weight"])
        x, y = client_xy(data, r.client)
        ref = sgd_step(sgd_step(sim.initial, x, y, lr, HEAD), x, y, lr, HEAD)
        ref = sgd_step(ref, x, y, lr, BASE)
        close(base_phase, ref, PARAMS)
        close(sim.store.get(r.client), ref, HEAD)
        trained.append(ref)
    close(sim.server.model, mean_of(trained, [3, 8], BASE), BASE)


# --- Ditto -------------------------------------------------------------------------------------------------
def test_ditto_personal_model_is_prox_sgd_and_global_model_is_fedavg():
    from fedsim.algorithms.ditto import Ditto

    torch.manual_seed(0)
    data, lr, lam = tiny_data(), 0.2, 0.5
    sim = Sim(Ditto, Net(), data, lr=lr, lam=lam)
    w = sim.initial
    v = {c: sim.initial for c in range(3)}
    for cohort in ([0, 1], [0]):
        sim.step(cohort, epochs=2)
        trained = []
        for c in cohort:
            x, y = client_xy(data, c)

            def prox(p, w=w):
                return 0.5 * lam * sum(((p[k] - w[k]) ** 2).sum() for k in p)

            v[c] = sgd_step(sgd_step(v[c], x, y, lr, penalty=prox), x, y, lr, penalty=prox)
            trained.append(sgd_step(sgd_step(w, x, y, lr), x, y, lr))
        w = mean_of(trained, [data.size(c) for c in cohort], PARAMS)
        close(sim.server.model, w)
        for c in range(3):
            close(sim.algo.personal_model(sim.server, sim.store, c), v[c])
    assert len(sim.store) == 2 and sim.store.get(2) is sim.store.initial  # never sampled: the initial model


def test_ditto_refuses_local_bn_and_freeze_base_without_a_head():
    from fedsim.algorithms.ditto import Ditto

    with pytest.raises(FedsimError, match="--bn local"):
        Ditto(Config(bn="local"), keys_of(BNNet()))
    with pytest.raises(FedsimError, match="--head"):
        Ditto(Config(freeze_base=True), keys_of(Net()))
    trainable = Ditto(Config(freeze_base=True), keys_of(Net(), head=True)).phases()[0].trainable
    assert trainable == frozenset(HEAD)


# --- FedAS -------------------------------------------------------------------------------------------------
def alignment_objective(state, x, y, protos):
    """Σ over the classes c in (x, y) of MSE(features of class c, prototype c), as PFLlib's loop."""
    f = features(state, x)
    return sum(F.mse_loss(f[y == c], protos[c].expand_as(f[y == c])) for c in y.unique().tolist())


def test_fedas_aligns_the_global_base_to_the_local_prototypes():
    from fedsim.algorithms.fedas import FedAS

    torch.manual_seed(0)
    data, lr = tiny_data(sizes=(9, 6)), 0.1
    sim = Sim(FedAS, Net(), data, lr=lr)
    local = {k: v + 0.3 * torch.randn_like(v) for k, v in sim.initial.items()}  # the client's own model
    sim.store.put(0, local)
    x, y = client_xy(data, 0)
    f = features(local, x)
    protos = torch.stack([f[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(sim.algo.prototypes(local, 0), protos)
    jobs, results = sim.step([0])
    start, (aligned, trained) = jobs[0].start, results[0].states
    close(start, {**sim.initial, **{k: local[k] for k in HEAD}})  # global base, own head
    close(aligned, start, HEAD, rtol=0, atol=0)  # alignment trains the base only
    assert alignment_objective(aligned, x, y, protos) < alignment_objective(start, x, y, protos)
    # one full-batch SGD step of size 0.01 (the code's), whatever --lr is
    p = {k: start[k].clone().requires_grad_() for k in BASE}
    grads = torch.autograd.grad(alignment_objective({**start, **p}, x, y, protos), list(p.values()))
    close(aligned, {k: start[k] - 0.01 * g for k, g in zip(BASE, grads, strict=True)}, BASE)
    close(trained, sgd_step(aligned, x, y, lr), PARAMS)  # then CE on the whole model
    close(sim.store.get(0), trained)  # the client keeps its whole model, and is evaluated with it
    close(sim.algo.personal_model(sim.server, sim.store, 0), trained)


def fisher_trace(state, x, y, batch_size):
    total = 0.0
    for s in range(0, len(x), batch_size):
        p = {k: state[k].clone().requires_grad_() for k in PARAMS}
        nll = -F.log_softmax(forward(p, x[s : s + batch_size]), 1)[torch.arange(len(y[s : s + batch_size])),
                                                                     y[s : s + batch_size]].mean()
        total += float(sum((g**2).sum() for g in torch.autograd.grad(nll, list(p.values()))))
    return total


def test_fedas_weighs_clients_by_their_fisher_trace():
    from fedsim.algorithms.fedas import FedAS

    torch.manual_seed(0)
    data = tiny_data(sizes=(4, 7, 5))
    sim = Sim(FedAS, Net(), data, lr=0.1, batch_size=3)
    _, results = sim.step([0, 1, 2], batch_size=3)
    fim = [fisher_trace(r.states[-1], *client_xy(data, r.client), 3) for r in results]
    for r, f in zip(results, fim, strict=True):
        assert math.isclose(sim.sent[r.client].fields["fisher"], f, rel_tol=1e-5)
    close(sim.server.model, mean_of([r.states[-1] for r in results], fim, BASE), BASE)
    assert torch.equal(sim.server.model["fc.bias"], sim.initial["fc.bias"])
    assert not torch.allclose(sim.server.model["body.weight"],
                              mean_of([r.states[-1] for r in results], [4, 7, 5], BASE)["body.weight"])


# --- every registered algorithm, end to end ------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in ALGORITHMS if algorithm_class(n).vmap_ok and n != "fedbn"])
def test_vmap_executor_gives_the_sequential_numbers(name):
    vmap = pytest.importorskip("fedsim.engine.vmap")
    torch.manual_seed(0)
    model, data = Net(), tiny_data(sizes=(3, 6, 8))
    sims = []
    for executor in (SequentialExecutor, vmap.VmapExecutor):
        sim = Sim(algorithm_class(name), model, data, lr=0.1, lam=0.5, server_lr=0.1)
        spec = LocalSpec(OptimizerSpec("sgd", 0.1, 0.5), batch_size=3, epochs=2, seed=0)
        for r in (1, 2):
            sim.server = run_round(sim.algo, executor(model, data, spec), sim.server, sim.store, (0, 1, 2), r,
                                   0.1).server
        sims.append(sim)
    a, b = sims
    close(a.server.model, b.server.model, atol=1e-6, rtol=1e-5)
    for c in range(3):
        pa, pb = (s.algo.personal_model(s.server, s.store, c) for s in sims)
        assert (pa is None) == (pb is None)
        if pa is not None:
            close(pa, pb, atol=1e-6, rtol=1e-5)


def test_global_algorithms_evaluate_the_global_model():
    for name in ("fedavg", "scaffold", "fednova", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        algo = algorithm_class(name)(Config(), keys_of(Net()), 3)
        initial = model_state(Net())
        assert algo.personal_model(algo.init_server(initial), ClientStore(algo.personal_initial(initial)), 0) is None


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_runs_two_rounds(name, tmp_path):
    import fedsim

    clock = {"speed": "constant:100"} if algorithm_class(name).asynchronous else {}  # they run on the clock
    config = fedsim.Config(algo=name, rounds=2, dataset="digits", model="cnn-bn" if name == "fedbn" else "mlp",
                           out_dir=str(tmp_path), quiet=True, clients=4, local_steps=2, batch_size=32,
                           gen_steps=20, **clock)  # FedGen: not its 1000 generator steps a round (seconds)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no BatchNorm")  # fedbn must get a model with BN
        df = fedsim.run(config)
    assert df["round"].tolist() == [1, 2]
    assert np.isfinite(df["train_loss"]).all() and np.isfinite(df["personal_accuracy_mean"]).all()
    assert (df["bytes_up"] > 0).all()
