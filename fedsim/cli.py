"""The `fedsim` command: a thin Typer app over the library (torch loads inside command bodies)."""

from __future__ import annotations

import logging
import warnings

import typer

from fedsim.commands.compare import compare
from fedsim.commands.partition import partition
from fedsim.commands.sweep import sweep
from fedsim.commands.train import train

app = typer.Typer(
    help="Simulate federated learning: partition data, train with FL algorithms, compare runs.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(partition)
app.command()(train)
app.command()(sweep)
app.command()(compare)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings reach a command-line user as one plain line, not a source location and a code excerpt."""
    return f"warning: {message}\n"


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the fedsim version and exit."),
) -> None:
    warnings.formatwarning = _one_line_warning
    # torch.compile on a CPU-only machine with a CUDA build of torch logs "No CUDA runtime is found" with a
    # source location: nothing for the user to act on
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if version:
        from fedsim import __version__

        typer.echo(f"fedsim {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def main() -> None:
    """The console script: a usage error (an unknown option, a value of the wrong type) is one line, exit 2."""
    import sys

    try:
        code = app(standalone_mode=False)
    except Exception as e:
        # by name: Typer carries its own copy of click, whose UsageError is another class
        if not any(cls.__name__ == "UsageError" for cls in type(e).__mro__):
            raise
        command = e.ctx.command_path if e.ctx is not None else "fedsim"
        several = command.endswith(" train") and any("," in arg for arg in sys.argv[2:])
        hint = "; for several values of an option, a grid of runs, use `fedsim sweep`" if several else ""
        sys.stderr.write(f"error: {e.format_message()} (see `{command} --help`{hint})\n")
        code = e.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside a training run
        code = 130
    _exit_at_once_on_ctrl_c(code or 0)
    sys.exit(code or 0)


def _exit_at_once_on_ctrl_c(code: int) -> None:
    """The command is done: a further Ctrl-C (a second press right after the first) ends the process with `code`
    at once, instead of interrupting Python's shutdown ("Exception ignored in atexit callback")."""
    import os
    import signal
    import sys

    def leave(signum, frame):
        os._exit(code)

    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, leave)
