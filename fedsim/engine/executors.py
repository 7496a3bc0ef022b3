"""Choosing the executor that trains each round's cohort: vmap where the model and algorithm allow it, else
the sequential reference, with the reason recorded."""

from __future__ import annotations

import torch

from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.threads import ThreadChooser
from fedsim.errors import FedsimError


def make_executor(name: str, model: torch.nn.Module, data: ClientData, spec: LocalSpec, algorithm,
                  chunk: int | None = None, compile: bool = False, threads: int | None = None):
    """`--executor auto|sequential|vmap` for `algorithm` (duck-typed: its `vmap_ok`). `threads`: torch's CPU
    threads (None: 1 for sequential; for vmap on the CPU chosen by timing, see threads.py)."""
    if name == "sequential":
        return SequentialExecutor(model, data, spec, threads or 1)
    from fedsim.engine.vmap import VmapExecutor, vmap_unsupported_reason

    reason = vmap_unsupported_reason(model, algorithm)
    if reason is not None and name == "vmap":
        raise FedsimError(f"--executor vmap cannot run this experiment: {reason}; use --executor sequential")
    if reason is None and name == "auto" and data.x.device.type == "cpu":
        reason = _slower_under_vmap_on_cpu(model)
    if reason is None:
        on_cpu = data.x.device.type == "cpu"
        if on_cpu:
            keep_freed_memory()
        chooser = ThreadChooser(fixed=threads if on_cpu else threads or torch.get_num_threads())
        return VmapExecutor(model, data, spec, chunk=chunk, compile=compile, threads=chooser)
    executor = SequentialExecutor(model, data, spec, threads or 1)
    executor.reason = f"auto chose sequential: {reason}"
    return executor


def keep_freed_memory() -> None:
    """glibc: keep freed heap memory for reuse instead of returning it to the OS at once. A stacked cohort's
    temporaries are tens of megabytes (a sweep's FedProx stack of 60 clients: 38 MB a tensor), above glibc's
    mmap threshold, so every step mapped and unmapped them: 25 s of a 27 s sweep were page faults in the kernel;
    with this, 2.6 of 16 s. Elsewhere (another libc, another OS) nothing changes."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return
    if mallopt is not None:
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        mallopt(m_mmap_threshold, 1 << 30)
        mallopt(m_top_pad, 512 << 20)
        mallopt(m_trim_threshold, 1 << 30)


def _slower_under_vmap_on_cpu(model) -> str | None:
    """Why vmap would be slower than sequential here on the CPU, if it would. Under vmap a convolution becomes
    one grouped convolution over the stacked clients, slower per client on the CPU kernels, while vmap wins most
    on Linear layers, whose weight gradients it never forms (outer.py). Measured (one thread, 10 clients, batch
    10): the McMahan CNN, whose Linear layers hold 97% of the weights, 0.84x the one-model loop under vmap and
    0.99x sequential; resnet18, all convolutions, 2.2x slower a round under vmap."""
    def weights(kind):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, kind) and m.weight is not None)

    conv, linear = weights(torch.nn.modules.conv._ConvNd), weights(torch.nn.Linear)
    if conv <= linear:
        return None
    return f"convolutions hold most of the model's weights ({conv:,} against {linear:,} in Linear layers), and " \
           "vmap makes convolutions slower on the CPU; --executor vmap forces it"
