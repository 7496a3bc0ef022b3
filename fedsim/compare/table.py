"""Showing a Summary: the table's text cells (rich table, markdown) and the numeric exports (CSV, JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

from fedsim.compare.columns import Column, _column_values, columns
from fedsim.compare.summary import RunSummary, Summary, _group_status, _mean_std


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


def _fmt_scaled(values: Sequence[float], units: Sequence[tuple[float, str]]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "–"
    scale, name = _unit(_mean_std(finite)[0], units)
    digits = 0 if name == "B" else 1
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


def _target_cells(summary: Summary, rs: Sequence[RunSummary]) -> tuple[str, str, str]:
    """The rounds, time and simulated time to the target."""
    reached = [r for r in rs if r.reached]
    if len(reached) == len(rs):
        return (_fmt_pm([r.rounds_to_target for r in rs], _fmt_round, hide_zero=True),
                _fmt_scaled([r.time_to_target for r in rs], _TIME_UNITS),
                _fmt_scaled([r.sim_time_to_target for r in rs], _TIME_UNITS))
    missed = [r.best for r in rs if not r.reached and not math.isnan(r.best)]
    pick = min if summary.lower_is_better else max
    best = f"best {_fmt_num(pick(missed))}" if missed else "no values"
    if len(rs) == 1:
        return f"not reached ({best})", "not reached", "not reached"
    if not reached:
        return f"not reached by any of {len(rs)} seeds ({best})", "not reached", "not reached"
    only = f"{len(reached)}/{len(rs)} seeds only"
    return f"reached by {len(reached)}/{len(rs)} seeds only (others' {best})", only, only


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
            "epsilon": _fmt_pm([r.epsilon for r in rs]),
            "total_time": _fmt_scaled([r.total_seconds for r in rs], _TIME_UNITS),
            "total_sim_time": _fmt_scaled([r.total_sim_seconds for r in rs], _TIME_UNITS),
            "total_bytes": _fmt_scaled([r.total_bytes for r in rs], _BYTE_UNITS),
            "personal_mean": _fmt_pm([r.personal_mean for r in rs]),
            "personal_p10": _fmt_pm([r.personal_p10 for r in rs]),
            "rounds": _fmt_rounds_completed(rs),
            "status": _group_status(rs),
        }
        if summary.target is not None:
            cells["rounds_to_target"], cells["time_to_target"], cells["sim_time_to_target"] = \
                _target_cells(summary, rs)
        rows.append([cells[c.key] for c in cols])
    best = [[False] * len(cols) for _ in rows]
    for j, col in enumerate(cols):
        if not col.highlight or len(rows) < 2:
            continue
        values = _column_values(summary, col)
        if col.key in ("total_time", "total_sim_time", "total_bytes"):  # a run cut short is cheap, not better
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
    if summary.has_sim:
        first += "; sim time = the simulated clock's sim_seconds (client profiles)"
    lines = [first, "mean ± sample std (ddof=1) over seeds; final = last evaluated round; "
                    "best = each seed's best round, averaged"]
    if any("trained together" in str(((run.record or {}).get("executor") or {}).get("reason", ""))
           for group in summary.groups for run in group.runs):
        lines.append("times are wall times: runs trained together in a sweep stack share their stack's")
    return lines


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

