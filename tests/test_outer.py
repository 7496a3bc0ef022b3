"""Linear weight gradients kept as outer products (vmap executor): the optimizer's numbers, and which layers
may be tapped at all (a weight used anywhere but its own forward must keep its dense gradient)."""

import pytest
import torch
import torch.nn.functional as F
from test_vmap import MLP, _jobs, assert_same, run_both, spec_of, tiny_data
from torch import nn

from fedsim.core.hooks import Phase
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.outer import LinearTaps, OuterProduct, tappable_linears
from fedsim.engine.vmap import VmapExecutor


@pytest.mark.parametrize("spec", [
    OptimizerSpec("sgd", 0.1),
    OptimizerSpec("sgd", 0.1, weight_decay=0.05),
    OptimizerSpec("sgd", 0.1, momentum=0.9),
    OptimizerSpec("sgd", 0.1, momentum=0.9, weight_decay=0.05),
    OptimizerSpec("sgd", 0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    OptimizerSpec("adam", 0.01, weight_decay=0.05),
], ids=["sgd", "wd", "momentum", "momentum-wd", "nesterov-wd", "adam"])
@pytest.mark.parametrize("stack", [(), (3,)], ids=["one", "stacked"])
def test_outer_product_step_equals_the_dense_step(spec, stack):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(*stack, 5, 7, generator=g)
    dense_params, outer_params = {"w": weight.clone()}, {"w": weight.clone()}
    dense_state, outer_state = spec.init(dense_params), spec.init(outer_params)
    for _ in range(3):  # the momentum buffer's first step differs from the later ones
        dy, x = torch.randn(*stack, 4, 5, generator=g), torch.randn(*stack, 4, 7, generator=g)
        extra = torch.randn(*stack, 5, 7, generator=g)  # a penalty's dense gradient beside the outer product
        dense_state = spec.step_(dense_params, {"w": dy.transpose(-1, -2) @ x + extra}, dense_state, 0.1)
        outer_state = spec.step_(outer_params, {"w": OuterProduct(dy, x, extra)}, outer_state, 0.1)
    torch.testing.assert_close(outer_params["w"], dense_params["w"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outer_params["w"], weight)


def test_mlp_under_sgd_trains_every_linear_weight_as_an_outer_product(monkeypatch):
    applied = []
    monkeypatch.setattr(OuterProduct, "add_to_", lambda self, target, alpha, beta=1.0, f=OuterProduct.add_to_:
                        applied.append(tuple(target.shape)) or f(self, target, alpha, beta))
    torch.manual_seed(0)
    model = MLP()
    seq, vec = run_both(model, [Phase()], _jobs(model, lambda i: {}), spec_of())
    assert_same(seq, vec)
    assert {s[1:] for s in applied} == {(8, 6), (4, 8)}  # fc1 and fc, stacked over the clients
    assert not any(m._forward_hooks for m in model.modules())  # the taps are removed after training


def test_adam_forms_the_gradients():
    model = MLP()
    executor = VmapExecutor(model, tiny_data(), spec_of("adam", lr=0.01))
    assert executor._taps(Phase(), dict(model.named_parameters())) is None


class TwiceCalled(nn.Module):
    """fc runs twice per forward: a probe would merge the two calls' output gradients."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc1(torch.tanh(self.fc1(x)))))


class Tied(nn.Module):
    """fc's weight is also read directly (a tied output layer): detaching it would lose that gradient."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(6, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.fc(h) + F.linear(h, self.fc.weight.t())


class Sequence(nn.Module):
    """Linear layers on (rows, tokens, features): the outer product sums over rows and tokens."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(3, 5), nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc1(x.view(len(x), 2, 3))).mean(1))


@pytest.mark.parametrize("model_cls,tapped", [(TwiceCalled, {"fc"}), (Tied, {"fc1"}), (Sequence, {"fc1", "fc"}),
                                              (lambda: nn.Linear(6, 4), {""})],
                         ids=["twice-called", "tied", "tokens", "root-linear"])
def test_only_safely_tappable_layers_are_tapped_and_the_numbers_match(model_cls, tapped):
    torch.manual_seed(0)
    model = model_cls()
    params = dict(model.named_parameters())
    taps = LinearTaps(tappable_linears(model, set(params)))
    stacked = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in params.items()}
    try:
        assert set(taps.probes(model, stacked, {}, torch.randn(2, 5, 6))) == tapped
    finally:
        taps.remove()
    seq, vec = run_both(model, [Phase()], _jobs(model, lambda i: {}), spec_of(momentum=0.9))
    assert_same(seq, vec)


class Centered(nn.Module):
    """Subtracts the batch mean: rows are not independent, so folding clients into one batch would mix them."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc(torch.tanh(h - h.mean(0)))


@pytest.mark.parametrize("model_cls,folded", [(MLP, True), (Sequence, True), (Centered, False), (Tied, False)],
                         ids=["mlp", "tokens", "batch-mean", "weight-read-directly"])
def test_linear_only_models_fold_the_cohort_only_where_that_gives_vmaps_numbers(model_cls, folded):
    """Also: a model that mixes its batch's rows trains on real rows only (no padding), as BatchNorm does."""
    torch.manual_seed(0)
    model = model_cls()
    executor = VmapExecutor(model, tiny_data(), spec_of())
    assert executor.folded == folded
    assert ("folded" in executor.reason) == folded
    assert executor.real_rows_only == (model_cls is Centered)  # its padded rows would enter the batch mean
    seq, vec = run_both(model, [Phase()], _jobs(model, lambda i: {}), spec_of(momentum=0.9, weight_decay=0.01))
    assert_same(seq, vec)
