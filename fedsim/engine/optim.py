"""Client optimizers as one in-place step over dicts of tensors (params, grads, optimizer state).

The same step serves one client (sequential executor) and a stacked cohort (vmap executor), with the
numbers of torch.optim's SGD/Adam/AdamW. State is re-created each round, as clients in FedAvg start
every round from a fresh optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fedsim.core.hooks import LinearTerm
from fedsim.engine.outer import OuterProduct
from fedsim.errors import FedsimError

OPTIMIZERS = ("sgd", "adam", "adamw")


def per_client(value, like: torch.Tensor):
    """A number, or K stacked clients' numbers (a (K,) tensor) shaped to broadcast over `like` (K, ...)."""
    return value.view(-1, *[1] * (like.dim() - 1)) if isinstance(value, torch.Tensor) and value.dim() == 1 else value


def add_scaled_(target: torch.Tensor, value: torch.Tensor, scale) -> None:
    """target += scale * value in place; `scale` a number or the stacked clients' (K,) numbers."""
    if isinstance(scale, torch.Tensor):
        target.addcmul_(value, per_client(scale, target))
    else:
        target.add_(value, alpha=scale)


def _nonzero(value) -> bool:
    """Whether a number is not zero; stacked clients' numbers count as not zero (they are a tensor only where
    they differ, and a zero among them takes the general path exactly; reading them would sync a GPU)."""
    return True if isinstance(value, torch.Tensor) else bool(value)


def _plus_scaled(values: list, others: list, scale) -> list:
    """values + scale * others, new tensors."""
    if isinstance(scale, torch.Tensor):
        return [v + o * per_client(scale, o) for v, o in zip(values, others, strict=True)]
    return torch._foreach_add(values, others, alpha=scale)


def _mul_(targets: list, factor) -> None:
    """targets *= factor, in place; `factor` a number or the stacked clients' (K,) numbers."""
    if isinstance(factor, torch.Tensor):
        for t in targets:
            t.mul_(per_client(factor, t))
    elif targets:
        torch._foreach_mul_(targets, factor)


def _scale_(targets: list, lr, weight_decay) -> None:
    """targets *= 1 - lr * weight_decay, in place (decoupled weight decay)."""
    _mul_(targets, 1 - lr * weight_decay)


def _foreach_add_scaled_(targets: list, values: list, scale) -> None:
    """add_scaled_ over lists of tensors."""
    if isinstance(scale, torch.Tensor):
        for t, v in zip(targets, values, strict=True):
            add_scaled_(t, v, scale)
    elif targets:
        torch._foreach_add_(targets, values, alpha=scale)


@dataclass(frozen=True)
class GradientTerm:
    """A phase's LinearTerm read from one client's ctx, or from K stacked clients' (then `weight` is (K,) and the
    tensors of `center` and `shift` are (K, ...) or shared by all): per parameter, weight·(p − center) + shift."""

    weight: torch.Tensor | float | None
    center: dict
    shift: dict

    @classmethod
    def of(cls, term: LinearTerm | None, ctx: dict) -> GradientTerm | None:
        if term is None:
            return None
        weight = ctx[term.weight] if isinstance(term.weight, str) else term.weight
        center = ctx[term.center] if term.center is not None and weight is not None else {}
        return cls(weight, center, ctx[term.shift] if term.shift is not None else {})

    def dense(self, key: str, p: torch.Tensor) -> torch.Tensor | None:
        """The term for parameter `key` at p, formed; None when it has none."""
        center, shift = self.center.get(key), self.shift.get(key)
        g = None if center is None else per_client(self.weight, p) * (p - center)
        return shift if g is None else g if shift is None else g + shift

    def added_to(self, grads: dict, params: dict) -> dict:
        """The gradients with the term added (formed: for clipping, a correction, momentum or Adam)."""
        out = dict(grads)
        for k, p in params.items():
            d = self.dense(k, p)
            if d is None:
                continue
            g = grads[k]
            out[k] = replace(g, dense=d if g.dense is None else g.dense + d) if isinstance(g, OuterProduct) \
                else g + d
        return out

    def descend_(self, key: str, p: torch.Tensor, lr, weight_decay: float = 0.0) -> None:
        """p −= lr·(term + weight_decay·p), in place, without forming the term (one pass where it is a lerp);
        `lr` a number or the stacked clients' (K,)."""
        center, shift = self.center.get(key), self.shift.get(key)
        lr, decay = per_client(lr, p), _nonzero(weight_decay)
        weight_decay = per_client(weight_decay, p)
        if center is not None:
            step = lr * per_client(self.weight, p)
            if decay:  # (1 − lr·(wd + w))·p + lr·w·center
                p.mul_(1 - lr * weight_decay - step)
                add_scaled_(p, center, step)
            else:  # p + lr·w·(center − p)
                p.lerp_(center, step)
        elif decay:
            p.mul_(1 - lr * weight_decay)
        if shift is not None:
            add_scaled_(p, shift, -lr)


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

    def init(self, params: dict[str, torch.Tensor], momentum=None) -> dict:
        """Fresh state; `momentum` overrides the spec's (one per stacked client: see step_)."""
        if self.name == "sgd":
            return {"step": 0, "buf": {k: torch.zeros_like(p) for k, p in params.items()}} \
                if _nonzero(self.momentum if momentum is None else momentum) else {"step": 0}
        return {"step": 0, "m": {k: torch.zeros_like(p) for k, p in params.items()},
                "v": {k: torch.zeros_like(p) for k, p in params.items()}}

    def step_(self, params: dict, grads: dict, state: dict, lr, term: GradientTerm | None = None,
              momentum=None, weight_decay=None) -> dict:
        """One step in place with torch._foreach ops (params may be one client's or K clients' stacked).
        Updates `params` and the state's tensors; returns the new state. Matches torch.optim's rules.

        A gradient may be an `OuterProduct` (a Linear weight's, from the vmap executor): SGD adds it to the
        weight, or to the momentum buffer, in place; Adam forms it first. `term` is added to the gradients: by
        plain SGD inside its update, never formed; by the others formed. `lr`, and `momentum` and
        `weight_decay` where given (else the spec's), are numbers, or K stacked clients' as (K,) tensors: runs
        of a sweep with other values train together (a client with momentum 0 among others steps as plain
        SGD, its buffer being its gradient)."""
        m = self.momentum if momentum is None else momentum
        wd = self.weight_decay if weight_decay is None else weight_decay
        if term is not None and (self.name != "sgd" or _nonzero(m)):
            grads, term = term.added_to(grads, params), None
        t, keys = state["step"] + 1, list(params)
        if self.name != "sgd":
            grads = {k: g.full() if isinstance(g, OuterProduct) else g for k, g in grads.items()}
        outer = [k for k in keys if isinstance(grads[k], OuterProduct)]
        dense = [k for k in keys if k not in outer]
        p, g = [params[k] for k in dense], [grads[k] for k in dense]
        if _nonzero(wd) and self.name != "adamw" and dense:
            g = _plus_scaled(g, p, wd)
        if self.name == "sgd":
            return self._sgd_(params, grads, state, lr, m, wd, t, dense, outer, p, g, term)
        b1, b2 = self.betas
        if self.name == "adamw":
            _scale_(p, lr, wd)
        m, v = [state["m"][k] for k in keys], [state["v"][k] for k in keys]
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, g, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        denom = torch._foreach_sqrt(torch._foreach_div(v, 1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        if isinstance(lr, torch.Tensor):
            _foreach_add_scaled_(p, torch._foreach_div(m, denom), -lr / (1 - b1**t))
        else:
            torch._foreach_addcdiv_(p, m, denom, value=-lr / (1 - b1**t))
        return {"step": t, "m": state["m"], "v": state["v"]}

    def _sgd_(self, params, grads, state, lr, m, wd, t, dense, outer, p, g, term) -> dict:
        """SGD (momentum, Nesterov, weight decay) as torch.optim.SGD; `outer` gradients, and without momentum
        the linear `term`, are never formed."""
        if not _nonzero(m):  # p - lr * (g + wd * p + term(p)): g was taken at p, so the parts may land in any order
            if term is not None:  # dense gradients carry their weight decay already (g above)
                for k in params:
                    term.descend_(k, params[k], lr, wd if k in outer else 0.0)
            _foreach_add_scaled_(p, g, -lr)
            for k in outer:
                if _nonzero(wd) and term is None:
                    _scale_([params[k]], lr, wd)
                grads[k].add_to_(params[k], alpha=-lr)
            return {"step": t}
        if t == 1:  # torch.optim.SGD: the buffer starts as the first gradient itself
            buf = dict(zip(dense, (x.clone() for x in g), strict=True))
            for k in outer:
                buf[k] = grads[k].full()
                if _nonzero(wd):
                    add_scaled_(buf[k], params[k], wd)
        else:
            buf = state["buf"]
            if dense:  # buf = m * buf + g
                _mul_([buf[k] for k in dense], m)
                torch._foreach_add_([buf[k] for k in dense], g)
            for k in outer:  # the outer product added in the same pass
                if isinstance(m, torch.Tensor):
                    _mul_([buf[k]], m)
                    grads[k].add_to_(buf[k], alpha=1.0)
                else:
                    grads[k].add_to_(buf[k], alpha=1.0, beta=m)
                if _nonzero(wd):
                    add_scaled_(buf[k], params[k], wd)
        if dense:
            b = [buf[k] for k in dense]
            _foreach_add_scaled_(p, _plus_scaled(g, b, m) if self.nesterov else b, -lr)
        for k in outer:
            if self.nesterov:  # p - lr * (g + wd * p + m * buf)
                if _nonzero(wd):
                    _scale_([params[k]], lr, wd)
                add_scaled_(params[k], buf[k], -lr * m)
                grads[k].add_to_(params[k], alpha=-lr)
            else:
                add_scaled_(params[k], buf[k], -lr)
        return {"step": t, "buf": buf}


def clip_by_global_norm(grads: dict, max_norm: float | None) -> dict:
    """torch.nn.utils.clip_grad_norm_'s rule, functionally."""
    if max_norm is None:
        return grads
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return {k: g * coef for k, g in grads.items()}
