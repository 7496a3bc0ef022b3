"""Reading runs, grouping them over seeds, and showing how the groups compare (table, exports, plot).

    from fedsim.compare import compare_runs, to_markdown, plot_curves
    summary = compare_runs(["results/a.csv", "results/b.csv"], metric="test_accuracy", target=0.97)
    print(to_markdown(summary))
    plot_curves(summary, "curves.png")

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

from __future__ import annotations

import dataclasses
import glob
import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from fedsim.errors import FedsimError
from fedsim.metrics import CSV_COLUMNS

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

Warn = Callable[[str], None]

BOOKKEEPING = frozenset({
    "seed", "partition_seed",            # the seeds themselves: what a group averages over
    "name", "out_dir", "overwrite", "quiet", "device", "data_dir", "download",
    "partition",                         # the partition file's path (its scheme is kept, see below)
})
# The partition scheme options collapse into one key, `partition`, e.g. "dirichlet(0.5)" or "iid".
SCHEME_FIELDS = ("iid", "dirichlet", "shards", "labels", "quantity_skew", "natural")

# Algorithm hyperparameters and the algorithms that read them: a group's name leaves out a key
# its algorithm ignores (FedAvg's mu). Only for naming; grouping always uses every key.
_SERVER_OPT = {"server_lr", "server_beta1", "server_beta2", "server_tau"}
ALGO_PARAMS: dict[str, set[str]] = {
    "fedavg": set(), "fedper": set(), "fedbn": set(), "fedas": set(), "fednova": set(),
    "fedprox": {"mu"},
    "scaffold": {"server_lr"},
    "fedavgm": {"server_lr", "server_momentum"},
    "fedadam": _SERVER_OPT, "fedyogi": _SERVER_OPT, "fedadagrad": _SERVER_OPT,
    "fedrep": {"head_epochs"},
    "ditto": {"lam"},
}
_ALGO_SPECIFIC = set().union(*ALGO_PARAMS.values())


def lower_is_better(metric: str) -> bool:
    """True for metrics where smaller is better: losses, times, bytes, spreads."""
    m = metric.lower()
    return "loss" in m or "seconds" in m or "bytes" in m or "std" in m


# --- reading ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run: its CSV rows (sorted by round) and its JSON record (None when missing)."""

    csv_path: Path
    rows: pd.DataFrame
    record: dict | None = None

    @property
    def file(self) -> str:
        return self.csv_path.stem

    @property
    def config(self) -> dict:
        cfg = (self.record or {}).get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def status(self) -> str:
        """finished / diverged at round r / running / stopped / unknown (no record)."""
        if self.record is None:
            return "unknown"
        status = str(self.record.get("status") or "unknown")
        if status == "diverged":
            found = re.search(r"round (\d+)", str(self.record.get("status_detail") or ""))
            if found:
                return f"diverged at round {found.group(1)}"
            if len(self.rows):
                return f"diverged after round {int(self.rows['round'].iloc[-1])}"
        return status


class _EmptyCSV(FedsimError):
    pass


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files to read: globs the shell left unexpanded are expanded, a directory means its *.csv,
    a `.json` record means the CSV beside it; duplicates are dropped, order kept."""
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if not Path(text).exists() and any(c in text for c in "*?["):
            matched = sorted(glob.glob(text, recursive=True))
            if not matched:
                raise FedsimError(f"no file matches {text}")
            out.extend(Path(m) for m in matched)
            continue
        path = Path(text)
        if not path.exists():
            raise FedsimError(f"{path} does not exist")
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise FedsimError(f"{path} is a directory with no .csv files in it")
            out.extend(found)
        else:
            out.append(path)
    result, seen = [], set()
    for path in out:
        if path.suffix == ".json":  # a record stands for its run: `results/*` works too
            csv_path = path.with_suffix(".csv")
            if not csv_path.exists():
                raise FedsimError(f"{path} is a run record without its CSV ({csv_path} is missing)")
            path = csv_path
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.append(path)
    if not result:
        raise FedsimError("no files given")
    return result


def _read_csv(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise FedsimError(f"{path} is a directory, not a CSV file")
    if path.stat().st_size == 0:
        raise _EmptyCSV(f"{path} is empty (0 bytes): no rounds written")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FedsimError(f"{path} is not a fedsim CSV (cannot be read as CSV: {reason})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise FedsimError(f"{path} is not a fedsim CSV: missing columns {', '.join(missing)}")
    if df.empty:
        raise _EmptyCSV(f"{path} is empty (header only): no rounds written")
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            converted = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][converted.isna() & df[col].notna()]
            if col in CSV_COLUMNS and len(bad):
                raise FedsimError(f"{path}: column {col} has a non-numeric value {bad.iloc[0]!r} "
                                  f"(row {bad.index[0] + 1})")
            if col in CSV_COLUMNS:
                df[col] = converted
    df = df.dropna(subset=["round"])
    # A resumed run may repeat rounds after its checkpoint: the later row wins.
    df = df.drop_duplicates(subset="round", keep="last").sort_values("round", kind="stable")
    return df.reset_index(drop=True)


def _read_record(csv_path: Path, warn: Warn) -> dict | None:
    path = csv_path.with_suffix(".json")
    if not path.exists():
        warn(f"{path} not found: {csv_path.name} is shown alone by its file name, status unknown")
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warn(f"{path} cannot be read ({e}): {csv_path.name} is shown alone by its file name")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        warn(f"{path} is not a fedsim run record (no config): {csv_path.name} is shown alone")
        return None
    return record


def _default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def read_run(csv_path: str | Path, on_warning: Warn | None = None) -> Run:
    """Read one run (its CSV and the JSON record beside it). Raises FedsimError for bad input.

    A CSV with no rounds (header only, or 0 bytes) is a run only when its record is there: one that
    diverged or was stopped in round 1, or has just started. Without a record it is an error."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FedsimError(f"{csv_path} does not exist")
    warn = on_warning or _default_warn
    try:
        rows = _read_csv(csv_path)
    except _EmptyCSV as e:
        record = _read_record(csv_path, lambda _msg: None)
        if record is None:
            raise FedsimError(str(e)) from None
        return Run(csv_path, pd.DataFrame({c: pd.Series(dtype=float) for c in CSV_COLUMNS}), record)
    return Run(csv_path, rows, _read_record(csv_path, warn))


def read_runs(paths: Iterable[str | Path], on_warning: Warn | None = None) -> list[Run]:
    """Read every run named by `paths` (files, directories, globs; see `expand_paths`)."""
    runs = [read_run(path, on_warning) for path in expand_paths(paths)]
    if all(r.rows.empty for r in runs):
        states = ", ".join(f"{r.csv_path.name}: {r.status}" for r in runs)
        raise FedsimError(f"no run has written a round yet ({states})")
    return runs


# --- grouping -----------------------------------------------------------------------------------


def _partition_key(run: Run) -> str:
    cfg = run.config
    if cfg.get("partition"):  # a saved partition file: its record section says what is in it
        part = (run.record or {}).get("partition") or {}
        params = {k: v for k, v in (part.get("params") or {}).items() if k != "min_size"}
        scheme, param = part.get("scheme", "file"), ",".join(_fmt_value(v) for v in params.values()) or None
    else:
        given = [(s, cfg.get(s)) for s in ("dirichlet", "shards", "labels", "quantity_skew")
                 if cfg.get(s) is not None]
        given += [(s, None) for s in ("iid", "natural") if cfg.get(s)]
        scheme, param = given[0] if len(given) == 1 else ("iid", None) if not given else ("invalid", None)
    return scheme if param is None else f"{scheme}({_fmt_value(param)})"


def experiment_key(run: Run) -> dict:
    """The run's configuration minus seeds and bookkeeping: equal keys = the same experiment."""
    from fedsim.config import FIELDS

    # A field missing from an older record has its default: a new option does not split groups.
    defaults = {name: f.default for name, f in FIELDS.items() if f.default is not dataclasses.MISSING}
    skip = BOOKKEEPING | set(SCHEME_FIELDS)
    cfg = {k: v for k, v in {**defaults, **run.config}.items() if k not in skip}
    cfg["partition"] = _partition_key(run)
    # The record holds the client count actually used (--clients may be left to its default).
    clients = ((run.record or {}).get("partition") or {}).get("num_clients")
    if clients is not None:
        cfg["clients"] = clients
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


@dataclass
class Group:
    """Runs of one experiment over seeds. `config` is None for a CSV shown alone (no record)."""

    name: str
    runs: list[Run]
    config: dict | None = None
    differing: dict = field(default_factory=dict)  # the keys (and values) in the name

    @property
    def n(self) -> int:
        return len(self.runs)


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt_value(x) for x in v)
    return str(v)


def _key_order(keys: Iterable[str]) -> list[str]:
    from fedsim.config import FIELDS

    order = {name: i for i, name in enumerate(FIELDS)}
    order["partition"] = order.get("iid", len(order))
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def _stem_name(runs: Sequence[Run]) -> str:
    stems = [r.file for r in runs]
    stripped = {re.sub(r"[-_.]?seed\d+", "", s) for s in stems}
    if len(stems) > 1 and len(stripped) == 1 and stripped != {""}:
        return stripped.pop()
    return ", ".join(stems) if len(stems) <= 3 else f"{stems[0]}, {stems[1]}, … (+{len(stems) - 2} more)"


def group_runs(runs: Sequence[Run], on_warning: Warn | None = None) -> list[Group]:
    """Group runs over seeds (see the module docstring) and name each group. Order: first seen."""
    warn = on_warning or _default_warn
    by_key: dict[str, Group] = {}
    for run in runs:
        if run.record is None:
            by_key[f"file:{run.csv_path.resolve()}"] = Group(run.file, [run])
            continue
        cfg = experiment_key(run)
        key = json.dumps({k: _fmt_value(v) for k, v in cfg.items()}, sort_keys=True)  # lr=1 is lr=1.0
        by_key.setdefault(key, Group("", [], cfg)).runs.append(run)
    groups = list(by_key.values())
    configured = [g for g in groups if g.config is not None]

    keys = _key_order({k for g in configured for k in g.config})
    varying = [k for k in keys if len({_fmt_value(g.config.get(k)) for g in configured}) > 1]
    for g in configured:
        if not varying:
            g.name = _stem_name(g.runs)
            continue
        algo = g.config.get("algo")
        shown = [k for k in varying
                 if not (k in _ALGO_SPECIFIC and algo in ALGO_PARAMS and k not in ALGO_PARAMS[algo])]
        g.differing = {k: g.config.get(k) for k in shown}
        g.name = " ".join(f"{k}={_fmt_value(v)}" for k, v in g.differing.items()) or f"algo={algo}"
    # Leaving out unused keys must never make two groups look alike.
    counts = Counter(g.name for g in configured)
    for g in configured:
        if counts[g.name] > 1:
            g.differing = {k: g.config.get(k) for k in varying}
            g.name = " ".join(f"{k}={_fmt_value(v)}" for k, v in g.differing.items())

    for g in configured:
        seeds = Counter(r.seed for r in g.runs)
        repeated = sorted(str(s) for s, c in seeds.items() if c > 1)
        if repeated:
            files = ", ".join(r.csv_path.name for r in g.runs if str(r.seed) in repeated)
            warn(f"group {g.name!r} has more than one run with seed {', '.join(repeated)} ({files}); "
                 "each counts as a seed")
    return groups


# --- summarising --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run (per seed). NaN where not defined."""

    file: str
    seed: int | None
    status: str
    final: float
    best: float
    best_round: float
    reached: bool | None          # None without a target
    rounds_to_target: float
    time_to_target: float
    total_seconds: float
    total_bytes: float
    personal_mean: float
    personal_p10: float
    rounds_completed: int
    rounds_planned: int | None


def _last_value(rows: pd.DataFrame, col: str) -> float:
    if col not in rows:
        return math.nan
    values = rows[col].dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def summarize_run(run: Run, metric: str, target: float | None = None) -> RunSummary:
    rows, low = run.rows, lower_is_better(metric)
    values = rows[metric] if metric in rows else pd.Series(math.nan, index=rows.index)
    valid = values.dropna()
    if len(valid):
        best_idx = valid.idxmin() if low else valid.idxmax()
        best, best_round = float(valid[best_idx]), float(rows.at[best_idx, "round"])
    else:
        best = best_round = math.nan
    reached = rounds_to_target = time_to_target = None
    if target is not None:
        hit = valid[valid <= target] if low else valid[valid >= target]
        reached = bool(len(hit))
        rounds_to_target = float(rows.at[hit.index[0], "round"]) if reached else math.nan
        time_to_target = float(rows.at[hit.index[0], "elapsed_seconds"]) if reached else math.nan
    planned = run.config.get("rounds")
    return RunSummary(
        file=run.file,
        seed=run.seed,
        status=run.status,
        final=_last_value(rows, metric),
        best=best,
        best_round=best_round,
        reached=reached,
        rounds_to_target=math.nan if rounds_to_target is None else rounds_to_target,
        time_to_target=math.nan if time_to_target is None else time_to_target,
        total_seconds=_last_value(rows, "elapsed_seconds"),
        total_bytes=float(rows["bytes_up"].sum(min_count=1) + rows["bytes_down"].sum(min_count=1)),
        personal_mean=_last_value(rows, "personal_accuracy_mean"),
        personal_p10=_last_value(rows, "personal_accuracy_p10"),
        rounds_completed=int(rows["round"].iloc[-1]) if len(rows) else 0,
        rounds_planned=planned if isinstance(planned, int) else None,
    )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1), NaN values left out; the std is NaN with fewer than two values."""
    s = pd.Series(list(values), dtype=float)
    return float(s.mean()), float(s.std(ddof=1))


@dataclass
class Summary:
    """Groups and their per-seed numbers, in display order. `table` is the numeric summary."""

    metric: str
    target: float | None
    groups: list[Group]
    runs: list[list[RunSummary]]  # parallel to groups

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    @property
    def has_personal(self) -> bool:
        return any(not math.isnan(r.personal_mean) or not math.isnan(r.personal_p10)
                   for rs in self.runs for r in rs)

    @property
    def table(self) -> pd.DataFrame:
        """One row per group: exact numbers (mean/std over seeds), the CSV and JSON exports' columns."""
        m = self.metric
        out = []
        for g, rs in zip(self.groups, self.runs, strict=True):
            row: dict = {"group": g.name, "n": g.n}

            def add(name: str, values: Sequence[float], row=row) -> None:
                row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)

            add(f"final_{m}", [r.final for r in rs])
            add(f"best_{m}", [r.best for r in rs])
            add("best_round", [r.best_round for r in rs])
            if self.target is not None:
                row["target"] = self.target
                row["seeds_reached_target"] = sum(bool(r.reached) for r in rs)
                all_reached = all(r.reached for r in rs)
                add("rounds_to_target", [r.rounds_to_target for r in rs] if all_reached else [math.nan])
                add("time_to_target_seconds", [r.time_to_target for r in rs] if all_reached else [math.nan])
            add("total_seconds", [r.total_seconds for r in rs])
            add("total_bytes", [r.total_bytes for r in rs])
            if self.has_personal:
                add("personal_acc_mean", [r.personal_mean for r in rs])
                add("personal_acc_p10", [r.personal_p10 for r in rs])
            row["rounds_completed_min"] = min(r.rounds_completed for r in rs)
            row["rounds_completed_max"] = max(r.rounds_completed for r in rs)
            row["status"] = _group_status(rs)
            row["seeds"] = ";".join("" if r.seed is None else str(r.seed) for r in rs)
            row["runs"] = ";".join(r.file for r in rs)
            out.append(row)
        return pd.DataFrame(out)

    def sort(self, column: str | None = None) -> Summary:
        """Rows ordered by a column (its key or label, see `columns`), best first; default: final."""
        cols = columns(self)
        col = _find_column(cols, column or "final")
        keyed = [(_sort_value(self, i, col), i) for i in range(len(self.groups))]
        if col.better is None:  # text: alphabetical
            order = [i for _, i in sorted(keyed, key=lambda t: str(t[0]))]
        else:
            sign = -1.0 if col.better == "high" else 1.0
            order = [i for _, i in sorted(keyed, key=lambda t: (math.isnan(t[0]), sign * t[0]
                                                                  if not math.isnan(t[0]) else 0.0))]
        return replace(self, groups=[self.groups[i] for i in order], runs=[self.runs[i] for i in order])


def _group_status(rs: Sequence[RunSummary]) -> str:
    counts = Counter(r.status for r in rs)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(s if c == 1 else f"{s} ×{c}" for s, c in counts.items())


def summarize(groups: Sequence[Group], metric: str = "test_accuracy", target: float | None = None) -> Summary:
    """Summarise each group over its seeds; rows in the groups' order (use `.sort()` to reorder)."""
    runs = [g for group in groups for g in group.runs]
    available = available_metrics(runs)
    if metric not in available:
        raise FedsimError(f"no run has values for metric {metric!r}; available: {', '.join(available)}")
    if target is not None and "accuracy" in metric and not 0 <= target <= 1:
        hint = f"; did you mean --target {target / 100:g}?" if 1 < target <= 100 else ""
        raise FedsimError(f"--target {target:g} is outside [0, 1] (accuracies are fractions){hint}")
    return Summary(metric, target, list(groups),
                   [[summarize_run(r, metric, target) for r in g.runs] for g in groups])


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric columns (other than round) with at least one value in some run, in CSV order."""
    cols: list[str] = []
    for run in runs:
        for c in run.rows.columns:
            if (c != "round" and c not in cols and pd.api.types.is_numeric_dtype(run.rows[c])
                    and run.rows[c].notna().any()):
                cols.append(c)
    return cols


def compare_runs(paths: Iterable[str | Path], metric: str = "test_accuracy", target: float | None = None,
                 sort: str | None = None, on_warning: Warn | None = None) -> Summary:
    """Read, group, summarise and sort: everything `fedsim compare` shows, as a Summary."""
    runs = read_runs(paths, on_warning)
    return summarize(group_runs(runs, on_warning), metric, target).sort(sort)


# --- columns and their display ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str                 # name for --sort (the label works too)
    label: str               # the header shown
    better: str | None       # "high" / "low": best-first direction for --sort; None: text
    highlight: bool = False  # mark the best value in the table


def columns(summary: Summary) -> list[Column]:
    """The displayed columns, in order; which appear depends on --target and personal metrics."""
    m, metric_better = summary.metric, "low" if summary.lower_is_better else "high"
    cols = [
        Column("group", "group", None),
        Column("seeds", "seeds", "high"),
        Column("final", f"final {m}", metric_better, True),
        Column("best", f"best {m}", metric_better, True),
        Column("best_round", "best round", "low"),
    ]
    if summary.target is not None:
        cols += [Column("rounds_to_target", "rounds to target", "low", True),
                 Column("time_to_target", "time to target", "low", True)]
    cols += [Column("total_time", "total time", "low", True),
             Column("total_bytes", "total bytes", "low", True)]
    if summary.has_personal:
        cols += [Column("personal_mean", "personal acc mean", "high", True),
                 Column("personal_p10", "personal acc worst-10%", "high", True)]
    cols += [Column("rounds", "rounds", "high"), Column("status", "status", None)]
    return cols


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _find_column(cols: Sequence[Column], name: str) -> Column:
    for c in cols:
        if _norm(name) in (_norm(c.key), _norm(c.label)):
            return c
    if _norm(name) in ("rounds to target", "time to target"):
        raise FedsimError(f"--sort {name!r} needs --target")
    raise FedsimError(f"unknown --sort column {name!r}; choose from: {', '.join(c.key for c in cols)}")


_SORT_FIELD = {
    "seeds": "n", "final": "final_{m}_mean", "best": "best_{m}_mean", "best_round": "best_round_mean",
    "rounds_to_target": "rounds_to_target_mean", "time_to_target": "time_to_target_seconds_mean",
    "total_time": "total_seconds_mean", "total_bytes": "total_bytes_mean",
    "personal_mean": "personal_acc_mean_mean", "personal_p10": "personal_acc_p10_mean",
    "rounds": "rounds_completed_max",
}


def _sort_value(summary: Summary, i: int, col: Column):
    if col.key == "group":
        return summary.groups[i].name
    if col.key == "status":
        return _group_status(summary.runs[i])
    return _column_values(summary, col)[i]


def _column_values(summary: Summary, col: Column) -> list[float]:
    table = summary.table
    return [float(v) for v in table[_SORT_FIELD[col.key].format(m=summary.metric)]]


def _fmt_num(v: float) -> str:
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"


def _fmt_pm(values: Sequence[float], fmt: Callable[[float], str] = _fmt_num, hide_zero: bool = False) -> str:
    """mean ± sample std; just the mean with one value (or a zero std, where asked)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    mean, std = _mean_std(finite)
    if len(finite) == 1 or math.isnan(std) or (hide_zero and std == 0):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def _fmt_round(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _unit(mean: float, units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    scale, name = units[0]
    for s, n in units:
        if abs(mean) >= s:
            scale, name = s, n
    return scale, name


def _fmt_scaled(values: Sequence[float], units: Sequence[tuple[float, str]], digits: int = 1) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    scale, name = _unit(_mean_std(finite)[0], units)
    digits = 0 if name == "B" else digits
    text = _fmt_pm([v / scale for v in finite], lambda x: f"{x:.{digits}f}", hide_zero=True)
    return f"{text} {name}"


_TIME_UNITS = [(1.0, "s"), (60.0, "min"), (3600.0, "h")]
_BYTE_UNITS = [(1.0, "B"), (1024.0, "KiB"), (1024.0**2, "MiB"), (1024.0**3, "GiB"), (1024.0**4, "TiB")]


def _fmt_rounds_completed(rs: Sequence[RunSummary]) -> str:
    done = sorted({r.rounds_completed for r in rs})
    text = str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}"
    planned = {r.rounds_planned for r in rs} - {None}
    if len(planned) == 1 and max(done) != (p := planned.pop()):
        text += f" of {p}"
    return text


def _target_cells(summary: Summary, rs: Sequence[RunSummary]) -> tuple[str, str]:
    reached = [r for r in rs if r.reached]
    if len(reached) == len(rs):
        return (_fmt_pm([r.rounds_to_target for r in rs], _fmt_round, hide_zero=True),
                _fmt_scaled([r.time_to_target for r in rs], _TIME_UNITS))
    missed = [r.best for r in rs if not r.reached and not math.isnan(r.best)]
    pick = min if summary.lower_is_better else max
    best = f"best {_fmt_num(pick(missed))}" if missed else "no values"
    if len(rs) == 1:
        return f"not reached ({best})", "not reached"
    if not reached:
        return f"not reached by any of {len(rs)} seeds ({best})", "not reached"
    return (f"reached by {len(reached)}/{len(rs)} seeds only (others' {best})",
            f"{len(reached)}/{len(rs)} seeds only")


def display_rows(summary: Summary) -> tuple[list[Column], list[list[str]], list[list[bool]]]:
    """The table as text: columns, one row of cells per group, and which cells are the column's best."""
    cols = columns(summary)
    rows = []
    for g, rs in zip(summary.groups, summary.runs, strict=True):
        cells = {
            "group": g.name,
            "seeds": str(g.n),
            "final": _fmt_pm([r.final for r in rs]),
            "best": _fmt_pm([r.best for r in rs]),
            "best_round": _fmt_pm([r.best_round for r in rs], _fmt_round, hide_zero=True),
            "total_time": _fmt_scaled([r.total_seconds for r in rs], _TIME_UNITS),
            "total_bytes": _fmt_scaled([r.total_bytes for r in rs], _BYTE_UNITS),
            "personal_mean": _fmt_pm([r.personal_mean for r in rs]),
            "personal_p10": _fmt_pm([r.personal_p10 for r in rs]),
            "rounds": _fmt_rounds_completed(rs),
            "status": _group_status(rs),
        }
        if summary.target is not None:
            cells["rounds_to_target"], cells["time_to_target"] = _target_cells(summary, rs)
        rows.append([cells[c.key] for c in cols])
    best = [[False] * len(cols) for _ in rows]
    for j, col in enumerate(cols):
        if not col.highlight or len(rows) < 2:
            continue
        values = _column_values(summary, col)
        if col.key in ("total_time", "total_bytes"):  # a run cut short is cheap, not better
            values = [v if _group_status(rs) == "finished" else math.nan
                      for v, rs in zip(values, summary.runs, strict=True)]
        finite = [v for v in values if not math.isnan(v)]
        if len(finite) < 2:
            continue
        top = min(finite) if col.better == "low" else max(finite)
        for i, v in enumerate(values):
            best[i][j] = v == top
    return cols, rows, best


def _caption(summary: Summary) -> list[str]:
    direction = "lower" if summary.lower_is_better else "higher"
    first = f"{summary.metric}: {direction} is better"
    if summary.target is not None:
        sign = "≤" if summary.lower_is_better else "≥"
        first += f"; target {sign} {summary.target:g} (time to target = elapsed_seconds at that round)"
    return [first, "mean ± sample std (ddof=1) over seeds; final = last evaluated round; "
                   "best = each seed's best round, averaged"]


def render_table(summary: Summary):
    """A rich Table: one row per group, the best value of each column in bold green."""
    from rich.table import Table
    from rich.text import Text

    cols, rows, best = display_rows(summary)
    caption = _caption(summary) + (["bold green = best in column"] if len(rows) > 1 else [])
    table = Table(title=f"fedsim compare: {summary.metric}", caption="\n".join(caption))
    for c in cols:
        table.add_column(c.label, justify="left" if c.key in ("group", "status") else "right",
                         overflow="fold")
    for cells, marks in zip(rows, best, strict=True):
        styled = []
        for c, cell, mark in zip(cols, cells, marks, strict=True):
            style = "bold green" if mark else ""
            if c.key == "status" and cell != "finished":
                style = "red" if "diverged" in cell else "dim" if cell == "unknown" else "yellow"
            styled.append(Text(cell, style=style))
        table.add_row(*styled)
    return table


def to_markdown(summary: Summary) -> str:
    """A GitHub pipe table (best values in **bold**) and a line saying what the numbers are."""
    cols, rows, best = display_rows(summary)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c.label) for c in cols) + " |",
             "| " + " | ".join("---" if c.better is None else "---:" for c in cols) + " |"]
    for cells, marks in zip(rows, best, strict=True):
        lines.append("| " + " | ".join(f"**{esc(s)}**" if m else esc(s)
                                       for s, m in zip(cells, marks, strict=True)) + " |")
    return "\n".join(lines) + "\n\n" + "  \n".join(_caption(summary)) + "\n"


def to_csv(summary: Summary) -> str:
    """The numeric summary (`Summary.table`): one row per group, means and sample stds, NaN empty."""
    return summary.table.to_csv(index=False, lineterminator="\n")


def _json_value(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if hasattr(v, "item"):  # numpy scalars
        return _json_value(v.item())
    if isinstance(v, tuple):
        return list(v)
    return v


def to_json(summary: Summary) -> str:
    """The numeric summary plus each group's configuration and per-seed numbers; NaN is null."""
    groups = []
    for g, rs, row in zip(summary.groups, summary.runs, summary.table.to_dict("records"), strict=True):
        item = {k: _json_value(v) for k, v in row.items() if k not in ("seeds", "runs")}
        item["differing"] = {k: _json_value(v) for k, v in g.differing.items()}
        item["config"] = None if g.config is None else {k: _json_value(v) for k, v in g.config.items()}
        item["runs"] = [{k: _json_value(v) for k, v in vars(r).items()} for r in rs]
        groups.append(item)
    doc = {
        "metric": summary.metric,
        "lower_is_better": summary.lower_is_better,
        "target": summary.target,
        "std": "sample standard deviation over seeds (ddof=1); null with one seed",
        "groups": groups,
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# --- plot ---------------------------------------------------------------------------------------


def curve(group: Group, metric: str, x: str = "round") -> pd.DataFrame:
    """Per round: mean and sample std of `metric` over the group's seeds, their count, and x
    (the round, or the mean elapsed_seconds at that round for x="time")."""
    frames = [r.rows[["round", "elapsed_seconds", metric]] for r in group.runs if metric in r.rows]
    data = pd.concat(frames).dropna(subset=[metric]) if frames else pd.DataFrame(
        columns=["round", "elapsed_seconds", metric], dtype=float)
    stats = data.groupby("round").agg(mean=(metric, "mean"), std=(metric, "std"), count=(metric, "size"),
                                      time=("elapsed_seconds", "mean")).reset_index()
    stats["x"] = stats["time"] if x == "time" else stats["round"]
    return stats


def plot_curves(summary: Summary, path: str | Path, x: str = "round") -> Path:
    """Write `metric` vs round (or elapsed time) per group to an image: the mean over seeds as a
    line (dotted where not every seed has the round), ± sample std as a band (where at least two
    seeds have the round), the target as a dashed line."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in ("round", "time"):
        raise FedsimError(f"--x must be round or time, not {x!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FedsimError(f"cannot write {path}: directory {path.parent} does not exist")
    fig = Figure(figsize=(9, 5.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if len(summary.groups) <= 10 else "tab20"]
    for i, (g, rs) in enumerate(zip(summary.groups, summary.runs, strict=True)):
        stats = curve(g, summary.metric, x)
        if stats.empty:
            continue
        color = cmap(i % cmap.N)
        status = _group_status(rs)
        label = f"{g.name} (n={g.n})" + ("" if status == "finished" else f" [{status}]")
        marker = "o" if len(stats) <= 30 else None
        # Where some seeds have no row (stopped early, still running) the mean is over fewer seeds:
        # drawn dotted so a jump there is not read as a change in the method.
        full = stats["mean"].where(stats["count"] >= g.n)
        if full.isna().any():
            ax.plot(stats["x"], stats["mean"], color=color, lw=1.2, ls=":", marker=marker, ms=2)
        ax.plot(stats["x"], full, color=color, lw=1.8, label=label, marker=marker, ms=3)
        band = stats[stats["count"] >= 2]
        if len(band):
            ax.fill_between(band["x"], band["mean"] - band["std"], band["mean"] + band["std"],
                            color=color, alpha=0.2, lw=0)
    if summary.target is not None:
        ax.axhline(summary.target, color="0.3", ls="--", lw=1.2, label=f"target {summary.target:g}")
    direction = "lower" if summary.lower_is_better else "higher"
    ax.set_title(f"{summary.metric} vs {'round' if x == 'round' else 'elapsed time'} "
                 f"(mean ± sample std over seeds; {direction} is better)")
    ax.set_xlabel("round" if x == "round" else "elapsed time (s)")
    ax.set_ylabel(summary.metric)
    ax.grid(True, alpha=0.3)
    if x == "round":
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(summary.groups) + (summary.target is not None) > 8:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small", loc="best")
    try:
        fig.savefig(path)
    except (ValueError, OSError) as e:
        raise FedsimError(f"cannot write {path}: {e}") from None
    return path
