"""Models: the built-ins, any torchvision classifier by name, and the base/head split.

    build_model(name, input_shape, num_classes, pretrained=False) -> nn.Module
    resolve_model(model_or_spec, input_shape, num_classes) -> nn.Module: a user's model, factory or "module:attr"
    model_names() -> built-in names;  torchvision_model_names() -> torchvision classifiers
    find_head(model, head=None) -> head module names (default: the last nn.Linear)
    split_state_keys(model, head_modules) -> (base keys, head keys)
    bn_state_keys(model) -> BatchNorm parameter and buffer keys (FedBN keeps them local)
    describe_split(model, head_modules) -> text for --show-split;  split_summary(...) -> the same as data

Importing this package does not import torch or torchvision: `model_names()` answers from a constant and
the other names load their module on first use (the CLI starts fast).
"""

from __future__ import annotations

import importlib

BUILTIN_MODELS = ("mlp", "cnn", "cnn-bn", "fedavgcnn", "lenet5", "logreg", "char-lstm")

_LAZY = {
    "build_model": "fedsim.models.zoo",
    "torchvision_model_names": "fedsim.models.zoo",
    "ResizeInput": "fedsim.models.zoo",
    "find_head": "fedsim.models.split",
    "split_state_keys": "fedsim.models.split",
    "bn_state_keys": "fedsim.models.split",
    "state_keys": "fedsim.models.split",
    "head_candidates": "fedsim.models.split",
    "describe_split": "fedsim.models.split",
    "split_summary": "fedsim.models.split",
    "MLP": "fedsim.models.builtin",
    "LogReg": "fedsim.models.builtin",
    "CNN": "fedsim.models.builtin",
    "FedAvgCNN": "fedsim.models.builtin",
    "LeNet5": "fedsim.models.builtin",
    "CharLSTM": "fedsim.models.builtin",
    "resolve_model": "fedsim.models.user",
}

__all__ = ["BUILTIN_MODELS", "model_names", *_LAZY]


def model_names() -> list[str]:
    """The built-in model names (any torchvision classifier also works: `torchvision_model_names()`)."""
    return list(BUILTIN_MODELS)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
