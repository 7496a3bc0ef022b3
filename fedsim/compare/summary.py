"""Summarising: each run's numbers (final, best, rounds and time to target, totals), then each group's
mean ± sample std over its seeds."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from fedsim.compare.columns import _column_values, _find_column, columns
from fedsim.compare.groups import Group, group_runs
from fedsim.compare.runs import Run, Warn, read_runs
from fedsim.errors import FedsimError


def lower_is_better(metric: str) -> bool:
    """True for metrics where smaller is better: losses, times, bytes, spreads."""
    m = metric.lower()
    return "loss" in m or "seconds" in m or "bytes" in m or "std" in m


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
    sim_time_to_target: float     # the simulated clock's sim_seconds at that row (NaN: no clock)
    total_seconds: float
    total_sim_seconds: float      # sim_seconds at the last row (NaN: no clock)
    total_bytes: float
    personal_mean: float
    personal_p10: float
    epsilon: float                # the DP epsilon spent by the last row (NaN: not a DP run)
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
    reached, rounds_to_target, time_to_target, sim_time_to_target = None, math.nan, math.nan, math.nan
    if target is not None:
        hit = valid[valid <= target] if low else valid[valid >= target]
        reached = bool(len(hit))
        if reached:
            rounds_to_target = float(rows.at[hit.index[0], "round"])
            time_to_target = float(rows.at[hit.index[0], "elapsed_seconds"])
            if "sim_seconds" in rows:
                sim_time_to_target = float(rows.at[hit.index[0], "sim_seconds"])
    planned = run.config.get("rounds")
    return RunSummary(
        file=run.file,
        seed=run.seed,
        status=run.status,
        final=_last_value(rows, metric),
        best=best,
        best_round=best_round,
        reached=reached,
        rounds_to_target=rounds_to_target,
        time_to_target=time_to_target,
        sim_time_to_target=sim_time_to_target,
        total_seconds=_last_value(rows, "elapsed_seconds"),
        total_sim_seconds=_last_value(rows, "sim_seconds"),
        total_bytes=float(rows["bytes_up"].sum(min_count=1) + rows["bytes_down"].sum(min_count=1)),
        personal_mean=_last_value(rows, "personal_accuracy_mean"),
        personal_p10=_last_value(rows, "personal_accuracy_p10"),
        epsilon=_last_value(rows, "epsilon"),
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
    def has_sim(self) -> bool:
        """Some run has the simulated clock's sim_seconds (client profiles)."""
        return any(not math.isnan(r.total_sim_seconds) for rs in self.runs for r in rs)

    @property
    def has_epsilon(self) -> bool:
        return any(not math.isnan(r.epsilon) for rs in self.runs for r in rs)

    @property
    def table(self) -> pd.DataFrame:
        """One row per group: exact numbers (mean/std over seeds), the CSV and JSON exports' columns."""
        m, personal = self.metric, self.has_personal
        out = []
        for g, rs in zip(self.groups, self.runs, strict=True):
            row: dict = {"group": g.name, "n": g.n}

            def add(name: str, values: Sequence[float], row=row) -> None:
                row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)

            add(f"final_{m}", [r.final for r in rs])
            add(f"best_{m}", [r.best for r in rs])
            add("best_round", [r.best_round for r in rs])
            if self.has_epsilon:
                add("epsilon", [r.epsilon for r in rs])
            if self.target is not None:
                row["target"] = self.target
                row["seeds_reached_target"] = sum(bool(r.reached) for r in rs)
                all_reached = all(r.reached for r in rs)
                add("rounds_to_target", [r.rounds_to_target for r in rs] if all_reached else [math.nan])
                add("time_to_target_seconds", [r.time_to_target for r in rs] if all_reached else [math.nan])
                if self.has_sim:
                    add("sim_time_to_target_seconds",
                        [r.sim_time_to_target for r in rs] if all_reached else [math.nan])
            add("total_seconds", [r.total_seconds for r in rs])
            if self.has_sim:
                add("total_sim_seconds", [r.total_sim_seconds for r in rs])
            add("total_bytes", [r.total_bytes for r in rs])
            if personal:
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
        if col.key == "group":
            values = [g.name for g in self.groups]
        elif col.key == "status":
            values = [_group_status(rs) for rs in self.runs]
        else:
            values = _column_values(self, col)  # builds the table once, not once per row
        if col.better is None:  # text: alphabetical
            order = sorted(range(len(values)), key=lambda i: str(values[i]))
        else:  # best first, NaN last; ties keep their order
            sign = -1.0 if col.better == "high" else 1.0
            order = sorted(range(len(values)),
                           key=lambda i: (math.isnan(values[i]), 0.0 if math.isnan(values[i]) else sign * values[i]))
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
