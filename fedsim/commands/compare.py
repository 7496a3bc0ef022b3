"""`fedsim compare`: a table of runs grouped over seeds (pandas and matplotlib load inside the body)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedsim.commands import stderr_console, user_errors


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


class XAxis(StrEnum):
    round = "round"
    time = "time"
    sim_seconds = "sim_seconds"
    bytes = "bytes"
    bytes_up = "bytes-up"


def compare(
    paths: Annotated[list[Path], typer.Argument(
        help="Run CSVs written by `fedsim train` (e.g. results/*.csv); a directory means its *.csv. "
             "The <name>.json record beside each CSV gives its config and status.",
        show_default=False, metavar="RUN_CSV")],
    metric: Annotated[str, typer.Option(
        help="CSV column to compare; columns named *loss* (and seconds/bytes/std) are lower-is-better.")]
        = "test_accuracy",
    target: Annotated[float | None, typer.Option(
        help="Add 'rounds to target' and 'time to target' (and 'sim time to target' for runs with client "
             "profiles): first round with metric >= TARGET (<= for lower-is-better metrics).",
        show_default=False)] = None,
    sort: Annotated[str | None, typer.Option(
        help="Order rows by this column, best first (key or label: final, best, best_round, "
             "rounds_to_target, time_to_target, total_time, total_bytes, personal_mean, personal_p10, "
             "rounds, seeds, group, status; with the simulated clock also sim_time_to_target, total_sim_time). "
             "Default: final.", show_default=False)] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Also write the metric per round for each group (mean ± std band over seeds) to this PNG.",
        show_default=False, dir_okay=False)] = None,
    x: Annotated[XAxis, typer.Option("--x", help="x axis of --plot: round, time (elapsed_seconds), sim_seconds "
                                     "(the simulated clock's time, for runs with client profiles), bytes (sent both "
                                     "ways, cumulative; a log axis) or bytes-up (sent by the clients).")]
        = XAxis.round,
    format: Annotated[Format, typer.Option(
        "--format", help="table (rich), or markdown / csv / json on stdout for files and scripts.")]
        = Format.table,
) -> None:
    """Compare runs: one row per experiment, mean ± sample std (ddof=1) over its seeds.

    Runs that differ only in seed (and bookkeeping such as name, out_dir, device) form one row.

    Rows are named by the config keys that differ between them; the best value per column is highlighted.

    Diverged, stopped and still-running runs are shown with their status.
    """
    from rich.markup import escape

    err = stderr_console()

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}")

    with user_errors():
        from fedsim import compare as lib

        summary = lib.compare_runs(paths, metric=metric, target=target, sort=sort, on_warning=warn)
        if plot is not None:
            lib.plot_curves(summary, plot, x=x.value)
        if format is Format.table:
            print_table(lib.render_table(summary))
        else:
            text = {Format.markdown: lib.to_markdown, Format.csv: lib.to_csv, Format.json: lib.to_json}
            typer.echo(text[format](summary), nl=False)
        if plot is not None:
            err.print(f"wrote {escape(str(plot))}")


def print_table(table) -> None:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    if not console.is_terminal:  # redirected: don't squeeze the table into 80 columns
        width = Measurement.get(console, console.options.update_width(250), table).maximum
        console = Console(width=max(console.width, min(width, 250)))
    console.print(table)
