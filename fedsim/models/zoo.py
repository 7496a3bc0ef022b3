"""Models by name: the built-ins and any torchvision classification model, adapted to the dataset.

A torchvision model is returned as the plain torchvision module (state keys are torchvision's own,
e.g. ``fc.weight``, ``classifier.3.weight``, ``heads.head.weight``), adapted in place:

* classes: built with ``num_classes=`` (random init), or, with ``pretrained=True``, built with the
  default ImageNet weights and its final classifier layer (the last Linear, or squeezenet's final 1x1
  Conv2d) replaced by a fresh one of ``num_classes`` outputs;
* channels: data with C != 3 channels gets a new stem (the first ``Conv2d`` with 3 input channels)
  taking C channels. Its weights come from the model's own (pretrained or freshly initialised) stem:
  for grey (C = 1) the RGB kernels are summed, which computes exactly what the original stem computes on
  the grey image repeated to 3 channels; for other C the RGB kernels are cycled and scaled by 3/C;
* image size: the model is first tried (one eval forward on zeros) at the data's size. ViTs are built
  with ``image_size`` = the data's size rounded up to the patch size (pretrained ViTs keep 224). A model
  that does not accept the data's size (alexnet, densenet, inception_v3, maxvit, ...) gets a forward
  pre-hook that upsamples its input (bilinear) to the model's documented minimum size (the weights'
  ``meta["min_size"]``). The hook works through ``torch.func.functional_call`` and ``vmap``;
* Inception/GoogLeNet: auxiliary classifiers are dropped and ``transform_input`` is off, so the model
  returns one logits tensor in train and eval mode.

torchvision is imported only inside functions, so importing this module stays cheap for the CLI.
"""

from __future__ import annotations

import difflib
import math
import operator
import os
import re
import socket
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.errors import FedsimError
from fedsim.models.builtin import BUILTINS, build_builtin

EXAMPLE_TORCHVISION = ("resnet18", "mobilenet_v3_small", "vit_b_16")
_DOWNLOAD_TIMEOUT_S = 30


def model_names() -> list[str]:
    """The built-in model names (torchvision's are listed by `torchvision_model_names`)."""
    return list(BUILTINS)


def torchvision_model_names() -> list[str]:
    """Every torchvision image-classification model name (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _normalize_name(name: str) -> str:
    key = str(name).strip().lower()
    if key.replace("_", "-") in BUILTINS:
        return key.replace("_", "-")
    return key


def _check_shape(name: str, input_shape, num_classes) -> tuple[tuple[int, ...], int]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise FedsimError(
            f"model {name}: input shape must be a tuple of ints, (C, H, W) or (D,), got {input_shape!r}"
        ) from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise FedsimError(
            f"model {name}: input shape must be (C, H, W) for images or (D,) for vectors, got {shape}"
        )
    try:
        classes = operator.index(num_classes)  # int, numpy or 0-d tensor integers
    except TypeError:
        classes = 0
    if isinstance(num_classes, bool) or classes < 1:
        raise FedsimError(f"model {name}: num_classes must be a positive integer, got {num_classes!r}")
    return shape, classes


def unknown_model(name: str) -> FedsimError:
    import torchvision

    tv_names = torchvision_model_names()
    if name in torchvision.models.list_models():
        return FedsimError(
            f"model {name!r} is a torchvision detection/segmentation/video model, not an image "
            f"classifier: use a classification model (e.g. {', '.join(EXAMPLE_TORCHVISION)})"
        )
    message = (
        f"unknown model {name!r}: built-in models are {', '.join(BUILTINS)}; any torchvision "
        f"classification model also works (e.g. {', '.join(EXAMPLE_TORCHVISION)}), and your own as "
        f"package.module:attr"
    )
    close = difflib.get_close_matches(name, list(BUILTINS) + tv_names, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return FedsimError(message)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int,
                pretrained: bool = False, vocabulary=None) -> nn.Module:
    """A model for inputs of one sample's shape `input_shape` ((C, H, W) or (D,)) and `num_classes`.

    `name` is a built-in (`model_names()`) or a torchvision classification model
    (`torchvision_model_names()`). The module is returned in train mode on the CPU, initialised from
    torch's global RNG (seed it, or use ``torch.random.fork_rng``, for reproducible weights).
    `vocabulary`: a text dataset's (`Dataset.vocabulary`), which the text models size their embedding by.
    Every problem is a FedsimError with one line.
    """
    key = _normalize_name(name)
    shape, num_classes = _check_shape(key, input_shape, num_classes)
    if key in BUILTINS:
        if pretrained:
            raise FedsimError(
                f"model {key} has no pretrained weights: only torchvision models have them "
                f"(e.g. {', '.join(EXAMPLE_TORCHVISION)}); drop --pretrained"
            )
        return build_builtin(key, shape, num_classes, vocabulary)
    if key not in torchvision_model_names():
        raise unknown_model(key)
    return _build_torchvision(key, shape, num_classes, pretrained)


# --------------------------------------------------------------------------- torchvision adapter


class ResizeInput:
    """Forward pre-hook that resizes image batches to a fixed (H, W) with bilinear interpolation."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, module: nn.Module, args: tuple):
        x, *rest = args
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return (x, *rest)

    def __repr__(self) -> str:
        return f"ResizeInput(size={self.size})"


def _weights(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _ensure_cached(name: str, weights) -> None:
    """Make sure the weights file is in torch's hub cache: download it, or fail with one clear line."""
    filename = os.path.basename(urlparse(weights.url).path)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(cache_dir, filename)
    if os.path.exists(path):
        return
    old_timeout = socket.getdefaulttimeout()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        torch.hub.download_url_to_file(weights.url, path, progress=False)
    except Exception as exc:  # any download failure becomes one line
        reason = str(getattr(exc, "reason", "") or exc).strip() or type(exc).__name__
        raise FedsimError(
            f"cannot get pretrained weights for {name} ({weights}): {reason}; they are downloaded "
            f"from {weights.url} to {path} on first use: without internet, copy that file there "
            f"(or point TORCH_HOME at a cache that has it), or drop --pretrained"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _parent_and_attr(model: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = qualified.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _replace_classifier(name: str, model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Swap the pretrained model's final classifier layer for a fresh one with `num_classes` outputs."""
    modules = list(model.named_modules())
    linear = [(n, m) for n, m in modules if isinstance(m, nn.Linear) and m.out_features == old_classes]
    conv = [(n, m) for n, m in modules if isinstance(m, nn.Conv2d) and m.out_channels == old_classes]
    if linear:
        qualified, old = linear[-1]
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif conv:
        qualified, old = conv[-1]
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        old.dilation, old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
    else:
        raise FedsimError(
            f"model {name}: cannot find its {old_classes}-class classifier layer to resize for "
            f"{num_classes} classes; train it without --pretrained"
        )
    parent, attr = _parent_and_attr(model, qualified)
    setattr(parent, attr, new.to(old.weight.device))


def _adapt_stem(name: str, model: nn.Module, channels: int) -> None:
    """Give the model a stem conv that takes `channels` input channels instead of 3."""
    stem = next(((n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if stem is None:
        raise FedsimError(
            f"model {name}: cannot find its RGB stem convolution to adapt to {channels}-channel images"
        )
    qualified, old = stem
    if old.groups != 1:
        raise FedsimError(f"model {name}: its stem convolution {qualified!r} is grouped; "
                          f"cannot adapt it to {channels}-channel images")
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode).to(old.weight.device)
    with torch.no_grad():
        w = old.weight
        if channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            idx = torch.arange(channels, device=w.device) % 3
            new.weight.copy_(w[:, idx] * (3.0 / channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, attr = _parent_and_attr(model, qualified)
    setattr(parent, attr, new)


def _resize_inputs(model: nn.Module, size: tuple[int, int]) -> None:
    model.register_forward_pre_hook(ResizeInput(size))
    model.fedsim_input_size = size


def _drop_aux_heads(model: nn.Module) -> None:
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, attr):
                setattr(model, attr, None)


def _probe(model: nn.Module, shape: tuple[int, int, int], num_classes: int) -> str | None:
    """Run one eval-mode forward on zeros; None when it gives (1, num_classes) logits, else why not."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=device))
    except Exception as exc:  # the reason goes into the one-line error
        return " ".join(str(exc).split())[:200] or type(exc).__name__
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"it returned {got} instead of logits of shape (1, {num_classes})"
    return None


def _build_torchvision(name: str, shape: tuple[int, ...], num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    if len(shape) != 3:
        raise FedsimError(
            f"model {name} needs image inputs (C, H, W) but the data gives vectors of {shape[0]} "
            f"features: use mlp or logreg"
        )
    channels, h, w = shape
    weights = _weights(name)
    kwargs: dict = {}
    if name in ("inception_v3", "googlenet"):
        kwargs["transform_input"] = False  # it assumes 3 ImageNet-normalised channels
        if not pretrained:
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = True  # torchvision's own init (and no FutureWarning)
    patch = re.fullmatch(r"vit_\w_(\d+)", name)
    if patch and not pretrained:
        p = int(patch.group(1))
        kwargs["image_size"] = max(p, math.ceil(max(h, w) / p) * p)

    if pretrained:
        if weights is None:
            raise FedsimError(f"model {name} has no pretrained weights in torchvision; drop --pretrained")
        _ensure_cached(name, weights)
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as exc:  # e.g. a corrupt or truncated cached file
            reason = " ".join(str(exc).split())[:200]
            raise FedsimError(
                f"cannot load pretrained weights for {name} ({weights}) from {torch.hub.get_dir()}: "
                f"{reason}; delete the cached file to download it again, or drop --pretrained"
            ) from None
        _replace_classifier(name, model, len(weights.meta["categories"]), num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    _drop_aux_heads(model)
    if channels != 3:
        _adapt_stem(name, model, channels)

    # A ViT takes exactly its image_size: resize to it. Any other model is tried at the data's own size
    # first; when it cannot take that, it upsamples its input to the model's documented minimum size.
    model.fedsim_input_size = (h, w)
    fixed = getattr(model, "image_size", None)
    if isinstance(fixed, int) and (h, w) != (fixed, fixed):
        _resize_inputs(model, (fixed, fixed))
    why = _probe(model, shape, num_classes)
    if why is not None and not isinstance(fixed, int):
        min_h, min_w = (weights.meta.get("min_size", (224, 224)) if weights is not None else (224, 224))
        size = (max(h, min_h), max(w, min_w))
        if size != (h, w):
            _resize_inputs(model, size)
            why = _probe(model, shape, num_classes)
    if why is not None:
        raise FedsimError(
            f"model {name} does not work on {'x'.join(map(str, shape[1:]))} images with {channels} "
            f"channel(s): {why}; try another model (e.g. resnet18 or cnn)"
        )
    return model
