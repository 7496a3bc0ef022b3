"""Linear-layer weight gradients as outer products, applied by the optimizer without ever being formed.

The gradient of a Linear layer's weight over a batch is dY^T X: the layer's output gradient (rows x out)
times its input (rows x in), an outer product of inner dimension `rows` (10 at batch 10). Formed, it is a
fresh weight-sized tensor per client and step, written by one kernel and read back by the optimizer; for a
stacked cohort (K clients' 784x200 first layers: 6.3 MB) that memory traffic, not arithmetic, was most of
a step on the CPU. Kept as its factors, SGD adds it to the weights in place in one pass (`baddbmm_`).

`LinearTaps` gets the factors during the forward pass: a forward hook on each tapped nn.Linear records
the layer's input X and adds a zero "probe" to its output, so that the gradient with respect to the probe
is dY. The weight itself is detached from the data loss, so autograd forms no weight gradient; a penalty
on the weight (FedProx) still reaches it, as a dense term beside the outer product.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class OuterProduct:
    """A weight gradient held as factors: sum over rows of dy[r]^T x[r] (+ `dense`, e.g. a penalty's gradient).

    dy is (..., rows, out) and x (..., rows, in): the leading dimensions are the stacked clients, if any.
    """

    dy: torch.Tensor
    x: torch.Tensor
    dense: torch.Tensor | None = None

    def add_to_(self, target: torch.Tensor, alpha, beta: float = 1.0) -> None:
        """target = beta * target + alpha * gradient, in place, in one pass over the (..., out, in) target.
        `alpha` is a number, or one per stacked client (a (K,) tensor: it scales their dy, which is small)."""
        out, inp = target.shape[-2:]
        rows = self.dy.shape[-2]
        flat = target.view(-1, out, inp)
        dy = self.dy.reshape(-1, rows, out)
        if isinstance(alpha, torch.Tensor):
            dy = dy * alpha.view(-1, 1, 1)
        flat.baddbmm_(dy.transpose(1, 2), self.x.reshape(-1, rows, inp), beta=beta,
                      alpha=1.0 if isinstance(alpha, torch.Tensor) else alpha)
        if self.dense is not None:
            if isinstance(alpha, torch.Tensor):
                target.addcmul_(self.dense, alpha.view(-1, *[1] * (target.dim() - 1)))
            else:
                target.add_(self.dense, alpha=alpha)

    def full(self) -> torch.Tensor:
        """The gradient as a dense tensor (for optimizers that need it elementwise, like Adam)."""
        g = self.dy.transpose(-1, -2) @ self.x
        return g if self.dense is None else g + self.dense


def weight_key(module_name: str) -> str:
    """The state key of a module's weight ("weight" for the root module)."""
    return f"{module_name}.weight" if module_name else "weight"


def tappable_linears(model: nn.Module, trainable: set[str]) -> dict[str, nn.Linear]:
    """The nn.Linear modules whose weight gradient can be taken as an outer product: a trainable weight of its
    own (not tied to another module's), used as F.linear(x, weight) on the module's input."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and weight_key(name) in trainable and owners[id(m.weight)] == 1}


class LinearTaps:
    """Forward hooks on `linears` that record each layer's input and add a probe to its output (see module doc).

    The hooks do nothing outside `record()`. Layers not called exactly once per forward pass, or whose weight
    is also used outside it, cannot be tapped this way; `probes` finds them by a dry run and leaves them out.
    """

    def __init__(self, linears: dict[str, nn.Linear]):
        self.linears = linears
        self._probes: dict | None = None
        self._inputs: dict = {}
        self._calls: dict | None = None
        self._shapes: dict = {}
        self._probes_by_shape: dict = {}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name):
        def hook(module, args, output):
            if self._calls is not None:  # dry run: count calls, note the output's shape and dtype
                self._calls[name] = (self._calls.get(name, (0,))[0] + 1, output.shape, output.dtype)
                return None
            if self._probes is None or name not in self._probes:
                return None
            self._inputs[name] = args[0]
            return output + self._probes[name]
        return hook

    def probes(self, model: nn.Module, params: dict, rest: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zero probes for K stacked clients' batches x (K, rows, ...), which autograd differentiates with respect to.

        Which layers, and their output shapes, come from a dry run of the first client (cached per batch shape)
        on copies of its buffers, so that nothing it holds changes. A layer is tapped only if its forward ran
        once and its weight entered exactly one torch call (that forward's F.linear): a weight also read
        elsewhere (tied, or used directly by the model's code) would lose that use's gradient when detached."""
        key = tuple(x.shape[1:])
        if key not in self._shapes:
            state = {**{k: v[0] for k, v in params.items()}, **{k: v[0].clone() for k, v in rest.items()}}
            weights = {id(state[weight_key(name)]): name for name in self.linears}
            self._calls = {}
            try:
                with torch.no_grad(), _CountUses(weights) as uses:
                    torch.func.functional_call(model, state, (x[0],))
                self._shapes[key] = {n: (shape, dtype) for n, (calls, shape, dtype) in self._calls.items()
                                     if calls == 1 and uses.counts.get(n) == 1}
            finally:
                self._calls = None
        if x.shape not in self._probes_by_shape:  # never written (autograd.grad fills no .grad): reused
            self._probes_by_shape[x.shape] = {
                name: torch.zeros((len(x), *shape), device=x.device, dtype=dtype, requires_grad=True)
                for name, (shape, dtype) in self._shapes[key].items()}
        return self._probes_by_shape[x.shape]

    @contextmanager
    def record(self, probes: dict):
        """Within: tapped layers add `probes[name]` to their output; yields the dict their inputs land in."""
        inputs = {}
        self._probes, self._inputs = probes, inputs
        try:
            yield inputs
        finally:  # nothing recorded stays on self (under torch.compile, tensors on self would leak from the graph)
            self._probes, self._inputs = None, {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _CountUses(TorchFunctionMode):
    """Counts, per watched tensor (by id), the torch calls that take it as an argument."""

    def __init__(self, watched: dict[int, str]):
        super().__init__()
        self.watched, self.counts = watched, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_flatten((args, kwargs))[0]:
            name = self.watched.get(id(a)) if isinstance(a, torch.Tensor) else None
            if name is not None:
                self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **kwargs)
