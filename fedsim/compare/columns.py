"""The columns of a comparison: which are shown, their headers, and which direction is best (for --sort)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.errors import FedsimError

if TYPE_CHECKING:  # summary.py sorts by these columns: a runtime import would be circular
    from fedsim.compare.summary import Summary


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
    if summary.has_epsilon:  # DP runs: the privacy spent, beside the accuracy bought with it
        cols.insert(3, Column("epsilon", "final ε", "low"))
    if summary.target is not None:
        cols += [Column("rounds_to_target", "rounds to target", "low", True),
                 Column("time_to_target", "time to target", "low", True)]
        if summary.has_sim:  # runs on the simulated clock: the time a deployment would take
            cols.append(Column("sim_time_to_target", "sim time to target", "low", True))
    cols += [Column("total_time", "total time", "low", True)]
    if summary.has_sim:
        cols.append(Column("total_sim_time", "total sim time", "low", True))
    cols += [Column("total_bytes", "total bytes", "low", True)]
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
    if _norm(name) in ("rounds to target", "time to target", "sim time to target"):
        raise FedsimError(f"--sort {name!r} needs --target")
    raise FedsimError(f"unknown --sort column {name!r}; choose from: {', '.join(c.key for c in cols)}")


# The `Summary.table` field each numeric column is ranked by ({m}: the metric).
_SORT_FIELD = {
    "seeds": "n", "final": "final_{m}_mean", "epsilon": "epsilon_mean", "best": "best_{m}_mean",
    "best_round": "best_round_mean",
    "rounds_to_target": "rounds_to_target_mean", "time_to_target": "time_to_target_seconds_mean",
    "sim_time_to_target": "sim_time_to_target_seconds_mean", "total_sim_time": "total_sim_seconds_mean",
    "total_time": "total_seconds_mean", "total_bytes": "total_bytes_mean",
    "personal_mean": "personal_acc_mean_mean", "personal_p10": "personal_acc_p10_mean",
    "rounds": "rounds_completed_max",
}


def _column_values(summary: Summary, col: Column) -> list[float]:
    table = summary.table
    return [float(v) for v in table[_SORT_FIELD[col.key].format(m=summary.metric)]]
