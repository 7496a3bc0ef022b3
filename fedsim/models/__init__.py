"""Models: the built-ins, any torchvision classifier by name, and the base/head split.

    build_model(name, input_shape, num_classes, pretrained=False, vocabulary=None) -> nn.Module
    resolve_model(model_or_spec, input_shape, num_classes) -> nn.Module: a user's model, factory or "module:attr"
    user_code_errors(what, debug) -> a context in which an error of the user's code is one FedsimError line
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

BUILTIN_MODELS = ("mlp", "cnn", "cnn-bn", "fedavgcnn", "lenet5", "logreg", "char-lstm", "femnist-cnn", "celeba-cnn",
                  "fasttext", "transformer", "sent140-lstm")

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
    "CelebaCNN": "fedsim.models.builtin",
    "FastText": "fedsim.models.builtin",
    "TextTransformer": "fedsim.models.builtin",
    "Sent140LSTM": "fedsim.models.builtin",
    "resolve_model": "fedsim.models.user",
    "user_code_errors": "fedsim.models.user",
}

__all__ = ["BUILTIN_MODELS", "check_model_name", "model_names", *_LAZY]


def model_names() -> list[str]:
    """The built-in model names (any torchvision classifier also works: `torchvision_model_names()`)."""
    return list(BUILTIN_MODELS)


def check_model_name(name: str) -> None:
    """The unknown-model FedsimError unless `name` is a built-in or a torchvision classifier (a user's
    package.module:attr is resolved later, against the data's shapes). Built-in names import nothing."""
    key = str(name).strip().lower()
    if ":" in key or key.replace("_", "-") in BUILTIN_MODELS:
        return
    from fedsim.models import zoo

    if key not in zoo.torchvision_model_names():
        raise zoo.unknown_model(key)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
