"""Engine semantics on tiny hand-built models: optimizers, aggregation, BN, FedProx, order, divergence."""

import numpy as np
import torch
from torch import nn

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedprox import FedProx
from fedsim.config import Config
from fedsim.core.hooks import ClientJob, ClientResult, ClientStore, ModelKeys, ServerState
from fedsim.core.state import model_state, weighted_mean
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor, batch_schedule, train_client
from fedsim.engine.optim import OptimizerSpec, clip_by_global_norm
from fedsim.engine.round import run_round, update_server


def tiny_data(sizes=(3, 5, 8), dim=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return ClientData(x, y, torch.arange(n), offsets)


def keys_of(model):
    from fedsim.models import bn_state_keys

    return ModelKeys([k for k, _ in model.named_parameters()], [k for k, _ in model.named_buffers()],
                     list(bn_state_keys(model)))


class BNNet(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.fc1 = nn.Linear(dim, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.fc1(x))))


def test_clip_matches_torch():
    g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}
    clipped = clip_by_global_norm(g, 1.0)
    total = torch.sqrt(sum((v**2).sum() for v in clipped.values()))
    assert abs(float(total) - 1.0) < 1e-5
    assert clip_by_global_norm(g, 100.0)["a"].tolist() == [3.0, 4.0]


def test_weighted_mean_uses_sample_counts_and_keeps_int_buffers_int():
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(6)}
    out = weighted_mean([a, b], [1, 3], ["w", "n"])
    assert out["w"].tolist() == [3.0, 1.0]
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 5


def test_batch_schedule_epochs_and_steps():
    sched = batch_schedule(np.random.default_rng(0), 8, 3, epochs=2, steps=None)
    assert [len(b) for b in sched] == [3, 3, 2, 3, 3, 2]
    assert sorted(np.concatenate(sched[:3]).tolist()) == list(range(8))
    assert len(batch_schedule(np.random.default_rng(0), 8, 3, epochs=1, steps=5)) == 5
    # a lone last sample joins the batch before it (BatchNorm cannot train on one sample)
    assert [len(b) for b in batch_schedule(np.random.default_rng(0), 7, 3, epochs=1, steps=None)] == [3, 4]
    assert [len(b) for b in batch_schedule(np.random.default_rng(0), 1, 3, epochs=1, steps=None)] == [1]


def _round(algo_cls, model, data, cohort, lr=0.1, mu=0.0, momentum=0.0):
    config = Config(mu=mu, momentum=momentum)
    algo = algo_cls(config, keys_of(model))
    initial = model_state(model)
    server = algo.init_server(initial)
    store = ClientStore(algo.personal_initial(initial))
    spec = LocalSpec(OptimizerSpec("sgd", lr, momentum), batch_size=2, epochs=1, seed=0)
    jobs = [algo.client_job(server, store, c) for c in cohort]
    results = SequentialExecutor(model, data, spec).train(algo.phases(), jobs, 1, lr)
    return algo, finish_round(algo, server, store, results), results


def test_fedavg_aggregate_is_sample_weighted_mean_of_client_models():
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), tiny_data()
    _, server, results = _round(FedAvg, model, data, [0, 1, 2])
    sizes = [3, 5, 8]
    for k in ("weight", "bias"):
        expected = sum(r.states[-1][k] * s for r, s in zip(results, sizes, strict=True)) / 16
        torch.testing.assert_close(server.model[k], expected)


def test_results_do_not_depend_on_client_order():
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), tiny_data()
    _, s1, _ = _round(FedAvg, model, data, [0, 1, 2], momentum=0.9)
    _, s2, _ = _round(FedAvg, model, data, [2, 0, 1], momentum=0.9)
    for k in s1.model:
        torch.testing.assert_close(s1.model[k], s2.model[k], rtol=0, atol=1e-7)


def test_fedprox_with_mu_zero_is_exactly_fedavg():
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), tiny_data()
    _, a, _ = _round(FedAvg, model, data, [0, 1, 2])
    _, b, _ = _round(FedProx, model, data, [0, 1, 2], mu=0.0)
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k])


def test_fedprox_step_follows_the_analytic_gradient():
    """One step of FedProx from w: w - lr * (grad CE(w) + mu (w - w_global))."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = tiny_data(sizes=(2,))
    mu, lr = 0.5, 0.1
    algo = FedProx(Config(mu=mu), keys_of(model))
    initial = model_state(model)
    server = algo.init_server(initial)
    start = {k: v + 0.3 for k, v in initial.items()}  # away from w_global, so the prox term matters
    job = ClientJob(0, start, algo.client_context(server, ClientStore({}), 0))
    spec = LocalSpec(OptimizerSpec("sgd", lr), batch_size=2, epochs=1)
    out = train_client(model, data, spec, algo.phases(), job, 1, lr).states[-1]
    w, b = start["weight"].clone().requires_grad_(), start["bias"].clone().requires_grad_()
    ce = nn.functional.cross_entropy(data.x @ w.T + b, data.y)
    gw, gb = torch.autograd.grad(ce, [w, b])
    torch.testing.assert_close(out["weight"], start["weight"] - lr * (gw + mu * 0.3))
    torch.testing.assert_close(out["bias"], start["bias"] - lr * (gb + mu * 0.3))


def test_local_training_runs_bn_in_train_mode_and_aggregates_buffers():
    torch.manual_seed(0)
    model, data = BNNet(), tiny_data(sizes=(4, 6, 8))  # batch 2: no BN batch of one sample
    model.eval()  # the engine must switch to train() itself
    algo, server, results = _round(FedAvg, model, data, [0, 1, 2])
    for r in results:  # train-mode BN updates running stats and counts batches
        assert not torch.allclose(r.states[-1]["bn.running_mean"], torch.zeros(6))
        assert int(r.states[-1]["bn.num_batches_tracked"]) == r.steps[0]
    expected = sum(r.states[-1]["bn.running_mean"] * r.num_samples for r in results) / 18
    torch.testing.assert_close(server.model["bn.running_mean"], expected)
    assert server.model["bn.num_batches_tracked"].dtype == torch.int64
    assert int(server.model["bn.num_batches_tracked"]) == round((4 * 2 + 6 * 3 + 8 * 4) / 18)


def test_evaluation_uses_eval_mode_running_stats():
    from fedsim.engine.evaluate import predict

    torch.manual_seed(0)
    model = BNNet()
    state = model_state(model)
    state["bn.running_mean"] = torch.full((6,), 5.0)
    model.train()
    x, y = torch.randn(4, 4), torch.zeros(4, dtype=torch.long)
    _, correct = predict(model, state, x, y)
    reference = BNNet()
    reference.load_state_dict(state)
    reference.eval()
    assert torch.equal(correct, reference(x).argmax(1) == y)


def test_bn_local_keeps_bn_per_client_and_averages_the_rest():
    torch.manual_seed(0)
    model, data = BNNet(), tiny_data(sizes=(4, 6, 8))
    config = Config(bn="local")
    algo = FedAvg(config, keys_of(model))
    assert set(algo.personal) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                  "bn.num_batches_tracked"}
    initial = model_state(model)
    server = algo.init_server(initial)
    store = ClientStore(algo.personal_initial(initial))
    spec = LocalSpec(OptimizerSpec("sgd", 0.1), batch_size=2, epochs=1)
    round_result = run_round(algo, SequentialExecutor(model, data, spec), server, store, (0, 1), 1, 0.1)
    new, results = round_result.server, round_result.trained
    assert torch.equal(new.model["bn.running_mean"], initial["bn.running_mean"])  # not averaged
    for r in results:
        assert torch.equal(store.get(r.client)["bn.running_mean"], r.states[-1]["bn.running_mean"])
        personal = algo.personal_model(new, store, r.client)
        assert torch.equal(personal["bn.weight"], r.states[-1]["bn.weight"])
        assert torch.equal(personal["fc.weight"], new.model["fc.weight"])
    assert torch.equal(store.get(2)["bn.running_mean"], initial["bn.running_mean"])  # never sampled


def test_client_result_reports_steps_and_samples():
    torch.manual_seed(0)
    _, _, results = _round(FedAvg, nn.Linear(4, 3), tiny_data(), [0, 1, 2])
    assert [r.steps for r in results] == [[1], [2], [4]]  # 3 -> [2+1 joined]; 5 -> [2, 3]; 8 -> 4x2
    assert [r.num_samples for r in results] == [3, 5, 8]
    assert all(isinstance(r, ClientResult) and np.isfinite(r.loss) for r in results)
    assert isinstance(ServerState(model={}).extra, dict)


def finish_round(algo, server, store, results):
    """The server state after `results`: each client's message, the default channel, the server update."""
    return update_server(algo, server, [algo.client_finish(server, store, r) for r in results], 1)[0]
