"""One module per `fedsim` command, plus the helpers they share."""

from __future__ import annotations

from contextlib import contextmanager

import typer


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def user_errors():
    """Turn a FedsimError into one line on stderr and its exit code (never a traceback). Under torchrun only rank
    0 prints it: the ranks meet at start-up, so rank 0 reports an error that any rank found."""
    from rich.markup import escape

    from fedsim.engine.distributed import note_reported, process_rank
    from fedsim.errors import FedsimError

    try:
        yield
    except FedsimError as e:
        if process_rank() == 0:
            stderr_console().print(f"[bold red]error:[/] {escape(str(e))}")
            note_reported()
        raise typer.Exit(e.exit_code) from None
