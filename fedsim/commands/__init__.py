"""One module per `fedsim` command, plus the helpers they share."""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import typer


def stderr_console():
    from rich.console import Console

    # no emoji codes: "--model mymodels:X: ..." must not print a cross mark
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


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


def with_options(command, added: list[inspect.Parameter]):
    """`command` with the keyword options `added` after its own: Typer reads the signature, and the command's
    body reads their values from ctx.params (it takes them as **kwargs). Options built from declarations (the
    algorithms', Config's) are added so, never written out a second time."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = signature.replace(parameters=own + added)
    command.__annotations__ = {**command.__annotations__, **{p.name: p.annotation for p in added}}
    return command


def from_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given (not left at its default). By name: Typer carries its own copy of click,
    whose ParameterSource is another class."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def arguments_without_nproc(command: str) -> list[str]:
    """This command line from `command` on, less --nproc: what each of torchrun's processes runs."""
    import sys

    from fedsim.errors import FedsimError

    args = sys.argv[1:]
    if command not in args:
        raise FedsimError(f"--nproc is for the command line (fedsim {command} ... --nproc N)")
    kept, skip = [], False
    for arg in args[args.index(command):]:
        if not skip and arg != "--nproc" and not arg.startswith("--nproc="):
            kept.append(arg)
        skip = arg == "--nproc"
    return kept
