"""Writing a file whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from fedsim.errors import FedsimError


def write_atomically(path: Path, write: Callable[[Path], None], what: str, hint: str = "") -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.

    Readers (and an interrupted run) see the old file or the new one, never half of one; the temporary
    file goes too when the write fails or is interrupted (Ctrl-C, SIGTERM). An OSError becomes one
    FedsimError line naming `what` and `path`, with `hint` appended.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise FedsimError(f"cannot write {what} {path}: {e.strerror or e}{hint}") from None
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files `write_atomically` left beside `path` in processes that were killed (kill -9 lets
    no cleanup run). Only a holder of `path`'s lock may call it: no live process then writes `path`."""
    import glob

    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def torch_save(obj, path: Path) -> None:
    """`torch.save(obj, path)`, raising a failed write (a full disk) as the OSError it is: torch turns one
    into a RuntimeError that gives no reason ("unexpected pos ..."), which `write_atomically` cannot tell
    from a bug."""
    import torch

    with open(path, "wb") as file:
        write_error = None

        def write(data) -> int:
            nonlocal write_error
            try:
                return file.write(data)
            except OSError as e:
                write_error = e
                raise

        try:
            torch.save(obj, SimpleNamespace(write=write, flush=file.flush))
        except RuntimeError:
            if write_error is None:
                raise
            raise write_error from None
