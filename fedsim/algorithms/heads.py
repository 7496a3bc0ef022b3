"""The model's head as some algorithms need it: one module to apply to features of their own (FedGen's generated
features), or one Linear layer beside which they add modules of their own (FedCP's policy network, GPFL's valves),
sized from the head so that they fit any model: the built-ins' `fc`, a torchvision ResNet's `fc`, a --head."""

from __future__ import annotations

from fedsim.errors import FedsimError


def head_module(model, head: list[str] | None, algo: str, linear: bool = False) -> str:
    """The name of the one module whose tensors are the head's keys (`--head classifier` names a block of layers;
    `--head fc1,fc` two modules, refused); `linear`: it must be an nn.Linear. One line otherwise."""
    import os

    from torch import nn

    paths = [k.split(".")[:-1] for k in head or ()]
    name = ".".join(os.path.commonprefix(paths)) if paths else ""
    module = model.get_submodule(name)
    own = {n for n, _ in module.named_parameters(prefix=name)} | {n for n, _ in module.named_buffers(prefix=name)}
    if linear and isinstance(module, nn.Linear):
        own = {f"{name}.weight", f"{name}.bias"} & own  # what was added beside it is not the head
    if not name or own != set(head) or (linear and not isinstance(module, nn.Linear)):
        shown = ", ".join(sorted({".".join(p) for p in paths})) or "none"
        raise FedsimError(f"{algo} needs the head to be {'one Linear layer' if linear else 'one module'} (now "
                          f"{shown}): name it with --head")
    return name


def add_beside_head(model, head: list[str] | None, algo: str, build) -> None:
    """Add `build(head Linear)` (a module) to the head as its child named `algo`, once; `build` also registers the
    hooks through which the head uses it. Its keys are then `<head>.<algo>.…`: the model's own keys are unchanged,
    and the head's split (computed before) does not include it."""
    head_linear = model.get_submodule(head_module(model, head, algo, linear=True))
    if algo not in dict(head_linear.named_children()):
        head_linear.add_module(algo, build(head_linear).to(head_linear.weight.device))


class _Stop(Exception):
    """Raised at the head's input: the rest of the forward pass is not needed."""


def head_input(model, state, x, name: str):
    """The head's input (flattened per sample) under `state`, without running the head and what follows."""
    from torch.func import functional_call

    seen = []

    def stop(_, args):
        seen.append(args[0])
        raise _Stop

    hook = model.get_submodule(name).register_forward_pre_hook(stop, prepend=True)
    try:
        functional_call(model, state, (x,))
    except _Stop:
        pass
    finally:
        hook.remove()
    return seen[0].flatten(1)
