"""Base/head split of any model, found from the module tree rather than assumed.

State keys are the names of ``model.named_parameters()`` followed by ``model.named_buffers()``: the keys
of the engine's state dicts.

The default head rule: **the head is the last ``nn.Linear`` module in registration order**
(``model.named_modules()``), i.e. the final classifier layer alone, as PFLlib's FedPer/FedRep take it.
For torchvision that gives ResNet/RegNet/ShuffleNet/GoogLeNet/Inception ``fc``, MobileNetV3
``classifier.3``, MobileNetV2/EfficientNet/MNASNet ``classifier.1``, VGG/AlexNet ``classifier.6``,
ConvNeXt ``classifier.2``, DenseNet ``classifier``, MaxViT ``classifier.5``, Swin ``head``, ViT
``heads.head``; for the built-ins ``fc``. A module subclassing ``nn.Linear`` counts (attention's
``out_proj`` does too, which is why the rule is the *last* one: torchvision registers classifiers last). What
sits inside a Linear is never the head: modules an algorithm adds beside the head (FedCP's policy network,
GPFL's valves) are the head's children, and a Linear head's keys are its own weight and bias.

A ``head`` override names module(s) (a comma-separated string or a list), e.g. ``"classifier"`` for the
whole MobileNet classifier block or ``"fc1,fc"`` for the last two built-in layers. A model without a
Linear (e.g. squeezenet, whose classifier is a 1x1 conv), an unknown name, a head holding no parameters,
and a head holding every parameter (nothing left for the shared base, e.g. ``logreg``) are FedsimErrors
that list the module names to choose from.
"""

from __future__ import annotations

import difflib

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedsim.errors import FedsimError


def state_keys(model: nn.Module) -> list[str]:
    """The engine's state keys: parameter names, then buffer names."""
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def _owned_by(model: nn.Module, key: str, module_name: str) -> bool:
    """Whether `key` is a tensor of module `module_name`; of a Linear, its own weight and bias only: what sits
    inside a Linear was added beside the head by an algorithm (FedCP's policy network, GPFL's valves) and is not
    the head."""
    if isinstance(model.get_submodule(module_name), nn.Linear):
        return key.rpartition(".")[0] == module_name
    return key.startswith(module_name + ".")


def _inside_linear(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), nn.Linear) for i in range(1, len(parts)))


def head_candidates(model: nn.Module, last: int = 3) -> list[str]:
    """Module names worth offering for --head: the top-level children with parameters, then the last
    few modules that hold parameters themselves (usually the final layers)."""
    top = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    leaves = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    out = top + [n for n in leaves[-last:] if n not in top]
    return out


def _choices(model: nn.Module) -> str:
    names = head_candidates(model)
    return ", ".join(names) if names else "(the model has no parameters)"


def _parse_head(head: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if head is None:
        return []
    items = head.split(",") if isinstance(head, str) else list(head)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise FedsimError(f"--head takes module names, got {item!r}")
        item = item.strip()
        if item and item not in names:
            names.append(item)
    return names


def _check_names(model: nn.Module, names: list[str]) -> None:
    modules = dict(model.named_modules())
    modules.pop("", None)
    cls = type(model).__name__
    for name in names:
        if name in modules:
            continue
        owner = name.rpartition(".")[0]
        if owner in modules and name in set(state_keys(model)):
            raise FedsimError(
                f"--head takes module names, not parameter names: use {owner!r} instead of {name!r}"
            )
        close = difflib.get_close_matches(name, list(modules), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FedsimError(
            f"unknown head module {name!r} in {cls}: choose module name(s) such as {_choices(model)}{hint}"
        )


def _default_head(model: nn.Module) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _inside_linear(model, n)]
    if not linears:
        raise FedsimError(
            f"cannot find the classifier head of {type(model).__name__}: it has no nn.Linear layer (the "
            f"default head is the last one); name the head module(s) with --head, e.g. {_choices(model)}"
        )
    if linears[-1] == "":
        raise FedsimError(
            f"{type(model).__name__} is a single Linear layer: there is no base to split from a head; "
            f"use a model with hidden layers (e.g. mlp)"
        )
    return [linears[-1]]


def split_state_keys(model: nn.Module, head_modules: str | list[str]) -> tuple[list[str], list[str]]:
    """(base keys, head keys) over the model's state keys; the head is the keys inside `head_modules`.

    Raises FedsimError for unknown module names, a head with no parameters, or a head holding every
    parameter (no shared base left).
    """
    names = _parse_head(head_modules)
    if not names:
        raise FedsimError(f"no head modules given; choose from {_choices(model)}")
    _check_names(model, names)
    base: list[str] = []
    head: list[str] = []
    for key in state_keys(model):
        (head if any(_owned_by(model, key, n) for n in names) else base).append(key)
    params = {n for n, _ in model.named_parameters()}
    cls = type(model).__name__
    shown = ", ".join(names)
    if not any(k in params for k in head):
        raise FedsimError(
            f"head {shown!r} of {cls} holds no parameters; choose module(s) with parameters, "
            f"e.g. {_choices(model)}"
        )
    if not any(k in params for k in base):
        raise FedsimError(
            f"head {shown!r} holds every parameter of {cls}, leaving no shared base to split off; "
            f"name a smaller head with --head (module names: {_choices(model)}) or use a model with "
            f"hidden layers (e.g. mlp)"
        )
    return base, head


def find_head(model: nn.Module, head: str | list[str] | None = None) -> list[str]:
    """The module names forming the personal head: `head` (names, comma-separated or a list) when
    given, else the last nn.Linear (see the module docstring). The split is checked to be usable:
    known names, parameters in the head, and parameters left in the base."""
    names = _parse_head(head) or _default_head(model)
    split_state_keys(model, names)
    return names


def bn_state_keys(model: nn.Module) -> list[str]:
    """State keys (parameters and buffers: weight, bias, running_mean, running_var,
    num_batches_tracked) of the model's BatchNorm layers (``_BatchNorm``): what FedBN keeps local."""
    bn = {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    return [k for k in state_keys(model) if k.rpartition(".")[0] in bn]


def split_summary(model: nn.Module, head_modules: str | list[str]) -> dict:
    """The split as data: module names, keys and parameter counts of base and head."""
    names = _parse_head(head_modules)
    base, head = split_state_keys(model, names)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    base_top = []
    for key in base:
        top = key.split(".", 1)[0]
        if top not in base_top:
            base_top.append(top)
    return {
        "model": type(model).__name__,
        "head_modules": names,
        "base_modules": base_top,
        "head_keys": head,
        "base_keys": base,
        "head_params": sum(numel.get(k, 0) for k in head),
        "base_params": sum(numel.get(k, 0) for k in base),
    }


def describe_split(model: nn.Module, head_modules: str | list[str], max_keys: int = 8) -> str:
    """A few lines for --show-split: parameter counts, modules and keys of base and head."""
    s = split_summary(model, head_modules)
    total = s["base_params"] + s["head_params"]

    def keys(ks: list[str]) -> str:
        return ", ".join(ks) if len(ks) <= max_keys else ", ".join(ks[:max_keys]) + f", ... ({len(ks)} keys)"

    def pct(n: int) -> str:
        return f"{100 * n / total:.3g}%" if total else "0%"

    return "\n".join([
        f"{s['model']}: {total:,} parameters",
        f"  base: {s['base_params']:,} parameters ({pct(s['base_params'])}) in "
        f"{', '.join(s['base_modules'])}; {len(s['base_keys'])} keys",
        f"  head: {s['head_params']:,} parameters ({pct(s['head_params'])}) in "
        f"{', '.join(s['head_modules'])}; keys: {keys(s['head_keys'])}",
    ])
