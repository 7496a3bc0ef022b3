"""The user's own model: an nn.Module, a factory, or a "package.module:attr" import path (uvicorn's form).

    resolve_model(model_or_spec, input_shape, num_classes, input_dtype=torch.float32, debug=False) -> nn.Module

What is accepted, and how it is called:
  * an ``nn.Module`` instance: a deep copy of it is the run's initial model (its weights as they are; the
    caller's object is never changed or moved);
  * an ``nn.Module`` subclass: called with those of the keyword arguments ``input_shape=`` and ``num_classes=``
    that its constructor has parameters for (so ``MyCNN()``, ``MyCNN(num_classes=10)`` or
    ``MyCNN(input_shape=(1, 28, 28), num_classes=10)``); any other required parameter is an error;
  * any other callable (a factory): called as ``f(input_shape, num_classes)``; it must return an nn.Module;
  * a string "package.module:attr" (attr may be dotted, "module:Outer.make"): imported with the current
    directory first on the import path, then one of the above (a module-level instance is used as one).
``input_shape`` is one sample's shape, (C, H, W) or (D,) (or (L,) for token sequences); ``num_classes`` an int.

The model is then checked with one eval-mode forward pass on a batch of 2 zero inputs of ``input_dtype``: it
must have trainable parameters and give a (2, num_classes) floating-point tensor of logits that depends on them
(gradients can flow). Every problem is one FedsimError line; an exception raised inside the user's code (a
``sys.exit`` included) names its type, message and the user's file:line, and with ``debug=True`` the message
also carries the user's traceback (the CLI's --debug). `user_code_errors` does the same for an exception the
user's code raises later, while the run trains.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import re
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from fedsim.errors import FedsimError

_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _not_users() -> tuple[str, ...]:
    """Where code that is not the user's lives: fedsim, torch, Python's library and installed packages."""
    places = [Path(__file__).resolve().parents[1], Path(torch.__file__).resolve().parent]
    places += [Path(p) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(key))]
    return (*{str(p) for p in places}, *{str(p.resolve()) for p in places}, "<frozen ")


def _user_frame(e: BaseException) -> str | None:
    """file:line of the innermost traceback frame in the user's code: outside fedsim, torch, Python's library,
    installed packages and Python's import machinery."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    skip = _not_users()
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _failure(what: str, e: BaseException, debug: bool) -> FedsimError:
    if isinstance(e, SystemExit):  # exits fedsim silently, with its code, if let through
        e = SystemExit(f"sys.exit({e.code!r}) was called")
    message = " ".join(f"{type(e).__name__}: {e}".split())
    if len(message) > 300:
        message = message[:297] + "..."
    where = _user_frame(e)
    line = f"{what} failed with {message}" + (f" (at {where})" if where else "")
    if debug:
        return FedsimError(line + "\n" + "".join(traceback.format_exception(e)).rstrip())
    return FedsimError(line + "; pass --debug for the traceback")


def _import(spec: str, debug: bool):
    """The object "module:attr" names."""
    if not _SPEC.fullmatch(spec):
        raise FedsimError(f"--model {spec!r} is neither a built-in model name nor an import path: write "
                          f"package.module:attr (e.g. mymodels:MyCNN for MyCNN in ./mymodels.py)")
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` and uvicorn do: the user's modules sit where they run
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name) and module_name[len(e.name):][:1] in ("", "."):
            raise FedsimError(f"--model {spec}: no module {e.name!r} in the current directory ({os.getcwd()}) or on "
                              f"the Python path; check the spelling or run from the folder that holds it") from None
        raise _failure(f"--model {spec}: importing {module_name}", e, debug) from None
    except (Exception, SystemExit) as e:  # anything the user's module raises while it runs
        raise _failure(f"--model {spec}: importing {module_name}", e, debug) from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            found = [n for n, v in vars(module).items() if not n.startswith("_") and _is_model_like(v)
                     and getattr(v, "__module__", module_name) == module_name]
            offer = f"; it defines {', '.join(sorted(found))}" if found else ""
            raise FedsimError(f"--model {spec}: {module_name} ({getattr(module, '__file__', '?')}) has no attribute "
                              f"{attr!r}{offer}")
        target = getattr(target, part)
    return target


def _is_model_like(value) -> bool:
    return isinstance(value, nn.Module) or (isinstance(value, type) and issubclass(value, nn.Module)) or (
        callable(value) and not isinstance(value, type))


def _constructor_arguments(cls: type, label: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """The keyword arguments among input_shape and num_classes that the class's constructor takes by name."""
    try:
        signature = inspect.signature(cls)
    except ValueError:  # no signature to inspect (a C extension type): call it with none
        return {}
    kwargs = {k: v for k, v in (("input_shape", input_shape), ("num_classes", num_classes))
              if k in signature.parameters}
    try:
        signature.bind(**kwargs)
    except TypeError:
        raise FedsimError(f"{label} needs arguments other than input_shape and num_classes (its signature is "
                          f"{signature}): pass an instance or a factory f(input_shape, num_classes)") from None
    return kwargs


def _build(target, label: str, input_shape: tuple[int, ...], num_classes: int, debug: bool) -> nn.Module:
    if isinstance(target, nn.Module):
        return copy.deepcopy(target)
    if isinstance(target, type) and issubclass(target, nn.Module):
        kwargs = _constructor_arguments(target, label, input_shape, num_classes)
        try:
            return target(**kwargs)
        except (Exception, SystemExit) as e:
            call = f"{label}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
            raise _failure(f"building the model as {call}", e, debug) from None
    if isinstance(target, type) or not callable(target):
        raise FedsimError(f"{label} is {_kind(target)}, not an nn.Module, an nn.Module class or a factory "
                          f"f(input_shape, num_classes) -> nn.Module")
    try:
        model = target(input_shape, num_classes)
    except (Exception, SystemExit) as e:
        raise _failure(f"building the model as {label}({input_shape}, {num_classes})", e, debug) from None
    if not isinstance(model, nn.Module):
        raise FedsimError(f"{label}({input_shape}, {num_classes}) returned {_kind(model)}, not an nn.Module")
    return model


def _kind(value) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _probe(model: nn.Module, label: str, input_shape: tuple[int, ...], num_classes: int, input_dtype: torch.dtype,
           debug: bool) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((2, *input_shape), dtype=input_dtype, device=device)
    where = f"a batch of 2 zero inputs of shape {tuple(input_shape)} ({str(input_dtype).replace('torch.', '')})"
    if not any(p.requires_grad for p in model.parameters()):
        raise FedsimError(f"{label} has no trainable parameters (none, or all with requires_grad=False): there is "
                          "nothing to train")
    training = model.training
    model.eval()  # no dropout, BatchNorm's running statistics left as they are
    try:
        with torch.enable_grad():
            out = model(x)
    except FedsimError:
        raise
    except (Exception, SystemExit) as e:
        raise _failure(f"{label} on {where}", e, debug) from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor):
        raise FedsimError(f"{label} returns {_kind(out)} on {where}: its forward must return the logits tensor "
                          f"(batch, {num_classes})")
    if tuple(out.shape) != (2, num_classes):
        raise FedsimError(f"{label} gives outputs of shape {tuple(out.shape)} on {where}; expected (2, {num_classes}):"
                          f" one logit per class of the dataset's {num_classes}")
    if not out.is_floating_point():
        raise FedsimError(f"{label} gives outputs of dtype {str(out.dtype).replace('torch.', '')} on {where}: logits "
                          "must be floating point (a loss has no gradient through integers)")
    if not out.requires_grad:
        raise FedsimError(f"{label}'s outputs on {where} do not depend on its trainable parameters (no gradient "
                          "flows: a detach, torch.no_grad or .item() in its forward?)")


@contextmanager
def user_code_errors(what: str, debug: bool = False):
    """An exception raised inside the user's code (a model's forward that fails on its 40th call, say) becomes one
    FedsimError line naming `what`, the exception and the user's file:line (with `debug`, the traceback too). An
    exception with no frame in the user's code is left as it is: it is fedsim's, and its traceback is the report."""
    try:
        yield
    except FedsimError:
        raise
    except (Exception, SystemExit) as e:
        if _user_frame(e) is None or isinstance(e, SyntaxError):
            raise
        raise _failure(what, e, debug) from None


def resolve_model(model_or_spec, input_shape, num_classes: int, input_dtype: torch.dtype = torch.float32,
                  debug: bool = False) -> nn.Module:
    """The user's model for one sample's `input_shape` and `num_classes` (see the module docstring), in train
    mode; its output shape checked by one forward pass on a zero batch of `input_dtype`."""
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(model_or_spec, str):
        label = model_or_spec
        target = _import(model_or_spec, debug)
    else:
        target = model_or_spec
        label = getattr(target, "__qualname__", None) or type(target).__name__
    model = _build(target, label, input_shape, num_classes, debug)
    _probe(model, label, input_shape, num_classes, input_dtype, debug)
    return model.train()
