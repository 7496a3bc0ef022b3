"""Reading runs, grouping them over seeds, and showing how the groups compare (table, exports, plot).

    from fedsim.compare import compare_runs, to_markdown, plot_curves
    summary = compare_runs(["results/a.csv", "results/b.csv"], metric="test_accuracy", target=0.97)
    print(to_markdown(summary))
    plot_curves(summary, "curves.png")

Modules: `runs` reads a run's files, `groups` groups runs over seeds and names the groups,
`summary` computes the numbers, `columns` says which columns there are and how each sorts,
`table` turns a Summary into text (rich, markdown, CSV, JSON), `plot` draws the curves.

A *run* is `<name>.csv` (one row per evaluated round, columns `fedsim.metrics.CSV_COLUMNS`) with its
record `<name>.json` beside it. The CSV is the source of truth for every number shown here; the
record gives the configuration (for grouping and naming) and the status. A CSV without its record
is shown alone, named by its file, with status "unknown" (and a warning). A CSV with no rounds yet
(header only, or 0 bytes) is shown with its status when its record is there (a run that diverged in
round 1, or has just started) and is an error when it is not.

Conventions (the same in every output format):

- **Groups.** Runs whose configurations differ only in the seed and in bookkeeping fields
  (`BOOKKEEPING`: seed, partition_seed, name, out_dir, overwrite, quiet, device, data_dir,
  download, the partition file's path) are the same experiment over seeds and form one group.
  The scheme options (iid, dirichlet, ...) count as one key, `partition` ("dirichlet(0.5)"; for a
  partition file, the scheme its record names), and `clients` is the count the record says was used.
  A group is named by the configuration keys that differ between groups (`algo=fedprox mu=0.001`);
  a key an algorithm does not use (`mu` for FedAvg) is left out of that group's name unless that
  would make two names equal. With nothing to tell groups apart, the file names are used.
- **mean ± std over seeds.** Every per-seed number is summarised as mean ± the *sample* standard
  deviation (ddof=1). With one seed there is no std: NaN in `Summary.table`, empty in CSV, null
  in JSON, no "±" in the table and markdown. A seed with no value (no rounds written) is left out
  of a mean; the `seeds` column (n) counts every run of the group, and `status` says why.
- **final** is the run's last evaluated value of the metric (its last row with a value);
  **best** is the best value over the run's rows (max, or min for lower-is-better metrics) and
  **best round** the first round it was reached; both are per seed, then averaged over seeds.
- **Lower is better** for metrics named *loss*, *seconds*, *bytes* or *std*; higher for the rest.
- **rounds to target / time to target**: the first evaluated round whose value reaches the
  target (>= target, or <= for lower-is-better metrics) and `elapsed_seconds` at that row. A
  group gets numbers only when every seed reached the target; otherwise it says how many did.
- **total time** is `elapsed_seconds` at the last row; **total bytes** sums bytes_up + bytes_down
  over all rows (so it counts every round only when each row's bytes cover the rounds since the
  previous row, or every round has a row).
"""

from fedsim.compare.columns import Column, columns
from fedsim.compare.groups import BOOKKEEPING, Group, experiment_key, group_runs
from fedsim.compare.plot import curve, plot_curves
from fedsim.compare.runs import Run, expand_paths, read_run, read_runs
from fedsim.compare.summary import (
    RunSummary,
    Summary,
    available_metrics,
    compare_runs,
    lower_is_better,
    summarize,
    summarize_run,
)
from fedsim.compare.table import display_rows, render_table, to_csv, to_json, to_markdown

__all__ = [
    "BOOKKEEPING",
    "Column",
    "Group",
    "Run",
    "RunSummary",
    "Summary",
    "available_metrics",
    "columns",
    "compare_runs",
    "curve",
    "display_rows",
    "expand_paths",
    "experiment_key",
    "group_runs",
    "lower_is_better",
    "plot_curves",
    "read_run",
    "read_runs",
    "render_table",
    "summarize",
    "summarize_run",
    "to_csv",
    "to_json",
    "to_markdown",
]
