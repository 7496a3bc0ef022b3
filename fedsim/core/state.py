"""Model state as a dict of tensors (parameters and buffers), used through `functional_call`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

State = dict[str, "torch.Tensor"]


def model_state(model: torch.nn.Module) -> State:
    """A detached copy of every parameter and buffer, keyed by the plain module's names."""
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    state.update({k: v.detach().clone() for k, v in model.named_buffers()})
    return state


def clone(state: State, keys=None) -> State:
    keys = state.keys() if keys is None else keys
    return {k: state[k].clone() for k in keys}


def weighted_mean(states: list[State], weights, keys) -> State:
    """Sample-weighted mean; integer buffers (e.g. BN's num_batches_tracked) stay integer."""
    import torch

    w = torch.as_tensor(weights, dtype=torch.float64)
    w = (w / w.sum()).tolist()
    out = {}
    for k in keys:
        first = states[0][k]
        acc = torch.zeros_like(first, dtype=torch.float64 if first.dtype == torch.float64 else torch.float32)
        for s, wi in zip(states, w, strict=True):
            acc.add_(s[k].to(acc.dtype), alpha=wi)
        out[k] = acc.round().to(first.dtype) if not first.is_floating_point() else acc.to(first.dtype)
    return out


def num_bytes(state: State, keys) -> int:
    return sum(state[k].numel() * state[k].element_size() for k in keys)


def is_finite(state: State, keys) -> bool:
    return all(bool(state[k].isfinite().all()) for k in keys if state[k].is_floating_point())
