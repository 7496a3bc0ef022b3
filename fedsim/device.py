"""Turning `--device auto|cpu|cuda[:k]` into a torch.device."""

from __future__ import annotations

from fedsim.errors import FedsimError


def resolve_device(spec: str = "auto"):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise FedsimError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:K") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FedsimError(f"device {spec!r} asked for, but CUDA is not available here: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise FedsimError(f"device {spec!r} does not exist: {count} CUDA device(s) present")
    return device
