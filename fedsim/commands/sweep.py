"""`fedsim sweep`: every option of `fedsim train`, each taking several values; the grid's runs trained together."""

from __future__ import annotations

import inspect
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedsim.commands import arguments_without_nproc, from_command_line, stderr_console, user_errors, with_options

_SWEEP = "Sweep"
_VALUES_HELP = "Several values: comma-separated (integers also A-B: 0-4 is 0,1,2,3,4)."


class Stacking(StrEnum):
    auto = "auto"
    always = "always"
    never = "never"


def sweep(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        help="TOML file: fixed options at the top level, a \\[sweep] table of option = \\[values]; flags override "
             "it.",
        rich_help_panel=_SWEEP)] = None,
    name: Annotated[str | None, typer.Option(
        help="The sweep's name: <name>.sweep.json, and the start of every run's name (default <dataset>-sweep).",
        rich_help_panel=_SWEEP)] = None,
    out_dir: Annotated[str, typer.Option(help="Folder for the runs' files and <name>.sweep.json.",
                                         rich_help_panel=_SWEEP)] = "results",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the runs (name, the options that vary, which "
                                          "train together) and their count, then exit.",
                                          rich_help_panel=_SWEEP)] = False,
    max_runs: Annotated[int, typer.Option(help="Refuse a grid of more runs than this.", rich_help_panel=_SWEEP)]
        = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start every run over (default: finished runs "
                                            "are kept, stopped ones resume from their checkpoints).",
                                            rich_help_panel=_SWEEP)] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write the test accuracy per round of each group (mean ± "
                                              "std over seeds) to this PNG.", dir_okay=False,
                                              rich_help_panel=_SWEEP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.", rich_help_panel=_SWEEP)] = False,
    stack: Annotated[Stacking, typer.Option(
        help="How runs that can train together train: auto (each round together or one run after another, "
             "whichever timing shows is faster), always (together), never (one whole run after another). The "
             "numbers are the same; <name>.sweep.json records the choice.", rich_help_panel=_SWEEP)]
        = Stacking.auto,
    nproc: Annotated[int | None, typer.Option(
        metavar="N", show_default=False, rich_help_panel=_SWEEP,
        help="Run in N processes on this machine, each training its share of the runs (launches torchrun: the "
             "same as `torchrun --nproc-per-node N -m fedsim sweep ...`; several machines: torchrun's own "
             "multi-node options).")] = None,
    **option_values,  # every other option of `fedsim train`, each as values: see _with_run_options
) -> None:
    """Run a grid of experiments: the product of the values given (an algorithm's own options only for its
    runs), each run's files as `fedsim train` writes them, runs that differ only in seeds, partition, learning
    rate, momentum, weight decay or a per-client option (FedProx's mu) trained together. Re-running the same
    command skips finished runs and resumes stopped ones."""
    from rich.markup import escape

    from fedsim import sweep as lib
    from fedsim.config import Config
    from fedsim.engine.distributed import launch, process_rank
    from fedsim.errors import FedsimError

    with user_errors():
        if nproc is not None and nproc < 1:
            raise FedsimError(f"--nproc must be >= 1 (got {nproc})")
        if "," in out_dir:
            raise FedsimError(f"--out-dir cannot vary in a sweep: give one folder (got {out_dir!r})")
        if name is not None and "," in name:
            raise FedsimError(f"--name cannot vary in a sweep: give one name, which starts every run's (got {name!r})")
        if plot is not None:  # checked before anything trains, not after the whole sweep
            from fedsim.compare.plot import check_plot_path

            check_plot_path(plot)
        fixed, grid = lib.grid_from_toml(config) if config is not None else ({}, {})
        for key, value in ctx.params.items():
            if key in SWEEP_ONLY or not from_command_line(ctx, key):
                continue
            if isinstance(value, bool):
                fixed[key] = value
            elif key == "betas":
                fixed[key] = tuple(value)
            else:
                grid[key] = lib.parse_values(key, value, max_runs)
        fixed.update(out_dir=out_dir, quiet=True)
        dataset = grid["dataset"][0] if len(grid.get("dataset", [])) == 1 else fixed.get("dataset", Config.dataset)
        sweep_name = name or f"{Config(dataset=dataset).dataset_label()}-sweep"
        runs = lib.expand(fixed, grid, sweep_name, max_runs)
        if dry_run:
            _print_plan(runs, lib)
            return
        if nproc is not None and nproc > 1:  # this command again, in nproc processes: torchrun's
            raise typer.Exit(launch(nproc, arguments_without_nproc("sweep"),
                                    "run the same command again to go on"))
        try:
            runs = _run(runs, sweep_name, out_dir, overwrite, quiet or process_rank() != 0, lib,
                        stack.value)
        except KeyboardInterrupt:
            stderr_console().print(f"stopped; the runs checkpointed where they were: run the same command again to "
                                   f"go on ({Path(out_dir) / (sweep_name + '.sweep.json')})")
            raise typer.Exit(130) from None
        if process_rank() != 0:  # rank 0 reports the whole sweep
            return
        _print_results(runs, plot)
        bad = [r for r in runs if r.status in ("diverged", "failed")]
        for run in bad:  # escaped: a detail such as pip install 'fedsim[tensorboard]' is not markup
            stderr_console().print(f"[bold red]{run.status}:[/] {escape(run.name)}: {escape(run.detail)}")
        if bad:
            raise typer.Exit(3)


SWEEP_ONLY = {"ctx", "config", "name", "out_dir", "dry_run", "max_runs", "overwrite", "plot", "quiet", "nproc",
              "stack"}


def _with_run_options(command):
    """Give `command` one option per Config field not already its own: flags stay flags, --betas takes its two
    numbers, every other option takes text holding one or several values."""
    import typing

    from fedsim.commands.train import train
    from fedsim.config import FIELDS, field_types

    taken = set(inspect.signature(command).parameters)
    train_options = typing.get_type_hints(train, include_extras=True)
    added = []
    for field_name in FIELDS:
        if field_name in taken:
            continue
        kind = field_types()[field_name]
        option = "--" + field_name.replace("_", "-")
        info = typing.get_args(train_options[field_name])[1]  # the train option's help and panel
        if kind is bool:
            annotation = Annotated[bool, typer.Option(option, help=info.help, rich_help_panel=info.rich_help_panel)]
        elif field_name == "betas":
            annotation = Annotated[tuple[float, float] | None, typer.Option(
                option, help=info.help, rich_help_panel=info.rich_help_panel)]
        else:
            annotation = Annotated[str | None, typer.Option(
                option, metavar="VALUES", help=f"{info.help} {_VALUES_HELP}", show_default=False,
                rich_help_panel=info.rich_help_panel)]
        default = FIELDS[field_name].default if kind is bool else None
        added.append(inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                       annotation=annotation))
    return with_options(command, added)


sweep = _with_run_options(sweep)


def _print_plan(runs, lib) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = list(dict.fromkeys(k for r in runs for k in r.varying))
    stacks: dict[str, int] = {}
    table = Table(title=f"{len(runs)} runs")
    for column in ("#", "name", *keys, "trains with"):  # a narrow terminal folds names rather than cutting them
        table.add_column(column, overflow="fold" if column == "name" else "ellipsis")
    for i, run in enumerate(runs, start=1):
        stack = stacks.setdefault(lib.stack_key(run.config), len(stacks) + 1)
        table.add_row(str(i), run.name, *(lib.format_value(run.varying[k]) if k in run.varying else "-" for k in keys),
                      f"stack {stack}")
    Console().print(table)
    Console().print(f"{len(runs)} runs in {len(stacks)} stack(s); runs of one stack train together")


def _run(runs, sweep_name, out_dir, overwrite, quiet, lib, stack):
    """The sweep, with a live display on a terminal, else a line as each run ends."""
    import sys

    if quiet:
        return lib.run_sweep(runs, sweep_name, out_dir, overwrite, stack=stack)
    started, console = time.perf_counter(), stderr_console()
    if not sys.stderr.isatty():
        told: set[str] = set()

        def tell(rs):
            for r in rs:
                if r.status not in ("pending", "running") and r.name not in told:
                    told.add(r.name)
                    console.print(f"{r.status}: {r.name} (round {r.round}/{r.config.rounds})")

        return lib.run_sweep(runs, sweep_name, out_dir, overwrite, on_change=tell, stack=stack)
    from rich.live import Live

    with Live(_progress(runs, started), console=console, refresh_per_second=4) as live:
        return lib.run_sweep(runs, sweep_name, out_dir, overwrite,
                             on_change=lambda rs: live.update(_progress(rs, started)), stack=stack)


def _progress(runs, started: float):
    """Runs done / running / left, the round of each running run, and an ETA from the rounds done so far."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    total = sum(r.config.rounds for r in runs)
    done = sum(r.config.rounds if r.status == "finished" else r.round for r in runs)
    count = {s: sum(r.status == s for r in runs) for s in ("finished", "running", "pending")}
    elapsed = time.perf_counter() - started
    fresh = done - sum(r.config.rounds for r in runs if r.status == "finished" and r.round == 0)
    eta = f"{elapsed / fresh * (total - done):.0f} s" if fresh > 0 and done < total else "-"
    line = Text(f"sweep: {count['finished']} done, {count['running']} running, {count['pending']} left of "
                f"{len(runs)}; rounds {done}/{total}; ETA {eta}")
    running = [r for r in runs if r.status == "running"]
    if not running:
        return line
    table = Table(box=None)
    table.add_column("running", overflow="fold")
    table.add_column("round", justify="right", no_wrap=True)
    for run in running:
        table.add_row(run.name, f"{run.round}/{run.config.rounds}")
    return Group(line, table)


def _print_results(runs, plot) -> None:
    from fedsim import compare
    from fedsim.commands.compare import print_table

    csvs = [path for r in runs if (path := Path(r.config.out_dir) / f"{r.name}.csv").exists()]
    if not csvs:
        return
    summary = compare.compare_runs(csvs, on_warning=lambda message: None)
    print_table(compare.render_table(summary))
    if plot is not None:
        compare.plot_curves(summary, plot)
        stderr_console().print(f"wrote {plot}")
