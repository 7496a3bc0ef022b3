"""Client optimizers as one in-place step over dicts of tensors (params, grads, optimizer state).

The same step serves one client (sequential executor) and a stacked cohort (vmap executor), with the
numbers of torch.optim's SGD/Adam/AdamW. State is re-created each round, as clients in FedAvg start
every round from a fresh optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsim.errors import FedsimError

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise FedsimError(f"unknown optimizer {self.name!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.nesterov and self.momentum <= 0:
            raise FedsimError("--nesterov needs --momentum > 0")

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        if self.name == "sgd":
            return {"step": 0, "buf": {k: torch.zeros_like(p) for k, p in params.items()}} \
                if self.momentum else {"step": 0}
        return {"step": 0, "m": {k: torch.zeros_like(p) for k, p in params.items()},
                "v": {k: torch.zeros_like(p) for k, p in params.items()}}

    def step_(self, params: dict, grads: dict, state: dict, lr: float) -> dict:
        """One step in place with torch._foreach ops (params may be one client's or K clients' stacked).
        Updates `params` and the state's tensors; returns the new state. Matches torch.optim's rules."""
        t, keys = state["step"] + 1, list(params)
        p, g = [params[k] for k in keys], [grads[k] for k in keys]
        if self.weight_decay and self.name != "adamw":
            g = torch._foreach_add(g, p, alpha=self.weight_decay)
        if self.name == "sgd":
            if not self.momentum:
                torch._foreach_add_(p, g, alpha=-lr)
                return {"step": t}
            if t == 1:  # torch.optim.SGD: the buffer starts as the first gradient itself
                buf = [x.clone() for x in g]
            else:
                buf = [state["buf"][k] for k in keys]
                torch._foreach_mul_(buf, self.momentum)
                torch._foreach_add_(buf, g)
            torch._foreach_add_(p, torch._foreach_add(g, buf, alpha=self.momentum) if self.nesterov else buf,
                                alpha=-lr)
            return {"step": t, "buf": dict(zip(keys, buf, strict=True))}
        b1, b2 = self.betas
        if self.name == "adamw":
            torch._foreach_mul_(p, 1 - lr * self.weight_decay)
        m, v = [state["m"][k] for k in keys], [state["v"][k] for k in keys]
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, g, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        denom = torch._foreach_sqrt(torch._foreach_div(v, 1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(p, m, denom, value=-lr / (1 - b1**t))
        return {"step": t, "m": state["m"], "v": state["v"]}


def clip_by_global_norm(grads: dict, max_norm: float | None) -> dict:
    """torch.nn.utils.clip_grad_norm_'s rule, functionally."""
    if max_norm is None:
        return grads
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return {k: g * coef for k, g in grads.items()}
